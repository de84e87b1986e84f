"""The rows ``hutch bench`` measures: `BenchRow`, `BenchTableError` and `stopwatch`, which
every table module of `hutch.bench` builds on."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from hutch.errors import HutchError

__all__ = ["BenchRow", "BenchTableError", "stopwatch"]


class BenchTableError(HutchError):
    """A table cannot be measured (what it measures is not there, or not as expected)."""


@dataclass
class BenchRow:
    """One measurement: milliseconds per operation (scan point, event, query) and its ratio
    to its baseline row; throughput and latency tables add their own columns."""

    table: str
    name: str
    ms: float
    baseline: str | None = None
    """Name of the row this one is compared to; the table's first row if None."""
    ratio: float | None = 1.0
    """None: a row without baseline (its table's rows are not comparable)."""
    ratio_of: Literal["time", "rate"] = "time"
    """time: ms / the baseline's ms (x baseline, lower is better); rate: this row's
    throughput / the baseline's (the fraction of the baseline's rate, higher is better)."""
    unit: str = "ms"
    """What ``ms`` is per, as its column is headed (ms, ms/event, median ms)."""
    events_per_s: float | None = None
    mb_per_s: float | None = None
    """Throughput rows: events and megabytes (10^6 bytes) of event data per second."""
    worst_ms: float | None = None
    """Rows timing several operations: the slowest (``ms`` is then their median)."""
    p95_ms: float | None = None
    """Latency rows: the 95th percentile of the operations' times."""
    found: int | None = None
    """Search rows: the fewest runs any of the row's queries returned."""
    min_ratio: float | None = None
    max_ms: float | None = None
    min_rate: float | None = None
    """Goals: the ratio at least ``min_ratio``; the worst (else the only) time below ``max_ms``;
    ``events_per_s`` at least ``min_rate``."""
    met: bool | None = None
    """Whether the row meets its goal (None: no goal)."""


@contextlib.contextmanager
def stopwatch(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the time the ``with`` block takes to ``seconds[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
