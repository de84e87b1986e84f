"""The simulated time-of-flight powder diffractometer: chopper timing (against scippneutron
and ``timing``), the band the cascade selects, the sample's d-spacings recovered from the
events, events per proton charge, frame wrapping, and the NeXus event files (read back with
h5py, a SWMR reader in another process, and scippnexus)."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest

from hutch import tof as timing
from hutch.simulators.event_files import EventFile, bank_geometry
from hutch.simulators.neutron_events import NeutronSimulator, PulseEvents, histogram_events
from hutch.simulators.neutrons import (
    DEMO_BAND,
    Chopper,
    Instrument,
    demo_choppers,
    demo_instrument,
    virtual_source,
)
from hutch.tof import d_spacing, pulse_time_ns, unwrap_time_of_flight, wavelength_from_tof

WRAPPED_BAND = (2.6, 4.2)
"""Å: neutrons of this band reach the detector 51-86 ms after their pulse: past the next
pulse's T0 (71.4 ms), so some are filed under it."""
FIRST_PULSE = 25_000_000_000  # a pulse of 2026: T0 in ns needs all of int64's precision
FULL = 71.4  # µC: a pulse at 2 MW


@pytest.fixture(scope="module")
def demo() -> Instrument:
    return demo_instrument(DEMO_BAND)


@pytest.fixture(scope="module")
def wrapped() -> Instrument:
    return demo_instrument(WRAPPED_BAND)


def _events(instrument: Instrument, pulses: int, seed: int) -> tuple[NeutronSimulator, PulseEvents]:
    sim = NeutronSimulator(instrument, pool_size=1 << 19, monitor_pool_size=1 << 16, seed=seed)
    return sim, sim.detector_events(
        np.arange(FIRST_PULSE, FIRST_PULSE + pulses), np.full(pulses, FULL)
    )


def _flight_paths(instrument: Instrument, events: PulseEvents) -> tuple[np.ndarray, np.ndarray]:
    pixel = events.event_id - instrument.bank.first_id
    return instrument.flight_paths[pixel], instrument.bank.two_theta[pixel]


# -- choppers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chopper",
    [
        *demo_choppers(),
        Chopper("two slits", 10.0, 28.0, delay=30_000_000.0, slit_edges=((10, 50), (180, 200))),
        # A slit across the TDC mark, the disk turning the other way (the sense does not matter).
        Chopper("reversed", 10.0, -14.0, delay=70_000_000.0, slit_edges=((300, 400),)),
    ],
    ids=lambda chopper: chopper.name,
)
def test_scippneutron_openings_follow_timing_conventions(chopper: Chopper) -> None:
    import scipp as sc

    speed, delay, edges = chopper.speed, chopper.delay, chopper.slit_edges
    f = abs(speed)
    disk = chopper.to_scippneutron()
    rate = sc.scalar(timing.ESS_PULSE_RATE, unit="Hz")
    opens = np.sort(disk.time_offset_open(pulse_frequency=rate).to(unit="s").values)
    closes = np.sort(disk.time_offset_close(pulse_frequency=rate).to(unit="s").values)
    # timing.py: the TDC mark passes at T0 + delay + k / f, a slit [begin, end] is open from
    # begin / (360 f) to end / (360 f) after it.
    turns = np.arange(-1, round(f / timing.ESS_PULSE_RATE))
    tdc = delay * 1e-9 + turns[:, None] / f
    begins, ends = np.array(edges).T
    np.testing.assert_allclose(opens, np.sort((tdc + begins / (360 * f)).ravel()), atol=1e-12)
    np.testing.assert_allclose(closes, np.sort((tdc + ends / (360 * f)).ravel()), atol=1e-12)
    # The phase scippneutron stores is timing's phase, the disk turning the other way.
    phase = -disk.phase.to(unit="deg").value % 360
    assert phase == pytest.approx(timing.phase_from_delay(delay, speed), abs=1e-9)
    # And the windows the simulator checks neutrons against, over a longer span.
    got_open, got_close = chopper.openings(0.0, 0.5)
    turns = np.arange(-2, math.ceil(0.5 * f) + 2)
    tdc = (delay * 1e-9 + turns[:, None] / f).ravel()[:, None]
    want_open, want_close = (tdc + begins / (360 * f)).ravel(), (tdc + ends / (360 * f)).ravel()
    keep = (want_close > 0) & (want_open < 0.5)
    np.testing.assert_allclose(got_open, np.sort(want_open[keep]), atol=1e-12)
    np.testing.assert_allclose(got_close, np.sort(want_close[keep]), atol=1e-12)


