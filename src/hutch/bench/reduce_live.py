"""``hutch bench reduce`` through a real recorder: the profile's reductions in the reduction
lane of a recorder process (`hutch.recorder.Recorder`, its NeXus writer on), fed raw runs as
a session feeds it.

A recorder is a process of its own, and what the table wants is per point: when its
StreamDatum went in and when its reduced point came out. So the points time themselves.
The bench sets each raw event's ``time`` to the moment it sends the point's StreamDatum (the
event follows it, as bluesky sends them), and the recorder runs hutch's own reductions
subclassed (`StampedRoi`, `StampedAzimuthal`) to add to each point `STAMP`: the seconds from
that time to the moment the reduction returned it. Both are ``time.time()``, one clock for
every process of the machine. The stamps come back in the derived run's NeXus file. They
are taken before the runner composes and pickles the derived page and queues it for the
writers, which the in-process latency (`hutch.bench.reduce`) includes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hutch.bench.reduce_runs import Case, RawRun
from hutch.bench.rows import BenchTableError
from hutch.reduction.azimuthal import AzimuthalIntegration
from hutch.reduction.base import Reduction
from hutch.reduction.points import Block
from hutch.reduction.roi import RoiStatistics

__all__ = ["STAMP", "STAMPED", "Live", "StampedAzimuthal", "StampedRoi", "through_recorder"]

#: The field a stamped reduction adds: seconds from the raw event's time to the point reduced.
STAMP = "bench_latency"
#: The fraction of the lane's own rate the latency's points are paced at, at most.
PACE_MARGIN = 0.5
#: Points of the warm-up run (pyFAI's import and the integrator's set-up in the lane).
_WARM_UP = 5


class _Stamped(Reduction):
    """A reduction whose points also carry `STAMP`."""

    def describe(self, start: dict[str, Any], descriptor: dict[str, Any]) -> dict[str, dict]:
        keys = super().describe(start, descriptor)  # type: ignore[safe-super]
        return {**keys, STAMP: {"dtype": "number", "shape": [], "units": "s"}}

    def reduce(self, block: Block) -> dict[str, np.ndarray]:
        out = super().reduce(block)  # type: ignore[safe-super]
        out[STAMP] = time.time() - block.time
        return out


class StampedRoi(_Stamped, RoiStatistics):
    """`RoiStatistics`, each point stamped (`STAMP`)."""


class StampedAzimuthal(_Stamped, AzimuthalIntegration):
    """`AzimuthalIntegration`, each point stamped (`STAMP`)."""


#: The stamped class of each kind, as a profile names it (``module:Class``).
STAMPED = {
    "roi_stats": f"{__name__}:StampedRoi",
    "azimuthal": f"{__name__}:StampedAzimuthal",
}


@dataclass
class Live:
    """One reduction in the recorder's lane."""

    frames: int
    rate: float
    """Frames/s of ``frames`` points sent at once: first StreamDatum sent to last reduced."""
    sent: float
    """Frames/s those points were sent at (the recorder acknowledges each document)."""
    pace: float
    """Frames/s the latency's points were sent at."""
    latencies: list[float]
    """Seconds, StreamDatum sent to point reduced, of ``frames`` paced points."""


def through_recorder(
    profile_name: str,
    base: Path,
    cases: list[tuple[Case, float]],
    n: int,
    tmp: Path,
) -> dict[str, Live]:
    """Each case's profile reduction, stamped, in the lane of one recorder process (files
    relative to ``base``, NeXus files and its log in ``tmp``), by the case's data key: a
    warm-up run, ``n`` points as fast as the recorder takes them, then ``n`` points paced at
    the case's maximum frame rate (the float beside it) or at `PACE_MARGIN` of the rate the
    lane reached, if less: near or beyond the lane's rate, its latency is its backlog."""
    from hutch.recorder import Recorder, RecorderConfig

    specs = [
        # Every run of the table's, whichever plans the profile reduces.
        {**case.spec.model_dump(exclude={"plans"}), "kind": STAMPED[case.spec.kind]}
        for case, _ in cases
        if case.spec is not None
    ]
    config = RecorderConfig(
        beamline=profile_name, nexus_dir=tmp / "nexus", reductions=specs, reductions_base=base
    )
    recorder = Recorder(config, tmp / "recorder.log")
    live = {}
    try:
        recorder.wait_ready()
        for case, max_rate in cases:
            warm = case.run(_WARM_UP)
            _send(recorder, warm, None)
            _stamps(recorder, warm)  # written: the lane has imported and set up
            burst = case.run(n)
            sent = _send(recorder, burst, None)
            reduced = sent + _stamps(recorder, burst)
            rate = n / (reduced.max() - sent[0])
            sending = (n - 1) / (sent[-1] - sent[0]) if n > 1 else float("inf")
            pace = min(max_rate, PACE_MARGIN * rate)
            paced = case.run(n)
            _send(recorder, paced, pace)
            live[case.key] = Live(n, rate, sending, pace, list(_stamps(recorder, paced)))
    finally:
        recorder.close()
    return live


def _send(recorder: Any, run: RawRun, pace: float | None) -> np.ndarray:
    """Send ``run`` to ``recorder``, its points ``pace`` a second (None: as fast as it takes
    them), each event's ``time`` the moment its StreamDatum went; those moments."""
    for name, doc in run.head:
        recorder(name, doc)
    sent = np.empty(len(run))
    began = time.perf_counter()
    for i, ((datum_name, datum), (event_name, event)) in enumerate(run.points):
        if pace is not None:
            time.sleep(max(began + i / pace - time.perf_counter(), 0.0))
        sent[i] = event["time"] = time.time()
        recorder(datum_name, datum)
        recorder(event_name, event)
    for name, doc in run.stop:
        recorder(name, doc)
    return sent


def _stamps(recorder: Any, run: RawRun) -> np.ndarray:
    """The stamps (`STAMP`, s) of ``run``'s one derived run, read from its NeXus file."""
    derived = recorder.derived_runs(run.uid)
    if len(derived) != 1:
        raise BenchTableError(f"raw run {run.uid}: {len(derived)} derived runs, not 1")
    (uid,) = derived
    path = recorder.outputs(uid)["nexus"]
    with h5py.File(path, "r") as f:
        status = f["/entry/run_status/exit_status"][()].decode()
        if status != "success":
            reason = f["/entry/run_status/reason"][()].decode()
            raise BenchTableError(f"the recorder's derived run {uid} ended {status}: {reason}")
        found: list[str] = []
        f.visititems(lambda name, item: found.append(name) if name.endswith(STAMP) else None)
        stamps = np.asarray(f[found[0]][()], dtype=float) if found else np.empty(0)
    if len(stamps) != len(run):
        raise BenchTableError(f"derived run {uid}: {len(stamps)} of {len(run)} points stamped")
    return stamps
