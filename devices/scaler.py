"""A counting detector on an EPICS scaler record."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bluesky.protocols import Triggerable
from ophyd_async.core import (
    DEFAULT_TIMEOUT,
    AsyncStatus,
    DeviceVector,
    StandardReadable,
    StrictEnum,
)
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

__all__ = ["CountMode", "Scaler"]


class CountMode(StrictEnum):
    """The scaler record's CONT field."""

    ONE_SHOT = "OneShot"
    AUTO_COUNT = "AutoCount"


class Scaler(StandardReadable, Triggerable):
    """Counting detector on a scaler record (``PREFIX.CNT``, ``.TP``, ``.S1``...).

    Triggering starts one count of ``preset_time`` seconds and completes when the record
    reports the count done (put-callback on ``.CNT``). Reading gives the named channels,
    e.g. ``channels={"I0": 2, "diode": 3}`` reads ``.S2`` as ``<name>-I0`` and ``.S3`` as
    ``<name>-diode``, plus the elapsed count time. Channel 1 is the record's time base.
    """

    def __init__(self, prefix: str, channels: Mapping[str, int], name: str = "") -> None:
        if not channels:
            raise ValueError(f"scaler {name or prefix}: channels must name at least one channel")
        for channel, number in channels.items():
            if not 1 <= int(number) <= 32:
                raise ValueError(
                    f"scaler {name or prefix}: channel {channel!r} is S{number}, "
                    "but the scaler record has S1..S32"
                )
        self._channel_numbers = {channel: int(n) for channel, n in channels.items()}
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.preset_time = epics_signal_rw(float, prefix + ".TP")
            self.frequency = epics_signal_r(float, prefix + ".FREQ")
            self.names = DeviceVector(
                {n: epics_signal_r(str, f"{prefix}.NM{n}") for n in channels.values()}
            )
        # CNT is the record's Done/Count menu: True starts a count.
        self.count = epics_signal_rw(bool, prefix + ".CNT")
        self.count_mode = epics_signal_rw(CountMode, prefix + ".CONT")
        # Counts change on every trigger: read them from the IOC, never from a monitor cache.
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            for channel, number in self._channel_numbers.items():
                setattr(self, channel, epics_signal_r(int, f"{prefix}.S{number}"))
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.elapsed_time = epics_signal_r(float, prefix + ".T")
        super().__init__(name=name)

    @property
    def channel_names(self) -> list[str]:
        """The names of the counting channels, as given in the profile."""
        return list(self._channel_numbers)

    @AsyncStatus.wrap
    async def stage(self) -> None:
        # The preset time is monitored while staged: each trigger reads it for its timeout.
        await asyncio.gather(
            super().stage(), self.preset_time.stage(), self.count_mode.set(CountMode.ONE_SHOT)
        )

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        await asyncio.gather(super().unstage(), self.preset_time.unstage())

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        """Count for the preset time; done when the scaler record says the count is over."""
        preset = await self.preset_time.get_value()
        await self.count.set(True, timeout=preset + DEFAULT_TIMEOUT)
