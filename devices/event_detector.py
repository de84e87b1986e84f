"""An event-mode neutron detector bank and beam monitor (``simulators/event_detector.py``), as
an ophyd-async ``StandardDetector``: a trigger is one acquisition, its events in an HDF5
(NeXus) event file the IOC writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from bluesky.protocols import Reading
from event_model import DataKey
from ophyd_async.core import (
    DEFAULT_TIMEOUT,
    AsyncStatus,
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    Device,
    PathProvider,
    ReadableDataProvider,
    SignalR,
    SignalRW,
    StandardDetector,
    StreamResourceDataProvider,
    StreamResourceInfo,
    StrictEnum,
    TriggerInfo,
    derived_signal_r,
    merge_gathered_dicts,
    observe_value,
)
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw, epics_signal_rw_rbv

__all__ = [
    "ACQUISITIONS_DATASET",
    "ACQUISITION_COLUMNS",
    "EventDetector",
    "EventFileIO",
    "PresetMode",
    "WRITE_TIMEOUT",
]

ACQUISITIONS_DATASET = "/entry/acquisitions/rows"
"""Where the IOC's event file holds one row per acquisition (int64, (N, 6))."""

ACQUISITION_COLUMNS = (
    "first_pulse_row",
    "stop_pulse_row",
    "first_event",
    "stop_event",
    "first_monitor_event",
    "stop_monitor_event",
)
"""The columns of an acquisition's row: half-open ranges of the rows of the detector's (and
the monitor's) ``event_time_zero``/``event_index``, of the detector's events and of the
monitor's events that the acquisition wrote (as ``simulators/event_acquisition.py``)."""

WRITE_TIMEOUT = 60.0
"""Seconds the IOC may take to create or close the event file, or to stop an acquisition and
write its row: its one worker thread may be busy first (building the neutron pools for new
chopper settings, generating a batch of events)."""

_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5")


class PresetMode(StrictEnum):
    """``PresetMode``: what ends an acquisition once ``Preset`` of it is counted."""

    TIME = "Time"  # seconds of wall clock
    PULSES = "Pulses"  # counted pulses (not vetoed)
    CHARGE = "Charge"  # µC of protons on target in counted pulses


class EventFileIO(Device):
    """The IOC's event file: where (``FilePath``, ``FileName``), open or not (``Capture``),
    and what it holds (pulses, events, monitor events, acquisitions written and flushed)."""

    def __init__(self, prefix: str, name: str = "") -> None:
        self.directory = epics_signal_rw(str, prefix + "FilePath")
        self.file_name = epics_signal_rw(str, prefix + "FileName")
        self.full_file_name = epics_signal_r(str, prefix + "FullFileName_RBV")
        self.capture = epics_signal_rw(bool, prefix + "Capture")
        self.capturing = epics_signal_r(bool, prefix + "Capture_RBV")
        self.pulses_written = epics_signal_r(int, prefix + "PulsesWritten_RBV")
        self.events_written = epics_signal_r(float, prefix + "EventsWritten_RBV")
        self.monitor_events_written = epics_signal_r(float, prefix + "MonitorEventsWritten_RBV")
        self.acquisitions_written = epics_signal_r(int, prefix + "NumAcquisitions_RBV")
        super().__init__(name=name)


def _acquisitions(acquisitions: int, pulses: int, vetoed: int) -> int:
    return acquisitions


@dataclass
class EventTriggerLogic(DetectorTriggerLogic):
    """Internal triggering only: each trigger is one acquisition. A ``livetime`` makes it a
    Time preset of that many seconds; without one the preset set on the detector (Time,
    Pulses or Charge) stays."""

    owner: Device
    preset_mode: SignalRW[PresetMode]
    preset: SignalRW[float]

    def config_sigs(self) -> set[SignalR]:
        return {self.preset_mode, self.preset}

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        if num != 1:
            raise ValueError(
                f"{self.owner.name}: one acquisition per trigger (asked for {num or 'unbounded'}); "
                "step-scan it (count, tof_count) instead"
            )
        if livetime:
            await self.preset_mode.set(PresetMode.TIME)
            await self.preset.set(livetime)
        elif await self.preset.get_value() <= 0:
            mode = (await self.preset_mode.get_value()).value
            raise ValueError(
                f"{self.owner.name}: Preset is 0 ({mode}: count until stopped), so a trigger "
                "would never end; set a preset (tof_count's seconds, pulses or charge)"
            )

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()  # livetime 0: the preset on the detector


