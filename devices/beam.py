"""The storage-ring (or source) beam current."""

from __future__ import annotations

from ophyd_async.core import StandardReadable
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics.core import epics_signal_r

__all__ = ["BeamCurrent"]


class BeamCurrent(StandardReadable):
    """The source's beam current (``PREFIX CURRENT``, in mA).

    Read it as a monitor in baseline or primary streams, or watch it with a bluesky suspender
    (``SuspendFloor(ring_current.current, ...)``) so a beam dump pauses a scan.
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.current = epics_signal_r(float, prefix + "CURRENT")
        super().__init__(name=name)
