"""Live plots for an interactive session, drawn in a process of their own.

`LivePlots` is a RunEngine callback: it encodes each document (msgpack, never pickle) and
hands it to a thread of its own, which publishes it over 0MQ on loopback to the live-plot
process (``python -m hutch.liveplot_process``), started at the first run. That process draws
with bluesky's own live callbacks on a GUI backend; nothing of matplotlib runs in the
session, and the RunEngine never waits for the drawing.

- **A live view, not a record.** Documents go out on a PUB socket: a viewer that falls far
  behind loses documents rather than slowing the scan (the writers of record are the
  recorder's, `hutch.recorder`, lossless).
- **The first run is shown too.** The viewer takes a second or two to start (matplotlib,
  Tk); what the session emits until it listens is held (up to `_MAX_HELD` messages) and
  sent once it has subscribed.
- **Its failures are not the scan's.** A viewer that cannot start (no display) or dies is
  reported in one log line; one that died after drawing is started again at the next run
  (at most `_MAX_STARTS` times in all). Nothing here raises into the RunEngine.
- **It ends with the session.** `close()` (also at exit) stops it; it exits on its own when
  its parent dies.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack
import msgpack_numpy
import numpy as np
import zmq

from hutch.services import log_tail

__all__ = ["LivePlots", "decode", "display_available", "encode"]

logger = logging.getLogger(__name__)

# Messages held while the viewer starts; beyond, the newest are dropped (a viewer that has
# not started after this many documents is not coming soon).
_MAX_HELD = 20_000
# Messages 0MQ queues for a slow viewer before it drops (documents are ~1 kB).
_SEND_HWM = 20_000
# Starts of the viewer in one session: one that keeps dying is given up on.
_MAX_STARTS = 3
_POLL_S = 0.1
_CLOSE = object()


def display_available() -> bool:
    """Whether windows can be opened: an X11 or Wayland display is named."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _plain(obj: Any) -> Any:
    """msgpack's fallback for what it cannot pack: numpy arrays and numbers in msgpack-numpy's
    form; arrays of Python objects as lists; anything else as its text (a live view only)."""
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        return obj.tolist()
    if isinstance(obj, np.ndarray | np.generic | complex):
        return msgpack_numpy.encode(obj)
    if isinstance(obj, set | frozenset):
        return list(obj)
    return str(obj)


def encode(doc: dict[str, Any]) -> bytes:
    """A document as msgpack (numpy values in msgpack-numpy's form)."""
    return msgpack.packb(doc, default=_plain, use_bin_type=True)


def _object_hook(obj: dict) -> Any:
    # msgpack-numpy's decode unpickles arrays of kind 'O': refused here, as is any record or
    # object dtype, before it is called. What remains builds plain arrays from bytes.
    if b"nd" in obj:
        kind, type_ = obj.get(b"kind", b""), obj.get(b"type")
        if kind != b"" or not isinstance(type_, str) or np.dtype(type_).hasobject:
            raise ValueError(f"refusing an encoded array of dtype {type_!r} (kind {kind!r})")
    return msgpack_numpy.decode(obj)


def decode(data: bytes) -> Any:
    """The inverse of `encode`, executing nothing that arrives: plain msgpack types and
    numeric numpy arrays only (a `ValueError` for anything else)."""
    return msgpack.unpackb(data, object_hook=_object_hook, raw=False, strict_map_key=False)


