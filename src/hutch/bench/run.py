"""``hutch bench``'s driver: `run_bench` measures the tables asked for (each in the module
named after it, imported only when asked for), judges every row against its baseline and
goal, and prints them or their JSON."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict
from pathlib import Path

from hutch.bench.rows import BenchRow, BenchTableError, stopwatch
from hutch.bench.tables import CA_TABLES, DEFAULT_TABLES, TABLES
from hutch.config import Settings
from hutch.profile import Profile

__all__ = ["run_bench"]

# What would point ensure_catalog at an external catalogue instead of the bench's own.
_EXTERNAL_CATALOG_ENV = ("HUTCH_CATALOG_URI", "HUTCH_CATALOG_API_KEY")


def run_bench(
    profile: Profile,
    *,
    tables: Collection[str] = DEFAULT_TABLES,
    points: int = 200,
    ops: int = 200,
    events: int = 1000,
    search_runs: int | None = None,
    fly_seconds: float | None = None,
    fly_frames: int | None = None,
    startup_tries: int = 3,
    reduce_frames: int | None = None,
    reduce_side: int | None = None,
    data_dir: Path | None = None,
    as_json: bool = False,
) -> list[BenchRow]:
    """Measure the ``tables`` (names of ``TABLES``), print them and return their rows.

    Against a private simulator, catalogue and C softIoc on free ports:

    - ``latency``: Channel Access latency (caget, caput with completion, ``ops`` each) of
      hutch's caproto simulator beside epicscorelibs' C softIoc;
    - ``sim-scan``: the per-point cost of a ``points``-point step scan of the profile's
      peak-axis motor (at high velocity) reading its scaler (zero count time): raw CA (the
      floor), hutch's devices on a bare RunEngine, a full hutch session (NeXus, catalogue,
      plot), and classic ophyd/pyepics on the same IOC; and each stack's fixed cost per run;
    - ``softioc-scan``: the per-point cost of a ``points``-point step scan of the C softIoc's
      setpoint (``BENCH:x``, put-completion, readback ``BENCH:x_RBV``) reading ``BENCH:det``:
      raw CA (pyepics put-completion + 2 gets, the floor), a bare bluesky RunEngine with
      ophyd-async CA signals and with ophyd v1 EpicsSignal/pyepics, and the RunEngine alone
      with ophyd-async soft signals (no I/O);
    - ``fly`` (``hutch.bench.fly``): the profile's PandA capturing CLOCK1 at 1 MHz for
      ``fly_seconds`` (default 3) into HDF5 on ``data_dir``'s disk with zero loss (points/s;
      goal 1 M/s) beside raw h5py appends of the same blocks there; and a ``fly_frames``
      (default 300) frame fly scan of its area detector in a full session, frames/s end to
      end beside the detector's nominal rate.

    On the disk of ``data_dir`` (default: ``Settings.from_env()``'s), where NeXus files and
    the catalogue live:

    - ``nexus``: NexusWriter throughput beside raw h5py (``hutch.bench.nexus``), ``events``
      scalar events and a tenth as many 512x512 frames;
    - ``ingest``: TiledWriter into a private embedded catalogue beside raw tiled-client
      appends, ``events // 2`` events a run (``hutch.bench.ingest``);
    - ``search``: ``search_runs`` over ``search_runs`` (default 10 000) catalogued runs,
      populated once and cached in ``data_dir/bench`` (``hutch.bench.search``);
    - ``startup``: ``hutch shell`` to its prompt, ``hutch run count`` and ``hutch queue up``,
      ``startup_tries`` times each, beside the bare imports of bluesky and ophyd-async, on a
      private simulator and catalogue (``hutch.bench.startup``);
    - ``reduce``: online reduction (``hutch.bench.reduce``), ``reduce_frames`` (default 100)
      frames a row of the profile's area detectors and a quarter as many of ``reduce_side``
      (default 1024) pixels square: azimuthal integration beside pyFAI's own, ROI statistics
      beside numpy's sum, the recorder's reduction lane beside the detector's frame rate,
      and the latency of a frame, in-process and through the recorder.

    A table that cannot be measured does not stop the others: they are printed, then
    ``BenchTableError`` names what failed. An external catalogue (``HUTCH_CATALOG_URI``) is
    never written to: every catalogue here is private.
    """
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise ValueError(f"no bench table {', '.join(unknown)}; tables: {', '.join(TABLES)}")
    data_dir = (data_dir or Settings.from_env().data_dir) / "bench"
    log = (lambda msg: print(msg, file=sys.stderr)) if as_json else print
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    rows: list[BenchRow] = []

    def measure(name: str, body: Callable[[], list[BenchRow]], timed: bool = True) -> None:
        with stopwatch(seconds if timed else {}, name):
            try:
                rows.extend(body())
            except Exception as exc:  # the other tables still run and print
                traceback.print_exc()
                errors[name] = f"{type(exc).__name__}: {exc}"

    with _private_catalogues():
        ca = [t for t in CA_TABLES if t in tables]
        if ca:
            # Timed inside, table by table and the set-up they share.
            fly = {k: v for k, v in (("seconds", fly_seconds), ("frames", fly_frames)) if v}

            def ca_tables() -> list[BenchRow]:
                from hutch.bench.ca import channel_access_tables

                return channel_access_tables(profile, ca, points, ops, seconds, data_dir, fly)

            measure(", ".join(ca), ca_tables, False)
        if "nexus" in tables:
            from hutch.bench.nexus import nexus_throughput

            frames = max(events // 10, 10)
            measure("nexus", lambda: nexus_throughput(data_dir, events=events, frames=frames))
        if "ingest" in tables:
            from hutch.bench.ingest import catalog_ingest

            def ingest() -> list[BenchRow]:
                data_dir.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(prefix="ingest-", dir=data_dir) as tmp:
                    # Half as many: ~50 ms an HTTP request makes these runs the slow ones.
                    return catalog_ingest(Path(tmp), events=max(events // 2, 10))

            measure("ingest", ingest)
        if "search" in tables:
            from hutch.bench.search import SEARCH_RUNS, search_latency

            runs = search_runs or SEARCH_RUNS
            measure("search", lambda: search_latency(data_dir.parent, runs=runs, log=log))
        if "startup" in tables:
            from hutch.bench.startup import startup_times

            measure("startup", lambda: startup_times(profile, data_dir, tries=startup_tries))
        if "reduce" in tables:
            from hutch.bench.reduce import reduction_tables

            sizes = {k: v for k, v in (("frames", reduce_frames), ("large", reduce_side)) if v}
            measure("reduce", lambda: reduction_tables(profile, data_dir, **sizes))
    total = time.perf_counter() - started
    _judge(rows)
    if as_json:
        print(
            json.dumps(
                {
                    "tables": [t for t in TABLES if t in tables],
                    "points": points,
                    "ops": ops,
                    "events": events,
                    "fly_seconds": fly_seconds,
                    "fly_frames": fly_frames,
                    "startup_tries": startup_tries,
                    "reduce_frames": reduce_frames,
                    "reduce_side": reduce_side,
                    "seconds": seconds,
                    "total_seconds": total,
                    "errors": errors,
                    "rows": [asdict(r) for r in rows],
                }
            )
        )
    else:
        _print(rows)
        times = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
        print(f"\nRun time: {times}; total {total:.0f} s")
    if errors:
        raise BenchTableError(
            "not measured: " + "; ".join(f"{name}: {error}" for name, error in errors.items())
        )
    return rows


@contextlib.contextmanager
def _private_catalogues() -> Iterator[None]:
    """Without ``HUTCH_CATALOG_URI``/``_API_KEY`` (for this process and those it starts):
    ``ensure_catalog`` would hand out that external server instead of the bench's own."""
    saved = {k: os.environ.pop(k) for k in _EXTERNAL_CATALOG_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _judge(rows: list[BenchRow]) -> None:
    """Fill in each row's ratio to its baseline and whether it meets its goal."""
    for row in rows:
        if row.ratio is not None:
            base = next(r for r in rows if r.table == row.table and row.baseline in (None, r.name))
            # ms is per operation, so a rate ratio is the inverse of the time ratio.
            row.ratio = row.ms / base.ms if row.ratio_of == "time" else base.ms / row.ms
        checks = []
        if row.min_ratio is not None and row.ratio is not None:
            checks.append(row.ratio >= row.min_ratio)
        if row.max_ms is not None:
            checks.append((row.ms if row.worst_ms is None else row.worst_ms) < row.max_ms)
        if row.min_rate is not None and row.events_per_s is not None:
            checks.append(row.events_per_s >= row.min_rate)
        row.met = all(checks) if checks else None


def _print(rows: list[BenchRow]) -> None:
    """Each table under its title: the name, the columns its rows have, the ratio."""
    if not rows:
        return
    width = max(len(r.name) for r in rows)
    for table in dict.fromkeys(r.table for r in rows):
        members = [r for r in rows if r.table == table]
        columns: list[tuple[str, Callable[[BenchRow], str]]] = []
        unit = members[0].unit
        if any(r.events_per_s is not None for r in members):
            # What the rate counts, from the unit: ms/point -> points/s (events by default).
            counted = unit.removeprefix("ms/") if unit.startswith("ms/") else "event"
            columns.append((f"{counted}s/s", lambda r: _number(r.events_per_s, ",.0f")))
        if any(r.mb_per_s is not None for r in members):
            columns.append(("MB/s", _megabytes))
        columns.append((unit, lambda r: _time(r, r.ms)))
        if any(r.p95_ms is not None for r in members):
            columns.append(("p95 ms", lambda r: "" if r.p95_ms is None else _time(r, r.p95_ms)))
        if any(r.worst_ms is not None for r in members):
            worst = "worst s" if _in_seconds(members[0]) else "worst ms"
            columns.append((worst, lambda r: "" if r.worst_ms is None else _time(r, r.worst_ms)))
        rate = members[0].ratio_of == "rate"
        columns.append(("x baseline" if not rate else "of baseline", _ratio))
        if any(r.met is not None for r in members):
            columns.append(("goal", _goal))
        print(f"\n{table}")
        print(f"  {'':{width}} " + " ".join(f"{h:>12}" for h, _ in columns))
        for row in members:
            vs = f"  (vs {row.baseline})" if row.baseline not in (None, row.name) else ""
            cells = " ".join(f"{cell(row):>12}" for _, cell in columns)
            print(f"  {row.name:{width}} {cells}{vs}".rstrip())


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _in_seconds(row: BenchRow) -> bool:
    """Whether the row's times are shown in seconds (its unit says s: start-up times)."""
    return row.unit.split()[-1] == "s"


def _time(row: BenchRow, ms: float) -> str:
    return f"{ms / 1e3:.2f}" if _in_seconds(row) else _milliseconds(ms)


def _milliseconds(ms: float) -> str:
    # Three decimals hide a microsecond-scale time (a captured point): then three digits.
    return f"{ms:.3f}" if ms >= 0.01 else f"{ms:#.3g}"


def _megabytes(row: BenchRow) -> str:
    if row.mb_per_s is None:
        return ""
    return f"{row.mb_per_s:.2f}" if row.mb_per_s < 10 else f"{row.mb_per_s:.0f}"


def _ratio(row: BenchRow) -> str:
    return "" if row.ratio is None else f"{row.ratio:.2f}"


def _goal(row: BenchRow) -> str:
    if row.met is None:
        return ""
    if row.min_ratio is not None:
        goal = f">= {row.min_ratio:.2f}"
    elif row.min_rate is not None:
        goal = f">= {row.min_rate:,.0f}/s"
    elif _in_seconds(row):
        goal = f"< {row.max_ms / 1e3:g} s"
    else:
        goal = f"< {row.max_ms:.0f} ms"
    return f"{goal} {'ok' if row.met else 'MISSED'}"
