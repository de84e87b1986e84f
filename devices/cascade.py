"""A cascade of disk choppers selecting a wavelength band: the delay each needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hutch.tof import ESS_PULSE_LENGTH, ESS_PULSE_RATE, H_OVER_MN, arrival_window, band_delay

from .chopper import ChopperRefusal, ChopperSetpoint, DiskChopper

__all__ = ["ChopperCascade"]


@dataclass
class ChopperCascade:
    """Disk choppers in a beam from a pulsed source (``pulse_rate`` Hz, pulses
    ``pulse_length`` s long), phased together to pass one band of wavelengths.

    A chopper at ``L`` metres passes the band [λ1, λ2] of a whole pulse while open from
    ``L λ1 / 3956`` to ``τ + L λ2 / 3956`` seconds after the pulse leaves (τ the pulse
    length): each chopper's first slit is centred on that window (`hutch.tof.band_delay`).
    A slit shorter than its window cuts the band (a pulse-shaping chopper, on purpose); a
    longer one lets a little through outside it, up to ``τ · 3956 / L`` Å at either edge.
    """

    choppers: Sequence[DiskChopper]
    pulse_rate: float = ESS_PULSE_RATE
    pulse_length: float = ESS_PULSE_LENGTH

    def resolution(self) -> float:
        """Å the band may leak at either edge past the farthest chopper: τ · 3956 / L."""
        farthest = max(chopper.distance_m for chopper in self.choppers)
        return self.pulse_length * H_OVER_MN / farthest

    def setpoints(
        self,
        lambda_min: float,
        lambda_max: float,
        speeds: Sequence[float],
        *,
        detector_distance: float | None = None,
    ) -> dict[str, ChopperSetpoint]:
        """Each chopper's speed and total TDC delay (ns) for the band, by chopper name, at
        ``speeds`` (Hz, one per chopper). Refused, naming the figures: a band that is not
        one, a chopper standing still and, given ``detector_distance`` (m from the source),
        a band whose neutrons take longer than a pulse period to arrive (frames overlap)."""
        if len(speeds) != len(self.choppers):
            raise ChopperRefusal(f"{len(speeds)} speeds for {len(self.choppers)} choppers")
        try:
            if detector_distance is not None:
                arrival_window(
                    detector_distance, lambda_min, lambda_max, self.pulse_length, self.pulse_rate
                )
            setpoints = {}
            for chopper, speed in zip(self.choppers, speeds, strict=True):
                if speed <= 0:
                    raise ValueError(f"{chopper.name}: a band needs it spinning, not {speed:g} Hz")
                delay = band_delay(
                    chopper.distance_m,
                    speed,
                    chopper.slit_edges[0],
                    lambda_min,
                    lambda_max,
                    self.pulse_length,
                )
                setpoints[chopper.name] = ChopperSetpoint(speed, delay)
        except ValueError as exc:
            raise ChopperRefusal(str(exc)) from None
        return setpoints
