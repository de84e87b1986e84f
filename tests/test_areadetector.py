"""The simulated areaDetector and hutch's AreaDetector against each other: real Channel Access,
real HDF5 files.

The simulator runs in a process of its own serving only its detectors. Each device check runs
a RunEngine in a child process that points its CA client at that simulator before its first
CA use (libca reads the environment once per process, and this worker's may already serve the
demo beamline); the child prints its documents and results as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from event_model import DocumentNames, schema_validators
from ioc_process import run_client, serving

from hutch.simulators import ca_read, ca_write
from hutch.simulators.areadetector import DATASET, format_file_name, spot_pixel

PREFIX = "TEST:DET:"
SPOT_PREFIX = "TEST:SPOT:"
SIM = {"width": 40, "height": 30, "pixel_size": 0.05, "readout_time": 0.004}
SPOT_XY = (0.3, -0.2)  # mm: where the second detector's sample stage sits

SIM_SCRIPT = f"""
from hutch.simulators.areadetector import AreaDetectorSim
from hutch.simulators.server import run

centred = AreaDetectorSim({PREFIX!r}, sim={SIM!r})
offset = AreaDetectorSim({SPOT_PREFIX!r}, sim={SIM!r}, spot=lambda t: {SPOT_XY!r})
run({{**centred.pvdb, **offset.pvdb}}, ["127.0.0.1"])
"""

CLIENT_PRELUDE = """
import asyncio, json, sys
from hutch.ca import configure_ca_client

port, directory = int(sys.argv[1]), sys.argv[2]
configure_ca_client(port)  # before the first CA use of this process

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
from bluesky import RunEngine
from ophyd_async.core import StaticFilenameProvider, StaticPathProvider, init_devices
from hutch.devices.areadetector import AreaDetector

RE = RunEngine({}, call_returns_result=True)
docs = []
RE.subscribe(lambda name, doc: docs.append((name, doc)))
result = {}

def detector(prefix, filename, name="det"):
    provider = StaticPathProvider(StaticFilenameProvider(filename), directory)
    with init_devices():
        det = AreaDetector(prefix, provider, name=name)
    return det

def call(coro):
    return asyncio.run_coroutine_threadsafe(coro, RE.loop).result(timeout=30)
"""


@pytest.fixture(scope="module")
def ad_port(free_port, tmp_path_factory) -> Iterator[int]:
    """The port of a simulator serving two detectors: spot centred, and spot at SPOT_XY."""
    with serving(
        SIM_SCRIPT,
        free_port(),
        PREFIX + "cam1:Acquire_RBV",
        tmp_path_factory.mktemp("ad-sim") / "sim.log",
    ) as port:
        yield port


def client(port: int, directory: Path, body: str) -> dict[str, Any]:
    """Run ``body`` in a child with a RunEngine and CA on ``port``; its JSON output."""
    return run_client(CLIENT_PRELUDE, body, port, directory, timeout=120)


def validate(docs: list[list[Any]]) -> list[str]:
    """Validate every document against the event-model schema; the document names."""
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)
    return [name for name, _ in docs]


def centroid(frame: np.ndarray) -> tuple[float, float]:
    """(column, row) centroid of the spot above the background."""
    image = frame.astype(float)
    weights = np.clip(image - np.median(image), 0, None)
    rows, cols = np.indices(image.shape)
    total = weights.sum()
    return float((weights * cols).sum() / total), float((weights * rows).sum() / total)


def read_frames(path: str | Path) -> tuple[np.ndarray, tuple[Any, ...]]:
    """The frames of an HDF5 file, and the dataset's (shape, dtype, chunks)."""
    with h5py.File(path, "r", swmr=True) as f:
        dataset = f[DATASET]
        return dataset[()], (dataset.shape, dataset.dtype, dataset.chunks)


# -- pure functions ---------------------------------------------------------------------------


def test_spot_pixel_maps_stage_millimetres_to_pixels():
    assert spot_pixel({}, 0.0, 0.0) == (32.0, 24.0)  # defaults: 64 x 48, centre
    assert spot_pixel(SIM, 0.3, -0.2) == pytest.approx((26.0, 11.0))  # 0.05 mm per pixel