def test_band_delays_centre_each_slit_on_the_band(demo) -> None:
    source = demo.source
    for chopper in demo.choppers:
        delay = timing.band_delay(
            chopper.distance, chopper.speed, chopper.slit_edges[0], *DEMO_BAND, source.pulse_length
        )
        turn = 1 / chopper.speed
        assert 0 <= delay * 1e-9 < turn
        begin, end = chopper.slit_edges[0]
        centre = delay * 1e-9 + (begin + end) / 720 / chopper.speed
        fastest = timing.time_of_flight(chopper.distance, DEMO_BAND[0])
        slowest = source.pulse_length + timing.time_of_flight(chopper.distance, DEMO_BAND[1])
        offset = (centre - (fastest + slowest) / 2) / turn
        assert offset - round(offset) == pytest.approx(0, abs=1e-9)


def test_pulse_times_are_exact_nanoseconds() -> None:
    n = np.array([0, 1, 13, 14, FIRST_PULSE, FIRST_PULSE + 7, 4 * FIRST_PULSE + 3])
    want = [round(Fraction(int(i) * 10**9, 14)) for i in n]
    assert pulse_time_ns(n).tolist() == want
    n = n[:-1]  # int64 ns reach the year 2262: 7 Hz pulses beyond it do not fit
    assert pulse_time_ns(n, 7.0).tolist() == [round(Fraction(int(i) * 10**9, 7)) for i in n]


# -- what the detector records ---------------------------------------------------------------


def _band_limits(instrument: Instrument, band: tuple[float, float]) -> tuple[float, float]:
    """The apparent wavelengths (h t / m_n (L1 + L2), the emission time unknown) the cascade
    lets through: a neutron left at t_e in [0, τ] and passed each chopper's window [o, c]
    at L_c, so λ_app = λ + t_e h / L lies in [(o - τ) h / L_c + τ h / L, c h / L_c]."""
    tau, h = instrument.source.pulse_length, timing.H_OVER_MN
    path = instrument.flight_paths.max()
    low, high = -np.inf, np.inf
    for chopper in instrument.choppers:
        middle = (timing.time_of_flight(chopper.distance, sum(band)) + tau) / 2
        opens, closes = chopper.openings(middle - 0.1, middle + 0.1)
        i = np.argmin(np.abs((opens + closes) / 2 - middle))
        low = max(low, (opens[i] - tau) * h / chopper.distance + tau * h / path)
        high = min(high, closes[i] * h / chopper.distance)
    return low, high


@pytest.mark.parametrize("band", [DEMO_BAND, WRAPPED_BAND], ids=["one-frame", "wrapped"])
def test_events_wavelengths_lie_in_the_band(band, demo, wrapped) -> None:
    instrument = demo if band == DEMO_BAND else wrapped
    sim, events = _events(instrument, 100, seed=1)
    assert len(events) > 100_000
    path, _ = _flight_paths(instrument, events)
    source = instrument.source
    tof = unwrap_time_of_flight(
        events.event_time_offset, path, *band, source.emission_end, source.rate
    )
    lam = wavelength_from_tof(tof, path)
    # Within what the choppers' windows allow (exactly), and that within the band widened
    # by the pulse's length over the flight time (the emission time is not known).
    low, high = _band_limits(instrument, band)
    blur = instrument.source.pulse_length * timing.H_OVER_MN / path.min()
    assert band[0] - blur <= low < high <= band[1] + blur
    assert low - 1e-6 <= lam.min() and lam.max() <= high + 1e-6
    # ... and filling it: the cascade's edges are sharp (the pulse-shaping chopper's opening).
    assert np.percentile(lam, 0.1) < low + 0.03 and np.percentile(lam, 99.9) > high - 0.03
    if band == WRAPPED_BAND:
        late = events.event_time_offset < 30e6  # filed under the next pulse's T0
        assert 0.05 < late.mean() < 0.5
        assert np.all(tof[late] > 1 / timing.ESS_PULSE_RATE * 1e9)


