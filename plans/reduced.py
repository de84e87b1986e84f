"""Plans steered by an area detector's ROI statistics, reduced inside the plan point by point.

An area detector's frames are not in the run's events: the events refer to them in the HDF5
file the detector writes (StreamResource / StreamDatum documents). A steering plan subscribes
a `ReductionRunner` running one `RoiStatistics` on its own run (bluesky's ``subs_wrapper``);
the runner reads each frame from the file as its point is saved and hands back the derived
run's documents: the ROI's statistics (``roi_sum``, ``roi_centroid_x``, ...) beside the
run's scanned axes, one point at a time, while the plan goes on. They steer the plan only;
what is recorded is the raw run (the recorder's reduction lane makes the profile's
reductions of it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator
from event_model import unpack_event_page
from ophyd_async.core import StandardDetector, TriggerInfo
from ophyd_async.epics import adcore

from hutch.reduction.roi import STATISTICS, Roi, RoiParameters, RoiStatistics
from hutch.reduction.runner import ReductionRunner

from .checks import ScanArgumentError

__all__ = [
    "DerivedPoints",
    "ReductionError",
    "check_detector_field",
    "frame_roi",
    "is_area_detector",
    "reducing",
    "roi_field",
    "with_frames",
]

_ROI = "roi"  # the name of the plan's one ROI: its fields are ``roi_<statistic>``


class ReductionError(RuntimeError):
    """The ROI statistics of the detector's frames could not be computed during the plan
    (an unreadable file, say); the message is the derived run's reason."""


def is_area_detector(device: Any) -> bool:
    """Whether ``device`` is an areaDetector whose frames go to files (not to events)."""
    return isinstance(device, adcore.AreaDetector)


def roi_field(statistic: str) -> str:
    """The derived field of ``statistic`` of the plan's ROI, e.g. ``roi_sum``."""
    return f"{_ROI}_{statistic}"


def frame_roi(plan: str, detector: Any, roi: Sequence[int] | None) -> MsgGenerator[Roi]:
    """``roi`` (min_x, min_y, size_x, size_y) checked against ``detector``'s frame size,
    read from its driver; None: the whole frame."""
    width = yield from bps.rd(detector.driver.array_size_x)
    height = yield from bps.rd(detector.driver.array_size_y)
    if roi is None:
        return (0, 0, int(width), int(height))
    x, y, size_x, size_y = (int(v) for v in roi)
    if x + size_x > width or y + size_y > height:
        raise ScanArgumentError(
            f"{plan}: roi {[x, y, size_x, size_y]} reaches beyond {detector.name}'s "
            f"{width} x {height} frame"
        )
    return (x, y, size_x, size_y)


def check_detector_field(
    plan: str, detector: Any, field: str | None, roi: Any, exposure: Any, allowed: Sequence[str]
) -> str | None:
    """The ROI statistic ``field`` stands for (None: a scalar detector's field), refusing
    a statistic not in ``allowed`` and an ROI or exposure for a scalar detector."""
    if is_area_detector(detector):
        statistic = field or allowed[0]
        if statistic not in allowed:
            raise ScanArgumentError(
                f"{plan}: field {statistic!r}: {detector.name} is an area detector; give an "
                f"ROI statistic, one of {', '.join(allowed)}"
            )
        return statistic
    for name, value in (("roi", roi), ("exposure", exposure)):
        if value is not None:
            raise ScanArgumentError(
                f"{plan}: {name} applies to area detectors; {detector.name} is not one"
            )
    if field in STATISTICS:
        raise ScanArgumentError(
            f"{plan}: field {field!r} is an ROI statistic of an area detector; "
            f"{detector.name} is not one"
        )
    return None


class DerivedPoints:
    """Where a `ReductionRunner` emits: the derived run's points, field by field
    (``data[field]``, in seq_num order), and its documents, event pages unpacked into
    events, passed on to ``consumers`` (bluesky callbacks such as ``PeakStats``)."""

    def __init__(self, *consumers: Callable[[str, dict[str, Any]], Any]) -> None:
        self.consumers = consumers
        self.data: dict[str, list[Any]] = defaultdict(list)
        self.stop: dict[str, Any] | None = None
        self._primary: str | None = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "descriptor":
            if doc.get("name") != "primary":
                return  # a summary stream: not points
            self._primary = doc["uid"]
        elif name in ("event", "event_page"):
            if doc["descriptor"] != self._primary:
                return
            for event in unpack_event_page(doc) if name == "event_page" else [doc]:
                for key, value in event["data"].items():
                    self.data[key].append(value)
                self._send("event", event)
            return
        elif name == "stop":
            self.stop = doc
        self._send(name, doc)

    def _send(self, name: str, doc: dict[str, Any]) -> None:
        for consumer in self.consumers:
            consumer(name, doc)

    @property
    def failure(self) -> str | None:
        """Why the derived run failed (its stop's reason), or None."""
        if self.stop is not None and self.stop.get("exit_status") == "fail":
            return self.stop.get("reason") or "the reduction failed"
        return None


def reducing(
    plan: MsgGenerator[Any], detector: Any, roi: Roi, points: DerivedPoints
) -> MsgGenerator[Any]:
    """Run ``plan`` (a step plan) with the ROI statistics of ``detector``'s frames in ``roi``
    computed on its run as its points are saved, into ``points``."""
    parameters = RoiParameters(detector=detector.name, rois={_ROI: roi})
    name = f"{detector.name}_{_ROI}"
    # A fresh reduction per run: it keeps the run's data keys.
    runner = ReductionRunner(lambda start: [RoiStatistics(name, parameters)], points)

    def close() -> MsgGenerator[None]:
        runner.close()
        yield from bps.null()

    return (yield from bpp.finalize_wrapper(bpp.subs_wrapper(plan, runner), close()))


def with_frames(
    detectors: Sequence[Any], exposure: float | None, make_plan: Callable[[], MsgGenerator[Any]]
) -> MsgGenerator[Any]:
    """``make_plan()`` with ``detectors`` staged and those writing frames prepared for one
    frame of ``exposure`` seconds per trigger (None: as the detector is set), as in
    `hutch.plans.step_scan`."""
    standard = [d for d in detectors if isinstance(d, StandardDetector)]

    @bpp.stage_decorator(list(detectors))
    def inner() -> MsgGenerator[Any]:
        # After staging, which forgets a detector's preparation.
        for detector in standard:
            yield from bps.prepare(detector, TriggerInfo(livetime=exposure or 0.0), group="frames")
        yield from bps.wait(group="frames")
        return (yield from make_plan())

    return (yield from inner())
