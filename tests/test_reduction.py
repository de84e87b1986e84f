"""Online reduction on the simulated beamline: derived runs made live by the recorder's
reduction lane and again on replay (`hutch reduce`), written to the catalogue and NeXus."""

from __future__ import annotations

import copy
import textwrap

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from hutch import plans
from hutch.recorder import Recorder, RecorderConfig
from hutch.reduction.replay import ReplayError, reduce_run
from hutch.reduction.runner import ReductionRunner
from hutch.simulators.areadetector import spot_pixel


def _primary(run) -> dict[str, np.ndarray]:
    dataset = run["primary"].read()
    return {key: np.asarray(dataset[key]) for key in dataset.data_vars}


def _start_without_ids(run) -> dict:
    start = dict(run.metadata["start"])
    for key in ("uid", "time"):
        start.pop(key)
    return start


@pytest.fixture
def step_scan(session):
    """A step scan of the area detector across the stage: (raw uid, derived uids)."""
    d = session.devices
    session.RE(bps.mv(d["sample_y"], 0.5))
    result = session.RE(plans.step_scan([d["det1"]], d["sample_x"], -2.0, 2.0, 5, exposure=0.01))
    assert result.exit_status == "success", result.reason
    uid = result.run_start_uids[0]
    return uid, session.recorder.derived_runs(uid)


def test_roi_centroid_follows_the_beam_spot(session, step_scan, demo_profile):
    """The profile's ROI reduction of a step scan puts each frame's centroid where the
    simulator put the beam spot, within one pixel."""
    raw_uid, derived = step_scan
    runs = session.runs_container
    (spot,) = [
        runs[u] for u in derived if runs[u].metadata["start"]["plan_name"].endswith("det1_spot")
    ]
    start, stop = spot.metadata["start"], spot.metadata["stop"]
    assert stop["exit_status"] == "success"
    assert start["raw_uid"] == raw_uid
    assert start["reduction"]["kind"] == "roi_stats"
    assert start["reduction"]["parameters"]["rois"] == {"spot": [16, 8, 96, 80]}
    data = _primary(spot)
    options = demo_profile.device("det1").sim
    expected = [spot_pixel(options, x, 0.5) for x in data["sample_x"]]
    np.testing.assert_allclose(data["sample_x"], np.linspace(-2.0, 2.0, 5), atol=1e-3)
    np.testing.assert_allclose(data["spot_centroid_x"], [e[0] for e in expected], atol=1.0)
    np.testing.assert_allclose(data["spot_centroid_y"], [e[1] for e in expected], atol=1.0)
    assert (data["spot_net"] > 1000).all()


def test_live_and_replayed_reductions_give_the_same_derived_run(session, step_scan):
    """`hutch reduce` on the catalogued raw run writes a derived run equal to the live one
    (data equal; metadata equal apart from uids and times), into the catalogue and NeXus."""
    raw_uid, derived = step_scan
    runs = session.runs_container
    (live,) = [
        runs[u] for u in derived if runs[u].metadata["start"]["plan_name"].endswith("det1_spot")
    ]
    replayed = reduce_run(
        session.profile, session.settings, session.catalog, "det1_spot", raw_uid[:8]
    )
    (again,) = replayed.derived
    assert again["exit_status"] == "success"
    replay = runs[again["uid"]]
    assert _start_without_ids(replay) == _start_without_ids(live)
    live_data, replay_data = _primary(live), _primary(replay)
    assert live_data.keys() == replay_data.keys()
    for key in live_data:
        np.testing.assert_array_equal(replay_data[key], live_data[key], err_msg=key)
    with h5py.File(again["outputs"]["nexus"], "r") as nexus:
        assert nexus["/entry/entry_identifier"][()].decode() == again["uid"]
        np.testing.assert_array_equal(
            nexus["/entry/data/spot_centroid_x"][()], live_data["spot_centroid_x"]
        )
    with pytest.raises(ReplayError, match="has no reduction 'nope'"):
        reduce_run(session.profile, session.settings, session.catalog, "nope", raw_uid)
    with pytest.raises(ReplayError, match="is a derived run"):
        reduce_run(
            session.profile,
            session.settings,
            session.catalog,
            "det1_spot",
            live.metadata["start"]["uid"],
        )


def test_scalar_reductions_of_a_step_scan(session):
    """Monitor normalisation and peak statistics of the scaler, live."""
    d = session.devices
    result = session.RE(plans.scan([d["det"]], d["sample_x"], 1.0, 4.0, 13))
    uid = result.run_start_uids[0]
    runs = session.runs_container
    by_kind = {
        runs[u].metadata["start"]["reduction"]["kind"]: runs[u]
        for u in session.recorder.derived_runs(uid)
    }
    assert set(by_kind) == {"normalise", "peak_stats"}
    raw = _primary(runs[uid])
    norm = _primary(by_kind["normalise"])
    np.testing.assert_allclose(
        norm["det-diode_norm"], raw["det-diode"] * 1e5 / raw["det-I0"], rtol=1e-12
    )
    summary = by_kind["peak_stats"]["summary"].read()
    peak = session.profile.simulation.peak
    assert float(summary["cen"][0]) == pytest.approx(peak.center, abs=0.1)
    assert float(summary["fwhm"][0]) == pytest.approx(2.3548 * peak.sigma, rel=0.2)


_FAILING = """
from hutch.reduction.roi import RoiStatistics


class Failing(RoiStatistics):
    '''ROI statistics that break at the third point.'''

    def reduce(self, block):
        if block.seq_nums[-1] >= 3:
            raise RuntimeError("detector calibration missing")
        return super().reduce(block)
"""


