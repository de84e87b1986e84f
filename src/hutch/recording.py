"""The recorder process, ``python -m hutch.recording``, started by `hutch.recorder.Recorder`
(whose docstring says what it guarantees): it receives a session's documents and writes them
to NeXus, PNG and the catalogue.

Three threads: one receives and acknowledges each message (it needs only 0MQ, so a session
can send from the recorder's first moments); the catalogue's lane (`CatalogLane`) imports
and starts the tiled client first, then writes; the main thread starts the NeXus and plot
writers once the catalogue's imports are done, so that their imports and writing overlap
the catalogue's HTTP requests, which mostly wait for its server, and it alone sends the
session its replies (`_Outbox`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import zmq

from hutch.recorder import _CLOSE, _POLL_MS, _SYNC, RecorderConfig, _Wiring
from hutch.recording_catalog import CatalogLane
from hutch.recording_queue import HIGH_WATER_MARK, WAKE, coalesce, unpack
from hutch.reduction.lane import ReductionLane

__all__ = ["main"]

logger = logging.getLogger(__name__)

# The receiving thread acknowledges while a writer runs Python code; a switch interval
# shorter than CPython's 5 ms default lets it take the GIL sooner.
_SWITCH_INTERVAL_S = 0.0005


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
            self._received.put_nowait(WAKE)

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


class _Writers:
    """The recorder's file writers, NeXus and plot, in the main thread (the catalogue's has
    a lane of its own, `CatalogLane`). Each document goes to every one of them: one failing
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


def _write_received(writers: _Writers, received: queue.Queue, outbox: _Outbox, feeds: int) -> None:
    """Write what the receiving thread (and the reduction lane) queue until the session
    closes or dies (and the lane has ended: ``feeds`` ends in all), and send what the other
    lanes post meanwhile."""
    ended = 0
    while True:
        items = [received.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(received.get_nowait())
        outbox.deliver()
        messages, ends = unpack(items)
        for name, doc in coalesce(messages):
            if name == _SYNC:
                outbox.synced(doc)  # NeXus is flushed per page: written already
                continue
            writers.write(name, doc)
        outbox.deliver()
        ended += ends
        if ended >= feeds:
            return


def _record(wiring: _Wiring) -> bool:
    """Record until the session closes or dies; False if the process must not run its
    finalizers (an HDF5 file it could not close is still open)."""
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    context = zmq.Context()
    replies = context.socket(zmq.PUSH)
    replies.connect(wiring.replies)
    received: queue.Queue = queue.Queue(maxsize=HIGH_WATER_MARK)
    outbox = _Outbox(replies, received)
    logging.getLogger().addHandler(_ReplyLog(outbox))

    config = wiring.config
    catalog: CatalogLane | None = None
    if config.catalog_uri is not None:
        catalog = CatalogLane(config, outbox)  # its imports start now (see the class)
        outbox.lanes = 2
    writer_queues = [received] + ([catalog.received] if catalog else [])
    feeds = 1
    if config.reductions:
        lane = ReductionLane(
            config.reductions,
            config.reductions_base,
            writer_queues,
            lambda kind, value: outbox.send(**{kind: value}),
        )
        feeds = 2  # the writers' queues end when the session and the lane have ended
        if catalog is not None:
            catalog.feeds = 2
    # Receiving first: from here on the session's documents are acknowledged and queued
    # while the writers start up (their imports take seconds); they catch up in order.
    stopping = threading.Event()
    queues = writer_queues + ([lane.received] if config.reductions else [])
    receiver = threading.Thread(
        target=_receive, args=(context, wiring, queues, stopping), name="receive", daemon=True
    )
    receiver.start()
    outbox.send(receiving=os.getpid())
    writers: _Writers | None = None
    written = False
    try:
        if catalog is not None:
            catalog.imported.wait()  # see CatalogLane
        # If they cannot start, the process ends here, the reason in its log: the session
        # raises it at its next document (or `Recorder.wait_ready`).
        writers = _Writers(config, outbox)
        if catalog is not None:
            catalog.started.wait()
            if catalog.failure is not None:
                raise catalog.failure
        outbox.send(ready=os.getpid())
        _write_received(writers, received, outbox, feeds)
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
