"""A simulated areaDetector camera with its HDF5 file plugin, for ophyd-async's ``adcore``.

The driver at ``{prefix}cam1:`` takes frames of a Gaussian beam spot on a flat background with
Poisson noise. The spot sits where the sample stage puts it (``spot(t)``, in mm). In powder
mode (``sim.powder``) the frames show a powder standard's Debye-Scherrer rings instead
(``simulators/powder.py``). Acquisition behaves like a real areaDetector driver where clients
depend on it: ``Acquire``'s put-callback completes when the acquisition is over,
Single/Multiple/Continuous image modes, frames every max(AcquirePeriod, AcquireTime + readout
time), and in ``TriggerMode`` External one frame per trigger, with triggers that come too fast
counted as missed.

The HDF5 plugin at ``{prefix}HDF1:`` streams the frames into ``/entry/data/data`` of a real
file (in SWMR mode if ``SWMRMode`` is On, as ophyd-async sets it), flushing each frame before
it counts it in ``NumCaptured_RBV``: a reader that sees the count finds the frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from caproto import ChannelType, SkipWrite
from caproto.server import PVGroup, pvproperty

from .options import sim_options
from .powder import PowderPattern, powder_pattern
from .pvs import TEXT_LENGTH, text_pv

__all__ = ["DATASET", "AreaDetectorSim", "format_file_name", "spot_pixel"]

log = logging.getLogger(__name__)

SpotSource = Callable[[float], tuple[float, float]]
"""Given a wall-clock time, the sample stage (x, y) in mm: where the beam spot lands."""

DATA_TYPES = (
    "Int8",
    "UInt8",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float32",
    "Float64",
)
COLOR_MODES = ("Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV421")
STATES = (
    "Idle",
    "Acquire",
    "Readout",
    "Correct",
    "Saving",
    "Aborting",
    "Error",
    "Waiting",
    "Initializing",
    "Disconnected",
    "Aborted",
)
COMPRESSIONS = ("None", "N-bit", "szip", "zlib", "Blosc", "BSLZ4", "LZ4", "JPEG")
DATASET = "/entry/data/data"
"""Where the HDF5 plugin writes the frames (areaDetector's default layout)."""

_EPICS_EPOCH = 631152000.0
"""POSIX time of the EPICS epoch (1990-01-01): NDArray time stamps count from it."""


_DEFAULTS: dict[str, Any] = {
    "width": 64,
    "height": 48,
    "pixel_size": 0.05,  # mm per pixel at the sample
    "spot_sigma": 2.0,  # pixels
    "peak": 1000.0,  # counts at the spot centre
    "background": 10.0,  # counts
    "readout_time": 0.002,  # s: the least dead time between frames
    "data_type": "UInt16",
    # Powder mode: a calibrant's rings (``powder.powder_pattern``) instead of the beam spot.
    "powder": None,  # "Si", "LaB6", "CeO2", ...
    "poni": None,  # the geometry's PONI file; the profile names it once (powder_geometry)
    "ring_width": 0.1,  # degrees 2θ, FWHM
}


def spot_pixel(options: Mapping[str, Any], x: float, y: float) -> tuple[float, float]:
    """Pixel (column, row) of the beam spot centre with the sample stage at (x, y) mm.

    ``options`` are the simulator's sim options (missing ones take their defaults).
    """
    o = {**_DEFAULTS, **options}
    size = float(o["pixel_size"])
    return o["width"] / 2 + x / size, o["height"] / 2 + y / size


def format_file_name(template: str, path: str, name: str, number: int) -> str:
    """areaDetector's full file name: the C format ``template`` applied to (path, name, number).

    Like the plugin's ``epicsSnprintf``, conversions take the three in that order and any
    left over are ignored: ``"%s%s.h5"`` gives path + name + ".h5", ``"%s%s_%3.3d.h5"``
    adds the file number.
    """
    conversions = re.findall(r"%[-+ #0]*\d*(?:\.\d+)?[hlLqjzt]*([%diouxXeEfFgGcs])", template)
    count = sum(1 for c in conversions if c != "%")
    if count > 3:
        raise ValueError(f"file template {template!r} has {count} conversions; at most 3")
    return template % (path, name, number)[:count]


def _spot(options: Mapping[str, Any], col: float, row: float) -> np.ndarray:
    """The expected image: background + peak * Gaussian spot at (col, row)."""
    sigma = float(options["spot_sigma"])
    gx = np.exp(-0.5 * ((np.arange(options["width"]) - col) / sigma) ** 2)
    gy = np.exp(-0.5 * ((np.arange(options["height"]) - row) / sigma) ** 2)
    return options["background"] + options["peak"] * np.outer(gy, gx)  # (height, width)


def _detect(expected: np.ndarray, data_type: str, rng: np.random.Generator) -> np.ndarray:
    """One frame of ``expected`` mean counts: Poisson noise, clipped to ``data_type``."""
    counts = rng.poisson(expected)
    dtype = np.dtype(str(data_type).lower())
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        counts = np.clip(counts, info.min, info.max)
    return counts.astype(dtype)


class _H5File:
    """The plugin's open HDF5 file. Not thread-safe: one call at a time (the file worker)."""

    def __init__(
        self,
        path: str,
        frame_shape: tuple[int, ...],
        dtype: Any,
        chunk_frames: int,
        swmr: bool,
        compression: str | None,
    ) -> None:
        import h5py  # heavy; only a capturing simulator needs it

        self.count = 0
        self.file = h5py.File(path, "w", libver="latest")
        try:
            entry = self.file.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            data = entry.create_group("data")
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = "data"
            self.data = data.create_dataset(
                "data",
                shape=(0, *frame_shape),
                maxshape=(None, *frame_shape),
                chunks=(chunk_frames, *frame_shape),
                dtype=dtype,
                compression=compression,
            )
            # The NDArray attributes areaDetector always writes: which frame, and when.
            attrs = entry.create_group("instrument").create_group("NDAttributes")
            attrs.attrs["NX_class"] = "NXcollection"
            self.unique_id = attrs.create_dataset(
                "NDArrayUniqueId", shape=(0,), maxshape=(None,), chunks=(16384,), dtype="i4"
            )
            self.time_stamp = attrs.create_dataset(
                "NDArrayTimeStamp", shape=(0,), maxshape=(None,), chunks=(16384,), dtype="f8"
            )
            if swmr:
                self.file.swmr_mode = True  # readers may open it while frames arrive
        except BaseException:
            self.file.close()
            raise

    def append(self, frame: Any, unique_id: int, time_stamp: float) -> None:
        n = self.count
        for dataset, value in (
            (self.data, frame),
            (self.unique_id, unique_id),
            (self.time_stamp, time_stamp),
        ):
            dataset.resize(n + 1, axis=0)
            dataset[n] = value
        self.file.flush()
        self.count = n + 1

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# -- PV builders ------------------------------------------------------------------------------


async def _mirror(group: AreaDetectorSim, instance: Any, value: Any) -> Any:
    """Put of a setting: the value is taken as is, and shown by its ``_RBV`` too."""
    await getattr(group, instance.pvspec.attr + "_rbv").write(value, verify_value=False)
    return value


def _setting(name: str, value: Any, **kwargs: Any) -> pvproperty:
    """A setting PV whose put is mirrored to the ``<attr>_rbv`` readback."""
    return pvproperty(name=name, value=value, put=_mirror, **kwargs)


def _readback(name: str, value: Any, **kwargs: Any) -> pvproperty:
    return pvproperty(name=name, value=value, read_only=True, **kwargs)


def _enum(name: str, value: str, choices: tuple[str, ...], **kwargs: Any) -> pvproperty:
    return pvproperty(
        name=name, value=value, enum_strings=choices, dtype=ChannelType.ENUM, **kwargs
    )


def _ndarray_base(attr: str, pv: str, port: str) -> dict[str, pvproperty]:
    """The NDArrayBase PVs of a driver or plugin: ``<attr>_<name>`` at ``<pv><Name>``."""
    props = {
        "port_name_rbv": _readback(f"{pv}PortName_RBV", port, dtype=ChannelType.STRING),
        "unique_id_rbv": _readback(f"{pv}UniqueId_RBV", 0),
        "nd_attributes_file": text_pv(f"{pv}NDAttributesFile"),
        "color_mode_rbv": _enum(f"{pv}ColorMode_RBV", "Mono", COLOR_MODES, read_only=True),
        "data_type_rbv": _enum(f"{pv}DataType_RBV", "UInt8", DATA_TYPES, read_only=True),
        "array_counter": _setting(f"{pv}ArrayCounter", 0),
        "array_counter_rbv": _readback(f"{pv}ArrayCounter_RBV", 0),
        "ad_core_version_rbv": _readback(
            f"{pv}ADCoreVersion_RBV", "3.12.1", dtype=ChannelType.STRING
        ),
        "driver_version_rbv": _readback(
            f"{pv}DriverVersion_RBV", "hutch-sim", dtype=ChannelType.STRING
        ),
    }
    for axis in "XYZ":
        props[f"array_size_{axis.lower()}_rbv"] = _readback(f"{pv}ArraySize{axis}_RBV", 0)
    # Plugins show a received array's dimensions as ArraySize0/1/2; ophyd-async reads the
    # file plugin's without _RBV and the others with, so both are served.
    for dim in "012":
        props[f"array_size{dim}"] = _readback(f"{pv}ArraySize{dim}", 0)
        props[f"array_size{dim}_rbv"] = _readback(f"{pv}ArraySize{dim}_RBV", 0)
    return {f"{attr}_{name}": prop for name, prop in props.items()}


def _frames_wanted(image_mode: str, num_images: int) -> float:
    if image_mode == "Single":
        return 1
    if image_mode == "Multiple":
        return max(int(num_images), 1)
    return math.inf  # Continuous


class AreaDetectorSim(PVGroup):
    """A simulated areaDetector: the camera driver at ``{prefix}cam1:`` and the HDF5 file
    plugin at ``{prefix}HDF1:``, every PV that ophyd-async's ``ADBaseIO`` and ``NDFileHDF5IO`` use,
    plus ``cam1:TriggerMode`` (Internal/External), ``cam1:ReadoutTime_RBV``,
    ``cam1:MissedTriggers_RBV`` and the simulator-only ``cam1:SimTrigger``.

    ``sim`` holds the profile's simulation options: ``width, height`` (pixels), ``pixel_size``
    (mm at the sample), ``spot_sigma`` (pixels), ``peak, background`` (counts),
    ``readout_time`` (s) and ``data_type``. ``spot(t)`` gives the sample stage (x, y) in mm
    at wall-clock time ``t``: the beam spot is at :func:`spot_pixel`; None keeps it centred.
    Powder mode: ``powder`` (a calibrant: Si, LaB6, CeO2...) and ``poni`` (its geometry, an
    absolute path) draw the calibrant's rings (`powder.powder_pattern`, ``ring_width`` in
    degrees; ``peak`` and ``background`` as for the spot), frame size from the PONI file.

    In TriggerMode External an armed (acquiring) detector takes a frame for each call of
    :meth:`external_trigger`; a put of N to ``cam1:SimTrigger`` calls it N times at once.
    """

    # -- driver: cam1: --------------------------------------------------------------------

    locals().update(_ndarray_base("cam", "cam1:", "CAM1"))
    acquire = _enum("cam1:Acquire", "Done", ("Done", "Acquire"))
    acquire_rbv = _enum("cam1:Acquire_RBV", "Done", ("Done", "Acquire"), read_only=True)
    acquire_time = _setting("cam1:AcquireTime", 0.1, precision=4, units="s")
    acquire_time_rbv = _readback("cam1:AcquireTime_RBV", 0.1, precision=4, units="s")
    acquire_period = _setting("cam1:AcquirePeriod", 0.0, precision=4, units="s")
    acquire_period_rbv = _readback("cam1:AcquirePeriod_RBV", 0.0, precision=4, units="s")
    num_images = _setting("cam1:NumImages", 1)
    num_images_rbv = _readback("cam1:NumImages_RBV", 1)
    num_images_counter_rbv = _readback("cam1:NumImagesCounter_RBV", 0)
    image_mode = _enum(
        "cam1:ImageMode", "Single", ("Single", "Multiple", "Continuous"), put=_mirror
    )
    image_mode_rbv = _enum(
        "cam1:ImageMode_RBV", "Single", ("Single", "Multiple", "Continuous"), read_only=True
    )
    trigger_mode = _enum("cam1:TriggerMode", "Internal", ("Internal", "External"), put=_mirror)
    trigger_mode_rbv = _enum(
        "cam1:TriggerMode_RBV", "Internal", ("Internal", "External"), read_only=True
    )
    detector_state_rbv = _enum("cam1:DetectorState_RBV", "Idle", STATES, read_only=True)
    readout_time_rbv = _readback("cam1:ReadoutTime_RBV", 0.0, precision=4, units="s")
    missed_triggers_rbv = _readback("cam1:MissedTriggers_RBV", 0)
    data_type = _enum("cam1:DataType", "UInt16", DATA_TYPES)
    # The plugin has each frame (and its counters) before the driver counts it: stored only.
    wait_for_plugins = _enum("cam1:WaitForPlugins", "No", ("No", "Yes"))
    manufacturer_rbv = _readback("cam1:Manufacturer_RBV", "hutch", dtype=ChannelType.STRING)
    model_rbv = _readback("cam1:Model_RBV", "Simulated detector", dtype=ChannelType.STRING)
    serial_number_rbv = _readback("cam1:SerialNumber_RBV", "0", dtype=ChannelType.STRING)
    sdk_version_rbv = _readback("cam1:SDKVersion_RBV", "none", dtype=ChannelType.STRING)
    firmware_version_rbv = _readback("cam1:FirmwareVersion_RBV", "none", dtype=ChannelType.STRING)
    sim_trigger = pvproperty(name="cam1:SimTrigger", value=0, doc="Simulator only: N triggers")

    # -- HDF5 file plugin: HDF1: ----------------------------------------------------------

    locals().update(_ndarray_base("hdf", "HDF1:", "HDF1"))
    nd_array_port = _setting("HDF1:NDArrayPort", "CAM1", dtype=ChannelType.STRING)
    nd_array_port_rbv = _readback("HDF1:NDArrayPort_RBV", "CAM1", dtype=ChannelType.STRING)
    enable_callbacks = _enum("HDF1:EnableCallbacks", "Disable", ("Disable", "Enable"), put=_mirror)
    enable_callbacks_rbv = _enum(
        "HDF1:EnableCallbacks_RBV", "Disable", ("Disable", "Enable"), read_only=True
    )
    nd_array_address = _setting("HDF1:NDArrayAddress", 0)
    nd_array_address_rbv = _readback("HDF1:NDArrayAddress_RBV", 0)
    queue_size = _setting("HDF1:QueueSize", 20)
    queue_size_rbv = _readback("HDF1:QueueSize_RBV", 20)
    file_path = text_pv("HDF1:FilePath")
    file_path_rbv = text_pv("HDF1:FilePath_RBV", read_only=True)
    file_path_exists_rbv = _enum("HDF1:FilePathExists_RBV", "No", ("No", "Yes"), read_only=True)
    create_directory = pvproperty(name="HDF1:CreateDirectory", value=0)
    file_name = text_pv("HDF1:FileName")
    file_name_rbv = text_pv("HDF1:FileName_RBV", read_only=True)
    file_template = text_pv("HDF1:FileTemplate", "%s%s_%3.3d.h5")
    file_template_rbv = text_pv("HDF1:FileTemplate_RBV", "%s%s_%3.3d.h5", read_only=True)
    full_file_name_rbv = text_pv("HDF1:FullFileName_RBV", read_only=True)
    file_number = _setting("HDF1:FileNumber", 0)
    file_number_rbv = _readback("HDF1:FileNumber_RBV", 0)
    auto_increment = _enum("HDF1:AutoIncrement", "No", ("No", "Yes"), put=_mirror)
    auto_increment_rbv = _enum("HDF1:AutoIncrement_RBV", "No", ("No", "Yes"), read_only=True)
    file_write_mode = _enum(
        "HDF1:FileWriteMode", "Single", ("Single", "Capture", "Stream"), put=_mirror
    )
    file_write_mode_rbv = _enum(
        "HDF1:FileWriteMode_RBV", "Single", ("Single", "Capture", "Stream"), read_only=True
    )
    num_capture = _setting("HDF1:NumCapture", 1)
    num_capture_rbv = _readback("HDF1:NumCapture_RBV", 1)
    num_captured_rbv = _readback("HDF1:NumCaptured_RBV", 0)
    capture = _enum("HDF1:Capture", "Done", ("Done", "Capture"))
    capture_rbv = _enum("HDF1:Capture_RBV", "Done", ("Done", "Capture"), read_only=True)
    write_status = _enum("HDF1:WriteStatus", "Write OK", ("Write OK", "Write error"))
    write_message = text_pv("HDF1:WriteMessage", read_only=True)
    position_mode = _enum("HDF1:PositionMode", "Off", ("Off", "On"), put=_mirror)
    position_mode_rbv = _enum("HDF1:PositionMode_RBV", "Off", ("Off", "On"), read_only=True)
    compression = _enum("HDF1:Compression", "None", COMPRESSIONS, put=_mirror)
    compression_rbv = _enum("HDF1:Compression_RBV", "None", COMPRESSIONS, read_only=True)
    num_extra_dims = _setting("HDF1:NumExtraDims", 0)
    num_extra_dims_rbv = _readback("HDF1:NumExtraDims_RBV", 0)
    swmr_mode = _enum("HDF1:SWMRMode", "Off", ("Off", "On"), put=_mirror)
    swmr_mode_rbv = _enum("HDF1:SWMRMode_RBV", "Off", ("Off", "On"), read_only=True)
    flush_now = _enum("HDF1:FlushNow", "Done", ("Done", "Flush"))
    xml_file_name = text_pv("HDF1:XMLFileName")
    xml_file_name_rbv = text_pv("HDF1:XMLFileName_RBV", read_only=True)
    # 0 on a fresh IOC, as ophyd-async expects; the plugin then uses one frame per chunk.
    num_frames_chunks = _setting("HDF1:NumFramesChunks", 0)
    num_frames_chunks_rbv = _readback("HDF1:NumFramesChunks_RBV", 0)
    chunk_size_auto = _enum("HDF1:ChunkSizeAuto", "No", ("No", "Yes"), put=_mirror)
    chunk_size_auto_rbv = _enum("HDF1:ChunkSizeAuto_RBV", "No", ("No", "Yes"), read_only=True)
    lazy_open = _enum("HDF1:LazyOpen", "No", ("No", "Yes"), put=_mirror)
    lazy_open_rbv = _enum("HDF1:LazyOpen_RBV", "No", ("No", "Yes"), read_only=True)

    def __init__(
        self,
        prefix: str,
        *,
        sim: Mapping[str, Any] | None = None,
        spot: SpotSource | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, **kwargs)
        self.options = sim_options("area detector", prefix, sim, _DEFAULTS)
        o = self.options
        if o["data_type"] not in DATA_TYPES:
            raise ValueError(
                f"area detector {prefix}: data_type {o['data_type']!r} is not one of "
                f"{', '.join(DATA_TYPES)}"
            )
        if int(o["width"]) < 1 or int(o["height"]) < 1:
            raise ValueError(f"area detector {prefix}: width and height must be positive")
        if o["powder"] and spot is not None:
            raise ValueError(f"area detector {prefix}: a powder detector sees no beam spot")
        if bool(o["powder"]) != bool(o["poni"]):
            raise ValueError(f"area detector {prefix}: sim.powder and sim.poni go together")
        if o["poni"] and not Path(o["poni"]).is_file():
            raise ValueError(f"area detector {prefix}: sim.poni: no PONI file {o['poni']}")
        self.spot = spot
        self._sized = bool({"width", "height"} & set(sim or {}))
        self._powder: PowderPattern | None = None
        self._rng = np.random.default_rng()
        # Driver
        self._acquiring = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._triggers: asyncio.Queue[float | None] = asyncio.Queue()
        self._exposure = 0.0  # AcquireTime of the running acquisition
        self._last_trigger: float | None = None
        self._triggers_left = 0.0
        # File plugin: every h5py call runs on the file worker, one at a time, in a thread.
        self._jobs: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._h5: _H5File | None = None
        self._capture_done: asyncio.Future[None] | None = None
        self._accepting = False  # frames go to the file worker
        self._capture_open = False  # the file worker's view: a capture is on

    @staticmethod
    async def _put(prop: Any, value: Any) -> None:
        # Server-side update: skip the PV's own putter.
        await prop.write(value, verify_value=False)

    # -- startup --------------------------------------------------------------------------

    @acquire.startup
    async def acquire(self, instance: Any, async_lib: Any) -> None:
        if self.powder is not None:  # computed now, not at the first frame (seconds)
            rings = ", ".join(f"{r.hkl} {r.two_theta:.2f}" for r in self.powder.rings)
            log.info("%s: %s rings at 2θ (deg) %s", self.prefix, self.powder.calibrant, rings)
        o = self.options
        settings = {
            self.cam_array_size_x_rbv: int(o["width"]),
            self.cam_array_size_y_rbv: int(o["height"]),
            self.cam_array_size_z_rbv: 0,
            self.cam_array_size0_rbv: int(o["width"]),
            self.cam_array_size1_rbv: int(o["height"]),
            self.cam_data_type_rbv: o["data_type"],
            self.data_type: o["data_type"],
            self.readout_time_rbv: float(o["readout_time"]),
        }
        for prop, value in settings.items():
            await self._put(prop, value)
        self._worker = asyncio.create_task(self._file_worker())

    # -- driver ---------------------------------------------------------------------------

    @property
    def acquiring(self) -> bool:
        """True while the driver acquires (or, in External mode, is armed)."""
        return self._acquiring

    @acquire.putter
    async def acquire(self, instance: Any, value: str) -> None:
        if value != "Acquire":
            await self._stop_acquisition()
            await self._put(instance, "Done")
            raise SkipWrite
        if self._acquiring:  # as the busy record: done when the running acquisition is
            await self._idle.wait()
            raise SkipWrite
        self._acquiring = True
        self._idle.clear()
        self._stop.clear()
        self._triggers = asyncio.Queue()
        wanted = _frames_wanted(self.image_mode_rbv.value, self.num_images_rbv.value)
        external = self.trigger_mode_rbv.value == "External"
        # Armed before Acquire_RBV says so: a trigger may follow at once.
        self._exposure = float(self.acquire_time_rbv.value)
        self._last_trigger = None
        self._triggers_left = wanted if external else 0
        try:
            await self._put(instance, "Acquire")
            await self._put(self.num_images_counter_rbv, 0)
            if external:
                await self._put(self.missed_triggers_rbv, 0)
            await self._put(self.detector_state_rbv, "Acquire")
            await self._put(self.acquire_rbv, "Acquire")
            if external:
                await self._acquire_external(wanted)
            else:
                await self._acquire_internal(wanted)
        finally:
            self._acquiring = False
            self._triggers_left = 0
            # Idle before Acquire_RBV: ophyd-async checks the state once the put is done.
            await self._put(self.detector_state_rbv, "Idle")
            await self._put(self.acquire_rbv, "Done")
            await self._put(instance, "Done")
            self._idle.set()
        raise SkipWrite  # the put-callback completes now: the acquisition is over

    async def _stop_acquisition(self) -> None:
        if self._acquiring:
            self._stop.set()
            self._triggers.put_nowait(None)  # wakes an External acquisition
            await self._idle.wait()

    async def _stopped_before(self, deadline: float) -> bool:
        """Wait until ``deadline`` (monotonic); True at once if Acquire=0 comes first."""
        timeout = deadline - time.monotonic()
        if self._stop.is_set() or timeout <= 0:
            return self._stop.is_set()
        try:
            await asyncio.wait_for(self._stop.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _period(self) -> float:
        minimum = self._exposure + float(self.options["readout_time"])
        return max(float(self.acquire_period_rbv.value), minimum)

    async def _acquire_internal(self, wanted: float) -> None:
        exposure, period = self._exposure, self._period()
        start = time.monotonic()
        offset = time.time() - start  # wall clock = monotonic + offset
        taken = 0
        while taken < wanted:
            begin = start + taken * period
            if await self._stopped_before(begin) or await self._stopped_before(begin + exposure):
                return
            await self._emit(begin + offset)
            taken += 1

    async def _acquire_external(self, wanted: float) -> None:
        taken = 0
        while taken < wanted:
            stamp = await self._triggers.get()
            if stamp is None:  # Acquire=0
                return
            # The frame is read out once its exposure, started by the trigger, is over.
            exposure_end = time.monotonic() + (stamp + self._exposure - time.time())
            if await self._stopped_before(exposure_end):
                return
            await self._emit(stamp)
            taken += 1

    async def external_trigger(self, timestamp: float) -> bool:
        """A trigger edge at wall-clock ``timestamp`` (``time.time()`` base).

        An armed detector (Acquire on, TriggerMode External) takes a frame showing the spot
        at ``timestamp``: True. False when it is not armed, has all its frames, or is still
        busy with the previous frame (less than AcquireTime + readout time since the previous
        accepted trigger): then, like real hardware, it misses the trigger and counts it in
        ``MissedTriggers_RBV``.
        """
        if not self._acquiring or self._triggers_left <= 0:
            return False  # not armed for external triggers, or has all its frames
        busy = self._exposure + float(self.options["readout_time"])
        if self._last_trigger is not None and timestamp - self._last_trigger < busy:
            await self._put(self.missed_triggers_rbv, self.missed_triggers_rbv.value + 1)
            return False
        self._last_trigger = timestamp
        self._triggers_left -= 1
        self._triggers.put_nowait(timestamp)
        return True

    @property
    def powder(self) -> PowderPattern | None:
        """The powder mode's expected image, computed once (at the IOC's start: pyFAI's
        import and the geometry take seconds); None for a beam-spot detector."""
        o = self.options
        if self._powder is None and o["powder"]:
            shape = (int(o["height"]), int(o["width"])) if self._sized else None
            self._powder = powder_pattern(
                o["powder"],
                o["poni"],
                shape,
                peak=float(o["peak"]),
                background=float(o["background"]),
                ring_width=float(o["ring_width"]),
            )
            o["height"], o["width"] = self._powder.shape
        return self._powder

    def frame_at(self, timestamp: float) -> Any:
        """A frame as the detector would take it at wall-clock ``timestamp`` (with noise)."""
        if self.powder is not None:
            expected = self.powder.expected
        else:
            x, y = self.spot(timestamp) if self.spot is not None else (0.0, 0.0)
            expected = _spot(self.options, *spot_pixel(self.options, x, y))
        return _detect(expected, self.cam_data_type_rbv.value, self._rng)

    async def _emit(self, timestamp: float) -> None:
        """Take one frame (the spot at ``timestamp``) and pass it to the plugin."""
        frame = self.frame_at(timestamp)
        counter = self.cam_array_counter_rbv.value + 1
        await self._put(self.cam_array_counter_rbv, counter)
        await self._put(self.cam_unique_id_rbv, counter)
        await self._put(self.num_images_counter_rbv, self.num_images_counter_rbv.value + 1)
        await self._plugin_receive(frame, counter, timestamp)

    @data_type.putter
    async def data_type(self, instance: Any, value: str) -> str:
        await self._put(self.cam_data_type_rbv, value)
        return value

    @sim_trigger.putter
    async def sim_trigger(self, instance: Any, value: int) -> None:
        for _ in range(max(int(value), 0)):
            await self.external_trigger(time.time())
        await self._put(instance, 0)
        raise SkipWrite

    # -- HDF5 file plugin -----------------------------------------------------------------

    async def _plugin_receive(self, frame: Any, unique_id: int, timestamp: float) -> None:
        if self.enable_callbacks_rbv.value != "Enable":
            return
        height, width = frame.shape
        dtype = self.cam_data_type_rbv.value
        for prop, value in (
            (self.hdf_array_counter_rbv, self.hdf_array_counter_rbv.value + 1),
            (self.hdf_unique_id_rbv, unique_id),
            (self.hdf_array_size_x_rbv, width),
            (self.hdf_array_size_y_rbv, height),
            (self.hdf_array_size0, width),
            (self.hdf_array_size1, height),
            (self.hdf_array_size0_rbv, width),
            (self.hdf_array_size1_rbv, height),
            (self.hdf_data_type_rbv, dtype),
        ):
            if prop.value != value:
                await self._put(prop, value)
        if self._accepting:
            stamp = timestamp - _EPICS_EPOCH
            self._jobs.put_nowait(lambda: self._write_frame(frame, unique_id, stamp))

    async def _file_worker(self) -> None:
        """Run the plugin's file jobs in order: h5py must not be called concurrently."""
        while True:
            job = await self._jobs.get()
            try:
                await job()
            except Exception as exc:
                log.exception("%s: HDF5 file plugin", self.prefix)
                with contextlib.suppress(Exception):
                    await self._put(self.write_status, "Write error")
                    await self._put(self.write_message, str(exc)[: TEXT_LENGTH - 1])
                    await self._end_capture()

    async def _run_job(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` on the file worker, after the jobs already queued; wait for it."""
        done = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                await job()
            finally:
                if not done.done():
                    done.set_result(None)

        self._jobs.put_nowait(run)
        await done

    async def _open_file(self, frame_shape: tuple[int, ...], dtype: Any) -> None:
        path = format_file_name(
            self.file_template_rbv.value,
            self.file_path_rbv.value,
            self.file_name_rbv.value,
            self.file_number.value,
        )
        chunk_frames = max(int(self.num_frames_chunks_rbv.value), 1)
        swmr = self.swmr_mode_rbv.value == "On"
        # Of areaDetector's codecs, zlib is the one h5py has built in; the others write plain.
        compression = "gzip" if self.compression_rbv.value == "zlib" else None
        await self._put(self.full_file_name_rbv, path)
        self._h5 = await asyncio.to_thread(
            _H5File, path, frame_shape, dtype, chunk_frames, swmr, compression
        )
        if self.auto_increment.value == "Yes":
            await self._put(self.file_number, self.file_number.value + 1)
            await self._put(self.file_number_rbv, self.file_number.value)

    async def _start_capture(self) -> None:
        self._capture_open = True
        await self._put(self.num_captured_rbv, 0)
        await self._put(self.write_status, "Write OK")
        await self._put(self.write_message, "")
        if self.lazy_open_rbv.value != "Yes":  # else the first frame opens the file
            shape = (int(self.options["height"]), int(self.options["width"]))
            dtype = np.dtype(str(self.cam_data_type_rbv.value).lower())
            await self._open_file(shape, dtype)
        # As the plugin: Capture_RBV is on once the file is open (a failed open leaves it off).
        await self._put(self.capture_rbv, "Capture")

    async def _write_frame(self, frame: Any, unique_id: int, time_stamp: float) -> None:
        if not self._capture_open:  # the capture ended while this frame was queued
            return
        if self._h5 is None:
            await self._open_file(frame.shape, frame.dtype)
        assert self._h5 is not None
        await asyncio.to_thread(self._h5.append, frame, unique_id, time_stamp)
        # Counted only now, when a reader can find the frame in the file.
        captured = self._h5.count
        await self._put(self.num_captured_rbv, captured)
        wanted = int(self.num_capture_rbv.value)
        if 0 < wanted <= captured:
            await self._end_capture()

    async def _end_capture(self) -> None:
        self._accepting = False
        self._capture_open = False
        h5, self._h5 = self._h5, None
        try:
            if h5 is not None:
                await asyncio.to_thread(h5.close)
        finally:
            await self._put(self.capture_rbv, "Done")
            await self._put(self.capture, "Done")
            done, self._capture_done = self._capture_done, None
            if done is not None and not done.done():
                done.set_result(None)

    @capture.putter
    async def capture(self, instance: Any, value: str) -> None:
        if value != "Capture":
            self._accepting = False
            if self._capture_done is not None:
                await self._run_job(self._end_capture)  # frames queued before are written
            await self._put(self.capture_rbv, "Done")
            await self._put(instance, "Done")
            raise SkipWrite
        if self._capture_done is not None:  # already capturing
            raise SkipWrite
        done = self._capture_done = asyncio.get_running_loop().create_future()
        await self._put(instance, "Capture")
        self._accepting = True
        await self._run_job(self._start_capture)
        await done  # the put-callback completes when the capture ends
        raise SkipWrite

    @flush_now.putter
    async def flush_now(self, instance: Any, value: str) -> None:
        async def flush() -> None:
            if self._h5 is not None:
                await asyncio.to_thread(self._h5.flush)

        await self._run_job(flush)
        await self._put(instance, "Done")
        raise SkipWrite

    @file_path.putter
    async def file_path(self, instance: Any, value: str) -> str:
        path = value.split("\0", 1)[0]
        if path and not path.endswith(("/", "\\")):
            path += "/"  # as the plugin does
        exists = _check_directory(path, int(self.create_directory.value))
        await self._put(self.file_path_rbv, path)
        await self._put(self.file_path_exists_rbv, "Yes" if exists else "No")
        return path

    @file_name.putter
    async def file_name(self, instance: Any, value: str) -> str:
        return await _mirror(self, instance, value.split("\0", 1)[0])

    @file_template.putter
    async def file_template(self, instance: Any, value: str) -> str:
        return await _mirror(self, instance, value.split("\0", 1)[0])

    @xml_file_name.putter
    async def xml_file_name(self, instance: Any, value: str) -> str:
        return await _mirror(self, instance, value.split("\0", 1)[0])


def _check_directory(path: str, create_depth: int) -> bool:
    """Whether ``path`` is a writable directory, creating it as the plugin's CreateDirectory
    allows: 0 creates nothing; -N creates at most the last N missing directories; N creates
    the missing ones when at least the first N directories of the path exist."""
    if not path:
        return False
    target = Path(path)
    if not target.is_dir() and create_depth != 0:
        parents = [target, *target.parents]
        missing = sum(1 for p in parents if not p.is_dir())
        existing = len(target.parts) - 1 - missing  # directories below the root that exist
        allowed = missing <= -create_depth if create_depth < 0 else existing >= create_depth
        if allowed:
            with contextlib.suppress(OSError):
                target.mkdir(parents=True, exist_ok=True)
    return target.is_dir() and os.access(target, os.W_OK)
