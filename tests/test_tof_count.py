"""Counting with the TOF instrument's event-mode detector (``hutch.devices.EventDetector``)
and ``plans.tof_count`` over Channel Access, against the simulated detector IOC cabled to
the simulated source and choppers: presets of pulses and charge, the documents and the
event file they refer to, and a chopper losing its phase lock in the middle of an
acquisition. Waits have generous deadlines; nothing asserts on how long a step takes.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import h5py
import numpy as np
import pytest
from bluesky import plan_stubs as bps
from bluesky.run_engine import call_in_bluesky_event_loop
from bluesky.utils import FailedStatus
from event_model import DocumentNames, schema_validators
from nexus_validator import problems
from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider

from hutch import plans
from hutch.callbacks import NexusWriter
from hutch.devices import EventDetector, connect_devices, devices_metadata, make_devices
from hutch.devices.event_detector import ACQUISITIONS_DATASET, PresetMode
from hutch.reduction.external import resource_path
from hutch.simulators import ca_read, ca_write

BAND = (1.0, 2.6)  # Å
CHARGE_PER_PULSE = 2.0 / 2.0 * 1e3 / 14.0  # µC: 2 MW of 2 GeV protons at 14 Hz
DEADLINE = 60.0  # s: a busy 2-core machine is slow, never this slow
EVENTS = "/entry/instrument/bank/events"
BWC = "TOF:ChpSy1:Chop-BWC-101:"


@pytest.fixture(scope="module")
def tof(tof_sim, RE, tof_profile, tmp_path_factory):
    """The TOF profile's devices, the detector writing into a folder of the module's,
    connected in the worker's RunEngine loop, and the choppers phased for the band."""
    paths = StaticPathProvider(UUIDFilenameProvider(), tmp_path_factory.mktemp("tof-files"))
    devices = make_devices(tof_profile, paths)
    call_in_bluesky_event_loop(connect_devices(devices, timeout=30))
    RE(plans.set_wavelength_band(choppers(devices), *BAND))
    return devices


def choppers(devices: dict[str, Any]) -> list[Any]:
    return [devices[name] for name in ("psc", "bwc", "foc")]


@pytest.fixture
def docs(RE) -> Iterator[list[tuple[str, dict]]]:
    """Every document of the RunEngine's runs during the test, as (name, doc)."""
    collected: list[tuple[str, dict]] = []
    token = RE.subscribe(lambda name, doc: collected.append((name, copy.deepcopy(doc))))
    yield collected
    RE.unsubscribe(token)


def of(docs: list[tuple[str, dict]], name: str) -> list[dict]:
    return [doc for n, doc in docs if n == name]


def primary_events(docs: list[tuple[str, dict]]) -> list[dict]:
    primary = {d["uid"] for d in of(docs, "descriptor") if d["name"] == "primary"}
    return [e for e in of(docs, "event") if e["descriptor"] in primary]


def validate(docs: list[tuple[str, dict]]) -> None:
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)


def acquisition_rows(docs: list[tuple[str, dict]]) -> tuple[str, np.ndarray]:
    """The event file the run's StreamResource names and the rows its StreamDatums index,
    in order, checking that they cover the events one row each."""
    (resource,) = of(docs, "stream_resource")
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["data_key"] == "det-acquisition"
    assert resource["parameters"]["dataset"] == ACQUISITIONS_DATASET
    path = resource_path(resource)
    datums = of(docs, "stream_datum")
    events = primary_events(docs)
    assert len(datums) == len(events)
    with h5py.File(path, "r", swmr=True) as f:
        table = f[ACQUISITIONS_DATASET][()]
    rows = []
    for i, datum in enumerate(datums):
        assert datum["stream_resource"] == resource["uid"]
        assert datum["seq_nums"] == {"start": i + 1, "stop": i + 2}
        assert datum["indices"] == {"start": i, "stop": i + 1}
        rows.append(table[i])
    return str(path), np.array(rows)