@pytest.mark.parametrize("band", [DEMO_BAND, WRAPPED_BAND], ids=["one-frame", "wrapped"])
def test_monitor_sees_what_brute_force_passes(band, demo, wrapped) -> None:
    """The pool's importance sampling against the plain Monte Carlo: wavelengths from the
    spectrum, emission times uniform over the pulse, kept if every chopper is open."""
    from scipy.stats import ks_2samp

    instrument = demo if band == DEMO_BAND else wrapped
    source, rng = instrument.source, np.random.default_rng(7)
    grid = np.linspace(*source.wavelength_range, 100_001)
    flux = source.flux(grid)
    cdf = np.concatenate([[0], np.cumsum((flux[1:] + flux[:-1]) / 2 * np.diff(grid))])
    n = 2_000_000
    lam = np.interp(rng.random(n) * cdf[-1], cdf, grid)
    emitted = rng.random(n) * source.pulse_length
    passed = np.ones(n, dtype=bool)
    for chopper in instrument.choppers:
        opens, closes = chopper.openings(0.0, 1.0)
        t = emitted + timing.time_of_flight(chopper.distance, lam)
        index = np.searchsorted(opens, t, side="right") - 1
        passed &= (index >= 0) & (t < closes[np.maximum(index, 0)])
    arrival = emitted[passed] + timing.time_of_flight(instrument.monitor.distance, lam[passed])
    recorded = np.mod(arrival, source.period) * 1e9

    sim = NeutronSimulator(instrument, monitor_pool_size=1 << 17, seed=8)
    monitor = sim.monitor_events(np.arange(100, 300), np.full(200, FULL))
    assert sim.transmission("monitor") == pytest.approx(passed.mean() * cdf[-1], rel=0.03)
    assert ks_2samp(recorded, monitor.event_time_offset).statistic < 0.015


def test_d_spacings_of_the_powder_are_recovered(demo) -> None:
    from scipy.signal import find_peaks

    _, events = _events(demo, 200, seed=2)
    path, two_theta = _flight_paths(demo, events)
    tof = unwrap_time_of_flight(
        events.event_time_offset, path, *DEMO_BAND, demo.source.emission_end, demo.source.rate
    )
    # The pulse-shaping chopper, not the moderator, is where the neutrons effectively start.
    start, where = virtual_source(demo.choppers, demo.source, *DEMO_BAND)
    d = d_spacing(wavelength_from_tof(tof, path, time_zero=start, distance_zero=where), two_theta)
    counts, edges = np.histogram(d, bins=np.arange(0.75, 3.4, 0.0005))
    peaks, _ = find_peaks(counts, prominence=0.05 * counts.max(), distance=20)
    found = (edges[peaks] + edges[peaks + 1]) / 2
    reflections = demo.sample.d_spacings
    expected = reflections[(reflections > 0.77) & (reflections < 3.4)]
    assert len(expected) >= 10
    for d_hkl in expected:  # every reflection found within 0.5 %...
        assert np.min(np.abs(found / d_hkl - 1)) < 0.005, d_hkl
    for peak in found:  # ... and nothing else
        assert np.min(np.abs(peak / reflections - 1)) < 0.005, peak


