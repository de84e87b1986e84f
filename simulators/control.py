"""Drive a running simulator from Python or the CLI: simulator-only control PVs over CA."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from hutch.ca import ca_client_env
from hutch.profile import Profile

__all__ = ["beam_dump", "beam_restore", "ca_read", "ca_write"]

DUMP_PV = "SIM:DUMP"
"""Suffix (after the beam-current device's prefix) of the simulator-only beam-dump PV."""


@contextlib.contextmanager
def _client_env(port: int, host: str) -> Iterator[None]:
    # caproto's sync client reads the address list from the environment on every search (it
    # takes no address argument). Touch only its variables: other threads read os.environ too.
    changes = ca_client_env(port, host=host)
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ca_read(pv: str, port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> Any:
    """Read ``pv`` from the CA server at ``host:port`` (caproto's sync client); its value."""
    from caproto.sync.client import read

    with _client_env(port, host):
        response = read(pv, timeout=timeout, repeater=False)
    data = response.data
    if isinstance(data, bytes):  # CHAR-array strings (e.g. a motor's .EGU)
        return data.rstrip(b"\0").decode()
    value = data[0] if len(data) == 1 else data
    return value.decode() if isinstance(value, bytes) else value


def ca_write(
    pv: str,
    value: Any,
    port: int,
    host: str = "127.0.0.1",
    timeout: float = 5.0,
    wait: bool = True,
) -> None:
    """Write ``value`` to ``pv`` on the CA server at ``host:port``.

    With ``wait``, a put-callback: return when the server reports the put done (for a motor's
    ``.VAL``, when the move is over).
    """
    from caproto.sync.client import write

    with _client_env(port, host):
        write(pv, value, notify=wait, timeout=timeout, repeater=False)


def _dump_pvs(profile: Profile, device: str | None) -> list[str]:
    from hutch.devices.beam import BeamCurrent
    from hutch.devices.source import NeutronSource

    sources = (BeamCurrent, NeutronSource)
    specs = [profile.device(device)] if device else profile.devices
    pvs = [s.prefix + DUMP_PV for s in specs if issubclass(s.device_class, sources)]
    if not pvs:
        what = f"device {device!r}" if device else "no device"
        raise ValueError(
            f"profile {profile.name!r}: {what} is a simulated beam current or pulsed source"
        )
    return pvs


def beam_dump(
    profile: Profile, port: int | None = None, device: str | None = None, host: str = "127.0.0.1"
) -> None:
    """Dump the beam of the running simulator: its beam current(s) drop to 0 mA, a pulsed
    source's pulses carry no protons."""
    for pv in _dump_pvs(profile, device):
        ca_write(pv, 1, port or profile.simulation.port, host)


def beam_restore(
    profile: Profile, port: int | None = None, device: str | None = None, host: str = "127.0.0.1"
) -> None:
    """Restore the beam of the running simulator to its nominal current."""
    for pv in _dump_pvs(profile, device):
        ca_write(pv, 0, port or profile.simulation.port, host)
