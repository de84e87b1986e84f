"""Save a PNG plot of each bluesky run when it ends."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from event_model import DocumentRouter
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hutch.callbacks.nexus import PRIMARY, render_filename, unclobbered

logger = logging.getLogger(__name__)

_PLOTTABLE = ("number", "integer", "boolean")


@dataclass
class _Run:
    """What one run's plot needs: its start document and the primary stream's columns."""

    start: dict[str, Any]
    descriptors: set[str] = field(default_factory=set)
    data_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    hints: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, list[Any]] = field(default_factory=dict)
    time: list[float] = field(default_factory=list)
    seq_num: list[int] = field(default_factory=list)


def _label(run: _Run, key: str) -> str:
    units = run.data_keys.get(key, {}).get("units")
    return f"{key} [{units}]" if units else key


def _column(run: _Run, key: str) -> np.ndarray:
    """A key's values as floats, NaN where an event lacked it or held something unplottable."""
    values = run.columns.get(key, [])
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        with contextlib.suppress(TypeError, ValueError):  # leave NaN: a gap, not a zero
            out[i] = float(value)
    return out


def _x_axis(run: _Run) -> tuple[np.ndarray, str]:
    """The first scanned dimension in the primary stream, else time (for a count) or seq_num."""
    dimensions = (run.start.get("hints") or {}).get("dimensions") or ()
    for fields, stream in dimensions:
        if stream != PRIMARY or not fields:
            continue
        if fields[0] in run.data_keys:
            return _column(run, fields[0]), _label(run, fields[0])
        if fields[0] == "time" and run.time:
            return np.asarray(run.time) - run.time[0], "time [s]"
        break
    return np.asarray(run.seq_num, dtype=float), "seq_num"


def _detector_fields(run: _Run) -> list[str]:
    """Hinted scalar numeric fields of the detectors (of every hinted object when none listed)."""
    objects = [d for d in run.start.get("detectors") or () if d in run.hints] or list(run.hints)
    return [
        key
        for obj in objects
        for key in run.hints[obj].get("fields", ())
        if run.data_keys.get(key, {}).get("dtype") in _PLOTTABLE
        and not run.data_keys[key].get("shape")
    ]


def _is_grid(run: _Run) -> bool:
    dimensions = (run.start.get("hints") or {}).get("dimensions") or ()
    shape = run.start.get("shape") or ()
    return len(dimensions) == 2 and len(shape) == 2


def _draw_lines(axes: list[Axes], run: _Run, fields: list[str]) -> None:
    """One panel per detector field, sharing the x axis, so a monitor's scale does not
    flatten a weak signal."""
    x, xlabel = _x_axis(run)
    for ax, key in zip(axes, fields, strict=True):
        ax.plot(x, _column(run, key), marker="o", markersize=3)
        ax.set_ylabel(_label(run, key))
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(xlabel)


def _edges(positions: np.ndarray, n: int) -> tuple[float, float]:
    """Outer pixel edges for ``n`` evenly spaced pixel centres spanning ``positions``."""
    low, high = float(np.nanmin(positions)), float(np.nanmax(positions))
    half = (high - low) / (n - 1) / 2 if n > 1 and high > low else 0.5
    return low - half, high + half


def _draw_grid(fig: Figure, ax: Axes, run: _Run, key: str) -> None:
    """The detector over the (slow, fast) grid, in scan order; points not reached stay blank."""
    rows, cols = (int(n) for n in run.start["shape"])
    values = np.full(rows * cols, np.nan)
    measured = _column(run, key)[: rows * cols]
    values[: len(measured)] = measured
    image = values.reshape(rows, cols)
    snaking = run.start.get("snaking") or ()
    if len(snaking) > 1 and snaking[1]:
        image[1::2] = image[1::2, ::-1]  # snaked rows were acquired right to left

    (slow_fields, _), (fast_fields, _) = run.start["hints"]["dimensions"]
    slow, fast = slow_fields[0], fast_fields[0]
    slow_pos, fast_pos = _column(run, slow), _column(run, fast)
    extent = None  # pixel indices, if the motors' positions were not recorded
    if np.isfinite(slow_pos).any() and np.isfinite(fast_pos).any():
        extent = (*_edges(fast_pos, cols), *_edges(slow_pos, rows))
    mappable = ax.imshow(image, origin="lower", aspect="auto", extent=extent)
    fig.colorbar(mappable, ax=ax, label=_label(run, key))
    ax.set_xlabel(_label(run, fast))
    ax.set_ylabel(_label(run, slow))


