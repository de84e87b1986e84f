"""Fly scans on the simulated beamline: PandA-triggered area detector frames, captured
positions, StreamResource documents, NeXus external links and arrays served by the catalogue."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from hutch import plans
from hutch.simulators.areadetector import spot_pixel

# The demo profile's detector: 128 x 96 pixels of 0.1 mm, the spot centred at (0, 0).
WIDTH, HEIGHT, PIXEL = 128, 96, 0.1


def _validated(session_docs) -> None:
    for name, doc in session_docs:
        schema_validators[DocumentNames(name)].validate(doc)


def _stream_data(session_docs) -> dict[str, tuple[Path, str, int]]:
    """Each external data key: (file, dataset, rows the stream_datum documents cover)."""
    rows: Counter[str] = Counter()
    for name, doc in session_docs:
        if name == "stream_datum":
            rows[doc["stream_resource"]] += doc["indices"]["stop"] - doc["indices"]["start"]
    return {
        doc["data_key"]: (
            Path(urlparse(doc["uri"]).path),
            doc["parameters"]["dataset"],
            rows[doc["uid"]],
        )
        for name, doc in session_docs
        if name == "stream_resource"
    }


def _read(path: Path, dataset: str) -> np.ndarray:
    with h5py.File(path, "r", swmr=True) as f:
        return f[dataset][()]


def _centroid(frame: np.ndarray) -> tuple[float, float]:
    """(column, row) of the spot: intensity-weighted, over the pixels well above background
    (its noise would pull a whole-frame centroid towards the centre)."""
    signal = frame.astype(float) - np.median(frame)
    signal[signal < 0.2 * signal.max()] = 0.0
    rows, cols = np.indices(frame.shape)
    return (signal * cols).sum() / signal.sum(), (signal * rows).sum() / signal.sum()


def _key(data: dict, suffix: str) -> str:
    (key,) = [k for k in data if k.endswith(suffix)]
    return key


def test_fly_scan_frames_and_positions_match(session, session_docs):
    """N triggers give N frames and N captured positions, equally spaced along the motor's
    constant-velocity trajectory, and each frame shows the spot where the stage put it."""
    d = session.devices
    det1, panda1, x, y = d["det1"], d["panda1"], d["sample_x"], d["sample_y"]
    session.RE(bps.mv(y, 0.4))
    start, stop, num, velocity = -1.0, 1.5, 26, 2.0  # a trigger every 0.1 mm, every 50 ms
    result = session.RE(
        plans.fly_scan([det1], x, start, stop, num, panda=panda1, velocity=velocity)
    )
    assert result.exit_status == "success", result.reason
    _validated(session_docs)

    data = _stream_data(session_docs)
    frames_file, frames_path, frame_rows = data["det1"]
    x_key = _key(data, "-sample_x")
    positions_file, positions_path, position_rows = data[x_key]
    assert frame_rows == position_rows == num
    frames = _read(frames_file, frames_path)
    assert frames.shape == (num, HEIGHT, WIDTH) and frames.dtype == np.uint16
    positions = _read(positions_file, positions_path)
    assert positions.shape == (num,)
    # Equally spaced at the compare points (within an encoder count), increasing, in range.
    np.testing.assert_allclose(positions, np.linspace(start, stop, num), atol=2e-4)
    assert (np.diff(positions) > 0).all()
    # On the motor's trajectory: constant velocity through the capture times.
    times = _read(*data[_key(data, "-time")][:2])
    slope, intercept = np.polyfit(times, positions, 1)
    assert slope == pytest.approx(velocity, rel=0.02)
    np.testing.assert_allclose(positions, slope * times + intercept, atol=5e-3)
    # Each frame shows the spot at the captured stage position.
    y_positions = _read(*data[_key(data, "-sample_y")][:2])
    np.testing.assert_allclose(y_positions, 0.4, atol=1e-3)
    for frame, xi in zip(frames, positions, strict=True):
        expected = spot_pixel({"width": WIDTH, "height": HEIGHT, "pixel_size": PIXEL}, xi, 0.4)
        assert _centroid(frame) == pytest.approx(expected, abs=1.0)

    # The NeXus file links the frames and positions (no copy) and the links resolve.
    record = session.record(result.run_start_uids[0])
    with h5py.File(record.nexus, "r") as f:
        link = f["entry/instrument/det1"].get("data", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        np.testing.assert_array_equal(f["entry/instrument/det1/data"][()], frames)
        assert f["entry/instrument/det1"].attrs["NX_class"] == "NXdetector"


def test_snake_fly_scan_covers_the_grid_and_the_catalogue_serves_it(session, session_docs):
    """A 3 x 5 snake: rows alternate direction; the catalogue's arrays equal the files and
    reshape to the grid."""
    d = session.devices
    det1, panda1, x, y = d["det1"], d["panda1"], d["sample_x"], d["sample_y"]
    result = session.RE(
        plans.snake_fly_scan([det1], y, -0.5, 0.5, 3, x, -0.4, 0.4, 5, panda=panda1, velocity=2.0)
    )
    assert result.exit_status == "success", result.reason
    _validated(session_docs)
    data = _stream_data(session_docs)
    x_file, x_path, rows = data[_key(data, "-sample_x")]
    assert rows == 15
    grid_x = _read(x_file, x_path).reshape(3, 5)
    grid_y = _read(*data[_key(data, "-sample_y")][:2]).reshape(3, 5)
    line = np.linspace(-0.4, 0.4, 5)
    np.testing.assert_allclose(grid_x, [line, line[::-1], line], atol=2e-4)
    np.testing.assert_allclose(grid_y, np.repeat([[-0.5], [0.0], [0.5]], 5, axis=1), atol=1e-3)
    frames = _read(*data["det1"][:2])
    assert frames.shape == (15, HEIGHT, WIDTH)

    run = session.runs_container[result.run_start_uids[0]]
    assert run.metadata["start"]["shape"] == [3, 5]
    served = np.asarray(run["primary"]["det1"].read())
    assert served.shape == (15, HEIGHT, WIDTH)
    np.testing.assert_array_equal(
        served.reshape(3, 5, HEIGHT, WIDTH), frames.reshape(3, 5, HEIGHT, WIDTH)
    )
    served_x = np.asarray(run["primary"][_key(data, "-sample_x")].read())
    np.testing.assert_array_equal(served_x.reshape(3, 5), grid_x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"velocity": 80.0}, r"velocity 80 mm/s exceeds sample_x's maximum velocity \(VMAX\) 50"),
        ({"start": -12.0, "velocity": 2.0}, r"start with run-up -12\.\d+ mm is outside sample_x's"),
        ({"stop": 9.99, "velocity": 20.0}, r"stop with run-down 10\.\d+ mm is outside"),
        ({"velocity": 40.0, "exposure": 0.004}, r"faster than det1 can take frames"),
    ],
)
def test_fly_scan_refuses_what_the_hardware_cannot_do(session, session_docs, kwargs, message):
    """Bad arguments fail before the run opens and before anything moves."""
    d = session.devices
    x = d["sample_x"]
    before = session.RE(bps.rd(x.user_readback)).plan_result
    args = {"start": -1.0, "stop": 1.0, **kwargs}
    with pytest.raises(plans.ScanArgumentError, match=message):
        session.RE(
            plans.fly_scan(
                [d["det1"]], x, args.pop("start"), args.pop("stop"), 21, panda=d["panda1"], **args
            )
        )
    assert not [name for name, _ in session_docs if name == "start"]
    assert session.RE(bps.rd(x.user_readback)).plan_result == before


def test_step_scan_with_the_area_detector(session, session_docs):
    """A step scan takes one frame per point into one file; the spot follows the stage."""
    d = session.devices
    det1, x, y = d["det1"], d["sample_x"], d["sample_y"]
    session.RE(bps.mv(y, 0.0))
    result = session.RE(plans.step_scan([det1], x, -2.0, 2.0, 5, exposure=0.01))
    assert result.exit_status == "success", result.reason
    _validated(session_docs)
    data = _stream_data(session_docs)
    frames_file, path, rows = data["det1"]
    assert rows == 5
    frames = _read(frames_file, path)
    for frame, xi in zip(frames, np.linspace(-2.0, 2.0, 5), strict=True):
        expected = spot_pixel({"width": WIDTH, "height": HEIGHT, "pixel_size": PIXEL}, xi, 0.0)
        assert _centroid(frame) == pytest.approx(expected, abs=1.0)
    with pytest.raises(plans.ScanArgumentError, match=r"stop 11 mm is outside sample_x's"):
        session.RE(plans.step_scan([det1], x, 0.0, 11.0, 5))


# A session of its own in a process of its own, on a simulator of its own: the test kills
# that simulator's detector IOC mid-scan (libca is configured once per process, so the
# session cannot live in the test process, whose CA client knows the suite's simulator).
_DYING_DETECTOR = """
import json, os, signal, sys, threading, time
from pathlib import Path

