"""IPython magics of ``hutch shell``: ``%wa``, ``%mov``, ``%movr`` and ``%ct``.

bluesky's own magics (``bluesky.magics.BlueskyMagics``) run plans on a RunEngine of their own,
on an event loop of their own, and find devices by ophyd v1 labels: ophyd-async devices, which
live on the session's event loop and carry no labels, do not work with them. These run on the
session's RunEngine (so suspenders, metadata and subscriptions apply) and know both device
generations. Load them with ``%load_ext hutch.magics`` in an IPython session holding a
`hutch.session.Session` named ``session`` (``hutch shell`` does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import ophyd
from bluesky import RunEngineInterrupted
from bluesky.protocols import Movable, Readable, Triggerable
from bluesky.run_engine import autoawait_in_bluesky_event_loop, call_in_bluesky_event_loop
from bluesky.utils import ProgressBarManager, TerminalProgressBar
from IPython.core.magic import Magics, line_magic, magics_class
from ophyd_async.core import Device as AsyncDevice
from ophyd_async.core import SignalR, StandardDetector

from hutch.errors import Refusal
from hutch.positions import format_where_all, where_all
from hutch.session import Session

__all__ = ["HutchMagics", "load_ipython_extension"]

#: Counts shorter than this get no progress bar (it would only flash).
LONG_COUNT = 1.0


class CountProgressBar(TerminalProgressBar):
    """bluesky's terminal progress bar, plus a bar by elapsed time for a count whose
    detectors report no progress of their own (a scaler counting its preset time)."""

    def __init__(self, statuses: Iterable[Any], expected: float, label: str) -> None:
        statuses = list(statuses)
        super().__init__(statuses, delay_draw=0.2)
        silent = [st for st in statuses if not hasattr(st, "watch") and not st.done]
        if silent and expected >= LONG_COUNT:
            with self.lock:
                slot = len(self.meters)
                self.meters.append("")
                self.status_objs.append(silent[0])
            threading.Thread(
                target=self._tick, args=(slot, silent, expected, label), daemon=True
            ).start()

    def _tick(self, slot: int, statuses: list[Any], expected: float, label: str) -> None:
        start = time.monotonic()
        while not self.done and not all(st.done for st in statuses):
            elapsed = min(time.monotonic() - start, expected)
            self.update(slot, name=label, current=elapsed, initial=0.0, target=expected, unit="s")
            time.sleep(0.25)


def _pairs(line: str, magic: str) -> list[str]:
    tokens = line.split()
    if not tokens or len(tokens) % 2:
        raise SyntaxError(f"usage: %{magic} device value [device value ...]")
    return tokens


@magics_class
class HutchMagics(Magics):
    """``%wa`` where all, ``%mov dev value ...`` and ``%movr dev delta ...`` moves with a
    progress bar, ``%ct [dets]`` one count: on ``session``'s RunEngine, for ophyd-async and
    classic ophyd devices alike. Device arguments are names or expressions of the shell's
    namespace (``sample_x``, ``det``), space separated as with bluesky's magics."""

    def __init__(self, shell: Any, session: Session) -> None:
        super().__init__(shell)
        self.session = session

    # -- helpers ------------------------------------------------------------------------

    def _eval(self, token: str) -> Any:
        return eval(token, self.shell.user_ns)  # noqa: S307 (the user's own shell)

    def _devices(self) -> dict[str, Any]:
        """The session's devices, then top-level devices the user made in the shell."""
        devices = dict(self.session.devices)
        known = {id(d) for d in devices.values()}
        for key, obj in self.shell.user_ns.items():
            top_level = isinstance(obj, AsyncDevice | ophyd.Device) and not getattr(
                obj, "parent", None
            )
            if top_level and not key.startswith("_") and id(obj) not in known:
                devices[obj.name or key] = obj
                known.add(id(obj))
        return devices

    def _run(self, plan: Any, magic: str, hook: Any = None, *subscriptions: Any) -> Any:
        """Run ``plan`` on the session's RunEngine with ``hook`` as its waiting hook; after a
        Ctrl-C, abort it rather than leave the RunEngine paused (a magic cannot resume)."""
        RE = self.session.RE
        previous, RE.waiting_hook = RE.waiting_hook, hook
        try:
            return RE(plan, *subscriptions)
        except RunEngineInterrupted:
            print(f"%{magic} interrupted")
            return None
        finally:
            RE.waiting_hook = previous
            if RE.state != "idle":
                RE.abort(f"interrupted in %{magic}")

    def _where(self, devices: Mapping[str, Any]) -> None:
        failures = self.session.connection_failures
        missing = {name: pvs for name, pvs in failures.items() if name in devices}
        print(format_where_all(where_all(devices, missing)))

    # -- magics -------------------------------------------------------------------------

    @line_magic
    def wa(self, line: str) -> None:
        """Where all: positions of every movable device (value, setpoint, limits, units),
        readings of the other readable ones, and the devices not connected. ``%wa dev ...``
        shows only those."""
        if line.strip():
            devices = {}
            for token in line.split():
                device = self._eval(token)
                devices[getattr(device, "name", token) or token] = device
        else:
            devices = self._devices()
        self._where(devices)

    def _move(self, line: str, magic: str, stub: Any) -> None:
        tokens = _pairs(line, magic)
        args = [self._eval(token) for token in tokens]
        self._run(stub(*args), magic, ProgressBarManager())
        moved = {getattr(d, "name", t) or t: d for t, d in zip(tokens[::2], args[::2], strict=True)}
        self._where(moved)

    @line_magic
    def mov(self, line: str) -> None:
        """Move devices to absolute positions, all at once: ``%mov sample_x 0.5 slit_gap 1``
        (bluesky's ``mv`` on the session's RunEngine, with a progress bar); then show where
        they are."""
        self._move(line, "mov", bps.mv)

    @line_magic
    def movr(self, line: str) -> None:
        """Move devices relative to where they are: ``%movr sample_x -0.1`` (bluesky's
        ``mvr``, with a progress bar); then show where they are."""
        self._move(line, "movr", bps.mvr)

    def _counting_detectors(self) -> list[Any]:
        """The session's connected devices that count when triggered: not movable, and not
        detectors that write files (those are counted by naming them)."""
        failed = self.session.connection_failures
        return [
            device
            for name, device in self.session.devices.items()
            if name not in failed
            and isinstance(device, Triggerable)
            and isinstance(device, Readable)
            and not isinstance(device, Movable | StandardDetector)
        ]

    @line_magic
    def ct(self, line: str) -> None:
        """Count once and print every field read: ``%ct`` counts the session's counting
        detectors, ``%ct det ring_current`` the devices named. The count is a run like any
        other (bluesky's ``count``): live table, NeXus file, plot, catalogue. Counts of a
        second or more show a progress bar."""
        dets = [self._eval(token) for token in line.split()] or self._counting_detectors()
        if not dets:
            print("%ct: nothing to count (name the devices: %ct det)")
            return
        expected = _count_time(dets)
        label = "counting " + ", ".join(getattr(d, "name", "?") for d in dets)
        hook = ProgressBarManager(partial(CountProgressBar, expected=expected, label=label))
        readings: dict[str, Any] = {}
        primary: set[str] = set()  # descriptor uids: the baseline is not what was counted

        def keep(name: str, doc: dict[str, Any]) -> None:
            if name == "descriptor" and doc.get("name") == "primary":
                primary.add(doc["uid"])
            elif name == "event" and doc["descriptor"] in primary:
                readings.update(doc["data"])
            elif name == "event_page" and doc["descriptor"] in primary:
                readings.update({k: v[-1] for k, v in doc["data"].items()})

        result = self._run(bp.count(dets), "ct", hook, keep)
        width = max((len(k) for k in readings), default=0)
        for key, value in readings.items():
            print(f"  {key:{width}}  {value}")
        if result is not None and result.run_start_uids:
            print(f"run {result.run_start_uids[0]} ({result.exit_status})")


