"""The simulated event-mode neutron detector (``simulators/event_detector.py``) over real
Channel Access: the TOF profile's two IOCs (source and choppers; the detector, cabled to
them by CA links) as ``hutch sim up --profile tof`` runs them, the cascade phased for the
demo band. Clients are caproto's (safe beside the worker's libca). Every wait polls with a
generous deadline: nothing asserts on how long a step takes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scippnexus as snx

from hutch import simulators
from hutch.ca import ca_client_env
from hutch.config import Settings
from hutch.profile import Profile, load_profile
from hutch.simulators import build_ioc, ca_read, ca_write, simulator_for
from hutch.simulators.event_acquisition import ACQUISITION_COLUMNS, preset_cut
from hutch.simulators.event_detector import EventDetectorSim
from hutch.simulators.links import (
    LocalChopper,
    LocalSource,
    RemoteChopper,
    RemoteSource,
    Timeline,
)
from hutch.simulators.neutrons import DetectorBank
from hutch.tof import (
    ESS_PULSE_LENGTH,
    H_OVER_MN,
    band_delay,
    pulse_time_ns,
    unwrap_time_of_flight,
    wavelength_from_tof,
)

BAND = (1.0, 2.6)  # Å
SPEEDS = {"psc": 112.0, "bwc": 14.0, "foc": 14.0}
DET = "TOF:DET:"
RATE = 14.0
CHARGE = 2.0 / 2.0 * 1e3 / RATE  # µC per pulse at 2 MW of 2 GeV protons
DEADLINE = 30.0  # s: a busy 2-core machine is slow, never this slow
BANK = "/entry/instrument/bank"


@dataclass
class Beamline:
    profile: Profile
    main: int  # the source's and choppers' IOC's port
    det: int  # the detector IOC's port
    files: Path

    def read(self, pv: str) -> Any:
        return ca_read(DET + pv, self.det)

    def write(self, pv: str, value: Any, timeout: float = 5.0) -> None:
        ca_write(DET + pv, value, self.det, timeout=timeout)

    def text(self, pv: str) -> str:
        return bytes(np.asarray(self.read(pv), dtype=np.uint8)).rstrip(b"\0").decode()

    def main_write(self, device: str, suffix: str, value: Any) -> None:
        ca_write(self.profile.device(device).prefix + suffix, value, self.main)

    def phased(self) -> None:
        """Wait until every chopper is phase-locked."""
        prefixes = [self.profile.device(name).prefix for name in SPEEDS]
        wait_until(
            lambda: all(ca_read(p + "InPhs_R", self.main) == "Yes" for p in prefixes),
            "the choppers to lock",
        )

    def acquire(self, mode: str, preset: float) -> None:
        """One acquisition, to its end (the put-callback)."""
        self.write("PresetMode", mode)
        self.write("Preset", preset)
        self.write("Acquire", 1, timeout=60.0)
        assert self.read("Acquire_RBV") == "Done"

    def capture(self, name: str) -> Path:
        self.write("FilePath", str(self.files))
        self.write("FileName", name)
        self.write("Capture", 1)
        assert self.read("Capture_RBV") == "Capture"
        return Path(self.text("FullFileName_RBV"))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def beamline(free_port, tmp_path_factory) -> Iterator[Beamline]:
    """The TOF profile's simulator (main and detector IOCs), the cascade phased for BAND."""
    profile = load_profile("tof")
    data = tmp_path_factory.mktemp("event-detector")
    settings = Settings(data_dir=data)
    state = simulators.start(profile, free_port(), settings, timeout=60)
    try:
        line = Beamline(profile, state.port, state.iocs["detector"]["port"], data / "files")
        for name, speed in SPEEDS.items():
            options = profile.device(name).options
            delay = band_delay(options["distance"], speed, options["slit_edges"][0], *BAND)
            line.main_write(name, "Spd_S", speed)
            line.main_write(name, "ChopDly-S", delay)
            line.main_write(name, "C_Execute", "Start")
        line.phased()
        # The first acquisition waits for the instrument (pyFAI's import) and the neutron
        # pools (the IOC builds them once the choppers lock): its first batch is large.
        line.acquire("Pulses", 1)
        yield line
    finally:
        simulators.stop(profile.name, settings)


