"""Peak statistics of a scalar against the scanned axis: what `align` moves to."""

from __future__ import annotations

from typing import Any

import numpy as np
from bluesky.callbacks.fitting import PeakStats

from hutch.reduction.base import Reduction, ReductionParameters
from hutch.reduction.points import Block

__all__ = ["PeakStatistics"]

# The summary's fields: bluesky PeakStats' attribute and what it is.
_SUMMARY = {
    "cen": "mid-point between the half-maximum crossings",
    "com": "centre of mass",
    "fwhm": "full width at half maximum",
    "max_x": "position of the maximum",
    "max_y": "the maximum",
    "min_x": "position of the minimum",
    "min_y": "the minimum",
}


class PeakParameters(ReductionParameters):
    """``field``: the data key of the scalar (default: the detector's first hinted field);
    ``axis``: the position it is taken against (default: the first scanned dimension)."""

    field: str | None = None
    axis: str | None = None


class PeakStatistics(Reduction):
    """Peak statistics of a scalar against the scanned axis, by bluesky's own `PeakStats`
    (the same numbers `align` uses): the summary stream holds ``cen``, ``com``, ``fwhm``,
    ``max_x``/``max_y`` and ``min_x``/``min_y``; the primary stream the scalar per point."""

    kind = "peak_stats"
    version = "1"
    Parameters = PeakParameters

    def describe(self, start: dict[str, Any], descriptor: dict[str, Any]) -> dict[str, dict]:
        keys = descriptor["data_keys"]
        self._field = self.parameters.field or self.source_key(descriptor)
        dimensions = (start.get("hints") or {}).get("dimensions") or ()
        scanned = [f for fields, _ in dimensions for f in fields if f in keys]
        self._axis = self.parameters.axis or (scanned[0] if scanned else None)
        for what, key in (("field", self._field), ("axis", self._axis)):
            if key not in keys:
                raise ValueError(f"{what} {key!r} is not in the stream ({', '.join(keys)})")
        self._units = {k: keys[k].get("units") for k in (self._field, self._axis)}
        self._stats = PeakStats(self._axis, self._field)
        self._stats("start", start)
        return {self._field: _data_key(self._units[self._field])}

    def reduce(self, block: Block) -> dict[str, np.ndarray]:
        x = np.asarray(block.data[self._axis], dtype=float).reshape(len(block), -1)[:, 0]
        y = np.asarray(block.data[self._field], dtype=float).reshape(len(block), -1)[:, 0]
        for xi, yi in zip(x, y, strict=True):
            self._stats("event", {"data": {self._axis: xi, self._field: yi}})
        return {self._field: y}

    def summary(self) -> dict[str, tuple[dict[str, Any], Any]] | None:
        self._stats("stop", {"exit_status": "success"})
        stats = self._stats
        if stats.max is None:
            return None
        values = {
            "cen": stats.cen,
            "com": stats.com,
            "fwhm": stats.fwhm,
            "max_x": stats.max[0],
            "max_y": stats.max[1],
            "min_x": stats.min[0],
            "min_y": stats.min[1],
        }
        x_units, y_units = self._units[self._axis], self._units[self._field]
        return {
            name: (
                {**_data_key(y_units if name.endswith("_y") else x_units), "doc": doc},
                float("nan") if values[name] is None else float(values[name]),
            )
            for name, doc in _SUMMARY.items()
        }


def _data_key(units: str | None) -> dict[str, Any]:
    return {"dtype": "number", "shape": [], **({"units": units} if units else {})}
