"""Plans steered by reduced values on the simulated beamline: align on an area detector's ROI
sum, bring the beam spot's centroid to a pixel, count until the statistics are good enough."""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import urlparse

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest

from hutch import plans
from hutch.reduction.roi import roi_statistics
from hutch.simulators.areadetector import spot_pixel


@pytest.fixture
def spot(demo_profile):
    """The simulator's options of det1: ``spot_pixel(spot, x, y)`` is where the spot lands."""
    return demo_profile.device("det1").sim


def _stage_for_pixel(options, column: float | None = None, row: float | None = None) -> float:
    """The stage position (x for a column, y for a row) that puts the spot on that pixel."""
    origin = spot_pixel(options, 0.0, 0.0)
    one = spot_pixel(options, 1.0, 1.0)  # pixels per mm along each axis
    if column is not None:
        return (column - origin[0]) / (one[0] - origin[0])
    return (row - origin[1]) / (one[1] - origin[1])


def _frames(session_docs, uid: str) -> np.ndarray:
    """The frames of det1 in run ``uid``, read from the file its stream resource names."""
    (resource,) = [
        doc
        for name, doc in session_docs
        if name == "stream_resource" and doc["run_start"] == uid and doc["data_key"] == "det1"
    ]
    with h5py.File(Path(urlparse(resource["uri"]).path), "r", swmr=True) as f:
        return f[resource["parameters"]["dataset"]][()]


def _events(session_docs, uid: str, key: str) -> list[float]:
    descriptors = {
        doc["uid"]
        for name, doc in session_docs
        if name == "descriptor" and doc["run_start"] == uid and doc["name"] == "primary"
    }
    return [
        doc["data"][key]
        for name, doc in session_docs
        if name == "event" and doc["descriptor"] in descriptors
    ]


def _stop(session_docs, uid: str) -> dict:
    (stop,) = [doc for name, doc in session_docs if name == "stop" and doc["run_start"] == uid]
    return stop


def _fresh_centroid(session, session_docs) -> tuple[float, float]:
    """The spot's centroid (column, row) in one new frame of det1 (whole frame)."""
    result = session.RE(plans.count([session.devices["det1"]]))
    (frame,) = _frames(session_docs, result.run_start_uids[0])
    stats = roi_statistics(frame[np.newaxis])
    return float(stats["centroid_x"][0]), float(stats["centroid_y"][0])


def test_align_on_the_roi_sum_of_the_area_detector(session, session_docs, ca, spot):
    """A narrow ROI (5 columns) sees the spot while the stage puts it on those columns: the
    ROI sum peaks with the spot on the ROI's middle column, where align leaves the stage."""
    read, _ = ca
    d = session.devices
    session.RE(bps.mv(d["sample_y"], 0.0))
    roi = (70, 40, 5, 16)  # columns 70..74, rows 40..55: the spot's row (48) inside
    expected = _stage_for_pixel(spot, column=72.0)
    result = session.RE(
        plans.align(d["sample_x"], d["det1"], -0.2, 1.8, 21, roi=roi, exposure=0.01)
    )
    aligned = result.plan_result
    assert aligned.field == "sum" and aligned.roi == roi
    assert aligned.center == pytest.approx(expected, abs=0.05)  # half a pixel
    assert aligned.fwhm is not None and 0.3 < aligned.fwhm < 1.2
    assert float(read("DEMO:SAMPLE:X.RBV")) == pytest.approx(aligned.center, abs=1e-3)
    uid = aligned.uid
    start = next(doc for name, doc in session_docs if name == "start" and doc["uid"] == uid)
    assert start["plan_name"] == "align"
    assert start["align"] == {
        "motor": "sample_x",
        "field": "sum",
        "detector": "det1",
        "roi": list(roi),
    }
    assert _stop(session_docs, uid)["exit_status"] == "success"
    # The ROI sums align peaked on are the frames' own.
    sums = roi_statistics(_frames(session_docs, uid), roi)["sum"]
    positions = np.asarray(_events(session_docs, uid, "sample_x"))
    assert positions[np.argmax(sums)] == pytest.approx(expected, abs=0.15)


