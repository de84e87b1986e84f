"""``hutch bench``'s Channel Access tables: the latency of the hutch simulator beside
epicscorelibs' C softIoc, and step scans on both (the raw CA floor, hutch's devices, a full
session, ophyd v1); they share one simulator, softIoc and RunEngine, on which the fly table
(`hutch.bench.fly`) runs too."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bluesky.plans as bp
import epics
from bluesky.run_engine import RunEngine, call_in_bluesky_event_loop
from ophyd import Component, EpicsMotor, EpicsSignal, EpicsSignalRO
from ophyd.scaler import EpicsScaler
from ophyd_async.core import soft_signal_rw
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

from hutch import patches, simulators
from hutch.bench.rows import BenchRow, stopwatch
from hutch.ca import ca_server_env, configure_ca_client
from hutch.catalog_server import stop_catalog
from hutch.config import Settings
from hutch.devices import Scaler, connect_devices
from hutch.profile import DeviceSpec, Profile
from hutch.services import free_port
from hutch.session import Session

__all__ = ["channel_access_tables"]

#: Records of the C softIoc baseline: a setpoint whose put processes a readback, and a
#: detector computed from it (the shape of one step-scan point).
_SOFTIOC_DB = """\
record(ao, "BENCH:x") { field(OUT, "BENCH:x_RBV PP") field(PREC, "3") }
record(ai, "BENCH:x_RBV") { field(PREC, "3") }
record(calc, "BENCH:det") { field(INPA, "BENCH:x_RBV CP") field(CALC, "A*2") }
"""


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


def channel_access_tables(
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
                from hutch.bench.fly import fly_throughput

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
