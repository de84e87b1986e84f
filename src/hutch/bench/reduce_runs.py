"""The raw runs ``hutch bench reduce`` feeds its reductions, made as a real step scan makes
them: frames in an HDF5 file at ``/entry/data/data`` (as the simulated area detector writes
it: one frame a chunk, uint16, SWMR), and documents composed with event-model (start,
descriptor, StreamResource; per point a StreamDatum referencing its frame, then the event
with the motor's position, in the order bluesky emits them; stop).

A `Case` is one detector of the table: its frames' file, its reduction and its runs;
`table_cases` makes the table's four. The frames are a few distinct noisy frames over and
over (what a reduction costs does not depend on which frame it is given), and every file is
read from the page cache, as a frame just written by a detector is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from event_model import compose_run

from hutch.bench.rows import BenchTableError
from hutch.profile import Profile, ReductionSpec
from hutch.reduction.azimuthal import AzimuthalIntegration, load_integrator
from hutch.reduction.base import Reduction
from hutch.reduction.roi import RoiStatistics

__all__ = [
    "DATASET",
    "DISTINCT",
    "STORED",
    "Case",
    "RawRun",
    "raw_run",
    "ring_frames",
    "spot_frames",
    "table_cases",
    "write_frames",
    "write_poni",
]

Documents = list[tuple[str, dict[str, Any]]]

#: Where the frames are in their file, as areaDetector's HDF5 plugin puts them.
DATASET = "/entry/data/data"
#: Frames in a file (points past them reference them again), of which distinct.
STORED = 32
DISTINCT = 8


# -- frames -----------------------------------------------------------------------------------


def spot_frames(shape: tuple[int, int], count: int, seed: int = 7) -> np.ndarray:
    """``count`` uint16 frames of a beam spot (1000 counts, sigma 2 pixels) on 10 counts of
    background, with Poisson noise: what the demo's det1 sees."""
    rows, cols = shape
    gy = np.exp(-0.5 * ((np.arange(rows) - rows / 2) / 2.0) ** 2)
    gx = np.exp(-0.5 * ((np.arange(cols) - cols / 2) / 2.0) ** 2)
    expected = 10.0 + 1000.0 * np.outer(gy, gx)
    rng = np.random.default_rng(seed)
    return rng.poisson(expected, (count, rows, cols)).astype(np.uint16)


def ring_frames(integrator: Any, count: int, seed: int = 7) -> np.ndarray:
    """``count`` uint16 frames of LaB6's Debye-Scherrer rings at ``integrator``'s geometry,
    with Poisson noise. Rings in q, not the simulator's full powder model (seconds to
    compute): what integration costs does not depend on what the frame shows."""
    from pyFAI.calibrant import get_calibrant

    shape = tuple(integrator.detector.shape)
    q = integrator.array_from_unit(shape, "center", "q_nm^-1")
    rings = [2 * np.pi / (d / 10) for d in get_calibrant("LaB6").dspacing]
    rings = [r for r in rings if q.min() <= r <= q.max()][:12]
    expected = np.full(shape, 10.0)
    for n, ring in enumerate(rings):
        expected += 1000.0 / (1 + n) * np.exp(-0.5 * ((q - ring) / 0.05) ** 2)
    rng = np.random.default_rng(seed)
    return rng.poisson(expected, (count, *shape)).astype(np.uint16)


def write_frames(path: Path, frames: np.ndarray, n: int) -> None:
    """``n`` frames, ``frames`` over and over, at `DATASET` of a new file ``path``, laid out
    as the simulated detector writes them."""
    with h5py.File(path, "w", libver="latest") as f:
        data = f.create_dataset(
            DATASET,
            shape=(n, *frames.shape[1:]),
            maxshape=(None, *frames.shape[1:]),
            chunks=(1, *frames.shape[1:]),
            dtype=frames.dtype,
        )
        f.swmr_mode = True
        for start in range(0, n, len(frames)):
            stop = min(start + len(frames), n)
            data[start:stop] = frames[: stop - start]


