"""What `PlotSaver` keeps of a run while it goes on: each field of the primary stream by
seq_num, reduced to what its plot shows.

A scalar is kept as it is (a PandA's captured position, ``[1]`` per point, as a number); a
1-D array per point (an azimuthal integration's I(q)) as a row; an area detector's frames
only as their sums, and its one representative frame (the brightest, by net sum above the
background) whole: a run may hold thousands of large frames.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from hutch.reduction.points import Block, StreamPoints

__all__ = ["Frame", "Kind", "RunData", "frame_sum_key"]

PRIMARY = "primary"
BINNED_SIZE = 256  # pixels: larger frames are binned to find the brightest (`_binned`)
_NUMERIC = ("number", "integer", "boolean")
_SUM = " sum"  # an area detector's frame sums: "det1 sum" (a space: no data key's name)


class Kind(Enum):
    """What one point of a field is, as far as a plot is concerned."""

    SCALAR = "scalar"
    PROFILE = "profile"  # a 1-D array: a spectrum, I(q)
    FRAMES = "frames"  # an image (or several): an area detector


def field_kind(data_key: dict[str, Any]) -> Kind | None:
    """The kind of a data key by its shape (singleton dimensions do not count), or None for
    what a plot cannot show (strings, objects)."""
    dtype = data_key.get("dtype")
    shape = [int(n) for n in data_key.get("shape") or ()]
    if dtype not in (*_NUMERIC, "array"):
        return None
    dims = sum(1 for n in shape if n > 1)
    if dims == 0:
        return Kind.SCALAR if dtype in _NUMERIC or shape else None
    return Kind.PROFILE if dims == 1 else Kind.FRAMES


def frame_sum_key(key: str) -> str:
    """The column of an area detector's frame sums."""
    return f"{key}{_SUM}"


@dataclass(frozen=True)
class Frame:
    """An area detector's representative frame: the one with the largest net sum."""

    seq_num: int
    net: float  # counts above the background (`roi_statistics`)
    image: np.ndarray


