"""Runs reductions on a run's documents and emits each reduction's derived run.

A derived run is an ordinary bluesky run: its start names the raw run (``raw_uid``) and the
reduction (``reduction``: name, kind, version, parameters, the raw run's scan id), carries
the raw run's sample and proposal and its scan dimensions (no scan id of its own); its
primary stream has one event per raw point (the raw point's seq_num and time) with the
reduction's fields beside the raw run's scanned axes; a reduction with a summary adds a
one-event ``summary`` stream at the end. Live (the recorder's reduction lane) and replayed
(`hutch reduce`), the same documents come out, but for uids and the start and stop times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from event_model import ComposeDescriptorBundle, ComposeRunBundle, compose_run

import hutch
from hutch.reduction.base import Reduction
from hutch.reduction.external import ExternalArrays
from hutch.reduction.points import Block, StreamPoints

__all__ = ["DerivedRun", "ReductionRunner", "derived_start"]

logger = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], None]

# Raw start keys a derived run carries on, so that it is found as the raw run is. Not the
# scan id: a scan id names one run (``catalog[N]`` in databroker and tiled's clients); the
# raw run's is ``reduction.raw_scan_id``.
_CARRIED = (
    "beamline",
    "facility",
    "proposal",
    "sample",
    "operator",
    "profile",
    "shape",
    "snaking",
    "users",
    "experiment",
)


def derived_start(raw: dict[str, Any], reduction: Reduction, axes: list[str]) -> dict[str, Any]:
    """The metadata of ``reduction``'s derived run of the raw run ``raw``."""
    dimensions = [
        [fields, "primary"]
        for fields, stream in _dimensions(raw)
        if stream == "primary" and all(f in axes for f in fields)
    ]
    md = {key: raw[key] for key in _CARRIED if key in raw}
    md.update(
        plan_name=f"reduce {reduction.name}",
        raw_uid=raw["uid"],
        reduction={
            "name": reduction.name,
            "kind": reduction.kind,
            "class": f"{type(reduction).__module__}:{type(reduction).__qualname__}",
            "version": reduction.version,
            "parameters": reduction.parameters.model_dump(mode="json"),
            "raw_uid": raw["uid"],
            "raw_scan_id": raw.get("scan_id"),
            "raw_plan_name": raw.get("plan_name"),
            "program": "hutch",
            "program_version": hutch.__version__,
        },
        detectors=[reduction.name],
        motors=list(axes),
        hints={"dimensions": dimensions} if dimensions else {},
    )
    return md


def _dimensions(start: dict[str, Any]) -> list[tuple[list[str], str]]:
    return [(list(f), s) for f, s in (start.get("hints") or {}).get("dimensions") or ()]


def _axes(start: dict[str, Any], descriptor: dict[str, Any]) -> list[str]:
    """The raw stream's scanned fields (numbers in its events or captured on the fly)."""
    keys = descriptor["data_keys"]
    return [
        f
        for fields, stream in _dimensions(start)
        if stream == descriptor.get("name")
        for f in fields
        if f in keys and keys[f].get("dtype") in ("number", "integer")
    ]