def render(run: _Run, stop: dict[str, Any]) -> Figure:
    """The figure for a finished run (a 'no data' note when nothing plottable was recorded)."""
    start = run.start
    fields = _detector_fields(run)
    lines = bool(run.seq_num and fields) and not _is_grid(run)
    fig = Figure(figsize=(8, 2 + 2.2 * len(fields) if lines else 5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(
        f"{start.get('plan_name', 'run')} #{start.get('scan_id', '?')} "
        f"{str(start.get('uid', ''))[:8]} ({stop.get('exit_status', 'unknown')})"
    )
    if lines:
        _draw_lines(
            list(fig.subplots(len(fields), 1, sharex=True, squeeze=False)[:, 0]), run, fields
        )
    elif run.seq_num and fields:
        _draw_grid(fig, fig.add_subplot(), run, fields[0])
    else:
        ax = fig.add_subplot()
        reason = "no data" if not run.seq_num else "no data: no plottable detector field"
        ax.text(0.5, 0.5, reason, ha="center", va="center", transform=ax.transAxes, fontsize=16)
        ax.set_axis_off()
    return fig


class PlotSaver(DocumentRouter):
    """Save one PNG per run in ``directory`` when the run stops.

    Subscribe it to a RunEngine (``RE.subscribe(PlotSaver(path))``) or feed it a replay. It
    plots the primary stream: each hinted detector field in a panel of its own against the
    first scanned motor (or time for a count), or an image of the first detector field for a
    2-D grid scan; a run with no events still gets a PNG saying "no data". Drawing uses
    matplotlib's Agg canvas directly, never pyplot, so it is safe off the main thread and
    leaves no figures open.
    ``path_for(uid)`` and ``last_path`` tell where a run's plot went.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        filename_template: str = "{beamline}_{scan_id:05d}_{uid8}.png",
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.filename_template = filename_template
        self.last_path: Path | None = None
        self._paths: dict[str, Path] = {}
        self._runs: dict[str, _Run] = {}  # by run uid
        self._by_descriptor: dict[str, _Run] = {}  # primary descriptors only

    def path_for(self, uid: str) -> Path | None:
        """The PNG saved for run ``uid``, if this saver saw that run stop."""
        return self._paths.get(uid)

    def start(self, doc: dict[str, Any]) -> None:
        self._runs[doc["uid"]] = _Run(start=doc)

    def descriptor(self, doc: dict[str, Any]) -> None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is None or doc.get("name", PRIMARY) != PRIMARY:
            return
        run.descriptors.add(doc["uid"])
        run.data_keys.update(doc.get("data_keys") or {})
        run.hints.update(doc.get("hints") or {})
        self._by_descriptor[doc["uid"]] = run

    def event_page(self, doc: dict[str, Any]) -> None:
        # Single events reach here too: DocumentRouter packs them into one-row pages.
        run = self._by_descriptor.get(doc.get("descriptor", ""))
        if run is None:
            return
        n = len(doc.get("seq_num") or ())
        for key in run.data_keys:
            column = run.columns.setdefault(key, [None] * len(run.seq_num))
            column.extend(doc.get("data", {}).get(key, [None] * n))
        run.time.extend(doc.get("time") or [np.nan] * n)
        run.seq_num.extend(doc.get("seq_num") or ())

    def stop(self, doc: dict[str, Any]) -> None:
        run = self._runs.pop(doc.get("run_start", ""), None)
        if run is None:
            return
        for uid in run.descriptors:
            self._by_descriptor.pop(uid, None)
        try:
            fig = render(run, doc)
        except Exception:  # an odd run must not fail the scan over a picture
            logger.exception("PlotSaver: could not draw run %s", run.start.get("uid"))
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = unclobbered(self.directory / render_filename(self.filename_template, run.start))
        try:
            fig.savefig(path, dpi=100)
        except OSError as err:
            raise OSError(f"PlotSaver cannot write {path}: {err}") from err
        self._paths[run.start["uid"]] = self.last_path = path