def test_events_per_pulse_follow_the_proton_charge(demo, wrapped) -> None:
    sim = NeutronSimulator(demo, pool_size=1 << 18, seed=3)
    charges = np.tile([FULL, FULL / 2, 0.0, FULL / 4], 25)
    pulses = np.arange(FIRST_PULSE, FIRST_PULSE + len(charges))
    events = sim.detector_events(pulses, charges)
    counts = events.counts
    assert counts.sum() == len(events) == len(events.event_time_offset)
    np.testing.assert_array_equal(events.event_time_zero, pulse_time_ns(pulses))
    assert events.event_index[0] == 0 and np.all(np.diff(events.event_index) >= 0)
    assert events.event_id.dtype == np.int32 and events.event_time_offset.dtype == np.int32
    assert events.event_time_zero.dtype == np.int64 and events.event_index.dtype == np.int64
    assert np.all(events.event_time_offset < 1e9 / timing.ESS_PULSE_RATE)
    assert np.all(counts[charges == 0] == 0)  # this band arrives within its own frame
    expected = sim.detector_events_per_uc
    for charge in (FULL, FULL / 2, FULL / 4):
        mean = counts[charges == charge].mean()
        assert mean == pytest.approx(expected * charge, rel=5 * (expected * charge * 25) ** -0.5)
    # The monitor sees the same transmitted neutrons, its own share of them.
    assert sim.transmission("monitor") == pytest.approx(sim.transmission("sample"), rel=0.02)
    monitor = sim.monitor_events(pulses, charges)
    assert set(np.unique(monitor.event_id)) == {demo.monitor.event_id}
    edges = np.linspace(0, 1e9 / 14, 72)
    measured = histogram_events(monitor.event_time_offset, edges)
    expected_hist = sim.expected_monitor_histogram(edges, charges.mean()) * len(pulses)
    assert measured.sum() == pytest.approx(expected_hist.sum(), rel=0.02)
    significant = expected_hist > 100
    assert np.all(
        np.abs(measured - expected_hist)[significant] < 6 * expected_hist[significant] ** 0.5
    )


def test_slow_neutrons_are_filed_under_the_next_pulse_across_calls(wrapped) -> None:
    sim = NeutronSimulator(wrapped, pool_size=1 << 18, seed=4)
    first = sim.detector_events([FIRST_PULSE], [FULL])
    second = sim.detector_events([FIRST_PULSE + 1, FIRST_PULSE + 2], [0.0, 0.0])
    assert len(first) > 0 and second.counts[0] > 0 and second.counts[1] == 0
    # The late ones are this band's slowest: early in the next frame.
    assert second.event_time_offset.max() < first.event_time_offset.min()
    assert second.event_time_zero[0] == pulse_time_ns(FIRST_PULSE + 1)
    share = second.counts[0] / (len(first) + second.counts[0])
    assert 0.05 < share < 0.5
    # Skipped pulses lose the neutrons they would have recorded.
    sim.detector_events([FIRST_PULSE + 10], [FULL])
    after_gap = sim.detector_events([FIRST_PULSE + 12], [0.0])
    assert len(after_gap) == 0


def test_closed_choppers_pass_nothing(demo) -> None:
    sim = NeutronSimulator(demo, pool_size=1 << 16, seed=5)
    parked = [Chopper(c.name, c.distance, 0.0, slit_edges=c.slit_edges) for c in demo.choppers]
    sim.set_choppers(parked)
    events = sim.detector_events([FIRST_PULSE, FIRST_PULSE + 1], [FULL, FULL])
    assert len(events) == 0 and events.counts.tolist() == [0, 0]
    assert sim.detector_events_per_uc == 0 and sim.monitor_events_per_uc == 0


# -- the event files ---------------------------------------------------------------------------


_READER = """
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r", libver="latest", swmr=True) as f:
    g = f[sys.argv[2]]
    index, ids = g["event_index"][()], g["event_id"][()]
    assert len(ids) >= (index[-1] if len(index) else 0)
    print(len(index), len(ids))
"""


