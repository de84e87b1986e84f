"""``hutch bench nexus``: NeXus writer throughput beside raw h5py appends of the same data.

``NexusWriter`` is fed a run's documents directly, as the recorder process feeds it: start,
descriptor, then the events one by one, or packed into event pages with event-model's
``pack_event_page`` as the recorder packs events that queued while it was busy, then stop.
Only the events and the stop are timed (the file is created and closed in both stacks
alike; the stop closes it).

The baseline is the same file written with nothing but h5py: every dataset the writer grew
row by row, created with the writer's own dtype, chunking, compression and fill value, and
filled with the very values the writer wrote (read back from its file), one resize + write
per dataset and one flush per event or page, as the writer flushes. It is derived from the
writer's output rather than from a layout written down here because the writer's layout is
its own business (and changes); what the ratio measures is what the writer costs on top of
appending the same bytes to the same datasets on the same disk.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from event_model import compose_run, pack_event_page

from hutch.bench.rows import BenchRow, BenchTableError
from hutch.callbacks.nexus import NexusWriter

__all__ = ["NEXUS_GOAL", "ScanDocuments", "nexus_throughput", "scan_documents"]

#: The writer should append at least this fraction of raw h5py's events/s (issue #4).
NEXUS_GOAL = 0.8

#: A 512 x 512 uint16 frame, as a small area detector returns it in each event.
FRAME_SHAPE = (512, 512)

Documents = list[tuple[str, dict[str, Any]]]


@dataclass
class ScanDocuments:
    """One run's documents, split where the timing starts and ends (the catalogue ingest
    bench feeds the same runs)."""

    head: Documents  # start, descriptor: creates the file and its datasets (not timed)
    body: Documents  # events or event pages (timed)
    stop: Documents  # the stop document: closes the file (timed)
    events: int


def _scalar_stream(n: int) -> tuple[dict[str, Any], Callable[[int], dict[str, Any]]]:
    """A step scan's primary stream: a motor (readback, setpoint) and a scaler's channels."""
    data_keys = {
        "sample_x": _key("number", "DEMO:SAMPLE:X.RBV", "sample_x", units="mm", precision=4),
        "sample_x-user_setpoint": _key("number", "DEMO:SAMPLE:X.VAL", "sample_x", units="mm"),
        "det-I0": _key("integer", "DEMO:SCALER1.S2", "det"),
        "det-diode": _key("integer", "DEMO:SCALER1.S3", "det"),
        "det-elapsed_time": _key("number", "DEMO:SCALER1.T", "det", units="s"),
        "ring_current": _key("number", "DEMO:SR:CURRENT", "ring_current", units="mA"),
    }
    rng = np.random.default_rng(4)
    diode = rng.poisson(2000, n)

    def data(i: int) -> dict[str, Any]:
        x = -5.0 + 10.0 * i / max(n - 1, 1)
        return {
            "sample_x": round(x, 4),
            "sample_x-user_setpoint": x,
            "det-I0": 100_000 + i % 7,
            "det-diode": int(diode[i]),
            "det-elapsed_time": 0.1,
            "ring_current": 300.0 - i * 1e-4,
        }

    return data_keys, data


def _frame_stream(n: int) -> tuple[dict[str, Any], Callable[[int], dict[str, Any]]]:
    """An area detector's primary stream: a 512 x 512 uint16 frame per event, and the motor."""
    data_keys = {
        "sample_x": _key("number", "DEMO:SAMPLE:X.RBV", "sample_x", units="mm", precision=4),
        "cam-image": {
            **_key("array", "DEMO:CAM1:image1:ArrayData", "cam"),
            "shape": list(FRAME_SHAPE),
            "dtype_numpy": "<u2",
        },
    }
    # A few distinct noisy frames, cycled: realistic bytes without holding n frames twice.
    rng = np.random.default_rng(4)
    frames = [rng.poisson(120, FRAME_SHAPE).astype(np.uint16) for _ in range(8)]

    def data(i: int) -> dict[str, Any]:
        return {"sample_x": -5.0 + 10.0 * i / max(n - 1, 1), "cam-image": frames[i % 8]}

    return data_keys, data


