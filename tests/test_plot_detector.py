"""PlotSaver on what hutch measures beyond scalars: area-detector step and fly scans (frames and
PandA-captured positions in files), snake-scan maps on the positions captured, and the derived
runs of reductions (ROI statistics, an I(q)-like array per point, a summary stream).

The beamline runs are taken once per module on the simulated demo beamline; a `KeepingSaver`
in the test process keeps each figure, to be checked against the files the detectors wrote.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import bluesky.plan_stubs as bps
import h5py
import matplotlib.image
import matplotlib.text
import numpy as np
import pytest
from event_model import compose_run
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from hutch import plans
from hutch.callbacks import PlotSaver
from hutch.callbacks.plot_data import RunData
from hutch.reduction.base import Reduction, ReductionParameters
from hutch.reduction.points import Block
from hutch.reduction.roi import RoiParameters, RoiStatistics, roi_statistics
from hutch.reduction.runner import ReductionRunner

WIDTH, HEIGHT = 128, 96  # the demo profile's detector


class KeepingSaver(PlotSaver):
    """A PlotSaver that keeps each run's figure and plot data, by run uid."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.figures: dict[str, Figure] = {}
        self.data: dict[str, RunData] = {}

    def figure(self, run: RunData, stop: dict[str, Any]) -> Figure:
        fig = super().figure(run, stop)
        self.figures[run.start["uid"]] = fig
        self.data[run.start["uid"]] = run
        return fig


class Taken:
    """One run on the beamline: its uid, its documents, and what the saver made of it."""

    def __init__(self, session, plan, directory: Path) -> None:
        self.docs: list[tuple[str, dict]] = []
        self.saver = KeepingSaver(directory)
        tokens = [
            session.RE.subscribe(lambda n, d: self.docs.append((n, copy.deepcopy(d)))),
            session.RE.subscribe(self.saver),
        ]
        try:
            result = session.RE(plan)
        finally:
            for token in tokens:
                session.RE.unsubscribe(token)
        assert result.exit_status == "success", result.reason
        (self.uid,) = result.run_start_uids
        self.record = session.record(self.uid)
        self.figure = self.saver.figures[self.uid]

    def read(self, data_key: str) -> np.ndarray:
        """The rows a data key's StreamResource names, from the detector's file."""
        (resource,) = [
            d for n, d in self.docs if n == "stream_resource" and d["data_key"] == data_key
        ]
        with h5py.File(urlparse(resource["uri"]).path, "r", swmr=True) as f:
            return f[resource["parameters"]["dataset"]][()]

    def primary(self, key: str) -> list[Any]:
        """``key`` in the primary stream's events."""
        (primary,) = [
            d["uid"] for n, d in self.docs if n == "descriptor" and d["name"] == "primary"
        ]
        return [d["data"][key] for n, d in self.docs if n == "event" and d["descriptor"] == primary]


@pytest.fixture(scope="module")
def step_run(session, tmp_path_factory) -> Taken:
    d = session.devices
    session.RE(bps.mv(d["sample_y"], 0.0))
    plan = plans.step_scan([d["det1"]], d["sample_x"], -2.0, 2.0, 5, exposure=0.01)
    return Taken(session, plan, tmp_path_factory.mktemp("plots"))


@pytest.fixture(scope="module")
def fly_run(session, tmp_path_factory) -> Taken:
    d = session.devices
    session.RE(bps.mv(d["sample_y"], 0.2))
    plan = plans.fly_scan(
        [d["det1"]], d["sample_x"], -1.0, 1.2, 12, panda=d["panda1"], velocity=2.0
    )
    return Taken(session, plan, tmp_path_factory.mktemp("plots"))


@pytest.fixture(scope="module")
def snake_run(session, tmp_path_factory) -> Taken:
    d = session.devices
    plan = plans.snake_fly_scan(
        [d["det1"]], d["sample_y"], -0.5, 0.5, 3, d["sample_x"], -0.4, 0.4, 5,
        panda=d["panda1"], velocity=2.0,
    )  # fmt: skip
    return Taken(session, plan, tmp_path_factory.mktemp("plots"))


@pytest.fixture(autouse=True)
def no_drawing_problems(caplog):
    """Nothing logged by the plotting code, unless a test expects it (and clears it)."""
    yield
    problems = [r for r in caplog.records if r.name.startswith("hutch.callbacks")]
    assert not problems, [r.getMessage() for r in problems]