def test_align_on_a_scalar_field_still_finds_the_sample_peak(session):
    """The scaler's peak along sample_x, as before: the field of a scalar detector."""
    d = session.devices
    peak = session.profile.simulation.peak
    result = session.RE(plans.align(d["sample_x"], d["det"], 1.0, 4.0, 31, field="det-diode"))
    assert result.plan_result.center == pytest.approx(peak.center, abs=0.05)
    assert result.plan_result.roi is None


def test_center_on_centroid_brings_the_spot_to_the_target_pixel(session, session_docs, ca, spot):
    """The stage moves so that the spot's centroid lands on the target column (and, on the
    other axis, the ROI's centre row by default) within one pixel: the motor's readback over
    CA and the centroid of a frame taken afterwards."""
    read, _ = ca
    d = session.devices
    session.RE(bps.mv(d["sample_y"], 0.3))
    result = session.RE(
        plans.center_on_centroid(d["sample_x"], d["det1"], -1.0, 1.5, 11, target=70.0)
    ).plan_result
    assert result.target == 70.0 and result.points == 11
    assert result.slope == pytest.approx(1 / 0.1, rel=0.02)  # 0.1 mm pixels
    assert result.residual < 0.5
    assert float(read("DEMO:SAMPLE:X.RBV")) == pytest.approx(result.position, abs=1e-3)
    assert result.position == pytest.approx(_stage_for_pixel(spot, column=70.0), abs=0.1)
    column, _ = _fresh_centroid(session, session_docs)
    assert column == pytest.approx(70.0, abs=1.0)

    # y: the default target is the ROI's centre row, 20 + (40 - 1) / 2 = 39.5.
    result = session.RE(
        plans.center_on_centroid(
            d["sample_y"], d["det1"], -2.0, 0.0, 9, axis="y", roi=(24, 20, 80, 40)
        )
    ).plan_result
    assert result.target == 39.5
    assert float(read("DEMO:SAMPLE:Y.RBV")) == pytest.approx(result.position, abs=1e-3)
    _, row = _fresh_centroid(session, session_docs)
    assert row == pytest.approx(39.5, abs=1.0)
    assert _stop(session_docs, result.uid)["exit_status"] == "success"


def test_count_until_the_scaler_reaches_the_relative_error(session, session_docs):
    """Points are taken until 1/sqrt(sum) of the counts read reaches the target: the point
    before did not, the last did."""
    d = session.devices
    session.RE(bps.mv(d["sample_x"], session.profile.simulation.peak.center))
    result = session.RE(plans.count_until([d["det"]], "det-diode", relative_error=0.002))
    counted = result.plan_result
    counts = np.asarray(_events(session_docs, counted.uid, "det-diode"), dtype=float)
    assert counted.target_met and counted.points == len(counts) > 1
    assert counted.total == pytest.approx(counts.sum())
    assert 1 / math.sqrt(counts.sum()) <= 0.002 < 1 / math.sqrt(counts[:-1].sum())
    assert counted.target == pytest.approx(250_000)
    stop = _stop(session_docs, counted.uid)
    assert stop["exit_status"] == "success" and stop["reason"] == ""
    assert stop["num_events"]["primary"] == counted.points


def test_count_until_on_the_roi_sum_of_the_area_detector(session, session_docs):
    """The ROI sum of each frame, reduced as the frame is taken, counts towards the total."""
    d = session.devices
    session.RE(bps.mv(d["sample_x"], 0.0, d["sample_y"], 0.0))
    roi = (44, 28, 40, 40)
    result = session.RE(
        plans.count_until([d["det1"]], "sum", roi=roi, total=150_000, exposure=0.01)
    )
    counted = result.plan_result
    sums = roi_statistics(_frames(session_docs, counted.uid), roi)["sum"]
    assert counted.target_met and counted.roi == roi
    assert counted.points == len(sums) > 1
    assert counted.total == pytest.approx(sums.sum())
    assert sums[:-1].sum() < 150_000 <= sums.sum()


