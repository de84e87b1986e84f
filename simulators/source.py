"""A simulated pulsed neutron source (a spallation target): pulse timing and proton charge.

Pulses follow `hutch.tof`: pulse ``n`` leaves at ``T0(n) = n / rate`` POSIX seconds,
so the choppers and detectors of other IOCs (other processes) know them without asking.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from caproto import SkipWrite
from caproto.server import PVGroup, pvproperty

from hutch import tof

from .beam import beam_dump_pv
from .options import sim_options

__all__ = ["NeutronSourceSim"]

log = logging.getLogger(__name__)

_DEFAULTS: dict[str, Any] = {
    "pulse_rate": tof.ESS_PULSE_RATE,  # Hz
    "pulse_length": tof.ESS_PULSE_LENGTH,  # s
    "power": 2.0,  # MW on target
    "proton_energy_gev": 2.0,
    "noise": 0.01,  # relative rms of the charge per pulse
}


def _ro(name: str, value: Any, units: str = "", precision: int = 0, doc: str = "") -> Any:
    extra = {"precision": precision} if isinstance(value, float) else {}  # ints have none
    return pvproperty(name=name, value=value, units=units, read_only=True, doc=doc, **extra)


class NeutronSourceSim(PVGroup):
    """The accelerator's view of a pulsed source, ``PREFIX`` as ``TOF:SRC:``.

    Read-only: ``PulseRate_R`` (Hz), ``PulseLength_R`` (s), ``PulseCount_R`` (pulses since the
    IOC started), ``PulseTime_R`` (POSIX s of the last pulse's T0), ``ProtonCharge_R`` (µC of
    the last pulse), ``AccumCharge_R`` (µC since the IOC started), ``Power_R`` (MW). They are
    updated at every pulse, with the pulse's T0 as their timestamp.

    Simulator-only control PV: ``SIM:DUMP`` (Beam/Dumped) — dumped, the pulses carry no
    protons (charge 0, power 0) while the pulse clock runs on.

    ``sim`` options: ``pulse_rate, pulse_length, power, proton_energy_gev, noise``.
    """

    pulse_rate = _ro("PulseRate_R", tof.ESS_PULSE_RATE, "Hz", 3, "Pulse repetition rate")
    pulse_length = _ro("PulseLength_R", tof.ESS_PULSE_LENGTH, "s", 6, "Proton pulse length")
    pulse_count = _ro("PulseCount_R", 0, doc="Pulses since the IOC started")
    pulse_time = _ro("PulseTime_R", 0.0, "s", 6, "POSIX time of the last pulse's T0")
    proton_charge = _ro("ProtonCharge_R", 0.0, "uC", 3, "Proton charge of the last pulse")
    accumulated_charge = _ro("AccumCharge_R", 0.0, "uC", 3, "Proton charge since IOC start")
    power = _ro("Power_R", 0.0, "MW", 3, "Beam power on target")
    dump = beam_dump_pv()

    def __init__(
        self,
        prefix: str,
        *,
        sim: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, **kwargs)
        self.options = sim_options("neutron source", prefix, sim, _DEFAULTS)
        self.rate = float(self.options["pulse_rate"])
        if self.rate <= 0:
            raise ValueError(f"neutron source {prefix}: pulse_rate must be > 0, not {self.rate}")
        self._rng = rng or np.random.default_rng()
        self._first = tof.pulse_index(time.time(), self.rate)  # the last pulse before start
        self._last = self._first
        self._charge = 0.0  # µC, accumulated since start
        self._pulse_charge = 0.0  # µC, of the last pulse

    # -- the physics ------------------------------------------------------------------------

    @property
    def dumped(self) -> bool:
        """True while the beam is dumped."""
        return self.dump.value == "Dumped"

    @property
    def nominal_charge(self) -> float:
        """The charge per pulse (µC) at the nominal power: power / proton energy / rate."""
        current = float(self.options["power"]) / float(self.options["proton_energy_gev"])  # mA
        return current * 1e3 / self.rate

    def _pulse_sample(self) -> float:
        if self.dumped:
            return 0.0
        noise = float(self.options["noise"]) * self._rng.standard_normal()
        return max(self.nominal_charge * (1.0 + noise), 0.0)

    def _power_of(self, charge: float) -> float:
        """Beam power (MW) of pulses of ``charge`` µC: charge × proton energy × rate."""
        return charge * 1e-6 * float(self.options["proton_energy_gev"]) * 1e3 * self.rate

    @property
    def pulse_index(self) -> int:
        """The index ``n`` (T0 = n / rate) of the last pulse the IOC has accounted for."""
        return self._last

    @property
    def accumulated(self) -> float:
        """Proton charge (µC) accumulated since the IOC started."""
        return self._charge

    # -- the pulse clock ----------------------------------------------------------------------

    async def _publish(self) -> None:
        t0 = float(tof.pulse_time(self._last, self.rate))
        await self.pulse_count.write(self._last - self._first, timestamp=t0)
        await self.pulse_time.write(t0, timestamp=t0)
        await self.proton_charge.write(self._pulse_charge, timestamp=t0)
        await self.accumulated_charge.write(self._charge, timestamp=t0)
        charge = self._pulse_charge if self._last > self._first else self.nominal_charge
        await self.power.write(0.0 if self.dumped else self._power_of(charge))

    def _account(self, upto: int) -> None:
        """Every pulse after the last accounted one up to ``upto``: a late loop skips none."""
        for _ in range(self._last, upto):
            self._pulse_charge = self._pulse_sample()
            self._charge += self._pulse_charge
        self._last = max(self._last, upto)

    @pulse_count.startup
    async def pulse_count(self, instance: Any, async_lib: Any) -> None:
        await self.pulse_rate.write(self.rate)
        await self.pulse_length.write(float(self.options["pulse_length"]))
        await self._publish()
        while True:
            # Sleep until the next T0 on the wall clock; a timer that fires a hair early
            # (clock granularity) just sleeps again.
            wait = float(tof.pulse_time(self._last + 1, self.rate)) - time.time()
            await asyncio.sleep(max(wait, 0.0) + 1e-4)
            now = tof.pulse_index(time.time(), self.rate)
            if now <= self._last:
                continue
            try:
                self._account(now)
                await self._publish()
            except Exception:
                log.exception("neutron source %s: pulse update failed", self.prefix)

    @dump.putter
    async def dump(self, instance: Any, value: str) -> None:
        # Apply at once, so the power read right after the put already reflects it.
        await instance.write(value, verify_value=False)
        await self.power.write(0.0 if self.dumped else self._power_of(self.nominal_charge))
        raise SkipWrite
