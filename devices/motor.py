"""ophyd-async's EPICS motor, with the settings every move consults kept monitored."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from functools import cached_property

from ophyd_async.core import AsyncStatus, SignalR
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics import motor

__all__ = ["Motor"]


@dataclass
class _MonitoredMoveLogic(motor.MotorFlyableMovableLogic):
    precision: SignalR[int]

    async def get_units_precision(self) -> tuple[str | None, int | None]:
        # ophyd-async asks the readback's describe(), a CTRL read of the IOC on every move
        # (twice); EGU and PREC are the same numbers and are monitored while staged.
        units, precision = await asyncio.gather(
            self.motor_egu.get_value(), self.precision.get_value()
        )
        return units, precision


class Motor(motor.Motor):
    """A motor record (``PREFIX.VAL``, ``.RBV``, ``.DMOV``...), as ophyd-async's ``Motor``.

    Each move of ophyd-async's motor reads the readback, soft and dial limits, units,
    precision, velocity and acceleration before it puts the setpoint: a dozen Channel Access
    round trips to move a motor once, most of a step scan's time per point. While this motor
    is staged (for the length of a scan) those signals are monitored instead, so a move is
    one put; a limit or velocity changed mid-scan still arrives by monitor before the next
    move. The readback stays exact: the record posts its final position before the
    put-callback that ends the move, on the same ordered connection.

    Each reading also holds the setpoint (``-user_setpoint``), and the configuration the soft
    limits and acceleration time: a NeXus NXpositioner's target_value, soft_limit_min/max.
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        super().__init__(prefix, name)
        self.add_readables([self.user_setpoint])  # monitored while staged: no extra read
        self.add_readables(
            [self.low_limit_travel, self.high_limit_travel, self.acceleration_time],
            Format.CONFIG_SIGNAL,
        )

    @cached_property
    def _logic(self) -> _MonitoredMoveLogic:
        base = motor.Motor._logic.func(self)  # ophyd-async's own wiring of the signals
        signals = {f.name: getattr(base, f.name) for f in fields(base)}
        return _MonitoredMoveLogic(**signals, precision=self.precision)

    @property
    def _move_settings(self) -> tuple[SignalR, ...]:
        return (
            self.low_limit_travel,
            self.high_limit_travel,
            self.dial_low_limit_travel,
            self.dial_high_limit_travel,
            self.velocity,
            self.acceleration_time,
            self.max_velocity,
            self.motor_egu,
            self.precision,
            self.motor_done_move,
        )

    @AsyncStatus.wrap
    async def stage(self) -> None:
        # StandardReadable stages (monitors) the readback; the rest are staged here.
        await asyncio.gather(super().stage(), *(s.stage() for s in self._move_settings))

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        await asyncio.gather(super().unstage(), *(s.unstage() for s in self._move_settings))
