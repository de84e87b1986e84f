"""The recorder: a process of its own that writes a session's runs to NeXus, PNG and the
catalogue, so that the RunEngine's thread only acquires.

The session subscribes a `Recorder` to its RunEngine. For each document it pickles the
document onto a 0MQ socket and waits for the recorder's acknowledgement, a loopback round
trip of well under a millisecond, where the writers in the RunEngine's thread took
milliseconds (HDF5 writes and flushes, catalogue HTTP requests, plotting). The recorder
process (``python -m hutch.recording``, `hutch.recording`) runs those writers in parallel
with the acquisition.

What it guarantees:

- **A document the RunEngine has emitted is the recorder's.** The recorder acknowledges each
  document as soon as it holds it (a thread of its own receives and acknowledges, so the
  writing does not delay it) and the `Recorder` callback returns only then. It takes
  documents from its first moments: receiving needs only 0MQ, and the writers start up
  (h5py, matplotlib, the tiled client: seconds of imports) while the first documents
  already wait in its queue, so a session need not wait for them to start. So once
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
  for ``hutch.recording_queue.CATALOG_IDLE_S``, before it reports a run written, and before it
  exits (session closed or dead).
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

`Recorder.close` returns once the recorder says it has written everything; its process then
exits on its own, unwaited for (a recorder that got no document at all is just stopped).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import zmq
from pydantic import BaseModel

from hutch.errors import HutchError
from hutch.services import log_tail

__all__ = ["Recorder", "RecorderConfig", "RecorderError"]

logger = logging.getLogger(__name__)

_POLL_MS = 200
# Messages of the session's, not documents.
_CLOSE = "__close__"  # write what is pending and exit (replies "closed" once written)
_SYNC = "__sync__"  # reply once everything before is written


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
    reductions: list[dict[str, Any]] = []
    """The profile's reductions (`hutch.profile.ReductionSpec` as dicts), run live by the
    recorder's reduction lane (`hutch.reduction.lane`); their derived runs are written too."""
    reductions_base: Path | None = None
    """The folder file parameters of reductions are relative to (the profile's)."""


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
            # The wiring (with the catalogue's API key) on its standard input, never on its
            # command line, which every local user can read.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "hutch.recording"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # One OpenMP thread for the reductions' numerical libraries (pyFAI) unless
                # the user chose: on a small machine a second one took the core the scan
                # runs on, and made pyFAI itself 5 to 30 times slower under load
                # (docs/performance.md, online reduction).
                env={"OMP_NUM_THREADS": "1", **os.environ},
            )
        self._process.stdin.write(wiring.model_dump_json().encode())
        self._process.stdin.close()
        self._receiving = False  # it takes documents
        self._ready = False  # its writers are up too
        self._closed = False  # it has written everything and is exiting
        self._sent = 0  # messages sent; the recorder acknowledges each with its number
        self._synced = 0
        self._errors: list[str] = []
        self._outputs: dict[str, dict[str, str]] = {}
        self._reduced: dict[str, list[str]] = {}  # raw run uid -> its derived runs' uids
        atexit.register(self.close)

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_receiving(self, timeout: float = 60.0) -> None:
        """Block until the recorder takes documents (a fraction of a second after it was
        started); its writers may still be starting, and catch up."""
        self._wait_for(lambda: self._receiving, timeout, "start")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the recorder has its writers up (it imports h5py, tiled, matplotlib:
        seconds); raise the reason, from its log, if they cannot start."""
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

    def derived_runs(self, uid: str, timeout: float | None = 60.0) -> list[str]:
        """The uids of the derived runs the profile's reductions made of the finished run
        ``uid``, once they are all written (they are reduced after the run, live, so
        ``RE(plan)`` does not wait for them); none without reductions."""
        if not self.config.reductions:
            return []
        self._check_open()
        self._wait_for(
            lambda: uid in self._reduced and all(d in self._outputs for d in self._reduced[uid]),
            timeout,
            f"reduce run {uid}",
        )
        return list(self._reduced[uid])

    def close(self, timeout: float = 60.0) -> None:
        """Let the recorder write what it has, then stop it. Safe to call twice.

        Returns once the recorder has written everything (it says so), without waiting for
        its interpreter to shut down: it exits on its own, as it does when its session dies.
        """
        atexit.unregister(self.close)
        if self._documents.closed:
            return
        if self._process.poll() is None and self._sent == 0:
            # It got nothing, so it has nothing to write: no need to let its writers finish
            # starting up (seconds of CPU, after this session is gone).
            self._process.terminate()
        elif self._process.poll() is None:
            try:
                self._send((_CLOSE, None))
                self._wait_for(lambda: self._closed, timeout, "finish writing")
            except RecorderError:
                if self._process.poll() is None:
                    logger.error("recorder (pid %d) did not finish; killing it", self.pid)
                    self._process.kill()
        if self._process.returncode is None:
            # Reaped in the background: no zombie, and no wait here (none needed at exit).
            with contextlib.suppress(RuntimeError):
                threading.Thread(target=self._process.wait, name="reap", daemon=True).start()
        self._collect_replies()
        self._documents.close(linger=0)
        self._replies.close(linger=0)
        self._context.term()

    def _check_open(self) -> None:
        if self._documents.closed:
            raise RecorderError(f"the recorder (pid {self.pid}) was closed; unsubscribe it")
        if not self._receiving:
            self.wait_receiving()

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
            if "receiving" in reply:
                self._receiving = True
            elif "ready" in reply:
                self._ready = True
            elif "closed" in reply:
                self._closed = True
            elif "done" in reply:
                self._outputs[reply["done"]] = reply["outputs"]
            elif "reduced" in reply:
                raw, derived = reply["reduced"]
                self._reduced[raw] = derived
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
