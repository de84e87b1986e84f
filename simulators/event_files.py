"""NeXus event files as ESS writes them: pulses of neutron events appended to
``NXevent_data`` groups of an HDF5 file that readers may open while it grows (SWMR).

`EventFile` holds one file: `add_detector` (an ``NXdetector`` with its pixels' geometry and
its events), `add_monitor` (an ``NXmonitor`` with its events), then `EventStream.append` per
block of pulses. The layout, as scippnexus and ESS's reduction read it::

    /entry                              NXentry
      /instrument                       NXinstrument
        /<detector>                     NXdetector: detector_number, x/y/z_pixel_offset (m),
                                        distance (m), polar_angle (deg), depends_on
          /transformations              NXtransformations
          /events                       NXevent_data: event_id (int32), event_time_offset
                                        (int32 ns), event_time_zero (int64 ns since
                                        1970-01-01T00:00:00Z), event_index (int64)
        /<monitor>                      NXmonitor, its events the same way

Each append writes the events first, then the pulses that index them, flushing both: a
reader that sees a pulse finds its events. SWMR starts at the first append (or
`EventFile.start_swmr`); no group can be added after that, as HDF5's SWMR allows.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

__all__ = ["EPOCH", "EventFile", "EventStream", "bank_geometry"]

EPOCH = "1970-01-01T00:00:00Z"
"""``event_time_zero``'s ``offset`` attribute: its times count ns from the POSIX epoch."""


class _Bank(Protocol):
    detector_number: np.ndarray
    positions: np.ndarray
    two_theta: np.ndarray
    l2: np.ndarray


def bank_geometry(bank: _Bank) -> dict[str, np.ndarray]:
    """`EventFile.add_detector`'s geometry arguments for a detector bank (as
    ``neutrons.DetectorBank``): pixel ids, offsets from the sample, 2θ and distance."""
    return {
        "detector_number": bank.detector_number,
        "x_pixel_offset": bank.positions[:, 0],
        "y_pixel_offset": bank.positions[:, 1],
        "z_pixel_offset": bank.positions[:, 2],
        "polar_angle": bank.two_theta,
        "distance": bank.l2,
    }


class EventStream:
    """The ``NXevent_data`` group of one detector or monitor in an `EventFile`: `append`
    adds pulses and their events. ``events`` and ``pulses`` count what is written (and
    flushed) so far; ``path`` is the group's path in the file."""

    def __init__(self, owner: EventFile, group: Any, chunk_events: int, chunk_pulses: int) -> None:
        self._owner = owner
        self.path: str = group.name
        self.events = 0
        self.pulses = 0
        group.attrs["NX_class"] = "NXevent_data"

        def dataset(name: str, dtype: str, chunk: int, **attrs: str) -> Any:
            data = group.create_dataset(
                name, shape=(0,), maxshape=(None,), chunks=(chunk,), dtype=dtype
            )
            for key, value in attrs.items():
                data.attrs[key] = value
            return data

        self._event_id = dataset("event_id", "i4", chunk_events)
        self._offset = dataset("event_time_offset", "i4", chunk_events, units="ns")
        self._time_zero = dataset("event_time_zero", "i8", chunk_pulses, units="ns", offset=EPOCH)
        self._index = dataset("event_index", "i8", chunk_pulses)

    def append(
        self,
        event_id: np.ndarray,
        event_time_offset: np.ndarray,
        event_time_zero: np.ndarray,
        event_index: np.ndarray,
    ) -> None:
        """Append a block of pulses: their T0s (``event_time_zero``, ns since the epoch),
        each one's first event within this block (``event_index``, from 0) and the block's
        events (``event_id``, ``event_time_offset`` in ns after their pulse's T0). Flushed
        on return: a reader that sees the new pulses finds their events."""
        ids = np.asarray(event_id, dtype=np.int32).ravel()
        offsets = np.asarray(event_time_offset, dtype=np.int32).ravel()
        zeros = np.asarray(event_time_zero, dtype=np.int64).ravel()
        index = np.asarray(event_index, dtype=np.int64).ravel()
        if len(ids) != len(offsets) or len(zeros) != len(index):
            raise ValueError("one event_id per event_time_offset, one event_index per pulse")
        if len(index) and (index[0] != 0 or np.any(np.diff(index) < 0) or index[-1] > len(ids)):
            raise ValueError("event_index must rise from 0 and stay within the block's events")
        if len(ids) and not len(index):
            raise ValueError("events without a pulse to file them under")
        self._owner._before_append()
        for data, values, count in (
            (self._event_id, ids, self.events),
            (self._offset, offsets, self.events),
        ):
            data.resize((count + len(values),))
            data[count:] = values
            data.flush()
        # The pulses last: whoever sees them finds their events already there.
        for data, values in ((self._time_zero, zeros), (self._index, index + self.events)):
            data.resize((self.pulses + len(values),))
            data[self.pulses :] = values
            data.flush()
        self.events += len(ids)
        self.pulses += len(zeros)


