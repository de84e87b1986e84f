"""``hutch bench startup``: how long the commands a scientist restarts all day take to be
usable, beside the bare imports of bluesky and ophyd-async measured in the same run.

Rows, each timed as a user meets it, from a command line started afresh, with a private
simulator (the profile's, on free loopback ports) and a private embedded catalogue already
up, in a data directory of their own:

- ``python -c "import bluesky, ophyd_async"``: the baseline, what any bluesky session pays;
- ``hutch shell`` until IPython's first prompt, driven in a pseudo-terminal as a user's
  terminal would (no display: PNG plots, no Qt);
- ``hutch run count '[det]'`` end to end (``det``: the profile's first scaler): devices
  connected, the run written (NeXus, plot, catalogue), the process exited;
- ``hutch queue up`` until it returns: Redis, the RE Manager with its worker's environment
  open (devices connected), the HTTP server answering, the API keys made (``hutch queue
  down`` after each, not timed).

The rows are interleaved, try after try, so that other load on the machine hits each alike;
each row shows the median and the slowest of its tries, and its goal (5 s, 5 s, 15 s) is met
only if the slowest try meets it.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hutch import services, simulators
from hutch.bench.rows import BenchRow, BenchTableError
from hutch.catalog_server import ensure_catalog, stop_catalog
from hutch.config import Settings
from hutch.devices import Scaler
from hutch.profile import Profile
from hutch.services import free_port, log_tail

__all__ = ["STARTUP_GOALS_S", "startup_times"]

#: The goals, seconds to a usable command (issue "a newcomer's first hour", item 4).
STARTUP_GOALS_S = {"shell": 5.0, "run": 5.0, "queue": 15.0}
#: The longest any one command may take before the table gives up on it.
_TIMEOUT_S = 300.0
_BASELINE = 'python -c "import bluesky, ophyd_async"'
# What prompt_toolkit asks a terminal (cursor position) and an answer, so it need not wait.
_CURSOR_QUERY, _CURSOR_ANSWER = b"\x1b[6n", b"\x1b[1;1R"
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[a-zA-Z]")


def _hutch() -> list[str]:
    """The ``hutch`` command of this installation (its console script, else the module)."""
    script = Path(sys.executable).with_name("hutch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hutch.cli"]


def _timed(argv: list[str], env: dict[str, str], what: str) -> float:
    """Seconds ``argv`` takes to exit; `BenchTableError` with its output if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchTableError(
            f"{what} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return seconds


def _shell_prompt(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``argv`` (IPython) in a pseudo-terminal to its first prompt;
    then it is told to exit and waited for (not timed)."""
    main, child = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=child, stdout=child, stderr=child, env=env, start_new_session=True
    )
    os.close(child)
    shown = b""
    prompt: float | None = None
    try:
        while prompt is None and time.perf_counter() - start < _TIMEOUT_S:
            if proc.poll() is not None:
                break
            if not select.select([main], [], [], 0.02)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed: the shell is gone
                break
            shown += chunk
            if _CURSOR_QUERY in chunk:
                os.write(main, _CURSOR_ANSWER)
            if b"In [1]: " in _ANSI.sub(b"", shown):
                prompt = time.perf_counter() - start
        if prompt is not None:
            os.write(main, b"exit\r")
            deadline = time.monotonic() + _TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                if select.select([main], [], [], 0.1)[0]:
                    try:
                        os.read(main, 65536)  # keep the terminal drained
                    except OSError:
                        break
            proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(main)
    if prompt is None:
        text = _ANSI.sub(b"", shown).decode(errors="replace")
        raise BenchTableError(f"hutch shell showed no prompt; its terminal:\n{text[-3000:]}")
    return prompt


def _environment(settings: Settings, tmp: Path) -> dict[str, str]:
    """The commands' environment: the private data directory, catalogue and queue ports, no
    external catalogue, Redis or display, IPython's files in ``tmp``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HUTCH_", "EPICS_CA_"))
        and k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")
    }
    env.update(
        HUTCH_DATA_DIR=str(settings.data_dir),
        HUTCH_CATALOG_PORT=str(settings.catalog_port),
        HUTCH_QUEUE_HTTP_PORT=str(free_port()),
        HUTCH_QUEUE_ZMQ_PORT=str(free_port()),
        HUTCH_QUEUE_ZMQ_INFO_PORT=str(free_port()),
        IPYTHONDIR=str(tmp / "ipython"),
        TERM="xterm",
    )
    return env


def startup_times(profile: Profile, data_dir: Path, *, tries: int = 3) -> list[BenchRow]:
    """The start-up table: ``tries`` of each row (see the module), on a private simulator
    and catalogue under a temporary directory in ``data_dir``."""
    try:
        services.system_program("redis-server")  # for the `hutch queue up` row
    except services.MissingProgramError as exc:
        raise BenchTableError(str(exc)) from None
    table = f"Start-up, seconds until usable, {tries} tries each (simulator and catalogue up)"
    data_dir.mkdir(parents=True, exist_ok=True)
    hutch = _hutch()
    chosen = ["--profile", str(profile.path or profile.name)]
    det = next(d.name for d in profile.devices if issubclass(d.device_class, Scaler))
    commands: dict[str, tuple[str, Callable[[dict[str, str]], float]]] = {
        "baseline": (
            _BASELINE,
            lambda env: _timed(
                [sys.executable, "-c", "import bluesky, ophyd_async"], env, _BASELINE
            ),
        ),
        "shell": (
            "hutch shell, to its first prompt",
            lambda env: _shell_prompt([*hutch, "shell", *chosen], env),
        ),
        "run": (
            f"hutch run count '[{det}]', end to end",
            lambda env: _timed(
                [*hutch, "run", "count", f"[{det}]", *chosen], env, "hutch run count"
            ),
        ),
        "queue": (
            "hutch queue up, to ready",
            lambda env: _queue_up([*hutch, "queue"], chosen, profile.name, env),
        ),
    }
    times: dict[str, list[float]] = {key: [] for key in commands}
    with tempfile.TemporaryDirectory(prefix="startup-", dir=data_dir) as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", catalog_port=free_port())
        env = _environment(settings, Path(tmp))
        measured = False
        try:
            simulators.start(profile, free_port(), settings, exit_with=os.getpid())
            ensure_catalog(settings)
            for _ in range(tries):
                for key, (_, measure) in commands.items():
                    times[key].append(measure(env))
            measured = True
        finally:
            if not measured:  # a queue server may have been left up
                down = [*hutch, "queue", "down", *chosen]
                subprocess.run(down, env=env, capture_output=True, timeout=_TIMEOUT_S)
            stop_catalog(settings)
            simulators.stop(profile.name, settings)
    rows = []
    for key, (name, _) in commands.items():
        goal = STARTUP_GOALS_S.get(key)
        rows.append(
            BenchRow(
                table,
                name,
                statistics.median(times[key]) * 1e3,
                baseline=None if key == "baseline" else _BASELINE,
                unit="median s",
                worst_ms=max(times[key]) * 1e3,
                max_ms=None if goal is None else goal * 1e3,
            )
        )
    return rows


def _queue_up(queue: list[str], chosen: list[str], name: str, env: dict[str, str]) -> float:
    """Seconds ``hutch queue up`` takes to return (everything ready); then it is brought
    down again, not timed."""
    try:
        seconds = _timed([*queue, "up", *chosen], env, "hutch queue up")
    except BenchTableError as exc:
        logs = Path(env["HUTCH_DATA_DIR"]) / "run" / f"queue-{name}"
        tails = [f"{log}:\n{log_tail(log)}" for log in sorted(logs.glob("*.log"))]
        raise BenchTableError("\n".join([str(exc), *tails])) from None
    _timed([*queue, "down", *chosen], env, "hutch queue down")
    return seconds
