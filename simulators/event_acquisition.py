"""The parts of the simulated event-mode detector (``event_detector.py``) that do not speak
Channel Access: its cables to the choppers and the source, which pulses an acquisition
counts, the events of those pulses (``neutron_events.NeutronSimulator``), and the file they
are appended to, with one row per acquisition.

Everything here but `SourceCable.charges`, `counted_pulses` and `preset_cut` runs in the
detector's one worker thread (h5py and the simulator's random generator must not be used
concurrently; both take far longer than the event loop may be held).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .event_files import EventFile, bank_geometry
from .neutron_events import NeutronSimulator, PulseEvents
from .neutrons import Chopper, DetectorBank, Instrument, Monitor, Sample, Source

__all__ = [
    "ACQUISITION_COLUMNS",
    "DELAY_TOLERANCE_NS",
    "MONITOR_GROUP",
    "AcquisitionFile",
    "ChopperCable",
    "EventGenerator",
    "SourceCable",
    "counted_pulses",
    "preset_cut",
    "same_settings",
]

DELAY_TOLERANCE_NS = 1000.0
"""A chopper's delay must move more than this (ns; its jitter is ~20 ns, its lock window 200
ns) before the neutron pool is rebuilt (0.15-0.45 s of CPU): never per pulse."""

ACQUISITION_COLUMNS = (
    "first_pulse_row",
    "stop_pulse_row",
    "first_event",
    "stop_event",
    "first_monitor_event",
    "stop_monitor_event",
)
"""The columns of ``/entry/acquisitions/rows``: half-open row ranges of the detector's
(and monitor's: they hold the same pulses) ``event_time_zero``/``event_index``, of the
detector's events and of the monitor's events, written by one acquisition."""

MONITOR_GROUP = "monitor"
#: The NXcollection of ``/entry`` holding the acquisitions table (``rows``).
ACQUISITIONS_GROUP = "acquisitions"
"""Name of the monitor's NXmonitor group under ``/entry/instrument``."""


class ChopperFeed(Protocol):
    """A chopper's live state (``links.RemoteChopper`` or ``links.LocalChopper``)."""

    speed: float
    delay_ns: float

    def locked_at(self, times: np.ndarray) -> np.ndarray: ...


class SourceFeed(Protocol):
    """A source's live beam power (``links.RemoteSource`` or ``links.LocalSource``)."""

    def power_at(self, times: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ChopperCable:
    """A chopper the detector is cabled to: its geometry (from the chopper device's profile
    ``options``) and its live speed, delay and phase lock (``feed``)."""

    name: str
    distance: float
    slit_edges: tuple[tuple[float, float], ...]
    feed: ChopperFeed
    radius: float = 0.35
    slit_height: float = 0.1

    def chopper(self, speed: float, delay_ns: float) -> Chopper:
        """The chopper at ``speed`` Hz and TDC delay ``delay_ns``, for the simulator."""
        return Chopper(
            self.name,
            self.distance,
            speed,
            delay=delay_ns,
            slit_edges=self.slit_edges,
            radius=self.radius,
            slit_height=self.slit_height,
        )


@dataclass(frozen=True)
class SourceCable:
    """The source's pulse timing (its device's ``sim`` options) and live beam power
    (``feed``; None: always on at the nominal ``power``)."""

    rate: float
    pulse_length: float
    proton_energy_gev: float
    power: float
    feed: SourceFeed | None = None

    def charges(self, times: np.ndarray) -> np.ndarray:
        """Proton charge (µC) of the pulses leaving at ``times``, from the power then:
        power / proton energy / rate, as the source computes it (without its noise)."""
        times = np.asarray(times, dtype=np.float64)
        power = np.full(len(times), self.power) if self.feed is None else self.feed.power_at(times)
        return np.clip(np.nan_to_num(power), 0.0, None) / self.proton_energy_gev * 1e3 / self.rate


def counted_pulses(
    times: np.ndarray, choppers: Sequence[ChopperCable], charges: np.ndarray
) -> np.ndarray:
    """Which pulses leaving at ``times`` count: beam on, every chopper phase-locked."""
    counted = np.asarray(charges) > 0
    for cable in choppers:
        counted &= cable.feed.locked_at(times)
    return counted


def preset_cut(
    mode: str,
    preset: float,
    counted: np.ndarray,
    charges: np.ndarray,
    pulses_so_far: int,
    charge_so_far: float,
) -> int | None:
    """How many of a batch's pulses an acquisition with ``preset`` (``mode`` Pulses or
    Charge; ``preset`` <= 0: none) still takes: up to the counted pulse reaching the preset,
    or None for all of them (the preset is not reached in this batch)."""
    if preset <= 0 or mode not in ("Pulses", "Charge"):
        return None
    if mode == "Pulses":
        total = pulses_so_far + np.cumsum(counted)
        reached = counted & (total >= math.ceil(preset))
    else:
        total = charge_so_far + np.cumsum(np.where(counted, charges, 0.0))
        reached = counted & (total >= preset * (1 - 1e-12))
    hits = np.flatnonzero(reached)
    return int(hits[0]) + 1 if len(hits) else None


def _select(events: PulseEvents, keep: np.ndarray) -> PulseEvents:
    """The pulses of ``events`` where ``keep``, with their events."""
    counts = events.counts
    chosen = np.repeat(keep, counts)
    counts = counts[keep]
    return PulseEvents(
        pulse=events.pulse[keep],
        event_time_zero=events.event_time_zero[keep],
        event_index=np.cumsum(counts) - counts,
        event_id=events.event_id[chosen],
        event_time_offset=events.event_time_offset[chosen],
    )


def same_settings(
    old: Sequence[tuple[float, float]] | None, new: Sequence[tuple[float, float]]
) -> bool:
    """Whether the choppers' settings (speed Hz, delay ns each) differ by no more than the
    jitter: the same speeds, the delays within `DELAY_TOLERANCE_NS` (modulo a turn)."""
    if old is None or len(old) != len(new):
        return False
    for (speed0, delay0), (speed1, delay1) in zip(old, new, strict=True):
        if speed0 != speed1:
            return False
        turn = 1e9 / abs(speed1) if speed1 else math.inf
        diff = (delay1 - delay0 + turn / 2) % turn - turn / 2 if speed1 else delay1 - delay0
        if not abs(diff) <= DELAY_TOLERANCE_NS:
            return False
    return True


class EventGenerator:
    """The detector's and monitor's events, pulse by pulse, at the choppers' settings.

    The instrument (the calibrant's reflections need pyFAI: seconds) and the neutron pools
    are built when first needed; `configure` rebuilds the pools only when a chopper's
    setting changed by more than the jitter.
    """

    def __init__(
        self,
        *,
        source: SourceCable,
        choppers: Sequence[ChopperCable],
        bank: DetectorBank,
        sample: str,
        sample_distance: float,
        monitor_distance: float,
        neutrons_per_uc: float,
        pool_size: int,
        seed: int | None,
    ) -> None:
        self.source, self.choppers, self.bank = source, tuple(choppers), bank
        self._sample, self._seed = sample, seed
        self._distances = (sample_distance, monitor_distance)
        self._per_uc, self._pool_size = neutrons_per_uc, pool_size
        self._simulator: NeutronSimulator | None = None
        self._settings: tuple[tuple[float, float], ...] | None = None

    @property
    def simulator(self) -> NeutronSimulator:
        """The neutron simulator (built on first use)."""
        if self._simulator is None:
            src = self.source
            instrument = Instrument(
                source=Source(src.rate, src.pulse_length, neutrons_per_uc=self._per_uc),
                choppers=(),  # set by configure before any event
                sample_distance=self._distances[0],
                sample=Sample.from_calibrant(self._sample),
                bank=self.bank,
                monitor=Monitor(MONITOR_GROUP, self._distances[1]),
            )
            self._simulator = NeutronSimulator(
                instrument, pool_size=self._pool_size, seed=self._seed
            )
        return self._simulator

    def configure(self, settings: Sequence[tuple[float, float]]) -> bool:
        """The choppers' (speed Hz, delay ns), in cable order; True if the pools must be
        rebuilt (they are, lazily, at the next events)."""
        settings = tuple(settings)
        if same_settings(self._settings, settings):
            return False
        self.simulator.set_choppers(
            [cable.chopper(*s) for cable, s in zip(self.choppers, settings, strict=True)]
        )
        self._settings = settings
        return True

    def prepare(self, settings: Sequence[tuple[float, float]]) -> None:
        """`configure`, and build the pools now (before an acquisition needs them)."""
        self.configure(settings)
        _ = self.simulator.detector_events_per_uc, self.simulator.monitor_events_per_uc

    def events(
        self, pulses: np.ndarray, charges: np.ndarray, counted: np.ndarray
    ) -> tuple[PulseEvents, PulseEvents]:
        """The detector's and the monitor's events of the ``counted`` ones of ``pulses``
        (consecutive indices; charges in µC). The others (vetoed) carry no protons, and
        what is recorded under them (late neutrons of earlier pulses) is dropped."""
        sim = self.simulator
        charges = np.where(counted, charges, 0.0)
        detector = sim.detector_events(pulses, charges)
        monitor = sim.monitor_events(pulses, charges)
        return _select(detector, counted), _select(monitor, counted)


class AcquisitionFile(EventFile):
    """The detector's event file: an ``NXdetector`` with the bank's pixels and events, an
    ``NXmonitor`` with its events, the source and sample, and ``/entry/acquisitions/rows`` (int64,
    (N, 6), `ACQUISITION_COLUMNS`) in the detector's group: one row per acquisition.

    Created (never overwriting a file) and made SWMR-readable at once. `begin` marks where
    an acquisition starts; `end` appends its row and flushes it.
    """

    def __init__(
        self, path: str | Path, bank: DetectorBank, sample_distance: float, monitor_distance: float
    ) -> None:
        if Path(path).exists():  # EventFile truncates: never lose an earlier measurement
            raise FileExistsError(f"{path} exists; choose another FileName")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path)
        try:
            self.detector = self.add_detector(bank.name, **bank_geometry(bank))
            self.monitor = self.add_monitor(
                MONITOR_GROUP, position=(0.0, 0.0, monitor_distance - sample_distance)
            )
            self.add_source(sample_distance)
            # Beside the NXdetector, not in it: readers (scippnexus) load an NXdetector whose
            # every field fits its pixel and event dimensions, and fall back otherwise.
            group = self._file["entry"].create_group(ACQUISITIONS_GROUP)
            group.attrs["NX_class"] = "NXcollection"
            self._rows: Any = group.create_dataset(
                "rows", shape=(0, 6), maxshape=(None, 6), chunks=(256, 6), dtype="i8"
            )
            self._rows.attrs["columns"] = list(ACQUISITION_COLUMNS)
            self.start_swmr()
        except BaseException:
            self.close()
            raise
        self.acquisitions = 0
        self._start: tuple[int, int, int] | None = None

    @property
    def acquisitions_path(self) -> str:
        """The acquisitions dataset's path in the file."""
        return str(self._rows.name)

    def begin(self) -> None:
        """An acquisition starts: its row will begin at what is written now."""
        self._start = (self.detector.pulses, self.detector.events, self.monitor.events)

    def append(self, detector: PulseEvents, monitor: PulseEvents) -> None:
        """Append a batch of pulses (the same pulses for both), flushed."""
        for stream, events in ((self.detector, detector), (self.monitor, monitor)):
            stream.append(
                events.event_id,
                events.event_time_offset,
                events.event_time_zero,
                events.event_index,
            )

    def end(self) -> None:
        """The acquisition begun last is over: append its row (flushed). No-op if none."""
        if self._start is None:
            return
        pulses, events, monitor = self._start
        row = (pulses, self.detector.pulses, events, self.detector.events)
        row += (monitor, self.monitor.events)
        self._rows.resize((self.acquisitions + 1, 6))
        self._rows[self.acquisitions] = row
        self._rows.flush()
        self.acquisitions += 1
        self._start = None

    def finish(self) -> None:
        """End the acquisition in progress, if any (its row covers what was written), and
        close the file."""
        try:
            self.end()
        finally:
            self.close()
