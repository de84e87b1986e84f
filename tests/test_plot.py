"""PlotSaver against real RunEngine runs of ophyd's simulated devices."""

from __future__ import annotations

import threading

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import matplotlib.image
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.run_engine import get_bluesky_event_loop
from ophyd.sim import det, det4, motor, motor1, motor2

from hutch.callbacks import PlotSaver

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_engine():
    """A RunEngine on the process's bluesky loop: a new loop would strand other tests' devices."""
    return RunEngine({}, loop=get_bluesky_event_loop())


@pytest.fixture
def saver(run_engine, tmp_path):
    saver = PlotSaver(tmp_path)
    run_engine.subscribe(saver)
    return saver


@pytest.fixture(autouse=True)
def no_drawing_problems(caplog):
    yield
    problems = [r for r in caplog.records if r.name.startswith("hutch.callbacks")]
    assert not problems, [r.getMessage() for r in problems]


def assert_png(path, min_bytes=5_000) -> np.ndarray:
    """The image's pixels, after checking it is a real, non-trivial PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    return matplotlib.image.imread(path)


def test_scan_png(run_engine, saver):
    (uid,) = run_engine(bp.scan([det], motor, -1, 1, 5))
    path = saver.path_for(uid)
    assert path == saver.last_path
    assert path.name == f"run_00001_{uid[:8]}.png"
    pixels = assert_png(path)
    assert pixels.shape[1] == 800 and pixels.shape[0] >= 400  # one panel per detector field


def test_count_png(run_engine, saver):
    (uid,) = run_engine(bp.count([det], 3), beamline="bl7")
    assert saver.path_for(uid).name == f"bl7_00001_{uid[:8]}.png"
    assert_png(saver.path_for(uid))


def test_grid_scan_png_is_an_image(run_engine, saver):
    (uid,) = run_engine(bp.grid_scan([det4], motor1, -1, 1, 3, motor2, -1, 1, 4))
    grid = assert_png(saver.path_for(uid))
    (uid,) = run_engine(bp.scan([det4], motor1, -1, 1, 12))
    line = assert_png(saver.path_for(uid))
    # An image fills the axes with colour; a line plot is mostly white.
    assert np.mean(grid[..., :3] < 0.9) > 3 * np.mean(line[..., :3] < 0.9)


def test_snaked_grid_scan_png(run_engine, saver):
    (uid,) = run_engine(bp.grid_scan([det4], motor1, -1, 1, 3, motor2, -1, 1, 4, snake_axes=True))
    assert_png(saver.path_for(uid))


def test_run_without_events_says_no_data(run_engine, saver):
    (uid,) = run_engine(bp.count([det], 0))
    assert_png(saver.path_for(uid), min_bytes=1_000)


def test_failed_run_still_gets_a_png(run_engine, saver):
    def failing():
        yield from bps.open_run()
        yield from bps.trigger_and_read([det, motor])
        raise RuntimeError("beam dump")

    with pytest.raises(RuntimeError, match="beam dump"):
        run_engine(failing())
    assert_png(saver.last_path)


def test_replay_and_threads(run_engine, tmp_path):
    docs: list[tuple[str, dict]] = []
    run_engine.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = run_engine(bp.scan([det], motor, -1, 1, 5))

    # Pyplot-free drawing: replays may run concurrently off the main thread.
    savers = [PlotSaver(tmp_path / f"replay{i}") for i in range(4)]

    def replay(saver: PlotSaver) -> None:
        for name, doc in docs:
            saver(name, doc)

    threads = [threading.Thread(target=replay, args=(s,)) for s in savers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for saver in savers:
        assert_png(saver.path_for(uid))
