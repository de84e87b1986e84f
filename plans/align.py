"""Align a motor on a peak: scan, find the peak centre, move there.

The peak is a scalar detector's field (a scaler channel) or a statistic of an area
detector's region of interest (its sum, say), computed from the frames as the scan takes
them (`hutch.plans.reduced`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
from bluesky.callbacks.fitting import PeakStats
from bluesky.utils import MsgGenerator

from .checks import PEAK_STATISTICS, checked
from .reduced import (
    DerivedPoints,
    ReductionError,
    check_detector_field,
    frame_roi,
    reducing,
    roi_field,
    with_frames,
)

__all__ = ["AlignResult", "AlignmentError", "align"]

logger = logging.getLogger(__name__)


class AlignmentError(RuntimeError):
    """The scan found no usable peak; the motor was not moved to a centre."""


@dataclass(frozen=True)
class AlignResult:
    """What `align` found and where it left the motor."""

    motor: str
    field: str
    """The detector's field, or the ROI statistic (``sum``, ``net``, ``max``)."""
    center: float
    """Mid-point between the half-maximum crossings (bluesky's ``PeakStats.cen``)."""
    fwhm: float | None
    com: float
    """Centre of mass of the scanned signal."""
    peak_max: float
    """Motor position of the highest reading."""
    uid: str
    roi: tuple[int, int, int, int] | None = None
    """The area detector's region of interest (min_x, min_y, size_x, size_y), if one."""


def _hinted_field(obj: Any, role: str, field: str | None) -> str:
    if field is not None:
        return field
    fields = list(getattr(obj, "hints", {}).get("fields", []))
    if len(fields) != 1:
        raise ValueError(
            f"align: {role} {obj.name!r} has hinted fields {fields}; "
            f"pass {'field' if role == 'detector' else 'motor_field'}= to choose one"
        )
    return fields[0]


@checked
def align(
    motor: Any,
    detector: Any,
    start: float,
    stop: float,
    num: int,
    *,
    field: str | None = None,
    motor_field: str | None = None,
    roi: Sequence[int] | None = None,
    exposure: float | None = None,
    md: dict | None = None,
) -> MsgGenerator[AlignResult]:
    """Scan ``motor`` from ``start`` to ``stop`` in ``num`` points reading ``detector``, find
    the peak centre of ``field`` with bluesky's `PeakStats`, move the motor there and return
    an `AlignResult`.

    ``detector`` is a scalar detector (``field``: one of its fields, default its hinted
    one) or an area detector: then ``field`` is a statistic of its region of interest
    ``roi`` = (min_x, min_y, size_x, size_y) in pixels (default the whole frame): ``sum``
    (the default), ``net`` (above the background) or ``max``, computed from each frame as
    the scan takes it; ``exposure`` sets its seconds per frame. For instance
    ``align(sample_x, det1, -1, 2, 31, roi=(70, 40, 5, 16))`` centres the beam spot on
    the ROI's columns. To bring a spot's centroid to a pixel, use `center_on_centroid`.

    The scan is an ordinary run (plan_name ``align``) so its data land in NeXus and the
    catalogue like any other. If no peak is found, or its centre lies outside the scanned
    range, `AlignmentError` is raised after the run is closed and the motor stays where the
    scan left it.
    """
    statistic = check_detector_field("align", detector, field, roi, exposure, PEAK_STATISTICS)
    x = _hinted_field(motor, "motor", motor_field)
    _md: dict[str, Any] = {"plan_name": "align", "align": {"motor": motor.name}}
    if statistic is None:
        y = _hinted_field(detector, "detector", field)
        _md["align"]["field"] = y
        _md.update(md or {})
        stats = PeakStats(x, y)
        scan = bp.scan([detector], motor, start, stop, num, md=_md)
        uid = yield from bpp.subs_wrapper(scan, stats)
        bounds = None
    else:
        bounds = yield from frame_roi("align", detector, roi)
        y = roi_field(statistic)
        _md["align"].update(field=statistic, detector=detector.name, roi=list(bounds))
        _md.update(md or {})
        stats = PeakStats(x, y)
        points = DerivedPoints(stats)
        scan = with_frames(
            [detector], exposure, lambda: bp.scan([detector], motor, start, stop, num, md=_md)
        )
        uid = yield from reducing(scan, detector, bounds, points)
        if points.failure:
            raise ReductionError(f"align: {points.failure}; {motor.name} not moved to a centre")
    name = y if statistic is None else f"{statistic} of {detector.name} ROI {list(bounds)}"
    center = stats.cen
    low, high = sorted((start, stop))
    if center is None or not math.isfinite(center) or not low <= center <= high:
        raise AlignmentError(
            f"align: no peak of {name!r} found between {motor.name}={start} and {stop} "
            f"(centre {center}); {motor.name} not moved to a centre"
        )
    yield from bps.mv(motor, center)
    result = AlignResult(
        motor=motor.name,
        field=y if statistic is None else statistic,
        center=float(center),
        fwhm=None if stats.fwhm is None else float(stats.fwhm),
        com=float(stats.com),
        peak_max=float(stats.max[0]),
        uid=uid,
        roi=bounds,
    )
    logger.info("aligned %s on %s: centre %.6g, FWHM %s", motor.name, name, center, result.fwhm)
    return result
