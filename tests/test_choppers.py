"""Disk choppers of the TOF instrument (profiles/tof.toml) driven by their ophyd-async
device and hutch's plans over Channel Access, against the simulated ESS-like chopper IOCs:
spin-up and phase lock, refusals before anything is written, park, a wavelength band, and
the NeXus file's NXdisk_chopper."""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest
from bluesky import plan_stubs as bps
from bluesky.run_engine import call_in_bluesky_event_loop
from bluesky.utils import FailedStatus
from nexus_validator import problems
from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider

from hutch import plans
from hutch.callbacks import NexusWriter
from hutch.devices import connect_devices, devices_metadata, make_devices
from hutch.devices.chopper import ChopperRefusal, ChopperSetpoint
from hutch.simulators import ca_read
from hutch.tof import ESS_PULSE_LENGTH, H_OVER_MN


@pytest.fixture(scope="module")
def tof(tof_sim, RE, tof_profile, tmp_path_factory):
    """The TOF profile's devices, connected in the worker's RunEngine loop."""
    files = StaticPathProvider(UUIDFilenameProvider(), tmp_path_factory.mktemp("tof-files"))
    devices = make_devices(tof_profile, files)
    call_in_bluesky_event_loop(connect_devices(devices, timeout=30))
    return devices


def pv(tof_sim, name: str):
    """A PV of the TOF simulator read over CA by caproto's client (not the device)."""
    return ca_read(name, tof_sim.port, timeout=5.0)


def test_spin_up_locks_and_park_parks(RE, tof, tof_sim):
    bwc = tof["bwc"]
    RE(bps.mv(bwc, 14.0))
    prefix = "TOF:ChpSy1:Chop-BWC-101:"
    assert pv(tof_sim, prefix + "Spd_R") == pytest.approx(14.0)
    assert pv(tof_sim, prefix + "ChopState_R") == "PhaseLocked"
    assert pv(tof_sim, prefix + "InPhs_R") == "Yes"
    reading = call_in_bluesky_event_loop(bwc.read())
    assert reading["bwc-speed"]["value"] == pytest.approx(14.0)
    assert reading["bwc-in_phase"]["value"] is True

    RE(plans.park_choppers([bwc], angle=30.0))
    assert pv(tof_sim, prefix + "ChopState_R") == "Parked"
    assert pv(tof_sim, prefix + "Pos_R") == pytest.approx(30.0, abs=0.01)
    assert pv(tof_sim, prefix + "Spd_R") == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("speed", "message"),
    [
        (30.0, r"bwc: speed 30 Hz is above its maximum 28 Hz \(TOF:ChpSy1:Chop-BWC-101:Spd_S\)"),
        (10.0, r"bwc: speed 10 Hz is not a multiple or fraction of the source's 14 Hz pulses"),
    ],
    ids=["above-maximum", "not-commensurate"],
)
def test_a_speed_the_chopper_cannot_take_is_refused_before_anything_is_written(
    RE, tof, tof_sim, speed, message
):
    """By the plan (a one-line refusal) and by a plain move (its status fails with it)."""
    prefix = "TOF:ChpSy1:Chop-BWC-101:"
    before = pv(tof_sim, prefix + "Spd_S"), pv(tof_sim, prefix + "C_Execute")
    with pytest.raises(ChopperRefusal, match=message):
        RE(plans.set_wavelength_band([tof["bwc"]], 1.0, 2.0, speed=speed))
    with pytest.raises(FailedStatus) as failed:
        RE(bps.mv(tof["bwc"], speed))
    assert isinstance(failed.value.__cause__, ChopperRefusal)
    assert (pv(tof_sim, prefix + "Spd_S"), pv(tof_sim, prefix + "C_Execute")) == before


