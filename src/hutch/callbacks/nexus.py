"""Write each bluesky run to a NeXus/HDF5 file while it is acquired.

Layout of one file, in NeXus base classes (``/entry`` is an NXentry)::

    /entry            title, start_time, end_time, duration, entry_identifier (run uid),
                      experiment_identifier (proposal), program_name (@version)
        operator      NXuser      the start document's operator (and user_N for its users)
        sample        NXsample    name and the other fields of the start document's sample
        instrument    NXinstrument
            name                  the beamline
            source    NXsource    facility metadata (name, type, probe); a device whose NeXus
                                  class is NXsource (a beam-current monitor) takes its place
            <device>  NXpositioner, NXdetector, NXsource, NXdisk_chopper...: one group per
                      device, its fields named as the base class names them (value,
                      target_value, soft_limit_min, count_time...), the rest after the data
                      key; primary-stream data as written (<field>, <field>_timestamps),
                      configuration as scalars, other streams' data linked in
        monitor       NXmonitor   beam monitors declared in the profile: data, count_time
        data          NXdata      the primary stream: links to every field, @signal, @axes,
                                  @AXISNAME_indices
        <stream>      NXdata      every other stream (e.g. baseline), its datasets held here
        notes         NXnote      the run's documents as JSON (start, stop, resources)
        run_status    NXnote      exit_status, reason, num_events (written at the stop)

Externally stored data (StreamResource documents, e.g. detector frames in HDF5 files written
by the detector) are HDF5 external links into those files, never copies.

The device groups' NeXus classes and field names come from the start document's ``devices``
metadata (``{name: {"nexus": {"class": ..., "fields": {...}, "monitors": [...]}}}``, filled
in by a hutch session from the beamline profile); without it, the plan's motors become
NXpositioner and anything else read NXdetector (NXinstrument admits no NXsensor).
"""

from __future__ import annotations

import json
import logging
import os
import re
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
_STRING = h5py.string_dtype()

# NeXus names of device fields, by base class: data key suffix (the key without the device
# name; "value" for the device's own key, e.g. a motor's readback) -> NeXus field name.
# Profiles extend or override these per device (``nexus.fields``).
BASE_CLASS_FIELDS: dict[str, dict[str, str]] = {
    "NXpositioner": {
        "value": "value",
        "user_readback": "value",
        "readback": "value",
        "user_setpoint": "target_value",
        "setpoint": "target_value",
        "low_limit_travel": "soft_limit_min",
        "high_limit_travel": "soft_limit_max",
        "velocity": "velocity",
        "acceleration_time": "acceleration_time",
        "acceleration": "acceleration_time",
    },
    "NXdetector": {"value": "data", "elapsed_time": "count_time", "acquire_time": "count_time"},
    "NXsource": {"current": "current"},
}


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


