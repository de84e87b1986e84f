"""Count until the statistics are good enough: points one by one until the counts summed
reach a relative (Poisson) error or a total."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator, RunEngineControlException
from ophyd_async.core import StandardDetector

from hutch.reduction.roi import STATISTICS

from .checks import COUNT_STATISTICS, ScanArgumentError, checked
from .reduced import (
    DerivedPoints,
    ReductionError,
    frame_roi,
    is_area_detector,
    reducing,
    roi_field,
    with_frames,
)

__all__ = ["CountResult", "count_until"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CountResult:
    """What `count_until` counted and whether it reached its target."""

    field: str
    """The detector's field, or the ROI statistic (``sum``, ``net``)."""
    points: int
    total: float
    """The counts of ``field`` summed over the points."""
    relative_error: float
    """``1 / sqrt(total)`` (infinite for no counts)."""
    target: float
    """The counts aimed at: ``total``, or ``1 / relative_error**2``."""
    target_met: bool
    """False when ``max_points`` ran out first."""
    uid: str
    roi: tuple[int, int, int, int] | None = None


def _relative_error(counts: float) -> float:
    return 1 / math.sqrt(counts) if counts > 0 else math.inf


def _scalar_fields(detectors: Sequence[Any]) -> MsgGenerator[list[str]]:
    """The fields the detectors that do not write frames read (their current values)."""
    fields: list[str] = []
    for detector in detectors:
        if not isinstance(detector, StandardDetector):
            reading = yield from bps.read(detector)
            fields.extend(reading or {})
    return fields


@checked
def count_until(
    detectors: Sequence[Any],
    field: str,
    *,
    relative_error: float | None = None,
    total: float | None = None,
    max_points: int = 100,
    roi: Sequence[int] | None = None,
    exposure: float | None = None,
    md: dict | None = None,
) -> MsgGenerator[CountResult]:
    """Take points (trigger and read ``detectors``) one by one in one run until the counts
    of ``field`` summed over them are enough: their Poisson relative error
    ``1 / sqrt(sum)`` down to ``relative_error``, or ``total`` counts (give one of the
    two); at most ``max_points`` points.

    ``field`` is a counting detector's field (``det-diode``), or a statistic of an area
    detector's region of interest ``roi`` = (min_x, min_y, size_x, size_y) pixels (default
    the whole frame): ``sum`` or ``net`` (above the background), computed from each frame as
    it is taken; ``exposure`` sets the area detectors' seconds per frame. For instance
    ``count_until([det1], "sum", roi=(44, 28, 40, 40), relative_error=0.002)``.

    If ``max_points`` run out first, the run still ends 'success', its stop document's
    reason and the log say the target was not met, and so does the returned `CountResult`
    (``target_met``).
    """
    plan = "count_until"
    target = float(total) if total is not None else 1 / float(relative_error) ** 2
    areas = [d for d in detectors if is_area_detector(d)]
    if exposure is not None and not areas:
        raise ScanArgumentError(f"{plan}: exposure applies to area detectors; none is given")
    bounds = None
    if field in STATISTICS:
        if len(areas) != 1:
            raise ScanArgumentError(
                f"{plan}: field {field!r} is an ROI statistic of an area detector: give one "
                f"among detectors ({len(areas)} given)"
            )
        bounds = yield from frame_roi(plan, areas[0], roi)
        key = roi_field(field)
    else:
        fields = yield from _scalar_fields(detectors)
        if field not in fields:
            raise ScanArgumentError(
                f"{plan}: field {field!r} is not read by the detectors (they read "
                f"{', '.join(fields) or 'no scalar fields'}; an area detector's: "
                f"{', '.join(COUNT_STATISTICS)})"
            )
        key = field

    def met(counts: float) -> bool:
        if total is not None:
            return counts >= total
        return _relative_error(counts) <= relative_error  # 1/sqrt(sum) itself, no rounding

    names = [d.name for d in detectors]
    goal = {"field": field, "relative_error": relative_error, "total": target}
    _md = {
        "plan_name": plan,
        "detectors": names,
        "plan_args": {"detectors": names, "field": field, "max_points": max_points, **goal},
        plan: {**goal, "max_points": max_points, **({"roi": list(bounds)} if bounds else {})},
        "hints": {"dimensions": [(["time"], "primary")]},
        **(md or {}),
    }
    points = DerivedPoints()
    # What the counting found: points taken, counts summed, and why it stopped early.
    state: dict[str, Any] = {"points": 0, "counts": 0.0, "failed": None}

    def counting() -> MsgGenerator[None]:
        while state["points"] < max_points and not met(state["counts"]):
            yield from bps.checkpoint()
            reading = yield from bps.trigger_and_read(list(detectors))
            state["points"] += 1
            if bounds is None:
                value = reading[key]["value"]
            else:  # reduced from the frame as the point was saved
                values = points.data.get(key, [])
                if len(values) < state["points"]:
                    state["failed"] = f"no ROI {field} of point {state['points']}"
                    return
                value = values[state["points"] - 1]
            state["counts"] += float(value)

    def reason() -> str:
        if state["failed"] or met(state["counts"]):
            return state["failed"] or ""
        return (
            f"target not met: {state['counts']:.6g} counts of {field} in {max_points} points "
            f"(relative error {_relative_error(state['counts']):.3g}), aimed at {target:.6g}"
        )

    def close_run() -> MsgGenerator[str]:
        status = "fail" if state["failed"] else "success"
        return (yield from bps.close_run(exit_status=status, reason=reason()))

    def close_failed(error: Exception) -> MsgGenerator[str]:  # as bluesky's run_wrapper
        if isinstance(error, RunEngineControlException):
            return (yield from bps.close_run(exit_status=error.exit_status))
        return (yield from bps.close_run(exit_status="fail", reason=str(error)))

    def run() -> MsgGenerator[str]:
        uid = yield from bps.open_run(_md)
        yield from bpp.contingency_wrapper(
            counting(), except_plan=close_failed, else_plan=close_run
        )
        return uid

    if bounds is None:
        uid = yield from with_frames(detectors, exposure, run)
    else:
        uid = yield from reducing(with_frames(detectors, exposure, run), areas[0], bounds, points)
    if state["failed"]:
        raise ReductionError(f"{plan}: {points.failure or state['failed']}")
    counts = state["counts"]
    result = CountResult(
        field=field,
        points=state["points"],
        total=counts,
        relative_error=_relative_error(counts),
        target=target,
        target_met=met(counts),
        uid=uid,
        roi=bounds,
    )
    if result.target_met:
        logger.info(
            "%s: %.6g counts of %s in %d points (relative error %.3g)",
            plan, counts, field, result.points, result.relative_error,
        )  # fmt: skip
    else:
        logger.warning("%s: %s", plan, reason())
    return result