def _count_time(dets: Iterable[Any]) -> float:
    """The longest preset count time among ``dets`` (0 if none has one), for the progress
    bar; a detector that does not answer gets no bar rather than holding up the count."""
    signals = [getattr(d, "preset_time", None) for d in dets]
    async_signals = [s for s in signals if isinstance(s, SignalR)]
    times: list[float] = []
    if async_signals:

        async def read_all() -> list[float]:
            return list(await asyncio.gather(*(s.get_value() for s in async_signals)))

        with contextlib.suppress(Exception):
            times += call_in_bluesky_event_loop(read_all(), timeout=3.0)
    for signal in signals:
        if isinstance(signal, ophyd.Signal):
            with contextlib.suppress(Exception):
                times.append(float(signal.get()))
    return max(times, default=0.0)


def _one_line(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None):
    print(f"refused: {value}", file=sys.stderr)


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics on ``ipython`` for the `Session` in its namespace as ``session``,
    and run top-level ``await`` on bluesky's event loop (where ophyd-async devices live)."""
    session = ipython.user_ns.get("session")
    if not isinstance(session, Session):
        print("hutch.magics: no hutch Session named `session` in the namespace; not loaded")
        return
    ipython.register_magics(HutchMagics(ipython, session))
    # A refused plan (bad argument, beyond a soft limit, missing metadata) is the user's to
    # fix: one line, as `hutch run` prints it, not a traceback through the RunEngine.
    ipython.set_custom_exc((Refusal,), _one_line)
    # `await sample_x.locate()` at the prompt runs on the loop the ophyd-async devices use.
    autoawait_in_bluesky_event_loop(ipython)
