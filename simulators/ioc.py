"""The simulated IOCs of a beamline profile: one caproto server (one process, one port) per
IOC, serving every device the profile puts in it (``ioc``; by default the main IOC)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from caproto.server import PVGroup

from hutch.ca import LOOPBACK, ca_client_env, ca_server_env
from hutch.errors import HutchError
from hutch.profile import DeviceSpec, Profile

from .areadetector import AreaDetectorSim
from .beam import BeamCurrentSource
from .chopper import DiskChopperSim
from .event_acquisition import ChopperCable, SourceCable
from .links import (
    LocalChopper,
    LocalSource,
    PulseLink,
    RemoteChopper,
    RemotePosition,
    RemoteSource,
)
from .motor import MotorRecord
from .panda import PULSE_PV, PandASim
from .physics import BeamlinePhysics
from .powder import powder_geometry
from .scaler import ScalerRecord
from .source import NeutronSourceSim

__all__ = [
    "SimulatorError",
    "Wiring",
    "build_groups",
    "build_ioc",
    "make_pvdb",
    "physics_for",
    "register_simulator",
    "serve",
    "simulator_for",
]

log = logging.getLogger(__name__)

SimulatorFactory = Callable[[DeviceSpec, "Wiring"], PVGroup]
"""Builds the simulated hardware of one device from its profile entry and its cabling."""

_REGISTRY: dict[type, SimulatorFactory] = {}

#: Keys of a device's ``sim`` table that cable it to other devices (``Wiring``), rather than
#: set its own simulated hardware.
_CABLES = ("trigger", "spot")


class SimulatorError(HutchError, RuntimeError):
    """The profile asks for something the simulator cannot serve."""


def register_simulator(device_class: type, factory: SimulatorFactory) -> None:
    """Serve devices of ``device_class`` (and its subclasses) with ``factory(spec, wiring)``."""
    _REGISTRY[device_class] = factory


class _Local:
    """A device of the same IOC, looked up when used (it may be built after its user)."""

    def __init__(self, groups: dict[str, PVGroup], name: str) -> None:
        self._groups, self._name = groups, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._groups[self._name], attr)


@dataclass
class Wiring:
    """The cables of one simulated IOC's devices to the other devices of the beamline.

    A device of the same IOC is used directly; one of another IOC (another process) through a
    Channel Access link (``simulators.links``) that runs with the server.
    """

    profile: Profile
    ioc: str
    groups: dict[str, PVGroup] = field(default_factory=dict)
    tasks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _deferred: list[Callable[[], None]] = field(default_factory=list)

    def _spec(self, user: DeviceSpec, key: str, name: str) -> DeviceSpec:
        try:
            return self.profile.device(name)
        except KeyError:
            raise SimulatorError(
                f"device {user.name!r} of profile {self.profile.name!r}: {key} names device "
                f"{name!r}, which is not in [[devices]]"
            ) from None

    def position(self, user: DeviceSpec, key: str, name: str) -> Any:
        """Motor ``name`` as a position source (``position``, ``position_at(t)``)."""
        spec = self._spec(user, key, name)
        if spec.ioc == self.ioc:
            return _Local(self.groups, name)
        link = RemotePosition(spec.prefix)
        self.tasks.append(link.run)
        return link

    def encoder(self, user: DeviceSpec, key: str, name: str) -> Any:
        """Motor ``name`` read by an encoder cable: it must be served by the same IOC."""
        spec = self._spec(user, key, name)
        if spec.ioc != self.ioc:
            raise SimulatorError(
                f"device {user.name!r} of profile {self.profile.name!r}: {key} reads motor "
                f"{name!r} of IOC {spec.ioc!r}; an encoder must be served by the same IOC "
                f"({user.ioc!r})"
            )
        return _Local(self.groups, name)

    def pulses(
        self, user: DeviceSpec, key: str, name: str, on_pulse: Callable[[float], Awaitable[Any]]
    ) -> None:
        """Call ``on_pulse(timestamp)`` for every pulse of PandA ``name``'s TTL output."""
        spec = self._spec(user, key, name)
        if spec.ioc != self.ioc:
            link = PulseLink(f"{spec.prefix}:{PULSE_PV}", on_pulse)
            self.tasks.append(link.run)
            return

        async def batch(first_index: int, times: Any) -> None:
            for timestamp in times:
                await on_pulse(float(timestamp))

        self._deferred.append(lambda: self.groups[name].add_pulse_listener(batch))

    def chopper(self, user: DeviceSpec, key: str, name: str) -> ChopperCable:
        """Disk chopper ``name`` for a detector: its geometry (its profile ``options``:
        ``distance``, ``slit_edges``, optional ``radius``, ``slit_height``) and its live
        speed, delay and phase lock, directly or over CA (``links.RemoteChopper``)."""
        spec = self._spec(user, key, name)
        options = spec.options
        if "distance" not in options or "slit_edges" not in options:
            raise SimulatorError(
                f"device {user.name!r} of profile {self.profile.name!r}: {key} names device "
                f"{name!r}, whose options give no distance and slit_edges (not a disk chopper?)"
            )
        if spec.ioc == self.ioc:
            feed: Any = LocalChopper(_Local(self.groups, name))
        else:
            feed = RemoteChopper(spec.prefix)
        self.tasks.append(feed.run)
        extra = {k: float(options[k]) for k in ("radius", "slit_height") if k in options}
        return ChopperCable(
            name=name,
            distance=float(options["distance"]),
            slit_edges=tuple((float(b), float(e)) for b, e in options["slit_edges"]),
            feed=feed,
            **extra,
        )

    def source(self, user: DeviceSpec, key: str, name: str) -> SourceCable:
        """Pulsed source ``name`` for a detector: its pulse timing and proton energy (its
        ``sim`` options) and its live beam power, directly or over CA
        (``links.RemoteSource``)."""
        from .source import _DEFAULTS as SOURCE_DEFAULTS

        spec = self._spec(user, key, name)
        sim = {**SOURCE_DEFAULTS, **spec.sim}
        if spec.ioc == self.ioc:
            feed: Any = LocalSource(_Local(self.groups, name))
        else:
            feed = RemoteSource(spec.prefix)
        self.tasks.append(feed.run)
        return SourceCable(
            rate=float(sim["pulse_rate"]),
            pulse_length=float(sim["pulse_length"]),
            proton_energy_gev=float(sim["proton_energy_gev"]),
            power=float(sim["power"]),
            feed=feed,
        )

    def connect(self) -> None:
        """Plug in the cables between devices of this IOC (once all are built)."""
        for plug in self._deferred:
            plug()
        self._deferred.clear()


