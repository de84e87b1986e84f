"""The demo's online reduction: each run's derived runs written and checked, the beam spot's
ROI centroid against where the simulator put it, and a replayed reduction equal to the live
one (`hutch.demo` calls these)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hutch.reduction.replay import reduce_run
from hutch.simulators.areadetector import spot_pixel

if TYPE_CHECKING:
    from hutch.demo import DemoRun, DemoSummary
    from hutch.session import Session

__all__ = [
    "check_derived",
    "check_replay",
    "check_spot_centroids",
    "powder_run",
    "print_derived",
    "steering_runs",
]

#: How long the demo waits for a run's reductions once the run is written.
_REDUCTION_TIMEOUT_S = 120.0


def _primary(run: Any) -> dict[str, np.ndarray]:
    dataset = run["primary"].read()
    return {key: np.asarray(dataset[key]) for key in dataset.data_vars}


def check_derived(summary: DemoSummary, session: Session, run: DemoRun) -> None:
    """Wait for the derived runs the profile's reductions make of ``run``, list them in
    ``run.extra["derived"]`` and check each was written whole: NeXus, PNG, catalogue."""
    recorder = session.recorder
    if recorder is None or not session.profile.reductions:
        return
    tag = f"run {run.record.scan_id} ({run.title})"
    derived = []
    for uid in recorder.derived_runs(run.record.uid, timeout=_REDUCTION_TIMEOUT_S):
        outputs = recorder.outputs(uid)
        entry: dict[str, Any] = {"uid": uid, **outputs}
        if session.catalog is not None:
            catalogued = session.runs_container[uid]
            start, stop = catalogued.metadata["start"], catalogued.metadata.get("stop") or {}
            entry.update(
                reduction=start["reduction"]["name"],
                kind=start["reduction"]["kind"],
                exit_status=stop.get("exit_status"),
                points=(stop.get("num_events") or {}).get("primary", 0),
            )
        derived.append(entry)
        summary.check(
            f"{tag}: derived run {entry.get('reduction', uid[:8])} written (NeXus, PNG"
            f"{', catalogue' if session.catalog else ''})",
            entry.get("exit_status", "success") == "success" and {"nexus", "png"} <= outputs.keys(),
            f"{entry.get('exit_status')}; {', '.join(f'{k} {v}' for k, v in outputs.items())}",
        )
    run.extra["derived"] = derived


def _derived_run(session: Session, run: DemoRun, reduction: str) -> Any | None:
    uid = next(
        (d["uid"] for d in run.extra.get("derived", ()) if d.get("reduction") == reduction), None
    )
    return None if uid is None or session.catalog is None else session.runs_container[uid]


def check_spot_centroids(
    summary: DemoSummary, session: Session, run: DemoRun, detector: str, y: float
) -> None:
    """The ROI centroids of ``run`` (a step scan of the area detector ``detector`` along x,
    the stage at ``y``) lie where the simulator put the beam spot, within one pixel."""
    spec = next(
        (
            r
            for r in session.profile.reductions
            if r.kind == "roi_stats" and (r.model_extra or {}).get("detector") == detector
        ),
        None,
    )
    derived = None if spec is None else _derived_run(session, run, spec.name)
    if derived is None:
        return
    data = _primary(derived)
    axis = derived.metadata["start"]["motors"][0]  # the raw run's scanned field
    roi = next(iter((spec.model_extra or {}).get("rois") or {"frame": None}))
    options = session.profile.device(detector).sim
    expected = np.array([spot_pixel(options, x, y) for x in data[axis]])
    measured = np.column_stack([data[f"{roi}_centroid_x"], data[f"{roi}_centroid_y"]])
    worst = float(np.abs(measured - expected).max()) if len(measured) else float("inf")
    run.extra["spot_centroid_worst_pixels"] = round(worst, 3)
    summary.check(
        f"{spec.name}: the ROI centroid follows the beam spot within 1 pixel",
        worst <= 1.0,
        f"worst {worst:.2f} px over {len(measured)} frames",
    )


def check_replay(summary: DemoSummary, session: Session, run: DemoRun, reduction: str) -> None:
    """`hutch reduce` on ``run`` gives the live derived run again: data equal, metadata
    equal but for uids and times."""
    live = _derived_run(session, run, reduction)
    if live is None:
        return
    replayed = reduce_run(
        session.profile, session.settings, session.catalog, reduction, run.record.uid
    )
    (again,) = replayed.derived
    replay = session.runs_container[again["uid"]]
    live_data, replay_data = _primary(live), _primary(replay)
    same_data = live_data.keys() == replay_data.keys() and all(
        np.array_equal(live_data[k], replay_data[k]) for k in live_data
    )

    def metadata(r: Any) -> dict:
        return {k: v for k, v in r.metadata["start"].items() if k not in ("uid", "time")}

    same_metadata = metadata(live) == metadata(replay)
    summary.extra["replayed_reduction"] = {
        "reduction": reduction,
        "raw_uid": run.record.uid,
        "live_uid": live.metadata["start"]["uid"],
        **again,
        "data_equal": same_data,
        "metadata_equal": same_metadata,
    }
    summary.check(
        f"hutch reduce {reduction} on run {run.record.scan_id} equals the live derived run",
        same_data and same_metadata and again["exit_status"] == "success",
        f"data {'equal' if same_data else 'DIFFER'}, metadata "
        f"{'equal' if same_metadata else 'DIFFER'} (replayed {again['uid'][:8]})",
    )


def print_derived(run: DemoRun, out: Any) -> None:
    for d in run.extra.get("derived", ()):
        print(
            f"    derived    {d.get('reduction', '?')} ({d.get('kind', '?')}): "
            f"{d.get('exit_status', '?')}, {d.get('points', '?')} points, {d.get('nexus')}",
            file=out,
        )


def powder_run(session: Session, summary: DemoSummary, record: Any) -> None:
    """A count of the powder diffraction detector: its azimuthal integration finds every
    ring the simulator drew within one bin of its q."""
    from scipy.signal import find_peaks

    from hutch import plans
    from hutch.simulators.powder import powder_geometry, powder_pattern

    profile = session.profile
    spec = next((r for r in profile.reductions if r.kind == "azimuthal"), None)
    if spec is None:
        return
    detector = spec.model_extra["detector"]
    sim = profile.device(detector).sim
    if "powder" not in sim:
        return
    run = record(
        f"powder diffraction: {sim['powder']} on {detector}, integrated live with pyFAI",
        session.RE(plans.count([session.devices[detector]], num=3, md={"sample": sim["powder"]})),
    )
    derived = _derived_run(session, run, spec.name)
    if derived is None:
        summary.check(f"{spec.name}: derived run of the powder count", False, "none written")
        return
    data = _primary(derived)
    radial = next(k for k in ("q", "two_theta") if k in data)
    pattern = powder_pattern(sim["powder"], powder_geometry(profile, profile.device(detector)))
    placed = np.array([ring.q if radial == "q" else ring.two_theta for ring in pattern.rings])
    axis, worst = data[radial][0], 0.0
    step = float(axis[1] - axis[0])
    for intensity in data["I"]:
        peaks, _ = find_peaks(intensity, prominence=0.1 * float(np.ptp(intensity)))
        found = axis[peaks]
        off = [
            float(np.abs(found - ring).min()) / step if len(found) else np.inf
            for ring in placed
            if axis[0] <= ring <= axis[-1]
        ]
        worst = max([worst, *off])
    run.extra["powder_rings"] = {
        "calibrant": sim["powder"],
        "rings": placed.round(4).tolist(),
        "worst_offset_bins": round(worst, 3),
    }
    summary.check(
        f"{spec.name}: every {sim['powder']} ring the simulator drew is found within one bin",
        worst <= 1.0 and len(placed) > 0,
        f"{len(placed)} rings, worst {worst:.2f} bins ({radial})",
    )


def steering_runs(session: Session, summary: DemoSummary, record: Any, det: Any) -> None:
    """Plans steered by reduced values: the stage moved so the beam spot's centroid lands on
    a chosen pixel, and the scaler counted until its Poisson error reaches 1 %."""
    from bluesky import plan_stubs as bps

    from hutch import plans
    from hutch.devices import AreaDetector

    RE = session.RE
    cameras = [d for d in session.devices.values() if isinstance(d, AreaDetector)]
    camera = next((c for c in cameras if "spot" in session.profile.device(c.name).sim), None)
    if camera is not None:
        x_name = session.profile.device(camera.name).sim["spot"][0]
        x = session.devices[x_name]
        options = session.profile.device(camera.name).sim
        target = spot_pixel(options, 0.0, 0.0)[0] + 6.0  # 6 pixels right of the centre
        RE(bps.mv(x, -1.0))
        result = RE(plans.center_on_centroid(x, camera, -1.0, 1.5, 6, axis="x", target=target))
        centred = result.plan_result
        position = RE(bps.rd(x)).plan_result
        expected = (target - spot_pixel(options, 0.0, 0.0)[0]) * float(options["pixel_size"])
        run = record(
            f"center_on_centroid: the beam spot onto column {target:g} of {camera.name}",
            result,
            target_pixel=target,
            motor_position=position,
            fitted_slope=centred.slope,
        )
        summary.check(
            f"center_on_centroid: the spot's centroid on column {target:g} within 1 pixel",
            abs(position - expected) * centred.slope <= 1.0,
            f"{x_name} at {position:.4f}, the simulator puts the spot there at {expected:.4f}",
        )
        run.extra["centroid_error_pixels"] = round(abs(position - expected) * centred.slope, 3)
    peak = session.profile.simulation.peak
    if peak is not None:  # on the sample's peak: a few points reach 1 %
        RE(bps.mv(session.devices[peak.axis], peak.center))
    result = RE(plans.count_until([det], f"{det.name}-diode", relative_error=0.01, max_points=50))
    counted = result.plan_result
    record(
        "count_until the diode's Poisson error is 1 %",
        result,
        counts=counted.total,
        relative_error=counted.relative_error,
        target_met=counted.target_met,
    )
    summary.check(
        "count_until: stopped once 1/sqrt(counts) reached 1 %",
        counted.target_met and counted.relative_error <= 0.01,
        f"{counted.points} points, {counted.total:g} counts, error {counted.relative_error:.4f}",
    )