class _Series:
    """One field's values by seq_num, as they arrive in chunks (event pages, blocks)."""

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []

    def append(self, seq_nums: np.ndarray, values: np.ndarray) -> None:
        self._chunks.append((np.asarray(seq_nums, dtype=np.int64), np.asarray(values)))

    def seq_nums(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([s for s, _ in self._chunks])

    def aligned(self, index: np.ndarray) -> np.ndarray:
        """The values at the seq_nums ``index`` (NaN where missing; a point taken again
        after a suspension holds its last value)."""
        width = next((v.shape[1:] for _, v in self._chunks if v.ndim > 1), ())
        out = np.full((len(index), *width), np.nan)
        for seq_nums, values in self._chunks:
            if values.shape[1:] != width:
                continue  # a row of another length: left out, not stretched
            rows = np.minimum(np.searchsorted(index, seq_nums), max(len(index) - 1, 0))
            found = index[rows] == seq_nums if len(index) else np.zeros(len(rows), bool)
            out[rows[found]] = values[found]
        return out


def _floats(values: list[Any]) -> np.ndarray:
    """Numbers as floats; NaN for what is not one (a gap, not a zero)."""
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        out = np.full(len(values), np.nan)
        for i, value in enumerate(values):
            with contextlib.suppress(TypeError, ValueError):
                out[i] = float(value)
        return out


def _binned(frames: np.ndarray, most: int = BINNED_SIZE) -> np.ndarray:
    """``frames`` summed in square bins to at most ``most`` pixels a side (zero-padded at the
    edges): the sums are the frames' own, and the statistics of a 4-megapixel frame cost a
    few milliseconds instead of half a second."""
    factor = -(-max(frames.shape[1:]) // most)
    if factor <= 1:
        return frames
    n, rows, cols = frames.shape
    padded = np.zeros((n, -(-rows // factor) * factor, -(-cols // factor) * factor))
    padded[:, :rows, :cols] = frames
    return padded.reshape(n, padded.shape[1] // factor, factor, -1, factor).sum(axis=(2, 4))


@dataclass
class RunData:
    """One run's start, its primary stream reduced for plotting, and its summary stream."""

    start: dict[str, Any]
    descriptors: set[str] = field(default_factory=set)  # primary stream
    data_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    hints: dict[str, Any] = field(default_factory=dict)
    other_units: dict[str, str] = field(default_factory=dict)  # other streams' (baseline)
    summary: dict[str, tuple[dict[str, Any], Any]] = field(default_factory=dict)
    frames: dict[str, Frame] = field(default_factory=dict)  # by detector key
    points: StreamPoints | None = None  # the primary stream's external fields
    resources: dict[str, str] = field(default_factory=dict)  # StreamResource uid: data key
    failed_reading: str | None = None
    _series: dict[str, _Series] = field(default_factory=dict)
    _time: _Series = field(default_factory=_Series)
    _events: int = 0

    # Collecting

    def add_event_page(self, page: dict[str, Any]) -> None:
        seq_nums = np.asarray(page.get("seq_num") or (), dtype=np.int64)
        if not len(seq_nums):
            return
        self._events += len(seq_nums)
        data = page.get("data") or {}
        for key, values in data.items():
            if key in self.data_keys and not self.data_keys[key].get("external"):
                self._add(key, seq_nums, values)
        self._time.append(seq_nums, _floats(list(page.get("time") or [np.nan] * len(seq_nums))))

    def add_block(self, block: Block) -> None:
        """Whole points of the external fields (frames, captured positions)."""
        for key, values in block.data.items():
            self._add(key, block.seq_nums, values)

    def _add(self, key: str, seq_nums: np.ndarray, values: Any) -> None:
        kind = field_kind(self.data_keys[key])
        if kind is Kind.SCALAR:
            values = np.asarray(values) if isinstance(values, np.ndarray) else _floats(values)
            self._column(key).append(seq_nums, values.reshape(len(seq_nums), -1)[:, 0])
        elif kind is Kind.PROFILE:
            with contextlib.suppress(TypeError, ValueError):  # ragged rows: not plotted
                rows = np.asarray(values, dtype=float).reshape(len(seq_nums), -1)
                self._column(key).append(seq_nums, rows)
        elif kind is Kind.FRAMES:
            self._add_frames(key, seq_nums, np.asarray(values))

    def _add_frames(self, key: str, seq_nums: np.ndarray, frames: np.ndarray) -> None:
        """Keep the frames' sums per point and, of all frames, the brightest one."""
        # Imported at the first frame: its module's pydantic models cost the recorder's
        # start-up a fifth of a second, and most runs have no frames.
        from hutch.reduction.roi import roi_statistics

        n = len(seq_nums)
        frames = frames.reshape(-1, *frames.shape[-2:])  # several frames per point, too
        stats = roi_statistics(_binned(frames))
        self._column(frame_sum_key(key)).append(seq_nums, stats["sum"].reshape(n, -1).sum(1))
        net = np.nan_to_num(stats["net"], nan=-np.inf)
        best = int(np.argmax(net))
        kept = self.frames.get(key)
        if kept is None or net[best] > kept.net:
            self.frames[key] = Frame(
                seq_num=int(seq_nums[best * n // len(frames)]),
                net=float(net[best]),
                image=np.array(frames[best]),  # a copy: not a view keeping the block alive
            )

    def _column(self, key: str) -> _Series:
        return self._series.setdefault(key, _Series())

    # Reading

    @property
    def has_points(self) -> bool:
        return bool(self._events or self._series)

    def index(self) -> np.ndarray:
        """Every seq_num with data, in order."""
        parts = [s.seq_nums() for s in (*self._series.values(), self._time)]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def column(self, key: str, index: np.ndarray | None = None) -> np.ndarray:
        """A field's values at ``index`` (every point by default), NaN where missing: a
        number per point, or a row per point for a 1-D array field."""
        index = self.index() if index is None else index
        series = self._series.get(key)
        return series.aligned(index) if series else np.full(len(index), np.nan)

    def time(self, index: np.ndarray | None = None) -> np.ndarray:
        return self._time.aligned(self.index() if index is None else index)

    def dimensions(self) -> list[str]:
        """The first field of each scanned dimension of the primary stream, slow to fast."""
        dimensions = (self.start.get("hints") or {}).get("dimensions") or ()
        return [fields[0] for fields, stream in dimensions if stream == PRIMARY and fields]

    def x_axis(self, index: np.ndarray) -> tuple[np.ndarray, str]:
        """The first scanned axis at ``index``, else time (for a count) or seq_num."""
        axis = next(iter(self.dimensions()), None)
        if axis == "time":
            time = self.time(index)
            if np.isfinite(time).any():
                return time - np.nanmin(time), "time [s]"
        elif axis is not None and self.has(axis):
            return self.column(axis, index), self.label(axis)
        return index.astype(float), "point (seq_num)"

    def shown_frame(self, key: str) -> Frame | None:
        """The frame shown beside the plot of ``key``, if it is an area detector's sums."""
        detector = key.removesuffix(_SUM)
        return self.frames.get(detector) if key == frame_sum_key(detector) else None

    def has(self, key: str) -> bool:
        return key in self._series

    def units(self, key: str) -> str | None:
        """The field's units; for a field captured without them (``panda1-sample_x``), those
        of the motor it names in another stream (``sample_x`` in the baseline)."""
        if self.shown_frame(key) is not None:
            return "counts"
        units = self.data_keys.get(key, {}).get("units")
        if units:
            return units
        _, _, name = key.partition("-")
        return self.other_units.get(name) or None

    def known_units(self) -> dict[str, str]:
        """Every field's units known in this run, by field."""
        units = dict(self.other_units)
        units.update({k: u for k in self.data_keys if (u := self.units(k))})
        return units

    def label(self, key: str) -> str:
        units = self.units(key)
        if self.shown_frame(key) is not None:
            key = f"{key.removesuffix(_SUM)} frame sum"
        return f"{key} [{units}]" if units else key
