"""``hutch demo``: the simulated beamline end to end, with every run checked and summarised."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import h5py
import numpy as np
from bluesky.callbacks.fitting import PeakStats

from hutch import plans, simulators
from hutch.ca import configure_ca_client
from hutch.callbacks.nexus import nx_name
from hutch.catalog import stop_catalog
from hutch.config import Settings
from hutch.demo_neutrons import neutron_runs, print_neutrons
from hutch.demo_reductions import (
    check_derived,
    check_replay,
    check_spot_centroids,
    powder_run,
    print_derived,
    steering_runs,
)
from hutch.demo_services import data_management, queued_runs
from hutch.devices import AreaDetector, PandA, Scaler
from hutch.profile import Profile, ProfileError
from hutch.session import RunRecord, Session

__all__ = ["DEMO_PROFILES", "DemoSummary", "run_demo"]

#: What ``hutch demo`` runs unless told otherwise: a photon beamline, a neutron instrument.
DEMO_PROFILES = ("demo", "tof")

#: How close align must come to the simulator's true centre.
ALIGN_TOLERANCE = 0.02


@dataclass
class DemoRun:
    """One run of the demo: what it was for and what it produced."""

    title: str
    record: RunRecord
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "title": self.title,
            "uid": r.uid,
            "scan_id": r.scan_id,
            "plan_name": r.plan_name,
            "exit_status": r.exit_status,
            "events": r.events,
            "nexus": str(r.nexus) if r.nexus else None,
            "png": str(r.png) if r.png else None,
            "catalog_uri": r.catalog_uri,
            **self.extra,
        }


@dataclass
class DemoSummary:
    """Everything ``hutch demo`` did, for people (`print`) and programs (``to_json``)."""

    profile: str
    data_dir: str
    ca_port: int
    catalog_uri: str | None = None
    simulator_started: bool = False
    runs: list[DemoRun] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Results beyond the runs: the refused run, catalogue searches, the export."""

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(ok for _, ok, _ in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, bool(ok), detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "ok": self.ok,
            "data_dir": self.data_dir,
            "ca_port": self.ca_port,
            "catalog_uri": self.catalog_uri,
            "simulator_started": self.simulator_started,
            "runs": [run.to_json() for run in self.runs],
            **self.extra,
            "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in self.checks],
        }


def _roles(profile: Profile, devices: dict[str, Any]) -> tuple[Any, Any, Any, str]:
    """The demo's cast: the peak's axis motor, the slit gap, the scaler and its peak field."""
    peak = profile.simulation.peak
    if peak is None:
        raise ProfileError(f"{profile.path}: the demo needs a [simulation.peak] section")
    scalers = [name for name, device in devices.items() if isinstance(device, Scaler)]
    if not scalers:
        raise ProfileError(f"{profile.path}: the demo needs a hutch.devices.Scaler device")
    det = devices[scalers[0]]
    channel_of = {n: c for c, n in profile.device(det.name).options["channels"].items()}
    channel = channel_of.get(profile.device(det.name).sim.get("detector_channel"))
    if channel is None:
        raise ProfileError(
            f"{profile.path}: device {det.name!r}: sim.detector_channel is not one of its channels"
        )
    gap = devices[peak.gap] if peak.gap else None
    return devices[peak.axis], gap, det, f"{det.name}-{channel}"


