"""Monitor normalisation: detector counts scaled to a fixed number of monitor counts."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from hutch.reduction.base import Reduction, ReductionParameters
from hutch.reduction.points import Block

__all__ = ["MonitorNormalisation"]


class NormaliseParameters(ReductionParameters):
    """``monitor``: the data key of the beam monitor (e.g. ``det-I0``); ``fields``: the data
    keys to normalise (default: the detector's hinted fields but the monitor);
    ``reference``: the monitor counts the results are scaled to."""

    monitor: str
    fields: list[str] | None = None
    reference: float = Field(default=1.0, gt=0)


class MonitorNormalisation(Reduction):
    """Each detector field divided by the beam monitor and scaled to ``reference`` monitor
    counts (``<field>_norm``), so that points taken with more or less beam compare: the
    usual first step for any counting detector. A point with no monitor counts gives NaN."""

    kind = "normalise"
    version = "1"
    Parameters = NormaliseParameters

    def accepts(self, start: dict[str, Any], descriptor: dict[str, Any]) -> bool:
        return (
            super().accepts(start, descriptor)
            and self.parameters.monitor in (descriptor["data_keys"])
        )

    def describe(self, start: dict[str, Any], descriptor: dict[str, Any]) -> dict[str, dict]:
        keys = descriptor["data_keys"]
        hinted = (descriptor.get("hints") or {}).get(self.parameters.detector, {}).get("fields")
        fields = self.parameters.fields or [
            k for k in hinted or [self.source_key(descriptor)] if k != self.parameters.monitor
        ]
        missing = [f for f in fields if f not in keys]
        if missing:
            raise ValueError(f"fields {', '.join(missing)} are not in the stream")
        self._fields = fields
        return {f"{f}_norm": {"dtype": "number", "shape": []} for f in fields}

    def reduce(self, block: Block) -> dict[str, np.ndarray]:
        monitor = np.asarray(block.data[self.parameters.monitor], dtype=float)
        scale = np.divide(
            self.parameters.reference,
            monitor,
            out=np.full(monitor.shape, np.nan),
            where=monitor != 0,
        )
        return {f"{f}_norm": np.asarray(block.data[f], dtype=float) * scale for f in self._fields}
