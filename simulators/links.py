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

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

__all__ = [
    "LocalChopper",
    "LocalSource",
    "PulseLink",
    "RemoteChopper",
    "RemotePosition",
    "RemoteSource",
    "Timeline",
]

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


class Timeline:
    """A value's recent history: ``at(times)`` gives the value each time saw (the last one
    recorded at or before it; ``initial`` before the first). Records older than ``keep`` s
    before the newest are dropped (the one in force then is kept)."""

    def __init__(self, initial: float, keep: float = 120.0) -> None:
        self.initial = initial
        self.keep = keep
        self._times: list[float] = []
        self._values: list[float] = []

    @property
    def latest(self) -> float:
        """The value now."""
        return self._values[-1] if self._values else self.initial

    def record(self, t: float, value: float) -> None:
        """``value`` from time ``t`` on (a time before the last record counts as the last's:
        the history never changes after the fact)."""
        if self._times and t < self._times[-1]:
            t = self._times[-1]
        self._times.append(t)
        self._values.append(value)
        cut = bisect.bisect_right(self._times, t - self.keep) - 1
        if cut > 0:
            del self._times[:cut], self._values[:cut]

    def at(self, times: np.ndarray) -> np.ndarray:
        """The value at each of ``times`` (float64)."""
        values = np.asarray([self.initial, *self._values], dtype=np.float64)
        return values[np.searchsorted(self._times, np.asarray(times, np.float64), side="right")]


def _stamp(value: Any) -> float:
    stamp = getattr(value, "timestamp", None)
    return float(stamp) if stamp else time.time()


class RemoteChopper:
    """A disk chopper served by another IOC (``simulators.chopper``), for a detector: its
    speed (``Spd_R``, Hz), actual TDC delay (``TotDly`` + ``DiffTSSamples``, ns) and phase
    lock (``InPhs_R``) monitored over CA, the lock with its history (`locked_at`). Until the
    first values arrive, and while the IOC is disconnected, it counts as unlocked."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.speed = math.nan
        self._total = self._difference = math.nan
        self.lock = Timeline(0.0)
        self._subscriptions: list[Any] = []

    @property
    def delay_ns(self) -> float:
        """The TDC delay as last measured (ns; NaN until known)."""
        return self._total + self._difference

    def locked_at(self, times: np.ndarray) -> np.ndarray:
        """Whether the chopper was phase-locked at each of ``times`` (POSIX s)."""
        return self.lock.at(times) > 0

    def _update(self, attr: str) -> Callable[[Any], None]:
        def update(value: Any) -> None:
            if not getattr(value, "ok", True):  # disconnected: nothing is known
                self.speed = self._total = self._difference = math.nan
                self.lock.record(time.time(), 0.0)
            elif attr == "lock":
                self.lock.record(_stamp(value), float(int(value) == 1))
            else:
                setattr(self, attr, float(value))

        return update

    async def run(self) -> None:
        """Start monitoring the chopper (for the life of the server)."""
        from aioca import FORMAT_TIME, camonitor

        for suffix, attr in (
            ("Spd_R", "speed"),
            ("TotDly", "_total"),
            ("DiffTSSamples", "_difference"),
            ("InPhs_R", "lock"),
        ):
            self._subscriptions.append(
                camonitor(
                    self.prefix + suffix,
                    self._update(attr),
                    format=FORMAT_TIME,
                    notify_disconnect=True,
                    all_updates=attr == "lock",  # every change of lock, in order
                )
            )


class RemoteSource:
    """A pulsed source served by another IOC (``simulators.source``), for a detector: its
    beam power (``Power_R``, MW) monitored over CA, with its history (`power_at`); 0 (no
    beam) until the first value arrives and while the IOC is disconnected."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.power = Timeline(0.0)
        self._subscription: Any = None

    def power_at(self, times: np.ndarray) -> np.ndarray:
        """The beam power (MW) at each of ``times`` (POSIX s)."""
        return self.power.at(times)

    def _update(self, value: Any) -> None:
        ok = getattr(value, "ok", True)
        self.power.record(_stamp(value) if ok else time.time(), float(value) if ok else 0.0)

    async def run(self) -> None:
        """Start monitoring the source (for the life of the server)."""
        from aioca import FORMAT_TIME, camonitor

        self._subscription = camonitor(
            self.prefix + "Power_R",
            self._update,
            format=FORMAT_TIME,
            notify_disconnect=True,
            all_updates=True,
        )


_POLL = 0.02
"""Seconds between samples of a device of the same IOC (its lock or power history)."""


class _Polled:
    """A device of the same IOC sampled every `_POLL` s into a `Timeline` (caproto has no
    in-process monitor): ``sample()`` gives the value to record."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.history = Timeline(0.0)
        self._task: asyncio.Task | None = None

    def sample(self) -> float:
        raise NotImplementedError

    async def _poll(self) -> None:
        last = None
        while True:
            try:
                value = self.sample()
                if value != last:  # NaN != NaN: recorded each time, harmless
                    self.history.record(time.time(), value)
                    last = value
            except Exception:
                log.exception("sampling a device of the same IOC failed")
            await asyncio.sleep(_POLL)

    async def run(self) -> None:
        """Start sampling (for the life of the server)."""
        self._task = asyncio.get_running_loop().create_task(self._poll())


class LocalChopper(_Polled):
    """A disk chopper of the same IOC (a ``DiskChopperSim``, or a proxy of one), with
    `RemoteChopper`'s interface."""

    def sample(self) -> float:
        return float(bool(self.group.locked))

    @property
    def speed(self) -> float:
        return float(self.group.speed)

    @property
    def delay_ns(self) -> float:
        return float(self.group.delay_ns)

    def locked_at(self, times: np.ndarray) -> np.ndarray:
        return self.history.at(times) > 0


class LocalSource(_Polled):
    """A pulsed source of the same IOC (a ``NeutronSourceSim``, or a proxy of one), with
    `RemoteSource`'s interface."""

    def sample(self) -> float:
        return float(self.group.power.value)

    def power_at(self, times: np.ndarray) -> np.ndarray:
        return self.history.at(times)
