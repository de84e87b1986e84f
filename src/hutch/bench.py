"""``hutch bench``: tables of measured rows, each beside a baseline measured in the same run.

Every row is measured in the same process on the same machine, side by side with its
baseline, so the ratios mean something on any box; nothing here is a pass/fail test (a goal,
where a table has one, is shown met or missed). The tables (``TABLES``) can be run one by
one: Channel Access latency and step scans here, fly scans (PandA capture, area detector) in
``hutch.bench_fly``, NeXus writer throughput in ``hutch.bench_nexus``, catalogue ingest in
``hutch.bench_ingest``, metadata search in ``hutch.bench_search``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import bluesky.plans as bp
import epics
from bluesky.run_engine import RunEngine, call_in_bluesky_event_loop
from ophyd import Component, EpicsMotor, EpicsSignal, EpicsSignalRO
from ophyd.scaler import EpicsScaler
from ophyd_async.core import soft_signal_rw
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

from hutch import patches, simulators
from hutch.bench_tables import DEFAULT_TABLES, TABLES
from hutch.ca import ca_server_env, configure_ca_client
from hutch.catalog import stop_catalog
from hutch.config import Settings
from hutch.devices import Scaler, connect_devices
from hutch.errors import HutchError
from hutch.profile import DeviceSpec, Profile
from hutch.services import free_port
from hutch.session import Session

__all__ = [
    "DEFAULT_TABLES",
    "TABLES",
    "BenchRow",
    "BenchTableError",
    "run_bench",
    "stopwatch",
]

_CA_TABLES = ("latency", "softioc-scan", "sim-scan", "fly")
# What would point ensure_catalog at an external catalogue instead of the bench's own.
_EXTERNAL_CATALOG_ENV = ("HUTCH_CATALOG_URI", "HUTCH_CATALOG_API_KEY")


class BenchTableError(HutchError):
    """A table cannot be measured (what it measures is not there, or not as expected)."""


#: Records of the C softIoc baseline: a setpoint whose put processes a readback, and a
#: detector computed from it (the shape of one step-scan point).
_SOFTIOC_DB = """\
record(ao, "BENCH:x") { field(OUT, "BENCH:x_RBV PP") field(PREC, "3") }
record(ai, "BENCH:x_RBV") { field(PREC, "3") }
record(calc, "BENCH:det") { field(INPA, "BENCH:x_RBV CP") field(CALC, "A*2") }
"""


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
    found: int | None = None
    """Search rows: the fewest runs any of the row's queries returned."""
    min_ratio: float | None = None
    max_ms: float | None = None
    min_rate: float | None = None
    """Goals: the ratio at least ``min_ratio``; the worst (else the only) time below ``max_ms``;
    ``events_per_s`` at least ``min_rate``."""
    met: bool | None = None
    """Whether the row meets its goal (None: no goal)."""


class _ClassicScaler(EpicsScaler):
    # ophyd's EpicsScaler waits for CNT to read back 1, which a zero-time count never
    # shows; a real scaler's put-callback completes when counting ends, so wait for that.
    count = Component(EpicsSignal, ".CNT", trigger_value=1, put_complete=True, kind="omitted")


def _ms_per(n: int, body: Callable[[], object]) -> float:
    start = time.perf_counter()
    body()
    return (time.perf_counter() - start) / n * 1e3


def _start_softioc(directory: Path, port: int) -> subprocess.Popen:
    """epicscorelibs' C softIoc serving `_SOFTIOC_DB` on ``port``.

    It exits when its stdin closes, that is when this process ends: stopping it earlier
    would make libca print a disconnect warning for every channel still open.
    """
    db = directory / "bench.db"
    db.write_text(_SOFTIOC_DB)
    return subprocess.Popen(
        [sys.executable, "-m", "epicscorelibs.ioc", "-d", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ca_server_env(port)},
    )