def test_a_failing_reduction_leaves_the_scan_complete(session, tmp_path, monkeypatch):
    """A reduction that raises mid-run ends its derived run 'fail' with the error as the
    reason and its points so far; the raw run and every other reduction go on."""
    (tmp_path / "failing_reduction.py").write_text(textwrap.dedent(_FAILING))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # for the recorder process
    specs = [
        {"name": "broken", "kind": "failing_reduction:Failing", "detector": "det1"},
        {"name": "fine", "kind": "roi_stats", "detector": "det1"},
    ]
    recorder = Recorder(
        RecorderConfig(beamline="demo", nexus_dir=tmp_path / "nexus", reductions=specs),
        tmp_path / "recorder.log",
    )
    token = session.RE.subscribe(recorder)
    try:
        d = session.devices
        result = session.RE(plans.step_scan([d["det1"]], d["sample_x"], -1.0, 1.0, 5))
        uid = result.run_start_uids[0]
        assert result.exit_status == "success"
        derived = recorder.derived_runs(uid)
    finally:
        session.RE.unsubscribe(token)
        recorder.close()
    files = {}
    for derived_uid in derived:
        with h5py.File(recorder.outputs(derived_uid)["nexus"], "r") as f:
            name = f["/entry/title"][()].decode()
            files[name] = (
                f["/entry/run_status/exit_status"][()].decode(),
                f["/entry/run_status/reason"][()].decode(),
                len(f["/entry/data/frame_sum"]),
            )
    assert len(files) == 2
    broken = next(v for k, v in files.items() if "broken" in k)
    fine = next(v for k, v in files.items() if "fine" in k)
    assert broken[0] == "fail"
    assert "broken (roi_stats 1) failed at seq_num 3" in broken[1]
    assert "RuntimeError: detector calibration missing" in broken[1]
    assert broken[2] == 2
    assert fine == ("success", "", 5)
    with h5py.File(recorder.outputs(uid)["nexus"], "r") as raw:
        assert raw["/entry/run_status/exit_status"][()].decode() == "success"
        assert len(raw["/entry/data/sample_x"]) == 5


def test_derived_documents_are_valid_and_follow_the_raw_points(session):
    """The runner's derived documents validate against event-model's schemas; a fly scan's
    points (StreamDatums only) are reduced in seq_num order with their captured positions."""
    d = session.devices
    docs: list = []
    token = session.RE.subscribe(lambda name, doc: docs.append((name, copy.deepcopy(doc))))
    try:
        session.RE(bps.mv(d["sample_x"], 0.0, d["sample_y"], 0.0))
        session.RE(
            plans.fly_scan(
                [d["det1"]], d["sample_x"], -2.0, 2.0, 21, panda=d["panda1"], velocity=2.0
            )
        )
    finally:
        session.RE.unsubscribe(token)
    out: list = []
    runner = ReductionRunner(session.profile.reductions_for, lambda n, doc: out.append((n, doc)))
    for name, doc in docs:
        runner(name, doc)
    runner.close()
    for name, doc in out:
        schema_validators[DocumentNames(name)].validate(doc)
    pages = [doc for name, doc in out if name == "event_page"]
    seq = [s for page in pages for s in page["seq_num"]]
    assert seq == list(range(1, 22))
    x = np.concatenate([page["data"]["panda1-sample_x"] for page in pages])
    np.testing.assert_allclose(x, np.linspace(-2.0, 2.0, 21), atol=1e-3)
    centroid = np.concatenate([page["data"]["spot_centroid_x"] for page in pages])
    options = session.profile.device("det1").sim
    # The frames of the constant-velocity part: the spot where the captured position puts it.
    expected = np.array([spot_pixel(options, xi, 0.0)[0] for xi in x])
    np.testing.assert_allclose(centroid[1:-1], expected[1:-1], atol=1.0)


def test_a_lagging_lane_merges_consecutive_stream_datums():
    """StreamDatums that continue one another (same resource, next indices and seq_nums)
    merge into one, so that a lane behind a fast detector reads and reduces many frames at
    once; never across a run's stop, nor with a gap."""
    from hutch.reduction.lane import merge_stream_datums

    def datum(resource: str, first: int, n: int = 1) -> tuple[str, dict]:
        return "stream_datum", {
            "stream_resource": resource,
            "uid": f"{resource}/{first}",
            "descriptor": "d",
            "indices": {"start": first, "stop": first + n},
            "seq_nums": {"start": first + 1, "stop": first + n + 1},
        }

    event = ("event", {"descriptor": "d", "seq_num": 1})
    merged = merge_stream_datums(
        [
            datum("a", 0),
            event,
            datum("b", 0),
            datum("a", 1),
            event,
            datum("a", 2, 3),
            datum("a", 7),  # a gap: indices 5 and 6 missing
            ("stop", {"run_start": "r"}),
            datum("a", 8),
        ]
    )
    names = [name for name, _ in merged]
    assert names == [
        "stream_datum",
        "event",
        "stream_datum",
        "event",
        "stream_datum",
        "stop",
        "stream_datum",
    ]
    first = merged[0][1]
    assert first["indices"] == {"start": 0, "stop": 5}
    assert first["seq_nums"] == {"start": 1, "stop": 6}
    assert merged[4][1]["indices"] == {"start": 7, "stop": 8}
    assert merged[6][1]["indices"] == {"start": 8, "stop": 9}  # not across the stop