def _check_outputs(summary: DemoSummary, session: Session, run: DemoRun) -> None:
    """The run succeeded and its NeXus file, plot and catalogue entry hold every point: the
    events of a step scan, the frames a fly scan's detectors wrote (``run.extra["frames"]``)."""
    r = run.record
    tag = f"run {r.scan_id} ({run.title})"
    frames = run.extra.get("frames")
    points = frames["points"] if frames else r.events.get("primary")
    summary.check(f"{tag}: exit_status success", r.exit_status == "success", r.reason)
    if r.nexus is not None:
        try:
            with h5py.File(r.nexus, "r") as f:
                signal = f["entry/data"].attrs["signal"]
                n = f["entry/data"][signal].shape[0]
            summary.check(
                f"{tag}: NeXus file holds every {'frame' if frames else 'event'}",
                n == points,
                f"{n} in {r.nexus}",
            )
        except (OSError, KeyError) as exc:
            summary.check(f"{tag}: NeXus file readable", False, f"{r.nexus}: {exc}")
    if r.png is not None:
        summary.check(f"{tag}: plot written", r.png.exists(), str(r.png))
    if session.catalog is not None:
        try:
            primary = session.runs_container[r.uid]["primary"]
            if frames:  # served by the catalogue from the detector's own file
                n = primary[frames["data_key"]].shape[0]
            else:  # a point taken again is stored twice, with the same seq_num
                n = len(set(primary["seq_num"].read().tolist()))
            summary.check(
                f"{tag}: catalogued with every {'frame' if frames else 'event'}",
                n == points,
                f"{n} at {r.catalog_uri}",
            )
        except KeyError:
            summary.check(f"{tag}: catalogued", False, f"{r.uid} not in the catalogue")
    check_derived(summary, session, run)


def _print_run(run: DemoRun, out) -> None:
    r = run.record
    events = ", ".join(f"{k}={v}" for k, v in r.events.items())
    print(
        f"\n[{r.scan_id}] {run.title}: plan {r.plan_name}, {r.exit_status}, events {events}",
        file=out,
    )
    print(f"    uid        {r.uid}", file=out)
    print(f"    NeXus      {r.nexus}", file=out)
    print(f"    catalogue  {r.catalog_uri}", file=out)
    print(f"    plot       {r.png}", file=out)
    print_derived(run, out)
    if "longest_gap_seconds" in run.extra:
        e = run.extra
        print(
            f"    beam dump  beam off {e['beam_off_seconds']:g} s, run suspended "
            f"(longest gap {e['longest_gap_seconds']:g} s), lowest current in the data "
            f"{e['lowest_current']:.1f}",
            file=out,
        )
    if "fitted_center" in run.extra:
        e = run.extra
        print(
            f"    centre     fitted {e['fitted_center']:.4f}, true {e['true_center']:.4f} "
            f"(off by {e['center_error_percent']:.2f} %)",
            file=out,
        )


def _print_data_management(summary: DemoSummary, out) -> None:
    e = summary.extra
    print(file=out)
    for key in ("refused_scan", "refused_fly_scan", "refused_run"):
        if key in e:
            print(f"refused     {(e[key] or 'NOT refused').splitlines()[0]}", file=out)
    for label, uids in e.get("searches", {}).items():
        print(f"search      {label}: {len(uids)} of this demo's runs", file=out)
    if "queue" in e:
        q = e["queue"]
        print(
            f"queue       {len(q['items'])} items ({', '.join(q['items'])}) via {q['http_uri']}: "
            f"{', '.join(q['exit_statuses'])} in {q['seconds']:g} s; no key "
            f"{q['unauthenticated_status']}, observer starting it {q['observer_start_status']}",
            file=out,
        )
    if "export" in e:
        x = e["export"]
        same = "equal to the live file" if not x["differences"] else "DIFFERS from the live file"
        print(f"export      {x['path']} ({same})", file=out)


