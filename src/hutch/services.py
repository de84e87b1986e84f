"""Background services: spawn detached, record in a state file, check, stop.

The shared mechanics of hutch's long-running helper processes (the simulated beamline and
the embedded catalogue server): each runs in its own session with its output in a log
file, and a JSON state file records its pid so that later, unrelated processes can find,
check and stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from hutch.errors import HutchError

__all__ = [
    "SYSTEM_PROGRAMS",
    "MissingProgramError",
    "free_port",
    "log_tail",
    "process_alive",
    "read_state",
    "spawn_detached",
    "system_program",
    "terminate",
    "write_state",
]


def process_alive(pid: int, *, marker: bytes | None = None) -> bool:
    """True if ``pid`` runs and is not a zombie, and its command line contains ``marker``.

    The marker guards against a recorded pid recycled by an unrelated process; it is only
    checked where procfs exists (Linux), elsewhere any live ``pid`` counts.
    """
    if pid <= 0:  # 0 and negatives address process groups in kill() and waitpid()
        return False
    # A child of ours that exited stays a zombie until reaped: reap it, and it is gone.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    if not Path("/proc/self/stat").exists():  # no procfs (macOS): trust the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may contain any byte.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and (marker is None or marker in cmdline)


def spawn_detached(
    command: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    log_mode: int = 0o666,
) -> subprocess.Popen:
    """Start ``command`` in a new session, its output (stdout and stderr) in ``log_path``.

    The new session keeps it running after this process exits and out of reach of the
    terminal's Ctrl-C.  The log is truncated; a new one is created with ``log_mode``
    (less the umask), e.g. 0o600 for a log that may show secrets.
    """
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, log_mode)
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def terminate(pid: int, timeout: float = 10.0) -> None:
    """Stop ``pid``: SIGTERM (so it can shut down cleanly), then SIGKILL after ``timeout`` s.

    A process that leads its own process group (as :func:`spawn_detached` makes it) is
    signalled with its whole group, so helpers it started go too.
    """
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    _signal(pid, signal.SIGTERM, group)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL, group)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # reap it if this process started it


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of the log at ``path``, or ``(no log)`` if it is unreadable."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_state(path: Path) -> dict[str, Any] | None:
    """The JSON object in the state file ``path``, or None if it is missing or not one."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as JSON to ``path`` atomically: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, for a private server about to be started there."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


#: The system programs hutch itself starts, with their Debian packages: exactly what
#: ``bash .ci/setup`` installs without ``--tests`` (``.ci/system-packages``; the tests check
#: that the two agree), so the README's first command finds them on a fresh machine.
SYSTEM_PROGRAMS = {"redis-server": "redis-server"}


class MissingProgramError(HutchError):
    """A system program hutch starts is not installed; the message says how to install it."""


def system_program(name: str) -> str:
    """The path of ``name``, one of `SYSTEM_PROGRAMS`; else `MissingProgramError` naming
    its package and the set-up command that installs it."""
    package = SYSTEM_PROGRAMS[name]  # a KeyError here is hutch's bug: add it to both lists
    path = shutil.which(name)
    if path is None:
        raise MissingProgramError(
            f"{name} is not installed: run `bash .ci/setup` in hutch's checkout (it installs "
            f"Debian's {package} with apt-get, as root or through sudo), or install {package}"
        )
    return path