import h5py

from hutch import plans, simulators
from hutch.ca import configure_ca_client
from hutch.catalog import stop_catalog
from hutch.config import Settings
from hutch.profile import load_profile
from hutch.session import Session

data_dir, port, catalog_port, out = sys.argv[1:]
profile = load_profile("demo")
settings = Settings(data_dir=Path(data_dir), catalog_port=int(catalog_port))
state = simulators.start(profile, int(port), settings, exit_with=os.getpid(), timeout=60)
configure_ca_client(*state.ports)
detector = state.iocs["detector"]
try:
    session = Session(profile, settings, live_table=False, plots=False)
    session_docs = []
    session.RE.subscribe(lambda name, doc: session_docs.append((name, doc)))
    d = session.devices

    def kill_after(frames):
        while simulators.ca_read("DEMO:DET1:HDF1:NumCaptured_RBV", detector["port"]) < frames:
            time.sleep(0.05)
        os.kill(detector["pid"], signal.SIGKILL)

    threading.Thread(target=kill_after, args=(60,), daemon=True).start()
    error = None
    try:
        session.RE(plans.fly_scan([d["det1"]], d["sample_x"], -2.0, 2.0, 201, panda=d["panda1"],
                                  velocity=2.0))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    session.close()
    stop = next(doc for name, doc in session_docs if name == "stop")
    resource = next(
        doc for name, doc in session_docs if name == "stream_resource" and doc["data_key"] == "det1"
    )
    referenced = sum(
        doc["indices"]["stop"] - doc["indices"]["start"]
        for name, doc in session_docs
        if name == "stream_datum" and doc["stream_resource"] == resource["uid"]
    )
    # The dead IOC left its file flagged open for write, as a crashed areaDetector does: it
    # reads in SWMR mode (as tiled reads it), or after `h5clear -s`.
    path = resource["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r", swmr=True) as f:
        frames = f["entry/data/data"][()]
    uid = stop["run_start"]
    run = session.runs_container[uid]
    served = run["primary"]["det1"].read()
    record = session.record(uid)
    with h5py.File(record.nexus, "r", swmr=True) as f:  # SWMR reaches the linked file too
        in_nexus = f["entry/instrument/det1/data"].shape[0]
        nexus_status = f["entry/run_status/exit_status"][()].decode()
    json.dump({
        "error": error, "exit_status": stop["exit_status"], "reason": stop["reason"],
        "in_file": len(frames), "referenced": referenced, "in_nexus": in_nexus,
        "nexus_status": nexus_status,
        "catalogued_status": run.metadata["stop"]["exit_status"],
        "catalogued_frames": len(served),
        "served_equal_file": bool((served.reshape(-1, *frames.shape[1:])
                                   == frames[:len(served)]).all()),
    }, open(out, "w"))
finally:
    stop_catalog(settings)
"""


def test_detector_ioc_dying_mid_scan_fails_the_run_and_keeps_its_frames(tmp_path, free_port):
    """SIGKILL the area detector's IOC after 60 frames of a 201-frame fly scan: the run ends
    with exit_status 'fail' naming det1, the frames written before stay in the detector's
    file, and those collected before the IOC died (all but the last flush period's) are
    referenced by the NeXus file and the catalogue."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "out.json"
    env = dict(os.environ)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _DYING_DETECTOR,
            str(tmp_path / "data"),
            str(free_port()),
            str(free_port()),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["exit_status"] == "fail"
    assert "det1" in result["reason"] and "det1" in result["error"]
    assert result["reason"].startswith("det1 failed")
    assert result["in_file"] >= 60
    assert 0 < result["referenced"] <= result["in_file"]
    # The catalogue serves the frames the run referenced; the NeXus file's external link
    # reaches every frame of the file, those of the last flush period too.
    assert result["catalogued_frames"] == result["referenced"]
    assert result["in_nexus"] == result["in_file"]
    assert result["served_equal_file"]
    assert result["nexus_status"] == result["catalogued_status"] == "fail"
