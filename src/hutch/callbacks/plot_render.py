"""The figure of a finished run: what its detectors measured against what was scanned.

- a 1-D scan (step or fly, a count): a panel per detector field against the first scanned
  axis (time for a count), an area detector's frame sums among them;
- a 2-D scan (grid scan, snake fly scan): a map of the first detector field on the positions
  actually measured or captured;
- a run of 1-D arrays per point (an azimuthal integration's I(q)): a heat map of the points
  against the radial axis, or a waterfall of a few;
- beside them, each area detector's brightest frame and a summary stream's values.
"""

from __future__ import annotations

import textwrap
from datetime import datetime
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure

from hutch.callbacks.plot_data import Kind, RunData, field_kind, frame_sum_key
from hutch.callbacks.plot_maps import SHOWN, draw_map, draw_profiles, is_grid

__all__ = ["render"]

# More fields than these are listed, not drawn: a figure stays readable.
MAX_PANELS = 8
MAX_MAPS = 4
_ROI_FEW = ("_sum", "_centroid_x", "_centroid_y")  # of each ROI, when there are several
_WIDE, _NARROW = 12.0, 8.0  # inches: the main panels of two maps across, of one


def detector_fields(run: RunData) -> tuple[list[str], list[str]]:
    """(columns, profiles): the hinted detector fields a plot shows, in hint order. An area
    detector's frames are shown as their sums; 1-D array fields as profiles."""
    objects = [d for d in run.start.get("detectors") or () if d in run.hints] or list(run.hints)
    columns, profiles = [], []
    for obj in objects:
        for key in run.hints[obj].get("fields", ()):
            kind = field_kind(run.data_keys.get(key, {}))
            if kind is Kind.FRAMES:
                key = frame_sum_key(key)
            if not run.has(key):
                continue
            (profiles if kind is Kind.PROFILE else columns).append(key)
    return columns, profiles


def _chosen(run: RunData, columns: list[str], most: int) -> list[str]:
    """The first ``most`` of ``columns``; of ROI statistics, when they are too many, each
    ROI's sum and centroid first."""
    reduction = run.start.get("reduction") or {}
    if reduction.get("kind") == "roi_stats" and len(columns) > most:
        columns = [k for k in columns if k.endswith(_ROI_FEW)]
    return columns[:most]