@dataclass
class DerivedRun:
    """One reduction's derived run of one raw run, while the raw run goes on."""

    reduction: Reduction
    raw: dict[str, Any]
    emit: Emit
    bundle: ComposeRunBundle | None = None
    stream: ComposeDescriptorBundle | None = None
    raw_stream: str | None = None  # the raw descriptor uid it reduces
    axes: list[str] = field(default_factory=list)
    failed: str | None = None
    pages: int = 0  # event pages emitted

    @property
    def uid(self) -> str | None:
        return self.bundle.start_doc["uid"] if self.bundle else None

    def open(self, descriptor: dict[str, Any]) -> None:
        """Start the derived run on the raw stream ``descriptor``."""
        self.raw_stream = descriptor["uid"]
        self.axes = _axes(self.raw, descriptor)
        self.bundle = compose_run(metadata=derived_start(self.raw, self.reduction, self.axes))
        self.emit("start", self.bundle.start_doc)
        data_keys: dict[str, dict] = {}
        try:
            for axis in self.axes:
                raw_key = descriptor["data_keys"][axis]
                data_keys[axis] = {
                    "dtype": raw_key.get("dtype", "number"),
                    "shape": [],
                    "source": f"raw:{raw_key.get('source', axis)}",
                    **{k: raw_key[k] for k in ("units", "precision") if k in raw_key},
                }
            source = f"reduction:{self.reduction.name}"
            for key, data_key in self.reduction.describe(self.raw, descriptor).items():
                data_keys[key] = {"source": source, **data_key}
        except Exception as exc:
            self.fail(exc, "describing its fields")
            return
        fields = [k for k in data_keys if k not in self.axes]
        hints = {self.reduction.name: {"fields": fields}}
        hints.update({axis: {"fields": [axis]} for axis in self.axes})
        self.stream = self.bundle.compose_descriptor(
            name="primary",
            data_keys=data_keys,
            hints=hints,
            object_keys={self.reduction.name: fields, **{a: [a] for a in self.axes}},
        )
        self.emit("descriptor", self.stream.descriptor_doc)

    def reduce(self, block: Block) -> None:
        if self.stream is None or self.failed:
            return
        try:
            values = self.reduction.reduce(block)
        except Exception as exc:
            self.fail(exc, f"seq_num {int(block.seq_nums[0])}")
            return
        data = {axis: _squeezed(block.data[axis]) for axis in self.axes}
        data.update(values)
        times = np.where(np.isfinite(block.time), block.time, self.raw.get("time", 0.0))
        page = self.stream.compose_event_page(
            data={k: list(v) for k, v in data.items()},
            timestamps={k: list(times) for k in data},
            seq_num=[int(s) for s in block.seq_nums],
            time=[float(t) for t in times],
            # The first page is checked against event-model's schema; the next ones have
            # its shape (schema validation cost 4 ms of a 256 x 256 frame's 7: bench reduce).
            validate=not self.pages,
        )
        self.pages += 1
        self.emit("event_page", page)

    def close(self, raw_stop: dict[str, Any] | None) -> None:
        """End the derived run with the raw run (``raw_stop``; None: the raw run was never
        closed): the summary stream, then the stop."""
        if self.bundle is None:
            return
        if not self.failed and self.stream is not None:
            self._summarize()
        if self.failed:
            exit_status, reason = "fail", self.failed
        elif raw_stop is None:
            exit_status, reason = "abort", "the raw run was never closed"
        else:
            exit_status = raw_stop.get("exit_status", "success")
            reason = "" if exit_status == "success" else f"the raw run ended {exit_status}"
        stop = self.bundle.compose_stop(
            exit_status=exit_status, reason=reason, time=(raw_stop or {}).get("time")
        )
        self.bundle = None
        self.emit("stop", stop)

    def _summarize(self) -> None:
        try:
            summary = self.reduction.summary()
        except Exception as exc:
            self.fail(exc, "its summary")
            return
        if not summary:
            return
        source = f"reduction:{self.reduction.name}"
        stream = self.bundle.compose_descriptor(
            name="summary",
            data_keys={k: {"source": source, **dk} for k, (dk, _) in summary.items()},
        )
        self.emit("descriptor", stream.descriptor_doc)
        time = self.raw.get("time", 0.0)
        self.emit(
            "event",
            stream.compose_event(
                data={k: _plain(v) for k, (_, v) in summary.items()},
                timestamps={k: time for k in summary},
                seq_num=1,
                time=time,
            ),
        )

    def fail(self, exc: BaseException, doing: str) -> None:
        self.failed = (
            f"{self.reduction.name} ({self.reduction.kind} {self.reduction.version}) failed "
            f"at {doing}: {type(exc).__name__}: {exc}"
        )
        logger.error("reduction %s", self.failed)


def _squeezed(values: np.ndarray) -> np.ndarray:
    """One number per point (a PandA's captured field comes as ``[1]`` per point)."""
    values = np.asarray(values)
    return values.reshape(len(values), -1)[:, 0] if values.ndim > 1 else values


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