def test_a_wavelength_band_phases_every_chopper(RE, tof, tof_sim):
    """Each chopper's slit centre crosses the beam half-way through its window for the band,
    as the delays read back from the IOCs say; all three choppers end locked."""
    choppers = [tof["psc"], tof["bwc"], tof["foc"]]
    band = RE(plans.set_wavelength_band(choppers, 1.0, 2.6, speed=[112.0, 14.0, 14.0]))
    result = band.plan_result
    assert result.resolution == pytest.approx(ESS_PULSE_LENGTH * H_OVER_MN / 30.0)
    for chopper in choppers:
        prefix = chopper.speed.source.removeprefix("ca://").removesuffix("Spd_R")
        assert pv(tof_sim, prefix + "ChopState_R") == "PhaseLocked"
        assert pv(tof_sim, prefix + "InPhs_R") == "Yes"
        total_delay = pv(tof_sim, prefix + "TotDly") * 1e-9
        assert total_delay * 1e9 == pytest.approx(result.setpoints[chopper.name].delay)
        speed = pv(tof_sim, prefix + "Spd_R")
        (begin, end), turn = chopper.slit_edges[0], 1 / speed
        open_at = chopper.distance_m * 1.0 / H_OVER_MN
        close_at = ESS_PULSE_LENGTH + chopper.distance_m * 2.6 / H_OVER_MN
        centre = total_delay + (begin + end) / 720.0 * turn
        offset = (centre - (open_at + close_at) / 2 + turn / 2) % turn - turn / 2
        assert offset == pytest.approx(0.0, abs=1e-6)


def test_a_band_whose_frames_would_overlap_is_refused_before_anything_moves(RE, tof, tof_sim):
    prefix = "TOF:ChpSy2:Chop-FOC-101:"
    before = pv(tof_sim, prefix + "ChopDly-S"), pv(tof_sim, prefix + "Spd_S")
    with pytest.raises(ChopperRefusal, match=r"the band 0.5-4.5 Å takes .* over 78 m, more than"):
        RE(plans.set_wavelength_band([tof["foc"]], 0.5, 4.5, speed=14.0, detector_distance=78))
    assert (pv(tof_sim, prefix + "ChopDly-S"), pv(tof_sim, prefix + "Spd_S")) == before


def test_choppers_are_written_as_nxdisk_chopper(RE, tof, tof_profile, tmp_path):
    RE(bps.mv(tof["bwc"], ChopperSetpoint(14.0), tof["foc"], ChopperSetpoint(14.0)))
    writer = NexusWriter(tmp_path)
    token = RE.subscribe(writer)
    try:
        md = {"devices": devices_metadata(tof_profile), "beamline": "tof"}
        RE(plans.count([tof["bwc"], tof["foc"], tof["source"]], num=2), **md)
    finally:
        RE.unsubscribe(token)
    path = writer.last_path
    with h5py.File(path, "r") as f:
        foc = f["entry/instrument/foc"]
        assert foc.attrs["NX_class"] == "NXdisk_chopper"
        assert foc["rotation_speed"][()] == pytest.approx([14.0, 14.0], abs=1e-6)
        assert foc["rotation_speed"].attrs["units"] == "Hz"
        np.testing.assert_allclose(foc["slit_edges"][()], [0.0, 80.0])
        assert foc["distance"][()] == pytest.approx(30.0)
        assert foc["slits"][()] == 1
        for field in ("phase", "delay", "radius", "slit_height"):
            assert field in foc, field
        source = f["entry/instrument/source"]
        assert source.attrs["NX_class"] == "NXsource"
        assert source["frequency"][()] == pytest.approx(14.0)
    assert problems(path) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (([], 1.0, 2.0), r"choppers must be a list of disk choppers"),
        ((["bwc"], 2.6, 1.0), r"lambda_min 2.6 Å must be below lambda_max 1 Å"),
        ((["bwc"], 1.0, 2.6, {"speed": -14.0}), r"speed must be positive"),
    ],
    ids=["no-choppers", "inverted-band", "negative-speed"],
)
def test_bad_band_arguments_are_refused_when_the_plan_is_called(tof, arguments, message):
    choppers, *rest = arguments
    kwargs = rest.pop() if isinstance(rest[-1], dict) else {}
    with pytest.raises(plans.ScanArgumentError, match=message):
        plans.set_wavelength_band([tof[name] for name in choppers], *rest, **kwargs)


def test_a_beam_dump_stops_the_pulsed_sources_protons(tof_profile, tof_sim):
    """`hutch sim beam dump` (simulators.beam_dump) dumps a pulsed source too: its power
    drops to 0 while its pulses go on, and comes back when the beam is restored."""
    from hutch.simulators import beam_dump, beam_restore

    def power() -> float:
        return pv(tof_sim, "TOF:SRC:Power_R")

    def wait(condition) -> bool:
        deadline = time.monotonic() + 20
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    beam_dump(tof_profile, tof_sim.port)
    try:
        assert wait(lambda: power() == 0.0)
        count = pv(tof_sim, "TOF:SRC:PulseCount_R")
        assert wait(lambda: pv(tof_sim, "TOF:SRC:PulseCount_R") > count)
    finally:
        beam_restore(tof_profile, tof_sim.port)
    assert wait(lambda: power() > 1.0)
