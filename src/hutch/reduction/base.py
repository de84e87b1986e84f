"""What a reduction is: a named, versioned computation on a run's points whose results are
documents of a derived run (`hutch.reduction.runner`)."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from hutch.reduction.points import Block

__all__ = [
    "KINDS",
    "Reduction",
    "ReductionParameters",
    "reduction_class",
]


class ReductionParameters(BaseModel):
    """A reduction's parameters, from the profile; every reduction's model derives from it.

    ``detector`` names the device (or the data key) whose data it reduces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: str

    def resolved(self, base: Path) -> ReductionParameters:
        """These parameters with file names made absolute against ``base`` (the profile's
        folder); a model with file parameters overrides it."""
        return self


class Reduction(ABC):
    """One reduction of one run: it is given the run's start and the descriptor of the
    stream it reduces, then blocks of points in seq_num order; it returns, for each block,
    the values of its derived fields (first dimension: one per point).

    Subclasses set ``kind`` (how a profile names it), ``version`` (raise it when the output
    changes: derived runs record it) and ``Parameters``; they implement `describe` and
    `reduce`, and may implement `summary` (a one-event ``summary`` stream at the end: peak
    statistics, say). Anything they raise ends their derived run as failed, with the error
    as its reason; the raw run is not affected.
    """

    kind: ClassVar[str]
    version: ClassVar[str]
    Parameters: ClassVar[type[ReductionParameters]]

    def __init__(self, name: str, parameters: ReductionParameters) -> None:
        self.name = name
        self.parameters = parameters

    def source_key(self, descriptor: dict[str, Any]) -> str | None:
        """The data key of the detector in ``descriptor`` (its name, or ``name-...``
        for the first hinted field of it), or None when the stream lacks it."""
        keys = descriptor["data_keys"]
        detector = self.parameters.detector
        if detector in keys:
            return detector
        hinted = (descriptor.get("hints") or {}).get(detector, {}).get("fields") or []
        return next((k for k in hinted if k in keys), None)

    def accepts(self, start: dict[str, Any], descriptor: dict[str, Any]) -> bool:
        """Whether it reduces this stream: the primary stream, when it holds the detector."""
        return descriptor.get("name") == "primary" and self.source_key(descriptor) is not None

    @abstractmethod
    def describe(self, start: dict[str, Any], descriptor: dict[str, Any]) -> dict[str, dict]:
        """The derived fields' data keys (event-model DataKey dicts, without ``source``)."""

    @abstractmethod
    def reduce(self, block: Block) -> dict[str, np.ndarray]:
        """The derived fields for the points of ``block``."""

    def summary(self) -> dict[str, tuple[dict[str, Any], Any]] | None:
        """At the raw run's end: ``{field: (data key, value)}`` for the summary stream."""
        return None


# How profiles name the reductions hutch ships; a profile may also give an import path.
KINDS = {
    "roi_stats": "hutch.reduction.roi:RoiStatistics",
    "peak_stats": "hutch.reduction.peaks:PeakStatistics",
    "normalise": "hutch.reduction.normalise:MonitorNormalisation",
    "azimuthal": "hutch.reduction.azimuthal:AzimuthalIntegration",
}


def reduction_class(kind: str) -> type[Reduction]:
    """The `Reduction` class of ``kind``: a name in `KINDS` or ``module:Class``."""
    path = KINDS.get(kind, kind)
    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"unknown reduction {kind!r}: one of {', '.join(KINDS)} or 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reduction {kind!r}: cannot import {path}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, Reduction)):
        raise ValueError(f"reduction {kind!r}: {path} is not a hutch Reduction")
    return cls
