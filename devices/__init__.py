"""Devices of hutch's beamlines.

hutch uses ophyd-async's own device classes where they fit (e.g.
``ophyd_async.epics.motor.Motor``) and classic ophyd classes where a beamline prefers them
(``ophyd.EpicsMotor``); this package adds the ones the field does not provide.
"""

from .beam import BeamCurrent
from .beamline import DeviceConnectionError, connect_devices, make_devices
from .scaler import CountMode, Scaler

__all__ = [
    "BeamCurrent",
    "CountMode",
    "DeviceConnectionError",
    "Scaler",
    "connect_devices",
    "make_devices",
]
