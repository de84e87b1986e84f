"""A simulated EPICS scaler record, for hutch's ``Scaler`` and ophyd's ``EpicsScaler``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from caproto import ChannelType, SkipWrite
from caproto.server import PVGroup, pvproperty

from .options import sim_options

__all__ = ["NUM_CHANNELS", "ScalerRecord"]

NUM_CHANNELS = 32
FREQ = 1.0e7
"""Time-base frequency (Hz): channel 1 counts FREQ * T ticks."""

_UPDATE = 0.1
"""Seconds between ``.T`` updates while counting."""

CountSource = Callable[[float], Mapping[int, int]]
"""Given the count time, counts per channel number (channels not given count 0)."""

_DEFAULTS: dict[str, Any] = {"monitor_channel": None, "detector_channel": None, "count_time": 1.0}


def _channel_properties() -> dict[str, pvproperty]:
    props: dict[str, pvproperty] = {}
    for n in range(1, NUM_CHANNELS + 1):
        props[f"s{n}"] = pvproperty(name=f".S{n}", value=0, read_only=True, doc=f"Counts {n}")
        props[f"nm{n}"] = pvproperty(name=f".NM{n}", value="", dtype=ChannelType.STRING)
        props[f"pr{n}"] = pvproperty(name=f".PR{n}", value=0, doc=f"Preset {n}")
        props[f"g{n}"] = pvproperty(
            name=f".G{n}", value="N", enum_strings=("N", "Y"), dtype=ChannelType.ENUM
        )
    return props


class ScalerRecord(PVGroup):
    """One simulated scaler record: ``PREFIX.CNT``, ``.CONT``, ``.TP``, ``.T``, ``.FREQ``,
    ``.NCH``, ``.S1``-``.S32``, ``.NM1``-``.NM32``, ``.PR1``-``.PR32``, ``.G1``-``.G32``,
    ``.EGU``, ``.DLY``, ``.RATE``, ``.TP1``, ``.DLY1``, ``.RAT1``.

    A put of 1 to ``.CNT`` counts for ``.TP`` seconds; its put-callback completes when the count
    is over (``.CNT`` back to "Done"). Channel 1 is the time base; the other channels get the
    counts of ``count_source(T)`` (the physics model), fixed at the end of the count.
    """

    cnt = pvproperty(
        name=".CNT", value="Done", enum_strings=("Done", "Count"), dtype=ChannelType.ENUM
    )
    cont = pvproperty(
        name=".CONT",
        value="OneShot",
        enum_strings=("OneShot", "AutoCount"),
        dtype=ChannelType.ENUM,
    )
    tp = pvproperty(name=".TP", value=1.0, precision=3, units="s")
    t = pvproperty(name=".T", value=0.0, precision=3, units="s", read_only=True)
    freq = pvproperty(name=".FREQ", value=FREQ, precision=0, units="Hz")
    nch = pvproperty(name=".NCH", value=NUM_CHANNELS, read_only=True, dtype=ChannelType.INT)
    egu = pvproperty(name=".EGU", value="cts", dtype=ChannelType.STRING)
    dly = pvproperty(name=".DLY", value=0.0, precision=3, units="s")
    rate = pvproperty(name=".RATE", value=10.0, precision=1, units="Hz")
    tp1 = pvproperty(name=".TP1", value=1.0, precision=3, units="s")
    dly1 = pvproperty(name=".DLY1", value=0.0, precision=3, units="s")
    rat1 = pvproperty(name=".RAT1", value=10.0, precision=1, units="Hz")
    locals().update(_channel_properties())

    def __init__(
        self,
        prefix: str,
        *,
        channels: Mapping[str, int] | None = None,
        sim: Mapping[str, Any] | None = None,
        count_source: CountSource | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, **kwargs)
        self.options = sim_options("scaler", prefix, sim, _DEFAULTS)
        self.channels = dict(channels or {})
        self.count_source = count_source
        self._lock = asyncio.Lock()

    def channel(self, kind: str, number: int) -> Any:
        """The pvproperty instance of field ``kind`` (``s``, ``nm``, ``pr``, ``g``) of a channel."""
        return getattr(self, f"{kind}{number}")

    @cnt.startup
    async def cnt(self, instance: Any, async_lib: Any) -> None:
        await self.tp.write(float(self.options["count_time"]))
        await self.channel("nm", 1).write("clock")
        for name, number in self.channels.items():
            await self.channel("nm", int(number)).write(str(name)[:39])
        await self.channel("pr", 1).write(int(FREQ * self.tp.value))
        await self.channel("g", 1).write("Y")

    @cnt.putter
    async def cnt(self, instance: Any, value: str) -> None:
        if value != "Count":
            # "Done" aborts nothing here: a count always runs to its preset time.
            return
        async with self._lock:
            await instance.write("Count", verify_value=False)
            await self._count(float(self.tp.value))
            await instance.write("Done", verify_value=False)
        raise SkipWrite

    @tp.putter
    async def tp(self, instance: Any, value: float) -> float:
        value = max(float(value), 0.0)
        await self.channel("pr", 1).write(int(FREQ * value))
        return value

    async def _count(self, preset: float) -> None:
        """Count for ``preset`` seconds of real time, then latch all channels."""
        for n in range(1, NUM_CHANNELS + 1):
            if self.channel("s", n).value:
                await self.channel("s", n).write(0)
        await self.t.write(0.0)
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < preset:
            await asyncio.sleep(min(_UPDATE, preset - elapsed))
            await self.t.write(min(time.monotonic() - start, preset))
        await self.t.write(preset)
        counts = dict(self.count_source(preset)) if self.count_source else {}
        counts[1] = int(round(self.freq.value * preset))
        for number, value in counts.items():
            await self.channel("s", number).write(int(value))
