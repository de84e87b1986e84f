"""Write each bluesky run to a NeXus/HDF5 file while it is acquired.

Layout of one file, in NeXus base classes (``/entry`` is an NXentry)::

    /entry            title, start_time, end_time, duration, entry_identifier (run uid),
                      experiment_identifier (proposal), program_name (@version)
        operator      NXuser      the start document's operator (and user_N for its users)
        sample        NXsample    name and the other fields of the start document's sample
        process       NXprocess   a derived run's reduction: program, version, date, raw_uid,
                                  parameters (NXnote), raw (NXnote: the raw file), raw_data
                                  (link to the raw file's /entry/data); the reduction's fields
        instrument    NXinstrument
            name                  the beamline
            source    NXsource    facility metadata (name, type, probe); a device whose NeXus
                                  class is NXsource (a beam-current monitor) takes its place
            <device>  NXpositioner, NXdetector, NXsource, NXdisk_chopper...: one group per
                      device, its fields named as the base class names them (value,
                      target_value, soft_limit_min, count_time...), the rest after the data
                      key; primary-stream data as written (<field>, <field>_timestamps),
                      configuration as scalars, other streams' data linked in; an
                      NXdetector without ``data`` names its main field in @signal
        monitor       NXmonitor   beam monitors declared in the profile: data, count_time
        data          NXdata      the primary stream: links to the signal, the scanned axes
                                  and every field of one value per point, @signal, @axes,
                                  @AXISNAME_indices (@coordinates for a 2-D scan)
        map           NXdata      a 2-D scan's signal on its grid, at the end of the run
        <stream>      NXdata      every other stream (e.g. baseline), its datasets held here
        notes         NXnote      the run's documents as JSON (start, stop, resources)
        run_status    NXnote      exit_status, reason, num_events (written at the stop)

Externally stored data (StreamResource documents, e.g. detector frames in HDF5 files written
by the detector) are HDF5 external links into those files, never copies. How NXdata groups
are laid out for readers: `hutch.callbacks.nexus_layout`.

The device groups' NeXus classes and field names come from the start document's ``devices``
metadata (``{name: {"nexus": {"class": ..., "fields": {...}, "monitors": [...]}}}``, filled
in by a hutch session from the beamline profile); without it, the plan's motors become
NXpositioner and anything else read NXdetector (NXinstrument admits no NXsensor).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from event_model import DocumentRouter

import hutch
from hutch.callbacks.nexus_fields import nx_name
from hutch.callbacks.nexus_layout import PRIMARY, Stream
from hutch.callbacks.nexus_run import BASE_CLASS_FIELDS, Run

__all__ = [
    "BASE_CLASS_FIELDS",
    "PRIMARY",
    "NexusWriter",
    "nx_name",
    "render_filename",
    "unclobbered",
]


def render_filename(template: str, start: dict[str, Any]) -> str:
    """Fill a filename template from a start document: beamline, scan_id, uid, uid8, plan_name.

    A derived run (a reduction's, which has no scan id of its own) takes its raw run's scan
    id, so that its files sit beside the raw run's."""
    uid = str(start.get("uid", ""))
    raw_scan_id = (start.get("reduction") or {}).get("raw_scan_id")
    fields = {
        "beamline": start.get("beamline") or "run",
        "scan_id": start.get("scan_id") or raw_scan_id or 0,
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


class NexusWriter(DocumentRouter):
    """Save every run as a NeXus file in ``directory``, written event by event.

    Subscribe it to a RunEngine (``RE.subscribe(NexusWriter(path))``) or feed it a replay of a
    run's documents (``hutch export nexus``). The file follows the NeXus base classes (see the
    module's docstring for its layout). It is created at the start document, each event
    (page) is written (row seq_num - 1 of its stream) and flushed at once, so a crash loses
    nothing already acquired, and it is closed at the stop document whatever the exit
    status.
    ``path_for(uid)`` and ``last_path`` tell where a run went.

    A derived run (`hutch.reduction`: ``raw_uid`` and ``reduction`` in its start document)
    records its reduction in ``/entry/process`` and refers to its raw run's file.

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
        self._runs: dict[str, Run] = {}  # by run uid: bluesky may interleave runs
        self._streams: dict[str, tuple[Run, Stream]] = {}  # by descriptor uid

    def path_for(self, uid: str) -> Path | None:
        """The file written for run ``uid``, if this writer saw that run start."""
        return self._paths.get(uid)

    def start(self, doc: dict[str, Any]) -> None:
        path = unclobbered(self.directory / render_filename(self.filename_template, doc))
        run = Run(path, doc, self.program_version, self._raw_path(doc))  # raises naming path
        self._runs[doc["uid"]] = run
        self._paths[doc["uid"]] = self.last_path = path

    def _raw_path(self, start: dict[str, Any]) -> Path | None:
        """The raw run's file of a derived run: the one this writer wrote, else where it
        would have written it (same folder and template)."""
        reduction = start.get("reduction")
        reduction = reduction if isinstance(reduction, dict) else {}
        raw_uid = start.get("raw_uid") or reduction.get("raw_uid")
        if not raw_uid:
            return None
        if raw_uid in self._paths:
            return self._paths[raw_uid]
        raw = {
            **start,
            "uid": raw_uid,
            "plan_name": reduction.get("raw_plan_name") or "run",
            "scan_id": reduction.get("raw_scan_id", start.get("scan_id")),
        }
        return self.directory / render_filename(self.filename_template, raw)

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

    def _run_of(self, doc: dict[str, Any]) -> Run | None:
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
    def _guard(run: Run, what: str) -> Iterator[None]:
        """Raise a write error as an ``OSError`` naming the file: a full disk or a lost mount
        must fail the run loudly, not leave a file silently short of data."""
        try:
            yield
        except Exception as err:
            raise OSError(f"NexusWriter could not write {what} to {run.path}: {err}") from err
