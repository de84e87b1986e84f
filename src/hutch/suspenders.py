"""Suspend runs while the beam is down, with bluesky's suspenders on the profile's signals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bluesky.run_engine import call_in_bluesky_event_loop, in_bluesky_event_loop
from bluesky.suspenders import SuspendFloor
from ophyd_async.core import SignalR

from hutch.profile import SuspenderSpec

__all__ = ["SuspenderSignal", "make_suspender"]


class SuspenderSignal:
    """An ophyd-async signal as bluesky's suspenders expect to watch a signal.

    bluesky 1.15's suspenders subscribe the ophyd (v1) way, ``subscribe(cb, event_type=...,
    run=True)`` and ``clear_sub(cb)``, and are called as ``cb(value=...)``; ophyd-async
    signals call ``cb({name: reading})`` from ``subscribe_reading``. ophyd v1 signals need
    no adapter.
    """

    def __init__(self, signal: SignalR) -> None:
        self._signal = signal
        self._forwarders: dict[Callable, Callable[[dict[str, Any]], None]] = {}
        self._value: Any = None

    @property
    def name(self) -> str:
        return self._signal.name

    def __repr__(self) -> str:
        return f"SuspenderSignal({self._signal.name!r})"

    def get(self) -> Any:
        """The last value seen (suspenders quote it when they trip)."""
        return self._value

    def subscribe(self, callback: Callable, event_type: Any = None, run: bool = True) -> None:
        def forward(readings: dict[str, Any]) -> None:
            self._value = readings[self._signal.name]["value"]
            callback(value=self._value)

        self._forwarders[callback] = forward
        # ophyd-async calls back with the current reading at once, like run=True.
        _in_loop(self._signal.subscribe_reading, forward)

    def clear_sub(self, callback: Callable) -> None:
        forward = self._forwarders.pop(callback, None)
        if forward is not None:
            _in_loop(self._signal.clear_sub, forward)


def _in_loop(function: Callable[[Any], None], argument: Any) -> None:
    """Call ``function(argument)`` in the bluesky event loop, where ophyd-async monitors live
    (suspenders are installed from the user's thread)."""
    if in_bluesky_event_loop():
        function(argument)
    else:

        async def call() -> None:
            function(argument)

        call_in_bluesky_event_loop(call())


def make_suspender(spec: SuspenderSpec, devices: Mapping[str, Any]) -> SuspendFloor:
    """The bluesky suspender a profile's ``[[suspenders]]`` entry asks for."""
    signal = devices[spec.device]
    for attr in spec.signal.split("."):
        signal = getattr(signal, attr)
    watched = SuspenderSignal(signal) if isinstance(signal, SignalR) else signal
    return SuspendFloor(
        watched,
        spec.below,
        resume_thresh=spec.resume_above,
        sleep=spec.sleep,
        tripped_message=(
            f"{spec.device}.{spec.signal} fell below {spec.below:g}; the run resumes "
            f"{spec.sleep:g} s after it is back above {spec.resume_above:g}"
        ),
    )
