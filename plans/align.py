"""Align a motor on a peak: scan, find the peak centre, move there."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
from bluesky.callbacks.fitting import PeakStats

from .checks import checked

__all__ = ["AlignResult", "AlignmentError", "align"]

logger = logging.getLogger(__name__)


class AlignmentError(RuntimeError):
    """The scan found no usable peak; the motor was not moved to a centre."""


@dataclass(frozen=True)
class AlignResult:
    """What `align` found and where it left the motor."""

    motor: str
    field: str
    center: float
    """Mid-point between the half-maximum crossings (bluesky's ``PeakStats.cen``)."""
    fwhm: float | None
    com: float
    """Centre of mass of the scanned signal."""
    peak_max: float
    """Motor position of the highest reading."""
    uid: str


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
    md: dict | None = None,
):
    """Scan ``motor`` from ``start`` to ``stop`` in ``num`` points reading ``detector``, find
    the peak centre of ``field`` with bluesky's `PeakStats`, move the motor there and return
    an `AlignResult`.

    The scan is an ordinary run (plan_name ``align``) so its data land in NeXus and the
    catalogue like any other. If no peak is found, or its centre lies outside the scanned
    range, `AlignmentError` is raised after the run is closed and the motor stays where the
    scan left it.
    """
    y = _hinted_field(detector, "detector", field)
    x = _hinted_field(motor, "motor", motor_field)
    stats = PeakStats(x, y)
    _md = {"plan_name": "align", "align": {"motor": motor.name, "field": y}}
    _md.update(md or {})

    uid = yield from bpp.subs_wrapper(bp.scan([detector], motor, start, stop, num, md=_md), stats)
    center = stats.cen
    low, high = sorted((start, stop))
    if center is None or not math.isfinite(center) or not low <= center <= high:
        raise AlignmentError(
            f"align: no peak of {y!r} found between {motor.name}={start} and {stop} "
            f"(centre {center}); {motor.name} not moved to a centre"
        )
    yield from bps.mv(motor, center)
    result = AlignResult(
        motor=motor.name,
        field=y,
        center=float(center),
        fwhm=None if stats.fwhm is None else float(stats.fwhm),
        com=float(stats.com),
        peak_max=float(stats.max[0]),
        uid=uid,
    )
    logger.info("aligned %s on %s: centre %.6g, FWHM %s", motor.name, y, center, result.fwhm)
    return result
