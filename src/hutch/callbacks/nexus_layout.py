"""How a stream's data are shown in NXdata groups, so that NeXus readers (silx, h5web,
nexusformat/NeXpy, scippnexus) plot them without guessing.

What the readers need, and so what is written:

- One ``@signal``; ``@axes`` with one entry per dimension of the signal (``"."`` where no
  axis), the scanned (fastest) axis first: silx rejects an image-per-point signal without
  them.
- ``@AXISNAME_indices`` for every other per-point field, so scippnexus gives each its
  dimension instead of guessing from shapes (which fails when the number of points equals
  a frame's width). Never without ``@axes`` (scippnexus fails on indices alone) and never
  pointing at a ``"."`` dimension.
- Only fields whose dimensions a reader can tell: the signal, the per-point scalars and the
  fields shaped like the signal. A spectrum beside a scalar signal stays in its device's
  group (scippnexus would not assemble the NXdata otherwise).
- A 1-D array field equal at every point (a radial axis ``q``) is the axis of the signal's
  inner dimension, written once (1-D); an axis that changes from point to point is shown
  as given, a coordinate of the signal's shape.
- A 2-D scan's points are scattered in ``/entry/data``: both positions are coordinates of
  the one point dimension and ``@coordinates`` names them (NeXpy/nexusformat then draw a
  scatter map; silx's scatter needs more ``@axes`` than dimensions, which nxvalidate
  rejects). So at the end of the run the map is also written on its grid, ``/entry/map``:
  a 2-D signal with 1-D axes, which every reader shows as an image.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from hutch.callbacks.nexus_fields import Column, free_name, nx_name, set_class

__all__ = ["PRIMARY", "Member", "Stream", "describe", "detector_signal", "write_map"]

PRIMARY = "primary"


@dataclass
class Member:
    """One data key of a stream, as its NXdata group may show it."""

    key: str
    name: str  # its name in the stream's NXdata group
    home: h5py.Group  # the group holding it (a device's, or the NXdata group itself)
    home_name: str
    target: h5py.Dataset | h5py.ExternalLink
    row_shape: tuple[int, ...]  # one point's shape
    numeric: bool
    column: Column | None = None  # None: written by a detector (external link)


@dataclass
class Stream:
    """One event stream: its NXdata group, its data keys, and rows written.

    ``holds_data``: the datasets live in the NXdata group (streams other than the primary);
    otherwise the NXdata group shows links to them (`describe` chooses which)."""

    name: str
    nxdata: h5py.Group
    holds_data: bool
    members: dict[str, Member] = field(default_factory=dict)  # by data key
    owners: dict[str, str] = field(default_factory=dict)  # data key -> device (object) name
    descriptor: dict[str, Any] = field(default_factory=dict)  # the first one (hints)
    rows: int = 0
    shown: dict[str, Any] = field(default_factory=dict)  # NXdata name -> what it shows

    @property
    def columns(self) -> dict[str, Column]:
        return {k: m.column for k, m in self.members.items() if m.column is not None}

    def free_name(self, key: str) -> str:
        """A name for ``key`` in the NXdata group that no other member has."""
        taken = {m.name for m in self.members.values()}
        name, n = nx_name(key), 1
        candidate = name
        while candidate in taken or (self.holds_data and candidate in self.nxdata):
            n += 1
            candidate = f"{name}_{n}"
        return candidate


def external_row_shape(data_key: dict[str, Any]) -> tuple[int, ...]:
    """One point's shape in a detector's file: the data key's shape without its 1s (a
    PandA's captured field is described ``[1]`` and stored ``(points,)``)."""
    return tuple(int(n) for n in data_key.get("shape") or () if int(n) != 1)


def is_numeric(data_key: dict[str, Any]) -> bool:
    """Whether a detector-written data key holds numbers."""
    if data_key.get("dtype") in ("number", "integer"):
        return True
    try:
        return np.dtype(data_key.get("dtype_numpy") or "O").kind in "biuf"
    except TypeError:
        return False


def _dimension_keys(start: dict[str, Any], stream: Stream) -> list[list[str]]:
    """Each scan dimension's data keys present in the stream as one number per point."""
    dimensions = (start.get("hints") or {}).get("dimensions") or ()
    out = []
    for fields, stream_name in dimensions:
        if stream_name != stream.name:
            continue
        keys = [f for f in fields if f in stream.members and stream.members[f].row_shape == ()]
        if keys:
            out.append(keys)
    return out