def axes_titled(fig: Figure, start: str):
    (ax,) = [ax for ax in fig.axes if ax.get_title().startswith(start)]
    return ax


def axes_labelled(fig: Figure, ylabel: str):
    (ax,) = [ax for ax in fig.axes if ax.get_ylabel() == ylabel]
    return ax


def texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def brightest(frames: np.ndarray) -> int:
    return int(np.argmax(roi_statistics(frames)["net"]))


def assert_frame_shown(fig: Figure, frames: np.ndarray) -> None:
    """The brightest frame is drawn beside, with a colour bar in counts."""
    ax = axes_titled(fig, "det1: brightest frame")
    (image,) = ax.images
    np.testing.assert_array_equal(image.get_array(), frames[brightest(frames)])
    assert image.colorbar is not None
    assert image.colorbar.ax.get_ylabel() == "det1 [counts]"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x [pixel]", "y [pixel]")
    assert ax.get_title().splitlines()[0] == f"det1: brightest frame, point {brightest(frames) + 1}"


def assert_recorder_png(taken: Taken) -> None:
    """The recorder process drew the same picture (this code, run there)."""
    pixels = matplotlib.image.imread(taken.record.png)
    width, height = taken.figure.get_size_inches() * 100
    assert pixels.shape[:2] == (round(height), round(width))


def test_step_scan_plots_frame_sums_against_the_motor(step_run):
    fig = step_run.figure
    assert "no data" not in texts(fig)
    assert "step_scan" in fig.get_suptitle()
    frames = step_run.read("det1")
    assert frames.shape == (5, HEIGHT, WIDTH)
    ax = axes_labelled(fig, "det1 frame sum [counts]")
    assert ax.get_xlabel() == "sample_x [mm]"
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), step_run.primary("sample_x"))
    np.testing.assert_allclose(line.get_ydata(), frames.reshape(5, -1).sum(axis=1))
    assert_frame_shown(fig, frames)
    assert_recorder_png(step_run)


def test_fly_scan_plots_frame_sums_against_the_captured_positions(fly_run):
    fig = fly_run.figure
    assert "no data" not in texts(fig)
    frames, positions = fly_run.read("det1"), fly_run.read("panda1-sample_x")
    assert frames.shape == (12, HEIGHT, WIDTH) and positions.shape == (12,)
    ax = axes_labelled(fig, "det1 frame sum [counts]")
    # Captured without units: the motor's, from the baseline.
    assert ax.get_xlabel() == "panda1-sample_x [mm]"
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), positions)
    np.testing.assert_allclose(line.get_ydata(), frames.reshape(12, -1).sum(axis=1))
    assert_frame_shown(fig, frames)
    # Of all the frames, only the one shown was kept.
    run = fly_run.saver.data[fly_run.uid]
    assert list(run.frames) == ["det1"] and run.frames["det1"].image.shape == (HEIGHT, WIDTH)
    assert_recorder_png(fly_run)


def test_snake_fly_scan_maps_frame_sums_on_the_captured_positions(snake_run):
    fig = snake_run.figure
    assert "no data" not in texts(fig)
    frames = snake_run.read("det1")
    x, y = snake_run.read("panda1-sample_x"), snake_run.read("panda1-sample_y")
    ax = axes_titled(fig, "det1 frame sum [counts] map")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("panda1-sample_x [mm]", "panda1-sample_y [mm]")
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    sums = frames.reshape(15, -1).sum(axis=1).reshape(3, 5)
    sums[1] = sums[1, ::-1]  # the middle row was flown backwards
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(3, 5), sums)
    # The cells sit on the positions captured (their centres, on this near-regular grid).
    corners = mesh.get_coordinates()  # (4, 6, 2)
    centres = (corners[:-1, :-1] + corners[1:, :-1] + corners[:-1, 1:] + corners[1:, 1:]) / 4
    grid_x, grid_y = x.reshape(3, 5).copy(), y.reshape(3, 5).copy()
    grid_x[1], grid_y[1] = grid_x[1, ::-1], grid_y[1, ::-1]
    np.testing.assert_allclose(centres[..., 0], grid_x, atol=1e-6)
    np.testing.assert_allclose(centres[..., 1], grid_y, atol=1e-6)
    measured = ax.lines[0]  # dots at each captured position, in scan order
    np.testing.assert_array_equal(measured.get_xdata(), x)
    np.testing.assert_array_equal(measured.get_ydata(), y)
    assert mesh.colorbar is not None and mesh.colorbar.ax.get_ylabel() == "det1 frame sum [counts]"
    assert_frame_shown(fig, frames)
    assert_recorder_png(snake_run)


