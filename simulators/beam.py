"""A simulated source: the storage-ring beam current, with a beam dump for tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from caproto import SkipWrite
from caproto.server import PVGroup, pvproperty

from .options import sim_options
from .pvs import enum_pv

__all__ = ["BeamCurrentSource", "beam_dump_pv"]

_DEFAULTS: dict[str, Any] = {"current": 300.0, "noise": 0.05}
UPDATE_PERIOD = 0.5
"""Seconds between updates of CURRENT."""


def beam_dump_pv() -> Any:
    """``SIM:DUMP``, the simulator-only PV of a simulated source that dumps its beam (1) and
    restores it (0); `simulators.control.beam_dump` writes it."""
    return enum_pv(
        "SIM:DUMP", ("Beam", "Dumped"), doc="Simulator only: 1 dumps the beam, 0 restores it"
    )


class BeamCurrentSource(PVGroup):
    """The beam current ``PREFIX CURRENT`` (mA), updated at 2 Hz around its nominal value.

    Simulator-only control PV (no real source has it): ``PREFIX SIM:DUMP`` — write 1 to dump
    the beam (CURRENT reads 0 from the next update on), 0 to restore it. ``position`` is the
    live current, for the physics model.
    """

    current = pvproperty(
        name="CURRENT",
        value=0.0,
        precision=2,
        units="mA",
        read_only=True,
        doc="Beam current",
    )
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
        self.options = sim_options("beam current", prefix, sim, _DEFAULTS)
        self._rng = rng or np.random.default_rng()

    @property
    def dumped(self) -> bool:
        """True while the beam is dumped."""
        return self.dump.value == "Dumped"

    def _sample(self) -> float:
        if self.dumped:
            return 0.0
        nominal = float(self.options["current"])
        return max(nominal + float(self.options["noise"]) * self._rng.standard_normal(), 0.0)

    @property
    def position(self) -> float:
        """The live beam current (mA); the physics model reads it like a motor position."""
        return float(self.current.value)

    @current.startup
    async def current(self, instance: Any, async_lib: Any) -> None:
        await instance.write(self._sample())

    @current.scan(period=UPDATE_PERIOD, use_scan_field=False)
    async def current(self, instance: Any, async_lib: Any) -> None:
        await instance.write(self._sample())

    @dump.putter
    async def dump(self, instance: Any, value: str) -> None:
        # Apply at once, so the current read right after the put already reflects it.
        await instance.write(value, verify_value=False)
        await self.current.write(self._sample())
        raise SkipWrite
