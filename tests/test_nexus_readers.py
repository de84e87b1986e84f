"""NeXus files of real runs on the simulated beamline, as NeXus readers open them.

Every NXdata group, and every detector or monitor group holding data, opens in scippnexus as
a DataArray, in silx as valid NXdata and in nexusformat with its signal and axes
(`nexus_readers.read_all`): a step scan of the area detector, fly scans (the PandA's captured
positions are the axis), a snake fly scan and a scaler grid scan (2-D: scattered points and
the map), and derived runs (`hutch.reduction`: ROI statistics, an I(q)-like reduction) with
their provenance in an NXprocess.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from nexus_readers import read_all
from nexus_validator import problems
from nexusformat.nexus import nxload

from hutch import plans
from hutch.callbacks import NexusWriter
from hutch.reduction.base import Reduction, ReductionParameters
from hutch.reduction.points import Block
from hutch.reduction.roi import RoiParameters, RoiStatistics
from hutch.reduction.runner import ReductionRunner

FRAME = (96, 128)  # the demo's det1: height, width
SPOT = RoiParameters(detector="det1", rois={"spot": (20, 10, 88, 76)})


class RadialParameters(ReductionParameters):
    npt: int = 12
    drift: bool = False  # q changes from point to point (a detector moving, say)


class Radial(Reduction):
    """An I(q) per frame, as an azimuthal integration gives it: ``iq`` and its radial axis
    ``q``, both ``npt`` long per point, ``q`` the same at every point unless ``drift``."""

    kind = "radial_test"
    version = "3"
    Parameters = RadialParameters

    def describe(self, start: dict[str, Any], descriptor: dict[str, Any]) -> dict[str, dict]:
        self._key = self.source_key(descriptor)
        array = {"dtype": "array", "shape": [self.parameters.npt], "dtype_numpy": "<f8"}
        return {"iq": {**array, "units": "counts"}, "q": {**array, "units": "1/angstrom"}}

    def reduce(self, block: Block) -> dict[str, np.ndarray]:
        n, npt = len(block), self.parameters.npt
        frames = block.data[self._key].reshape(n, -1).astype(float)
        iq = np.stack([[part.mean() for part in np.array_split(f, npt)] for f in frames])
        q = np.tile(np.linspace(0.1, 1.2, npt), (n, 1))
        if self.parameters.drift:
            q = q * (1 + 0.01 * block.seq_nums[:, None])
        return {"iq": iq, "q": q}


def run(session, plan) -> tuple[str, Path]:
    result = session.RE(plan)
    assert result.exit_status == "success", result.reason
    (uid,) = result.run_start_uids
    return uid, session.record(uid).nexus


def derive(session_docs, reductions: list[Reduction], directory: Path) -> list[Path]:
    """The derived runs' NeXus files of the raw run in ``session_docs`` (one per reduction)."""
    derived: list[tuple[str, dict]] = []
    runner = ReductionRunner(lambda start: reductions, lambda n, d: derived.append((n, d)))
    for name, doc in session_docs:
        runner(name, doc)
    runner.close()
    writer = NexusWriter(directory)
    paths = []
    for name, doc in derived:
        writer(name, doc)
        if name == "start":
            paths.append(writer.last_path)
    assert all(d["exit_status"] == "success" for n, d in derived if n == "stop"), derived
    return paths


def text(dataset: h5py.Dataset) -> str:
    return dataset.asstr()[()]