def _motor(spec: DeviceSpec, wiring: Wiring) -> PVGroup:
    return MotorRecord(spec.prefix, sim=spec.sim)


def _scaler(spec: DeviceSpec, wiring: Wiring) -> PVGroup:
    return ScalerRecord(spec.prefix, channels=spec.options.get("channels"), sim=spec.sim)


def _beam(spec: DeviceSpec, wiring: Wiring) -> PVGroup:
    return BeamCurrentSource(spec.prefix, sim=spec.sim)


def _source(spec: DeviceSpec, wiring: Wiring) -> PVGroup:
    return NeutronSourceSim(spec.prefix, sim=spec.sim)


def _chopper(spec: DeviceSpec, wiring: Wiring) -> PVGroup:
    sim = dict(spec.sim)
    if "pulse_rate" not in sim:
        # A chopper locks to the source's pulses: take the profile's source's rate.
        from hutch.devices.source import NeutronSource

        for other in wiring.profile.devices:
            if issubclass(other.device_class, NeutronSource) and "pulse_rate" in other.sim:
                sim["pulse_rate"] = other.sim["pulse_rate"]
                break
    return DiskChopperSim(spec.prefix, sim=sim)


def _area_detector(spec: DeviceSpec, wiring: Wiring) -> PVGroup:
    own = {key: value for key, value in spec.sim.items() if key not in _CABLES}
    if own.get("powder"):  # the geometry: the PONI file the profile names, made absolute
        own["poni"] = str(powder_geometry(wiring.profile, spec))
    spot = None
    if "spot" in spec.sim:
        x_name, y_name = spec.sim["spot"]
        x = wiring.position(spec, "sim.spot", x_name)
        y = wiring.position(spec, "sim.spot", y_name)

        def spot(t: float) -> tuple[float, float]:
            return x.position_at(t), y.position_at(t)

    detector = AreaDetectorSim(spec.prefix, sim=own, spot=spot)
    if "trigger" in spec.sim:
        wiring.pulses(spec, "sim.trigger", spec.sim["trigger"], detector.external_trigger)
    return detector


def _panda(spec: DeviceSpec, wiring: Wiring) -> PVGroup:
    encoders = {
        int(number): wiring.encoder(spec, f"options.encoders.{number}", motor)
        for number, motor in spec.options.get("encoders", {}).items()
    }
    return PandASim(spec.prefix, sim=spec.sim, encoders=encoders)


