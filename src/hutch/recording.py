"""The recorder process, ``python -m hutch.recording``, started by `hutch.recorder.Recorder`
(whose docstring says what it guarantees): it receives a session's documents and writes them
to NeXus, PNG and the catalogue.

Three threads: one receives and acknowledges each message (it needs only 0MQ, so a session
can send from the recorder's first moments); the catalogue's lane (`_CatalogLane`) imports
and starts the tiled client first, then writes; the main thread starts the NeXus and plot
writers once the catalogue's imports are done, so that their imports and writing overlap
the catalogue's HTTP requests, which mostly wait for its server, and it alone sends the
session its replies (`_Outbox`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import logging
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from hutch.recorder import _CLOSE, _POLL_MS, _SYNC, RecorderConfig, _Wiring

__all__ = ["main"]

logger = logging.getLogger(__name__)

# Messages the recorder holds (received and acknowledged) before it stops acknowledging:
# minutes of a fast scan.
_HIGH_WATER_MARK = 100_000
# The catalogue's held-back events are written once the recorder has had nothing to do for
# this long: never while a fast scan keeps it busy (each request costs ~50 ms of the tiled
# server, so a request per event would load the machine that acquires), at once after it.
_CATALOG_IDLE_S = 0.1
# The receiving thread acknowledges while a writer runs Python code; a switch interval
# shorter than CPython's 5 ms default lets it take the GIL sooner.
_SWITCH_INTERVAL_S = 0.0005


# What a lane other than the main thread's posts for the main thread to send, and the item
# that wakes the main thread to send it.
_WAKE = object()


class _Outbox:
    """The replies to the session. 0MQ sockets are single-threaded: only the main thread
    sends; the catalogue's lane posts its news (`post`) and wakes it. A run is reported
    written ('done') and a sync answered only once every lane has got there, and a lane's
    errors go out before that report, in the order it posted them."""

    def __init__(self, replies: zmq.Socket, received: queue.Queue) -> None:
        self.lanes = 1
        self._replies = replies
        self._received = received
        self._main = threading.get_ident()
        self._posted: queue.SimpleQueue = queue.SimpleQueue()
        self._runs: dict[str | None, tuple[int, dict[str, str]]] = {}
        self._syncs: dict[Any, int] = {}

    def send(self, **message: Any) -> None:
        if threading.get_ident() != self._main:
            self.post("send", message)
            return
        self._replies.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def post(self, kind: str, value: Any) -> None:
        """From another lane: queue news for the main thread, and wake it."""
        self._posted.put((kind, value))
        with contextlib.suppress(queue.Full):  # full: it is busy, and sends it soon anyway
            self._received.put_nowait(_WAKE)

    def error(self, message: str) -> None:
        self.send(error=message)

    def run_written(self, run: str | None, outputs: dict[str, str]) -> None:
        """A lane has written the stop of ``run``: 'done' once every lane has."""
        count, merged = self._runs.pop(run, (0, {}))
        count, merged = count + 1, {**merged, **outputs}
        if count < self.lanes:
            self._runs[run] = (count, merged)
        else:
            self.send(done=run, outputs=merged)

    def synced(self, token: Any) -> None:
        """A lane has written everything before the sync ``token``: 'synced' once every
        lane has."""
        count = self._syncs.pop(token, 0) + 1
        if count < self.lanes:
            self._syncs[token] = count
        else:
            self.send(synced=token)

    def deliver(self) -> None:
        """Send what the other lanes posted, in order (main thread)."""
        while True:
            try:
                kind, value = self._posted.get_nowait()
            except queue.Empty:
                return
            if kind == "send":
                self.send(**value)
            elif kind == "done":
                self.run_written(*value)
            elif kind == "synced":
                self.synced(value)


class _ReplyLog(logging.Handler):
    """Sends the writers' warnings and errors back to the session, which logs them too."""

    def __init__(self, outbox: _Outbox) -> None:
        super().__init__(logging.WARNING)
        self._outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f": {record.exc_info[1]}"
        self._outbox.send(log=(record.levelno, record.name, message))


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


