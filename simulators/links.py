"""Links between simulated IOCs in different processes, over Channel Access.

At a beamline the area detector's IOC runs on its own and is wired to the rest by cables: the
PandA's TTL output triggers it, and the sample it images sits on motors driven by another IOC.
When the profile puts a device in its own IOC (``ioc = "..."``), the simulator replaces those
in-process references with these links: a CA monitor of a motor's readback stands in for the
stage position, and a CA monitor of the PandA's simulator-only pulse PV for the trigger cable.

They use aioca (libca, as ophyd-async does): its monitor callbacks run in order on the
server's event loop, while caproto's client calls them from a thread pool, unordered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

__all__ = ["PulseLink", "RemotePosition"]

log = logging.getLogger(__name__)

#: A readback older than this (s) means the motor has stopped: a moving motor record posts
#: its readback every 50 ms (``simulators.motor.TICK``).
_STALE = 0.12


class RemotePosition:
    """A motor record served by another IOC, as a position source: its readback (``.RBV``)
    and done-moving flag (``.DMOV``) monitored over CA.

    While the motor moves, ``position_at(t)`` extrapolates the last readback with the velocity
    of the last two, exact at constant velocity, as during a fly scan.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._samples: list[tuple[float, float]] = []  # (timestamp, position), newest last
        self._done = True
        self._subscriptions: list[Any] = []

    @property
    def position(self) -> float:
        """The last readback (0 before the first arrives)."""
        return self._samples[-1][1] if self._samples else 0.0

    def position_at(self, t: float) -> float:
        """The position at wall-clock time ``t``, extrapolated from the last readbacks."""
        if not self._samples:
            return 0.0
        t1, x1 = self._samples[-1]
        if self._done or len(self._samples) < 2 or t - t1 > _STALE:
            return x1
        t0, x0 = self._samples[-2]
        velocity = (x1 - x0) / (t1 - t0) if t1 > t0 else 0.0
        return x1 + velocity * (t - t1)

    def _readback(self, value: Any) -> None:
        self._samples = [*self._samples[-1:], (value.timestamp, float(value))]

    def _done_moving(self, value: Any) -> None:
        self._done = bool(value)

    async def run(self) -> None:
        """Start monitoring the motor (for the life of the server)."""
        from aioca import FORMAT_TIME, camonitor

        self._subscriptions = [
            camonitor(f"{self.prefix}.RBV", self._readback, format=FORMAT_TIME),
            camonitor(f"{self.prefix}.DMOV", self._done_moving),
        ]


class PulseLink:
    """The TTL cable from a PandA in another IOC: its ``SIM:TTLOUT1`` pulse batches
    (``[first_index, t0, t1, ...]``) delivered to ``on_pulse(timestamp)`` one by one, in order.

    Pulses lost on the way (a monitor queue overflowing) are logged, not invented: the
    detector then writes fewer frames than the PandA captured, as with a loose cable.
    """

    def __init__(self, pv: str, on_pulse: Callable[[float], Awaitable[Any]]) -> None:
        self.pv = pv
        self.on_pulse = on_pulse
        self._next: int | None = None
        self._subscription: Any = None

    async def _batch(self, value: np.ndarray) -> None:
        if len(value) < 2:
            return
        # A batch starting below the expected index means the TTL source was re-enabled.
        first, times = int(value[0]), value[1:]
        if self._next is not None and first > self._next:
            log.warning("%s: %d pulse(s) lost before pulse %d", self.pv, first - self._next, first)
        self._next = first + len(times)
        for timestamp in times:
            await self.on_pulse(float(timestamp))

    async def run(self) -> None:
        """Start monitoring the pulse PV (for the life of the server)."""
        from aioca import FORMAT_TIME, camonitor

        started = False

        async def batch(value: Any) -> None:
            nonlocal started
            if not started:  # the monitor's first update is the last batch before we came
                started = True
                return
            await self._batch(np.asarray(value))

        self._subscription = camonitor(self.pv, batch, format=FORMAT_TIME, all_updates=True)
