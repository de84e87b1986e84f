"""Write each bluesky run to a NeXus/HDF5 file while it is acquired.

Layout of one file (``/entry`` is an NXentry)::

    /entry
        title, start_time, end_time, entry_identifier, experiment_identifier, program_name
        notes        NXnote        start (and stop) document as JSON
        run_status   NXcollection  exit_status, reason
        sample       NXsample      name (when the start document names a sample)
        instrument   NXinstrument  primary stream: <object>/<data key>, <data key>_timestamps,
                                   <object>/configuration/<configuration key>
        <stream>     NXcollection  any other stream (e.g. baseline), same per-object layout
        external     NXcollection  resource / stream_resource documents (externally stored data)
        data         NXdata        hard links to the primary datasets, signal/axes attributes
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from event_model import DocumentRouter

import hutch

logger = logging.getLogger(__name__)

PRIMARY = "primary"
# /entry children a stream group must not replace.
_RESERVED_IN_ENTRY = frozenset(
    {
        "title",
        "start_time",
        "end_time",
        "entry_identifier",
        "experiment_identifier",
        "program_name",
        "notes",
        "run_status",
        "sample",
        "instrument",
        "data",
        "external",
    }
)
_STRING = h5py.string_dtype()


def _iso(timestamp: float) -> str:
    """ISO 8601 in the local timezone, with its UTC offset."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat()


def _json(doc: Any) -> str:
    # Documents may hold numpy scalars/arrays or tuples; keep the note readable rather than fail.
    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic | np.ndarray):
            return obj.tolist()
        return repr(obj)

    return json.dumps(doc, default=default, sort_keys=True)


def _h5_name(name: str) -> str:
    """A usable HDF5 link name ('/' separates groups, '.' alone means 'here')."""
    name = str(name).replace("/", "_")
    return name if name not in ("", ".") else f"_{name}"


def _set_class(group: h5py.Group, nx_class: str) -> h5py.Group:
    group.attrs["NX_class"] = nx_class
    return group


def render_filename(template: str, start: dict[str, Any]) -> str:
    """Fill a filename template from a start document: beamline, scan_id, uid, uid8, plan_name."""
    uid = str(start.get("uid", ""))
    fields = {
        "beamline": start.get("beamline") or "run",
        "scan_id": start.get("scan_id") or 0,
        "uid": uid,
        "uid8": uid[:8],
        "plan_name": start.get("plan_name", "run"),
    }
    return _h5_name(template.format(**fields))