def render(run: RunData, stop: dict[str, Any]) -> Figure:
    """The figure of a finished run (a 'no data' note when nothing plottable was recorded)."""
    columns, profiles = detector_fields(run)
    if profiles:
        kind, shown, height = "profiles", [], 6.0
    elif columns and is_grid(run):
        kind, shown = "map", _chosen(run, columns, MAX_MAPS)
        height = 6.0 if len(shown) < 3 else 10.0
    elif columns:
        kind, shown = "lines", _chosen(run, columns, MAX_PANELS)
        height = max(4.5, 1.2 + 2.2 * len(shown))
    else:
        kind, shown, height = "none", [], 5.0
    hidden = [k for k in columns if k not in shown]
    frames = [k for k in run.frames if frame_sum_key(k) in shown]
    side = len(frames) + bool(run.summary) if kind != "none" else 0
    width = _NARROW if kind != "map" or len(shown) == 1 else _WIDE
    side_width = 5.0 if frames else 3.0 * bool(side)  # a frame, or a few lines of text
    fig = Figure(figsize=(width + side_width, max(height, 3.2 * side)), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(_title(run, stop), fontsize=11)
    main, aside = fig.subfigures(1, 2, width_ratios=[width, side_width]) if side else (fig, None)

    if kind == "profiles":
        draw_profiles(main, run, profiles)
    elif kind == "map":
        cols = 1 if len(shown) == 1 else 2
        axes = list(main.subplots(-(-len(shown) // cols), cols, squeeze=False).flat)
        for ax, key in zip(axes, shown, strict=False):
            draw_map(main, ax, run, key)
        for ax in axes[len(shown) :]:
            ax.set_axis_off()  # an odd number of maps: the last cell stays empty
    elif kind == "lines":
        axes = list(main.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0])
        _draw_lines(axes, run, shown)
    else:
        _draw_nothing(fig.add_subplot(), run)
    notes = [f"not shown: {', '.join(hidden)}"] if hidden else []
    if run.failed_reading and kind != "none":
        notes.append(_shortened(run.failed_reading))
    if notes:
        main.supxlabel("\n".join(notes), fontsize=8)
    if aside is not None:
        panels = list(aside.subplots(side, 1, squeeze=False)[:, 0])
        for ax, key in zip(panels, frames, strict=False):
            _draw_frame(aside, ax, run, key)
        if run.summary:
            _draw_summary(panels[-1], run)
    return fig


def _title(run: RunData, stop: dict[str, Any]) -> str:
    start = run.start
    reduction = start.get("reduction") or {}
    scan = f" #{start['scan_id']}" if start.get("scan_id") is not None else ""
    title = (
        f"{start.get('plan_name', 'run')}{scan} {str(start.get('uid', ''))[:8]} "
        f"({stop.get('exit_status', 'unknown')})"
    )
    details = []
    if isinstance(start.get("time"), int | float):
        details.append(datetime.fromtimestamp(start["time"]).strftime("%Y-%m-%d %H:%M:%S"))
    sample = start.get("sample")
    if isinstance(sample, dict):
        sample = sample.get("name")
    if sample:
        details.append(f"sample {sample}")
    if reduction:
        raw_scan = reduction.get("raw_scan_id")
        details.append(
            f"{reduction.get('kind')} v{reduction.get('version')} of "
            f"{reduction.get('raw_plan_name') or 'run'}"
            f"{f' #{raw_scan}' if raw_scan is not None else ''} "
            f"{str(reduction.get('raw_uid') or start.get('raw_uid', ''))[:8]}"
        )
    return "\n".join([title, "   ".join(details)]) if details else title


def _draw_lines(axes: list[Axes], run: RunData, keys: list[str]) -> None:
    """One panel per field, sharing the x axis, so that a monitor's scale does not flatten a
    weak signal; the point whose frame is shown beside is ringed."""
    index = run.index()
    x, xlabel = run.x_axis(index)
    cen = run.summary.get("cen", (None, None))[1]
    for ax, key in zip(axes, keys, strict=True):
        y = run.column(key, index)
        ax.plot(x, y, marker="o", markersize=3)
        if (frame := run.shown_frame(key)) is not None:
            i = int(np.searchsorted(index, frame.seq_num))
            ax.plot(x[i], y[i], "o", markersize=10, **SHOWN, label="frame shown")
            ax.legend(loc="best", fontsize=8)
        if isinstance(cen, float) and np.isfinite(cen):
            ax.axvline(cen, color="tab:gray", linestyle="--", linewidth=1)
        ax.set_ylabel(run.label(key))
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(xlabel)


def _draw_frame(fig: SubFigure, ax: Axes, run: RunData, key: str) -> None:
    """An area detector's brightest frame, with where it was taken."""
    frame = run.frames[key]
    image = ax.imshow(frame.image, cmap="viridis", interpolation="nearest")
    # On an inset, the bar is as tall as the image (whose aspect is fixed), not the panel.
    fig.colorbar(image, cax=ax.inset_axes((1.04, 0.0, 0.05, 1.0)), label=f"{key} [counts]")
    where = []
    at = np.array([frame.seq_num])
    for axis in run.dimensions():
        if run.has(axis):
            units = run.units(axis)
            where.append(f"{axis} = {run.column(axis, at)[0]:.4g}{' ' + units if units else ''}")
    ax.set_title(f"{key}: brightest frame, point {frame.seq_num}\n" + ", ".join(where), fontsize=9)
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")


def _draw_summary(ax: Axes, run: RunData) -> None:
    """The summary stream's values as text."""
    values = {k: (dk, v) for k, (dk, v) in run.summary.items() if v is not None}
    width = max((len(k) for k in values), default=0)
    lines = []
    for key, (data_key, value) in values.items():
        units = data_key.get("units") or ""
        if isinstance(value, int | float):
            text = f"{value:.6g} {units}"
        else:
            text = f"array {list(np.shape(value))} {units}"
        lines.append(f"{key:<{width}} = {text}")
    ax.text(
        0.02,
        0.98,
        "\n".join(lines),
        va="top",
        ha="left",
        family="monospace",
        fontsize=9,
        transform=ax.transAxes,
    )
    ax.set_title("summary", fontsize=10, loc="left")
    ax.set_axis_off()


def _shortened(text: str, width: int = 100, lines: int = 2) -> str:
    """An error message in at most ``lines`` of ``width`` (a file's path whole, if it fits)."""
    if len(text) > width * lines:
        text = text[: width * lines - 4] + " ..."
    return textwrap.fill(text, width)


def _draw_nothing(ax: Axes, run: RunData) -> None:
    if not run.has_points:
        reason = "no data"
    elif run.failed_reading:
        reason = f"no data: {_shortened(run.failed_reading, 60, lines=4)}"
    else:
        reason = "no data: no plottable detector field"
    ax.text(
        0.5,
        0.5,
        reason,
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=16 if len(reason) < 40 else 10,
    )
    ax.set_axis_off()
