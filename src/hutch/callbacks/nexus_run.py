"""The NeXus file of one run while it is written (`hutch.callbacks.nexus.NexusWriter`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hutch.callbacks.nexus_fields import (
    Column,
    create_column,
    free_name,
    iso,
    nx_name,
    scalar,
    set_class,
    to_json,
    write_fields,
)
from hutch.callbacks.nexus_layout import (
    PRIMARY,
    Member,
    Stream,
    describe,
    detector_signal,
    external_row_shape,
    is_numeric,
    write_map,
)
from hutch.callbacks.nexus_process import write_process

__all__ = ["BASE_CLASS_FIELDS", "Run"]

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
    "NXsource": {
        "current": "current",
        "power": "power",
        "pulse_rate": "frequency",
        "pulse_length": "pulse_width",
    },
    "NXdisk_chopper": {
        "speed": "rotation_speed",
        "speed_setpoint": "rotation_speed_setpoint",
        "total_delay": "delay",
        "delay": "delay_setpoint",
        "slit_edges_deg": "slit_edges",
    },
}


@dataclass
class _Device:
    """How one device is written: its group, NeXus class, field names and beam monitors."""

    group: h5py.Group
    nx_class: str
    fields: dict[str, str]
    monitors: list[str]

    def field_name(self, suffix: str) -> str:
        return nx_name(self.fields.get(suffix, suffix))


class Run:
    """The open file of one run and everything needed to append to it.

    ``raw_path``: for a derived run, where its raw run's NeXus file is (or would be)."""

    def __init__(
        self,
        path: Path,
        start: dict[str, Any],
        program_version: str,
        raw_path: Path | None = None,
    ) -> None:
        self.path = path
        self.start = start
        self.streams: dict[str, Stream] = {}
        self.devices: dict[str, _Device] = {}
        self.monitors: dict[str, str] = {}  # data key -> monitor group name
        # STREAM: data keys -> (stream, owner, data key), until a StreamResource links them
        self.stream_keys: dict[str, tuple[Stream, str, dict[str, Any]]] = {}
        self.pending_resources: dict[str, dict[str, Any]] = {}  # by data key
        self.process: h5py.Group | None = None  # a derived run's NXprocess
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # locking=False: users may open the file read-only mid-scan; it is consistent after
            # every flush, which is when their view is meaningful anyway.
            self.file = h5py.File(path, "w", locking=False)
        except OSError as err:
            raise OSError(f"NexusWriter cannot create {path}: {err}") from err
        try:
            self._write_start(start, program_version, raw_path)
        except BaseException:
            self.file.close()
            raise
        self.file.flush()

    # -- start -------------------------------------------------------------------------

    def _write_start(
        self, start: dict[str, Any], program_version: str, raw_path: Path | None
    ) -> None:
        self.file.attrs.update(
            NX_class="NXroot",
            default="entry",
            file_name=str(self.path),
            file_time=iso(start.get("time", 0.0)),
            creator="hutch",
            creator_version=program_version,
        )
        entry = self.entry = set_class(self.file.create_group("entry"), "NXentry")
        entry.attrs["default"] = "data"
        title = start.get("title") or f"{start.get('plan_name', 'run')} {start.get('scan_id', '')}"
        entry["title"] = str(title).strip()
        entry["start_time"] = iso(start.get("time", 0.0))
        entry["entry_identifier"] = str(start.get("uid", ""))
        if start.get("proposal") is not None:
            entry["experiment_identifier"] = str(start["proposal"])
        entry["program_name"] = "hutch"
        entry["program_name"].attrs["version"] = program_version

        notes = set_class(entry.create_group("notes"), "NXnote")
        notes["type"] = "application/json"
        notes["description"] = "bluesky run documents"
        notes["start"] = to_json(start)

        self._write_users(start)
        self._write_sample(start.get("sample"))
        self.process = write_process(entry, start, self.path, raw_path)

        self.instrument = set_class(entry.create_group("instrument"), "NXinstrument")
        self.instrument["name"] = str(start.get("beamline") or "unknown")
        self._write_source(start)

    def _write_users(self, start: dict[str, Any]) -> None:
        people: list[tuple[str, dict[str, Any]]] = []
        if start.get("operator"):
            people.append(("operator", {"name": start["operator"], "role": "operator"}))
        for i, user in enumerate(start.get("users") or (), 1):
            people.append((f"user_{i}", user if isinstance(user, dict) else {"name": user}))
        for group_name, fields in people:
            write_fields(set_class(self.entry.create_group(group_name), "NXuser"), fields)

    def _write_sample(self, sample: Any) -> None:
        if sample is None:
            return
        fields = dict(sample) if isinstance(sample, dict) else {"name": sample}
        write_fields(set_class(self.entry.create_group("sample"), "NXsample"), fields)

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
            group = set_class(self.instrument.create_group("source"), "NXsource")
        else:
            return
        write_fields(group, fields)

    # -- devices -----------------------------------------------------------------------

    def _device(self, obj: str) -> _Device:
        device = self.devices.get(obj)
        if device is not None:
            return device
        if self.process is not None and obj == self.start["reduction"].get("name"):
            # A derived run's own fields are the process's results, not an instrument's.
            device = self.devices[obj] = _Device(self.process, "NXprocess", {}, [])
            return device
        spec = ((self.start.get("devices") or {}).get(obj) or {}).get("nexus") or {}
        # Without the profile's word: the plan's motors, and anything else read (as bluesky's
        # detectors are) a detector.
        motors = self.start.get("motors") or ()
        nx_class = spec.get("class") or ("NXpositioner" if obj in motors else "NXdetector")
        name = nx_name(obj)
        if name in self.instrument and not isinstance(self.instrument[name], h5py.Group):
            name = f"{name}_device"  # e.g. a device called 'name'
        group = self.instrument.get(name) or set_class(self.instrument.create_group(name), nx_class)
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

    def _stream(self, doc: dict[str, Any]) -> Stream:
        name = doc.get("name", PRIMARY)
        stream = self.streams.get(name)
        if stream is None:
            link = "data" if name == PRIMARY else nx_name(name)
            if link in self.entry:
                link = free_name(self.entry, f"{link}_stream")
            nxdata = set_class(self.entry.create_group(link), "NXdata")
            stream = self.streams[name] = Stream(name, nxdata, holds_data=name != PRIMARY)
        return stream

    def add_descriptor(self, doc: dict[str, Any]) -> None:
        """Create the stream's datasets; a repeat descriptor (new configuration) extends them."""
        stream = self._stream(doc)
        data_keys: dict[str, dict[str, Any]] = doc.get("data_keys", {})
        owner = {key: obj for obj, keys in doc.get("object_keys", {}).items() for key in keys}
        stream.descriptor = stream.descriptor or doc
        for key, data_key in data_keys.items():
            if key in stream.members or key in self.stream_keys:
                continue
            obj = owner.get(key, data_key.get("object_name", key))
            if str(data_key.get("external", "")).startswith("STREAM:"):
                # Never in events: the data are in a file a StreamResource document names.
                self.stream_keys[key] = (stream, obj, data_key)
                if key in self.pending_resources:
                    self._link_external(self.pending_resources.pop(key))
                continue
            self._add_column(stream, obj, key, data_key)

        for obj, config in (doc.get("configuration") or {}).items():
            self._write_configuration(obj, config)

        self._describe(stream)
        if stream.name == PRIMARY:
            self._add_monitors(stream)
        self.file.flush()

    def _add_column(self, stream: Stream, obj: str, key: str, data_key: dict) -> Column:
        """The datasets of one data key, with links making them visible where NeXus looks.

        Primary-stream data live in the device's group under NeXus field names and the
        NXdata group shows them (`describe`); other streams' data live in their NXdata group
        and are linked into the device's group when it has no such field yet (a motor
        recorded only in the baseline still has its ``value``).
        """
        device = self._device(obj)
        field_name = device.field_name(self._suffix(obj, key))
        if stream.holds_data:
            home, name = stream.nxdata, stream.free_name(key)
        else:
            home, name = device.group, field_name
            if isinstance(home.get(name, getlink=True), h5py.HardLink | h5py.SoftLink):
                del home[name]  # a link from the baseline: the scanned data take the name
                if f"{name}_timestamps" in home:
                    del home[f"{name}_timestamps"]
            name = free_name(home, name)
        column = create_column(home, name, data_key, stream.rows)
        if stream.holds_data and field_name not in device.group:
            device.group[field_name] = column.values
            device.group[f"{field_name}_timestamps"] = column.timestamps
        stream.members[key] = Member(
            key=key,
            name=name if stream.holds_data else stream.free_name(key),
            home=home,
            home_name=name,
            target=column.values,
            row_shape=column.row_shape,
            numeric=column.dtype.kind in "biuf",
            column=column,
        )
        stream.owners[key] = obj
        return column

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
            dataset = device.group.create_dataset(name, data=scalar(value))
            units = (data_keys.get(key) or {}).get("units")
            if units:
                dataset.attrs["units"] = str(units)

    def _describe(self, stream: Stream) -> None:
        """Signal and axes of the stream's NXdata group and of its detectors' groups."""
        monitor = self._monitor_test(stream)
        describe(self.start, stream, monitor)
        if stream.holds_data:
            return
        hints = stream.descriptor.get("hints") or {}
        for obj in dict.fromkeys(stream.owners.values()):
            device = self._device(obj)
            if device.nx_class != "NXdetector" or "data" in device.group:
                continue  # scippnexus takes an NXdetector's ``data`` as its signal
            members = [
                m
                for k, m in stream.members.items()
                if stream.owners[k] == obj and m.home is device.group
            ]
            signal = detector_signal(members, hints.get(obj, {}).get("fields", []), monitor)
            if signal is not None and device.group.attrs.get("signal") != signal:
                device.group.attrs["signal"] = signal

    def _monitor_test(self, stream: Stream) -> Callable[[str], bool]:
        """Whether a data key of ``stream`` is a beam monitor the profile declares."""

        def monitor(key: str) -> bool:
            obj = stream.owners.get(key, key)
            return self._suffix(obj, key) in self._device(obj).monitors

        return monitor

    def _add_monitors(self, stream: Stream) -> None:
        """NXmonitor groups for the fields the profile declares as beam monitors."""
        columns = stream.columns
        for obj, device in self.devices.items():
            for suffix in device.monitors:
                key = next((k for k in columns if self._suffix(obj, k) == suffix), None)
                if key is None or key in self.monitors:
                    continue
                name = "monitor" if "monitor" not in self.entry else f"monitor_{nx_name(suffix)}"
                monitor = set_class(self.entry.create_group(name), "NXmonitor")
                monitor["data"] = columns[key].values
                if "count_time" in device.group:
                    monitor["count_time"] = device.group["count_time"]
                self.monitors[key] = name

    # -- events and external data ------------------------------------------------------

    def add_events(self, stream: Stream, page: dict[str, Any]) -> None:
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
        changed = False
        for key, column in stream.columns.items():
            changed |= column.write(
                rows,
                list(data.get(key, [None] * n)),
                list(timestamps.get(key, [np.nan] * n)),
            )
        stream.rows = max(stream.rows, max(rows) + 1)
        if changed:  # an axis given with every point: shown once, or no longer
            self._describe(stream)
        self.file.flush()

    def add_document_note(self, kind: str, doc: dict[str, Any]) -> None:
        """Keep a resource/stream_resource document as JSON in /entry/notes."""
        notes = self.entry["notes"]
        name = nx_name(f"{kind}_{doc.get('uid', len(notes))}")
        if name not in notes:
            notes[name] = to_json(doc)

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
        key = doc["data_key"]
        stream, obj, data_key = self.stream_keys[key]
        device = self._device(obj)
        home_name = free_name(device.group, device.field_name(self._suffix(obj, key)))
        link = h5py.ExternalLink(filename, dataset)
        device.group[home_name] = link
        if key in stream.members:
            return  # a second file for the same key: linked beside the first one
        name = stream.free_name(key)
        if stream.holds_data:
            stream.nxdata[name] = link
        stream.members[key] = Member(
            key=key,
            name=name,
            home=device.group,
            home_name=home_name,
            target=link,
            row_shape=external_row_shape(data_key),
            numeric=is_numeric(data_key),
        )
        stream.owners[key] = obj
        self._describe(stream)

    # -- stop ----------------------------------------------------------------------------

    def finish(self, stop: dict[str, Any]) -> None:
        """Record how the run ended, write a 2-D scan's map, and close the file."""
        try:
            end = stop.get("time", 0.0)
            self.entry["end_time"] = iso(end)
            # NX_INT, in seconds, as NXentry defines it.
            self.entry["duration"] = round(max(0.0, end - self.start.get("time", end)))
            self.entry["duration"].attrs["units"] = "s"
            self.entry["notes"]["stop"] = to_json(stop)
            status = set_class(self.entry.create_group("run_status"), "NXnote")
            status["description"] = "how the run ended (bluesky stop document)"
            status["exit_status"] = str(stop.get("exit_status", "unknown"))
            status["reason"] = str(stop.get("reason") or "")
            status["num_events"] = to_json(stop.get("num_events") or {})
            if PRIMARY in self.streams:
                name = write_map(self.entry, self.start, self.streams[PRIMARY])
                if name is not None:  # what a reader shows first: the map
                    self.entry.attrs["default"] = name
        finally:
            self.file.close()