def _signal(
    start: dict[str, Any], stream: Stream, axes: set[str], monitor: Callable[[str], bool]
) -> str | None:
    """The first hinted detector field (a beam monitor only if nothing else), else the
    first number."""
    members = stream.members
    numeric = [k for k, m in members.items() if m.numeric and k not in axes]
    hints = stream.descriptor.get("hints") or {}
    detectors = [d for d in start.get("detectors") or () if d in hints] or list(hints)
    hinted = [f for d in detectors for f in hints[d].get("fields", ()) if f in numeric]
    hinted.sort(key=monitor)
    return next(iter(hinted + numeric), None)


def describe(start: dict[str, Any], stream: Stream, monitor: Callable[[str], bool]) -> None:
    """Show the stream in its NXdata group: members, ``@signal``, ``@axes``,
    ``@AXISNAME_indices`` and ``@coordinates`` (the module's docstring says why).
    ``monitor(key)``: whether a data key is a beam monitor. Call again whenever the stream
    gains a member or a column's ``constant`` changes: it rewrites what differs."""
    nxdata, members = stream.nxdata, stream.members
    dimensions = _dimension_keys(start, stream)
    scanned = {k for keys in dimensions for k in keys}
    signal_key = _signal(start, stream, scanned, monitor)
    if signal_key is None:
        return  # nothing plottable yet: a later descriptor or link may bring it
    signal = members[signal_key]
    shown: dict[str, Any] = {
        m.name: m.target for m in members.values() if m.row_shape in ((), signal.row_shape)
    }
    if stream.holds_data:
        shown = {}  # its datasets live in the group: nothing to link

    # Inner dimensions of the signal (an I(q) per point): a 1-D field equal at every point.
    inner: list[str] = []
    for length in signal.row_shape:
        axis = None if stream.holds_data else _inner_axis(stream, signal, length, inner)
        inner.append("." if axis is None else axis.name)
        if axis is not None:
            shown[axis.name] = axis.column
    _show(stream, shown)

    lead = members[dimensions[-1][0]].name if dimensions else "."  # the fastest axis
    attrs = {"signal": signal.name}
    if lead != "." or any(a != "." for a in inner):
        attrs["axes"] = [lead, *inner]
    if lead != ".":  # every per-point scalar is shown, and indexes the points
        for m in members.values():
            if m.row_shape == () and m is not signal:
                attrs[f"{m.name}_indices"] = 0
    for i, name in enumerate(inner, 1):
        if name != ".":
            attrs[f"{name}_indices"] = i
    if signal.row_shape == () and len(dimensions) == 2:
        attrs["coordinates"] = [members[keys[0]].name for keys in dimensions]
    _set_attrs(nxdata, attrs)


def _inner_axis(stream: Stream, signal: Member, length: int, taken: list[str]) -> Member | None:
    """An in-file field of one ``length`` array per point, the same at every point so far."""
    for m in stream.members.values():
        column = m.column
        if (
            column is not None
            and m is not signal
            and m.row_shape == (length,)
            and column.constant
            and column.reference is not None
            and m.name not in taken
        ):
            return m
    return None


def _show(stream: Stream, shown: dict[str, Any]) -> None:
    """Make the NXdata group's links (and 1-D axis copies) what ``shown`` says."""
    nxdata = stream.nxdata
    for name in [n for n in stream.shown if stream.shown[n] is not shown.get(n)]:
        del nxdata[name]
        del stream.shown[name]
    for name, target in shown.items():
        if name in stream.shown:
            continue
        if isinstance(target, Column):  # the same at every point: once, 1-D
            dataset = nxdata.create_dataset(name, data=target.reference)
            for key in ("units", "source"):
                if key in target.values.attrs:
                    dataset.attrs[key] = target.values.attrs[key]
        else:
            nxdata[name] = target
        stream.shown[name] = target


def _set_attrs(group: h5py.Group, attrs: dict[str, Any]) -> None:
    managed = ("signal", "axes", "coordinates")
    for key in [k for k in group.attrs if k in managed or k.endswith("_indices")]:
        if key not in attrs:
            del group.attrs[key]
    for key, value in attrs.items():
        old = group.attrs.get(key)
        if old is None or np.asarray(old).tolist() != np.asarray(value).tolist():
            group.attrs[key] = value


