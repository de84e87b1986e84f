"""Azimuthal integration of a block of frames at once, with pyFAI's own sparse matrix.

pyFAI's CSR method integrates a frame as a sparse matrix-vector product: the matrix, built
once per geometry, holds each pixel's share of each radial bin. ``integrate1d`` takes one
frame a call, and at a few hundred thousand pixels its per-call checks and preprocessing
cost as much as the product itself. A reduction gets frames in blocks (a fly scan's
StreamDatum covers many; the reduction lane merges the ones that queued), so this module
takes pyFAI's matrix and correction arrays and applies them to the whole block in one
sparse matrix-matrix product (scipy). It reproduces ``integrate1d``'s result for the cases
it accepts (`SparseIntegration.of`): intensity and Poisson sigma equal to float32 precision,
tested against pyFAI in tests/test_azimuthal.py. Everything else (pyFAI's "azimuthal" error
model, LUT/CSC/histogram algorithms, OpenCL) goes through ``integrate1d`` frame by frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SparseIntegration"]

#: Pixels converted to float32 at a time (frames x pixels): bounds the block's copy to 64 MB.
_PIXELS_AT_ONCE = 16 * 1024 * 1024


class SparseIntegration:
    """pyFAI's CSR integration matrix of one geometry, applied to stacks of frames.

    For each radial bin, with ``c`` a pixel's share of the bin and ``norm`` its solid angle
    (times its polarization factor, if corrected): ``I = Σ c·counts / Σ c·norm`` and, with
    pyFAI's Poisson model (variance ``max(counts, 1)``), ``sigma = √(Σ c²·variance) /
    Σ c·norm``. Bins no pixel reaches get pyFAI's ``empty`` value, as ``integrate1d`` gives.
    """

    def __init__(
        self,
        matrix: Any,
        norm: np.ndarray,
        *,
        sigma: bool,
        empty: float,
    ) -> None:
        self._matrix = matrix
        self._squared = matrix.multiply(matrix).tocsr() if sigma else None
        denominator = np.asarray(matrix @ norm, dtype=np.float64)
        self._reached = denominator != 0
        self._denominator = np.where(self._reached, denominator, 1.0)
        self._empty = empty

    @classmethod
    def of(
        cls,
        ai: Any,
        parameters: Any,
        shape: tuple[int, int],
        mask: np.ndarray | None,
    ) -> SparseIntegration | None:
        """The sparse integration of pyFAI integrator ``ai`` after ``integrate1d`` ran once
        with ``parameters`` (an `AzimuthalParameters`), or None where it cannot reproduce
        ``integrate1d`` (then use that)."""
        splitting, algorithm, implementation = parameters.method
        if algorithm != "csr" or implementation != "cython":
            return None
        if parameters.error_model not in (None, "poisson"):
            return None
        engine = _csr_engine(ai, parameters.method)
        if engine is None:
            return None
        import scipy.sparse  # pyFAI's own dependency

        pixels = shape[0] * shape[1]
        data, indices, indptr = (
            np.asarray(a) for a in (engine.data, engine.indices, engine.indptr)
        )
        matrix = scipy.sparse.csr_matrix(
            (data.astype(np.float32), indices, indptr), shape=(len(indptr) - 1, pixels)
        )
        if mask is not None:  # pyFAI leaves masked pixels out of its matrix; make sure
            keep = (~mask.ravel()).astype(np.float32)
            matrix = (matrix @ scipy.sparse.diags(keep)).tocsr()
        norm = np.asarray(ai.solidAngleArray(shape, True), dtype=np.float64).ravel()
        if parameters.polarization is not None:
            norm = norm * np.asarray(ai.polarization(shape, parameters.polarization)).ravel()
        empty = float(getattr(ai, "empty", 0.0) or 0.0)
        return cls(matrix, norm, sigma=parameters.error_model == "poisson", empty=empty)

    def integrate(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """``I`` (and ``sigma``) of each frame of ``frames`` (frames, rows, columns): arrays
        of (frames, bins), float64."""
        n = len(frames)
        flat = frames.reshape(n, -1)
        bins = self._matrix.shape[0]
        out = {"I": np.empty((n, bins))}
        if self._squared is not None:
            out["sigma"] = np.empty((n, bins))
        step = max(1, _PIXELS_AT_ONCE // max(flat.shape[1], 1))
        for start in range(0, n, step):
            # (pixels, frames) columns: one product for the whole stack.
            counts = flat[start : start + step].T.astype(np.float32)
            rows = slice(start, start + len(counts.T))
            out["I"][rows] = self._finish(self._matrix @ counts).T
            if self._squared is not None:
                variance = np.maximum(counts, 1.0, out=counts)
                out["sigma"][rows] = self._finish(np.sqrt(self._squared @ variance)).T
        return out

    def _finish(self, sums: np.ndarray) -> np.ndarray:
        values = sums / self._denominator[:, None]
        values[~self._reached] = self._empty
        return values


def _csr_engine(ai: Any, method: tuple[str, str, str]) -> Any:
    """pyFAI's 1-D CSR engine for ``method`` that ``integrate1d`` built, or None."""
    from pyFAI.method_registry import IntegrationMethod

    chosen = IntegrationMethod.select_one_available(method, dim=1)
    holder = ai.engines.get(chosen)
    engine = getattr(holder, "engine", None)
    if engine is None or not all(hasattr(engine, a) for a in ("data", "indices", "indptr")):
        return None
    return engine