class EventFile:
    """An HDF5 file of NeXus event data, for writing while others read it (SWMR).

    ``entry`` names the ``NXentry``; ``chunk_events`` and ``chunk_pulses`` are the datasets'
    chunk lengths. Use as a context manager, or `close` it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        entry: str = "entry",
        swmr: bool = True,
        chunk_events: int = 1 << 16,
        chunk_pulses: int = 1024,
    ) -> None:
        import h5py  # heavy; only a writing simulator needs it

        self.path = Path(path)
        self.swmr = swmr
        self.streams: dict[str, EventStream] = {}
        self._chunks = (chunk_events, chunk_pulses)
        self._writing = False
        self._file = h5py.File(self.path, "w", libver="latest")
        try:
            self._entry = self._file.create_group(entry)
            self._entry.attrs["NX_class"] = "NXentry"
            self._instrument = self._entry.create_group("instrument")
            self._instrument.attrs["NX_class"] = "NXinstrument"
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> EventFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _group(self, path: str | None, default: str, nx_class: str) -> Any:
        if self._writing:
            raise RuntimeError("the file is being written (SWMR): no new groups")
        group = self._file.create_group(path) if path else self._instrument.create_group(default)
        group.attrs["NX_class"] = nx_class
        return group

    def _position(self, group: Any, offset: tuple[float, float, float]) -> None:
        """``depends_on`` a translation by ``offset`` (m) from the origin, the sample."""
        transforms = group.create_group("transformations")
        transforms.attrs["NX_class"] = "NXtransformations"
        norm = float(np.linalg.norm(offset))
        vector = np.asarray(offset, dtype=np.float64) / norm if norm else np.array([0.0, 0, 1])
        location = transforms.create_dataset("location", data=norm)
        location.attrs.update(
            units="m", transformation_type="translation", vector=vector, depends_on="."
        )
        group.create_dataset("depends_on", data=location.name)

    def add_detector(
        self,
        name: str,
        *,
        detector_number: np.ndarray,
        x_pixel_offset: np.ndarray,
        y_pixel_offset: np.ndarray,
        z_pixel_offset: np.ndarray,
        polar_angle: np.ndarray | None = None,
        distance: np.ndarray | None = None,
        position: tuple[float, float, float] = (0.0, 0.0, 0.0),
        group: str | None = None,
        events: str = "events",
    ) -> EventStream:
        """An ``NXdetector`` (at ``group``, default ``/entry/instrument/<name>``) with its
        pixels (ids, offsets in m from the detector's ``position``, itself relative to the
        sample; optional 2θ in degrees and sample distance in m), and its event stream at
        ``<group>/<events>`` (ESS names it ``<name>_events``). `bank_geometry` gives the
        pixel arguments for a bank."""
        detector = self._group(group, name, "NXdetector")
        detector.create_dataset("detector_number", data=np.asarray(detector_number, np.int32))
        for key, values, units in (
            ("x_pixel_offset", x_pixel_offset, "m"),
            ("y_pixel_offset", y_pixel_offset, "m"),
            ("z_pixel_offset", z_pixel_offset, "m"),
            ("polar_angle", polar_angle, "deg"),
            ("distance", distance, "m"),
        ):
            if values is not None:
                field = detector.create_dataset(key, data=np.asarray(values, np.float64))
                field.attrs["units"] = units
        self._position(detector, position)
        return self._add_stream(detector, events)

    def add_monitor(
        self,
        name: str,
        *,
        position: tuple[float, float, float] | None = None,
        group: str | None = None,
        events: str = "events",
    ) -> EventStream:
        """An ``NXmonitor`` (at ``group``, default ``/entry/instrument/<name>``) with its event
        stream at ``<group>/<events>``; ``position`` (m, relative to the sample: upstream is
        negative z) if known."""
        monitor = self._group(group, name, "NXmonitor")
        if position is not None:
            self._position(monitor, position)
        return self._add_stream(monitor, events)

    def add_source(self, distance: float, *, name: str = "source") -> None:
        """The source (``NXsource``, ``distance`` m upstream of the sample) and the sample
        (``NXsample`` at the origin): what a reduction needs for L1."""
        source = self._group(None, name, "NXsource")
        source.create_dataset("probe", data="neutron")
        self._position(source, (0.0, 0.0, -float(distance)))
        sample = self._group(f"{self._entry.name}/sample", "sample", "NXsample")
        self._position(sample, (0.0, 0.0, 0.0))

    def _add_stream(self, group: Any, events: str) -> EventStream:
        stream = EventStream(self, group.create_group(events), *self._chunks)
        self.streams[group.name.rsplit("/", 1)[-1]] = stream
        return stream

    def start_swmr(self) -> None:
        """Let readers in (SWMR): no more groups from here on. The first append does it."""
        if not self._writing:
            self._writing = True
            if self.swmr:
                self._file.swmr_mode = True

    def _before_append(self) -> None:
        self.start_swmr()

    def flush(self) -> None:
        """Flush everything written to the file."""
        self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file.id.valid:
            self._file.close()
