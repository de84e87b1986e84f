"""Run a profile's simulator in the background: start, status, stop.

The simulator runs as ``python -m hutch.simulators --profile PATH --port PORT`` in its own
session, logging to ``<run_dir>/sim-<profile>.log``; ``<run_dir>/sim-<profile>.json`` records
what is running where.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from hutch import services
from hutch.config import Settings
from hutch.errors import HutchError
from hutch.profile import Profile

from .control import ca_read

__all__ = ["SimState", "SimulatorStartError", "start", "status", "stop"]


class SimulatorStartError(HutchError, RuntimeError):
    """The simulator did not come up; the message ends with the tail of its log."""


@dataclass(frozen=True)
class SimState:
    """A running simulator: its process, port and profile."""

    pid: int
    port: int
    profile: str
    profile_path: str | None
    started_at: str
    host: str = "127.0.0.1"

    def to_json(self) -> dict:
        return asdict(self)


def _state_file(profile_name: str, settings: Settings) -> Path:
    return settings.run_dir / f"sim-{profile_name}.json"


def _log_file(profile_name: str, settings: Settings) -> Path:
    return settings.run_dir / f"sim-{profile_name}.log"


def _alive(pid: int) -> bool:
    # The marker is in every simulator's command line (``python -m hutch.simulators``).
    return services.process_alive(pid, marker=b"hutch.simulators")


def _probe_pv(profile: Profile) -> str:
    """A PV every simulator of this profile serves: the first device's first PV."""
    from .ioc import build_groups

    group = next(iter(build_groups(profile).values()))
    return next(iter(group.pvdb))


def _answers(pv: str, port: int, host: str, timeout: float = 1.0) -> bool:
    try:
        ca_read(pv, port, host, timeout=timeout)
    except Exception:
        return False
    return True


def start(
    profile: Profile,
    port: int,
    settings: Settings,
    wait: bool = True,
    timeout: float = 30.0,
    host: str = "127.0.0.1",
    exit_with: int | None = None,
) -> SimState:
    """Start ``profile``'s simulator in the background on ``host:port``.

    With ``exit_with`` (a pid) the simulator exits soon after that process ends, so a
    program's own simulator never outlives it and its CA clients see no disconnect.

    With ``wait``, return once one of its PVs answers over Channel Access; raise
    :class:`SimulatorStartError` (with the log tail) if it exits or does not answer in time.
    """
    existing = status(profile.name, settings)
    if existing is not None:
        raise SimulatorStartError(
            f"simulator for {profile.name!r} already runs (pid {existing.pid}, "
            f"port {existing.port}); stop it first"
        )
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = _log_file(profile.name, settings)
    profile_arg = str(profile.path) if profile.path else profile.name
    command = [
        sys.executable,
        "-m",
        "hutch.simulators",
        "--profile",
        profile_arg,
        "--port",
        str(port),
        "--host",
        host,
        *(["--exit-with", str(exit_with)] if exit_with else []),
    ]
    process = services.spawn_detached(command, log_path)
    state = SimState(
        pid=process.pid,
        port=port,
        profile=profile.name,
        profile_path=str(profile.path) if profile.path else None,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        host=host,
    )
    services.write_state(_state_file(profile.name, settings), state.to_json())
    if not wait:
        return state

    probe = _probe_pv(profile)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _state_file(profile.name, settings).unlink(missing_ok=True)
            raise SimulatorStartError(
                f"simulator for {profile.name!r} exited with code {process.returncode}; "
                f"log {log_path}:\n{services.log_tail(log_path)}"
            )
        if _answers(probe, port, host, timeout=0.5):
            return state
        time.sleep(0.2)
    stop(profile.name, settings)
    raise SimulatorStartError(
        f"simulator for {profile.name!r} did not answer {probe} on {host}:{port} within "
        f"{timeout:g} s; log {log_path}:\n{services.log_tail(log_path)}"
    )


def _read_state(profile_name: str, settings: Settings) -> SimState | None:
    data = services.read_state(_state_file(profile_name, settings))
    try:
        return SimState(**data) if data is not None else None
    except TypeError:  # written by another version of SimState
        return None


def status(profile_name: str, settings: Settings) -> SimState | None:
    """The running simulator of ``profile_name``, or None (stale state files are removed)."""
    state = _read_state(profile_name, settings)
    path = _state_file(profile_name, settings)
    if state is None:
        path.unlink(missing_ok=True)
        return None
    if _alive(state.pid) and state.profile_path is not None:
        from hutch.profile import load_profile

        with contextlib.suppress(Exception):
            probe = _probe_pv(load_profile(state.profile_path))
            if _answers(probe, state.port, state.host, timeout=2.0):
                return state
    elif _alive(state.pid):
        return state
    path.unlink(missing_ok=True)
    return None


def stop(profile_name: str, settings: Settings, timeout: float = 10.0) -> bool:
    """Stop the simulator of ``profile_name`` (SIGTERM, then SIGKILL); True if one ran."""
    state = _read_state(profile_name, settings)
    _state_file(profile_name, settings).unlink(missing_ok=True)
    if state is None or not _alive(state.pid):
        return False
    services.terminate(state.pid, timeout)
    return True