def unclobbered(path: Path) -> Path:
    """``path`` itself, or ``stem_1.ext``, ``stem_2.ext``... if it already exists."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def _row_dtype(data_key: dict[str, Any]) -> np.dtype:
    """HDF5 element type for one data key (event-model dtype, refined by dtype_numpy for arrays)."""
    if data_key.get("external"):
        return _STRING  # unfilled external data: the event holds a datum id
    kind = data_key.get("dtype")
    if kind == "integer":
        return np.dtype("int64")
    if kind == "boolean":
        return np.dtype("bool")
    if kind == "string":
        return _STRING
    if kind == "array" and data_key.get("dtype_numpy"):
        try:
            dtype = np.dtype(data_key["dtype_numpy"])
        except TypeError:
            return np.dtype("float64")
        return _STRING if dtype.kind in "OSU" else dtype
    return np.dtype("float64")


def _fill_value(dtype: np.dtype) -> Any:
    """What a row holds until written: NaN for floats so a gap cannot pass for a reading."""
    return np.nan if dtype.kind in "fc" else None


def _coerce(value: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """One row of ``shape`` and ``dtype``; shorter/longer waveforms are padded/cut to fit."""
    if dtype == _STRING:
        if shape:
            return np.asarray(value, dtype=object).astype(str).astype(object)
        return np.asarray(value if isinstance(value, str) else str(value), dtype=object)
    array = np.asarray(value)
    if dtype.kind in "iub" and array.dtype.kind in "fc" and np.any(array != np.round(array)):
        # Integer-typed key (dtype guessed from an initial integer value) now reads a fraction.
        raise ValueError(f"{value!r} would be truncated to {dtype}")
    array = array.astype(dtype)
    if array.shape == shape:
        return array
    if array.ndim != len(shape):
        raise ValueError(f"shape {array.shape} does not fit declared shape {shape}")
    row = np.full(shape, _fill_value(dtype) or 0, dtype=dtype)
    overlap = tuple(slice(0, min(a, b)) for a, b in zip(array.shape, shape, strict=True))
    row[overlap] = array[overlap]
    return row


def _chunks(dtype: np.dtype, shape: tuple[int, ...]) -> tuple[int, ...]:
    """About 1 MiB per chunk along the event axis; one frame per chunk for big frames."""
    row = tuple(max(1, n) for n in shape)
    row_bytes = max(1, dtype.itemsize) * int(np.prod(row))
    return (max(1, min(1024, 2**20 // row_bytes)), *row)


@dataclass
class _Column:
    """The growing datasets of one data key: values and their timestamps."""

    values: h5py.Dataset
    timestamps: h5py.Dataset

    def write(self, rows: list[int], values: list[Any], timestamps: list[float]) -> None:
        """Write one value per row index, growing the column as needed (never shrinking)."""
        n = max(self.values.shape[0], max(rows) + 1)
        self.values.resize(n, axis=0)
        self.timestamps.resize(n, axis=0)
        row_shape = self.values.shape[1:]
        for i, value, timestamp in zip(rows, values, timestamps, strict=True):
            self.timestamps[i] = timestamp
            if value is None:  # key missing from this event: leave the fill value
                continue
            try:
                self.values[i] = _coerce(value, self.values.dtype, row_shape)
            except (TypeError, ValueError) as err:
                # Keep the row (fill value) so every column of the stream stays aligned.
                logger.warning("%s row %d not written: %s", self.values.name, i, err)


@dataclass
class _Stream:
    """One event stream: the group holding its objects, its columns, and rows written."""

    name: str
    group: h5py.Group
    columns: dict[str, _Column] = field(default_factory=dict)
    rows: int = 0


class _Run:
    """The open file of one run and everything needed to append to it."""

    def __init__(self, path: Path, start: dict[str, Any], program_version: str) -> None:
        self.path = path
        self.start = start
        self.streams: dict[str, _Stream] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # locking=False: users may open the file read-only mid-scan; it is consistent after
            # every flush, which is when their view is meaningful anyway.
            self.file = h5py.File(path, "w", locking=False)
        except OSError as err:
            raise OSError(f"NexusWriter cannot create {path}: {err}") from err
        try:
            self._write_start(start, program_version)
        except BaseException:
            self.file.close()
            raise
        self.file.flush()

    def _write_start(self, start: dict[str, Any], program_version: str) -> None:
        self.file.attrs.update(
            NX_class="NXroot",
            default="entry",
            file_name=str(self.path),
            file_time=_iso(start.get("time", 0.0)),
            creator="hutch",
            creator_version=program_version,
        )
        entry = self.entry = _set_class(self.file.create_group("entry"), "NXentry")
        entry.attrs["default"] = "data"
        title = start.get("title") or f"{start.get('plan_name', 'run')} {start.get('scan_id', '')}"
        entry["title"] = str(title).strip()
        entry["start_time"] = _iso(start.get("time", 0.0))
        entry["entry_identifier"] = str(start.get("uid", ""))
        if start.get("proposal") is not None:
            entry["experiment_identifier"] = str(start["proposal"])
        entry["program_name"] = "hutch"
        entry["program_name"].attrs["version"] = program_version

        notes = _set_class(entry.create_group("notes"), "NXnote")
        notes["type"] = "application/json"
        notes["description"] = "bluesky run documents"
        notes["start"] = _json(start)

        sample = start.get("sample")
        name = sample.get("name") if isinstance(sample, dict) else sample
        if name is not None:
            _set_class(entry.create_group("sample"), "NXsample")["name"] = str(name)

        instrument = _set_class(entry.create_group("instrument"), "NXinstrument")
        instrument["name"] = str(start.get("beamline") or "unknown")

    def _stream(self, name: str) -> _Stream:
        stream = self.streams.get(name)
        if stream is None:
            if name == PRIMARY:
                group = self.entry["instrument"]
            else:
                link = _h5_name(name)
                link = f"stream_{link}" if link in _RESERVED_IN_ENTRY else link
                group = _set_class(self.entry.create_group(link), "NXcollection")
            stream = self.streams[name] = _Stream(name, group)
        return stream

    def _object_class(self, obj: str) -> str:
        if obj in (self.start.get("motors") or ()):
            return "NXpositioner"
        if obj in (self.start.get("detectors") or ()):
            return "NXdetector"
        return "NXcollection"

    def _object_group(self, stream: _Stream, obj: str) -> h5py.Group:
        name = _h5_name(obj)
        if isinstance(stream.group.get(name), h5py.Dataset):
            name = f"{name}_device"  # e.g. a device called 'name' in /entry/instrument
        if name in stream.group:
            return stream.group[name]
        return _set_class(stream.group.create_group(name), self._object_class(obj))

    def add_descriptor(self, doc: dict[str, Any]) -> None:
        """Create the stream's datasets; a repeat descriptor (new configuration) extends them."""
        stream = self._stream(doc.get("name", PRIMARY))
        data_keys: dict[str, dict[str, Any]] = doc.get("data_keys", {})
        owner = {key: obj for obj, keys in doc.get("object_keys", {}).items() for key in keys}
        for key, data_key in data_keys.items():
            if key in stream.columns or str(data_key.get("external", "")).startswith("STREAM:"):
                # STREAM: data never appears in events; it is described by stream_resource docs.
                continue
            group = self._object_group(stream, owner.get(key, data_key.get("object_name", key)))
            stream.columns[key] = self._create_column(group, key, data_key, stream.rows)

        for obj, config in (doc.get("configuration") or {}).items():
            self._write_configuration(self._object_group(stream, obj), config)

        if stream.name == PRIMARY and "data" not in self.entry:
            self._create_nxdata(doc, stream)
        self.file.flush()

    @staticmethod
    def _create_column(group: h5py.Group, key: str, data_key: dict[str, Any], rows: int) -> _Column:
        dtype = _row_dtype(data_key)
        external = data_key.get("external")
        shape = () if external else tuple(int(n) for n in data_key.get("shape") or ())
        # Rows already written for the stream read as fill values (keeps columns aligned).
        values = group.create_dataset(
            _h5_name(key),
            shape=(rows, *shape),
            maxshape=(None, *shape),
            chunks=_chunks(dtype, shape),
            dtype=dtype,
            fillvalue=_fill_value(dtype),
        )
        if data_key.get("units"):
            values.attrs["units"] = str(data_key["units"])
        if data_key.get("source"):
            values.attrs["source"] = str(data_key["source"])
        if external:
            values.attrs["external"] = str(external)
        timestamps = group.create_dataset(
            _h5_name(f"{key}_timestamps"),
            shape=(rows,),
            maxshape=(None,),
            chunks=(1024,),
            dtype="float64",
            fillvalue=np.nan,
        )
        timestamps.attrs["units"] = "s"
        return _Column(values, timestamps)

    @staticmethod
    def _write_configuration(device: h5py.Group, config: dict[str, Any]) -> None:
        group = device.get("configuration")
        if group is None:
            group = _set_class(device.create_group("configuration"), "NXcollection")
        data_keys = config.get("data_keys") or {}
        for key, value in (config.get("data") or {}).items():
            name = _h5_name(key)
            if name in group:  # a later descriptor re-reads configuration: keep the latest
                del group[name]
            array = np.asarray(value)
            data = (
                value
                if array.dtype.kind in "biufc"
                else (str(value) if array.ndim == 0 else _json(value))
            )
            dataset = group.create_dataset(name, data=data)
            units = (data_keys.get(key) or {}).get("units")
            if units:
                dataset.attrs["units"] = str(units)

    def _create_nxdata(self, descriptor: dict[str, Any], stream: _Stream) -> None:
        nxdata = _set_class(self.entry.create_group("data"), "NXdata")
        for key, column in stream.columns.items():
            nxdata[_h5_name(key)] = column.values  # hard link: one copy of the data

        hints = descriptor.get("hints") or {}
        detectors = [d for d in self.start.get("detectors") or () if d in hints] or list(hints)
        numeric = [
            f
            for d in detectors
            for f in hints[d].get("fields", ())
            if f in stream.columns and stream.columns[f].values.dtype.kind in "biuf"
        ]
        if numeric:
            nxdata.attrs["signal"] = _h5_name(numeric[0])

        dimensions = (self.start.get("hints") or {}).get("dimensions") or ()
        axes = [
            _h5_name(f)
            for fields, stream_name in dimensions
            if stream_name == PRIMARY
            for f in fields
            if f in stream.columns
        ]
        nxdata.attrs["axes"] = axes or "."
        for axis in axes:
            nxdata.attrs[f"{axis}_indices"] = 0

    def add_events(self, stream: _Stream, page: dict[str, Any]) -> None:
        """Write an event page's rows to every column of the stream and flush.

        Row i holds the event with seq_num i + 1: when the RunEngine rewinds (a suspender
        tripped mid-point) it takes the point again with the same seq_num, and the new reading
        replaces the superseded one, as the stop document's num_events counts it once.
        """
        seq_nums = page.get("seq_num") or []
        n = len(seq_nums or page.get("time") or ())
        if n == 0:
            return
        rows = [s - 1 for s in seq_nums] if seq_nums else list(range(stream.rows, stream.rows + n))
        data, timestamps = page.get("data", {}), page.get("timestamps", {})
        for key, column in stream.columns.items():
            column.write(
                rows,
                list(data.get(key, [None] * n)),
                list(timestamps.get(key, [np.nan] * n)),
            )
        stream.rows = max(stream.rows, max(rows) + 1)
        self.file.flush()

    def add_external(self, kind: str, doc: dict[str, Any]) -> None:
        """Keep a resource/stream_resource document: it says where externally stored data is."""
        group = self.entry.get("external")
        if group is None:
            group = _set_class(self.entry.create_group("external"), "NXcollection")
        name = _h5_name(f"{kind}_{doc.get('uid', len(group))}")
        if name not in group:
            group[name] = _json(doc)
            self.file.flush()

    def finish(self, stop: dict[str, Any]) -> None:
        """Record how the run ended and close the file."""
        try:
            self.entry["end_time"] = _iso(stop.get("time", 0.0))
            self.entry["notes"]["stop"] = _json(stop)
            status = _set_class(self.entry.create_group("run_status"), "NXcollection")
            status["exit_status"] = str(stop.get("exit_status", "unknown"))
            status["reason"] = str(stop.get("reason") or "")
            status["num_events"] = _json(stop.get("num_events") or {})
        finally:
            self.file.close()


