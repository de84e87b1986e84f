"""One caproto server (one process, one port) serving every device of a beamline profile."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from caproto.server import PVGroup

from hutch.ca import LOOPBACK, ca_server_env
from hutch.errors import HutchError
from hutch.profile import DeviceSpec, Profile

from .beam import BeamCurrentSource
from .motor import MotorRecord
from .physics import BeamlinePhysics
from .scaler import ScalerRecord

__all__ = [
    "SimulatorError",
    "build_groups",
    "make_pvdb",
    "physics_for",
    "register_simulator",
    "serve",
    "simulator_for",
]

log = logging.getLogger(__name__)

SimulatorFactory = Callable[[DeviceSpec], PVGroup]
"""Builds the simulated hardware of one device from its profile entry."""

_REGISTRY: dict[type, SimulatorFactory] = {}


class SimulatorError(HutchError, RuntimeError):
    """The profile asks for something the simulator cannot serve."""


def register_simulator(device_class: type, factory: SimulatorFactory) -> None:
    """Serve devices of ``device_class`` (and its subclasses) with ``factory(spec)``."""
    _REGISTRY[device_class] = factory


def _motor(spec: DeviceSpec) -> PVGroup:
    return MotorRecord(spec.prefix, sim=spec.sim)


def _scaler(spec: DeviceSpec) -> PVGroup:
    return ScalerRecord(spec.prefix, channels=spec.options.get("channels"), sim=spec.sim)


def _beam(spec: DeviceSpec) -> PVGroup:
    return BeamCurrentSource(spec.prefix, sim=spec.sim)


def _register_defaults() -> None:
    # Imported here: the device libraries are heavy and only needed to build a server.
    import ophyd
    from ophyd_async.epics.motor import Motor

    from hutch.devices.beam import BeamCurrent
    from hutch.devices.scaler import Scaler

    for cls, factory in (
        (Motor, _motor),
        (ophyd.EpicsMotor, _motor),
        (Scaler, _scaler),
        (BeamCurrent, _beam),
    ):
        _REGISTRY.setdefault(cls, factory)


def simulator_for(device_class: type) -> SimulatorFactory | None:
    """The simulator factory of ``device_class``: its own, else its nearest base class's."""
    if not _REGISTRY:
        _register_defaults()
    for cls in device_class.__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def physics_for(profile: Profile, groups: dict[str, PVGroup]) -> BeamlinePhysics | None:
    """The profile's peak model reading live positions from ``groups`` (None: no peak)."""
    peak = profile.simulation.peak
    if peak is None:
        return None
    sources = {name: group for name, group in groups.items() if hasattr(group, "position")}
    return BeamlinePhysics(peak, sources)


def build_groups(profile: Profile) -> dict[str, PVGroup]:
    """The simulator PVGroup of every device of ``profile``, by device name, wired up."""
    groups: dict[str, PVGroup] = {}
    for spec in profile.devices:
        cls = spec.device_class
        factory = simulator_for(cls)
        if factory is None:
            raise SimulatorError(
                f"device {spec.name!r} of profile {profile.name!r}: class "
                f"{cls.__module__}.{cls.__qualname__} has no simulator "
                "(hutch.simulators.register_simulator adds one)"
            )
        groups[spec.name] = factory(spec)

    physics = physics_for(profile, groups)
    if physics is not None:
        for group in groups.values():
            if isinstance(group, ScalerRecord):
                group.count_source = _scaler_counts(physics, group)
    return groups


def _scaler_counts(physics: BeamlinePhysics, scaler: ScalerRecord) -> Any:
    def counts(time: float) -> dict[int, int]:
        monitor, detector = physics.sample(time)
        result = {}
        if scaler.options["monitor_channel"]:
            result[int(scaler.options["monitor_channel"])] = monitor
        if scaler.options["detector_channel"]:
            result[int(scaler.options["detector_channel"])] = detector
        return result

    return counts


def make_pvdb(profile: Profile) -> dict[str, Any]:
    """The caproto PV database serving exactly the PVs of ``profile``'s devices."""
    pvdb: dict[str, Any] = {}
    for name, group in build_groups(profile).items():
        clash = pvdb.keys() & group.pvdb.keys()
        if clash:
            raise SimulatorError(
                f"device {name!r} of profile {profile.name!r} serves PV(s) already served by "
                f"another device: {', '.join(sorted(clash))}"
            )
        pvdb.update(group.pvdb)
    return pvdb


def ensure_repeater() -> None:
    """Start caproto's CA repeater, bound to loopback, unless one already holds its port.

    Like EPICS's caRepeater it is a detached process that outlives the simulator: CA clients
    register with it once, and a repeater that died with one simulator would leave every
    other client of the machine complaining that it cannot contact the repeater.
    """
    port = int(os.environ.get("EPICS_CA_REPEATER_PORT", "5065"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return  # a repeater (or something) is there already
    subprocess.Popen(
        [sys.executable, "-c", f"from caproto.sync.repeater import run; run(host={LOOPBACK!r})"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def serve(profile: Profile, port: int, host: str = LOOPBACK) -> None:
    """Serve ``profile``'s simulated beamline over Channel Access on ``host:port`` (blocks)."""
    os.environ.update(ca_server_env(port, host))
    from .server import run  # after the environment is set: caproto reads it on import

    pvdb = make_pvdb(profile)
    ensure_repeater()
    log.info("serving %d PVs of profile %r on %s:%d", len(pvdb), profile.name, host, port)
    run(pvdb, interfaces=[host])
