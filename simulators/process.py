"""Run a profile's simulator in the background: start, status, stop.

Each simulated IOC of the profile runs as ``python -m hutch.simulators --profile PATH --port
PORT --ioc NAME`` in its own session, logging to ``<run_dir>/sim-<profile>.log`` (the first
IOC) or ``sim-<profile>-<ioc>.log``; ``<run_dir>/sim-<profile>.json`` records what runs where.
The first IOC listens on the requested port, the others on the next free ports from
``port + 100``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hutch import services
from hutch.config import Settings
from hutch.errors import HutchError
from hutch.profile import Profile

from .control import ca_read

__all__ = ["SimState", "SimulatorStartError", "describe", "free_port", "start", "status", "stop"]


class SimulatorStartError(HutchError, RuntimeError):
    """The simulator did not come up; the message ends with the tail of its log."""


@dataclass(frozen=True)
class SimState:
    """A running simulator: its processes, ports and profile.

    ``pid`` and ``port`` are the first IOC's; ``iocs`` maps every IOC's name to its
    ``{"pid": ..., "port": ...}``.
    """

    pid: int
    port: int
    profile: str
    profile_path: str | None
    started_at: str
    host: str = "127.0.0.1"
    iocs: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        """Every IOC's port, the first IOC's first: what a CA client must search."""
        return [self.port, *(ioc["port"] for ioc in self.iocs.values() if ioc["port"] != self.port)]

    def to_json(self) -> dict:
        return asdict(self)


def describe(state: SimState) -> str:
    """Where a simulator's IOCs listen, for people: ``main on 127.0.0.1:5064 (pid 12)...``."""
    iocs = state.iocs or {"main": {"pid": state.pid, "port": state.port}}
    return ", ".join(
        f"{name} on {state.host}:{ioc['port']} (pid {ioc['pid']})" for name, ioc in iocs.items()
    )


def _state_file(profile_name: str, settings: Settings) -> Path:
    return settings.run_dir / f"sim-{profile_name}.json"


def _log_file(profile_name: str, settings: Settings, ioc: str | None = None) -> Path:
    suffix = f"-{ioc}" if ioc else ""
    return settings.run_dir / f"sim-{profile_name}{suffix}.log"


def _port_free(port: int, host: str) -> bool:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        try:
            tcp.bind((host, port))
            udp.bind((host, port))
        except OSError:
            return False
    return True


def free_port(start: int, host: str = "127.0.0.1") -> int:
    """The first port from ``start`` up free for a CA server (TCP and UDP) on ``host``."""
    while not _port_free(start, host):
        start += 1
    return start


def _ioc_ports(profile: Profile, port: int, host: str) -> dict[str, int]:
    """The port of each IOC: ``port`` for the first, free ones from ``port + 100`` after."""
    ports = {}
    candidate = port + 100
    for index, ioc in enumerate(profile.iocs):
        if index == 0:
            ports[ioc] = port
            continue
        ports[ioc] = candidate = free_port(candidate, host)
        candidate += 1
    return ports


def _alive(pid: int) -> bool:
    # The marker is in every simulator's command line (``python -m hutch.simulators``).
    return services.process_alive(pid, marker=b"hutch.simulators")


def _probe_pv(profile: Profile, ioc: str | None = None) -> str:
    """A PV IOC ``ioc`` (default: the first) of this profile serves: its first device's first."""
    from .ioc import build_groups

    group = next(iter(build_groups(profile, ioc).values()))
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
    profile_arg = str(profile.path) if profile.path else profile.name
    ports = _ioc_ports(profile, port, host)
    processes = {}
    for index, (ioc, ioc_port) in enumerate(ports.items()):
        peers = [p for name, p in ports.items() if name != ioc]
        command = [
            sys.executable,
            "-m",
            "hutch.simulators",
            "--profile",
            profile_arg,
            "--port",
            str(ioc_port),
            "--host",
            host,
            "--ioc",
            ioc,
            *(["--peers", ",".join(map(str, peers))] if peers else []),
            *(["--exit-with", str(exit_with)] if exit_with else []),
        ]
        log_path = _log_file(profile.name, settings, ioc if index else None)
        processes[ioc] = (services.spawn_detached(command, log_path), log_path)
    first, _ = next(iter(processes.values()))
    state = SimState(
        pid=first.pid,
        port=port,
        profile=profile.name,
        profile_path=str(profile.path) if profile.path else None,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        host=host,
        iocs={
            ioc: {"pid": process.pid, "port": ports[ioc]} for ioc, (process, _) in processes.items()
        },
    )
    services.write_state(_state_file(profile.name, settings), state.to_json())
    if not wait:
        return state

    deadline = time.monotonic() + timeout
    for ioc, (process, log_path) in processes.items():
        probe = _probe_pv(profile, ioc)
        while not _answers(probe, ports[ioc], host, timeout=0.5):
            if process.poll() is not None:
                stop(profile.name, settings)
                raise SimulatorStartError(
                    f"simulator for {profile.name!r} (IOC {ioc!r}) exited with code "
                    f"{process.returncode}; log {log_path}:\n{services.log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                stop(profile.name, settings)
                raise SimulatorStartError(
                    f"simulator for {profile.name!r} (IOC {ioc!r}) did not answer {probe} on "
                    f"{host}:{ports[ioc]} within {timeout:g} s; log {log_path}:\n"
                    f"{services.log_tail(log_path)}"
                )
            time.sleep(0.2)
    return state


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
    if state is None:
        return False
    pids = [ioc["pid"] for ioc in state.iocs.values()] or [state.pid]
    alive = [pid for pid in pids if _alive(pid)]
    for pid in alive:
        services.terminate(pid, timeout)
    return bool(alive)