class LivePlots:
    """Live plots of every run, in windows of their own process: ``RE.subscribe(LivePlots(
    log_path))``. ``hutch shell`` subscribes one when a display is there.

    Scalars are plotted against the scanned motor, grid and snake scans as maps of the
    detector over the two scanned positions (bluesky's ``BestEffortCallback``), and each area
    detector's latest frame as an image, updated as frames come. The process starts at the
    first run (or `start`); its output goes to ``log_path``. A viewer that cannot draw never
    fails a scan: it is reported in one log line. ``close()`` (also at exit) ends it.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._context = zmq.Context()
        # XPUB, not bluesky's Publisher (a PUB that connects to a Proxy): bound here, on
        # loopback, no proxy process is needed, and the subscription the viewer sends when it
        # listens arrives here, so what was emitted while it started can be sent then instead
        # of being lost to 0MQ's "slow joiner". The messages are Publisher's (prefix, name,
        # document, separated by spaces): bluesky's RemoteDispatcher reads them.
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, _SEND_HWM)
        # Every subscription is reported, also a restarted viewer's while 0MQ still holds the
        # connection of the one that died.
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        self._socket.setsockopt(zmq.LINGER, 0)
        loopback = "tcp://127.0.0.1"
        self.address = f"{loopback}:{self._socket.bind_to_random_port(loopback)}"
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._ready = threading.Event()  # a viewer listens
        self._process: subprocess.Popen | None = None
        # The running process has listened once: its death is then a crash, not a failed start
        # (a killed viewer's unsubscription can arrive before its exit is seen).
        self._listened = False
        self._starts = 0
        self._off = False  # given up: no viewer is started again
        self._held: list[bytes] = []
        self._dropped = 0
        self._unencodable: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="live plots", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def pid(self) -> int | None:
        """The live-plot process's pid while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def off(self) -> bool:
        """True once the viewer is given up on (it could not start, or kept dying) or closed."""
        return self._off

    def start(self) -> None:
        """Start the live-plot process now rather than at the next run."""
        self._outbox.put(("start", None))

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the live-plot process listens; False if it does not within ``timeout``."""
        return self._ready.wait(timeout)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        # The RunEngine's thread: encode (a snapshot of the document) and hand over; the rest
        # is the thread's. Never raises: a live view must not fail a scan.
        if self._off:
            return
        try:
            data = encode(doc)
        except Exception as exc:  # an integer beyond 64 bits, say
            if name not in self._unencodable:  # once per kind of document
                self._unencodable.add(name)
                logger.warning("live plots: cannot encode a %s document (%s); skipped", name, exc)
            return
        self._outbox.put((name, b" ".join((b"", name.encode(), data))))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the live-plot process and the sending thread. Safe to call twice."""
        atexit.unregister(self.close)
        self._off = True  # a document that still comes is dropped, not queued for nobody
        if self._thread.is_alive():
            self._outbox.put(_CLOSE)
            self._thread.join(timeout)

    # The sending thread: it alone uses the socket and the process.

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._outbox.get(timeout=_POLL_S)
                except queue.Empty:
                    item = None
                if item is _CLOSE:
                    break
                try:
                    self._step(item)
                except Exception as exc:  # never expected; the sender must survive anyway
                    logger.warning("live plots: %s: %s", type(exc).__name__, exc)
        finally:
            self._stop_process()
            self._socket.close(linger=0)
            self._context.term()

    def _step(self, item: tuple[str, bytes | None] | None) -> None:
        self._read_subscriptions()
        self._check_process()
        if item is None:
            return
        name, message = item
        if name == "start" and not self._off and self._process is None:
            self._start_process()
        if message is None:
            return
        if self._ready.is_set():
            self._send(message)
        elif self._process is not None:
            if len(self._held) < _MAX_HELD:
                self._held.append(message)
            else:
                self._dropped += 1

    def _read_subscriptions(self) -> None:
        # XPUB gives b"\x01" + topic when a subscriber listens, b"\x00" + topic when it goes.
        while True:
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._ready.set()
                self._listened = True
                if self._dropped:
                    logger.warning(
                        "live plots: %d documents dropped while the viewer started", self._dropped
                    )
                held, self._held, self._dropped = self._held, [], 0
                for held_message in held:
                    self._send(held_message)
            elif message[:1] == b"\x00":
                self._ready.clear()

    def _send(self, message: bytes) -> None:
        # The viewer is far behind when 0MQ's queue is full: the message is dropped (XPUB
        # does not block); the scan goes on.
        with contextlib.suppress(zmq.Again):
            self._socket.send(message, zmq.NOBLOCK)

    def _start_process(self) -> None:
        self._starts += 1
        self._listened = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Its own session: a Ctrl-C at the terminal interrupts the scan, not the plots.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "hutch.liveplot_process", self.address, str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _check_process(self) -> None:
        process = self._process
        if process is None or process.poll() is None:
            return
        self._process = None
        started, self._held, self._dropped = self._listened, [], 0
        self._ready.clear()
        last = log_tail(self.log_path, 1).strip() or "(no output)"
        if not started or self._starts >= _MAX_STARTS:
            self._off = True
            logger.warning(
                "live plots off: the live-plot process exited with code %s%s (log %s: %s)",
                process.returncode,
                "" if started else " before it could draw",
                self.log_path,
                last,
            )
        else:
            logger.warning(
                "live plots: the live-plot process exited with code %s; a new one starts with "
                "the next run (log %s: %s)",
                process.returncode,
                self.log_path,
                last,
            )

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        self._ready.clear()
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