def test_file_name_follows_the_c_template():
    assert format_file_name("%s%s.h5", "/data/", "scan", 7) == "/data/scan.h5"
    assert format_file_name("%s%s_%3.3d.h5", "/data/", "scan", 7) == "/data/scan_007.h5"
    assert format_file_name("%s%s_%d%%.h5", "/d/", "s", 2) == "/d/s_2%.h5"


# -- over Channel Access ----------------------------------------------------------------------


def test_step_count_writes_frames_with_the_spot_where_the_stage_puts_it(ad_port, tmp_path):
    out = client(
        ad_port,
        tmp_path,
        f"""
det = detector({PREFIX!r}, "centred")
RE(bp.count([det], num=3))
spot = detector({SPOT_PREFIX!r}, "offset", name="spot")
RE(bp.count([spot], num=1))
""",
    )
    names = validate(out["docs"])
    assert names.count("start") == 2 and names.count("stop") == 2
    assert names.count("event") == 4
    resources = [doc for name, doc in out["docs"] if name == "stream_resource"]
    datums = [doc for name, doc in out["docs"] if name == "stream_datum"]
    assert len(resources) == 2 and len(datums) == 4
    assert [d["indices"] for d in datums[:3]] == [{"start": i, "stop": i + 1} for i in range(3)]
    assert all(doc["exit_status"] == "success" for name, doc in out["docs"] if name == "stop")

    descriptor = next(doc for name, doc in out["docs"] if name == "descriptor")
    key = descriptor["data_keys"]["det"]
    assert key["shape"][-2:] == [SIM["height"], SIM["width"]]
    assert key["dtype_numpy"] == "<u2"
    assert key["external"] == "STREAM:"

    centred = resources[0]
    assert centred["uri"] == f"file://localhost{tmp_path}/centred.h5"
    assert centred["parameters"]["dataset"] == DATASET
    frames, (shape, dtype, chunks) = read_frames(tmp_path / "centred.h5")
    assert shape == (3, SIM["height"], SIM["width"])
    assert dtype == np.uint16
    assert chunks == (1, SIM["height"], SIM["width"])
    expected = spot_pixel(SIM, 0.0, 0.0)
    for frame in frames:
        assert centroid(frame) == pytest.approx(expected, abs=1.0)

    frames, _ = read_frames(tmp_path / "offset.h5")
    assert centroid(frames[0]) == pytest.approx(spot_pixel(SIM, *SPOT_XY), abs=1.0)


def test_external_triggers_take_one_frame_each_and_too_fast_ones_are_missed(ad_port, tmp_path):
    # Livetime 0.05 s: a trigger within 0.054 s (with the readout) of the last is missed.
    # Triggers 0.3 s apart are always taken; two in one put are always too close.
    out = client(
        ad_port,
        tmp_path,
        f"""
from ophyd_async.core import DetectorTrigger, TriggerInfo
from ophyd_async.epics.core import epics_signal_rw

det = detector({PREFIX!r}, "fly")
with init_devices():
    sim_trigger = epics_signal_rw(int, {PREFIX!r} + "cam1:SimTrigger")
info = TriggerInfo(trigger=DetectorTrigger.EXTERNAL_EDGE, number_of_events=3, livetime=0.05)

def fly():
    yield from bps.open_run()
    yield from bps.stage(det)
    yield from bps.prepare(det, info, wait=True)
    yield from bps.declare_stream(det, name="primary", collect=True)
    yield from bps.kickoff(det, wait=True)
    yield from bps.complete(det, group="complete")
    for triggers in (1, 2, 1):  # the second of the pair is too soon
        yield from bps.mv(sim_trigger, triggers)
        yield from bps.sleep(0.3)
    yield from bps.wait(group="complete")
    yield from bps.collect(det, name="primary")
    yield from bps.unstage(det)
    yield from bps.close_run()

RE(fly())
result["trigger_mode"] = call(det.driver.trigger_mode.get_value())
""",
    )
    names = validate(out["docs"])
    assert names.count("stream_resource") == 1
    datums = [doc for name, doc in out["docs"] if name == "stream_datum"]
    assert datums and datums[-1]["indices"]["stop"] == 3
    assert out["trigger_mode"] == "External"

    assert ca_read(PREFIX + "cam1:MissedTriggers_RBV", ad_port) == 1
    assert ca_read(PREFIX + "cam1:DetectorState_RBV", ad_port) == "Idle"
    frames, (shape, _, _) = read_frames(tmp_path / "fly.h5")
    assert shape == (3, SIM["height"], SIM["width"])
    with h5py.File(tmp_path / "fly.h5", "r") as f:
        stamps = f["/entry/instrument/NDAttributes/NDArrayTimeStamp"][()]
    assert np.all(np.diff(stamps) > 0.2)  # the accepted triggers, 0.3 s apart


