"""``hutch bench``: step-scan cost per point against the Channel Access floor, in one run."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bluesky.plans as bp
import epics
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd import Component, EpicsMotor, EpicsSignal
from ophyd.scaler import EpicsScaler

from hutch import simulators
from hutch.ca import configure_ca_client
from hutch.config import Settings
from hutch.devices import Scaler, connect_devices
from hutch.profile import Profile
from hutch.session import Session

__all__ = ["BenchRow", "run_bench"]


@dataclass
class BenchRow:
    """One measured stack: milliseconds per scan point and the ratio to the CA floor."""

    name: str
    ms_per_point: float
    ratio: float = 1.0


class _ClassicScaler(EpicsScaler):
    # ophyd's EpicsScaler waits for CNT to read back 1, which a zero-time count never
    # shows; a real scaler's put-callback completes when counting ends, so wait for that.
    count = Component(EpicsSignal, ".CNT", trigger_value=1, put_complete=True, kind="omitted")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _per_point(points: int, body: Callable[[], object]) -> float:
    start = time.perf_counter()
    body()
    return (time.perf_counter() - start) / points * 1e3


def run_bench(profile: Profile, settings: Settings, *, points: int = 200, as_json: bool = False):
    """Measure and print the per-point cost of a ``points``-point step scan of the profile's
    peak-axis motor (at high velocity) reading its scaler (zero count time) on:
    raw Channel Access (the floor), hutch's devices on a bare RunEngine, a full hutch
    session (NeXus, catalogue, plot), and classic ophyd/pyepics on the same IOC.

    Runs a private simulator and catalogue on free ports, so it never disturbs a running one.
    """
    peak = profile.simulation.peak
    scaler = next(d for d in profile.devices if issubclass(d.device_class, Scaler))
    motor = profile.device(peak.axis if peak else profile.devices[0].name)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="hutch-bench-") as tmp:
        bench_settings = Settings(data_dir=Path(tmp), catalog_port=_free_port())
        simulators.start(profile, port, bench_settings)
        configure_ca_client(port)
        try:
            rows = _measure(profile, bench_settings, motor.prefix, scaler, points)
        finally:
            simulators.stop(profile.name, bench_settings)
            from hutch.catalog import stop_catalog

            stop_catalog(bench_settings)
    floor = rows[0].ms_per_point
    for row in rows:
        row.ratio = row.ms_per_point / floor
    if as_json:
        print(json.dumps({"points": points, "rows": [row.__dict__ for row in rows]}, indent=2))
    else:
        print(f"step scan, {points} points: motor put-completion + scaler count + reads")
        print(f"{'stack':58} {'ms/point':>9} {'x floor':>8}")
        for row in rows:
            print(f"{row.name:58} {row.ms_per_point:9.2f} {row.ratio:8.2f}")
    return rows


def _measure(profile: Profile, settings: Settings, motor_pv: str, scaler, points: int):
    # Fast motor, zero count time: what is left is the cost of the stack itself.
    for field, value in (("VMAX", 1e6), ("VELO", 1e6), ("ACCL", 0.0)):
        epics.caput(f"{motor_pv}.{field}", value, wait=True)
    epics.caput(f"{scaler.prefix}.TP", 0.0, wait=True)
    channels = [f"{scaler.prefix}.S{n}" for n in scaler.options["channels"].values()]
    val, cnt = epics.PV(f"{motor_pv}.VAL"), epics.PV(f"{scaler.prefix}.CNT")
    reads = [epics.PV(pv) for pv in [f"{motor_pv}.RBV", *channels, f"{scaler.prefix}.T"]]
    for pv in (val, cnt, *reads):
        pv.wait_for_connection(timeout=10)

    def raw_floor() -> None:
        for i in range(points):
            val.put(i / points, wait=True)
            cnt.put(1, wait=True)
            for pv in reads:
                pv.get(use_monitor=False)

    rows = [
        BenchRow(
            "Channel Access floor (pyepics put-callback + gets)", _per_point(points, raw_floor)
        )
    ]

    bare = Session(profile, settings, live_table=False, nexus=False, plots=False, catalog=False)
    RE = bare.RE
    det = bare.devices[scaler.name]
    mtr = next(d for n, d in bare.devices.items() if profile.device(n).prefix == motor_pv)
    RE(bp.scan([det], mtr, 0, 1, 5))  # warm up connections and caches
    rows.append(
        BenchRow(
            "hutch devices (ophyd-async), RunEngine without subscriptions",
            _per_point(points, lambda: RE(bp.scan([det], mtr, 0, 1, points))),
        )
    )

    classic_motor = EpicsMotor(motor_pv, name="classic_motor")
    classic_det = _ClassicScaler(scaler.prefix, name="classic_det")
    call_in_bluesky_event_loop(
        connect_devices({"classic_motor": classic_motor, "classic_det": classic_det})
    )
    RE(bp.scan([classic_det], classic_motor, 0, 1, 5))
    rows.append(
        BenchRow(
            "ophyd v1 EpicsMotor + EpicsScaler (pyepics), no subscriptions",
            _per_point(points, lambda: RE(bp.scan([classic_det], classic_motor, 0, 1, points))),
        )
    )

    # The same RunEngine with a full session's consumers subscribed.
    Session(profile, settings, live_table=False, connect=False, RE=RE)
    rows.append(
        BenchRow(
            "hutch session: NeXus + catalogue + plot subscribed (no live table)",
            _per_point(points, lambda: RE(bp.scan([det], mtr, 0, 1, points))),
        )
    )
    return rows
