"""hutch's NeXus files pass the NeXus validators: punx with no errors or warnings, nxvalidate's
nxinspect with no errors.

Step scans, counts and grid scans come from the simulated demo beamline through a full session
(baseline stream, monitors, source, slit, positioners); externally stored detector data come
from a StreamResource run, as ophyd-async detectors emit them.
"""

from __future__ import annotations

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from event_model import compose_run
from nexus_validator import nxinspect_errors, problems

from hutch import plans
from hutch.callbacks import NexusWriter


@pytest.mark.parametrize(
    "plan",
    [
        lambda d: plans.count([d["det"], d["ring_current"]], num=3),
        lambda d: plans.scan([d["det"]], d["sample_x"], 1.0, 4.0, 7),
        lambda d: plans.grid_scan(
            [d["det"]], d["sample_y"], -1, 1, 2, d["sample_x"], 2, 3, 3, snake_axes=True
        ),
        lambda d: plans.scan([d["det"]], d["slit_gap"], 0.5, 1.5, 3),
        lambda d: plans.step_scan([d["det1"]], d["sample_x"], -1.0, 1.0, 3, exposure=0.01),
        lambda d: plans.fly_scan(
            [d["det1"]], d["sample_x"], -1.0, 1.0, 11, panda=d["panda1"], velocity=2.0
        ),
        lambda d: plans.snake_fly_scan(
            [d["det1"]],
            d["sample_y"],
            -0.5,
            0.5,
            2,
            d["sample_x"],
            -0.4,
            0.4,
            5,
            panda=d["panda1"],
            velocity=2.0,
        ),
    ],
    ids=["count", "scan", "grid_scan", "slit_scan", "area_step_scan", "fly_scan", "snake_fly"],
)
def test_demo_beamline_files_validate(session, plan):
    RE, devices = session.RE, session.devices
    sample = {"name": "Si", "temperature": {"value": 295, "units": "K"}}
    result = RE(plan(devices), sample=sample)
    assert result.exit_status == "success"
    (uid,) = result.run_start_uids
    assert problems(session.record(uid).nexus) == []


def test_failed_run_file_validates(session):
    RE, d = session.RE, session.devices

    def failing():
        yield from bps.open_run(md={"sample": "Si"})
        yield from bps.trigger_and_read([d["det"], d["sample_x"]])
        raise RuntimeError("sample fell off")

    with pytest.raises(RuntimeError, match="sample fell off"):
        RE(failing())
    record = session.runs[-1]
    assert record.exit_status == "fail"
    with h5py.File(record.nexus, "r") as f:
        assert f["entry/run_status/exit_status"].asstr()[()] == "fail"
        assert f["entry/data/det_diode"].shape == (1,)
    assert problems(record.nexus) == []


def test_stream_resource_data_are_external_links(tmp_path):
    """Detector frames written by the detector are linked, not copied, and resolve."""
    frames = np.arange(5 * 4 * 3, dtype=np.uint16).reshape(5, 4, 3)
    detector_file = tmp_path / "detector" / "cam_000.h5"
    detector_file.parent.mkdir()
    with h5py.File(detector_file, "w") as f:
        f["entry/data/data"] = frames

    run = compose_run(metadata={"plan_name": "fly", "detectors": ["cam"], "scan_id": 1})
    key = "cam-image"
    descriptor = run.compose_descriptor(
        name="primary",
        data_keys={
            key: {
                "source": "ca://CAM:HDF1:FullFileName_RBV",
                "dtype": "array",
                "dtype_numpy": "<u2",
                "shape": [4, 3],
                "external": "STREAM:",
            }
        },
        object_keys={"cam": [key]},
        hints={"cam": {"fields": [key]}},
    )
    resource = run.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=f"file://localhost{detector_file}",
        data_key=key,
        parameters={"dataset": "/entry/data/data", "chunk_shape": [1, 4, 3]},
    )
    datum = resource.compose_stream_datum(
        indices={"start": 0, "stop": 5}, descriptor=descriptor.descriptor_doc
    )
    writer = NexusWriter(tmp_path / "nexus")
    for name, doc in [
        ("start", run.start_doc),
        ("descriptor", descriptor.descriptor_doc),
        ("stream_resource", resource.stream_resource_doc),
        ("stream_datum", datum),
        ("stop", run.compose_stop()),
    ]:
        writer(name, doc)

    path = writer.last_path
    with h5py.File(path, "r") as f:
        link = f["entry/instrument/cam"].get("image", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert link.path == "/entry/data/data"
        assert link.filename == "../detector/cam_000.h5"  # relative: they move together
        np.testing.assert_array_equal(f["entry/instrument/cam/image"][()], frames)
        np.testing.assert_array_equal(f["entry/data/cam_image"][()], frames)
        assert f["entry/data"].attrs["signal"] == "cam_image"
    assert nxinspect_errors(path) == []  # punx 0.3.5 cannot follow external links
