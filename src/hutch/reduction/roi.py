"""Region-of-interest statistics per frame, as areaDetector's NDROIStat and NDStats plugins
compute them on hardware: sum, net sum, maximum, centroid and width."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from hutch.reduction.base import Reduction, ReductionParameters
from hutch.reduction.points import Block

__all__ = ["Roi", "RoiStatistics", "roi_statistics"]

Roi = tuple[int, int, int, int]
"""(min_x, min_y, size_x, size_y) in pixels, as areaDetector's ROI plugins take them."""

_SAMPLE = 16384  # pixels the background is estimated from

STATISTICS = ("sum", "net", "max", "centroid_x", "centroid_y", "sigma_x", "sigma_y")
_UNITS = {
    "centroid_x": "pixel",
    "centroid_y": "pixel",
    "sigma_x": "pixel",
    "sigma_y": "pixel",
    "sum": "counts",
    "net": "counts",
    "max": "counts",
}


def roi_statistics(
    frames: np.ndarray,
    roi: Roi | None = None,
    background: str | float = "median",
    threshold: float = 5.0,
) -> dict[str, np.ndarray]:
    """Statistics of ``roi`` (the whole frame if None) in each of ``frames`` (n, rows, cols).

    ``sum`` and ``max`` are of the counts as measured. ``net``, the centroid and the width
    (``sigma``, the standard deviation of the intensity, in pixels of the whole frame) are of
    the counts above ``background`` (the ROI's median, right while the peak fills less than
    half of it; a constant; or "none") in the pixels more than ``threshold`` times the
    background's noise above it (its median absolute deviation, scaled to a standard
    deviation), like NDStats' centroid threshold: the noise of a flat background would
    otherwise pull the centroid to the ROI's middle.
    """
    frames = np.asarray(frames)
    if roi is not None:
        x, y, width, height = roi
        frames = frames[:, y : y + height, x : x + width]
    else:
        x = y = 0
    n = frames.shape[0]
    counts = frames.reshape(n, -1).astype(np.float64)
    # The background's level and noise from an evenly spread sample of at most _SAMPLE
    # pixels: medians of a whole megapixel frame cost 30 ms, of the sample well under 1.
    sample = counts[:, :: max(1, counts.shape[1] // _SAMPLE)]
    if background == "median":
        level = np.median(sample, axis=1, keepdims=True)
    elif background == "none":
        level = np.zeros((n, 1))
    else:
        level = np.full((n, 1), float(background))
    noise = 1.4826 * np.median(np.abs(sample - level), axis=1, keepdims=True)
    above = counts - level
    net = np.where(above > threshold * noise, above, 0.0).reshape(frames.shape)
    weight = net.sum(axis=(1, 2))
    cols = np.arange(frames.shape[2]) + x
    rows = np.arange(frames.shape[1]) + y
    by_col, by_row = net.sum(axis=1), net.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = by_col @ cols / weight
        cy = by_row @ rows / weight
        sx = np.sqrt(np.clip(by_col @ cols**2 / weight - cx**2, 0.0, None))
        sy = np.sqrt(np.clip(by_row @ rows**2 / weight - cy**2, 0.0, None))
    return {
        "sum": counts.sum(axis=1),
        "net": weight,
        "max": counts.max(axis=1),
        "centroid_x": cx,
        "centroid_y": cy,
        "sigma_x": sx,
        "sigma_y": sy,
    }


class RoiParameters(ReductionParameters):
    """``rois``: name -> (min_x, min_y, size_x, size_y) in pixels (none: the whole frame,
    as ``frame``); ``background``: "median", "none" or counts per pixel; ``threshold``: in
    noise standard deviations above the background (`roi_statistics`)."""

    rois: dict[str, Roi] = Field(default_factory=dict)
    background: Literal["median", "none"] | float = "median"
    threshold: float = Field(default=5.0, ge=0)

    @field_validator("rois")
    @classmethod
    def _sizes(cls, rois: dict[str, Roi]) -> dict[str, Roi]:
        for name, (x, y, width, height) in rois.items():
            if width < 1 or height < 1 or x < 0 or y < 0:
                raise ValueError(
                    f"ROI {name!r}: min_x, min_y must be >= 0 and sizes >= 1, got "
                    f"{[x, y, width, height]}"
                )
        return rois


class RoiStatistics(Reduction):
    """Per frame of an area detector and per ROI: sum, net sum, max, centroid (x, y) and
    width (sigma x, y), fields ``<roi>_<statistic>``. For the ROI's centroid following a
    beam spot, the spot sitting on a flat background."""

    kind = "roi_stats"
    version = "1"
    Parameters = RoiParameters

    def describe(self, start: dict[str, Any], descriptor: dict[str, Any]) -> dict[str, dict]:
        self._key = self.source_key(descriptor)
        shape = descriptor["data_keys"][self._key].get("shape") or []
        if len(shape) < 2:
            raise ValueError(f"{self._key} is not an image (shape {shape})")
        rows, cols = shape[-2:]
        for name, (x, y, width, height) in self.parameters.rois.items():
            if x + width > cols or y + height > rows:
                raise ValueError(
                    f"ROI {name!r} {[x, y, width, height]} reaches beyond the "
                    f"{cols} x {rows} frame of {self._key}"
                )
        return {
            f"{roi}_{stat}": {"dtype": "number", "shape": [], "units": _UNITS[stat]}
            for roi in self._rois()
            for stat in STATISTICS
        }

    def _rois(self) -> dict[str, Roi | None]:
        return dict(self.parameters.rois) or {"frame": None}

    def reduce(self, block: Block) -> dict[str, np.ndarray]:
        frames = block.data[self._key]
        frames = frames.reshape(-1, *frames.shape[-2:])
        out = {}
        for roi, bounds in self._rois().items():
            stats = roi_statistics(
                frames, bounds, self.parameters.background, self.parameters.threshold
            )
            out.update({f"{roi}_{stat}": values for stat, values in stats.items()})
        return out