# Derived runs


def derived(docs: list[tuple[str, dict]], *reductions: Reduction) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    runner = ReductionRunner(lambda start: list(reductions), lambda n, d: out.append((n, d)))
    for name, doc in docs:
        runner(name, doc)
    runner.close()
    return out


def replay(docs: list[tuple[str, dict]], directory: Path) -> dict[str, Figure]:
    """Each run's figure, by reduction name (raw runs by plan name)."""
    saver = KeepingSaver(directory)
    for name, doc in docs:
        saver(name, doc)
    return {
        (saver.data[uid].start.get("reduction") or {}).get("name")
        or saver.data[uid].start["plan_name"]: fig
        for uid, fig in saver.figures.items()
    }


def event_values(docs: list[tuple[str, dict]], key: str) -> list[Any]:
    return [v for n, d in docs if n == "event_page" for v in d["data"].get(key, [])]


def test_roi_statistics_derived_run_plots_each_statistic(step_run, tmp_path):
    roi = RoiStatistics(
        "det1_spot", RoiParameters(detector="det1", rois={"spot": (20, 10, 88, 76)})
    )
    docs = derived(step_run.docs, roi)
    fig = replay(docs, tmp_path)["det1_spot"]
    assert f"roi_stats v1 of step_scan #{step_run.record.scan_id}" in fig.get_suptitle()
    ylabels = [ax.get_ylabel() for ax in fig.axes]
    assert ylabels == [
        "spot_sum [counts]", "spot_net [counts]", "spot_max [counts]",
        "spot_centroid_x [pixel]", "spot_centroid_y [pixel]",
        "spot_sigma_x [pixel]", "spot_sigma_y [pixel]",
    ]  # fmt: skip
    ax = axes_labelled(fig, "spot_centroid_x [pixel]")
    np.testing.assert_allclose(ax.lines[0].get_xdata(), step_run.primary("sample_x"))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), event_values(docs, "spot_centroid_x"))
    assert fig.axes[-1].get_xlabel() == "sample_x [mm]"
    saver = PlotSaver(tmp_path / "png")
    for name, doc in docs:
        saver(name, doc)
    # Named after the raw run's scan, beside its PNG.
    assert saver.last_path.name.startswith(f"demo_{step_run.record.scan_id:05d}_")


def test_many_rois_plot_their_sums_and_centroids(fly_run, tmp_path):
    rois = {"left": (0, 0, 64, 96), "right": (64, 0, 64, 96)}
    docs = derived(fly_run.docs, RoiStatistics("halves", RoiParameters(detector="det1", rois=rois)))
    # The derived run's docs come after the raw run's stop, as from `hutch reduce`: the
    # saver still knows the captured axis's units from the raw run.
    fig = replay(fly_run.docs + docs, tmp_path)["halves"]
    assert [ax.get_ylabel() for ax in fig.axes] == [
        f"{roi}_{stat} [{units}]"
        for roi in rois
        for stat, units in (("sum", "counts"), ("centroid_x", "pixel"), ("centroid_y", "pixel"))
    ]
    assert fig.axes[-1].get_xlabel() == "panda1-sample_x [mm]"
    assert "not shown: left_net" in texts(fig)


def test_roi_statistics_of_a_snake_scan_are_maps(snake_run, tmp_path):
    roi = RoiStatistics("det1_spot", RoiParameters(detector="det1"))
    fig = replay(derived(snake_run.docs, roi), tmp_path)["det1_spot"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [
        "frame_sum [counts] map",
        "frame_centroid_x [pixel] map",
        "frame_centroid_y [pixel] map",
    ]
    ax = axes_titled(fig, "frame_sum [counts] map")
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    sums = snake_run.read("det1").reshape(15, -1).sum(axis=1).reshape(3, 5)
    sums[1] = sums[1, ::-1]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(3, 5), sums)


