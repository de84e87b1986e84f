"""The recorder: a process of its own that writes a session's runs to NeXus, PNG and the
catalogue, so that the RunEngine's thread only acquires.

The session subscribes a `Recorder` to its RunEngine. For each document it pickles the
document onto a 0MQ PUSH socket, tens of microseconds, where the writers in the RunEngine's
thread took milliseconds (HDF5 writes and flushes, catalogue HTTP requests, plotting). The
recorder process (``python -m hutch.recorder``) runs those writers in parallel with the
acquisition.

What it guarantees:

- **No document is dropped.** PUSH/PULL over one TCP connection is ordered and lossless, and
  when the recorder falls far behind, sending blocks (backpressure) instead of dropping.
  bluesky's own 0MQ ``Publisher``/``RemoteDispatcher`` are PUB/SUB, which drop documents for
  a subscriber that is slow (over the high-water mark) or not yet connected: right for live
  views, wrong for the writers of record, so they are not used here.
- **Every event received is flushed to the NeXus file before the recorder waits for more.**
  Events that queued while it was busy are packed into one event page: one HDF5 write per
  column and one flush however far behind it was.
- **``RE(plan)`` returns when the run is written.** At a stop document the `Recorder` waits
  until the recorder has closed the run in every writer, and learns where its files went.
- **Writers' failures reach the session.** An exception of a writer is raised in the
  RunEngine at the next document (as it would be for a callback subscribed in-process,
  so the run ends as failed); warnings the writers log are logged again in the session.
- **The recorder outlives its session.** If the acquiring process dies (even ``kill -9``),
  the recorder writes and flushes everything it had received, leaves runs without a stop
  document not closed, and exits.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq
from event_model import pack_event_page
from pydantic import BaseModel

from hutch.errors import HutchError
from hutch.services import log_tail

__all__ = ["Recorder", "RecorderConfig", "RecorderError"]

logger = logging.getLogger(__name__)

# Documents buffered in 0MQ (each side) before sending blocks: minutes of a fast scan.
_HIGH_WATER_MARK = 100_000
_POLL_MS = 200
# A message of the session's, not a document: write what is pending and exit.
_CLOSE = "__close__"


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
    the recorder process, which it starts; ``RE.subscribe(recorder)`` last, after any
    in-process callback, since it may raise.

    ``outputs(uid)`` tells which files the recorder wrote for a finished run
    (``{"nexus": path, "png": path}``). ``close()`` (also at exit) lets the recorder finish
    and stops it.
    """

    def __init__(self, config: RecorderConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._context = zmq.Context()
        self._documents = self._context.socket(zmq.PUSH)
        self._documents.setsockopt(zmq.SNDHWM, _HIGH_WATER_MARK)
        self._documents.setsockopt(zmq.SNDTIMEO, _POLL_MS)
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
        if self._documents.closed:
            raise RecorderError(f"the recorder (pid {self.pid}) was closed; unsubscribe it")
        if not self._ready:
            self.wait_ready()
        self._send((name, doc))
        self._collect_replies()
        if name == "stop":
            uid = doc["run_start"]
            # No timeout: a big run may take the writers a while; a dead recorder ends the wait.
            self._wait_for(lambda: uid in self._outputs, None, f"write run {uid}")
        if self._errors:
            errors, self._errors = self._errors, []
            raise RecorderError("the recorder could not write the run:\n  " + "\n  ".join(errors))

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

    def _gone(self, doing: str) -> RecorderError:
        return RecorderError(
            f"the recorder (pid {self.pid}) exited with code {self._process.poll()} before "
            f"it could {doing}; its log {self.log_path} ends:\n{log_tail(self.log_path)}"
        )

    def _send(self, message: tuple[str, Any]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        while True:
            try:
                self._documents.send(data)
                return
            except zmq.Again:  # not connected yet, or its queue is full: backpressure
                if self._process.poll() is not None:
                    raise self._gone(f"receive a {message[0]} document") from None

    def _collect_replies(self, timeout_ms: int = 0) -> None:
        while self._replies.poll(timeout_ms):
            reply = pickle.loads(self._replies.recv())
            timeout_ms = 0
            if "ready" in reply:
                self._ready = True
            elif "done" in reply:
                self._outputs[reply["done"]] = reply["outputs"]
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


def _writers(config: RecorderConfig) -> dict[str, Callable[[str, dict], Any]]:
    # Imported here: the session side of this module must stay light.
    from hutch.callbacks import NexusWriter, PlotSaver

    writers: dict[str, Callable[[str, dict], Any]] = {}
    if config.nexus_dir is not None:
        writers["nexus"] = NexusWriter(config.nexus_dir)
    if config.plot_dir is not None:
        writers["png"] = PlotSaver(config.plot_dir)
    if config.catalog_uri is not None:
        from hutch.catalog import CatalogConfig, make_tiled_writer, runs_container

        catalog = CatalogConfig(uri=config.catalog_uri, api_key=config.catalog_api_key)
        writers["catalog"] = make_tiled_writer(runs_container(catalog, config.beamline))
    return writers


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


def _record(wiring: _Wiring) -> None:
    context = zmq.Context()
    documents = context.socket(zmq.PULL)
    documents.setsockopt(zmq.RCVHWM, _HIGH_WATER_MARK)
    documents.connect(wiring.documents)
    replies = context.socket(zmq.PUSH)
    replies.connect(wiring.replies)
    logging.getLogger().addHandler(_ReplyLog(replies))

    writers = _writers(wiring.config)
    _reply(replies, ready=os.getpid())
    closing = False
    while not closing:
        if not documents.poll(_POLL_MS):
            if os.getppid() != wiring.parent:  # the session died: nothing more will come
                break
            continue
        messages = []
        while not closing and documents.poll(0):
            message = pickle.loads(documents.recv())
            closing = message[0] == _CLOSE
            if not closing:
                messages.append(message)
        for name, doc in _coalesce(messages):
            for kind, writer in writers.items():
                try:
                    writer(name, doc)
                except Exception as exc:
                    logger.exception("%s writer failed on a %s document", kind, name)
                    _reply(replies, error=f"{kind} writer, {name} document: {exc!r}")
            if name == "stop":
                uid = doc["run_start"]
                outputs = {
                    kind: str(path)
                    for kind, writer in writers.items()
                    if (path := getattr(writer, "path_for", lambda _: None)(uid))
                }
                _reply(replies, done=uid, outputs=outputs)
    # Runs still open (their session died) stay not closed; their files are complete so far.
    if "nexus" in writers:
        writers["nexus"].close()
    replies.close(linger=2000)
    documents.close(linger=0)
    context.term()


def main(argv: list[str] | None = None) -> None:
    """``python -m hutch.recorder WIRING_JSON``: started by `Recorder`, not by hand."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the session decides when it ends
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    wiring = _Wiring.model_validate_json((argv or sys.argv[1:])[0])
    logger.info("recording for pid %d: %s", wiring.parent, wiring.config)
    _record(wiring)


if __name__ == "__main__":
    main()
