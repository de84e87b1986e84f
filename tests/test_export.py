"""``hutch export nexus``: a run replayed from the catalogue gives the live NeXus file again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.preprocessors import SupplementalData
from bluesky.run_engine import get_bluesky_event_loop
from event_model import pack_event_page
from ophyd.sim import det, motor, motor1
from sessions import write_run

from hutch import plans
from hutch.callbacks import NexusWriter
from hutch.catalog import make_tiled_writer, runs_container
from hutch.export import ExportError, export_nexus, nexus_differences, write_nexus


def assert_same_nexus(live: Path, exported: Path) -> None:
    differences = nexus_differences(live, exported)
    assert not differences, f"{live} vs {exported}:\n" + "\n".join(differences)


def test_comparison_sees_differences(tmp_path):
    """The helper is not vacuous: it reports a changed value, attribute, shape and path."""
    base = tmp_path / "a.nxs"
    with h5py.File(base, "w") as f:
        f.attrs.update(NX_class="NXroot", file_name=str(base))
        f.create_group("entry").attrs["NX_class"] = "NXentry"
        f["entry/x"] = np.array([1.0, np.nan])
        f["entry/link"] = h5py.SoftLink("/entry/x")
    assert nexus_differences(base, base) == []

    def variant(name: str, change) -> list[str]:
        path = tmp_path / name
        path.write_bytes(base.read_bytes())
        with h5py.File(path, "r+") as f:
            f.attrs["file_name"] = str(path)  # not a difference
            change(f)
        return nexus_differences(base, path)

    def value(f):
        f["entry/x"][1] = 2.0

    def attribute(f):
        f["entry"].attrs["NX_class"] = "NXcollection"

    def shape(f):
        del f["entry/x"]
        f["entry/x"] = np.array([1.0, np.nan, 3.0])

    def path(f):
        f["entry/y"] = 1

    def dtype(f):
        del f["entry/x"]
        f["entry/x"] = np.array([1.0, np.nan], dtype="float32")

    assert variant("same.nxs", lambda f: None) == []
    (difference,) = variant("value.nxs", value)
    assert difference.startswith("/entry/x: values differ")
    assert variant("attribute.nxs", attribute) == [
        "/entry@NX_class: 'NXentry' live, 'NXcollection' exported"
    ]
    assert any("shape" in d for d in variant("shape.nxs", shape))
    assert variant("path.nxs", path) == ["/entry/y: only in the exported file"]
    assert any("dtype" in d for d in variant("dtype.nxs", dtype))


def test_exported_scan_and_count_equal_the_live_files(session, tmp_path):
    RE, d = session.RE, session.devices
    RE(bps.mv(d["det"].preset_time, 0.05))
    scan = RE(plans.scan([d["det"]], d["sample_x"], 1.0, 3.0, 7, md={"sample": "Si"}))
    count = RE(plans.count([d["det"], d["ring_current"]], num=4))
    (scan_uid,) = scan.run_start_uids
    (count_uid,) = count.run_start_uids

    # By unique uid prefix, and by scan id.
    exported_scan = export_nexus(session.runs_container, scan_uid[:8], tmp_path)
    scan_id = session.record(count_uid).scan_id
    exported_count = export_nexus(session.runs_container, scan_id, tmp_path)

    for uid, exported in ((scan_uid, exported_scan), (count_uid, exported_count)):
        live = session.record(uid).nexus
        assert exported.parent == tmp_path and exported.name == live.name
        assert_same_nexus(live, exported)
        with h5py.File(exported, "r") as f:
            assert f["entry/entry_identifier"][()].decode() == uid
            assert f["entry/run_status/exit_status"][()].decode() == "success"

    # Exporting again never overwrites the first export.
    again = export_nexus(session.runs_container, scan_uid, tmp_path)
    assert again == tmp_path / f"{exported_scan.stem}_1.nxs"
    assert_same_nexus(exported_scan, again)


def test_documents_in_catalogue_order_and_types_give_the_live_file(tmp_path):
    """Events before their descriptor, pages and single events, JSON types: the same file."""
    RE = RunEngine({}, loop=get_bluesky_event_loop())
    RE.preprocessors.append(SupplementalData(baseline=[motor1]))
    live = NexusWriter(tmp_path / "live")
    docs: list[tuple[str, dict]] = []
    RE.subscribe(live)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(bp.scan([det], motor, -1, 1, 5), sample={"name": "Si", "form": ("powder",)})

    # As a catalogue gives them back: tuples are lists, numpy values plain numbers...
    docs = json.loads(json.dumps(docs, default=lambda obj: obj.tolist()))
    by_name = {name: [d for n, d in docs if n == name] for name in dict(docs)}
    (start,), (stop,) = by_name["start"], by_name["stop"]
    replay = [("start", start)]
    for descriptor in by_name["descriptor"]:
        events = [e for e in by_name["event"] if e["descriptor"] == descriptor["uid"]]
        # ...each stream's events before its descriptor, the first two as a page.
        replay.append(("event_page", pack_event_page(*events[:2])))
        replay += [("event", e) for e in events[2:]]
        replay.append(("descriptor", descriptor))
    replay.append(("stop", stop))

    exported = write_nexus(replay, tmp_path / "replay")
    assert_same_nexus(live.path_for(uid), exported)
    with pytest.raises(ExportError, match="no start document"):
        write_nexus(replay[1:], tmp_path / "replay")


@pytest.fixture
def side_container(session):
    """A container of the session's catalogue for runs made here, not the beamline's."""
    return runs_container(session.catalog, "export-tests")


def test_run_that_never_closed_exports_as_not_closed(side_container, tmp_path):
    """No stop document: every event so far is exported and the file stays not closed,
    like the live file of a session that died; with a baseline stream (two descriptors)."""
    RE = RunEngine({}, loop=get_bluesky_event_loop())
    RE.preprocessors.append(SupplementalData(baseline=[motor1]))
    live = NexusWriter(tmp_path / "live")
    catalogued = make_tiled_writer(side_container, batch_size=1)  # every event stored at once

    def without_stop(name, doc):
        if name != "stop":
            live(name, doc)
            catalogued(name, doc)

    RE.subscribe(without_stop)
    (uid,) = RE(bp.scan([det], motor, -1, 1, 5), sample="none")
    live.close()

    exported = export_nexus(side_container, uid, tmp_path / "exported")
    assert_same_nexus(live.path_for(uid), exported)
    with h5py.File(exported, "r") as f:
        assert "end_time" not in f["entry"] and "run_status" not in f["entry"]
        data = f["entry/data"]
        assert data[data.attrs["signal"]].shape == (5,)
        # The baseline, read at the start and at the end (before the stop that never came).
        assert f["entry/baseline/motor1"].shape == (2,)


def test_run_keys_and_unknown_runs(side_container, tmp_path):
    """uid prefixes of digits only are found; an unknown run names itself and the catalogue."""
    uid = "31415926-5358-4979-8238-462643383279"  # its 8-character prefix reads as a number
    write_run(side_container, uid, x=1.5, scan_id=7, beamline="bl0")
    for key in (uid, "31415926", "-1", -1):
        path = export_nexus(side_container, key, tmp_path / "found")
        assert path.name.startswith(f"bl0_00007_{uid[:8]}")

    uri = side_container.uri
    for key, words in (
        ("deadbeef", "no run 'deadbeef'"),
        (987, "no scan id 987"),
        ("987654", "no scan id or uid prefix 987654"),
        ("-1000", "no run -1000"),
        ("dead", "too short"),
        (0, "no run 0"),
    ):
        with pytest.raises(ExportError) as info:
            export_nexus(side_container, key, tmp_path / "lost")
        assert words in str(info.value) and uri in str(info.value)
    assert not (tmp_path / "lost").exists()


def test_cli_exports_the_newest_run(session, tmp_path):
    """``hutch export nexus -1`` against the session's catalogue, as a user runs it."""
    RE, d = session.RE, session.devices
    (uid,) = RE(plans.count([d["det"]], num=2)).run_start_uids
    env = {
        **os.environ,
        "HUTCH_DATA_DIR": str(session.settings.data_dir),
        "HUTCH_CATALOG_PORT": str(session.settings.catalog_port),
    }

    def hutch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "hutch.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    proc = hutch("export", "nexus", "-1", "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.parent == tmp_path and uid[:8] in path.name
    assert_same_nexus(session.record(uid).nexus, path)

    # Without -o: beside the live files, never in their place.
    proc = hutch("export", "nexus", uid)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.parent == session.settings.nexus_dir / "exported"
    assert path != session.record(uid).nexus

    proc = hutch("export", "nexus", "fedcba98")
    assert proc.returncode == 1
    assert "hutch export: error: no run 'fedcba98' in the catalogue" in proc.stderr
    assert f"{session.catalog.uri}/api/v1/metadata/demo" in proc.stderr
    assert proc.stdout == ""