class RadialProfile(Reduction):
    """An I(q)-like reduction for the tests: each frame's mean counts in rings around its
    centre, against a constant q axis; its summary, the brightest ring."""

    kind = "radial_test"
    version = "1"
    Parameters = ReductionParameters
    npt = 40

    def describe(self, start: dict[str, Any], descriptor: dict[str, Any]) -> dict[str, dict]:
        self._key = self.source_key(descriptor)
        self._peak = 0.0
        return {
            "I": {"dtype": "array", "shape": [self.npt], "units": "counts"},
            "q": {"dtype": "array", "shape": [self.npt], "units": "1/nm"},
        }

    def reduce(self, block: Block) -> dict[str, np.ndarray]:
        frames = block.data[self._key].reshape(len(block), HEIGHT, WIDTH).astype(float)
        rows, cols = np.indices((HEIGHT, WIDTH))
        radius = np.hypot(rows - HEIGHT / 2, cols - WIDTH / 2)
        ring = np.minimum((radius / radius.max() * self.npt).astype(int), self.npt - 1).ravel()
        per_ring = np.bincount(ring, minlength=self.npt)
        intensity = np.array([np.bincount(ring, f.ravel(), self.npt) / per_ring for f in frames])
        self._peak = max(self._peak, float(intensity.max()))
        q = np.linspace(0.1, 4.0, self.npt)
        return {"I": intensity, "q": np.tile(q, (len(block), 1))}

    def summary(self) -> dict[str, tuple[dict[str, Any], Any]]:
        return {"peak": ({"dtype": "number", "shape": [], "units": "counts"}, self._peak)}


def test_radial_profiles_of_a_fly_scan_are_a_heat_map(fly_run, tmp_path):
    docs = derived(fly_run.docs, RadialProfile("det1_iq", ReductionParameters(detector="det1")))
    fig = replay(fly_run.docs + docs, tmp_path)["det1_iq"]
    ax = axes_titled(fig, "I(q), 12 points")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("q [1/nm]", "panda1-sample_x [mm]")
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    intensity = np.array(event_values(docs, "I"))
    assert intensity.shape == (12, RadialProfile.npt)
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(intensity.shape), intensity)
    corners = mesh.get_coordinates()
    q_centres = (corners[0, :-1, 0] + corners[0, 1:, 0]) / 2
    np.testing.assert_allclose(q_centres, np.linspace(0.1, 4.0, RadialProfile.npt))
    row_centres = (corners[:-1, 0, 1] + corners[1:, 0, 1]) / 2
    np.testing.assert_allclose(row_centres, fly_run.read("panda1-sample_x"), atol=1e-3)
    assert mesh.colorbar.ax.get_ylabel() == "I [counts]"
    (peak,) = [d["data"]["peak"] for n, d in docs if n == "event"]  # the summary stream
    assert "summary" in texts(fig) and f"peak = {peak:.6g} counts" in texts(fig)


def test_radial_profiles_of_a_few_points_are_a_waterfall(step_run, tmp_path):
    docs = derived(step_run.docs, RadialProfile("det1_iq", ReductionParameters(detector="det1")))
    fig = replay(docs, tmp_path)["det1_iq"]
    ax = axes_titled(fig, "I(q), 5 points")
    assert ax.get_xlabel() == "q [1/nm]" and ax.get_ylabel().startswith("I [counts], each point +")
    intensity = np.array(event_values(docs, "I"))
    offsets = [line.get_ydata() - row for line, row in zip(ax.lines, intensity, strict=True)]
    steps = [float(np.mean(o)) for o in offsets]
    assert steps[0] == 0 and np.allclose(np.diff(steps), steps[1])  # evenly raised
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "point 1: sample_x = -2 mm"


# Made-up runs: what the beamline does not do on its own


def grid_run(positions: list[tuple[float, float]], values: list[float], **start: Any) -> list:
    """Documents of a 3 x 4 grid scan of ``det`` over motors ``y`` (slow), ``x`` (fast)."""
    bundle = compose_run(
        metadata={
            "plan_name": "grid_scan",
            "scan_id": 7,
            "detectors": ["det"],
            "shape": [3, 4],
            "hints": {"dimensions": [[["y"], "primary"], [["x"], "primary"]]},
            **start,
        }  # fmt: skip
    )
    key = {"dtype": "number", "shape": [], "source": "sim", "units": "mm"}
    stream = bundle.compose_descriptor(
        name="primary",
        data_keys={"det": {**key, "units": "counts"}, "x": key, "y": key},
        hints={"det": {"fields": ["det"]}},
    )
    docs = [("start", bundle.start_doc), ("descriptor", stream.descriptor_doc)]
    for i, ((y, x), value) in enumerate(zip(positions, values, strict=True)):
        data = {"det": value, "x": x, "y": y}
        docs.append(("event", stream.compose_event(data, {k: 0.0 for k in data}, seq_num=i + 1)))
    return [*docs, ("stop", bundle.compose_stop(exit_status="success"))]