def _key(dtype: str, source: str, obj: str, **extra: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [], "source": source, "object_name": obj, **extra}


def scan_documents(stream: str, n: int, page: int) -> ScanDocuments:
    """A run of ``n`` events of ``stream`` ('scalar' or 'frames') composed with event-model,
    the events fed one by one (``page`` 1) or packed ``page`` at a time as the recorder does."""
    data_keys, data = (_scalar_stream if stream == "scalar" else _frame_stream)(n)
    objects: dict[str, list[str]] = {}
    for key, data_key in data_keys.items():
        objects.setdefault(data_key["object_name"], []).append(key)
    detectors = [obj for obj in objects if obj not in ("sample_x", "ring_current")]
    bundle = compose_run(
        metadata={
            "plan_name": "scan",
            "plan_type": "generator",
            "scan_id": 1,
            "beamline": "bench",
            "proposal": "20250001",
            "sample": "LaB6 standard",
            "detectors": detectors,
            "motors": ["sample_x"],
            "num_points": n,
            "hints": {"dimensions": [[["sample_x"], "primary"]]},
        }
    )
    descriptor = bundle.compose_descriptor(
        name="primary",
        data_keys=data_keys,
        object_keys=objects,
        hints={obj: {"fields": keys} for obj, keys in objects.items() if obj in detectors},
    )
    events = []
    for i in range(n):
        values = data(i)
        now = time.time()
        events.append(
            descriptor.compose_event(
                data=values,
                timestamps=dict.fromkeys(values, now),
                seq_num=i + 1,
                # Validating a frame's event is ~1 ms of jsonschema; the descriptor and the
                # first event are validated, the rest are built by the same code.
                validate=i == 0,
            )
        )
    if page == 1:
        body: Documents = [("event", event) for event in events]
    else:
        body = [("event_page", pack_event_page(*events[i : i + page])) for i in range(0, n, page)]
    return ScanDocuments(
        head=[("start", bundle.start_doc), ("descriptor", descriptor.descriptor_doc)],
        body=body,
        stop=[("stop", bundle.compose_stop())],
        events=n,
    )


@dataclass
class _Dataset:
    """A dataset the writer appended to per event, as the raw baseline recreates it."""

    name: str
    rows: np.ndarray  # everything the writer wrote to it, read back from its file
    create: dict[str, Any]  # h5py create_dataset keywords: dtype, chunks, filters, fill value


def _appended_datasets(path: Path, events: int) -> list[_Dataset]:
    """The datasets of ``path`` that grow along their first axis and hold one row per event,
    each with how it was created and what it holds (each HDF5 object once, however many
    links lead to it)."""
    found: list[_Dataset] = []

    def visit(name: str, obj: Any) -> None:
        if (
            isinstance(obj, h5py.Dataset)
            and obj.maxshape
            and obj.maxshape[0] is None
            and obj.shape[0] == events
        ):
            found.append(
                _Dataset(
                    name=name,
                    rows=obj[()],
                    create={
                        "dtype": obj.dtype,
                        "chunks": obj.chunks,
                        "compression": obj.compression,
                        "compression_opts": obj.compression_opts,
                        "shuffle": obj.shuffle,
                        "fletcher32": obj.fletcher32,
                        "scaleoffset": obj.scaleoffset,
                        "fillvalue": obj.fillvalue,
                        "maxshape": obj.maxshape,
                    },
                )
            )

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def _payload_bytes(datasets: list[_Dataset]) -> int:
    """Bytes appended per run: every row of every appended dataset (a string counts its
    encoded length)."""
    total = 0
    for ds in datasets:
        if ds.rows.dtype.kind == "O":
            total += sum(len(v if isinstance(v, bytes) else str(v).encode()) for v in ds.rows)
        else:
            total += ds.rows.nbytes
    return total


def _spans(events: int, page: int) -> list[tuple[int, int]]:
    return [(i, min(i + page, events)) for i in range(0, events, page)]


