"""Debye-Scherrer rings of a powder standard, as an area detector at a calibrated geometry sees
them: the simulated detector's powder mode (``sim.powder``).

The geometry (distance, beam centre, tilts, pixels, wavelength) is a pyFAI PONI file, the one
the beamline's azimuthal integration reads (`powder_geometry`), so simulation and reduction
agree by construction. pyFAI gives every pixel's 2θ and solid angle and the standard's
d-spacings and multiplicities (its calibrant tables, NIST SRM values). The expected image is
computed once (`PowderPattern`); a frame is that image with fresh Poisson noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hutch.profile import DeviceSpec, Profile

__all__ = ["STANDARDS", "PowderPattern", "Ring", "powder_geometry", "powder_pattern"]

STANDARDS = ("Si", "LaB6", "CeO2")
"""The usual calibration standards; any other calibrant name pyFAI knows works too."""

_B_ISO = 0.5
"""Å²: isotropic Debye-Waller factor, typical of a hard inorganic standard at room
temperature."""
_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class Ring:
    """One reflection on the detector: its d-spacing (Å), its 2θ (degrees), its q
    (nm⁻¹) and its height relative to the strongest ring on the detector."""

    hkl: str
    d: float
    two_theta: float
    q: float
    height: float


@dataclass(frozen=True)
class PowderPattern:
    """The mean counts per pixel (``expected``, ``(rows, columns)``) of ``calibrant``'s rings
    at the geometry of ``poni``, and the ``rings`` drawn (those whose 2θ the detector
    covers). `frame` draws one detector frame from it."""

    calibrant: str
    poni: Path
    rings: tuple[Ring, ...]
    expected: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.expected.shape  # type: ignore[return-value]

    def frame(self, rng: np.random.Generator) -> np.ndarray:
        """One frame: the expected counts with Poisson noise (int64)."""
        return rng.poisson(self.expected)


def powder_geometry(profile: Profile, spec: DeviceSpec) -> Path:
    """The PONI file of detector ``spec``'s powder mode, absolute.

    It is named once: by the profile's reduction of this detector that has a ``poni``
    parameter (the beamline's calibration, which its azimuthal integration reads), or, to
    simulate a detector that is not where the calibration says, by ``sim.poni``. Relative
    paths are relative to the profile's folder.
    """
    base = profile.path.parent if profile.path else Path.cwd()
    if spec.sim.get("poni"):
        return (base / spec.sim["poni"]).resolve()
    named = {
        reduction.name: (base / extra["poni"]).resolve()
        for reduction in profile.reductions
        if (extra := reduction.model_extra or {}).get("detector") == spec.name and extra.get("poni")
    }
    files = set(named.values())
    if len(files) == 1:
        return files.pop()
    if not files:
        raise ValueError(
            f"device {spec.name!r}: sim.powder needs the detector's geometry: a "
            f"[[reductions]] of {spec.name} with a poni (kind azimuthal), or sim.poni"
        )
    raise ValueError(
        f"device {spec.name!r}: reductions {', '.join(sorted(named))} name different PONI "
        "files; say which geometry the simulator uses with sim.poni"
    )


def _reflections(calibrant: str) -> list[tuple[float, int, str]]:
    """(d in Å, multiplicity, hkl) of every reflection in pyFAI's table of ``calibrant``."""
    from pyFAI.calibrant import get_calibrant, names

    try:
        cal = get_calibrant(calibrant)
    except Exception:
        known = ", ".join(sorted(names(), key=str.lower))
        raise ValueError(
            f"powder {calibrant!r} is not a calibrant pyFAI knows: {', '.join(STANDARDS)} or "
            f"one of {known}"
        ) from None
    spacings = getattr(cal, "dspacing", None)
    if not isinstance(spacings, list):  # pyFAI before 2025.07
        spacings = cal.get_dSpacing()
    # pyFAI >= 2025.07 reads multiplicities and Miller indices from its tables too.
    table = getattr(getattr(cal, "config", None), "reflections", None) or []
    by_d = {round(r.dspacing, 6): r for r in table}
    out = []
    for d in spacings:
        ref = by_d.get(round(d, 6))
        mult = int(getattr(ref, "multiplicity", None) or 1)
        hkl = "".join(str(i) for i in getattr(ref, "hkl", ())) if ref is not None else ""
        out.append((float(d), mult, hkl))
    return out


def _ring_profile(tth: np.ndarray, half: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """A unit-height Gaussian ring (2θ ``centre``, ``sigma``) averaged over each pixel's 2θ
    extent ``tth ± half`` (radians): a ring narrower than a pixel is not missed or aliased."""
    from scipy.special import erf

    scale = 1.0 / (sigma * math.sqrt(2.0))
    upper = erf((tth + half - centre) * scale)
    lower = erf((tth - half - centre) * scale)
    return (upper - lower) * (sigma * math.sqrt(math.pi / 2.0) / (2.0 * half))


def powder_pattern(
    calibrant: str,
    poni: str | Path,
    shape: tuple[int, int] | None = None,
    *,
    peak: float = 1000.0,
    background: float = 10.0,
    ring_width: float = 0.1,
) -> PowderPattern:
    """The expected image of ``calibrant`` powder at the geometry of the PONI file ``poni``.

    Each ring is a Gaussian in 2θ of full width ``ring_width`` (degrees; the instrument's
    resolution), averaged over each pixel. Its height falls with 2θ as a powder line's does:
    multiplicity x Lorentz-polarisation factor (1 + cos²2θ) / (sin²θ cosθ) (unpolarised beam)
    x Debye-Waller factor; structure factors are taken as equal. ``peak`` is the counts above
    the flat ``background`` in the brightest ring pixel; both scale with each pixel's solid
    angle (1 at the PONI), as a flat detector sees them.
    """
    # The reduction's reader: simulator and integration see one geometry, checked alike.
    from hutch.reduction.azimuthal import load_integrator

    ai = load_integrator(poni, shape)
    shape = tuple(ai.detector.shape)
    tth = ai.array_from_unit(shape, "center", "2th_rad", scale=False).astype(np.float64)
    half = ai.array_from_unit(shape, "delta", "2th_rad", scale=False).astype(np.float64)
    half = np.maximum(half, 1e-9)  # half a pixel's 2θ extent: never 0 but for safety
    sigma = math.radians(ring_width) / _FWHM
    wavelength = ai.wavelength * 1e10  # Å
    low, high = tth.min() - 4 * sigma, tth.max() + 4 * sigma

    rings, heights = [], []
    for d, mult, hkl in _reflections(calibrant):
        if wavelength / (2 * d) >= 1:
            continue  # beyond the Ewald sphere: no diffraction at this wavelength
        theta = math.asin(wavelength / (2 * d))
        if not low <= 2 * theta <= high:
            continue
        lp = (1 + math.cos(2 * theta) ** 2) / (math.sin(theta) ** 2 * math.cos(theta))
        heights.append(mult * lp * math.exp(-2 * _B_ISO / (2 * d) ** 2))
        rings.append((hkl, d, theta))
    heights_arr = np.asarray(heights) / max(heights, default=1.0)
    signal = np.zeros(shape)
    for (_, _, theta), height in zip(rings, heights_arr, strict=True):
        signal += height * _ring_profile(tth, half, 2 * theta, sigma)
    if signal.max() > 0:
        signal /= signal.max()
    expected = (background + peak * signal) * ai.solidAngleArray(shape)
    return PowderPattern(
        calibrant=calibrant,
        poni=Path(poni),
        rings=tuple(
            Ring(hkl, d, math.degrees(2 * theta), 20 * math.pi / d, float(height))
            for (hkl, d, theta), height in zip(rings, heights_arr, strict=True)
        ),
        expected=np.asarray(expected, dtype=np.float64),
    )