def run_demo(
    profiles: Sequence[Profile],
    settings: Settings,
    port: int,
    *,
    keep_running: bool = False,
    quiet: bool = False,
) -> DemoSummary:
    """Run the demo on each of ``profiles``' simulated beamlines and return its checked
    summary: a photon beamline's scans, detectors and services, a neutron instrument's
    choppers (`hutch.demo_neutrons`).

    Starts the simulators that are not up (the first on ``port``, the others on free ports
    above it) and the catalogue if needed, and stops what it started unless
    ``keep_running``. With ``quiet`` only the summary is produced: progress goes to stderr
    and there is no live table.
    """
    out = sys.stderr if quiet else sys.stdout
    summary = DemoSummary(profiles[0].name, str(settings.data_dir), port)
    summary.extra["profiles"] = [profile.name for profile in profiles]
    names = ", ".join(f"{p.name!r} ({p.title})" for p in profiles)
    print(f"hutch demo: {names}, data in {settings.data_dir}", file=out)
    ports: list[int] = []
    for index, profile in enumerate(profiles):
        state = simulators.status(profile.name, settings)
        if state is None:
            # The demo's own simulator ends with the demo's process (after its CA clients).
            state = simulators.start(
                profile,
                port if index == 0 else simulators.free_port(port + 200 * index),
                settings,
                exit_with=None if keep_running else os.getpid(),
            )
            summary.simulator_started = True
            print(f"  simulator started: {simulators.describe(state)}", file=out)
        else:
            print(f"  simulator already up: {simulators.describe(state)}", file=out)
        if index == 0:
            summary.ca_port = state.port
        ports.extend(state.ports)
    # libca reads its server list once per process: every beamline's IOCs, before any CA use.
    configure_ca_client(*ports)
    try:
        for profile in profiles:
            # bluesky prints some news (a suspension, say) on stdout; keep it for the summary.
            with (
                contextlib.redirect_stdout(out),
                Session(profile, settings, live_table=not quiet) as session,
            ):
                summary.catalog_uri = session.catalog.uri if session.catalog else None
                _session_runs(profile, session, summary)
    finally:
        if not keep_running:
            stop_catalog(settings)
    for run in summary.runs:
        _print_run(run, out)
    _print_data_management(summary, out)
    print_neutrons(summary, out)
    passed = sum(ok for _, ok, _ in summary.checks)
    print(f"\nchecks: {passed}/{len(summary.checks)} passed", file=out)
    for name, ok, detail in summary.checks:
        if not ok:
            print(f"  FAILED {name}: {detail}", file=out)
    if not keep_running:
        print(
            "(simulators and catalogue stopped; `hutch demo --keep-running` leaves them up)",
            file=out,
        )
    return summary


def _session_runs(profile: Profile, session: Session, summary: DemoSummary) -> None:
    """The runs of one beamline, each checked as `record` does."""

    def record(title: str, result: Any, **extra: Any) -> DemoRun:
        run = DemoRun(title, session.record(result.run_start_uids[0]), extra)
        summary.runs.append(run)
        _check_outputs(summary, session, run)
        return run

    if profile.kind == "neutron":
        neutron_runs(session, summary, record)
    else:
        _demo_runs(profile, session, summary, record)


def _demo_runs(
    profile: Profile, session: Session, summary: DemoSummary, record: Callable[..., DemoRun]
) -> None:
    """A photon beamline: counts, scans, align, a beam dump, fly scans, reductions, the
    queue and data management."""
    axis, gap, det, field_name = _roles(profile, session.devices)
    peak = profile.simulation.peak
    assert peak is not None  # checked by _roles
    RE = session.RE

    RE(bps.mv(det.preset_time, 0.1))
    record("count the detector", RE(plans.count([det], num=5, md={"sample": "demo sample"})))

    # A coarse scan over the whole travel finds roughly where the peak is.
    low = RE(bps.rd(axis.low_limit_travel)).plan_result
    high = RE(bps.rd(axis.high_limit_travel)).plan_result
    coarse = PeakStats(axis.hints["fields"][0], field_name)
    result = RE(
        bpp.subs_wrapper(
            plans.scan([det], axis, low, high, 41, md={"sample": "demo sample"}), coarse
        )
    )
    record("step scan across the sample", result)

    if gap is not None:
        RE(bps.mv(axis, coarse.cen))
        record(
            "slit-gap scan (classic ophyd EpicsMotor)",
            RE(plans.scan([det], gap, 0.5, 2.0, 7, md={"sample": "demo sample"})),
        )
        RE(bps.mv(gap, peak.reference_gap))

    width = 3.0 * (coarse.fwhm or 1.0)
    result = RE(
        plans.align(axis, det, coarse.cen - width, coarse.cen + width, 31, field=field_name)
    )
    fitted = result.plan_result.center
    error = abs(fitted - peak.center) / abs(peak.center) * 100
    record(
        "align on the peak",
        result,
        fitted_center=fitted,
        true_center=peak.center,
        center_error_percent=error,
        motor_position=RE(bps.rd(axis)).plan_result,
    )
    summary.check(
        f"align within {ALIGN_TOLERANCE:.0%} of the true centre",
        error <= ALIGN_TOLERANCE * 100,
        f"fitted {fitted:.4f}, true {peak.center:.4f}",
    )

    _refused_scan(session, summary, axis, det)
    if session.suspenders:
        _beam_dump_run(profile, session, summary, record, det)
    _fly_runs(session, summary, record)
    powder_run(session, summary, record)
    steering_runs(session, summary, record, det)
    queued_runs(profile, session, summary, det)
    data_management(session, summary, det)