@dataclass
class EventAcquireLogic(DetectorAcquireLogic):
    """``Acquire`` 1 starts an acquisition and its put-callback completes when it is over
    (its preset reached); 0 stops it, and completes once its row is written."""

    owner: Device
    acquire: SignalRW[bool]
    acquiring: SignalR[bool]
    message: SignalR[str]
    _status: AsyncStatus | None = field(default=None, init=False)

    async def start_acquiring(self) -> None:
        # No timeout on the put: it completes when the acquisition ends, which a Pulses or
        # Charge preset puts off for as long as pulses are vetoed.
        status = self.acquire.set(True, timeout=None)
        try:
            # Started once Acquire_RBV says so, or already over (a short one, or a failure).
            async for acquiring in observe_value(
                self.acquiring, done_status=status, done_timeout=DEFAULT_TIMEOUT
            ):
                if acquiring:
                    break
        except Exception:
            status.task.cancel()
            raise
        self._status = status

    async def wait_for_idle(self) -> None:
        status, self._status = self._status, None
        if status is None:
            return
        try:
            await status
        except Exception as exc:
            message = await self.message.get_value()
            raise RuntimeError(
                f"{self.owner.name}: the acquisition failed: {message or exc}"
            ) from exc

    async def ensure_stopped(self) -> None:
        # The put completes once the IOC has stopped and written the acquisition's row.
        await self.acquire.set(False, timeout=WRITE_TIMEOUT)


@dataclass
class _Counters(ReadableDataProvider):
    signals: Sequence[SignalR]

    async def make_datakeys(self) -> dict[str, DataKey]:
        return await merge_gathered_dicts(s.describe() for s in self.signals)

    async def make_readings(self) -> dict[str, Reading]:
        return await merge_gathered_dicts(s.read(cached=False) for s in self.signals)


@dataclass
class EventCountersDataLogic(DetectorDataLogic):
    """What an acquisition counted, read once it is over: one value per event each."""

    signals: Sequence[SignalR]
    hinted: Sequence[SignalR]

    async def prepare_single(self, datakey_name: str) -> ReadableDataProvider:
        return _Counters(self.signals)

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [s.name for s in self.hinted]


class _AcquisitionRows(StreamResourceDataProvider):
    """One row of ``acquisitions`` per event, described as its 6 columns (``[6]``, not
    ophyd-async's ``[1, 6]`` number): NeXus links and the catalogue (tiled) read the file's
    dataset ``(acquisitions, 6)`` as one row per event."""

    async def make_datakeys(self, collections_per_event: int) -> dict[str, DataKey]:
        data_keys = await super().make_datakeys(collections_per_event)
        for key in data_keys.values():
            shape = key["shape"]
            key["shape"] = shape[1:] if shape[0] == 1 else shape
            key["dtype"] = "array"
        return data_keys


@dataclass
class EventFileDataLogic(DetectorDataLogic):
    """The event file: created where ``path_provider`` says when the detector is prepared
    (``Capture`` 1), closed when it is staged or unstaged. Each acquisition appends its row
    to ``acquisitions``, flushed before ``Acquire`` completes; a StreamResource names the
    dataset and a StreamDatum per event the row."""

    owner: Device
    path_provider: PathProvider
    file: EventFileIO
    written: SignalR[int]
    datakey_suffix: str = "-acquisition"

    async def prepare_unbounded(self, datakey_name: str) -> _AcquisitionRows:
        info = self.path_provider(datakey_name)
        name = info.filename
        if not name.lower().endswith(_SUFFIXES):
            name += ".h5"
        await self.file.directory.set(str(info.directory_path))
        await self.file.file_name.set(name)
        try:
            await self.file.capture.set(True, timeout=WRITE_TIMEOUT)
        except Exception as exc:
            path = PurePath(info.directory_path, name)
            message = f"{self.owner.name}: the IOC could not create {path}: {exc}"
            raise RuntimeError(message) from exc
        full = await self.file.full_file_name.get_value()
        resource = StreamResourceInfo(
            data_key=datakey_name,
            shape=(len(ACQUISITION_COLUMNS),),
            chunk_shape=(1, len(ACQUISITION_COLUMNS)),
            dtype_numpy="<i8",
            parameters={
                "dataset": ACQUISITIONS_DATASET,
                "columns": list(ACQUISITION_COLUMNS),
            },
        )
        return _AcquisitionRows(
            uri=f"{info.directory_uri}{PurePath(full).name}",
            resources=[resource],
            mimetype="application/x-hdf5",
            collections_written_signal=self.written,
        )

    async def stop(self) -> None:
        # Completes once the file is closed (after the IOC's writes queued before it).
        await self.file.capture.set(False, timeout=WRITE_TIMEOUT)