def test_count_until_runs_out_of_points(session, session_docs):
    """max_points ends the counting short of the target: the run still ends 'success', and
    its stop document and the result say the target was not met."""
    d = session.devices
    result = session.RE(plans.count_until([d["det"]], "det-diode", total=1e12, max_points=3))
    counted = result.plan_result
    assert result.exit_status == "success"
    assert not counted.target_met and counted.points == 3
    stop = _stop(session_docs, counted.uid)
    assert stop["exit_status"] == "success"
    assert stop["reason"].startswith("target not met:") and "in 3 points" in stop["reason"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: plans.align(d["sample_x"], d["det1"], 0, 1, 5, roi=(1, 2, 3)),
         r"align: roi must be \(min_x, min_y, size_x, size_y\) in pixels"),
        (lambda d: plans.align(d["sample_x"], d["det1"], 0, 1, 5, roi=(0, 0, 0, 8)),
         r"align: roi size_x must be a whole number of at least 1, not 0"),
        (lambda d: plans.align(d["sample_x"], d["det1"], 0, 1, 5, field="centroid_x"),
         r"align: field 'centroid_x': an area detector's ROI statistic here is one of sum"),
        (lambda d: plans.center_on_centroid(d["sample_x"], d["det1"], 0, 1, 5, axis="z"),
         r"center_on_centroid: axis must be 'x' or 'y', not 'z'"),
        (lambda d: plans.count_until([d["det"]], "det-diode"),
         r"count_until: give one of relative_error \(e\.g\. 0\.01\) or total .*, not neither"),
        (lambda d: plans.count_until([d["det"]], "det-diode", relative_error=0.1, total=5),
         r"not relative_error and total"),
        (lambda d: plans.count_until([d["det1"]], "max", total=5),
         r"count_until: field 'max': an area detector's ROI statistic here is one of sum, net"),
        (lambda d: plans.count_until([d["det"]], "det-diode", total=5, max_points=0),
         r"count_until: max_points must be a whole number of at least 1, not 0"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_when_called(session, make, message):
    with pytest.raises(plans.ScanArgumentError, match=message):
        make(session.devices)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: plans.align(d["sample_x"], d["det1"], 0, 1, 5, roi=(100, 0, 40, 8)),
         r"align: roi \[100, 0, 40, 8\] reaches beyond det1's 128 x 96 frame"),
        (lambda d: plans.align(d["sample_x"], d["det"], 0, 1, 5, roi=(0, 0, 8, 8)),
         r"align: roi applies to area detectors; det is not one"),
        (lambda d: plans.align(d["sample_x"], d["det1"], 0, 1, 5, field="det-diode"),
         r"align: field 'det-diode': det1 is an area detector; give an ROI statistic"),
        (lambda d: plans.center_on_centroid(d["sample_x"], d["det"], 0, 1, 5),
         r"center_on_centroid: detector det is not an area detector"),
        (lambda d: plans.center_on_centroid(
            d["sample_x"], d["det1"], 0, 1, 5, target=5, roi=(10, 10, 20, 20)),
         r"center_on_centroid: target 5 is outside the ROI's x pixels 10\.\.29"),
        (lambda d: plans.count_until([d["det"]], "det-nope", total=5),
         r"count_until: field 'det-nope' is not read by the detectors \(they read .*det-diode"),
        (lambda d: plans.count_until([d["det"]], "sum", total=5),
         r"count_until: field 'sum' is an ROI statistic of an area detector: give one"),
    ],
)  # fmt: skip
def test_what_the_devices_refuse_is_refused_before_the_run_opens(
    session, session_docs, make, message
):
    d = session.devices
    before = session.RE(bps.rd(d["sample_x"].user_readback)).plan_result
    with pytest.raises(plans.ScanArgumentError, match=message):
        session.RE(make(d))
    assert not [name for name, _ in session_docs if name == "start"]
    assert session.RE(bps.rd(d["sample_x"].user_readback)).plan_result == before


def test_a_failing_reduction_stops_the_counting(session, session_docs, monkeypatch):
    """When the frames cannot be reduced, count_until stops, closes its run 'fail' and
    raises `ReductionError` with the reduction's reason."""
    from hutch.reduction.roi import RoiStatistics

    reduce = RoiStatistics.reduce

    def failing(self, block):
        if block.seq_nums[-1] >= 2:
            raise RuntimeError("detector calibration missing")
        return reduce(self, block)

    monkeypatch.setattr(RoiStatistics, "reduce", failing)
    d = session.devices
    with pytest.raises(plans.ReductionError, match="detector calibration missing"):
        session.RE(plans.count_until([d["det1"]], "sum", total=1e12, max_points=5))
    (stop,) = [doc for name, doc in session_docs if name == "stop"]
    assert stop["exit_status"] == "fail"
    assert stop["reason"] == "no ROI sum of point 2"
    assert stop["num_events"]["primary"] == 2
