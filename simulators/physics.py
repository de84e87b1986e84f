"""The simulated sample: what the detector of the simulated beamline sees.

The profile's ``[simulation.peak]`` describes a Gaussian peak along one motor, on a flat
background, with the flux scaled by the slit gap and the beam current. The functions here are
pure; :class:`BeamlinePhysics` reads the live positions and current from the simulator's
PVGroups in the same process.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from hutch.profile import PeakModel

__all__ = ["BeamlinePhysics", "PositionSource", "expected_counts", "flux_factor", "gaussian"]


class PositionSource(Protocol):
    """Anything with a live ``position`` (a motor's user readback, a beam current...)."""

    @property
    def position(self) -> float: ...


def gaussian(x: float, center: float, sigma: float) -> float:
    """Unit-height Gaussian profile at ``x``."""
    return math.exp(-0.5 * ((x - center) / sigma) ** 2)


def flux_factor(peak: PeakModel, gap: float | None, current: float | None) -> float:
    """Relative flux: proportional to the slit gap and to the beam current (1 at reference)."""
    factor = 1.0
    if gap is not None:
        factor *= max(gap, 0.0) / peak.reference_gap
    if current is not None:
        factor *= max(current, 0.0) / peak.reference_current
    return factor


def expected_counts(
    peak: PeakModel, x: float, gap: float | None, current: float | None, time: float
) -> tuple[float, float]:
    """Mean (monitor, detector) counts of a count of ``time`` seconds with the axis at ``x``."""
    flux = flux_factor(peak, gap, current) * max(time, 0.0)
    monitor = peak.monitor_rate * flux
    detector = (peak.background + peak.rate * gaussian(x, peak.center, peak.sigma)) * flux
    return monitor, detector


class BeamlinePhysics:
    """The profile's peak model wired to the live simulated axis, slit and beam current.

    ``sources`` maps device names (as used by the peak model) to objects with a ``position``;
    devices the model names but that are missing count as being at their reference value.
    """

    def __init__(
        self,
        peak: PeakModel,
        sources: dict[str, PositionSource],
        rng: np.random.Generator | None = None,
    ) -> None:
        self.peak = peak
        self._sources = sources
        self._rng = rng or np.random.default_rng()

    @property
    def true_center(self) -> float:
        """Where the peak really is, in user units of the axis motor."""
        return self.peak.center

    def _position(self, name: str | None) -> float | None:
        source = self._sources.get(name) if name else None
        return None if source is None else source.position

    def expected(self, time: float) -> tuple[float, float]:
        """Mean (monitor, detector) counts for a count of ``time`` seconds, right now."""
        axis = self._position(self.peak.axis)
        return expected_counts(
            self.peak,
            self.peak.center if axis is None else axis,
            self._position(self.peak.gap),
            self._position(self.peak.current),
            time,
        )

    def sample(self, time: float) -> tuple[int, int]:
        """Poisson-distributed (monitor, detector) counts for a count of ``time`` seconds."""
        monitor, detector = self.expected(time)
        return int(self._rng.poisson(monitor)), int(self._rng.poisson(detector))
