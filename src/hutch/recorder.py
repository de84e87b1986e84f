"""The recorder: a process of its own that writes a session's runs to NeXus, PNG and the
catalogue, so that the RunEngine's thread only acquires.

The session subscribes a `Recorder` to its RunEngine. For each document it pickles the
document onto a 0MQ socket and waits for the recorder's acknowledgement, a loopback round
trip of well under a millisecond, where the writers in the RunEngine's thread took
milliseconds (HDF5 writes and flushes, catalogue HTTP requests, plotting). The recorder
process (``python -m hutch.recorder``) runs those writers in parallel with the acquisition.

What it guarantees:

- **A document the RunEngine has emitted is the recorder's.** The recorder acknowledges each
  document as soon as it holds it (a thread of its own receives and acknowledges, so the
  writing does not delay it) and the `Recorder` callback returns only then. So once
  ``RE.emit`` has passed the `Recorder` (any callback subscribed after it runs only then),
  the document is in the recorder process, which writes it even if the session is killed
  the next instant. Without the acknowledgement a document could still sit in the session's
  0MQ I/O thread and die with it.
- **No document is dropped.** One ordered, lossless 0MQ connection; when the recorder falls
  far behind it stops acknowledging, and the session waits (backpressure) instead of
  dropping. bluesky's own 0MQ ``Publisher``/``RemoteDispatcher`` are PUB/SUB, which drop
  documents for a subscriber that is slow or not yet connected: right for live views, wrong
  for the writers of record, so they are not used here.
- **Every event received is flushed to the NeXus file before the recorder waits for more.**
  Events that queued while it was busy are packed into one event page: one HDF5 write per
  column and one flush however far behind it was.
- **The catalogue gets every event received, batched.** bluesky-tiled-plugins'
  ``TiledWriter`` sends events ``DEFAULT_BATCH_SIZE`` at a time (one HTTP request each) and
  has no flush of its own; the recorder writes the rest of a batch once it has been idle
  for ``_CATALOG_IDLE_S``, before it reports a run written, and before it exits (session
  closed or dead).
- **``RE(plan)`` returns when the run is written.** At a stop document the `Recorder` waits
  until the recorder has closed the run in every writer, and learns where its files went.
- **Writers' failures fail the run.** With `Recorder.check_before_close` among the
  RunEngine's preprocessors (a `hutch.session.Session` installs it), every ``close_run`` of
  a successful plan first waits until the recorder has written the run so far; a writer's
  exception (say a full disk, naming the NeXus file) is raised in the plan there, so the
  run ends with a stop document whose exit_status is 'fail' and whose reason is that error,
  the recorder writes that stop too, and ``RE(plan)`` raises it. Errors that come later (or
  without the preprocessor) are raised at the next document; those that come with the stop
  of a run already failed are logged. The writers keep writing after one of them fails: a
  full disk under the NeXus file does not cost the catalogue any event.
- **The recorder outlives its session.** If the acquiring process dies (even ``kill -9``),
  the recorder writes and flushes everything it had received, leaves runs without a stop
  document not closed, and exits.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import functools
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import zmq
from event_model import pack_event_page
from pydantic import BaseModel

from hutch.errors import HutchError
from hutch.services import log_tail

__all__ = ["Recorder", "RecorderConfig", "RecorderError"]

logger = logging.getLogger(__name__)

# Messages the recorder holds (received and acknowledged) before it stops acknowledging:
# minutes of a fast scan.
_HIGH_WATER_MARK = 100_000
_POLL_MS = 200
# Messages of the session's, not documents.
_CLOSE = "__close__"  # write what is pending and exit
_SYNC = "__sync__"  # reply once everything before is written
# The catalogue's held-back events are written once the recorder has had nothing to do for
# this long: never while a fast scan keeps it busy (each request costs ~50 ms of the tiled
# server, so a request per event would load the machine that acquires), at once after it.
_CATALOG_IDLE_S = 0.1
# The receiving thread acknowledges while a writer runs Python code; a switch interval
# shorter than CPython's 5 ms default lets it take the GIL sooner.
_SWITCH_INTERVAL_S = 0.0005


class RecorderError(HutchError):
    """The recorder could not write (part of) a run, or is gone."""


class RecorderConfig(BaseModel):
    """What the recorder writes, and where."""

    beamline: str
    """Name of the catalogue container the runs go into (the profile's name)."""
    nexus_dir: Path | None = None
    plot_dir: Path | None = None
    catalog_uri: str | None = None
    catalog_api_key: str | None = None


class _Wiring(BaseModel):
    """How the recorder process reaches its session (passed on its command line)."""

    config: RecorderConfig
    documents: str
    replies: str
    parent: int


# ---------------------------------------------------------------------------------------
# Session side
# ---------------------------------------------------------------------------------------


class Recorder:
    """The session's end of the recorder: a RunEngine callback that ships every document to
    the recorder process, which it starts, and returns once the recorder holds it;
    ``RE.subscribe(recorder)`` last, after any in-process callback, since it may raise. Add
    ``recorder.check_before_close`` to ``RE.preprocessors`` so that a writer's failure
    fails the run it belongs to (see the module's docstring).

    ``outputs(uid)`` tells which files the recorder wrote for a finished run
    (``{"nexus": path, "png": path}``). ``close()`` (also at exit) lets the recorder finish
    and stops it.
    """

    def __init__(self, config: RecorderConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._context = zmq.Context()
        # DEALER both ends: documents one way, their acknowledgements the other.
        self._documents = self._context.socket(zmq.DEALER)
        self._documents.setsockopt(zmq.SNDTIMEO, _POLL_MS)
        self._documents.setsockopt(zmq.RCVTIMEO, _POLL_MS)
        self._replies = self._context.socket(zmq.PULL)
        loopback = "tcp://127.0.0.1"
        documents = f"{loopback}:{self._documents.bind_to_random_port(loopback)}"
        replies = f"{loopback}:{self._replies.bind_to_random_port(loopback)}"
        wiring = _Wiring(config=config, documents=documents, replies=replies, parent=os.getpid())
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Its own session: a Ctrl-C at the terminal interrupts the scan, not the writing.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "hutch.recorder", wiring.model_dump_json()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._ready = False
        self._sent = 0  # messages sent; the recorder acknowledges each with its number
        self._synced = 0
        self._errors: list[str] = []
        self._outputs: dict[str, dict[str, str]] = {}
        atexit.register(self.close)

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the recorder has its writers up (it imports h5py, tiled, matplotlib)."""
        self._wait_for(lambda: self._ready, timeout, "start")

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self._check_open()
        self._send((name, doc))
        self._collect_replies()
        if name == "stop":
            uid = doc["run_start"]
            # No timeout: a big run may take the writers a while; a dead recorder ends the wait.
            self._wait_for(lambda: uid in self._outputs, None, f"write run {uid}")
            if doc.get("exit_status") != "success" and self._errors:
                # The run has failed already; raising now would only keep this stop from the
                # callbacks after this one (the RunEngine logs and drops it).
                errors, self._errors = self._errors, []
                logger.error(
                    "the recorder could not write the failed run:\n  %s", "\n  ".join(errors)
                )
        self._raise_errors()

    def sync(self) -> None:
        """Block until the recorder has written every document sent so far, then raise what
        its writers could not write (`RecorderError`)."""
        self._check_open()
        token = self._sent + 1
        self._send((_SYNC, token))
        self._wait_for(lambda: self._synced >= token, None, "write the run so far")
        self._raise_errors()

    def check_before_close(self, plan: Generator) -> Generator:
        """A plan preprocessor (``RE.preprocessors.append(recorder.check_before_close)``):
        before each ``close_run`` of a run that has not failed, wait until the recorder has
        written the run so far and raise its writers' errors in the plan.

        Without it an error that reaches the session after the run's last event would be
        raised at its stop document, which the RunEngine has then already given the
        callbacks before this one as a success, and drops for those after it. Raised in the
        plan instead, it ends the run as bluesky ends any failed plan: one stop document,
        exit_status 'fail', the error as its reason. The wait costs nothing: ``RE(plan)``
        waits for the recorder at the stop document anyway.
        """
        from bluesky.preprocessors import plan_mutator

        def before(msg):
            if msg.command != "close_run" or msg.kwargs.get("exit_status") not in (None, "success"):
                return None, None
            return self._synced_then(msg), None

        return (yield from plan_mutator(plan, before))

    def _synced_then(self, msg) -> Generator:
        self.sync()
        return (yield msg)

    def outputs(self, uid: str) -> dict[str, str]:
        """Files written for the finished run ``uid`` (empty while it is open or unknown)."""
        return self._outputs.get(uid, {})

    def close(self, timeout: float = 60.0) -> None:
        """Let the recorder write what it has, then stop it. Safe to call twice."""
        atexit.unregister(self.close)
        if self._documents.closed:
            return
        if self._process.poll() is None:
            try:
                self._send((_CLOSE, None))
                self._process.wait(timeout)
            except (RecorderError, subprocess.TimeoutExpired):
                logger.error("recorder (pid %d) did not finish; killing it", self.pid)
                self._process.kill()
                self._process.wait()
        self._collect_replies()
        self._documents.close(linger=0)
        self._replies.close(linger=0)
        self._context.term()

    def _check_open(self) -> None:
        if self._documents.closed:
            raise RecorderError(f"the recorder (pid {self.pid}) was closed; unsubscribe it")
        if not self._ready:
            self.wait_ready()

    def _raise_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            raise RecorderError("the recorder could not write the run:\n  " + "\n  ".join(errors))

    def _gone(self, doing: str) -> RecorderError:
        return RecorderError(
            f"the recorder (pid {self.pid}) exited with code {self._process.poll()} before "
            f"it could {doing}; its log {self.log_path} ends:\n{log_tail(self.log_path)}"
        )

    def _send(self, message: tuple[str, Any]) -> None:
        """Send ``message`` and return once the recorder has acknowledged it."""
        self._sent += 1
        number = self._sent.to_bytes(8, "little")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        doing = f"receive a {message[0]} document"
        while True:
            try:
                self._documents.send_multipart((number, data))
                break
            except zmq.Again:  # not connected yet
                if self._process.poll() is not None:
                    raise self._gone(doing) from None
        while True:
            try:
                # An acknowledgement left over from a wait that was interrupted is skipped.
                if self._documents.recv() == number:
                    return
            except zmq.Again:  # the recorder is busy (backpressure), or gone
                if self._process.poll() is not None:
                    raise self._gone(doing) from None

    def _collect_replies(self, timeout_ms: int = 0) -> None:
        while self._replies.poll(timeout_ms):
            reply = pickle.loads(self._replies.recv())
            timeout_ms = 0
            if "ready" in reply:
                self._ready = True
            elif "done" in reply:
                self._outputs[reply["done"]] = reply["outputs"]
            elif "synced" in reply:
                self._synced = max(self._synced, reply["synced"])
            elif "error" in reply:
                self._errors.append(reply["error"])
            elif "log" in reply:
                level, name, message = reply["log"]
                logging.getLogger(name).log(level, "%s (in the recorder)", message)

    def _wait_for(self, done: Callable[[], bool], timeout: float | None, doing: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if self._process.poll() is not None:
                self._collect_replies()
                if done():
                    return
                raise self._gone(doing)
            if deadline is not None and time.monotonic() > deadline:
                raise RecorderError(
                    f"the recorder (pid {self.pid}) did not {doing} within {timeout:g} s; "
                    f"see {self.log_path}"
                )
            self._collect_replies(_POLL_MS)


# ---------------------------------------------------------------------------------------
# Recorder process
# ---------------------------------------------------------------------------------------


class _ReplyLog(logging.Handler):
    """Sends the writers' warnings and errors back to the session, which logs them too."""

    def __init__(self, replies: zmq.Socket) -> None:
        super().__init__(logging.WARNING)
        self._replies = replies
        self._thread = threading.get_ident()  # 0MQ sockets are single-threaded

    def emit(self, record: logging.LogRecord) -> None:
        if threading.get_ident() == self._thread:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f": {record.exc_info[1]}"
            _reply(self._replies, log=(record.levelno, record.name, message))


def _reply(replies: zmq.Socket, **message: Any) -> None:
    replies.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


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
    """The recorder's writers. Each document goes to every one of them: one failing does not
    keep it from the others, and its error goes back to the session."""

    def __init__(self, config: RecorderConfig, replies: zmq.Socket) -> None:
        # Imported here: the session side of this module must stay light.
        from hutch.callbacks import NexusWriter, PlotSaver

        self._replies = replies
        self.writers: dict[str, Callable[[str, dict], Any]] = {}
        if config.nexus_dir is not None:
            self.writers["nexus"] = NexusWriter(config.nexus_dir)
        if config.plot_dir is not None:
            self.writers["png"] = PlotSaver(config.plot_dir)
        self.catalog: _CatalogWriter | None = None
        if config.catalog_uri is not None:
            from hutch.catalog import DEFAULT_BATCH_SIZE, CatalogConfig, runs_container

            catalog = CatalogConfig(uri=config.catalog_uri, api_key=config.catalog_api_key)
            container = runs_container(catalog, config.beamline)
            self.writers["catalog"] = self.catalog = _CatalogWriter(container, DEFAULT_BATCH_SIZE)
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
            _reply(self._replies, done=run, outputs=outputs)

    def flush_catalog(self) -> None:
        """Get the events the catalogue writer holds back for a batch into the catalogue."""
        if self.catalog is not None:
            try:
                self.catalog.flush()
            except Exception as exc:
                logger.exception("catalog writer failed to write the events it held")
                self._error(f"catalog writer, held events: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Write what is held; close the NeXus files of runs left open (their session died):
        without a stop document they stay marked not closed, with every event received."""
        self.flush_catalog()
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
        _reply(self._replies, error=message)


def _coalesce(messages: list[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """The messages in order, runs of events of one stream packed into one event page."""
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
    received: queue.Queue,
    stopping: threading.Event,
) -> None:
    """The recorder's receiving thread: takes each message off the wire, acknowledges it and
    queues it for the writers, until the session's close message; queues None if the
    session dies instead."""
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
                received.put(data)
            elif os.getppid() != wiring.parent:  # the session died: nothing more will come
                break
    finally:
        if data != close and not stopping.is_set():
            received.put(None)
        documents.close(linger=0)


def _write_received(writers: _Writers, received: queue.Queue, replies: zmq.Socket) -> None:
    """Write what the receiving thread queues until the session closes or dies."""
    held = False  # the catalogue writer may hold events back for a batch
    while True:
        try:
            item = received.get(timeout=_CATALOG_IDLE_S if held else None)
        except queue.Empty:  # idle for a while: get the held events into the catalogue
            writers.flush_catalog()
            held = False
            continue
        items = [item]
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(received.get_nowait())
        messages = []
        ending = False
        for data in items:
            message = None if data is None else pickle.loads(data)
            if message is None or message[0] == _CLOSE:  # nothing comes after these
                ending = True
                break
            messages.append(message)
        for name, doc in _coalesce(messages):
            if name == _SYNC:
                writers.flush_catalog()
                held = False
                _reply(replies, synced=doc)
                continue
            writers.write(name, doc)
            held = held or name == "event_page"
        if ending:
            return


def _record(wiring: _Wiring) -> bool:
    """Record until the session closes or dies; False if the process must not run its
    finalizers (an HDF5 file it could not close is still open)."""
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    context = zmq.Context()
    replies = context.socket(zmq.PUSH)
    replies.connect(wiring.replies)
    logging.getLogger().addHandler(_ReplyLog(replies))

    writers = _Writers(wiring.config, replies)
    received: queue.Queue = queue.Queue(maxsize=_HIGH_WATER_MARK)
    stopping = threading.Event()
    receiver = threading.Thread(
        target=_receive, args=(context, wiring, received, stopping), name="receive", daemon=True
    )
    receiver.start()
    _reply(replies, ready=os.getpid())
    try:
        _write_received(writers, received, replies)
    finally:
        stopping.set()
        receiver.join()
        writers.close()
        replies.close(linger=2000)
        context.term()
    return writers.clean_exit


def main(argv: list[str] | None = None) -> None:
    """``python -m hutch.recorder WIRING_JSON``: started by `Recorder`, not by hand."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the session decides when it ends
    faulthandler.enable()  # a crash in a writer's C code leaves its stack in the log
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    wiring = _Wiring.model_validate_json((argv or sys.argv[1:])[0])
    logger.info("recording for pid %d: %s", wiring.parent, wiring.config)
    if not _record(wiring):
        # Everything is written; releasing an HDF5 file left open would crash (see
        # _Writers.nexus_unclosed), so end here, without finalizers.
        logger.info("exiting without closing the NeXus files that failed a write")
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