def detector_signal(
    members: list[Member], hinted: list[str], monitor: Callable[[str], bool]
) -> str | None:
    """The field of a detector's group that is its ``@signal`` (for a group without
    ``data``: a scaler's channels, a PandA's captured positions): its first hinted number
    that is not a beam monitor, else its first number of one value per point."""
    numbers = [m for m in members if m.numeric]
    by_key = {m.key: m for m in numbers}
    for key in sorted((k for k in hinted if k in by_key), key=monitor):
        return by_key[key].home_name
    return next((m.home_name for m in numbers if m.row_shape == ()), None)


# -- the map of a 2-D scan --------------------------------------------------------------


def _grid(values: np.ndarray, shape: tuple[int, int], snake: bool) -> np.ndarray:
    """Points in acquisition order onto the scan's grid (float, NaN where not measured);
    a snaked fast axis goes backwards on odd rows."""
    rows, cols = shape
    flat = np.full(rows * cols, np.nan)
    n = min(len(values), rows * cols)
    flat[:n] = values[:n]
    grid = flat.reshape(rows, cols)
    if snake:
        grid[1::2] = grid[1::2, ::-1]
    return grid


def _line(values: np.ndarray) -> np.ndarray:
    """The mean of each row of ``values``; rows not measured are extrapolated linearly from
    the others (a reader cannot scale an axis with gaps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice"
        line = np.nanmean(values, axis=1)
    known = np.isfinite(line)
    index = np.arange(len(line), dtype=float)
    if known.sum() >= 2:
        slope, offset = np.polyfit(index[known], line[known], 1)
        line[~known] = slope * index[~known] + offset
    else:
        line[~known] = index[~known] + (line[known][0] if known.any() else 0.0)
    return line


def write_map(entry: h5py.Group, start: dict[str, Any], stream: Stream) -> str | None:
    """For a 2-D scan (start ``shape`` [rows, columns], two scanned dimensions) whose
    signal is a number per point: ``/entry/map``, the signal on the scan's grid (snaked rows
    turned back), the mean measured position of each row and column as 1-D axes, and the
    position measured at each point (``<axis>_points``). Returns the group's name."""
    shape = tuple(start.get("shape") or ())
    signal = stream.members.get(_key_of(stream, stream.nxdata.attrs.get("signal")))
    dimensions = _dimension_keys(start, stream)
    if len(shape) != 2 or len(dimensions) != 2 or signal is None:
        return None
    axes = [stream.members[keys[0]] for keys in dimensions]
    if any(m.column is None or m.row_shape != () or not m.numeric for m in (signal, *axes)):
        return None  # frames (no map without a reduction) or data left in detectors' files
    snaking = list(start.get("snaking") or ())
    snake = len(snaking) > 1 and bool(snaking[1])
    rows, cols = int(shape[0]), int(shape[1])
    name = free_name(entry, "map")
    group = set_class(entry.create_group(name), "NXdata")

    values = signal.column.values[()]
    grid = _grid(values, (rows, cols), snake)
    complete = len(values) >= rows * cols and not np.isnan(grid).any()
    _copy(group, signal.name, grid.astype(values.dtype) if complete else grid, signal)
    slow, fast = (_grid(m.column.values[()], (rows, cols), snake) for m in axes)
    _copy(group, axes[0].name, _line(slow), axes[0])
    _copy(group, axes[1].name, _line(fast.T), axes[1])
    attrs: dict[str, Any] = {"signal": signal.name, "axes": [m.name for m in axes]}
    attrs[f"{axes[0].name}_indices"], attrs[f"{axes[1].name}_indices"] = 0, 1
    for m, points in zip(axes, (slow, fast), strict=True):
        points_name = free_name(group, f"{m.name}_points")
        _copy(group, points_name, points, m)
        attrs[f"{points_name}_indices"] = [0, 1]
    group.attrs.update(attrs)
    return name


def _key_of(stream: Stream, name: Any) -> str | None:
    return next((k for k, m in stream.members.items() if m.name == name), None)


def _copy(group: h5py.Group, name: str, values: np.ndarray, member: Member) -> None:
    dataset = group.create_dataset(name, data=values)
    units = member.column.values.attrs.get("units") if member.column is not None else None
    if units:
        dataset.attrs["units"] = units