def _refused(
    session: Session, summary: DemoSummary, key: str, title: str, plan, motor, reason: str
) -> None:
    """Run ``plan``, which must be refused (`ScanArgumentError` saying ``reason``) with
    ``motor`` where it was and no run opened; the refusal goes into ``summary.extra[key]``."""
    RE = session.RE
    before, runs = RE(bps.rd(motor.user_readback)).plan_result, len(session.runs)
    try:
        RE(plan)
        refused = None
    except plans.ScanArgumentError as exc:
        refused = str(exc)
    summary.extra[key] = refused
    summary.check(
        title,
        refused is not None
        and reason in refused
        and RE(bps.rd(motor.user_readback)).plan_result == before
        and len(session.runs) == runs,
        refused or "not refused",
    )


def _refused_scan(session: Session, summary: DemoSummary, axis: Any, det: Any) -> None:
    """A step scan reaching beyond the motor's soft limits is refused before anything moves
    and before a run opens."""
    high = session.RE(bps.rd(axis.high_limit_travel)).plan_result
    plan = plans.scan([det], axis, 0.0, 5 * high, 5, md={"sample": "demo sample"})
    title = "a step scan beyond the soft limits is refused before anything moves or a run opens"
    _refused(session, summary, "refused_scan", title, plan, axis, "soft limits")


