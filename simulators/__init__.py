"""The simulated beamline: caproto IOCs serving exactly the PVs of a beamline profile.

``serve(profile, port)`` runs them in the foreground (``python -m hutch.simulators``);
``start``/``status``/``stop`` manage a background simulator (``hutch sim up/status/down``);
``beam_dump``/``beam_restore`` drive the simulator-only beam-dump PV. The sample the detector
sees is the profile's ``[simulation.peak]`` (:class:`BeamlinePhysics`).
"""

from .beam import BeamCurrentSource
from .chopper import DiskChopperSim
from .control import beam_dump, beam_restore, ca_read, ca_write
from .event_detector import EventDetectorSim
from .ioc import (
    SimulatorError,
    build_groups,
    build_ioc,
    make_pvdb,
    physics_for,
    register_simulator,
    serve,
    simulator_for,
)
from .motor import MotorRecord
from .physics import BeamlinePhysics, expected_counts, flux_factor, gaussian
from .process import SimState, SimulatorStartError, describe, free_port, start, status, stop
from .scaler import ScalerRecord
from .source import NeutronSourceSim

__all__ = [
    "BeamCurrentSource",
    "BeamlinePhysics",
    "DiskChopperSim",
    "EventDetectorSim",
    "MotorRecord",
    "NeutronSourceSim",
    "ScalerRecord",
    "SimState",
    "SimulatorError",
    "SimulatorStartError",
    "beam_dump",
    "beam_restore",
    "build_groups",
    "build_ioc",
    "describe",
    "ca_read",
    "ca_write",
    "expected_counts",
    "free_port",
    "flux_factor",
    "gaussian",
    "make_pvdb",
    "physics_for",
    "register_simulator",
    "serve",
    "simulator_for",
    "start",
    "status",
    "stop",
]
