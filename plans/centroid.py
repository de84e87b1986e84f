"""Bring a beam spot on an area detector to a chosen pixel: scan, fit, move.

Where the spot lands moves in proportion to the motor (a sample stage, a mirror's pitch):
the plan scans the motor, takes a frame at each point, fits a straight line of the spot's
centroid against the position and moves to where the line reaches the target pixel. A
centroid has no peak to find, so this is not `align`'s job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
from bluesky.utils import MsgGenerator

from .align import AlignmentError, _hinted_field
from .checks import ScanArgumentError, checked
from .reduced import (
    DerivedPoints,
    ReductionError,
    frame_roi,
    is_area_detector,
    reducing,
    roi_field,
    with_frames,
)

__all__ = ["CentroidResult", "center_on_centroid"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CentroidResult:
    """Where `center_on_centroid` put the motor, and the line it fitted."""

    motor: str
    detector: str
    axis: str
    """``x`` (the centroid's column) or ``y`` (its row)."""
    target: float
    """The pixel the centroid was brought to."""
    position: float
    """Where the motor was moved: the line reaches ``target`` there."""
    slope: float
    """Pixels the centroid moves per motor unit."""
    intercept: float
    """The line's centroid at motor position 0, in pixels."""
    residual: float
    """Root mean square of the fit's residuals, in pixels."""
    points: int
    """Frames with a spot in the ROI, that the line was fitted to."""
    roi: tuple[int, int, int, int]
    uid: str


@checked
def center_on_centroid(
    motor: Any,
    detector: Any,
    start: float,
    stop: float,
    num: int,
    *,
    axis: Literal["x", "y"] = "x",
    target: float | None = None,
    roi: Sequence[int] | None = None,
    exposure: float | None = None,
    motor_field: str | None = None,
    md: dict | None = None,
) -> MsgGenerator[CentroidResult]:
    """Move ``motor`` so that the beam spot's centroid on the area detector ``detector``
    lands on the pixel ``target`` along ``axis`` (``x``: the column, ``y``: the row).

    Scans ``motor`` from ``start`` to ``stop`` in ``num`` points taking a frame (of
    ``exposure`` seconds) at each, computes the spot's centroid in the region of interest
    ``roi`` = (min_x, min_y, size_x, size_y) pixels (default the whole frame; above the
    background, as `hutch.reduction.roi` does), fits a straight line of the centroid against
    the motor position and moves the motor to where it reaches ``target``. The default
    target is the ROI's centre, ``min + (size - 1) / 2`` (pixel indices, as the centroid).
    For instance ``center_on_centroid(sample_x, det1, -1, 1, 11, target=70)``.

    The scan is an ordinary run (plan_name ``center_on_centroid``). If fewer than two frames
    show a spot, the centroid does not move with the motor, or the target lies outside the
    scanned range, `AlignmentError` is raised after the run and the motor stays where the
    scan left it. Returns a `CentroidResult`.
    """
    plan = "center_on_centroid"
    if not is_area_detector(detector):
        raise ScanArgumentError(f"{plan}: detector {detector.name} is not an area detector")
    bounds = yield from frame_roi(plan, detector, roi)
    index = 0 if axis == "x" else 1
    low_pixel, size = bounds[index], bounds[index + 2]
    aim = low_pixel + (size - 1) / 2 if target is None else float(target)
    if not low_pixel <= aim <= low_pixel + size - 1:
        raise ScanArgumentError(
            f"{plan}: target {aim:g} is outside the ROI's {axis} pixels "
            f"{low_pixel}..{low_pixel + size - 1}: the centroid cannot reach it"
        )
    x = _hinted_field(motor, "motor", motor_field)
    _md = {
        "plan_name": plan,
        plan: {
            "motor": motor.name,
            "detector": detector.name,
            "axis": axis,
            "target": aim,
            "roi": list(bounds),
        },
        **(md or {}),
    }
    points = DerivedPoints()
    scan = with_frames(
        [detector], exposure, lambda: bp.scan([detector], motor, start, stop, num, md=_md)
    )
    uid = yield from reducing(scan, detector, bounds, points)
    if points.failure:
        raise ReductionError(f"{plan}: {points.failure}; {motor.name} not moved")

    positions = np.asarray(points.data.get(x, []), dtype=float)
    centroids = np.asarray(points.data.get(roi_field(f"centroid_{axis}"), []), dtype=float)
    seen = np.isfinite(positions) & np.isfinite(centroids)  # no spot: no centroid (NaN)
    if seen.sum() < 2 or np.ptp(positions[seen]) == 0:
        raise AlignmentError(
            f"{plan}: {seen.sum()} of {len(positions)} frames show a spot in ROI "
            f"{list(bounds)}; two at different positions are needed. {motor.name} not moved"
        )
    slope, intercept = np.polyfit(positions[seen], centroids[seen], 1)
    fitted = slope * positions[seen] + intercept
    residual = float(np.sqrt(np.mean((centroids[seen] - fitted) ** 2)))
    low, high = sorted((start, stop))
    # Less than a hundredth of a pixel over the whole scan: the spot does not follow it.
    if abs(slope) * (high - low) < 0.01:
        raise AlignmentError(
            f"{plan}: the centroid {axis} does not move with {motor.name} "
            f"({slope:.3g} pixels per unit); {motor.name} not moved"
        )
    position = (aim - intercept) / slope
    if not low <= position <= high:
        raise AlignmentError(
            f"{plan}: the centroid {axis} reaches pixel {aim:g} at {motor.name}={position:.6g}, "
            f"outside the scanned range [{low:g}, {high:g}]; {motor.name} not moved"
        )
    yield from bps.mv(motor, position)
    result = CentroidResult(
        motor=motor.name,
        detector=detector.name,
        axis=axis,
        target=aim,
        position=float(position),
        slope=float(slope),
        intercept=float(intercept),
        residual=residual,
        points=int(seen.sum()),
        roi=bounds,
        uid=uid,
    )
    logger.info(
        "centred %s's spot %s on pixel %g: %s=%.6g (%.4g pixels per unit, residual %.2g pixels)",
        detector.name, axis, aim, motor.name, position, slope, residual,
    )  # fmt: skip
    return result
