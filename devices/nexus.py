"""The NeXus base class each kind of device is written as in hutch's NeXus files."""

from __future__ import annotations

import ophyd
from ophyd_async.core import StandardDetector
from ophyd_async.epics.motor import Motor

from .beam import BeamCurrent
from .chopper import DiskChopper
from .scaler import Scaler
from .source import NeutronSource

__all__ = ["nexus_class"]

# Most specific first; a device class matches its first base listed here.
_BASE_CLASSES: tuple[tuple[type, str], ...] = (
    (Motor, "NXpositioner"),
    (ophyd.PositionerBase, "NXpositioner"),
    (StandardDetector, "NXdetector"),
    (ophyd.areadetector.DetectorBase, "NXdetector"),
    (Scaler, "NXdetector"),
    (BeamCurrent, "NXsource"),
    (NeutronSource, "NXsource"),
    (DiskChopper, "NXdisk_chopper"),
)


def nexus_class(device_class: type) -> str:
    """The NeXus base class for ``device_class``: NXpositioner for motors, NXsource for the
    source's beam current or pulses, NXdisk_chopper for disk choppers, NXdetector for
    detectors and anything else read (bluesky calls those detectors too; NXinstrument
    admits no NXsensor)."""
    for base, nx_class in _BASE_CLASSES:
        if issubclass(device_class, base):
            return nx_class
    return "NXdetector"