def test_map_cells_follow_the_positions_measured(tmp_path):
    """A fast motor lagging 0.25 mm on its backward row skews that row's cells: the map is
    drawn on the positions measured, not on the nominal grid."""
    line = np.linspace(-1.5, 1.5, 4)
    rows = [line, line[::-1] + 0.25, line]  # snaked: the middle row backwards, lagging
    positions = [(y, x) for y, row in zip((-1.0, 0.0, 1.0), rows, strict=True) for x in row]
    fig = replay(grid_run(positions, list(range(12)), snaking=[False, True]), tmp_path)["grid_scan"]
    (mesh,) = [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    corners = mesh.get_coordinates()[..., 0]
    centres = (corners[:-1, :-1] + corners[1:, :-1] + corners[:-1, 1:] + corners[1:, 1:]) / 4
    # The lagging row's cells shifted (by half the lag: corners are shared between rows)...
    np.testing.assert_allclose(centres.mean(axis=1), [0.0, 0.125, 0.0], atol=1e-12)
    # ... and the dots on the positions themselves.
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [x for _, x in positions])
    values = np.asarray(mesh.get_array()).reshape(3, 4)
    np.testing.assert_array_equal(values, [[0, 1, 2, 3], [7, 6, 5, 4], [8, 9, 10, 11]])


def test_an_unfinished_grid_leaves_its_cells_blank(tmp_path):
    line = np.linspace(-1.5, 1.5, 4)
    positions = [(y, x) for y in (-1.0, 0.0, 1.0) for x in line][:7]
    start = {"extents": [[-1.0, 1.0], [-1.5, 1.5]]}
    fig = replay(grid_run(positions, [1.0] * 7, **start), tmp_path)["grid_scan"]
    (mesh,) = [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    assert np.ma.getmaskarray(mesh.get_array()).sum() == 5
    # Without extents the points not reached have no position: drawn as points instead.
    fig = replay(grid_run(positions, [1.0] * 7), tmp_path)["grid_scan"]
    (points,) = fig.axes[0].collections
    assert len(points.get_offsets()) == 7


def test_large_frames_in_events_are_summed_exactly(tmp_path):
    """Frames in the events themselves (not files) are reduced as they come; large ones are
    binned to find the brightest, their sums exact."""
    rng = np.random.default_rng(1)
    frames = rng.poisson(10, (4, 600, 700)).astype(np.uint16)
    frames[2, 300:306, 400:406] += 500
    bundle = compose_run(
        metadata={
            "plan_name": "count",
            "detectors": ["cam"],
            "hints": {"dimensions": [[["time"], "primary"]]},
        }  # fmt: skip
    )
    stream = bundle.compose_descriptor(
        name="primary",
        data_keys={"cam": {"dtype": "array", "shape": [600, 700], "source": "sim"}},
        hints={"cam": {"fields": ["cam"]}},
    )
    docs = [("start", bundle.start_doc), ("descriptor", stream.descriptor_doc)]
    for i, frame in enumerate(frames):
        event = stream.compose_event({"cam": frame}, {"cam": 0.0}, seq_num=i + 1, validate=False)
        docs.append(("event", event))
    docs.append(("stop", bundle.compose_stop()))
    fig = replay(docs, tmp_path)["count"]
    ax = axes_labelled(fig, "cam frame sum [counts]")
    assert ax.get_xlabel() == "time [s]"
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), frames.reshape(4, -1).sum(axis=1))
    (image,) = axes_titled(fig, "cam: brightest frame, point 3").images
    np.testing.assert_array_equal(image.get_array(), frames[2])


def test_frames_that_cannot_be_read_say_so(step_run, tmp_path, caplog):
    """A detector file gone: the PNG says what could not be read; the scan does not fail."""
    docs = []
    for name, doc in step_run.docs:
        if name == "stream_resource":
            doc = {**doc, "uri": f"file://localhost{tmp_path}/gone.h5"}
        docs.append((name, doc))
    saver = KeepingSaver(tmp_path)
    with caplog.at_level(logging.WARNING):
        for name, doc in docs:
            saver(name, doc)
    assert "gone.h5" in texts(saver.figures[step_run.uid])
    assert saver.path_for(step_run.uid).exists()
    assert [r.levelname for r in caplog.records if r.name.startswith("hutch")] == ["WARNING"]
    caplog.clear()