@contextlib.contextmanager
def acquiring(
    line: Beamline, mode: str, preset: float, monkeypatch: pytest.MonkeyPatch
) -> Iterator[threading.Event]:
    """An acquisition running while the block runs (its put-callback, through caproto's
    threading client: the sync client's calls must not overlap); waits for its end after."""
    from caproto.threading.client import Context

    line.write("PresetMode", mode)
    line.write("Preset", preset)
    for key, value in ca_client_env(line.det).items():  # read by the context's searches
        monkeypatch.setenv(key, value)
    context = Context()
    try:
        (pv,) = context.get_pvs(DET + "Acquire", timeout=5.0)
        pv.wait_for_connection(timeout=10.0)
        done = threading.Event()
        pv.write([1], wait=False, callback=lambda response: done.set())
        wait_until(lambda: line.read("Acquire_RBV") == "Acquire", "the acquisition to start")
        yield done
        assert done.wait(60.0), "the acquisition did not end"
    finally:
        context.disconnect()
    assert line.read("Acquire_RBV") == "Done"


def open_file(path: Path) -> h5py.File:
    """``path`` as a SWMR reader (the IOC may still be writing it)."""
    return h5py.File(path, "r", libver="latest", swmr=True)


def pulse_numbers(event_time_zero: np.ndarray) -> np.ndarray:
    numbers = np.rint(np.asarray(event_time_zero) * RATE / 1e9).astype(np.int64)
    assert np.array_equal(pulse_time_ns(numbers, RATE), event_time_zero)
    return numbers


def rows(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The file's acquisitions and the detector's and monitor's event data."""
    with open_file(path) as f:
        table = f["entry/acquisitions/rows"][()]
        assert list(f["entry/acquisitions/rows"].attrs["columns"]) == list(ACQUISITION_COLUMNS)
        data = {
            f"{where}/{name}": f[f"/entry/instrument/{where}/events/{name}"][()]
            for where in ("bank", "monitor")
            for name in ("event_id", "event_time_offset", "event_time_zero", "event_index")
        }
        data["l2"] = f[f"{BANK}/distance"][()]
    return table, data


# -- without Channel Access ---------------------------------------------------------------------


def test_the_detector_is_cabled_to_choppers_and_source() -> None:
    from hutch.devices.event_detector import EventDetector

    profile = load_profile("tof")
    wiring = build_ioc(profile, "detector")
    det = wiring.groups["det"]
    assert simulator_for(EventDetector) is not None and isinstance(det, EventDetectorSim)
    # Another IOC: CA links, started with the server; geometry from the choppers' options.
    assert [c.name for c in det.choppers] == ["psc", "bwc", "foc"]
    assert all(isinstance(c.feed, RemoteChopper) for c in det.choppers)
    assert isinstance(det.source.feed, RemoteSource)
    assert len(wiring.tasks) == 4
    psc = det.choppers[0]
    assert (psc.distance, psc.slit_edges, psc.slit_height) == (6.5, ((0.0, 4.0),), 0.06)
    assert det.rate == 14.0 and det.bank.size == 4000
    # The same IOC: the simulators themselves.
    local = profile.model_copy(
        update={
            "devices": [
                spec.model_copy(update={"ioc": "main"}) if spec.name == "det" else spec
                for spec in profile.devices
            ]
        }
    )
    det = build_ioc(local).groups["det"]
    assert all(isinstance(c.feed, LocalChopper) for c in det.choppers)
    assert isinstance(det.source.feed, LocalSource)


def test_sim_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"event detector X:.*unknown sim option.*colums"):
        EventDetectorSim("X:", sim={"colums": 4})
    with pytest.raises(ValueError, match="monitor_distance"):
        EventDetectorSim("X:", sim={"monitor_distance": 80.0})
    assert EventDetectorSim("X:", sim={"rows": 2, "columns": 3}).bank.size == 6