class _Writers:
    """The recorder's file writers, NeXus and plot, in the main thread (the catalogue's has
    a lane of its own, `_CatalogLane`). Each document goes to every one of them: one failing
    does not keep it from the others, and its error goes back to the session."""

    def __init__(self, config: RecorderConfig, outbox: _Outbox) -> None:
        # Imported here: the session side of this module must stay light.
        from hutch.callbacks import NexusWriter, PlotSaver

        self._outbox = outbox
        self.writers: dict[str, Callable[[str, dict], Any]] = {}
        if config.nexus_dir is not None:
            self.writers["nexus"] = NexusWriter(config.nexus_dir)
        if config.plot_dir is not None:
            self.writers["png"] = PlotSaver(config.plot_dir)
        self._runs_of_streams: dict[str, str] = {}  # descriptor uid -> run uid
        # HDF5 cannot close a file after a failed write: the close fails half done and the
        # library then crashes the process at its next call, for any file (h5py issues
        # #914, #2160). So the NeXus file of a run that failed a write is never closed:
        # the writer gets no stop for it, the file keeps what was flushed before the
        # failure, and the process ends without finalizers (os._exit). A failure at a start
        # or stop document, where the writer opens or closes a file, may have been such a
        # close: NeXus writing ends for this process, the error (holding the file's objects,
        # which must not be released either) is kept, and every later run fails loudly.
        self.nexus_unclosed: set[str] = set()  # runs ("*": a run not known)
        self.nexus_off: str | None = None
        self._kept: list[BaseException] = []

    @property
    def clean_exit(self) -> bool:
        """Whether the process may run its finalizers (no HDF5 file was left unclosable)."""
        return not self.nexus_unclosed and self.nexus_off is None

    def write(self, name: str, doc: Any) -> None:
        run = self._run_of(name, doc)
        for kind, writer in self.writers.items():
            if kind == "nexus" and not self._nexus_may_take(name, run):
                continue
            try:
                writer(name, doc)
            except Exception as exc:
                logger.exception("%s writer failed on a %s document", kind, name)
                self._error(f"{kind} writer, {name} document: {type(exc).__name__}: {exc}")
                if kind == "nexus" and name in ("start", "stop"):
                    self.nexus_off = f"{type(exc).__name__}: {exc}"
                    self._kept.append(exc)
                elif kind == "nexus":
                    self.nexus_unclosed.add(run or "*")
        if name == "stop":
            self._runs_of_streams = {
                s: r for s, r in self._runs_of_streams.items() if r != doc["run_start"]
            }
            outputs = {
                kind: str(path)
                for kind, writer in self.writers.items()
                if (path := getattr(writer, "path_for", lambda _: None)(run))
            }
            self._outbox.run_written(run, outputs)

    def close(self) -> None:
        """Close the NeXus files of runs left open (their session died): without a stop
        document they stay marked not closed, with every event received."""
        nexus = self.writers.get("nexus")
        if nexus is not None and self.clean_exit:
            try:
                nexus.close()  # type: ignore[attr-defined]
            except Exception as exc:
                logger.exception("could not close the NeXus files of runs left open")
                self.nexus_off = f"{type(exc).__name__}: {exc}"
                self._kept.append(exc)

    def _nexus_may_take(self, name: str, run: str | None) -> bool:
        if self.nexus_off is not None:
            if name == "start":
                self._error(
                    "nexus writer: off until the session is restarted, since HDF5 could not "
                    f"open or close a file after a failed write ({self.nexus_off})"
                )
            return False
        if name == "stop" and self.nexus_unclosed & {run, "*"}:
            logger.error("the NeXus file of run %s is left as it was: not closed", run)
            return False
        return True

    def _run_of(self, name: str, doc: Any) -> str | None:
        if name == "start":
            return doc["uid"]
        if name == "descriptor":
            self._runs_of_streams[doc["uid"]] = doc["run_start"]
        elif name in ("event", "event_page", "stream_datum"):
            return self._runs_of_streams.get(doc.get("descriptor", ""))
        return doc.get("run_start")  # also optional in resource and stream_resource

    def _error(self, message: str) -> None:
        self._outbox.error(message)


class _CatalogLane:
    """The catalogue's writer, in a thread of its own with its own queue of what the session
    sent: its imports (the tiled client's, the longest) start first and alone, and then its
    HTTP requests, which mostly wait for the catalogue's server, overlap the NeXus and plot
    writers' imports and writing in the main thread, instead of following them.

    Like the main thread it packs queued events into pages, writes the events it holds back
    for a batch once it has been idle for ``_CATALOG_IDLE_S``, at a sync and before it ends,
    and reports each run's stop, each sync and each error to the `_Outbox`.
    """

    def __init__(self, config: RecorderConfig, outbox: _Outbox) -> None:
        self.received: queue.Queue = queue.Queue(maxsize=_HIGH_WATER_MARK)
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
        while True:
            try:
                item = self.received.get(timeout=_CATALOG_IDLE_S if held else None)
            except queue.Empty:  # idle for a while: get the held events into the catalogue
                self._flush()
                held = False
                continue
            items = [item]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self.received.get_nowait())
            messages, ending = _messages(items)
            for name, doc in _coalesce(messages):
                if name == _SYNC:
                    self._flush()
                    held = False
                    self._outbox.post("synced", doc)
                    continue
                self._write(name, doc)
                held = held or name == "event_page"
            if ending:
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


def _messages(items: list[Any]) -> tuple[list[tuple[str, Any]], bool]:
    """The session's messages among ``items`` (pickled messages, None: the session died,
    `_WAKE`), up to its close or death, and whether one of those came."""
    messages = []
    for data in items:
        if data is _WAKE:
            continue
        message = None if data is None else pickle.loads(data)
        if message is None or message[0] == _CLOSE:  # nothing comes after these
            return messages, True
        messages.append(message)
    return messages, False


