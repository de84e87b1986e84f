"""``hutch bench``: Channel Access latency and step-scan cost per point, measured in one run.

Every row is measured in the same process on the same machine, side by side with its
baseline, so the ratios mean something on any box; nothing here is a pass/fail test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import bluesky.plans as bp
import epics
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd import Component, EpicsMotor, EpicsSignal
from ophyd.scaler import EpicsScaler

from hutch import simulators
from hutch.ca import ca_server_env, configure_ca_client
from hutch.catalog import stop_catalog
from hutch.config import Settings
from hutch.devices import Scaler, connect_devices
from hutch.profile import DeviceSpec, Profile
from hutch.session import Session

__all__ = ["BenchRow", "run_bench"]

#: Records of the C softIoc baseline: a setpoint whose put processes a readback, and a
#: detector computed from it (the shape of one step-scan point).
_SOFTIOC_DB = """\
record(ao, "BENCH:x") { field(OUT, "BENCH:x_RBV PP") field(PREC, "3") }
record(ai, "BENCH:x_RBV") { field(PREC, "3") }
record(calc, "BENCH:det") { field(INPA, "BENCH:x_RBV CP") field(CALC, "A*2") }
"""


@dataclass
class BenchRow:
    """One measurement: milliseconds per operation (or scan point) and its ratio to its
    baseline row."""

    table: str
    name: str
    ms: float
    baseline: str | None = None
    """Name of the row this one is compared to; the table's first row if None."""
    ratio: float = 1.0


class _ClassicScaler(EpicsScaler):
    # ophyd's EpicsScaler waits for CNT to read back 1, which a zero-time count never
    # shows; a real scaler's put-callback completes when counting ends, so wait for that.
    count = Component(EpicsSignal, ".CNT", trigger_value=1, put_complete=True, kind="omitted")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    pvs = [epics.PV(name) for name in names]
    for pv in pvs:
        if not pv.wait_for_connection(timeout=10):
            raise ConnectionError(f"hutch bench: {pv.pvname} did not connect")
    return pvs


def run_bench(
    profile: Profile, *, points: int = 200, ops: int = 200, as_json: bool = False
) -> list[BenchRow]:
    """Measure and print, against a private simulator, catalogue and C softIoc on free ports:

    - Channel Access latency (caget, caput with completion) of hutch's caproto simulator
      beside epicscorelibs' C softIoc;
    - the per-point cost of a ``points``-point step scan of the profile's peak-axis motor (at
      high velocity) reading its scaler (zero count time): raw CA (the floor), hutch's devices
      on a bare RunEngine, a full hutch session (NeXus, catalogue, plot), and classic
      ophyd/pyepics on the same IOC.
    """
    peak = profile.simulation.peak
    scaler = next(d for d in profile.devices if issubclass(d.device_class, Scaler))
    motor = profile.device(peak.axis if peak else profile.devices[0].name)
    sim_port, ioc_port = _free_port(), _free_port()
    configure_ca_client(sim_port, ioc_port)  # libca reads this once: search both servers
    with tempfile.TemporaryDirectory(prefix="hutch-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), catalog_port=_free_port())
        # Both servers end with this process, after its CA clients.
        simulators.start(profile, sim_port, settings, exit_with=os.getpid())
        softioc = _start_softioc(Path(tmp), ioc_port)  # noqa: F841  (lives until we exit)
        try:
            rows = _latency(motor, scaler, ops)
            rows += _step_scan(profile, settings, motor, scaler, points)
        finally:
            stop_catalog(settings)
    for row in rows:
        baseline = next(r for r in rows if r.table == row.table and row.baseline in (None, r.name))
        row.ratio = row.ms / baseline.ms
    if as_json:
        print(json.dumps({"points": points, "ops": ops, "rows": [asdict(r) for r in rows]}))
    else:
        width = max(len(r.name) for r in rows)
        for table in dict.fromkeys(r.table for r in rows):
            print(f"\n{table}")
            print(f"  {'':{width}} {'ms':>8}  x baseline")
            for row in (r for r in rows if r.table == table):
                vs = f"  (vs {row.baseline})" if row.baseline not in (None, row.name) else ""
                print(f"  {row.name:{width}} {row.ms:8.3f}  {row.ratio:5.2f}{vs}")
    return rows


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


def _step_scan(
    profile: Profile, settings: Settings, motor: DeviceSpec, scaler: DeviceSpec, points: int
) -> list[BenchRow]:
    table = f"Step scan on the hutch simulator, {points} points, ms per point"
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

    def raw_floor() -> None:
        for i in range(points):
            val.put(i / points, wait=True)
            cnt.put(1, wait=True)
            for pv in reads:
                pv.get(use_monitor=False)

    rows = [
        BenchRow(
            table,
            "Channel Access floor: put-callback x2 + gets (pyepics)",
            _ms_per(points, raw_floor),
        )
    ]
    bare = Session(profile, settings, live_table=False, nexus=False, plots=False, catalog=False)
    RE = bare.RE
    det, mtr = bare.devices[scaler.name], bare.devices[motor.name]
    RE(bp.scan([det], mtr, 0, 1, 5))  # warm up connections and caches
    rows.append(
        BenchRow(
            table,
            "hutch devices (ophyd-async), RunEngine without subscriptions",
            _ms_per(points, lambda: RE(bp.scan([det], mtr, 0, 1, points))),
        )
    )

    classic_motor = EpicsMotor(motor.prefix, name="classic_motor")
    classic_det = _ClassicScaler(scaler.prefix, name="classic_det")
    call_in_bluesky_event_loop(
        connect_devices({"classic_motor": classic_motor, "classic_det": classic_det})
    )
    RE(bp.scan([classic_det], classic_motor, 0, 1, 5))
    rows.append(
        BenchRow(
            table,
            "ophyd v1 EpicsMotor + EpicsScaler (pyepics), no subscriptions",
            _ms_per(points, lambda: RE(bp.scan([classic_det], classic_motor, 0, 1, points))),
        )
    )

    # The same RunEngine with a full session's consumers subscribed.
    Session(profile, settings, live_table=False, connect=False, RE=RE)
    rows.append(
        BenchRow(
            table,
            "hutch session: NeXus + catalogue + plot subscribed (no live table)",
            _ms_per(points, lambda: RE(bp.scan([det], mtr, 0, 1, points))),
        )
    )
    return rows