@dataclass
class _RawRun:
    start: dict[str, Any]
    derived: list[DerivedRun]
    streams: dict[str, StreamPoints] = field(default_factory=dict)  # by descriptor uid
    reduced: dict[str, list[DerivedRun]] = field(default_factory=dict)  # by descriptor uid
    resources: set[str] = field(default_factory=set)


class ReductionRunner:
    """A document consumer that runs ``reductions`` on every run and ``emit``s their
    derived runs' documents. ``factory(start)`` gives the reductions for a raw run (fresh
    instances: a reduction may keep state through a run).

    Feed it a run's documents live or replayed; derived runs' documents come out as their
    points complete. `close()` ends the derived runs of raw runs that never stopped.
    """

    def __init__(self, factory: Callable[[dict[str, Any]], list[Reduction]], emit: Emit) -> None:
        self._factory = factory
        self._emit = emit
        self._external = ExternalArrays()
        self._runs: dict[str, _RawRun] = {}
        self._stream_runs: dict[str, _RawRun] = {}  # descriptor uid -> run

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        handler = getattr(self, f"_{name}", None)
        if handler is not None:
            handler(doc)

    def _start(self, doc: dict[str, Any]) -> None:
        if "raw_uid" in doc:
            return  # a derived run: not reduced again
        reductions = self._factory(doc)
        if reductions:
            self._runs[doc["uid"]] = _RawRun(
                doc, [DerivedRun(r, doc, self._emit) for r in reductions]
            )

    def _descriptor(self, doc: dict[str, Any]) -> None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is None or doc["uid"] in run.streams:
            return
        takers = [
            d for d in run.derived if d.raw_stream is None and d.reduction.accepts(run.start, doc)
        ]
        if not takers:
            return
        run.streams[doc["uid"]] = StreamPoints(doc, self._external)
        run.reduced[doc["uid"]] = takers
        self._stream_runs[doc["uid"]] = run
        for derived in takers:
            derived.open(doc)

    def _event(self, doc: dict[str, Any]) -> None:
        self._event_page(
            {
                "descriptor": doc["descriptor"],
                "seq_num": [doc["seq_num"]],
                "time": [doc["time"]],
                "data": {k: [v] for k, v in doc["data"].items()},
            }
        )

    def _event_page(self, doc: dict[str, Any]) -> None:
        run = self._stream_runs.get(doc.get("descriptor", ""))
        if run is not None:
            run.streams[doc["descriptor"]].add_event_page(doc)
            self._reduce_ready(run, doc["descriptor"])

    def _stream_resource(self, doc: dict[str, Any]) -> None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is not None:
            self._external.stream_resource(doc)
            run.resources.add(doc["uid"])

    def _stream_datum(self, doc: dict[str, Any]) -> None:
        run = self._stream_runs.get(doc.get("descriptor", ""))
        if run is None:
            return
        try:
            run.streams[doc["descriptor"]].add_stream_datum(doc)
        except (OSError, KeyError) as exc:
            for derived in run.reduced[doc["descriptor"]]:
                derived.fail(exc, f"reading {doc.get('uid')}")
            return
        self._reduce_ready(run, doc["descriptor"])

    def _reduce_ready(self, run: _RawRun, descriptor: str) -> None:
        while (block := run.streams[descriptor].ready()) is not None:
            for derived in run.reduced[descriptor]:
                derived.reduce(block)

    def _stop(self, doc: dict[str, Any]) -> None:
        run = self._runs.pop(doc.get("run_start", ""), None)
        if run is not None:
            self._finish(run, doc)

    def _finish(self, run: _RawRun, stop: dict[str, Any] | None) -> None:
        for uid in run.streams:
            self._stream_runs.pop(uid, None)
        self._external.forget(run.resources)
        for derived in run.derived:
            derived.close(stop)

    def close(self) -> None:
        """End the derived runs of raw runs still open (their session died)."""
        for run in list(self._runs.values()):
            self._finish(run, None)
        self._runs.clear()
        self._external.close()