def test_a_count_of_pulses_refers_to_its_rows_of_the_event_file(
    RE, tof, tof_profile, docs, tmp_path
):
    det = tof["det"]
    writer = NexusWriter(tmp_path)
    token = RE.subscribe(writer)
    try:
        md = {"devices": devices_metadata(tof_profile), "beamline": "tof"}
        RE(
            plans.tof_count(det, pulses=20, num=2, choppers=choppers(tof), source=tof["source"]),
            **md,
        )
    finally:
        RE.unsubscribe(token)
    validate(docs)
    (stop,) = of(docs, "stop")
    assert stop["exit_status"] == "success"
    (start,) = of(docs, "start")
    assert start["plan_name"] == "tof_count"
    assert start["preset"] == {"mode": "Pulses", "value": 20.0}
    (descriptor,) = [d for d in of(docs, "descriptor") if d["name"] == "primary"]
    key = descriptor["data_keys"]["det-acquisition"]
    assert key["shape"] == [6]
    assert key["dtype_numpy"] == "<i8"
    assert key["external"] == "STREAM:"
    assert set(descriptor["hints"]["det"]["fields"]) == {"det-events", "det-monitor_events"}
    config = descriptor["configuration"]["det"]["data"]
    assert config["det-preset_mode"] == "Pulses"
    assert config["det-preset"] == 20.0
    for chopper in ("psc", "bwc", "foc"):
        assert f"{chopper}-speed" in descriptor["data_keys"]
    assert "source-proton_charge" in descriptor["data_keys"]

    path, rows = acquisition_rows(docs)
    events = primary_events(docs)
    assert len(rows) == 2
    with h5py.File(path, "r", swmr=True) as f:
        time_zero = f[EVENTS]["event_time_zero"][()]
        total_events = len(f[EVENTS]["event_id"])
        monitor_events = len(f["/entry/instrument/monitor/events/event_id"])
    for event, row in zip(events, rows, strict=True):
        data = event["data"]
        assert row[1] - row[0] == 20 == data["det-pulses"]
        assert data["det-events"] == row[3] - row[2] > 0
        assert data["det-monitor_events"] == row[5] - row[4] > 0
        # The beam power comes over CA with the source's noise: a charge near nominal.
        assert data["det-charge"] == pytest.approx(20 * CHARGE_PER_PULSE, rel=0.02)
    assert rows[0][1] == rows[1][0] and rows[0][3] == rows[1][2]  # one after the other
    assert len(time_zero) == rows[-1][1] and total_events == rows[-1][3]
    assert monitor_events == rows[-1][5]
    assert np.all(np.diff(time_zero) > 0)

    # The NeXus file's detector links to the rows in the event file.
    with h5py.File(writer.last_path, "r") as f:
        group = f["entry/instrument/det"]
        assert group.attrs["NX_class"] == "NXdetector"
        np.testing.assert_array_equal(group["acquisition"][()], rows)
    assert problems(writer.last_path) == []


def test_a_count_to_a_charge(RE, tof, docs):
    det = tof["det"]
    RE(plans.tof_count(det, charge=300.0, choppers=choppers(tof)))
    validate(docs)
    (stop,) = of(docs, "stop")
    assert stop["exit_status"] == "success"
    (event,) = primary_events(docs)
    data = event["data"]
    # Up to the pulse reaching the preset (the beam power has the source's noise).
    assert 300.0 <= data["det-charge"] < 300.0 + 1.1 * CHARGE_PER_PULSE
    assert data["det-pulses"] == round(data["det-charge"] / CHARGE_PER_PULSE)
    _, (row,) = acquisition_rows(docs)
    assert row[1] - row[0] == data["det-pulses"]
    assert row[3] - row[2] == data["det-events"]
    (descriptor,) = [d for d in of(docs, "descriptor") if d["name"] == "primary"]
    assert descriptor["configuration"]["det"]["data"]["det-preset_mode"] == "Charge"


def test_a_count_of_seconds_sets_a_time_preset(RE, tof, docs):
    RE(plans.tof_count(tof["det"], seconds=0.5))
    validate(docs)
    (event,) = primary_events(docs)
    assert event["data"]["det-pulses"] > 0
    (descriptor,) = [d for d in of(docs, "descriptor") if d["name"] == "primary"]
    config = descriptor["configuration"]["det"]["data"]
    assert (config["det-preset_mode"], config["det-preset"]) == ("Time", 0.5)


def test_a_plain_count_keeps_the_preset_set_on_the_detector(RE, tof, docs):
    """bluesky's own count triggers the detector without preparing it: each trigger is one
    acquisition to the detector's preset."""
    det = tof["det"]
    RE(bps.mv(det.preset_mode, PresetMode.PULSES, det.preset, 5))
    RE(plans.count([det], num=2))
    validate(docs)
    events = primary_events(docs)
    assert [e["data"]["det-pulses"] for e in events] == [5, 5]
    _, rows = acquisition_rows(docs)
    assert list(rows[:, 1] - rows[:, 0]) == [5, 5]