def test_a_timeline_gives_the_value_each_time_saw() -> None:
    line = Timeline(0.0, keep=10.0)
    line.record(100.0, 1.0)
    line.record(105.0, 0.0)
    line.record(104.0, 2.0)  # late news counts from the last record on, never before
    assert line.at(np.array([99.0, 100.0, 104.9, 105.0, 200.0])).tolist() == [0, 1, 1, 2, 2]
    line.record(130.0, 3.0)  # what is older than 10 s before the newest goes
    assert line.at(np.array([119.0, 121.0, 130.0])).tolist() == [2, 2, 3]
    assert line.latest == 3.0


def test_presets_count_only_counted_pulses() -> None:
    counted = np.array([True, False, True, True, False, True])
    charges = np.where(counted, 70.0, 0.0)
    assert preset_cut("Pulses", 3, counted, charges, 0, 0.0) == 4
    assert preset_cut("Pulses", 3, counted, charges, 2, 140.0) == 1
    assert preset_cut("Pulses", 9, counted, charges, 0, 0.0) is None
    assert preset_cut("Charge", 200, counted, charges, 0, 0.0) == 4  # 70, 140, 210
    assert preset_cut("Charge", 210, counted, charges, 0, 0.0) == 4
    assert preset_cut("Time", 1, counted, charges, 0, 0.0) is None
    assert preset_cut("Pulses", 0, counted, charges, 0, 0.0) is None  # until stopped


# -- over Channel Access ------------------------------------------------------------------------


def test_acquisitions_append_their_pulses_and_rows(beamline) -> None:
    line = beamline
    line.phased()
    path = line.capture("appended")
    assert path == line.files / "appended.h5"
    assert line.read("NumAcquisitions_RBV") == 0

    line.acquire("Pulses", 20)
    assert (line.read("Pulses_RBV"), line.read("VetoedPulses_RBV")) == (20, 0)
    events, monitor = int(line.read("Events_RBV")), int(line.read("MonitorEvents_RBV"))
    assert events > 1000 and monitor > 1000
    assert line.read("Charge_RBV") == pytest.approx(20 * CHARGE, rel=0.05)
    assert line.read("EventRate_RBV") == pytest.approx(events / 20 * RATE, rel=0.3)
    # In the file (read while the IOC writes it) before Acquire completed: pulses, events
    # and the acquisition's row.
    assert (line.read("PulsesWritten_RBV"), line.read("EventsWritten_RBV")) == (20, events)
    assert line.read("NumAcquisitions_RBV") == 1
    table, data = rows(path)
    assert table.tolist() == [[0, 20, 0, events, 0, monitor]]
    numbers = pulse_numbers(data["bank/event_time_zero"])
    assert np.array_equal(numbers, np.arange(numbers[0], numbers[0] + 20))  # none vetoed
    assert np.array_equal(data["monitor/event_time_zero"], data["bank/event_time_zero"])
    assert len(data["bank/event_id"]) == events and len(data["monitor/event_id"]) == monitor

    # The events' wavelengths lie in the band (the choppers' live settings made them), within
    # the pulse's length over the flight time (the emission time is unknown).
    bank = DetectorBank()
    ids = data["bank/event_id"]
    assert ids.min() >= bank.first_id and ids.max() < bank.first_id + bank.size
    path_length = 76.5 + data["l2"][ids - bank.first_id]
    tof = unwrap_time_of_flight(
        data["bank/event_time_offset"], path_length, *BAND, ESS_PULSE_LENGTH, RATE
    )
    lam = wavelength_from_tof(tof, path_length)
    blur = ESS_PULSE_LENGTH * H_OVER_MN / path_length.min()
    assert BAND[0] - blur <= lam.min() and lam.max() <= BAND[1] + blur
    assert np.percentile(lam, 1) < BAND[0] + 0.3 and np.percentile(lam, 99) > BAND[1] - 0.3

    # A second acquisition, to a charge, appends: rows continue, nothing overlaps or is lost.
    line.acquire("Charge", 500.0)
    charge, pulses = line.read("Charge_RBV"), line.read("Pulses_RBV")
    assert 500.0 <= charge < 500.0 + 1.1 * CHARGE and pulses == round(charge / CHARGE)
    more, more_monitor = int(line.read("Events_RBV")), int(line.read("MonitorEvents_RBV"))
    table, data = rows(path)
    assert table.tolist() == [
        [0, 20, 0, events, 0, monitor],
        [20, 20 + pulses, events, events + more, monitor, monitor + more_monitor],
    ]
    assert line.read("EventsWritten_RBV") == len(data["bank/event_id"]) == events + more
    assert line.read("PulsesWritten_RBV") == len(data["bank/event_time_zero"]) == 20 + pulses
    numbers = pulse_numbers(data["bank/event_time_zero"])
    assert np.all(np.diff(numbers) > 0)
    index = data["bank/event_index"]
    assert index[0] == 0 and np.all(np.diff(index) >= 0) and index[20] == events

    line.write("Capture", 0)
    assert line.read("Capture_RBV") == "Done"
    with pytest.raises(Exception, match="exists"):  # noqa: PT011 - caproto's error response
        line.write("Capture", 1)
    assert line.read("Capture_RBV") == "Done"
    assert rows(path)[0].shape == (2, 6)
    # ESS's reader loads the closed file's NXdetector as events by pixel (the acquisitions
    # table is beside it, not in it).
    with snx.File(path) as f:
        loaded = f["entry/instrument/bank"][()]["events"]
    assert loaded.bins is not None and loaded.dims == ("detector_number",)
    assert loaded.sum().value == events + more