def _fly_runs(session: Session, summary: DemoSummary, record: Callable[..., DemoRun]) -> None:
    """Hardware-triggered acquisition: a step scan with the area detector, a 1-D and a 2-D
    snake fly scan triggered by the PandA, and a fly scan refused before anything moves."""
    devices = session.devices
    detectors = [d for d in devices.values() if isinstance(d, AreaDetector)]
    pandas = [d for d in devices.values() if isinstance(d, PandA)]
    if not detectors or not pandas:
        return
    det, panda = detectors[0], pandas[0]
    x_name, y_name = list(panda.encoders.values())[:2]
    x, y = devices[x_name], devices[y_name]
    RE = session.RE
    RE(bps.mv(x, 0.0, y, 0.0))

    def frames(points: int) -> dict[str, Any]:
        return {"frames": {"points": points, "data_key": det.name}}

    run = record(
        "step scan with the area detector",
        RE(plans.step_scan([det], x, -2.0, 2.0, 9, exposure=0.01)),
        **frames(9),
    )
    check_spot_centroids(summary, session, run, det.name, y=0.0)
    for spec in session.profile.reductions:
        if (spec.model_extra or {}).get("detector") == det.name:
            check_replay(summary, session, run, spec.name)
            break
    run = record(
        "fly scan: PandA-triggered frames on the fly",
        RE(plans.fly_scan([det], x, -3.0, 3.0, 61, panda=panda, velocity=3.0)),
        **frames(61),
    )
    positions = _captured(run, f"{panda.name}-{x.name}")
    summary.check(
        f"fly scan: 61 frames, 61 captured positions, increasing from -3 to 3 {x.name}",
        positions is not None
        and len(positions) == 61
        and bool((np.diff(positions) > 0).all())
        and abs(positions[0] + 3.0) < 1e-3
        and abs(positions[-1] - 3.0) < 1e-3,
        ""
        if positions is None
        else f"{len(positions)} from {positions[0]:.4f} to {positions[-1]:.4f}",
    )
    run = record(
        "snake fly scan: 5 rows of 21 frames",
        RE(
            plans.snake_fly_scan(
                [det], y, -1.0, 1.0, 5, x, -2.0, 2.0, 21, panda=panda, velocity=4.0
            )
        ),
        **frames(105),
    )
    grid = _captured(run, f"{panda.name}-{x.name}")
    line = np.linspace(-2.0, 2.0, 21)
    snake = np.array([line if i % 2 == 0 else line[::-1] for i in range(5)])
    summary.check(
        "snake fly scan: positions reshape to the 5 x 21 grid, every other row reversed",
        grid is not None
        and grid.size == 105
        and np.allclose(grid.reshape(5, 21), snake, atol=1e-3),
        "" if grid is None else f"{grid.size} positions",
    )
    _refused(
        session,
        summary,
        "refused_fly_scan",
        "a fly scan faster than the motor's VMAX is refused before anything moves",
        plans.fly_scan([det], x, -3.0, 3.0, 61, panda=panda, velocity=1000.0),
        x,
        "VMAX",
    )


def _captured(run: DemoRun, name: str) -> np.ndarray | None:
    """The PandA-captured positions of ``run`` (field ``name``), read through its NeXus file."""
    try:
        with h5py.File(run.record.nexus, "r") as f:
            return f["entry/data"][nx_name(name)][()]
    except (OSError, KeyError, TypeError):
        return None


#: The demo's simulated beam dump: when it starts in the run, and how long the beam is off.
BEAM_DUMP_AFTER, BEAM_DUMP_FOR = 1.0, 3.0


def _beam_dump_run(profile: Profile, session: Session, summary: DemoSummary, record, det) -> None:
    """A count through a simulated beam dump: the run suspends, then resumes with beam."""
    spec = profile.suspenders[0]
    monitor = session.devices[spec.device]
    key = getattr(monitor, spec.signal).name
    port = simulators.status(profile.name, session.settings).port
    RE = session.RE

    def dump_then_restore() -> None:
        time.sleep(BEAM_DUMP_AFTER)
        simulators.beam_dump(profile, port)
        time.sleep(BEAM_DUMP_FOR)
        simulators.beam_restore(profile, port)

    readings: list[tuple[float, float]] = []

    def keep(name: str, doc: dict) -> None:
        readings.append((doc["time"], doc["data"][key]))

    token = RE.subscribe(keep, "event")
    dumper = threading.Thread(target=dump_then_restore, name="demo-beam-dump")
    dumper.start()
    try:
        result = RE(plans.count([det, monitor], num=8, delay=0.4, md={"sample": "demo sample"}))
    finally:
        dumper.join()
        RE.unsubscribe(token)
    times, values = zip(*readings, strict=True) if readings else ((), ())
    longest_gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    record(
        "count through a beam dump (suspended, resumed)",
        result,
        beam_off_seconds=BEAM_DUMP_FOR,
        longest_gap_seconds=round(longest_gap, 2),
        lowest_current=min(values, default=None),
    )
    summary.check(
        "beam dump: no point recorded without beam",
        bool(values) and min(values) > spec.below,
        f"lowest {key} in the run: {min(values, default=float('nan')):.1f}",
    )
    summary.check(
        "beam dump: the run waited for the beam",
        longest_gap >= BEAM_DUMP_FOR,
        f"longest gap between points {longest_gap:.1f} s, beam off {BEAM_DUMP_FOR:g} s",
    )
