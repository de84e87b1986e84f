"""The recorder's reduction lane: reductions run live on the session's documents, in a
thread of the recorder process, and their derived runs go to the recorder's writers.

It runs outside the RunEngine's process, and its queue has no bound: however slow a
reduction, the recorder's receiving thread never waits for it, so it never slows a scan
(it only lags, and catches up after the run). A reduction that raises ends its own derived
run as failed; the lane and every other reduction go on. Derived documents join the NeXus,
plot and catalogue writers' queues beside the session's documents; those writers end only
once the lane has ended too (`LANE_END`), so a derived run is written before the recorder
exits.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hutch.recorder import _CLOSE

__all__ = ["LANE_END", "Derived", "ReductionLane", "merge_stream_datums"]

logger = logging.getLogger(__name__)

# Messages the lane takes at once: StreamDatums among them are merged.
_BATCH = 1000

LANE_END = object()
"""What the lane puts in each writer's queue once it has emitted its last document."""


def merge_stream_datums(messages: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``messages`` with each StreamDatum that continues an earlier one of the same
    StreamResource (next indices, next seq_nums) merged into it, within a run.

    A lane that has fallen behind then reads a file once for many frames and reduces them
    as one block, and so catches up: a step scan's StreamDatums come one a frame. A point's
    StreamDatum may come earlier than its event this way; a point is whole with both.
    """
    out: list[tuple[str, Any]] = []
    last: dict[str, int] = {}  # StreamResource uid -> index in ``out`` of its latest datum
    for name, doc in messages:
        if name == "stream_datum":
            i = last.get(doc["stream_resource"])
            if i is not None:
                before = out[i][1]
                if (
                    before["indices"]["stop"] == doc["indices"]["start"]
                    and before["seq_nums"]["stop"] == doc["seq_nums"]["start"]
                ):
                    out[i] = (
                        name,
                        {
                            **before,
                            "indices": {**before["indices"], "stop": doc["indices"]["stop"]},
                            "seq_nums": {**before["seq_nums"], "stop": doc["seq_nums"]["stop"]},
                        },
                    )
                    continue
            last[doc["stream_resource"]] = len(out)
        elif name in ("start", "stop"):
            last.clear()
        out.append((name, doc))
    return out


@dataclass(frozen=True)
class Derived:
    """A derived run's document, queued for a writer beside the session's messages:
    pickled, so that each writer gets a copy of its own (a writer may change what it is
    given, as the catalogue's normalizer does)."""

    data: bytes

    @property
    def message(self) -> tuple[str, dict[str, Any]]:
        return pickle.loads(self.data)


class ReductionLane:
    """Runs the reductions ``specs`` (`hutch.profile.ReductionSpec`s as dicts; files relative to
    ``base``) on every document the recorder receives (`received`, pickled as sent) and
    queues the derived documents for each writer queue in ``outputs``. ``report(kind,
    value)`` tells the session which derived runs a raw run got once they are all emitted
    (``reduced``: (raw uid, [derived uids]))."""

    def __init__(
        self,
        specs: list[Any],
        base: Path | None,
        outputs: list[queue.Queue],
        report: Callable[[str, Any], None],
    ) -> None:
        self.received: queue.Queue = queue.Queue()  # unbounded: see the module docstring
        self._specs = specs
        self._base = base
        self._outputs = outputs
        self._report = report
        self._derived: dict[str, list[str]] = {}  # raw uid -> derived uids
        self._thread = threading.Thread(target=self._run, name="reduction", daemon=True)
        self._thread.start()

    def _reductions(self, start: dict[str, Any]) -> list[Any]:
        return [s.make(self._base) for s in self._specs if s.applies_to(start)]

    def _validated(self) -> None:
        from hutch.profile import ReductionSpec

        self._specs = [ReductionSpec.model_validate(spec) for spec in self._specs]

    def _emit(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self._derived.setdefault(doc["raw_uid"], []).append(doc["uid"])
        derived = Derived(pickle.dumps((name, doc), protocol=pickle.HIGHEST_PROTOCOL))
        for output in self._outputs:
            output.put(derived)

    def _run(self) -> None:
        # Imported here, in the lane's thread: the recorder receives before heavy imports.
        from hutch.reduction.runner import ReductionRunner

        runner = ReductionRunner(self._reductions, self._emit)
        try:
            self._validated()
            ended = False
            while not ended:
                messages, ended = self._take()
                for name, doc in messages:
                    try:
                        runner(name, doc)
                    except Exception:  # the runner's own bug: reductions' errors it keeps
                        logger.exception("reduction lane: a %s document failed", name)
                    if name == "stop":
                        raw = doc["run_start"]
                        self._report("reduced", (raw, self._derived.pop(raw, [])))
        finally:
            try:
                runner.close()
            finally:
                for raw, uids in self._derived.items():
                    self._report("reduced", (raw, uids))
                for output in self._outputs:
                    output.put(LANE_END)

    def _take(self) -> tuple[list[tuple[str, Any]], bool]:
        """What the session sent since the lane last looked (waiting for something), its
        StreamDatums merged (`merge_stream_datums`), and whether the session's end is in it."""
        items = [self.received.get()]
        with contextlib.suppress(queue.Empty):
            while len(items) < _BATCH:
                items.append(self.received.get_nowait())
        messages = []
        for data in items:
            message = None if data is None else pickle.loads(data)
            if message is None or message[0] == _CLOSE:
                return merge_stream_datums(messages), True
            messages.append(message)
        return merge_stream_datums(messages), False

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