def test_a_chopper_losing_its_lock_vetoes_pulses(beamline, monkeypatch) -> None:
    line = beamline
    line.phased()
    path = line.capture("lockloss")
    with acquiring(line, "Pulses", 30, monkeypatch):
        wait_until(lambda: line.read("Pulses_RBV") >= 5, "pulses counted")
        line.main_write("bwc", "SIM:LOCKLOSS", 0.2)
        wait_until(lambda: line.read("VetoedPulses_RBV") > 0, "pulses vetoed")
    vetoed = line.read("VetoedPulses_RBV")
    assert line.read("Pulses_RBV") == 30 and vetoed > 0
    line.write("Capture", 0)
    table, data = rows(path)
    events = len(data["bank/event_id"])
    assert table.tolist() == [[0, 30, 0, events, 0, len(data["monitor/event_id"])]]
    assert events == line.read("Events_RBV")
    # The vetoed pulses are not in the file, events and all: they are the gaps.
    numbers = pulse_numbers(data["bank/event_time_zero"])
    assert len(numbers) == 30 and numbers[-1] - numbers[0] + 1 == 30 + vetoed


def test_a_beam_dump_vetoes_pulses(beamline, monkeypatch) -> None:
    line = beamline
    line.phased()
    try:
        with acquiring(line, "Pulses", 20, monkeypatch):
            wait_until(lambda: line.read("Pulses_RBV") >= 3, "pulses counted")
            ca_write(line.profile.device("source").prefix + "SIM:DUMP", 1, line.main)
            wait_until(lambda: line.read("VetoedPulses_RBV") >= 2, "pulses vetoed")
            counted = line.read("Pulses_RBV")
            wait_until(lambda: line.read("VetoedPulses_RBV") >= 5, "more pulses vetoed")
            assert line.read("Pulses_RBV") == counted  # no beam: nothing counts
            assert line.read("Acquire_RBV") == "Acquire"
            ca_write(line.profile.device("source").prefix + "SIM:DUMP", 0, line.main)
    finally:
        ca_write(line.profile.device("source").prefix + "SIM:DUMP", 0, line.main)
    assert line.read("Pulses_RBV") == 20 and line.read("VetoedPulses_RBV") >= 5
    assert line.read("Charge_RBV") == pytest.approx(20 * CHARGE, rel=0.05)


def test_time_preset_and_stop(beamline, monkeypatch) -> None:
    line = beamline
    line.phased()
    line.acquire("Time", 1.0)  # the pulses leaving within the second: 14 at 14 Hz
    assert line.read("Pulses_RBV") + line.read("VetoedPulses_RBV") == 14
    with acquiring(line, "Time", 0, monkeypatch) as done:  # 0: until stopped
        wait_until(lambda: line.read("Pulses_RBV") >= 3, "pulses counted")
        assert not done.is_set()
        line.write("Acquire", 0)  # returns once the acquisition is over
        assert line.read("Acquire_RBV") == "Done"
    assert 3 <= line.read("Pulses_RBV") < 3 + 2 * RATE
