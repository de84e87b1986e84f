"""A pulsed neutron source (a spallation target): its pulse timing and proton charge."""

from __future__ import annotations

from ophyd_async.core import StandardReadable
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics.core import epics_signal_r

__all__ = ["NeutronSource"]


class NeutronSource(StandardReadable):
    """The accelerator's view of a pulsed source (``PREFIX...``): the pulse rate and length,
    the proton charge of the last pulse and accumulated since the IOC started (µC), the
    beam power (MW) and the last pulse's time and count.

    TOF plans count for a proton charge by watching ``accumulated_charge``; a suspender on
    ``power`` pauses counting while the beam is off.
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.proton_charge = epics_signal_r(float, prefix + "ProtonCharge_R")
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.accumulated_charge = epics_signal_r(float, prefix + "AccumCharge_R")
            self.power = epics_signal_r(float, prefix + "Power_R")
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.pulse_rate = epics_signal_r(float, prefix + "PulseRate_R")
            self.pulse_length = epics_signal_r(float, prefix + "PulseLength_R")
        self.pulse_count = epics_signal_r(int, prefix + "PulseCount_R")
        self.pulse_time = epics_signal_r(float, prefix + "PulseTime_R")
        super().__init__(name=name)
