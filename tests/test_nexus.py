"""NexusWriter against real RunEngine runs of ophyd / ophyd-async simulated devices."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.preprocessors import SupplementalData, run_decorator
from bluesky.run_engine import get_bluesky_event_loop
from event_model import compose_run, pack_event_page
from nexus_readers import read_all
from ophyd.sim import det, det4, motor, motor1, motor2

import hutch
from hutch.callbacks import NexusWriter
from hutch.callbacks.nexus import nx_name


@pytest.fixture
def run_engine():
    """A RunEngine on the process's bluesky loop: a new loop would strand other tests' devices."""
    return RunEngine({}, loop=get_bluesky_event_loop())


@pytest.fixture(autouse=True)
def no_write_problems(caplog):
    """Every run here is valid: the writer must not have dropped or failed to write anything."""
    yield
    problems = [r for r in caplog.records if r.name.startswith("hutch.callbacks")]
    assert not problems, [r.getMessage() for r in problems]


@pytest.fixture
def writer(run_engine, tmp_path):
    writer = NexusWriter(tmp_path)
    run_engine.subscribe(writer)
    return writer


@pytest.fixture
def docs(run_engine):
    """Every document the RunEngine emits, in order, as (name, doc)."""
    collected: list[tuple[str, dict]] = []
    run_engine.subscribe(lambda name, doc: collected.append((name, doc)))
    return collected


def events(docs, stream="primary") -> list[dict]:
    descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == stream}
    return [d for n, d in docs if n == "event" and d["descriptor"] in descriptors]


def column(docs, key, stream="primary") -> np.ndarray:
    return np.array([e["data"][key] for e in events(docs, stream)])


def text(dataset: h5py.Dataset) -> str:
    return dataset.asstr()[()]


def test_count_writes_nexus_entry(run_engine, writer, docs):
    (uid,) = run_engine(
        bp.count([det], 3), proposal="p-123", sample={"name": "Si powder"}, operator="Ada"
    )
    path = writer.path_for(uid)
    assert path == writer.last_path
    assert path.name == f"run_00001_{uid[:8]}.nxs"

    with h5py.File(path, "r") as f:
        assert f.attrs["NX_class"] == "NXroot"
        assert f.attrs["default"] == "entry"
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry.attrs["default"] == "data"
        assert text(entry["title"]) == "count 1"
        assert text(entry["entry_identifier"]) == uid
        assert text(entry["experiment_identifier"]) == "p-123"
        assert text(entry["program_name"]) == "hutch"
        assert entry["program_name"].attrs["version"] == hutch.__version__
        start_time = datetime.fromisoformat(text(entry["start_time"]))
        end_time = datetime.fromisoformat(text(entry["end_time"]))
        assert start_time.tzinfo is not None
        assert start_time.timestamp() == pytest.approx(docs[0][1]["time"])
        assert end_time.timestamp() == pytest.approx(docs[-1][1]["time"])
        assert entry["sample"].attrs["NX_class"] == "NXsample"
        assert text(entry["sample/name"]) == "Si powder"

        notes = entry["notes"]
        assert notes.attrs["NX_class"] == "NXnote"
        assert text(notes["type"]) == "application/json"
        assert json.loads(text(notes["start"]))["uid"] == uid
        assert json.loads(text(notes["stop"]))["exit_status"] == "success"
        assert entry["run_status"].attrs["NX_class"] == "NXnote"
        assert text(entry["run_status/exit_status"]) == "success"

        instrument = entry["instrument"]
        assert instrument.attrs["NX_class"] == "NXinstrument"
        assert instrument["det"].attrs["NX_class"] == "NXdetector"
        # The detector's own reading is its NXdetector/data; other keys lose the device prefix.
        assert instrument["det/data"].maxshape == (None,)
        assert instrument["det/data"].chunks is not None
        np.testing.assert_array_equal(instrument["det/data"][()], column(docs, "det"))
        np.testing.assert_array_equal(
            instrument["det/data_timestamps"][()],
            [e["timestamps"]["det"] for e in events(docs)],
        )
        assert instrument["det/Imax"][()] == 1
        assert text(instrument["det/noise"]) == "none"

        data = entry["data"]
        assert data.attrs["NX_class"] == "NXdata"
        assert data.attrs["signal"] == "det"
        assert "axes" not in data.attrs
        assert data["det"] == instrument["det/data"]  # a hard link, not a copy
        assert entry["operator"].attrs["NX_class"] == "NXuser"
        assert text(entry["operator/name"]) == "Ada"
        assert "process" not in entry  # not a derived run

    # No axis: readers plot the points against their index.
    reads = read_all(path)
    assert reads["entry/data"].scipp.dims == ("dim_0",)
    assert reads["entry/data"].silx_axes == [None]
    assert reads["entry/data"].nexusformat_axes == ["Axis0"]


def test_scan_links_axes_and_positions(run_engine, writer, docs):
    (uid,) = run_engine(bp.scan([det], motor, -1, 1, 5))
    with h5py.File(writer.path_for(uid), "r") as f:
        data = f["entry/data"]
        assert data.attrs["signal"] == "det"
        assert list(data.attrs["axes"]) == ["motor"]
        assert data.attrs["motor_indices"] == 0
        np.testing.assert_allclose(data["motor"][()], np.linspace(-1, 1, 5))
        np.testing.assert_array_equal(data["motor"][()], column(docs, "motor"))
        np.testing.assert_array_equal(data["det"][()], column(docs, "det"))
        positioner = f["entry/instrument/motor"]
        assert positioner.attrs["NX_class"] == "NXpositioner"
        assert data["motor"] == positioner["value"]
        assert data["motor_setpoint"] == positioner["target_value"]
        assert positioner["velocity"][()] == 1


def test_grid_scan_has_both_axes(run_engine, writer, docs):
    (uid,) = run_engine(bp.grid_scan([det4], motor1, -1, 1, 3, motor2, -1, 1, 4))
    with h5py.File(writer.path_for(uid), "r") as f:
        data = f["entry/data"]
        assert data.attrs["signal"] == "det4"
        # The points as taken, scattered: the signal is 1-D, so one entry in @axes (the
        # fast axis), both positions coordinates of that one dimension.
        assert list(data.attrs["axes"]) == ["motor2"]
        assert data.attrs["motor1_indices"] == data.attrs["motor2_indices"] == 0
        assert list(data.attrs["coordinates"]) == ["motor1", "motor2"]
        for key in ("det4", "motor1", "motor2"):
            assert data[key].shape == (12,)
            np.testing.assert_array_equal(data[key][()], column(docs, key))
        assert set(np.round(data["motor2"][()], 6)) == set(np.round(np.linspace(-1, 1, 4), 6))
        assert f["entry/instrument/det4/center"].shape == (2,)

        # And on the grid: rows of motor1, columns of motor2, the default plot.
        assert f["entry"].attrs["default"] == "map"
        grid = f["entry/map"]
        assert grid.attrs["signal"] == "det4"
        assert list(grid.attrs["axes"]) == ["motor1", "motor2"]
        assert (grid.attrs["motor1_indices"], grid.attrs["motor2_indices"]) == (0, 1)
        np.testing.assert_array_equal(grid["det4"][()], column(docs, "det4").reshape(3, 4))
        np.testing.assert_allclose(grid["motor1"][()], np.linspace(-1, 1, 3))
        np.testing.assert_allclose(grid["motor2"][()], np.linspace(-1, 1, 4))
        points = grid["motor2_points"][()]
        np.testing.assert_array_equal(points, column(docs, "motor2").reshape(3, 4))
        assert list(grid.attrs["motor2_points_indices"]) == [0, 1]


def test_baseline_stream_has_its_own_group(run_engine, writer, docs):
    run_engine.preprocessors.append(SupplementalData(baseline=[motor1, motor]))
    (uid,) = run_engine(bp.scan([det], motor, -1, 1, 3))
    with h5py.File(writer.path_for(uid), "r") as f:
        baseline = f["entry/baseline"]
        assert baseline.attrs["NX_class"] == "NXdata"
        assert baseline["motor1"].shape == (2,)  # read before and after
        np.testing.assert_array_equal(baseline["motor1"][()], column(docs, "motor1", "baseline"))
        # Not scanned here (and without a session's device metadata not known as a motor):
        # read, so a detector whose data are the baseline's.
        assert f["entry/instrument/motor1"].attrs["NX_class"] == "NXdetector"
        assert f["entry/instrument/motor1/data"] == baseline["motor1"]
        # Scanned and in the baseline: the scanned data are the positioner's value.
        assert f["entry/instrument/motor/value"] == f["entry/data/motor"]
        assert "motor1" not in f["entry/data"]
        assert f["entry/data/det"].shape == (3,)
        assert json.loads(text(f["entry/run_status/num_events"])) == {"baseline": 2, "primary": 3}


def test_ophyd_async_devices_units_arrays_strings(run_engine, writer, docs):
    from ophyd_async.core import Array1D, StandardReadable, init_devices, soft_signal_rw
    from ophyd_async.core import StandardReadableFormat as Format
    from ophyd_async.sim import SimMotor

    class Diode(StandardReadable):
        """A point detector reporting a current, a spectrum and its gain setting."""

        def __init__(self, name: str = "") -> None:
            with self.add_children_as_readables(Format.HINTED_SIGNAL):
                self.diode = soft_signal_rw(float, 2.5, units="uA")
            with self.add_children_as_readables():
                self.spectrum = soft_signal_rw(Array1D[np.float64], np.arange(4.0))
                self.mode = soft_signal_rw(str, "high-gain")
            with self.add_children_as_readables(Format.CONFIG_SIGNAL):
                self.gain = soft_signal_rw(float, 1e6, units="V/A")
            super().__init__(name=name)

    with init_devices():
        stage = SimMotor()
        det_ = Diode(name="det")

    (uid,) = run_engine(bp.scan([det_], stage, 0, 2, 3))
    with h5py.File(writer.path_for(uid), "r") as f:
        data = f["entry/data"]
        assert data.attrs["signal"] == "det_diode"
        assert list(data.attrs["axes"]) == ["stage"]
        np.testing.assert_allclose(data["stage"][()], [0, 1, 2])
        assert data["stage"].attrs["units"] == "mm"
        assert data["det_diode"].attrs["units"] == "uA"
        np.testing.assert_array_equal(data["det_diode"][()], column(docs, "det-diode"))

        detector = f["entry/instrument/det"]
        assert detector.attrs["NX_class"] == "NXdetector"
        assert detector["spectrum"].shape == (3, 4)
        assert detector["spectrum"].maxshape == (None, 4)
        np.testing.assert_array_equal(detector["spectrum"][()], column(docs, "det-spectrum"))
        assert list(detector["mode"].asstr()[()]) == ["high-gain"] * 3
        assert detector["gain"][()] == 1e6
        assert detector["gain"].attrs["units"] == "V/A"

        # Every data key with units carries them.
        (descriptor,) = [d for n, d in docs if n == "descriptor"]
        for key, data_key in descriptor["data_keys"].items():
            if data_key.get("units"):
                assert data[nx_name(key)].attrs["units"] == data_key["units"]
        # A spectrum beside a scalar signal has no dimension a reader could tell: it stays
        # in the detector's group. Strings of one value per point are shown.
        assert "det_spectrum" not in data
        assert list(data["det_mode"].asstr()[()]) == ["high-gain"] * 3

    reads = read_all(writer.path_for(uid))
    assert reads["entry/data"].scipp.dims == ("stage",)
    assert list(reads["entry/data"].scipp.coords["det_mode"].values) == ["high-gain"] * 3
    assert reads["entry/instrument/det"].scipp.dims == ("dim_0",)  # @signal diode


def test_file_is_readable_while_the_run_is_in_progress(run_engine, writer, docs, tmp_path):
    seen: dict[str, object] = {}

    @run_decorator(md={})
    def plan():
        for i in range(5):
            yield from bps.mv(motor, i)
            yield from bps.trigger_and_read([det, motor])
            if i == 2:  # three events emitted (and handed to the writer) so far
                live = writer.last_path
                # A byte copy is what a crash would leave on disk: only flushed data is there.
                shutil.copy(live, tmp_path / "crash.nxs")
                with h5py.File(tmp_path / "crash.nxs", "r") as f:
                    seen["crash"] = f["entry/data/motor"][()]
                    seen["crash_ended"] = "end_time" in f["entry"]
                # The live file, read-only, from this process and from another one.
                with h5py.File(live, "r", locking=False) as f:
                    seen["live"] = f["entry/data/det"].shape
                seen["other_process"] = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        "import sys, h5py; "
                        "print(h5py.File(sys.argv[1], 'r')['entry/data/motor'].shape[0])",
                        str(live),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()

    (uid,) = run_engine(plan())
    np.testing.assert_array_equal(seen["crash"], [0, 1, 2])
    assert seen["crash_ended"] is False
    assert seen["live"] == (3,)
    assert seen["other_process"] == "3"
    with h5py.File(writer.path_for(uid), "r") as f:
        np.testing.assert_array_equal(f["entry/data/motor"][()], column(docs, "motor"))
        assert f["entry/data/motor"].shape == (5,)


def test_failing_plan_closes_file_with_events_so_far(run_engine, writer, docs):
    def failing():
        yield from bps.mv(motor, 0)
        yield from bp.scan([det], motor, -1, 1, 5, per_step=explode_after(3))

    def explode_after(n):
        steps = []

        def per_step(detectors, step, pos_cache):
            if len(steps) == n:
                raise RuntimeError("beam dump")
            steps.append(step)
            yield from bps.one_nd_step(detectors, step, pos_cache)

        return per_step

    with pytest.raises(RuntimeError, match="beam dump"):
        run_engine(failing())
    path = writer.last_path
    # Opening it here would fail ("file locking flag values don't match") were it still open.
    with h5py.File(path, "r") as f:
        assert text(f["entry/run_status/exit_status"]) == "fail"
        assert "beam dump" in text(f["entry/run_status/reason"])
        assert "end_time" in f["entry"]
        np.testing.assert_array_equal(f["entry/data/det"][()], column(docs, "det"))
        assert f["entry/data/det"].shape == (3,)


def test_replay_as_event_pages_gives_the_same_data(run_engine, writer, docs, tmp_path):
    (uid,) = run_engine(bp.scan([det], motor, -1, 1, 5))
    replayer = NexusWriter(tmp_path / "replay", filename_template="{plan_name}_{uid}.h5")
    for name, doc in docs:
        if name == "event":
            continue
        replayer(name, doc)
        if name == "descriptor":
            replayer("event_page", pack_event_page(*events(docs)))
    assert replayer.path_for(uid) == tmp_path / "replay" / f"scan_{uid}.h5"
    with (
        h5py.File(writer.path_for(uid), "r") as live,
        h5py.File(replayer.path_for(uid), "r") as replay,
    ):
        for key in ("det", "motor", "motor_setpoint"):
            np.testing.assert_array_equal(
                live["entry/data"][key][()], replay["entry/data"][key][()]
            )
        assert dict(live["entry/data"].attrs) == dict(replay["entry/data"].attrs)

    # Replaying again never overwrites the first file.
    again = NexusWriter(tmp_path / "replay", filename_template="{plan_name}_{uid}.h5")
    for name, doc in docs:
        again(name, doc)
    assert again.path_for(uid) == tmp_path / "replay" / f"scan_{uid}_1.h5"


def test_uncreatable_file_is_reported_with_its_path(run_engine, tmp_path):
    not_a_directory = tmp_path / "occupied"
    not_a_directory.write_text("a file where the directory should be")
    run_engine.subscribe(NexusWriter(not_a_directory))
    with pytest.raises(OSError, match=str(not_a_directory)):
        run_engine(bp.count([det], 1))


def test_beamline_in_filename(run_engine, writer):
    (uid,) = run_engine(bp.count([det], 1), beamline="bl7", scan_id=42)
    path: Path = writer.path_for(uid)
    assert path.name == f"bl7_00042_{uid[:8]}.nxs"
    with h5py.File(path, "r") as f:
        assert text(f["entry/instrument/name"]) == "bl7"


def _derived_run(raw_uid: str, **md):
    """A derived run of raw run ``raw_uid`` as `hutch.reduction`'s runner composes it: an
    I(q) per point of motor x, with its radial axis q given with every point."""
    reduction = {
        "name": "det_iq",
        "kind": "azimuthal",
        "version": "2",
        "parameters": {"detector": "det", "npt": 4},
        "raw_uid": raw_uid,
        "raw_plan_name": "scan",
        "program": "hutch",
        "program_version": hutch.__version__,
    }
    run = compose_run(
        metadata={
            "plan_name": "reduce det_iq",
            "raw_uid": raw_uid,
            "reduction": reduction,
            "detectors": ["det_iq"],
            "motors": ["x"],
            "hints": {"dimensions": [[["x"], "primary"]]},
            **md,
        }
    )
    array = {"dtype": "array", "shape": [4], "dtype_numpy": "<f8", "source": "reduction:det_iq"}
    stream = run.compose_descriptor(
        name="primary",
        data_keys={
            "x": {"dtype": "number", "shape": [], "source": "raw:x", "units": "mm"},
            "iq": {**array, "units": "counts"},
            "q": {**array, "units": "1/angstrom"},
        },
        object_keys={"det_iq": ["iq", "q"], "x": ["x"]},
        hints={"det_iq": {"fields": ["iq", "q"]}, "x": {"fields": ["x"]}},
    )
    return run, stream


def test_derived_run_records_its_reduction_and_shows_q_as_an_axis(run_engine, writer, tmp_path):
    (raw_uid,) = run_engine(bp.scan([det], motor, -1, 1, 3), beamline="bl1", scan_id=7)
    run, stream = _derived_run(raw_uid, beamline="bl1", scan_id=7)
    writer("start", run.start_doc)
    writer("descriptor", stream.descriptor_doc)
    path = writer.last_path
    q = np.linspace(0.5, 2.0, 4)

    def event(i: int, q_row: np.ndarray) -> None:
        writer(
            "event",
            stream.compose_event(
                data={"x": float(i), "iq": np.arange(4.0) * i, "q": q_row},
                timestamps={"x": 0.0, "iq": 0.0, "q": 0.0},
            ),
        )

    for i in range(3):
        event(i, q)
    with h5py.File(path, "r", locking=False) as f:
        data = f["entry/data"]
        assert data.attrs["signal"] == "iq"
        assert list(data.attrs["axes"]) == ["x", "q"]
        assert (data.attrs["x_indices"], data.attrs["q_indices"]) == (0, 1)
        np.testing.assert_array_equal(data["q"][()], q)  # once: the same at every point
        assert data["q"].attrs["units"] == "1/angstrom"
        assert data["iq"].shape == (3, 4)

        process = f["entry/process"]
        assert process.attrs["NX_class"] == "NXprocess"
        assert text(process["program"]) == "hutch azimuthal"
        assert text(process["version"]) == "2"
        assert text(process["raw_uid"]) == raw_uid
        assert json.loads(text(process["parameters/data"])) == {"detector": "det", "npt": 4}
        raw_name = writer.path_for(raw_uid).name
        assert raw_name == f"bl1_00007_{raw_uid[:8]}.nxs"
        assert text(process["raw/file_name"]) == raw_name
        assert process["raw_data"].attrs["signal"] == "det"  # the raw file's /entry/data
        assert data["iq"] == process["iq"]  # the results live in the process
        assert "det_iq" not in f["entry/instrument"]  # a reduction is no instrument
        assert f["entry/instrument/x/value"] == data["x"]

    # A q that changes (the detector moved): a coordinate per point, no longer an axis.
    event(3, q * 1.1)
    writer("stop", run.compose_stop())
    with h5py.File(path, "r") as f:
        data = f["entry/data"]
        assert list(data.attrs["axes"]) == ["x", "."]
        assert "q_indices" not in data.attrs
        assert data["q"] == f["entry/process/q"]
        assert data["q"].shape == (4, 4)
    reads = read_all(path)
    assert reads["entry/data"].scipp.dims == ("x", "dim_1")
    assert reads["entry/data"].scipp.coords["q"].shape == (4, 4)

    # Written elsewhere (a replay): the raw file is named, and not linked where it is not.
    elsewhere = NexusWriter(tmp_path / "elsewhere")
    run, stream = _derived_run(raw_uid, beamline="bl1", scan_id=7)
    for name, doc in [("start", run.start_doc), ("descriptor", stream.descriptor_doc)]:
        elsewhere(name, doc)
    elsewhere.close()
    with h5py.File(elsewhere.last_path, "r") as f:
        assert text(f["entry/process/raw/file_name"]) == f"bl1_00007_{raw_uid[:8]}.nxs"
        assert "raw_data" not in f["entry/process"]
