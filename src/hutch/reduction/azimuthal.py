"""Azimuthal integration of powder (and solution) scattering frames with pyFAI: per frame, the
intensity I against q or 2θ, at the geometry of a PONI file (pyFAI's calibration)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from hutch.reduction.base import Reduction, ReductionParameters
from hutch.reduction.points import Block
from hutch.reduction.sparse import SparseIntegration

__all__ = ["AzimuthalIntegration", "AzimuthalParameters", "load_integrator"]

# pyFAI's unit -> (name of the radial field, its units as a data key gives them)
_RADIAL = {
    "q_nm^-1": ("q", "1/nm"),
    "q_A^-1": ("q", "1/angstrom"),
    "2th_deg": ("two_theta", "deg"),
}


# pyFAI's integration methods: pixel splitting, algorithm, implementation.
Splitting = Literal["no", "bbox", "pseudo", "full"]
Algorithm = Literal["histogram", "lut", "csr", "csc"]
Implementation = Literal["python", "cython", "opencl"]


class AzimuthalParameters(ReductionParameters):
    """``poni``: the PONI file (pyFAI's geometry: distance, beam centre, tilts, pixels,
    wavelength), relative to the profile's folder. ``npt``: radial bins (default: pyFAI's
    guess, one per pixel from the beam centre to the farthest corner). ``unit``: of the radial
    axis. ``method``: pyFAI's (splitting, algorithm, implementation). ``mask``: a file of the
    frame's shape (``.npy``, or any image fabio reads), non-zero where pixels are bad.
    ``radial_range``: in ``unit``; ``polarization``: pyFAI's factor (-1..1; none: no
    correction); ``error_model``: "poisson" or "azimuthal" for a ``sigma`` field, or none."""

    poni: Path
    npt: int | None = Field(default=None, ge=2)
    unit: Literal["q_nm^-1", "q_A^-1", "2th_deg"] = "q_nm^-1"
    # Bounding-box pixel splitting (smooth when bins are finer than pixels, unlike "no"),
    # applied as a CSR sparse matrix that pyFAI builds once per geometry and reuses for every
    # frame (a sparse matrix-vector product), on the CPU (Cython, OpenMP): no OpenCL set-up.
    # "full" splitting is exact for tilted pixels but slower to build, and hardly differs.
    method: tuple[Splitting, Algorithm, Implementation] = ("bbox", "csr", "cython")
    mask: Path | None = None
    radial_range: tuple[float, float] | None = None
    polarization: float | None = Field(default=None, ge=-1.0, le=1.0)
    error_model: Literal["poisson", "azimuthal"] | None = "poisson"

    @field_validator("radial_range")
    @classmethod
    def _increasing(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"radial_range {list(value)} must be increasing")
        return value

    def resolved(self, base: Path) -> AzimuthalParameters:
        mask = base / self.mask if self.mask is not None else None
        return self.model_copy(update={"poni": base / self.poni, "mask": mask})


def load_integrator(poni: str | Path, shape: tuple[int, int] | None = None) -> Any:
    """pyFAI's `AzimuthalIntegrator` of the PONI file ``poni``, its detector's shape checked
    against ``shape`` (rows, columns) or set to it; errors name the file.

    The same integrator while the file is unchanged: pyFAI keeps its sparse matrices in it,
    so the runs after the first (a frame per sample, say) skip building them again."""
    path = Path(poni)
    if not path.is_file():
        raise FileNotFoundError(f"poni: no PONI file {path}")
    stat = path.stat()
    shape = tuple(shape) if shape is not None else None
    return _integrator(path.resolve(), (stat.st_mtime_ns, stat.st_size), shape)


@functools.lru_cache(maxsize=4)
def _integrator(path: Path, version: tuple[int, int], shape: tuple[int, int] | None) -> Any:
    silx = logging.getLogger("silx.opencl.common")
    if silx.level == logging.NOTSET:  # it warns that pyopencl is missing: CPU methods need none
        silx.setLevel(logging.ERROR)
    import pyFAI  # about 2 s to import: only when a run is reduced, not when a profile loads

    try:
        ai = pyFAI.load(str(path))
    except Exception as exc:
        raise ValueError(f"poni {path}: pyFAI cannot read it: {exc}") from None
    own = tuple(ai.detector.shape) if ai.detector.shape else None
    if own is not None and shape is not None and own != shape:
        raise ValueError(_mismatch(path, own, shape))
    if own is None:
        if shape is None:
            raise ValueError(f"poni {path}: its detector has no shape (max_shape)")
        ai.detector.shape = ai.detector.max_shape = shape
    if not ai.wavelength:
        raise ValueError(f"poni {path}: no Wavelength")
    return ai


def _mismatch(path: Path, own: tuple[int, ...], frames: tuple[int, ...]) -> str:
    return (
        f"poni {path}: its detector is {own[0]} x {own[1]} pixels (rows x columns), "
        f"the frames {frames[0]} x {frames[1]}"
    )


def _load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"mask: no mask file {path}")
    if path.suffix == ".npy":
        mask = np.load(path)
    else:
        import fabio  # pyFAI's image reader

        mask = fabio.open(str(path)).data
    if mask.shape != shape:
        raise ValueError(f"mask {path}: {mask.shape} pixels, the frames {shape}")
    return mask != 0


class AzimuthalIntegration(Reduction):
    """Azimuthal integration of each frame of an area detector (pyFAI's CSR matrix applied
    to a block of frames at once, `hutch.reduction.sparse`, else ``integrate1d``): the
    mean intensity ``I`` (counts per pixel, solid-angle corrected) in ``npt`` radial bins,
    the bins' centres ``q`` (or ``two_theta``) and, with an error model, ``sigma``, every
    one an array per point. A powder's Debye-Scherrer rings become peaks of I(q).

    The geometry comes from a PONI file, as pyFAI's calibration (pyFAI-calib2) writes it;
    the integrator is built when the run's stream is described and reused for every frame.
    A summary stream records the geometry used, so the derived run is self-describing even
    if the PONI file changes later.
    """

    kind = "azimuthal"
    version = "2"  # 2: a block of frames as one sparse product (`hutch.reduction.sparse`)
    Parameters = AzimuthalParameters

    def describe(self, start: dict[str, Any], descriptor: dict[str, Any]) -> dict[str, dict]:
        p = self.parameters
        self._key = self.source_key(descriptor)
        shape = descriptor["data_keys"][self._key].get("shape") or []
        if len(shape) < 2:
            raise ValueError(f"{self._key} is not an image (shape {shape})")
        self._shape = (int(shape[-2]), int(shape[-1]))
        self._ai = load_integrator(p.poni, self._shape)
        self._mask = _load_mask(p.mask, self._shape) if p.mask is not None else None
        self._npt = p.npt or self._ai.guess_npt_rad()
        # A blank frame builds pyFAI's CSR matrix now, and gives the radial axis.
        blank = self._integrate(np.zeros(self._shape, dtype=np.float32))
        self._radial = np.asarray(blank.radial, dtype=np.float64)
        self._sparse = SparseIntegration.of(self._ai, p, self._shape, self._mask)
        self._radial_key, radial_units = _RADIAL[p.unit]
        array = {
            "dtype": "array",
            "shape": [self._npt],
            "dims": [self._radial_key],
            "dtype_numpy": "<f8",
        }
        keys = {
            "I": {**array, "units": "counts"},
            self._radial_key: {**array, "units": radial_units},
        }
        if p.error_model:
            keys["sigma"] = {**array, "units": "counts"}
        return keys

    def _integrate(self, frame: np.ndarray) -> Any:
        p = self.parameters
        return self._ai.integrate1d(
            frame,
            self._npt,
            unit=p.unit,
            method=p.method,
            mask=self._mask,
            radial_range=p.radial_range,
            polarization_factor=p.polarization,
            error_model=p.error_model,
        )

    def reduce(self, block: Block) -> dict[str, np.ndarray]:
        frames = np.asarray(block.data[self._key])
        frames = frames.reshape(-1, *frames.shape[-2:])
        if frames.shape[1:] != self._shape:
            raise ValueError(_mismatch(self.parameters.poni, self._shape, frames.shape[1:]))
        n = len(frames)
        if self._sparse is not None:
            out = self._sparse.integrate(frames)
        else:
            out = {"I": np.empty((n, self._npt))}
            if self.parameters.error_model:
                out["sigma"] = np.empty((n, self._npt))
            for i, frame in enumerate(frames):
                result = self._integrate(frame)
                out["I"][i] = result.intensity
                if "sigma" in out:
                    out["sigma"][i] = result.sigma
        out[self._radial_key] = np.broadcast_to(self._radial, (n, self._npt))
        return out

    def summary(self) -> dict[str, tuple[dict[str, Any], Any]] | None:
        """The geometry the frames were integrated with, from the PONI file (lengths in mm,
        wavelength in Å, angles in rad)."""
        ai = getattr(self, "_ai", None)
        if ai is None:
            return None
        values = {
            "wavelength": (ai.wavelength * 1e10, "angstrom"),
            "distance": (ai.dist * 1e3, "mm"),
            "poni1": (ai.poni1 * 1e3, "mm"),
            "poni2": (ai.poni2 * 1e3, "mm"),
            "rot1": (ai.rot1, "rad"),
            "rot2": (ai.rot2, "rad"),
            "rot3": (ai.rot3, "rad"),
            "pixel1": (ai.detector.pixel1 * 1e3, "mm"),
            "pixel2": (ai.detector.pixel2 * 1e3, "mm"),
        }
        return {
            key: ({"dtype": "number", "shape": [], "units": units}, float(value))
            for key, (value, units) in values.items()
        }