def nx_name(name: str) -> str:
    """A valid NeXus name for ``name``: letters, digits and '_', not starting with a digit."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", str(name))
    return name if name and not name[0].isdigit() else f"_{name}"


def _set_class(group: h5py.Group, nx_class: str) -> h5py.Group:
    group.attrs["NX_class"] = nx_class
    return group


def _free_name(group: h5py.Group, name: str) -> str:
    """``name``, or ``name_2``, ``name_3``... if ``group`` already holds that name."""
    candidate, n = name, 1
    while candidate in group:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


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
    name = template.format(**fields).replace("/", "_")
    return name if name not in ("", ".", "..") else f"_{name}"


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
    array = array.astype(dtype, copy=False)
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


def _scalar(value: Any) -> Any:
    """A value h5py stores as a scalar dataset: numbers as they are, anything else as text."""
    array = np.asarray(value)
    if array.dtype.kind in "biufc":
        return value
    return str(value) if array.ndim == 0 else _json(value)


def _write_fields(group: h5py.Group, fields: dict[str, Any]) -> None:
    """Metadata fields: ``{"value": v, "units": u}`` dicts become a field with units."""
    for key, value in fields.items():
        if value is None:
            continue
        units = None
        if isinstance(value, dict) and "value" in value:
            value, units = value["value"], value.get("units")
        dataset = group.create_dataset(_free_name(group, nx_name(key)), data=_scalar(value))
        if units:
            dataset.attrs["units"] = str(units)


class _Column:
    """The growing datasets of one data key: values and their timestamps.

    Their length, row shape and dtype are kept here: asking h5py costs an HDF5 call each.
    """

    def __init__(self, values: h5py.Dataset, timestamps: h5py.Dataset) -> None:
        self.values, self.timestamps = values, timestamps
        self.length = values.shape[0]
        self.row_shape: tuple[int, ...] = values.shape[1:]
        self.dtype = values.dtype

    def write(self, rows: list[int], values: list[Any], timestamps: list[float]) -> None:
        """Write one value per row index, growing the column as needed (never shrinking).

        A page of consecutive rows is one HDF5 write per dataset; a page with gaps, missing
        values or a value that does not fit is written row by row.
        """
        n = max(self.length, max(rows) + 1)
        if n > self.length:
            self.values.resize(n, axis=0)
            self.timestamps.resize(n, axis=0)
            self.length = n
        first, count = rows[0], len(rows)
        if rows == list(range(first, first + count)):
            self.timestamps[first : first + count] = timestamps
            block = self._block(values)
            if block is not None:
                self.values[first : first + count] = block
                return
        else:
            for i, timestamp in zip(rows, timestamps, strict=True):
                self.timestamps[i] = timestamp
        for i, value in zip(rows, values, strict=True):
            if value is None:  # key missing from this event: leave the fill value
                continue
            try:
                self.values[i] = _coerce(value, self.dtype, self.row_shape)
            except (TypeError, ValueError) as err:
                # Keep the row (fill value) so every column of the stream stays aligned.
                logger.warning("%s row %d not written: %s", self.values.name, i, err)

    def _block(self, values: list[Any]) -> np.ndarray | None:
        """All of a page's values as one array of the column's type, or None if one of them
        is missing or does not fit (then each row is written, or reported, on its own)."""
        if any(value is None for value in values):
            return None
        dtype, row_shape = self.dtype, self.row_shape
        try:
            if dtype != _STRING:
                block = np.asarray(values)
                if block.shape == (len(values), *row_shape) and not (
                    dtype.kind in "iub" and block.dtype.kind in "fc"
                ):
                    return block.astype(dtype, copy=False)
            return np.stack([_coerce(value, dtype, row_shape) for value in values])
        except (TypeError, ValueError):
            return None


@dataclass
class _Stream:
    """One event stream: its NXdata group, its columns, and rows written."""

    name: str
    nxdata: h5py.Group
    columns: dict[str, _Column] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # data key -> its name in nxdata
    owners: dict[str, str] = field(default_factory=dict)  # data key -> device (object) name
    descriptor: dict[str, Any] = field(default_factory=dict)  # the first one (hints)
    rows: int = 0


@dataclass
class _Device:
    """How one device is written: its group, NeXus class, field names and beam monitors."""

    group: h5py.Group
    nx_class: str
    fields: dict[str, str]
    monitors: list[str]

    def field_name(self, suffix: str) -> str:
        return nx_name(self.fields.get(suffix, suffix))


class _Run:
    """The open file of one run and everything needed to append to it."""

    def __init__(self, path: Path, start: dict[str, Any], program_version: str) -> None:
        self.path = path
        self.start = start
        self.streams: dict[str, _Stream] = {}
        self.devices: dict[str, _Device] = {}
        self.monitors: dict[str, str] = {}  # data key -> monitor group name
        self.stream_keys: dict[str, tuple[_Stream, str]] = {}  # STREAM: data key -> owner
        self.pending_resources: dict[str, dict[str, Any]] = {}  # by data key
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

    # -- start -------------------------------------------------------------------------

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

        self._write_users(start)
        self._write_sample(start.get("sample"))

        self.instrument = _set_class(entry.create_group("instrument"), "NXinstrument")
        self.instrument["name"] = str(start.get("beamline") or "unknown")
        self._write_source(start)

    def _write_users(self, start: dict[str, Any]) -> None:
        people: list[tuple[str, dict[str, Any]]] = []
        if start.get("operator"):
            people.append(("operator", {"name": start["operator"], "role": "operator"}))
        for i, user in enumerate(start.get("users") or (), 1):
            people.append((f"user_{i}", user if isinstance(user, dict) else {"name": user}))
        for group_name, fields in people:
            _write_fields(_set_class(self.entry.create_group(group_name), "NXuser"), fields)

    def _write_sample(self, sample: Any) -> None:
        if sample is None:
            return
        fields = dict(sample) if isinstance(sample, dict) else {"name": sample}
        _write_fields(_set_class(self.entry.create_group("sample"), "NXsample"), fields)

    def _write_source(self, start: dict[str, Any]) -> None:
        """The source: facility metadata, in the group of the device that is the source."""
        source = start.get("source")
        fields = dict(source) if isinstance(source, dict) else {}
        if start.get("facility") and "name" not in fields:
            fields["name"] = start["facility"]
        devices = start.get("devices") or {}
        source_device = next(
            (n for n, d in devices.items() if (d.get("nexus") or {}).get("class") == "NXsource"),
            None,
        )
        if source_device is not None:
            group = self._device(source_device).group
        elif fields:
            group = _set_class(self.instrument.create_group("source"), "NXsource")
        else:
            return
        _write_fields(group, fields)

    # -- devices -----------------------------------------------------------------------

    def _device(self, obj: str) -> _Device:
        device = self.devices.get(obj)
        if device is not None:
            return device
        spec = ((self.start.get("devices") or {}).get(obj) or {}).get("nexus") or {}
        nx_class = spec.get("class")
        if not nx_class:
            if obj in (self.start.get("motors") or ()):
                nx_class = "NXpositioner"
            elif obj in (self.start.get("detectors") or ()):
                nx_class = "NXdetector"
            else:
                nx_class = "NXdetector"  # read, as bluesky's detectors are
        name = nx_name(obj)
        if name in self.instrument and not isinstance(self.instrument[name], h5py.Group):
            name = f"{name}_device"  # e.g. a device called 'name'
        group = self.instrument.get(name) or _set_class(
            self.instrument.create_group(name), nx_class
        )
        fields = {**BASE_CLASS_FIELDS.get(nx_class, {}), **(spec.get("fields") or {})}
        description = ((self.start.get("devices") or {}).get(obj) or {}).get("description")
        if description and "description" not in group:
            group["description"] = str(description)
        device = self.devices[obj] = _Device(
            group, nx_class, fields, list(spec.get("monitors") or ())
        )
        return device

    @staticmethod
    def _suffix(obj: str, key: str) -> str:
        """The data key without its device's name: 'value' for the device's own key."""
        if key == obj:
            return "value"
        for sep in ("-", "_"):
            if key.startswith(obj + sep):
                return key[len(obj) + 1 :]
        return key

    # -- descriptors -------------------------------------------------------------------

    def _stream(self, doc: dict[str, Any]) -> _Stream:
        name = doc.get("name", PRIMARY)
        stream = self.streams.get(name)
        if stream is None:
            link = "data" if name == PRIMARY else nx_name(name)
            if link in self.entry:
                link = _free_name(self.entry, f"{link}_stream")
            nxdata = _set_class(self.entry.create_group(link), "NXdata")
            stream = self.streams[name] = _Stream(name, nxdata)
        return stream

    def add_descriptor(self, doc: dict[str, Any]) -> None:
        """Create the stream's datasets; a repeat descriptor (new configuration) extends them."""
        stream = self._stream(doc)
        data_keys: dict[str, dict[str, Any]] = doc.get("data_keys", {})
        owner = {key: obj for obj, keys in doc.get("object_keys", {}).items() for key in keys}
        for key, data_key in data_keys.items():
            if key in stream.columns or key in self.stream_keys:
                continue
            obj = owner.get(key, data_key.get("object_name", key))
            if str(data_key.get("external", "")).startswith("STREAM:"):
                # Never in events: the data are in a file a StreamResource document names.
                self.stream_keys[key] = (stream, obj)
                if key in self.pending_resources:
                    self._link_external(self.pending_resources.pop(key))
                continue
            stream.columns[key] = self._add_column(stream, obj, key, data_key)

        for obj, config in (doc.get("configuration") or {}).items():
            self._write_configuration(obj, config)

        stream.descriptor = stream.descriptor or doc
        if "signal" not in stream.nxdata.attrs:
            self._describe_nxdata(doc, stream)
        if stream.name == PRIMARY:
            self._add_monitors(stream)
        self.file.flush()

    def _add_column(self, stream: _Stream, obj: str, key: str, data_key: dict) -> _Column:
        """The datasets of one data key, with links making them visible where NeXus looks.

        Primary-stream data live in the device's group under NeXus field names and are linked
        into /entry/data; other streams' data live in their NXdata group and are linked into
        the device's group when it has no such field yet (a motor recorded only in the
        baseline still has its ``value``).
        """
        device = self._device(obj)
        field_name = device.field_name(self._suffix(obj, key))
        if stream.name == PRIMARY:
            home, name = device.group, field_name
            if isinstance(home.get(name, getlink=True), h5py.HardLink | h5py.SoftLink):
                del home[name]  # a link from the baseline: the scanned data take the name
                if f"{name}_timestamps" in home:
                    del home[f"{name}_timestamps"]
            name = _free_name(home, name)
        else:
            home, name = stream.nxdata, _free_name(stream.nxdata, nx_name(key))
        column = self._create_column(home, name, data_key, stream.rows)
        if stream.name == PRIMARY:
            name = _free_name(stream.nxdata, nx_name(key))
            stream.nxdata[name] = column.values
        elif field_name not in device.group:
            device.group[field_name] = column.values
            device.group[f"{field_name}_timestamps"] = column.timestamps
        stream.names[key] = name
        stream.owners[key] = obj
        return column

    @staticmethod
    def _create_column(home: h5py.Group, name: str, data_key: dict[str, Any], rows: int) -> _Column:
        dtype = _row_dtype(data_key)
        external = data_key.get("external")
        shape = () if external else tuple(int(n) for n in data_key.get("shape") or ())
        # Rows already written for the stream read as fill values (keeps columns aligned).
        values = home.create_dataset(
            name,
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
        timestamps = home.create_dataset(
            _free_name(home, f"{name}_timestamps"),
            shape=(rows,),
            maxshape=(None,),
            chunks=(1024,),
            dtype="float64",
            fillvalue=np.nan,
        )
        timestamps.attrs["units"] = "s"
        return _Column(values, timestamps)

    def _write_configuration(self, obj: str, config: dict[str, Any]) -> None:
        """Configuration readings as scalar fields of the device (the latest descriptor's)."""
        device = self._device(obj)
        data_keys = config.get("data_keys") or {}
        for key, value in (config.get("data") or {}).items():
            name = device.field_name(self._suffix(obj, key))
            existing = device.group.get(name)
            if isinstance(existing, h5py.Dataset) and existing.maxshape[:1] == (None,):
                name = f"{name}_configuration"  # a data column has the name already
            if name in device.group:  # a later descriptor re-reads configuration: keep latest
                del device.group[name]
            dataset = device.group.create_dataset(name, data=_scalar(value))
            units = (data_keys.get(key) or {}).get("units")
            if units:
                dataset.attrs["units"] = str(units)

    def _describe_nxdata(self, descriptor: dict[str, Any], stream: _Stream) -> None:
        """@signal (first hinted detector field), @axes and @AXISNAME_indices of a stream."""
        nxdata, name_of = stream.nxdata, stream.names
        # Numbers in events, or arrays in external files (StreamResource links).
        numeric = [
            key
            for key in name_of
            if key not in stream.columns or stream.columns[key].values.dtype.kind in "biuf"
        ]
        hints = descriptor.get("hints") or {}
        detectors = [d for d in self.start.get("detectors") or () if d in hints] or list(hints)
        hinted = [f for d in detectors for f in hints[d].get("fields", ()) if f in numeric]
        # A beam monitor (I0) is the signal only if nothing else is.
        hinted.sort(key=lambda k: self._is_monitor(stream, k))
        dimensions = (self.start.get("hints") or {}).get("dimensions") or ()
        axes = [
            name_of[f]
            for fields, stream_name in dimensions
            if stream_name == stream.name
            for f in fields
            if f in name_of
        ]
        signal = next((k for k in hinted + numeric if name_of[k] not in axes), None)
        if signal is None:
            return  # nothing plottable yet: a later descriptor of the stream may bring it
        nxdata.attrs["signal"] = name_of[signal]
        # One axis per dimension of the signal; a step scan's signal is 1-D, and every scanned
        # axis indexes that one dimension (a grid scan's motors both do). Without axes (a
        # count) there is no @axes: punx 0.3 rejects the "." placeholder.
        if axes:
            nxdata.attrs["axes"] = axes[:1]
        for axis in axes:
            nxdata.attrs[f"{axis}_indices"] = 0

    def _is_monitor(self, stream: _Stream, key: str) -> bool:
        obj = stream.owners.get(key, key)
        return self._suffix(obj, key) in self._device(obj).monitors

    def _add_monitors(self, stream: _Stream) -> None:
        """NXmonitor groups for the fields the profile declares as beam monitors."""
        for obj, device in self.devices.items():
            for suffix in device.monitors:
                key = next((k for k in stream.columns if self._suffix(obj, k) == suffix), None)
                if key is None or key in self.monitors:
                    continue
                name = "monitor" if "monitor" not in self.entry else f"monitor_{nx_name(suffix)}"
                monitor = _set_class(self.entry.create_group(name), "NXmonitor")
                monitor["data"] = stream.columns[key].values
                if "count_time" in device.group:
                    monitor["count_time"] = device.group["count_time"]
                self.monitors[key] = name

    # -- events and external data ------------------------------------------------------

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

    def add_document_note(self, kind: str, doc: dict[str, Any]) -> None:
        """Keep a resource/stream_resource document as JSON in /entry/notes."""
        notes = self.entry["notes"]
        name = nx_name(f"{kind}_{doc.get('uid', len(notes))}")
        if name not in notes:
            notes[name] = _json(doc)

    def add_stream_resource(self, doc: dict[str, Any]) -> None:
        """Link the externally written dataset a StreamResource names (no copy)."""
        self.add_document_note("stream_resource", doc)
        if doc.get("data_key") in self.stream_keys:
            self._link_external(doc)
        else:  # its descriptor has not come yet
            self.pending_resources[doc.get("data_key", "")] = doc
        self.file.flush()

    def _link_external(self, doc: dict[str, Any]) -> None:
        if doc.get("mimetype") not in ("application/x-hdf5", "application/x-hdf5-swmr", None):
            return  # not HDF5: the note in /entry/notes says where the data are
        uri = str(doc.get("uri") or "")
        target = Path(uri.removeprefix("file://localhost").removeprefix("file://"))
        if not target.is_absolute():
            target = Path(doc.get("root", "/")) / target
        dataset = (doc.get("parameters") or {}).get("dataset", "/entry/data/data")
        # Relative to this file's folder, so data and NeXus file can move together.
        filename = os.path.relpath(target, self.path.parent)
        stream, obj = self.stream_keys[doc["data_key"]]
        device = self._device(obj)
        name = _free_name(device.group, device.field_name(self._suffix(obj, doc["data_key"])))
        device.group[name] = h5py.ExternalLink(filename, dataset)
        name = _free_name(stream.nxdata, nx_name(doc["data_key"]))
        stream.nxdata[name] = h5py.ExternalLink(filename, dataset)
        stream.names[doc["data_key"]] = name
        stream.owners[doc["data_key"]] = obj
        if "signal" not in stream.nxdata.attrs and stream.descriptor:
            self._describe_nxdata(stream.descriptor, stream)

    # -- stop ----------------------------------------------------------------------------

    def finish(self, stop: dict[str, Any]) -> None:
        """Record how the run ended and close the file."""
        try:
            end = stop.get("time", 0.0)
            self.entry["end_time"] = _iso(end)
            # NX_INT, in seconds, as NXentry defines it.
            self.entry["duration"] = round(max(0.0, end - self.start.get("time", end)))
            self.entry["duration"].attrs["units"] = "s"
            self.entry["notes"]["stop"] = _json(stop)
            status = _set_class(self.entry.create_group("run_status"), "NXnote")
            status["description"] = "how the run ended (bluesky stop document)"
            status["exit_status"] = str(stop.get("exit_status", "unknown"))
            status["reason"] = str(stop.get("reason") or "")
            status["num_events"] = _json(stop.get("num_events") or {})
        finally:
            self.file.close()


class NexusWriter(DocumentRouter):
    """Save every run as a NeXus file in ``directory``, written event by event.

    Subscribe it to a RunEngine (``RE.subscribe(NexusWriter(path))``) or feed it a replay of a
    run's documents (``hutch export nexus``). The file follows the NeXus base classes (see the
    module's docstring for its layout). It is created at the start document, each event
    (page) is written (row seq_num - 1 of its stream) and flushed at once, so a crash loses
    nothing already acquired, and it is closed at the stop document whatever the exit
    status.
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
        run = self._run_of(doc)
        if run is not None:
            with self._guard(run, "resource"):
                run.add_document_note("resource", doc)

    def stream_resource(self, doc: dict[str, Any]) -> None:
        run = self._run_of(doc)
        if run is not None:
            with self._guard(run, "stream_resource"):
                run.add_stream_resource(doc)

    def _run_of(self, doc: dict[str, Any]) -> _Run | None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is None and len(self._runs) == 1:  # run_start is optional in these documents
            run = next(iter(self._runs.values()))
        return run

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
        """Raise a write error as an ``OSError`` naming the file: a full disk or a lost mount
        must fail the run loudly, not leave a file silently short of data."""
        try:
            yield
        except Exception as err:
            raise OSError(f"NexusWriter could not write {what} to {run.path}: {err}") from err
