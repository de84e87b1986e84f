"""The step-scan vertical slice on the simulated beamline: documents, NeXus, catalogue, align."""

import json
import threading
import time

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from bluesky.run_engine import call_in_bluesky_event_loop
from event_model import DocumentNames, schema_validators

from hutch import plans
from hutch.catalog import documents_of
from hutch.devices import DeviceConnectionError, connect_devices, make_devices
from hutch.profile import load_profile
from hutch.session import detector_paths


def _collect(RE):
    docs = []
    token = RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs, token


def _primary_events(docs):
    """The primary stream's events (the profile's baseline stream has its own)."""
    primary = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
    return [d for n, d in docs if n == "event" and d["descriptor"] in primary]


def test_step_scan_documents_nexus_and_catalogue(session):
    RE, d = session.RE, session.devices
    RE(bps.mv(d["det"].preset_time, 0.05))
    docs, token = _collect(RE)
    try:
        result = RE(plans.scan([d["det"]], d["sample_x"], 1.0, 4.0, 13, md={"sample": "Si"}))
    finally:
        RE.unsubscribe(token)
    (uid,) = result.run_start_uids
    assert result.exit_status == "success"

    # Every document validates against the event-model schemas.
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)
    start = next(doc for name, doc in docs if name == "start")
    assert start["facility"] == "HUTCH" and start["beamline"] == "demo"
    assert start["sample"] == "Si" and start["plan_name"] == "scan"
    events = _primary_events(docs)
    assert len(events) == 13
    positions = np.array([e["data"]["sample_x"] for e in events])
    diode = np.array([e["data"]["det-diode"] for e in events])
    i0 = np.array([e["data"]["det-I0"] for e in events])
    # Positions read back are the targets: the motor record completes the put after the move.
    np.testing.assert_allclose(positions, np.linspace(1.0, 4.0, 13), atol=1e-3)
    assert diode.argmax() in range(4, 9)  # the peak is at 2.5 mm
    assert (i0 > 0).all()

    # The NeXus file holds the scanned positions and counts.
    record = session.record(uid)
    assert record.events == {"primary": 13, "baseline": 2}
    with h5py.File(record.nexus, "r") as f:
        assert f["entry"].attrs["NX_class"] == "NXentry"
        assert f["entry/entry_identifier"][()].decode() == uid
        assert f["entry/instrument"].attrs["NX_class"] == "NXinstrument"
        data = f["entry/data"]
        assert data.attrs["NX_class"] == "NXdata"
        assert data.attrs["signal"] == "det_diode"  # not the I0 monitor
        assert list(np.atleast_1d(data.attrs["axes"])) == ["sample_x"]
        np.testing.assert_allclose(data["sample_x"][()], positions)
        np.testing.assert_array_equal(data["det_diode"][()], diode)
        np.testing.assert_array_equal(data["det_I0"][()], i0)
        # NeXus base classes: the motor is a positioner with its target and soft limits, the
        # I0 channel a beam monitor, the ring current the source.
        x = f["entry/instrument/sample_x"]
        assert x.attrs["NX_class"] == "NXpositioner"
        assert x["value"] == data["sample_x"]
        np.testing.assert_allclose(x["target_value"][()], np.linspace(1.0, 4.0, 13))
        assert (x["soft_limit_min"][()], x["soft_limit_max"][()]) == (-10.0, 10.0)
        assert x["soft_limit_min"].attrs["units"] == "mm"
        assert x["velocity"].attrs["units"] == "mm/s"
        assert f["entry/monitor"].attrs["NX_class"] == "NXmonitor"
        np.testing.assert_array_equal(f["entry/monitor/data"][()], i0)
        assert f["entry/instrument/ring_current"].attrs["NX_class"] == "NXsource"
        assert f["entry/instrument/slit_gap"].attrs["NX_class"] == "NXpositioner"
        assert f["entry/instrument/slit_gap/value"].shape == (2,)  # from the baseline
    assert record.png.exists() and record.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The run read back from the catalogue equals the documents.
    run = session.runs_container[uid]
    # Compare as JSON: the RunEngine emits tuples where tiled gives back lists.
    assert dict(run.metadata["start"]) == json.loads(json.dumps(start))
    assert run.metadata["stop"]["exit_status"] == "success"
    primary = run["primary"].read()
    np.testing.assert_allclose(np.asarray(primary["sample_x"]), positions)
    np.testing.assert_array_equal(np.asarray(primary["det-diode"]), diode)
    replayed = list(documents_of(run))
    assert [n for n, _ in replayed if n in ("start", "stop")] == ["start", "stop"]
    primary_uids = {d["uid"] for n, d in replayed if n == "descriptor" and d["name"] == "primary"}
    replayed_events = [
        row
        for name, doc in replayed
        if name in ("event", "event_page") and doc["descriptor"] in primary_uids
        for row in np.atleast_1d(doc["data"]["det-diode"])
    ]
    np.testing.assert_array_equal(replayed_events, diode)


