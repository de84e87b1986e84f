"""Two-dimensional views of a run: a map of a field over the positions measured in a 2-D
scan, and the heat map (or waterfall) of a 1-D array per point, such as I(q)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure, SubFigure

from hutch.callbacks.plot_data import RunData

__all__ = ["SHOWN", "draw_map", "draw_profiles", "is_grid"]

WATERFALL_MAX = 10  # fewer points than this are drawn as curves, more as a heat map
MARKED_MAX = 2500  # measured positions are dotted on a map up to so many points
SHOWN = {"markerfacecolor": "none", "markeredgecolor": "tab:red"}  # the frame shown beside
# Names a radial axis goes by (the last part of a field's name).
_RADIAL = ("q", "two_theta", "2theta", "tth", "radial", "r", "d", "chi", "energy")
_ERRORS = ("sigma", "err", "std", "unc")


def is_grid(run: RunData) -> bool:
    """A 2-D scan: two scanned dimensions, both recorded, and a 2-D shape."""
    shape = run.start.get("shape") or ()
    dims = run.dimensions()
    return len(dims) == 2 and len(shape) == 2 and all(run.has(d) for d in dims)


def draw_map(fig: Figure | SubFigure, ax: Axes, run: RunData, key: str) -> None:
    """``key`` over the (fast, slow) positions of a 2-D scan as measured (or captured on the
    fly), not the nominal grid: cells whose corners lie between neighbouring points, so a
    lagging motor shows as a skewed cell. Points the run did not reach stay blank."""
    slow, fast = run.dimensions()
    index = run.index()
    values, x, y = run.column(key, index), run.column(fast, index), run.column(slow, index)
    mesh = _mesh(run, x, y, values)
    if mesh is not None:
        mappable = ax.pcolormesh(*mesh, shading="flat", cmap="viridis")
    else:  # not a full grid of known shape: the points themselves
        mappable = ax.scatter(x, y, c=values, s=100, marker="s", cmap="viridis")
    if len(x) <= MARKED_MAX:
        size = 3 if len(x) <= 100 else 1.5
        ax.plot(
            x,
            y,
            linestyle="none",
            marker="o",
            markersize=size,
            color="white",
            markeredgecolor="black",
            markeredgewidth=size / 6,
            label="measured",
        )
    title = f"{run.label(key)} map"
    if (frame := run.shown_frame(key)) is not None:
        i = int(np.searchsorted(index, frame.seq_num))
        ax.plot(x[i], y[i], "o", markersize=10, markeredgewidth=1.5, **SHOWN)
        title += " (red ring: the frame shown)"
    fig.colorbar(mappable, ax=ax, label=run.label(key))
    ax.set_xlabel(run.label(fast))
    ax.set_ylabel(run.label(slow))
    ax.set_title(title, fontsize=10)


def _mesh(
    run: RunData, x: np.ndarray, y: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ma.MaskedArray] | None:
    """(X, Y, C) for `pcolormesh`: the points on their grid in scan order, snaked rows
    turned round, unmeasured points' positions nominal (from ``extents``), None when that
    cannot be done."""
    rows, cols = (int(n) for n in run.start["shape"])
    if rows < 2 or cols < 2 or len(values) > rows * cols:
        return None
    grids = []
    for column in (x, y, values):
        grid = np.full(rows * cols, np.nan)
        grid[: len(column)] = column
        grid = grid.reshape(rows, cols)
        snaking = run.start.get("snaking") or ()
        if len(snaking) > 1 and snaking[1]:
            grid[1::2] = grid[1::2, ::-1]  # snaked rows were taken right to left
        grids.append(grid)
    gx, gy, gv = grids
    extents = run.start.get("extents") or ()
    if not (np.isfinite(gx).all() and np.isfinite(gy).all()):
        if len(extents) != 2:
            return None
        (slow_lo, slow_hi), (fast_lo, fast_hi) = extents
        gx = np.where(np.isfinite(gx), gx, np.linspace(fast_lo, fast_hi, cols)[None, :])
        gy = np.where(np.isfinite(gy), gy, np.linspace(slow_lo, slow_hi, rows)[:, None])
    return _corners(gx), _corners(gy), np.ma.masked_invalid(gv)


def _corners(centres: np.ndarray) -> np.ndarray:
    """Cell corners around a grid of centres: the means of the four neighbouring centres,
    the outer ones extrapolated half a step out."""
    padded = np.empty((centres.shape[0] + 2, centres.shape[1] + 2))
    padded[1:-1, 1:-1] = centres
    padded[0, 1:-1] = 2 * centres[0] - centres[1]
    padded[-1, 1:-1] = 2 * centres[-1] - centres[-2]
    padded[:, 0] = 2 * padded[:, 1] - padded[:, 2]
    padded[:, -1] = 2 * padded[:, -2] - padded[:, -3]
    return (padded[:-1, :-1] + padded[1:, :-1] + padded[:-1, 1:] + padded[1:, 1:]) / 4


def _edges(centres: np.ndarray) -> np.ndarray:
    """Bin edges around monotonic centres (unit bins around a single one)."""
    if len(centres) < 2:
        return np.concatenate([centres - 0.5, centres + 0.5])
    middle = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - middle[0]], middle, [2 * centres[-1] - middle[-1]]])


def _is_radial(key: str) -> bool:
    """``q``, ``two_theta``, ``det1_q``, ``saxs-q``..."""
    key = key.lower()
    return any(key == name or key.endswith((f"_{name}", f"-{name}")) for name in _RADIAL)


def radial_and_intensity(run: RunData, keys: list[str]) -> tuple[str | None, str]:
    """(radial axis, intensity) among 1-D array fields: the axis by its name (``q``,
    ``two_theta``...) or as the field the same at every point; the intensity the first
    other field that is not an uncertainty."""
    radial = next((k for k in keys if _is_radial(k)), None)
    if radial is None:
        for key in keys:
            rows = run.column(key)
            rows = rows[np.isfinite(rows).all(axis=1)]
            if len(rows) > 1 and np.allclose(rows, rows[0]) and np.ptp(rows[0]) > 0:
                radial = key
                break
    others = [k for k in keys if k != radial] or keys
    intensity = next((k for k in others if not any(e in k.lower() for e in _ERRORS)), others[0])
    return (radial if radial != intensity else None), intensity


def draw_profiles(fig: Figure | SubFigure, run: RunData, keys: list[str]) -> None:
    """The intensity of each point against the radial axis: a heat map (points x radial
    axis) or, for a few points, a waterfall."""
    radial, intensity = radial_and_intensity(run, keys)
    index = run.index()
    rows = run.column(intensity, index)
    taken = np.isfinite(rows).any(axis=1)
    index, rows = index[taken], rows[taken]
    if radial is not None:
        axis = run.column(radial, index)
        axis = axis[np.isfinite(axis).all(axis=1)]
        q, qlabel = (axis[0], run.label(radial)) if len(axis) else (None, "")
    else:
        q = None
    if q is None or len(q) != rows.shape[1]:
        q, qlabel = np.arange(rows.shape[1], dtype=float), "bin"
    ax = fig.add_subplot()
    if not len(rows):
        ax.text(0.5, 0.5, f"no data: no point has {intensity}", ha="center", transform=ax.transAxes)
    elif len(rows) >= WATERFALL_MAX:
        _heat_map(fig, ax, run, index, q, rows, intensity)
    else:
        _waterfall(ax, run, index, q, rows, intensity)
    what = f"{intensity}({radial})" if radial else intensity
    ax.set_title(f"{what}, {len(rows)} point{'s' if len(rows) != 1 else ''}", fontsize=10)
    ax.set_xlabel(qlabel)


def _heat_map(
    fig: Figure | SubFigure,
    ax: Axes,
    run: RunData,
    index: np.ndarray,
    q: np.ndarray,
    rows: np.ndarray,
    intensity: str,
) -> None:
    """Points down, the radial axis across; against the scanned axis of a 1-D scan where
    it runs one way, else against the point number."""
    y, ylabel = index.astype(float), "point (seq_num)"
    dims = run.dimensions()
    if len(dims) == 1 and dims[0] != "time" and run.has(dims[0]):
        scanned = run.column(dims[0], index)
        steps = np.diff(scanned)
        if np.isfinite(scanned).all() and ((steps > 0).all() or (steps < 0).all()):
            y, ylabel = scanned, run.label(dims[0])
    finite = rows[np.isfinite(rows)]
    norm = Normalize()
    if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 1e3:
        norm = LogNorm()  # diffraction: peaks decades above the background
    mesh = ax.pcolormesh(
        _edges(q), _edges(y), np.ma.masked_invalid(rows), norm=norm, cmap="viridis", shading="flat"
    )
    fig.colorbar(mesh, ax=ax, label=run.label(intensity))
    ax.set_ylabel(ylabel)


def _waterfall(
    ax: Axes, run: RunData, index: np.ndarray, q: np.ndarray, rows: np.ndarray, intensity: str
) -> None:
    """One curve per point, each raised above the one before so that none hides another."""
    x, _ = run.x_axis(index)
    axis = next(iter(run.dimensions()), None)
    units = run.units(axis) if axis else None
    offset = 0.5 * float(np.nanmax(rows) - np.nanmin(rows)) if len(rows) > 1 else 0.0
    cmap = colormaps["viridis"]
    for i, (seq_num, row) in enumerate(zip(index, rows, strict=True)):
        label = f"point {seq_num}"
        if axis and axis != "time" and run.has(axis):
            label += f": {axis} = {x[i]:.4g}{' ' + units if units else ''}"
        ax.plot(q, row + i * offset, color=cmap(i / max(1, len(rows) - 1) * 0.9), label=label)
    ylabel = run.label(intensity)
    ax.set_ylabel(f"{ylabel}, each point + {offset:.3g}" if offset else ylabel)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, alpha=0.3)