def test_step_scan_frames_against_the_motor(session, session_docs, tmp_path):
    d = session.devices
    _, path = run(session, plans.step_scan([d["det1"]], d["sample_x"], -2.0, 2.0, 5, exposure=0.01))
    reads = read_all(path)
    assert set(reads) == {"entry/data", "entry/baseline", "entry/instrument/det1"}
    data = reads["entry/data"]
    assert data.scipp.dims == ("sample_x", "dim_1", "dim_2")
    assert data.scipp.shape == (5, *FRAME)
    np.testing.assert_allclose(
        data.scipp.coords["sample_x"].values, np.linspace(-2, 2, 5), atol=1e-3
    )
    assert str(data.scipp.coords["sample_x"].unit) == "mm"
    assert "sample_x_user_setpoint" in data.scipp.coords
    assert data.silx_axes == ["sample_x", None, None]
    assert data.nexusformat_axes == ["sample_x", "Axis1", "Axis2"]
    assert reads["entry/instrument/det1"].scipp.shape == (5, *FRAME)

    # I(q) per point, q the same at every point: a 2-D signal against the motor and q.
    (iq_path,) = derive(
        session_docs, [Radial("det1_iq", RadialParameters(detector="det1"))], tmp_path
    )
    iq = read_all(iq_path)["entry/data"]
    assert iq.scipp.dims == ("sample_x", "q") and iq.scipp.shape == (5, 12)
    np.testing.assert_allclose(iq.scipp.coords["q"].values, np.linspace(0.1, 1.2, 12))
    assert str(iq.scipp.coords["q"].unit) == "1/Å"
    np.testing.assert_allclose(iq.scipp.coords["sample_x"].values, np.linspace(-2, 2, 5), atol=1e-3)
    assert iq.silx_axes == ["sample_x", "q"]
    assert iq.nexusformat_axes == ["sample_x", "q"]
    with h5py.File(iq_path, "r") as f:
        assert f["entry/data/q"].shape == (12,)  # once, not once per point
        assert f["entry/process/q"].shape == (5, 12)  # as the events gave it
    assert problems(iq_path) == []  # punx too: no raw file here to link to

    # q changing from point to point: a coordinate of the signal's shape, no longer an axis.
    (drift,) = derive(
        session_docs, [Radial("det1_iq", RadialParameters(detector="det1", drift=True))], tmp_path
    )
    iq = read_all(drift)["entry/data"]
    assert iq.scipp.dims == ("sample_x", "dim_1")
    assert iq.scipp.coords["q"].shape == (5, 12)
    assert iq.silx_axes == ["sample_x", None]


def test_fly_scan_frames_against_the_captured_positions(session, session_docs):
    d = session.devices
    panda1 = d["panda1"]
    raw_uid, path = run(
        session,
        plans.fly_scan([d["det1"]], d["sample_x"], -3.0, 3.0, 11, panda=panda1, velocity=3.0),
    )
    reads = read_all(path)
    assert {"entry/data", "entry/instrument/det1", "entry/instrument/panda1"} <= set(reads)
    data = reads["entry/data"]
    assert data.scipp.dims == ("panda1_sample_x", "dim_1", "dim_2")
    assert data.scipp.shape == (11, *FRAME)
    x = data.scipp.coords["panda1_sample_x"].values
    np.testing.assert_allclose(x, np.linspace(-3, 3, 11), atol=2e-4)  # captured, not an index
    assert (np.diff(x) > 0).all()
    assert {"panda1_sample_y", "panda1_time"} <= set(data.scipp.coords)
    assert data.silx_axes == ["panda1_sample_x", None, None]
    assert data.nexusformat_axes == ["panda1_sample_x", "Axis1", "Axis2"]
    # The PandA's group: its captured positions are its signal.
    np.testing.assert_array_equal(reads["entry/instrument/panda1"].scipp.values, x)
    assert reads["entry/instrument/det1"].scipp.shape == (11, *FRAME)

    # ROI statistics of the frames, a derived run written beside the raw file.
    (derived,) = derive(session_docs, [RoiStatistics("det1_spot", SPOT)], path.parent)
    roi = read_all(derived)["entry/data"]
    assert roi.scipp.dims == ("panda1_sample_x",)
    assert roi.scipp.coords["panda1_sample_x"].values == pytest.approx(x)
    assert roi.silx_axes == ["panda1_sample_x"] and roi.nexusformat_axes == ["panda1_sample_x"]
    with h5py.File(derived, "r") as f:
        assert f["entry/data"].attrs["signal"] == "spot_sum"
        process = f["entry/process"]
        assert process.attrs["NX_class"] == "NXprocess"
        assert text(process["program"]) == "hutch roi_stats"
        assert text(process["version"]) == "1"
        assert datetime.fromisoformat(text(process["date"])).tzinfo is not None
        assert text(process["raw_uid"]) == raw_uid
        assert process["parameters"].attrs["NX_class"] == "NXnote"
        assert json.loads(text(process["parameters/data"])) == SPOT.model_dump(mode="json")
        assert text(process["raw/file_name"]) == path.name  # same folder
        link = process.get("raw_data", getlink=True)
        assert isinstance(link, h5py.ExternalLink) and link.filename == path.name
        assert process["raw_data"].attrs["signal"] == "det1"  # the raw run's data, linked
        # The reduction's results live in the process, the NXdata shows them.
        assert process["spot_sum"].shape == (11,)
        assert f["entry/data/spot_sum"] == process["spot_sum"]
    assert problems(derived) == []


