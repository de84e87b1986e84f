"""The recorder's catalogue lane: bluesky-tiled-plugins' ``TiledWriter`` in a thread of its
own (see `_CatalogLane`), with the flush of held-back events that it lacks."""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from hutch.recorder import _SYNC, RecorderConfig
from hutch.recording_queue import CATALOG_IDLE_S, HIGH_WATER_MARK, coalesce, unpack

if TYPE_CHECKING:
    from hutch.recording import _Outbox

__all__ = ["CatalogLane"]

logger = logging.getLogger("hutch.recording")


def _write_held_events(run_writer: Any) -> None:
    """Write the events (and stream datums) that one run's writer of bluesky-tiled-plugins
    holds back for a batch, as its stop document would.

    Private API, kept to this function: bluesky-tiled-plugins 2.0.12's ``_RunWriter`` writes
    held rows only when ``batch_size`` of them have come or at the stop document, and
    ``TiledWriter`` has no public flush. These are the calls its ``stop()`` and
    ``stream_datum()`` make. A public ``TiledWriter.flush()`` upstream would replace this.
    """
    for stream, rows in run_writer._internal_data_cache.items():
        if rows:
            run_writer._write_internal_data(rows, desc_node=run_writer._desc_nodes[stream])
            rows.clear()  # only once written: a failed request is tried again later
    for resource in list(run_writer._external_data_cache):
        run_writer._write_external_data(run_writer._external_data_cache[resource])
        del run_writer._external_data_cache[resource]


class _Normalizer:
    """``TiledWriter``'s per-run document normalizer (bluesky-tiled-plugins' own
    ``RunNormalizer``, through its public ``normalizer`` hook) that also notes which per-run
    writer it feeds, so that the recorder can flush it."""

    def __init__(self, open_runs: dict[str, Any], **options: Any) -> None:
        from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer

        self._normalizer = RunNormalizer(**options)
        self._open_runs = open_runs
        self._run_writer: Any = None

    def subscribe(self, run_writer: Any, name: str = "all") -> int:
        self._run_writer = run_writer
        return self._normalizer.subscribe(run_writer, name)

    def __call__(self, name: str, doc: dict[str, Any]) -> Any:
        if name == "start":
            self._open_runs[doc["uid"]] = self._run_writer
        return self._normalizer(name, doc)


class _CatalogWriter:
    """bluesky-tiled-plugins' ``TiledWriter`` (``batch_size`` events per request) and
    ``flush()``, which writes the events it holds back for a batch."""

    def __init__(self, container: Any, batch_size: int) -> None:
        from bluesky_tiled_plugins import TiledWriter

        self._open_runs: dict[str, Any] = {}  # run uid -> its writer, until its stop
        self._writer = TiledWriter(
            container,
            batch_size=batch_size,
            normalizer=functools.partial(_Normalizer, self._open_runs),
        )

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            self._writer(name, doc)
        finally:
            if name == "stop":
                self._open_runs.pop(doc["run_start"], None)

    def flush(self) -> None:
        for run_writer in self._open_runs.values():
            _write_held_events(run_writer)


class CatalogLane:
    """The catalogue's writer, in a thread of its own with its own queue of what the session
    sent: its imports (the tiled client's, the longest) start first and alone, and then its
    HTTP requests, which mostly wait for the catalogue's server, overlap the NeXus and plot
    writers' imports and writing in the main thread, instead of following them.

    Like the main thread it packs queued events into pages, writes the events it holds back
    for a batch once it has been idle for ``CATALOG_IDLE_S``, at a sync and before it ends,
    and reports each run's stop, each sync and each error to the `_Outbox`.
    """

    def __init__(self, config: RecorderConfig, outbox: _Outbox) -> None:
        self.received: queue.Queue = queue.Queue(maxsize=HIGH_WATER_MARK)
        self.feeds = 1  # what puts into ``received`` and must end before it does
        self.imported = threading.Event()  # its CPU-bound start-up is over
        self.started = threading.Event()  # its writer is up (or failed: ``failure``)
        self.failure: BaseException | None = None
        self._outbox = outbox
        self._writer: _CatalogWriter | None = None
        self._thread = threading.Thread(
            target=self._run, args=(config,), name="catalog", daemon=True
        )
        self._thread.start()

    def finish(self, outbox: _Outbox) -> None:
        """Let it write what it has and end; deliver its last news (main thread)."""
        if self._thread.is_alive():
            self.received.put(None)
        while self._thread.is_alive():
            self._thread.join(0.05)
            outbox.deliver()
        outbox.deliver()

    def _run(self, config: RecorderConfig) -> None:
        try:
            from hutch.catalog import DEFAULT_BATCH_SIZE, CatalogConfig, runs_container

            self.imported.set()
            catalog = CatalogConfig(uri=config.catalog_uri or "", api_key=config.catalog_api_key)
            container = runs_container(catalog, config.beamline)
            self._writer = _CatalogWriter(container, DEFAULT_BATCH_SIZE)
        except BaseException as exc:  # the main thread raises it: the recorder cannot start
            self.failure = exc
            return
        finally:
            self.imported.set()
            self.started.set()
        self._write_received()

    def _write_received(self) -> None:
        held = False  # the writer may hold events back for a batch
        ended = 0
        while True:
            try:
                item = self.received.get(timeout=CATALOG_IDLE_S if held else None)
            except queue.Empty:  # idle for a while: get the held events into the catalogue
                self._flush()
                held = False
                continue
            items = [item]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self.received.get_nowait())
            messages, ends = unpack(items)
            for name, doc in coalesce(messages):
                if name == _SYNC:
                    self._flush()
                    held = False
                    self._outbox.post("synced", doc)
                    continue
                self._write(name, doc)
                held = held or name == "event_page"
            ended += ends
            if ended >= self.feeds:
                self._flush()
                return

    def _write(self, name: str, doc: Any) -> None:
        try:
            self._writer(name, doc)  # type: ignore[misc]
        except Exception as exc:
            logger.exception("catalog writer failed on a %s document", name)
            self._outbox.error(f"catalog writer, {name} document: {type(exc).__name__}: {exc}")
        if name == "stop":
            self._outbox.post("done", (doc.get("run_start"), {}))

    def _flush(self) -> None:
        """Get the events the writer holds back for a batch into the catalogue."""
        try:
            self._writer.flush()  # type: ignore[union-attr]
        except Exception as exc:
            logger.exception("catalog writer failed to write the events it held")
            self._outbox.error(f"catalog writer, held events: {type(exc).__name__}: {exc}")