def test_align_lands_within_two_percent_of_true_centre(session):
    RE, d = session.RE, session.devices
    true_center = session.profile.simulation.peak.center
    RE(bps.mv(d["det"].preset_time, 0.05, d["sample_x"], -3.0))
    result = RE(plans.align(d["sample_x"], d["det"], 0.5, 4.5, 41, field="det-diode"))
    assert result.exit_status == "success"
    aligned = result.plan_result
    assert abs(aligned.center - true_center) <= 0.02 * abs(true_center)
    # The motor was left at the fitted centre, read back over CA.
    position = RE(bps.rd(d["sample_x"])).plan_result
    assert position == pytest.approx(aligned.center, abs=1e-3)
    assert session.record(aligned.uid).plan_name == "align"


def test_counts_scale_with_beam_current(session, sim):
    from hutch.simulators import beam_dump, beam_restore

    RE, d = session.RE, session.devices
    det, current = d["det"], d["ring_current"]
    RE(bps.mv(det.preset_time, 0.2, d["sample_x"], 2.5))

    def counts():
        RE(bps.trigger(det, wait=True))
        return RE(bps.rd(det.diode)).plan_result, RE(bps.rd(current)).plan_result

    full, full_current = counts()
    assert full_current > 250
    # Without the beam-dump suspender: here we want to count with the beam down.
    for suspender in session.suspenders:
        RE.remove_suspender(suspender)
    beam_dump(session.profile, sim.port)
    try:
        deadline = time.monotonic() + 20
        while RE(bps.rd(current)).plan_result > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        dumped, dumped_current = counts()
    finally:
        beam_restore(session.profile, sim.port)
        for suspender in session.suspenders:
            RE.install_suspender(suspender)
    assert dumped_current < 1
    assert dumped < 0.05 * full
    deadline = time.monotonic() + 20
    while RE(bps.rd(current)).plan_result < 250 and time.monotonic() < deadline:
        time.sleep(0.2)
    restored, _ = counts()
    assert restored > 0.5 * full


def test_beam_dump_suspends_the_run_and_it_resumes(session, sim):
    from hutch.simulators import beam_dump, beam_restore

    RE, d = session.RE, session.devices
    RE(bps.mv(d["det"].preset_time, 0.1))
    spec = session.profile.suspenders[0]
    dumped_for = 3.0

    def dump_then_restore():
        time.sleep(1.0)
        beam_dump(session.profile, sim.port)
        time.sleep(dumped_for)
        beam_restore(session.profile, sim.port)

    docs, token = _collect(RE)
    dumper = threading.Thread(target=dump_then_restore)
    dumper.start()
    try:
        result = RE(plans.count([d["det"], d["ring_current"]], num=8, delay=0.4))
    finally:
        dumper.join()
        RE.unsubscribe(token)
    assert result.exit_status == "success"
    events = _primary_events(docs)
    # On resume the RunEngine rewinds to the last checkpoint: the point in progress (or just
    # taken) when the beam went is taken again, so there may be one event more than points.
    assert len(events) in (8, 9)
    # No point was taken without beam, and the run waited out the dump and the settle time.
    assert min(e["data"]["ring_current-current"] for e in events) > spec.below
    gaps = np.diff([e["time"] for e in events])
    assert gaps.max() > dumped_for
    # The NeXus file holds one row per point: a point taken again replaced its first take.
    (uid,) = result.run_start_uids
    record = session.record(uid)
    assert record.events == {"primary": 8, "baseline": 2}
    with h5py.File(record.nexus, "r") as f:
        current = f["entry/instrument/ring_current/current"][()]
    assert current.shape == (8,) and current.min() > spec.below


def test_missing_pvs_fail_fast_and_are_all_listed(session, tmp_path):
    text = session.profile.path.read_text() + (
        '\n[[devices]]\nname = "ghost"\nclass = "ophyd_async.epics.motor.Motor"\n'
        'prefix = "NOWHERE:M1"\n'
        '\n[[devices]]\nname = "classic_ghost"\nclass = "ophyd.EpicsMotor"\n'
        'prefix = "NOWHERE:M2"\n'
    )
    path = tmp_path / "ghosts.toml"
    path.write_text(text)
    devices = make_devices(load_profile(path), detector_paths(session.settings))
    started = time.monotonic()
    with pytest.raises(DeviceConnectionError) as info:
        call_in_bluesky_event_loop(connect_devices(devices, timeout=3.0))
    assert time.monotonic() - started < 20
    assert set(info.value.failures) == {"ghost", "classic_ghost"}
    failures = info.value.failures
    assert {"NOWHERE:M1.VAL", "NOWHERE:M1.RBV"} <= set(failures["ghost"])
    assert {"NOWHERE:M2.VAL", "NOWHERE:M2.DMOV"} <= set(failures["classic_ghost"])
    # A device missing whole is one line: its PVs' prefix and count.
    message = str(info.value)
    assert f"ghost: {len(failures['ghost'])} PVs NOWHERE:M1.*" in message
    assert f"classic_ghost: {len(failures['classic_ghost'])} PVs NOWHERE:M2.*" in message
    assert "DEMO:" not in message  # the devices the simulator serves connected