def _pvs(*names: str) -> list[epics.PV]:
    # No monitors: their callbacks would load every row measured in this process.
    pvs = [epics.PV(name, auto_monitor=False) for name in names]
    for pv in pvs:
        if not pv.wait_for_connection(timeout=10):
            raise ConnectionError(f"hutch bench: {pv.pvname} did not connect")
    return pvs


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
    - ``fly`` (``hutch.bench_fly``): the profile's PandA capturing CLOCK1 at 1 MHz for
      ``fly_seconds`` (default 3) into HDF5 on ``data_dir``'s disk with zero loss (points/s;
      goal 1 M/s) beside raw h5py appends of the same blocks there; and a ``fly_frames``
      (default 300) frame fly scan of its area detector in a full session, frames/s end to
      end beside the detector's nominal rate.

    On the disk of ``data_dir`` (default: ``Settings.from_env()``'s), where NeXus files and
    the catalogue live:

    - ``nexus``: NexusWriter throughput beside raw h5py (``hutch.bench_nexus``), ``events``
      scalar events and a tenth as many 512x512 frames;
    - ``ingest``: TiledWriter into a private embedded catalogue beside raw tiled-client
      appends, ``events // 2`` events a run (``hutch.bench_ingest``);
    - ``search``: ``search_runs`` over ``search_runs`` (default 10 000) catalogued runs,
      populated once and cached in ``data_dir/bench`` (``hutch.bench_search``).

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
        ca = [t for t in _CA_TABLES if t in tables]
        if ca:
            # Timed inside, table by table and the set-up they share.
            fly = {k: v for k, v in (("seconds", fly_seconds), ("frames", fly_frames)) if v}

            def ca_tables() -> list[BenchRow]:
                return _ca_tables(profile, ca, points, ops, seconds, data_dir, fly)

            measure(", ".join(ca), ca_tables, False)
        if "nexus" in tables:
            from hutch.bench_nexus import nexus_throughput

            frames = max(events // 10, 10)
            measure("nexus", lambda: nexus_throughput(data_dir, events=events, frames=frames))
        if "ingest" in tables:
            from hutch.bench_ingest import catalog_ingest

            def ingest() -> list[BenchRow]:
                data_dir.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(prefix="ingest-", dir=data_dir) as tmp:
                    # Half as many: ~50 ms an HTTP request makes these runs the slow ones.
                    return catalog_ingest(Path(tmp), events=max(events // 2, 10))

            measure("ingest", ingest)
        if "search" in tables:
            from hutch.bench_search import SEARCH_RUNS, search_latency

            runs = search_runs or SEARCH_RUNS
            measure("search", lambda: search_latency(data_dir.parent, runs=runs, log=log))
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
def stopwatch(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the time the ``with`` block takes to ``seconds[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


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
        columns.append((unit, lambda r: _milliseconds(r.ms)))
        if any(r.worst_ms is not None for r in members):
            columns.append(("worst ms", lambda r: _number(r.worst_ms, ".3f")))
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
    else:
        goal = f"< {row.max_ms:.0f} ms"
    return f"{goal} {'ok' if row.met else 'MISSED'}"


def _ca_tables(
    profile: Profile,
    tables: list[str],
    points: int,
    ops: int,
    seconds: dict[str, float],
    data_dir: Path,
    fly: dict[str, Any],
) -> list[BenchRow]:
    """The Channel Access tables among ``tables``, sharing one simulator, C softIoc and
    RunEngine; the time of each table goes to ``seconds``, that of setting up to 'CA set-up'.
    The fly table writes its files on ``data_dir``'s disk, with ``fly``'s keywords."""
    peak = profile.simulation.peak
    scaler = next(d for d in profile.devices if issubclass(d.device_class, Scaler))
    motor = profile.device(peak.axis if peak else profile.devices[0].name)
    sim_port, ioc_port = free_port(), free_port()
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="hutch-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), catalog_port=free_port())
        try:
            with stopwatch(seconds, "CA set-up"):
                # Both servers end with this process, after its CA clients.
                sim = simulators.start(profile, sim_port, settings, exit_with=os.getpid())
                # libca reads this once, at its first use (after starting the simulator, which
                # probes it with caproto's client): search every simulated IOC and the softIoc.
                configure_ca_client(*sim.ports, ioc_port)
                softioc = _start_softioc(Path(tmp), ioc_port)  # noqa: F841  (lives until we exit)
                # One RunEngine for every row: ophyd-async's CA signals live in its loop.
                bare = Session(
                    profile, settings, live_table=False, nexus=False, plots=False, catalog=False
                )
                # Its devices stay connected; what it added to the RunEngine goes (run log,
                # metadata validator, baseline readings): the rows on ``bare.RE`` measure
                # bluesky's RunEngine as it comes, the session row adds a whole session.
                bare.close()
                # ophyd v1 devices on the same records, connected before any other pyepics
                # PV of those channels: pyepics (3.5) may never monitor a channel first
                # opened by a PV without monitor, and ophyd's motor waits for its first
                # readback event. Connected whichever tables run, so that the latency rows
                # always see the same subscribers (a motor-record put posts to each).
                classic = (
                    _ClassicScaler(scaler.prefix, name="classic_det"),
                    EpicsMotor(motor.prefix, name="classic_motor"),
                )
                call_in_bluesky_event_loop(connect_devices({d.name: d for d in classic}))
            # What latency and sim-scan change, put back after them: the fly table needs the
            # motor's VMAX and acceleration as the profile sets them up.
            fields = [f"{motor.prefix}.{f}" for f in ("VMAX", "VELO", "VBAS", "ACCL")]
            fields.append(f"{scaler.prefix}.TP")
            if "latency" in tables:
                with stopwatch(seconds, "latency"), _put_back(fields):
                    rows += _latency(motor, scaler, ops)
            if "softioc-scan" in tables:
                with stopwatch(seconds, "softioc-scan"):
                    rows += _softioc_step_scan(bare.RE, points)
            if "sim-scan" in tables:
                with stopwatch(seconds, "sim-scan"), _put_back(fields):
                    rows += _step_scan(profile, settings, bare, classic, motor, scaler, points)
            if "fly" in tables:
                from hutch.bench_fly import fly_throughput

                with stopwatch(seconds, "fly"):
                    rows += fly_throughput(profile, settings, bare, data_dir, **fly)
        finally:
            stop_catalog(settings)
    return rows


@contextlib.contextmanager
def _put_back(pvs: list[str]) -> Iterator[None]:
    """Put the values ``pvs`` have now back after the ``with`` block, in their order."""
    saved = {pv: epics.caget(pv, timeout=10) for pv in pvs}
    try:
        yield
    finally:
        for pv, value in saved.items():
            if value is not None:
                epics.caput(pv, value, wait=True)


def _latency(motor: DeviceSpec, scaler: DeviceSpec, ops: int) -> list[BenchRow]:
    table = f"Channel Access latency, pyepics client, {ops} operations each"
    soft_x, soft_rbv = _pvs("BENCH:x", "BENCH:x_RBV")
    sim_val, sim_rbv, sim_tp = _pvs(
        f"{motor.prefix}.VAL", f"{motor.prefix}.RBV", f"{scaler.prefix}.TP"
    )
    # An instant move: the put-callback measures the server, not the simulated motion.
    for field, value in (("VMAX", 0.0), ("VELO", 0.0), ("VBAS", 0.0), ("ACCL", 0.0)):
        epics.caput(f"{motor.prefix}.{field}", value, wait=True)

    def gets(pv: epics.PV) -> Callable[[], None]:
        return lambda: [pv.get(use_monitor=False) for _ in range(ops)]

    def puts(pv: epics.PV) -> Callable[[], None]:
        return lambda: [pv.put(i % 2 * 0.001, wait=True) for i in range(ops)]

    soft_get, soft_put = (
        "caget: C softIoc (epicscorelibs), ai",
        "caput-callback: C softIoc, ao -> ai",
    )
    return [
        BenchRow(table, soft_get, _ms_per(ops, gets(soft_rbv))),
        BenchRow(
            table,
            f"caget: hutch simulator, {motor.prefix}.RBV",
            _ms_per(ops, gets(sim_rbv)),
            soft_get,
        ),
        BenchRow(table, soft_put, _ms_per(ops, puts(soft_x)), soft_put),
        BenchRow(
            table,
            f"caput-callback: hutch simulator, {scaler.prefix}.TP (plain field)",
            _ms_per(ops, puts(sim_tp)),
            soft_put,
        ),
        BenchRow(
            table,
            f"caput-callback: hutch simulator, {motor.prefix}.VAL (motor record, instant)",
            _ms_per(ops, puts(sim_val)),
            soft_put,
        ),
    ]


def _cost(points: int, run: Callable[[int], object], repeats: int = 3) -> tuple[float, float]:
    """(ms per point, ms per run) of ``run(n)`` scanning n points, timed at ``points // 4``
    and ``points`` (the fastest of ``repeats`` runs each, as other load only adds time): the
    slope is what each point adds, the intercept what a run costs however short it is
    (opening and closing it, the recorder's last writes, the plot)."""
    short = max(points // 4, 1)
    t_short, t_long = (
        min(_ms_per(1, lambda n=n: run(n)) for _ in range(repeats)) for n in (short, points)
    )
    per_point = (t_long - t_short) / (points - short)
    return per_point, t_long - per_point * points


def _step_scan(
    profile: Profile,
    settings: Settings,
    bare: Session,
    classic: tuple[EpicsScaler, EpicsMotor],
    motor: DeviceSpec,
    scaler: DeviceSpec,
    points: int,
) -> list[BenchRow]:
    table = f"Step scan on the hutch simulator, {points} points, ms per point"
    per_run = "Fixed cost of a run on the hutch simulator (open, close, final writes), ms"
    # Fast motor, zero count time: what is left is the cost of the stack itself.
    for field, value in (("VMAX", 1e6), ("VELO", 1e6), ("ACCL", 0.0)):
        epics.caput(f"{motor.prefix}.{field}", value, wait=True)
    epics.caput(f"{scaler.prefix}.TP", 0.0, wait=True)
    channels = [f"{scaler.prefix}.S{n}" for n in scaler.options["channels"].values()]
    val, cnt, *reads = _pvs(
        f"{motor.prefix}.VAL",
        f"{scaler.prefix}.CNT",
        f"{motor.prefix}.RBV",
        *channels,
        f"{scaler.prefix}.T",
    )

    def raw_floor(n: int) -> None:
        for i in range(n):
            val.put(i / n, wait=True)
            cnt.put(1, wait=True)
            for pv in reads:
                pv.get(use_monitor=False)

    floor, _ = _cost(points, raw_floor)
    rows = [BenchRow(table, "Channel Access floor: put-callback x2 + gets (pyepics)", floor)]
    RE = bare.RE
    det, mtr = bare.devices[scaler.name], bare.devices[motor.name]

    def measure(name: str, detector, motor_) -> None:
        RE(bp.scan([detector], motor_, 0, 1, 5))  # warm up connections and caches
        ms, run_ms = _cost(points, lambda n: RE(bp.scan([detector], motor_, 0, 1, n)))
        rows.append(BenchRow(table, name, ms))
        rows.append(BenchRow(per_run, name, run_ms, ratio=None))

    measure("hutch devices (ophyd-async), RunEngine without subscriptions", det, mtr)
    # The same RunEngine with a full session's subscriptions: the live table (its output
    # discarded here) in this process, NeXus, catalogue and plot in the recorder process.
    with (
        Session(profile, settings, connect=False, RE=RE) as session,
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
    ):
        # Its own devices are not connected (connect=False): its baseline reads the connected
        # ones of the same names.
        session.baseline.baseline = [bare.devices[name] for name in profile.baseline]
        measure("hutch session: live table + NeXus + catalogue + plot", det, mtr)
    measure("ophyd v1 EpicsMotor + EpicsScaler (pyepics), no subscriptions", *classic)
    return rows


def _softioc_step_scan(RE: RunEngine, points: int) -> list[BenchRow]:
    """The issue's step scan on the C softIoc: raw CA beside bluesky with each signal stack,
    and the RunEngine alone (soft signals) with and without hutch's fix of bluesky's plan
    stack capture (`hutch.patches`)."""
    table = f"Step scan on the C softIoc, {points} points, ms per point"
    x, x_rbv, det = _pvs("BENCH:x", "BENCH:x_RBV", "BENCH:det")

    def raw_floor(n: int) -> None:
        for i in range(n):
            x.put(i / n, wait=True)
            x_rbv.get(use_monitor=False)
            det.get(use_monitor=False)

    floor, _ = _cost(points, raw_floor)
    rows = [BenchRow(table, "raw CA floor (pyepics put-completion + 2 gets, C softIoc)", floor)]
    stacks = {
        "bluesky RunEngine + ophyd-async CA signals, C softIoc": (
            epics_signal_r(float, "BENCH:det", name="async_det"),
            epics_signal_rw(float, "BENCH:x_RBV", "BENCH:x", name="async_x"),
        ),
        "bluesky RunEngine + ophyd v1 EpicsSignal/pyepics, C softIoc": (
            EpicsSignalRO("BENCH:det", name="classic_det"),
            EpicsSignal("BENCH:x_RBV", write_pv="BENCH:x", put_complete=True, name="classic_x"),
        ),
        "bluesky RunEngine + ophyd-async soft signals, no I/O": (
            soft_signal_rw(float, 0.0, name="soft_det"),
            soft_signal_rw(float, 0.0, name="soft_x"),
        ),
    }
    devices = {sig.name: sig for pair in stacks.values() for sig in pair}
    call_in_bluesky_event_loop(connect_devices(devices))

    def scan(detector, motor) -> Callable[[int], object]:
        return lambda n: RE(bp.scan([detector], motor, 0, 1, n))

    for name, (det_sig, x_sig) in stacks.items():
        RE(bp.scan([det_sig], x_sig, 0, 1, 5))  # warm up connections and caches
        rows.append(BenchRow(table, name, _cost(points, scan(det_sig, x_sig))[0]))
    with patches.bluesky_as_released():
        ms, _ = _cost(points, scan(det_sig, x_sig))
    rows.append(
        BenchRow(
            table, "bluesky RunEngine + soft signals, bluesky's own plan stack capture", ms, name
        )
    )
    return rows
