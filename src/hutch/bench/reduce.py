"""``hutch bench reduce``: the reduction framework's frames/s and latency, each beside a
ceiling or floor measured in the same run.

Every frame reduced comes as a real run brings it (`hutch.bench.reduce_runs`): a step
scan's documents, per point a StreamDatum referencing its frame in an HDF5 file at
``/entry/data/data`` and the event, the frame read from the file by the runner as it reads
a detector's (a file open per StreamDatum).

- **Azimuthal integration**: the profile's azimuthal reduction (the demo's ``det2_powder``,
  256 x 256 at ``demo_powder.poni``) driven by a `ReductionRunner`, and the same parameters
  on 1024 x 1024 frames at a PONI file pyFAI writes here; beside pyFAI's own
  ``integrate1d`` on the same frames in memory, with the same integrator and arguments (the
  ceiling; goal: 90 % of it), and on each frame read from the file as the runner reads it.
- **ROI statistics**: the profile's ROI reduction (``det1_spot`` on det1's 128 x 96 frames)
  and the whole of 1024 x 1024 frames, beside numpy summing the same frames in memory
  (``frames.sum(axis=(1, 2))``, the floor cost of touching the data), and each frame read
  from the file as the runner reads it, then summed.
- **Keep-up**: both demo reductions in the reduction lane of a real recorder process fed
  the points as fast as it takes them (`hutch.bench.reduce_live`), frames/s from the first
  StreamDatum sent to the last point reduced, beside the detector's maximum frame rate
  1 / (exposure + readout time). Goal: that rate.
- **Latency**, a frame's StreamDatum in to its reduced point published (median, 95th
  percentile, worst): in-process, from feeding a `ReductionRunner` the StreamDatum to the
  derived event page it emits (the baseline); and through the recorder, points paced at
  the detector's maximum frame rate or half the rate the lane reached, if less (near the
  lane's rate, its latency is its backlog).

In-process rows and their baselines take turns every few frames (a busy machine slows them
alike), twice; the fastest try counts. pyFAI integrates with OpenMP: pyFAI's own rows and
the in-process reductions run in one process, under one OpenMP setting, and the recorder
inherits it from the environment; the tables name it (``OMP_NUM_THREADS``, else OpenMP's
default of a thread per core).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hutch.bench.reduce_live import Live, through_recorder
from hutch.bench.reduce_runs import Case, RawRun, table_cases
from hutch.bench.rows import BenchRow, BenchTableError
from hutch.profile import Profile
from hutch.reduction.azimuthal import AzimuthalIntegration, load_integrator
from hutch.reduction.runner import ReductionRunner

__all__ = ["AZIMUTHAL_GOAL", "FRAMES", "LARGE", "reduction_tables"]

#: Frames a row of the profile's detectors (a quarter as many at the large size).
FRAMES = 100
#: Side of the large frames, in pixels.
LARGE = 1024
#: Each in-process row is measured this many times, taking turns with its baselines; the
#: fastest try counts (a busy machine only ever slows a row down).
TRIES = 2
#: hutch's azimuthal integration should reach this fraction of pyFAI's own frames/s.
AZIMUTHAL_GOAL = 0.9
#: The exposure of the maximum frame rate, as the fly table's: short, the readout sets it.
EXPOSURE = 0.5e-3
#: The simulated area detector's readout time unless its ``sim`` options say otherwise.
READOUT = 0.002
#: Frames a row reduces in turn with its baselines (files hold a multiple of it: `STORED`).
_CHUNK = 8

FrameAt = Callable[[int], np.ndarray]


def reduction_tables(
    profile: Profile,
    work_dir: Path,
    *,
    frames: int = FRAMES,
    large: int = LARGE,
    tries: int = TRIES,
) -> list[BenchRow]:
    """The rows of the four tables (the module's docstring): ``frames`` frames a row of the
    profile's detectors, a quarter as many (at least 4) of ``large`` x ``large`` pixels. The
    HDF5 and NeXus files go to a temporary directory in ``work_dir``."""
    base = profile.path.parent if profile.path else Path.cwd()
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reduce-", dir=work_dir) as tmp:
        cases = table_cases(profile, Path(tmp), base, large)
        few = max(frames // 4, 4)
        counts = {"spot": frames, "powder": frames, "roi large": few, "powder large": few}
        measured = {name: _interleaved(case, counts[name], tries) for name, case in cases.items()}
        demo = [(cases[name], 1 / _period(profile, cases[name].key)) for name in ("spot", "powder")]
        live = through_recorder(profile.name, base, demo, frames, Path(tmp))
    threads = _openmp()
    return (
        _azimuthal_rows(cases, measured, threads)
        + _roi_rows(cases, measured)
        + _live_rows(profile, cases, measured, live, threads)
    )


def _period(profile: Profile, detector: str) -> float:
    """The detector's least frame period: `EXPOSURE` + its simulated readout time."""
    return EXPOSURE + float(profile.device(detector).sim.get("readout_time", READOUT))


# -- in process -------------------------------------------------------------------------------


@dataclass
class _Measured:
    """Seconds for ``frames`` frames, the fastest of the tries, and the latencies."""

    frames: int
    in_memory: float  # the baseline on the frames in memory
    from_file: float  # the baseline on each frame read as the runner reads it
    reduction: float  # the reduction through a ReductionRunner
    latencies: list[float]  # of every point of every try through the runner


def _interleaved(case: Case, n: int, tries: int) -> _Measured:
    """The reduction through a runner and its baselines (pyFAI's integrate1d or numpy's sum,
    on the frames in memory and on each read from the file) on the same ``n`` frames, taking
    turns every `_CHUNK` frames, so that a busy machine slows them alike; ``tries`` times,
    the fastest try of each counting."""
    run = case.run(n)
    memory = case.in_memory()
    stored = len(memory)

    def from_file(i: int) -> np.ndarray:
        return case.frame(i % stored)

    baselines: list[Callable[[range], float]]
    if isinstance(case.make(), AzimuthalIntegration):
        integrate = _integrate1d(case)
        baselines = [
            lambda points: integrate(lambda i: memory[i % stored], points),
            lambda points: integrate(from_file, points),
        ]
    else:
        baselines = [
            lambda points: _sum_stack(memory, points),
            lambda points: _sum_each(from_file, points),
        ]
    best = [float("inf")] * 3
    latencies: list[float] = []
    for _ in range(tries):
        feed = _RunnerFeed(case, run)
        seconds = [0.0] * 3
        for start in range(0, n, _CHUNK):
            points = range(start, min(start + _CHUNK, n))
            for k, baseline in enumerate(baselines):
                seconds[k] += baseline(points)
            seconds[2] += feed(points)
        seconds[2] += feed.finish()
        best = [min(b, s) for b, s in zip(best, seconds, strict=True)]
        latencies += feed.latencies
    return _Measured(n, *best, latencies)


class _RunnerFeed:
    """A `ReductionRunner` with a fresh reduction of ``case``, given ``run``'s start,
    descriptor and StreamResource (the reduction's set-up, untimed), then its points a range
    at a time (`__call__`: seconds), then its stop (`finish`). ``latencies``: each point's,
    from feeding its StreamDatum to the derived event page emitted."""

    def __init__(self, case: Case, run: RawRun) -> None:
        self._case = case
        self._run = run
        self._sent: dict[int, float] = {}
        self._stops: list[dict[str, Any]] = []
        self.latencies: list[float] = []
        self._reduction = case.make()
        self._runner = ReductionRunner(lambda start: [self._reduction], self._emit)
        for name, doc in run.head:
            self._runner(name, doc)

    def _emit(self, name: str, doc: dict[str, Any]) -> None:
        if name == "event_page":
            now = time.perf_counter()
            self.latencies.extend(now - self._sent[s] for s in doc["seq_num"])
        elif name == "stop":
            self._stops.append(doc)

    def __call__(self, points: range) -> float:
        began = time.perf_counter()
        for i in points:
            self._sent[i + 1] = time.perf_counter()
            for name, doc in self._run.points[i]:
                self._runner(name, doc)
        return time.perf_counter() - began

    def finish(self) -> float:
        """Seconds the stop takes; raise `BenchTableError` unless every point was reduced."""
        began = time.perf_counter()
        for name, doc in self._run.stop:
            self._runner(name, doc)
        seconds = time.perf_counter() - began
        self._runner.close()
        what = f"{self._reduction.name} on {self._case.label}"
        if len(self._stops) != 1 or self._stops[0]["exit_status"] != "success":
            reason = self._stops[0]["reason"] if self._stops else "no stop"
            raise BenchTableError(f"{what}: {reason}")
        if len(self.latencies) != len(self._run):
            reduced = len(self.latencies)
            raise BenchTableError(f"{what}: {reduced} of {len(self._run)} points reduced")
        return seconds


def _integrate1d(case: Case) -> Callable[[FrameAt, range], float]:
    """Seconds pyFAI's ``integrate1d`` takes for some frames (``frame_at(i)`` for i in a
    range), with the reduction's integrator (the same object: its engine is built once, for
    both) and arguments."""
    reduction = case.make()
    assert isinstance(reduction, AzimuthalIntegration)
    p = reduction.parameters
    ai = load_integrator(p.poni, case.shape)
    npt = p.npt or ai.guess_npt_rad()
    mask = None if p.mask is None else _mask(p.mask)

    def integrate(frame: np.ndarray) -> Any:
        return ai.integrate1d(
            frame,
            npt,
            unit=p.unit,
            method=p.method,
            mask=mask,
            radial_range=p.radial_range,
            polarization_factor=p.polarization,
            error_model=p.error_model,
        )

    integrate(np.zeros(case.shape, dtype=np.uint16))  # the engine, if not built yet

    def timed(frame_at: FrameAt, points: range) -> float:
        began = time.perf_counter()
        for i in points:
            integrate(frame_at(i))
        return time.perf_counter() - began

    return timed


def _mask(path: Path) -> np.ndarray:
    """A mask file as the reduction reads it: non-zero where pixels are bad."""
    if path.suffix == ".npy":
        return np.load(path) != 0
    import fabio

    return fabio.open(str(path)).data != 0


def _sum_stack(stack: np.ndarray, points: range) -> float:
    """Seconds numpy takes for ``frames.sum(axis=(1, 2))`` of the frames ``points`` of
    ``stack`` (a chunk never wraps around it: its length is a multiple of `_CHUNK`)."""
    first = points.start % len(stack)
    began = time.perf_counter()
    stack[first : first + len(points)].sum(axis=(1, 2))
    return time.perf_counter() - began


def _sum_each(frame_at: FrameAt, points: range) -> float:
    """Seconds to get the frames ``points`` (``frame_at(i)``) one by one and sum each."""
    began = time.perf_counter()
    for i in points:
        frame_at(i).sum()
    return time.perf_counter() - began


# -- rows -------------------------------------------------------------------------------------


def _openmp() -> str:
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        return f"OMP_NUM_THREADS={threads}"
    return f"OpenMP's default: a thread per core, {len(os.sched_getaffinity(0))}"


def _rate(
    table: str,
    name: str,
    frames: float,
    seconds: float,
    baseline: str,
    min_ratio: float | None = None,
) -> BenchRow:
    return BenchRow(
        table,
        name,
        seconds / frames * 1e3,
        baseline=baseline,
        ratio_of="rate",
        unit="ms/frame",
        events_per_s=frames / seconds,
        min_ratio=min_ratio,
    )


def _latency(table: str, name: str, seconds: list[float], baseline: str) -> BenchRow:
    ms = np.asarray(seconds) * 1e3
    return BenchRow(
        table,
        name,
        float(np.median(ms)),
        baseline=baseline,
        unit="median ms",
        p95_ms=float(np.percentile(ms, 95)),
        worst_ms=float(ms.max()),
    )


def _azimuthal_rows(
    cases: dict[str, Case], measured: dict[str, _Measured], threads: str
) -> list[BenchRow]:
    table = (
        "Azimuthal integration (pyFAI; the demo's det2_powder parameters), frames/s: "
        "AzimuthalIntegration through a ReductionRunner (documents, frames read from HDF5) vs "
        f"pyFAI's integrate1d on the same frames in memory ({threads}; goal "
        f">= {AZIMUTHAL_GOAL:.0%} of pyFAI)"
    )
    rows = []
    for name in ("powder", "powder large"):
        case, m = cases[name], measured[name]
        ceiling = f"pyFAI integrate1d, {case.label}, {m.frames} frames in memory"
        rows += [
            _rate(table, ceiling, m.frames, m.in_memory, ceiling),
            _rate(
                table,
                f"pyFAI integrate1d, {case.label}, each frame read from HDF5 as the runner does",
                m.frames,
                m.from_file,
                ceiling,
            ),
            _rate(
                table,
                f"AzimuthalIntegration via ReductionRunner, {case.label}, {m.frames} frames",
                m.frames,
                m.reduction,
                ceiling,
                min_ratio=AZIMUTHAL_GOAL,
            ),
        ]
    return rows


def _roi_rows(cases: dict[str, Case], measured: dict[str, _Measured]) -> list[BenchRow]:
    table = (
        "ROI statistics, frames/s: RoiStatistics through a ReductionRunner (documents, frames "
        "read from HDF5) vs numpy summing the same frames in memory, the floor cost of "
        "touching the data"
    )
    rows = []
    for name, what in (("spot", "the demo's det1_spot ROI"), ("roi large", "the whole frame")):
        case, m = cases[name], measured[name]
        floor = f"numpy frames.sum(axis=(1, 2)), {case.label}, {m.frames} frames in memory"
        rows += [
            _rate(table, floor, m.frames, m.in_memory, floor),
            _rate(
                table,
                f"numpy sum, {case.label}, each frame read from HDF5 as the runner does",
                m.frames,
                m.from_file,
                floor,
            ),
            _rate(
                table,
                f"RoiStatistics via ReductionRunner, {case.label}, {what}, {m.frames} frames",
                m.frames,
                m.reduction,
                floor,
            ),
        ]
    return rows


def _live_rows(
    profile: Profile,
    cases: dict[str, Case],
    measured: dict[str, _Measured],
    live: dict[str, Live],
    threads: str,
) -> list[BenchRow]:
    keep_up = (
        "Keep-up: the reduction lane of a recorder process (NeXus on), frames/s from the first "
        "StreamDatum sent to the last point reduced, points sent as fast as the recorder takes "
        f"them, vs the detector's maximum frame rate ({threads}; goal >= 1)"
    )
    latency = (
        "Latency, a frame's StreamDatum in to its reduced point published: in-process "
        "ReductionRunner vs the recorder's reduction lane, points paced at the detector's "
        "maximum frame rate or half the lane's rate, if less"
    )
    rows: list[BenchRow] = []
    latencies: list[BenchRow] = []
    for name in ("spot", "powder"):
        case = cases[name]
        reduction = case.spec.name if case.spec else name
        period = _period(profile, case.key)
        nominal = (
            f"{case.key} maximum frame rate: 1 / ({EXPOSURE * 1e3:g} ms exposure + "
            f"{(period - EXPOSURE) * 1e3:g} ms readout)"
        )
        got = live[case.key]
        rows += [
            _rate(keep_up, nominal, 1, period, nominal),
            _rate(
                keep_up,
                f"{reduction} in the recorder's reduction lane, {got.frames} frames "
                f"(sent at {got.sent:.0f}/s)",
                got.frames,
                got.frames / got.rate,
                nominal,
                min_ratio=1.0,
            ),
        ]
        in_process = f"{reduction}, in-process ReductionRunner, {case.label}"
        latencies += [
            _latency(latency, in_process, measured[name].latencies, in_process),
            _latency(
                latency,
                f"{reduction}, through the recorder, paced at {got.pace:.0f} frames/s",
                got.latencies,
                in_process,
            ),
        ]
    return rows + latencies