class EventDetector(StandardDetector):
    """A neutron detector bank and its beam monitor read out event by event (every neutron
    its pixel and arrival time), at ``PREFIX`` (``TOF:DET:``).

    Each trigger is one acquisition of whole source pulses. How long it counts is its preset:
    ``preset_mode`` Time (s), Pulses or Charge (µC of protons) and ``preset``; a trigger
    prepared with a ``livetime`` counts that many seconds, otherwise the preset set on the
    detector stays (``tof_count`` sets it for you). Pulses while a chopper is out of phase
    or the beam is off are vetoed: they bring no events and do not count toward the preset,
    so an acquisition of 20 pulses always holds 20 good pulses.

    Events do not travel in the documents: the IOC appends them to an HDF5 (NeXus) event
    file, created where ``path_provider`` says when the detector is prepared and closed when
    it is unstaged. Per event, ``<name>-acquisition`` refers to the acquisition's row of the
    file's ``/entry/acquisitions/rows`` (first and stop pulse row, detector
    event and monitor event of what it wrote), and readings give what it counted:
    ``pulses``, ``vetoed_pulses``, ``events`` and ``monitor_events`` (hinted) and ``charge``
    (µC). The configuration holds the preset mode and preset.
    """

    def __init__(self, prefix: str, path_provider: PathProvider, name: str = "") -> None:
        self.acquire = epics_signal_rw(bool, prefix + "Acquire")
        self.acquiring = epics_signal_r(bool, prefix + "Acquire_RBV")
        self.preset_mode = epics_signal_rw_rbv(PresetMode, prefix + "PresetMode")
        self.preset = epics_signal_rw_rbv(float, prefix + "Preset")
        self.pulses = epics_signal_r(int, prefix + "Pulses_RBV")
        self.vetoed_pulses = epics_signal_r(int, prefix + "VetoedPulses_RBV")
        self.events = epics_signal_r(float, prefix + "Events_RBV")
        self.monitor_events = epics_signal_r(float, prefix + "MonitorEvents_RBV")
        self.charge = epics_signal_r(float, prefix + "Charge_RBV")
        self.event_rate = epics_signal_r(float, prefix + "EventRate_RBV")
        self.status_message = epics_signal_r(str, prefix + "StatusMessage_RBV")
        self.file = EventFileIO(prefix)
        # Acquisitions written, updated at every batch of pulses the IOC processes (counted
        # or vetoed) as well: a trigger's exposure timeout then bounds the time between two
        # batches (the IOC is alive), not the whole acquisition, which a Pulses or Charge
        # preset prolongs for as long as pulses are vetoed (a beam dump, a chopper unlocked).
        self.acquisitions_written = derived_signal_r(
            _acquisitions,
            acquisitions=self.file.acquisitions_written,
            pulses=self.pulses,
            vetoed=self.vetoed_pulses,
        )
        self.add_detector_logics(
            EventTriggerLogic(self, self.preset_mode, self.preset),
            EventAcquireLogic(self, self.acquire, self.acquiring, self.status_message),
            EventFileDataLogic(self, path_provider, self.file, self.acquisitions_written),
            EventCountersDataLogic(
                signals=(
                    self.pulses,
                    self.vetoed_pulses,
                    self.events,
                    self.monitor_events,
                    self.charge,
                ),
                hinted=(self.events, self.monitor_events),
            ),
        )
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        """Stop the acquisition (its row is written), then close the file."""
        if self._acquire_logic is not None:
            await self._acquire_logic.ensure_stopped()
        await super().unstage()