class NexusWriter(DocumentRouter):
    """Save every run as a NeXus file in ``directory``, written event by event.

    Subscribe it to a RunEngine (``RE.subscribe(NexusWriter(path))``) or feed it a replay of a
    run's documents. The file is created at the start document, each event (page) is written
    (row seq_num - 1 of its stream) and flushed at once, so a crash loses nothing already
    acquired, and it is closed at the stop document whatever the exit status.
    ``path_for(uid)`` and ``last_path`` tell where a run went.

    ``filename_template`` may use ``beamline`` (start['beamline'], else 'run'), ``scan_id``,
    ``uid``, ``uid8`` (first 8 characters of the uid) and ``plan_name``. An existing file is
    never overwritten: a ``_1``, ``_2``... suffix is added instead.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        filename_template: str = "{beamline}_{scan_id:05d}_{uid8}.nxs",
        program_version: str = hutch.__version__,
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.filename_template = filename_template
        self.program_version = program_version
        self.last_path: Path | None = None
        self._paths: dict[str, Path] = {}
        self._runs: dict[str, _Run] = {}  # by run uid: bluesky may interleave runs
        self._streams: dict[str, tuple[_Run, _Stream]] = {}  # by descriptor uid

    def path_for(self, uid: str) -> Path | None:
        """The file written for run ``uid``, if this writer saw that run start."""
        return self._paths.get(uid)

    def start(self, doc: dict[str, Any]) -> None:
        path = unclobbered(self.directory / render_filename(self.filename_template, doc))
        run = _Run(path, doc, self.program_version)  # raises naming the path if it cannot
        self._runs[doc["uid"]] = run
        self._paths[doc["uid"]] = self.last_path = path

    def descriptor(self, doc: dict[str, Any]) -> None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is None:  # a replay that begins mid-run, or a run whose file failed
            return
        with self._guard(run, "descriptor"):
            run.add_descriptor(doc)
            self._streams[doc["uid"]] = (run, run.streams[doc.get("name", PRIMARY)])

    def event_page(self, doc: dict[str, Any]) -> None:
        # Single events reach here too: DocumentRouter packs them into one-row pages.
        target = self._streams.get(doc.get("descriptor", ""))
        if target is not None:
            run, stream = target
            with self._guard(run, "event"):
                run.add_events(stream, doc)

    def resource(self, doc: dict[str, Any]) -> None:
        self._external("resource", doc)

    def stream_resource(self, doc: dict[str, Any]) -> None:
        self._external("stream_resource", doc)

    def _external(self, kind: str, doc: dict[str, Any]) -> None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is None and len(self._runs) == 1:  # run_start is optional in these documents
            run = next(iter(self._runs.values()))
        if run is not None:
            with self._guard(run, kind):
                run.add_external(kind, doc)

    def stop(self, doc: dict[str, Any]) -> None:
        run = self._runs.pop(doc.get("run_start", ""), None)
        if run is None:
            return
        self._streams = {k: v for k, v in self._streams.items() if v[0] is not run}
        with self._guard(run, "stop"):
            run.finish(doc)

    def close(self) -> None:
        """Close the files of runs still open, as they are: without a stop document a run
        stays marked not closed (no end_time, no run_status), with every event so far."""
        for run in self._runs.values():
            with self._guard(run, "close"):
                run.file.close()
        self._runs.clear()
        self._streams.clear()

    @staticmethod
    @contextmanager
    def _guard(run: _Run, what: str) -> Iterator[None]:
        """Log, don't raise: a file-writing problem must not abort the user's scan."""
        try:
            yield
        except Exception:
            logger.exception("NexusWriter: could not write %s to %s", what, run.path)
