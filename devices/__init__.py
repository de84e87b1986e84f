"""Devices of hutch's beamlines.

hutch uses ophyd-async's own device classes where they fit and classic ophyd classes where a
beamline prefers them (``ophyd.EpicsMotor``); this package adds the ones the field does not
provide, and ``Motor``: ophyd-async's motor, moving in one round trip while staged.
"""

from .areadetector import AreaDetector
from .beam import BeamCurrent
from .beamline import DeviceConnectionError, connect_devices, devices_metadata, make_devices
from .cascade import ChopperCascade
from .chopper import ChopperSetpoint, DiskChopper
from .event_detector import EventDetector
from .motor import Motor
from .nexus import nexus_class
from .panda import PandA
from .scaler import CountMode, Scaler
from .source import NeutronSource

__all__ = [
    "AreaDetector",
    "BeamCurrent",
    "ChopperCascade",
    "ChopperSetpoint",
    "CountMode",
    "DeviceConnectionError",
    "DiskChopper",
    "EventDetector",
    "Motor",
    "NeutronSource",
    "PandA",
    "Scaler",
    "connect_devices",
    "devices_metadata",
    "make_devices",
    "nexus_class",
]