def _event_detector(spec: DeviceSpec, wiring: Wiring) -> PVGroup:
    from .event_detector import EventDetectorSim

    names = spec.sim.get("choppers", [])
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise SimulatorError(
            f"device {spec.name!r} of profile {wiring.profile.name!r}: sim.choppers must be a "
            f"list of chopper device names, not {names!r}"
        )
    choppers = [wiring.chopper(spec, "sim.choppers", name) for name in names]
    source = spec.sim.get("source")
    cable = wiring.source(spec, "sim.source", source) if source else None
    return EventDetectorSim(spec.prefix, sim=spec.sim, choppers=choppers, source=cable)


def _register_defaults() -> None:
    # Imported here: the device libraries are heavy and only needed to build a server.
    import ophyd
    from ophyd_async.epics.motor import Motor

    from hutch.devices.areadetector import AreaDetector
    from hutch.devices.beam import BeamCurrent
    from hutch.devices.chopper import DiskChopper
    from hutch.devices.event_detector import EventDetector
    from hutch.devices.panda import PandA
    from hutch.devices.scaler import Scaler
    from hutch.devices.source import NeutronSource

    for cls, factory in (
        (Motor, _motor),
        (ophyd.EpicsMotor, _motor),
        (Scaler, _scaler),
        (BeamCurrent, _beam),
        (AreaDetector, _area_detector),
        (PandA, _panda),
        (DiskChopper, _chopper),
        (NeutronSource, _source),
        (EventDetector, _event_detector),
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


def build_ioc(profile: Profile, ioc: str | None = None) -> Wiring:
    """The simulated hardware of IOC ``ioc`` (default: the first), built and cabled: its
    ``groups`` by device name, and the ``tasks`` of its links to other IOCs."""
    ioc = ioc or profile.iocs[0]
    if ioc not in profile.iocs:
        raise SimulatorError(
            f"profile {profile.name!r} has no IOC {ioc!r}; its IOCs: {', '.join(profile.iocs)}"
        )
    wiring = Wiring(profile, ioc)
    for spec in profile.devices:
        if spec.ioc != ioc:
            continue
        cls = spec.device_class
        factory = simulator_for(cls)
        if factory is None:
            raise SimulatorError(
                f"device {spec.name!r} of profile {profile.name!r}: class "
                f"{cls.__module__}.{cls.__qualname__} has no simulator "
                "(hutch.simulators.register_simulator adds one)"
            )
        wiring.groups[spec.name] = factory(spec, wiring)
    wiring.connect()

    physics = physics_for(profile, wiring.groups)
    if physics is not None:
        for group in wiring.groups.values():
            if isinstance(group, ScalerRecord):
                group.count_source = _scaler_counts(physics, group)
    return wiring


def build_groups(profile: Profile, ioc: str | None = None) -> dict[str, PVGroup]:
    """The simulator PVGroup of every device of IOC ``ioc`` (default: the first), by name."""
    return build_ioc(profile, ioc).groups


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


def make_pvdb(profile: Profile, groups: dict[str, PVGroup] | None = None) -> dict[str, Any]:
    """The caproto PV database serving exactly the PVs of ``groups`` (default: the first IOC's
    devices of ``profile``); a PV served twice is an error naming the device."""
    pvdb: dict[str, Any] = {}
    for name, group in (build_groups(profile) if groups is None else groups).items():
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


def serve(
    profile: Profile,
    port: int,
    host: str = LOOPBACK,
    ioc: str | None = None,
    peers: Sequence[int] = (),
) -> None:
    """Serve IOC ``ioc`` (default: the first) of ``profile``'s simulated beamline over Channel
    Access on ``host:port`` (blocks); its links reach the other IOCs on ``peers`` ports."""
    os.environ.update(ca_server_env(port, host))
    if peers:
        # The links' CA client (libca, read once per process) searches the other IOCs only.
        os.environ.update(ca_client_env(*peers, host=host))
    from .server import run  # after the environment is set: caproto reads it on import

    wiring = build_ioc(profile, ioc)
    pvdb = make_pvdb(profile, wiring.groups)
    ensure_repeater()
    log.info(
        "serving %d PVs of IOC %r of profile %r on %s:%d",
        len(pvdb),
        wiring.ioc,
        profile.name,
        host,
        port,
    )
    run(pvdb, interfaces=[host], tasks=wiring.tasks)