def test_a_trigger_that_would_never_end_is_refused(RE, tof):
    det = tof["det"]
    RE(bps.mv(det.preset_mode, PresetMode.PULSES, det.preset, 0))
    try:
        with pytest.raises(FailedStatus, match="would never end"):
            RE(plans.count([det]))
    finally:
        RE(bps.mv(det.preset, 5))


def when_acquiring(tof_sim, then: Callable[[], None]) -> threading.Thread:
    """A thread that calls ``then`` half a second after the detector starts acquiring."""
    port = tof_sim.iocs["detector"]["port"]

    def watch() -> None:
        deadline = time.monotonic() + DEADLINE
        while ca_read("TOF:DET:Acquire_RBV", port, timeout=5.0) != "Acquire":
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        time.sleep(0.5)
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_lock_loss_suspends_the_count_and_the_acquisition_keeps_its_preset(
    RE, tof, tof_sim, docs
):
    """The run is suspended while the band-width chopper is out of phase and resumes when
    it locks again; the acquisition in flight is not restarted: it ends with its preset of
    good pulses, the vetoed ones counted apart, and the file holds each pulse once."""
    det = tof["det"]
    knock = when_acquiring(tof_sim, lambda: ca_write(BWC + "SIM:LOCKLOSS", 1.5, tof_sim.port))
    RE.record_interruptions = True
    try:
        RE(plans.tof_count(det, pulses=40, choppers=choppers(tof)))
    finally:
        RE.record_interruptions = False
    knock.join(DEADLINE)
    validate(docs)
    (stop,) = of(docs, "stop")
    assert stop["exit_status"] == "success"
    interruptions = [d["uid"] for d in of(docs, "descriptor") if d["name"] == "interruptions"]
    recorded = [
        e["data"]["interruption"] for e in of(docs, "event") if e["descriptor"] in interruptions
    ]
    assert any("bwc" in str(what) for what in recorded), recorded  # the suspension
    (event,) = primary_events(docs)
    data = event["data"]
    assert data["det-pulses"] == 40
    assert data["det-vetoed_pulses"] > 0
    path, (row,) = acquisition_rows(docs)
    assert row[1] - row[0] == 40
    assert row[3] - row[2] == data["det-events"]
    with h5py.File(path, "r", swmr=True) as f:
        time_zero = f[EVENTS]["event_time_zero"][()]
        index = f[EVENTS]["event_index"][()]
        total = len(f[EVENTS]["event_id"])
        table = f[ACQUISITIONS_DATASET][()]
    assert len(table) == 1  # one acquisition: not re-triggered
    assert np.all(np.diff(time_zero) > 0)  # no pulse twice
    # Every pulse and event of the file belongs to an acquisition: nothing orphaned.
    assert len(time_zero) == sum(r[1] - r[0] for r in table)
    assert total == sum(r[3] - r[2] for r in table)
    assert np.all(np.diff(index) >= 0) and index[0] == 0 and index[-1] <= total


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"give one preset, seconds, pulses or charge \(µC\), not none"),
        ({"seconds": 1.0, "pulses": 3}, r"not seconds and pulses"),
        ({"pulses": 2.5}, r"pulses must be a whole number of at least 1"),
        ({"charge": -1.0}, r"charge must be positive"),
        ({"pulses": 3, "num": 0}, r"num must be a whole number of at least 1"),
        ({"pulses": 3, "choppers": "bwc"}, r"choppers must be a list of disk choppers"),
    ],
    ids=["no-preset", "two-presets", "fractional-pulses", "negative-charge", "no-num", "choppers"],
)
def test_bad_arguments_are_refused_when_the_plan_is_called(tof, kwargs, message):
    with pytest.raises(plans.ScanArgumentError, match=message):
        plans.tof_count(tof["det"], **kwargs)


def test_only_an_event_detector_is_counted(RE, tof):
    with pytest.raises(plans.ScanArgumentError, match="is not an event-mode detector"):
        RE(plans.tof_count(tof["source"], pulses=3))


def test_the_detector_is_an_nxdetector_with_its_counts_hinted(tof, tof_profile):
    det = tof["det"]
    assert isinstance(det, EventDetector)
    assert devices_metadata(tof_profile)["det"]["nexus"]["class"] == "NXdetector"
    assert det.hints == {"fields": ["det-events", "det-monitor_events"]}
    assert call_in_bluesky_event_loop(det.preset_mode.get_value()) in set(PresetMode)
