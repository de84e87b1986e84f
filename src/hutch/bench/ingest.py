"""``hutch bench ingest``: events/s into the embedded catalogue through TiledWriter, beside
raw tiled-client appends of the same rows.

Each run is composed with event-model (start, a scalar step scan's descriptor, events, stop)
and fed to ``hutch.catalog.make_tiled_writer``'s writer directly, events one by one or packed
into event pages as the recorder packs them. The timing covers the events and the stop (the
writer sends its last batch and the stop metadata there), not the start and descriptor,
which create the run's containers before any event exists.

The baseline sends the same rows with nothing but tiled's client: the run and stream
containers created beforehand, then, timed, the appendable table created and the rows
appended in the same batches TiledWriter sends (pyarrow tables built in advance), one HTTP
request each. The ratio is what the writer's document handling costs on top of its requests.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow
from tiled.structures.core import Spec

from hutch.bench.nexus import scan_documents
from hutch.bench.rows import BenchRow
from hutch.catalog import (
    DEFAULT_BATCH_SIZE,
    ensure_catalog,
    make_tiled_writer,
    runs_container,
    stop_catalog,
)
from hutch.config import Settings
from hutch.services import free_port

__all__ = ["catalog_ingest"]

#: The beamline container the bench's runs go to.
BEAMLINE = "bench"


def _time_writer(container: Any, n: int, page: int, batch_size: int) -> float:
    writer = make_tiled_writer(container, batch_size=batch_size)
    run = scan_documents("scalar", n, page)
    for name, doc in run.head:
        writer(name, doc)
    start = time.perf_counter()
    for name, doc in [*run.body, *run.stop]:
        writer(name, doc)
    return time.perf_counter() - start


def _time_raw(container: Any, n: int, batch_size: int) -> float:
    """The same rows appended with tiled's client alone, ``batch_size`` per request."""
    run = scan_documents("scalar", n, 1)
    (_, start_doc), (_, descriptor) = run.head
    events = [event for _, event in run.body]
    # The containers TiledWriter would have made at start and descriptor (not timed).
    run_node = container.create_container(
        start_doc["uid"], metadata={"start": start_doc}, specs=[Spec("BlueskyRun", version="3.0")]
    )
    stream = run_node.create_container(
        "primary",
        metadata={
            k: v for k, v in descriptor.items() if k not in ("name", "object_keys", "run_start")
        },
        specs=[Spec("BlueskyEventStream", version="3.0"), Spec("composite")],
    )
    stream = getattr(stream, "base", stream)
    # TiledWriter's rows: seq_num, time, the data and ts_<key> timestamps.
    rows = [
        {
            "seq_num": e["seq_num"],
            "time": e["time"],
            **e["data"],
            **{f"ts_{k}": v for k, v in e["timestamps"].items()},
        }
        for e in events
    ]
    batches = [pyarrow.Table.from_pylist(rows[i : i + batch_size]) for i in range(0, n, batch_size)]
    start = time.perf_counter()
    table = stream.create_appendable_table(schema=batches[0].schema, key="internal")
    for batch in batches:
        table.append_partition(0, batch)
    return time.perf_counter() - start


def catalog_ingest(work_dir: Path, *, events: int = 1000, repeats: int = 2) -> list[BenchRow]:
    """Rows of the catalogue ingest table, against an embedded catalogue started in
    ``work_dir`` on a free port (and stopped after). Each row is the fastest of
    ``repeats`` runs of ``events`` events, the stacks alternating."""
    table = f"Catalogue ingest: TiledWriter vs raw tiled-client appends, {events} events a run"
    settings = Settings(data_dir=work_dir, catalog_port=free_port())
    cases = [
        # (name, batch size, page size; 0: raw tiled client)
        (f"raw tiled client, appends of {DEFAULT_BATCH_SIZE} rows", DEFAULT_BATCH_SIZE, 0),
        (
            f"TiledWriter, batch {DEFAULT_BATCH_SIZE} (hutch default), single events",
            DEFAULT_BATCH_SIZE,
            1,
        ),
        (
            f"TiledWriter, batch {DEFAULT_BATCH_SIZE} (hutch default), pages of 100",
            DEFAULT_BATCH_SIZE,
            100,
        ),
        ("raw tiled client, appends of 100 rows", 100, 0),
        ("TiledWriter, batch 100, pages of 100", 100, 100),
    ]
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    try:
        container = runs_container(ensure_catalog(settings), BEAMLINE)
        _time_writer(container, 20, 1, DEFAULT_BATCH_SIZE)  # warm up server and client
        for _ in range(repeats):
            for name, batch, page in cases:
                seconds[name].append(
                    _time_raw(container, events, batch)
                    if page == 0
                    else _time_writer(container, events, page, batch)
                )
    finally:
        stop_catalog(settings)
    rows = []
    baseline = cases[0][0]
    for name, _, page in cases:
        if page == 0:
            baseline = name
        best = min(seconds[name])
        rows.append(
            BenchRow(
                table,
                name,
                best / events * 1e3,
                baseline,
                events_per_s=events / best,
                ratio_of="rate",
                unit="ms/event",
            )
        )
    return rows