def test_trigger_deadtime_is_the_readout_time(ad_port, tmp_path):
    out = client(
        ad_port,
        tmp_path,
        f"""
det = detector({PREFIX!r}, "unused")
triggers, deadtime = call(det.get_trigger_deadtime())
result["triggers"] = sorted(t.name for t in triggers)
result["deadtime"] = deadtime
result["configuration"] = sorted(call(det.read_configuration()))
""",
    )
    assert out["triggers"] == ["EXTERNAL_EDGE", "INTERNAL"]
    assert out["deadtime"] == pytest.approx(SIM["readout_time"])
    assert {"det-driver-readout_time", "det-driver-trigger_mode"} <= set(out["configuration"])


def test_file_path_is_checked_and_created_as_create_directory_allows(ad_port, tmp_path):
    def path_exists(path: Path, depth: int) -> bool:
        ca_write(PREFIX + "HDF1:CreateDirectory", depth, ad_port)
        ca_write(PREFIX + "HDF1:FilePath", str(path), ad_port)
        readback = ca_read(PREFIX + "HDF1:FilePath_RBV", ad_port)
        assert bytes(readback).rstrip(b"\0").decode() == f"{path}/"
        return ca_read(PREFIX + "HDF1:FilePathExists_RBV", ad_port) == "Yes"

    target = tmp_path / "a" / "b"
    assert not path_exists(target, 0)  # 0: create nothing
    assert not path_exists(target, -1)  # two are missing, only one may be created
    assert not target.parent.exists()
    assert path_exists(target, -2)
    assert target.is_dir()


def test_capture_stops_after_num_capture_and_acquire_0_stops_continuous(ad_port, tmp_path):
    def put(suffix: str, value: Any, wait: bool = True) -> None:
        ca_write(PREFIX + suffix, value, ad_port, wait=wait)

    def get(suffix: str) -> Any:
        return ca_read(PREFIX + suffix, ad_port)

    def wait_until(condition: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    for suffix, value in {
        "HDF1:FilePath": str(tmp_path),
        "HDF1:FileName": "cont",
        "HDF1:FileTemplate": "%s%s_%3.3d.h5",
        "HDF1:FileNumber": 5,
        "HDF1:AutoIncrement": 1,
        "HDF1:LazyOpen": 0,
        "HDF1:SWMRMode": 1,
        "HDF1:NumCapture": 2,
        "HDF1:EnableCallbacks": 1,
        "cam1:TriggerMode": 0,
        "cam1:ImageMode": 2,  # Continuous
        "cam1:AcquireTime": 0.01,
        "cam1:AcquirePeriod": 0.0,
    }.items():
        put(suffix, value)
    put("HDF1:Capture", 1, wait=False)  # its put-callback would come when the capture ends
    wait_until(lambda: get("HDF1:Capture_RBV") == "Capture")
    assert bytes(get("HDF1:FullFileName_RBV")).decode() == f"{tmp_path}/cont_005.h5"
    assert get("HDF1:FileNumber") == 6
    counter = get("cam1:ArrayCounter_RBV")
    put("cam1:Acquire", 1, wait=False)
    wait_until(lambda: get("HDF1:Capture_RBV") == "Done")
    assert get("HDF1:NumCaptured_RBV") == 2
    wait_until(lambda: get("cam1:ArrayCounter_RBV") > counter + 3)  # acquiring on
    assert get("cam1:DetectorState_RBV") == "Acquire"
    put("cam1:Acquire", 0)
    assert get("cam1:DetectorState_RBV") == "Idle"
    assert get("cam1:Acquire_RBV") == "Done"
    frames, (shape, _, _) = read_frames(tmp_path / "cont_005.h5")
    assert shape == (2, SIM["height"], SIM["width"])