def _time_writer(run: ScanDocuments, directory: Path) -> tuple[float, Path]:
    """Seconds the writer took for the run's events and stop, and the file it wrote."""
    directory.mkdir()
    writer = NexusWriter(directory)
    for name, doc in run.head:
        writer(name, doc)
    start = time.perf_counter()
    for name, doc in run.body:
        writer(name, doc)
    for name, doc in run.stop:
        writer(name, doc)
    seconds = time.perf_counter() - start
    files = [p for p in directory.rglob("*") if p.is_file()]
    if len(files) != 1:
        raise BenchTableError(f"NexusWriter wrote {len(files)} files for one run in {directory}")
    return seconds, files[0]


def _time_raw(datasets: list[_Dataset], events: int, page: int, path: Path) -> float:
    """Seconds raw h5py takes to append ``datasets``' rows ``page`` at a time: per event or
    page, resize and write each dataset, then flush the file; close it at the end."""
    with h5py.File(path, "w", locking=False) as f:
        targets = []
        for ds in datasets:
            create = {k: v for k, v in ds.create.items() if v is not None}
            targets.append(
                (f.create_dataset(ds.name, shape=(0, *ds.rows.shape[1:]), **create), ds.rows)
            )
        f.flush()
        start = time.perf_counter()
        for a, b in _spans(events, page):
            for target, rows in targets:
                target.resize(b, axis=0)
                if b - a == 1:
                    target[a] = rows[a]
                else:
                    target[a:b] = rows[a:b]
            f.flush()
    return time.perf_counter() - start


def _cases(events: int, frames: int) -> Iterator[tuple[str, str, int, int]]:
    """(label, stream, events, page size) of each pair of rows."""
    yield f"scalar step scan (6 keys), {events} single events", "scalar", events, 1
    yield f"scalar step scan (6 keys), {events} events in pages of 100", "scalar", events, 100
    frame = "x".join(map(str, FRAME_SHAPE))
    yield f"{frame} uint16 frames, {frames} single events", "frames", frames, 1
    yield f"{frame} uint16 frames, {frames} events in pages of 10", "frames", frames, 10


def nexus_throughput(
    work_dir: Path, *, events: int = 1000, frames: int = 100, repeats: int = 2
) -> list[BenchRow]:
    """Rows of the NeXus throughput table, written in a temporary directory in ``work_dir``.

    For each case (a scalar stream of ``events`` events, a frame stream of ``frames``
    events; single events and pages), the writer and raw h5py each write the run
    ``repeats`` times (frames: three times as often), alternately, and the fastest of each
    is kept (other load on the machine only adds time).
    """
    table = f"NeXus writer throughput: NexusWriter vs raw h5py appends (goal >= {NEXUS_GOAL:.0%})"
    rows: list[BenchRow] = []
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nexus-", dir=work_dir) as tmp:
        for label, stream, n, page in _cases(events, frames):
            run = scan_documents(stream, n, page)
            writer_s, raw_s, payload = [], [], 0
            # Frame runs take a tenth of a second but vary most (the page cache writing back
            # ~50 MB a run): three times the repeats.
            for attempt in range(repeats if stream == "scalar" else 3 * repeats):
                seconds, path = _time_writer(run, Path(tmp, f"writer-{attempt}"))
                writer_s.append(seconds)
                if attempt == 0:
                    datasets = _appended_datasets(path, n)
                    if not datasets:
                        raise BenchTableError(
                            f"NexusWriter's file {path.name} has no dataset of {n} rows "
                            f"growing along its first axis: nothing to compare raw h5py with"
                        )
                    payload = _payload_bytes(datasets)
                shutil.rmtree(path.parent)
                raw = Path(tmp, f"raw-{attempt}.h5")
                raw_s.append(_time_raw(datasets, n, page, raw))
                raw.unlink()
            raw_name = f"raw h5py, {label}"
            for name, seconds in ((raw_name, min(raw_s)), (f"NexusWriter, {label}", min(writer_s))):
                rows.append(
                    BenchRow(
                        table,
                        name,
                        seconds / n * 1e3,
                        raw_name,
                        events_per_s=n / seconds,
                        mb_per_s=payload / seconds / 1e6,
                        ratio_of="rate",
                        min_ratio=None if name == raw_name else NEXUS_GOAL,
                        unit="ms/event",
                    )
                )
    return rows
