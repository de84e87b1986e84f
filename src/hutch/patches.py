"""Targeted fixes to the field's libraries, applied by `hutch.session`.

Each one is small, keeps the library's behaviour, and is written up with its measurement
in docs/performance.md so it can be reported upstream and deleted once fixed there.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import bluesky.utils

__all__ = ["apply", "bluesky_as_released"]

_PLAN_STACK_FRAMES = 8
_RELEASED_PLAN_INIT = bluesky.utils.Plan.__init__


class _CreationSite:
    """Where a plan was created, formatted only if bluesky ever shows it."""

    __slots__ = ("_frames", "_warning")

    def __init__(self, frames: traceback.StackSummary, warning: str) -> None:
        self._frames = frames
        self._warning = warning

    def __iter__(self) -> Iterator[str]:
        yield from self._frames.format()
        yield self._warning


def _plan_init(self: bluesky.utils.Plan, f, *args, **kwargs) -> None:
    # bluesky 1.15's Plan formats the whole call stack, reading every source line, each time
    # a plan stub is called, for a warning shown only if the plan is never iterated: nine
    # times per step-scan point, several milliseconds. Keep the creation site's frames and
    # format them only for that warning.
    self._iter = f(*args, **kwargs)
    frames = traceback.StackSummary.extract(
        traceback.walk_stack(sys._getframe(2)), limit=_PLAN_STACK_FRAMES, lookup_lines=False
    )
    frames.reverse()
    self._stack = _CreationSite(
        frames,
        f"RuntimeWarning: plan `{f.__name__}` was never iterated, "
        "did you mean to use `yield from`?",
    )


def _dispatcher_stop(self) -> None:
    # ophyd 1.x's EventDispatcher.stop, run at exit, also joins its debug-monitor thread,
    # which sleeps 1 s between looks at the queues: every process with a classic ophyd device
    # waited up to a second to exit. That thread is a daemon and only logs; the threads that
    # dispatch callbacks are still stopped and joined as before.
    self._stop_event.set()
    for thread in list(self._threads.values()):
        if thread is not None:
            thread.join()
    self._threads.clear()


def apply() -> None:
    """Apply every fix (idempotent); ophyd's only if ophyd is imported."""
    bluesky.utils.Plan.__init__ = _plan_init
    if (dispatch := sys.modules.get("ophyd._dispatch")) is not None:
        dispatch.EventDispatcher.stop = _dispatcher_stop


@contextmanager
def bluesky_as_released() -> Iterator[None]:
    """Undo the fixes for the duration of the block (for `hutch bench`'s baselines)."""
    bluesky.utils.Plan.__init__ = _RELEASED_PLAN_INIT
    try:
        yield
    finally:
        apply()