def test_snake_fly_scan_is_a_map_of_its_reduction(session, session_docs, tmp_path):
    d = session.devices
    _, path = run(
        session,
        plans.snake_fly_scan(
            [d["det1"]],
            d["sample_y"],
            -1.0,
            1.0,
            3,
            d["sample_x"],
            -2.0,
            2.0,
            5,
            panda=d["panda1"],
            velocity=4.0,
        ),
    )
    reads = read_all(path)
    data = reads["entry/data"]
    # Frames: one per point, both captured positions coordinates of the point dimension.
    assert data.scipp.dims == ("panda1_sample_x", "dim_1", "dim_2")
    line = np.linspace(-2, 2, 5)
    x = data.scipp.coords["panda1_sample_x"].values
    np.testing.assert_allclose(x, np.concatenate([line, line[::-1], line]), atol=2e-4)
    np.testing.assert_allclose(
        data.scipp.coords["panda1_sample_y"].values, np.repeat([-1.0, 0.0, 1.0], 5), atol=1e-3
    )
    with h5py.File(path, "r") as f:
        assert "map" not in f["entry"]  # a map of frames is its reductions' to draw

    (derived,) = derive(session_docs, [RoiStatistics("det1_spot", SPOT)], tmp_path)
    reads = read_all(derived)
    # As taken: scattered points, which nexusformat draws as a scatter map.
    points = reads["entry/data"]
    assert points.scipp.dims == ("panda1_sample_x",) and points.scipp.shape == (15,)
    root = nxload(str(derived))
    names = [c.nxname for c in root["entry/data"].nxcoordinates]
    root.close()
    assert names == ["panda1_sample_y", "panda1_sample_x"]
    # On the grid, the default plot: rows of y, columns of x, snaked rows turned back.
    grid = reads["entry/map"]
    assert grid.scipp.dims == ("panda1_sample_y", "panda1_sample_x")
    assert grid.scipp.shape == (3, 5)
    np.testing.assert_allclose(grid.scipp.coords["panda1_sample_x"].values, line, atol=2e-4)
    np.testing.assert_allclose(grid.scipp.coords["panda1_sample_y"].values, [-1, 0, 1], atol=1e-3)
    np.testing.assert_allclose(
        grid.scipp.coords["panda1_sample_x_points"].values, [line] * 3, atol=2e-4
    )
    sums = points.scipp.values.reshape(3, 5)
    sums[1] = sums[1, ::-1]
    np.testing.assert_array_equal(grid.scipp.values, sums)
    assert grid.silx_axes == ["panda1_sample_y", "panda1_sample_x"]
    assert grid.nexusformat_axes == ["panda1_sample_y", "panda1_sample_x"]
    with h5py.File(derived, "r") as f:
        assert f["entry"].attrs["default"] == "map"
    assert problems(derived) == []


def test_scaler_grid_scan_is_a_map(session, session_docs):
    d = session.devices
    _, path = run(
        session,
        plans.grid_scan(
            [d["det"]], d["sample_y"], -1.0, 1.0, 3, d["sample_x"], -2.0, 2.0, 3, snake_axes=True
        ),
    )
    reads = read_all(path)
    assert {"entry/data", "entry/map", "entry/instrument/det", "entry/monitor"} <= set(reads)
    diode = np.array(
        [
            doc["data"]["det-diode"]
            for name, doc in session_docs
            if name == "event" and "det-diode" in doc["data"]
        ]
    )
    data = reads["entry/data"]
    assert data.scipp.dims == ("sample_x",)
    np.testing.assert_array_equal(data.scipp.values, diode)
    assert {"sample_y", "det_I0"} <= set(data.scipp.coords)
    assert data.silx_axes == ["sample_x"] and data.nexusformat_axes == ["sample_x"]
    # The scaler's group: the diode channel is its signal, not the I0 monitor.
    np.testing.assert_array_equal(reads["entry/instrument/det"].scipp.values, diode)
    assert reads["entry/monitor"].scipp.shape == (9,)

    grid = reads["entry/map"]
    assert grid.scipp.dims == ("sample_y", "sample_x")
    expected = diode.reshape(3, 3)
    expected[1] = expected[1, ::-1]
    np.testing.assert_array_equal(grid.scipp.values, expected)
    np.testing.assert_allclose(grid.scipp.coords["sample_x"].values, [-2, 0, 2], atol=1e-3)
    np.testing.assert_allclose(grid.scipp.coords["sample_y"].values, [-1, 0, 1], atol=1e-3)
    assert str(grid.scipp.coords["sample_x"].unit) == "mm"
    assert grid.silx_axes == ["sample_y", "sample_x"]
    assert grid.nexusformat_axes == ["sample_y", "sample_x"]
    assert problems(path) == []