def test_event_file_appends_and_reads_back(tmp_path: Path, demo) -> None:
    import scipp as sc
    import scippnexus as snx

    sim = NeutronSimulator(demo, pool_size=1 << 17, monitor_pool_size=1 << 15, seed=6)
    path = tmp_path / "events.h5"
    blocks, monitor_blocks = [], []
    with EventFile(path) as file:
        detector = file.add_detector("bank", **bank_geometry(demo.bank))
        monitor = file.add_monitor(
            "monitor",
            position=(0, 0, demo.monitor.distance - demo.sample_distance),
            events="monitor_events",  # as ESS names them
        )
        file.add_source(demo.sample_distance)
        for block in range(3):
            pulses = np.arange(FIRST_PULSE + 5 * block, FIRST_PULSE + 5 * block + 5)
            charges = np.full(5, FULL)
            events = sim.detector_events(pulses, charges)
            detector.append(
                events.event_id,
                events.event_time_offset,
                events.event_time_zero,
                events.event_index,
            )
            blocks.append(events)
            m = sim.monitor_events(pulses, charges)
            monitor.append(m.event_id, m.event_time_offset, m.event_time_zero, m.event_index)
            monitor_blocks.append(m)
            assert detector.pulses == 5 * (block + 1)
            assert detector.events == sum(len(b) for b in blocks)
            # Another process, reading while the file is written, finds what was counted.
            seen = subprocess.run(
                [sys.executable, "-c", _READER, str(path), detector.path],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            assert [int(v) for v in seen] == [detector.pulses, detector.events]
        with pytest.raises(RuntimeError):
            file.add_monitor("late")

    ids = np.concatenate([b.event_id for b in blocks])
    offsets = np.concatenate([b.event_time_offset for b in blocks])
    starts = np.cumsum([0] + [len(b) for b in blocks[:-1]])
    index = np.concatenate([b.event_index + s for b, s in zip(blocks, starts, strict=True)])
    with h5py.File(path, "r") as f:
        group = f["entry/instrument/bank/events"]
        assert group.attrs["NX_class"] == "NXevent_data"
        assert f["entry/instrument/bank"].attrs["NX_class"] == "NXdetector"
        np.testing.assert_array_equal(group["event_id"][()], ids)
        np.testing.assert_array_equal(group["event_time_offset"][()], offsets)
        np.testing.assert_array_equal(group["event_index"][()], index)
        assert group["event_time_zero"].attrs["offset"] == "1970-01-01T00:00:00Z"
        assert group["event_time_offset"].attrs["units"] == "ns"
        assert group["event_time_zero"].maxshape == (None,)

    with snx.File(path) as f:
        bank = f["entry/instrument/bank"][()]
        monitor_data = f["entry/instrument/monitor"][()]
        positions = snx.compute_positions(f["entry"][()])
    events = bank["events"]
    assert isinstance(events, sc.DataArray) and events.bins is not None
    assert events.dims == ("detector_number",)
    np.testing.assert_array_equal(
        events.coords["detector_number"].values, demo.bank.detector_number
    )
    assert "event_time_offset" in events.bins.coords
    assert events.bins.coords["event_time_offset"].unit == "ns"
    assert events.sum().value == len(ids)
    per_pixel = np.bincount(ids - demo.bank.first_id, minlength=demo.bank.size)
    np.testing.assert_array_equal(events.bins.size().values, per_pixel)
    np.testing.assert_allclose(events.coords["polar_angle"].values, demo.bank.two_theta)
    pixel = positions["instrument"]["bank"]["events"].coords["position"].values
    np.testing.assert_allclose(pixel, demo.bank.positions, atol=1e-12)
    source = positions["instrument"]["source"]["position"].value
    np.testing.assert_allclose(source, [0, 0, -demo.sample_distance])
    monitor_events = monitor_data["monitor_events"]
    assert (
        monitor_events.dims == ("event_time_zero",)
        and monitor_events.sizes["event_time_zero"] == 15
    )
    assert monitor_events.sum().value == sum(len(b) for b in monitor_blocks)