def _coalesce(messages: list[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """The messages in order, runs of events of one stream packed into one event page."""
    from event_model import pack_event_page  # not before receiving: see _record

    events: list[dict] = []
    for name, doc in messages:
        if events and (name != "event" or doc["descriptor"] != events[0]["descriptor"]):
            yield "event_page", pack_event_page(*events)
            events = []
        if name == "event":
            events.append(doc)
        else:
            yield name, doc
    if events:
        yield "event_page", pack_event_page(*events)


def _receive(
    context: zmq.Context,
    wiring: _Wiring,
    queues: list[queue.Queue],
    stopping: threading.Event,
) -> None:
    """The recorder's receiving thread: takes each message off the wire, acknowledges it and
    queues it for each lane of writers, until the session's close message; queues None if
    the session dies instead. If the session dies before sending anything, there is nothing to
    write: the process ends at once, its writers' start-up (seconds of CPU) cut short."""
    documents = context.socket(zmq.DEALER)
    documents.connect(wiring.documents)
    close = pickle.dumps((_CLOSE, None), protocol=pickle.HIGHEST_PROTOCOL)  # as sent
    data = None
    try:
        while not stopping.is_set() and data != close:
            if documents.poll(_POLL_MS):
                number, data = documents.recv_multipart()
                # This process holds the message now and writes it even if the session dies
                # the next instant; the session's callback returns on this.
                with contextlib.suppress(zmq.Again):  # no session left to tell
                    documents.send(number, zmq.NOBLOCK)
                # Blocks when far behind: the next message waits unacknowledged (backpressure).
                for received in queues:
                    received.put(data)
            elif os.getppid() != wiring.parent:  # the session died: nothing more will come
                if data is None:
                    _nothing_to_write("the session ended")
                break
    finally:
        if data != close and not stopping.is_set():
            for received in queues:
                received.put(None)
        documents.close(linger=0)


def _nothing_to_write(why: str) -> None:
    """End the process now: no message came, so nothing is to be written or flushed."""
    logger.info("%s before sending any document: nothing to write; exiting", why)
    logging.shutdown()
    os._exit(0)


def _write_received(writers: _Writers, received: queue.Queue, outbox: _Outbox) -> None:
    """Write what the receiving thread queues until the session closes or dies, and send
    what the catalogue's lane posts meanwhile."""
    while True:
        items = [received.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(received.get_nowait())
        outbox.deliver()
        messages, ending = _messages(items)
        for name, doc in _coalesce(messages):
            if name == _SYNC:
                outbox.synced(doc)  # NeXus is flushed per page: written already
                continue
            writers.write(name, doc)
        outbox.deliver()
        if ending:
            return


def _record(wiring: _Wiring) -> bool:
    """Record until the session closes or dies; False if the process must not run its
    finalizers (an HDF5 file it could not close is still open)."""
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    context = zmq.Context()
    replies = context.socket(zmq.PUSH)
    replies.connect(wiring.replies)
    received: queue.Queue = queue.Queue(maxsize=_HIGH_WATER_MARK)
    outbox = _Outbox(replies, received)
    logging.getLogger().addHandler(_ReplyLog(outbox))

    config = wiring.config
    catalog: _CatalogLane | None = None
    if config.catalog_uri is not None:
        catalog = _CatalogLane(config, outbox)  # its imports start now (see the class)
        outbox.lanes = 2
    # Receiving first: from here on the session's documents are acknowledged and queued
    # while the writers start up (their imports take seconds); they catch up in order.
    stopping = threading.Event()
    queues = [received] + ([catalog.received] if catalog else [])
    receiver = threading.Thread(
        target=_receive, args=(context, wiring, queues, stopping), name="receive", daemon=True
    )
    receiver.start()
    outbox.send(receiving=os.getpid())
    writers: _Writers | None = None
    written = False
    try:
        if catalog is not None:
            catalog.imported.wait()  # see _CatalogLane
        # If they cannot start, the process ends here, the reason in its log: the session
        # raises it at its next document (or `Recorder.wait_ready`).
        writers = _Writers(config, outbox)
        if catalog is not None:
            catalog.started.wait()
            if catalog.failure is not None:
                raise catalog.failure
        outbox.send(ready=os.getpid())
        _write_received(writers, received, outbox)
        written = True
    finally:
        stopping.set()
        receiver.join()
        if writers is not None:
            writers.close()
        if catalog is not None:
            catalog.finish(outbox)
        if written and os.getppid() == wiring.parent:
            # All written: the session need not wait any longer.
            outbox.send(closed=os.getpid())
        replies.close(linger=2000)
        context.term()
    return writers.clean_exit


def main(argv: list[str] | None = None) -> None:
    """``python -m hutch.recording``, its wiring as JSON on standard input (``argv[0]`` if
    given): started by `hutch.recorder.Recorder`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the session decides when it ends
    faulthandler.enable()  # a crash in a writer's C code leaves its stack in the log
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    wiring = _Wiring.model_validate_json(argv[0] if argv else sys.stdin.read())
    shown = wiring.config.model_dump(exclude={"catalog_api_key"})  # no secret in the log
    logger.info("recording for pid %d: %s", wiring.parent, shown)
    if not _record(wiring):
        # Everything is written; releasing an HDF5 file left open would crash (see
        # _Writers.nexus_unclosed), so end here, without finalizers.
        logger.info("exiting without closing the NeXus files that failed a write")
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