def write_poni(path: Path, side: int) -> Path:
    """A PONI file of a ``side`` x ``side`` detector of 75 µm pixels, 100 mm from the sample,
    beam near its centre, tilted a few mrad, 0.7 Å, written by pyFAI's geometry writer."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    pixel = 75e-6
    detector = Detector(pixel1=pixel, pixel2=pixel, max_shape=(side, side))
    centre = side * pixel / 2
    AzimuthalIntegrator(
        dist=0.1,
        poni1=centre + 10 * pixel,
        poni2=centre - 7 * pixel,
        rot1=0.004,
        rot2=-0.003,
        detector=detector,
        wavelength=7e-11,
    ).save(str(path))
    return path


# -- documents --------------------------------------------------------------------------------


@dataclass
class RawRun:
    """A step scan's documents: ``head`` (start, descriptor, StreamResource), ``points``
    (per point its StreamDatum, then its event, whose ``time`` the bench may set as it
    sends it) and ``stop``."""

    uid: str
    head: Documents
    points: list[Documents]
    stop: Documents

    def __len__(self) -> int:
        return len(self.points)


def raw_run(key: str, shape: tuple[int, int], path: Path, n: int, stored: int) -> RawRun:
    """A ``n``-point step scan of ``sample_x`` with the area detector ``key``, whose frames
    are in ``path`` (``stored`` of them: point i references frame i % stored)."""
    bundle = compose_run(
        metadata={
            "plan_name": "step_scan",
            "plan_type": "generator",
            "scan_id": 1,
            "beamline": "bench",
            "detectors": [key],
            "motors": ["sample_x"],
            "num_points": n,
            "hints": {"dimensions": [[["sample_x"], "primary"]]},
        }
    )
    uri = f"file://localhost{path}"
    data_keys = {
        key: {
            "source": uri,
            "shape": list(shape),
            "dtype": "array",
            "dtype_numpy": "<u2",
            "external": "STREAM:",
        },
        "sample_x": {"dtype": "number", "shape": [], "source": "ca://BENCH:X.RBV", "units": "mm"},
    }
    descriptor = bundle.compose_descriptor(
        name="primary",
        data_keys=data_keys,
        object_keys={key: [key], "sample_x": ["sample_x"]},
        hints={key: {"fields": [key]}, "sample_x": {"fields": ["sample_x"]}},
    )
    resource = bundle.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=uri,
        data_key=key,
        parameters={"chunk_shape": [1, *shape], "dataset": DATASET},
    )
    points = []
    for i in range(n):
        frame = i % stored
        datum = resource.compose_stream_datum(
            indices={"start": frame, "stop": frame + 1},
            seq_nums={"start": i + 1, "stop": i + 2},
            descriptor=descriptor.descriptor_doc,
            validate=i == 0,  # the rest are made by the same code
        )
        x = -1.0 + 2.0 * i / max(n - 1, 1)
        event = descriptor.compose_event(
            data={"sample_x": x},
            timestamps={"sample_x": time.time()},
            seq_num=i + 1,
            validate=i == 0,
        )
        points.append([("stream_datum", datum), ("event", event)])
    return RawRun(
        uid=bundle.start_doc["uid"],
        head=[
            ("start", bundle.start_doc),
            ("descriptor", descriptor.descriptor_doc),
            ("stream_resource", resource.stream_resource_doc),
        ],
        points=points,
        stop=[("stop", bundle.compose_stop(exit_status="success", reason=""))],
    )


@dataclass
class Case:
    """One detector of the table: ``label`` (name and size), its data ``key`` and frame
    ``shape`` (rows, columns), the HDF5 file of its frames, and ``make()``, a fresh
    reduction of them; ``spec``, the profile's reduction when it is one."""

    label: str
    key: str
    shape: tuple[int, int]
    path: Path
    make: Callable[[], Reduction]
    spec: ReductionSpec | None = None

    @property
    def stored(self) -> int:
        """The frames in the file."""
        with h5py.File(self.path, "r") as f:
            return f[DATASET].shape[0]

    def in_memory(self) -> np.ndarray:
        """Every frame in the file."""
        with h5py.File(self.path, "r") as f:
            return f[DATASET][()]

    def run(self, n: int) -> RawRun:
        """A new ``n``-point step scan of these frames."""
        return raw_run(self.key, self.shape, self.path, n, self.stored)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index``, read as the runner reads a StreamDatum's (a file open each)."""
        with h5py.File(self.path, "r", swmr=True) as f:
            return np.asarray(f[DATASET][index : index + 1])[0]


def _spec(profile: Profile, cls: type[Reduction]) -> ReductionSpec:
    spec = next((r for r in profile.reductions if r.reduction_class() is cls), None)
    if spec is None:
        raise BenchTableError(f"profile {profile.name!r} has no {cls.kind} reduction")
    return spec


def table_cases(profile: Profile, tmp: Path, base: Path, large: int) -> dict[str, Case]:
    """The table's cases, by name: the profile's ROI and azimuthal reductions of its
    detectors ("spot", "powder") and the same kinds on ``large``-pixel frames ("roi large",
    the whole frame; "powder large", at a PONI file written to ``tmp``), their frames
    written to ``tmp``; file parameters relative to ``base``."""
    roi_spec, azimuthal_spec = _spec(profile, RoiStatistics), _spec(profile, AzimuthalIntegration)
    spot = roi_spec.model_extra["detector"]
    sim = profile.device(spot).sim
    if not {"width", "height"} <= set(sim):
        raise BenchTableError(f"{spot}: no width and height in its sim options")
    spot_shape = (int(sim["height"]), int(sim["width"]))
    powder = azimuthal_spec.model_extra["detector"]
    parameters = azimuthal_spec.make(base).parameters
    integrator = load_integrator(parameters.poni)
    powder_shape: tuple[int, int] = tuple(integrator.detector.shape)  # type: ignore[assignment]
    large_poni = write_poni(tmp / f"detector_{large}.poni", large)
    large_parameters = parameters.model_copy(update={"detector": "det_large", "poni": large_poni})
    written = {
        "spot": spot_frames(spot_shape, DISTINCT),
        "powder": ring_frames(integrator, DISTINCT),
        "large": ring_frames(load_integrator(large_poni), DISTINCT),
    }
    for name, distinct in written.items():
        write_frames(tmp / f"{name}.h5", distinct, STORED)
    side = f"{large}x{large}"
    return {
        "spot": Case(
            f"{spot} {spot_shape[1]}x{spot_shape[0]}",
            spot,
            spot_shape,
            tmp / "spot.h5",
            lambda: roi_spec.make(base),
            roi_spec,
        ),
        "powder": Case(
            f"{powder} {powder_shape[1]}x{powder_shape[0]}",
            powder,
            powder_shape,
            tmp / "powder.h5",
            lambda: azimuthal_spec.make(base),
            azimuthal_spec,
        ),
        "roi large": Case(
            side,
            "det_large",
            (large, large),
            tmp / "large.h5",
            lambda: RoiStatistics("roi_large", RoiStatistics.Parameters(detector="det_large")),
        ),
        "powder large": Case(
            side,
            "det_large",
            (large, large),
            tmp / "large.h5",
            lambda: AzimuthalIntegration("powder_large", large_parameters),
        ),
    }
