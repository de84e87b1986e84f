"""``hutch bench fly``: hardware-triggered fly scans on the simulator, each beside its ceiling.

Two tables, measured on the bench's own simulator (``hutch.bench.ca.channel_access_tables``):

- PandA position capture: the profile's PandA captures an encoder value and the timestamp of
  every pulse of CLOCK1 at 1 MHz into HDF5 on the data directory's disk, and every pulse the
  clock emitted (TTLOUT1's count) must be in the file, once, one period after the one before
  (the table fails otherwise). Its rate is the points over the time the clock ran, which is
  all a 1 MHz clock can show: so that it measures whether the capture keeps pace, the time
  the last points take to reach the file beyond 0.1 s after the clock stops is added to it.
  Its ceiling is raw h5py appending the same two float64 columns, in the blocks the
  simulator writes per tick and flushing after each as it does, to a SWMR file on the same
  disk, for as long. Goal: 1 M points/s.
- Area detector: a full session (NeXus, catalogue, plot) runs ``plans.fly_scan`` of the
  detector the PandA triggers; frames/s end to end (the run's wall time, until it is written)
  beside the detector's nominal rate, 1 / (exposure + readout time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import bluesky.plan_stubs as bps
import h5py
import numpy as np
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import Array1D
from ophyd_async.epics.core import epics_signal_r

from hutch import plans
from hutch.bench.rows import BenchRow, BenchTableError
from hutch.config import Settings
from hutch.devices import AreaDetector, PandA
from hutch.devices.panda import PandaBit, PandaBitSource, PandaCapture, PandaCaptureMode
from hutch.plans.fly import TRIGGER_MARGIN
from hutch.profile import DeviceSpec, Profile
from hutch.session import Session
from hutch.simulators.panda import CHUNK, PULSE_PV

__all__ = ["FLY_FRAMES", "FLY_SECONDS", "PANDA_GOAL", "fly_throughput"]

#: Points/s the PandA must capture into HDF5, sustained and without loss (issue #3).
PANDA_GOAL = 1_000_000.0
#: Seconds CLOCK1 runs at 1 MHz (the raw h5py baseline appends for as long).
FLY_SECONDS = 3.0
#: Frames of the area-detector fly scan.
FLY_FRAMES = 300

CLOCK_PERIOD = 1e-6
#: The simulated PandA's step (``simulators.panda``'s default ``tick``): the rows it hands its
#: HDF5 writer per tick, unless the profile's ``sim.tick`` says otherwise.
_PANDA_TICK = 0.002
#: The area detector's exposure: short, so that its readout time sets the pace.
EXPOSURE = 0.5e-3
#: Between two trigger positions of the fly scan, in the motor's encoder counts.
_STEP_COUNTS = 100
#: Seconds allowed after the clock stops for the last captured points to reach the file.
_FLUSH_TIMEOUT = 120.0
#: A writer keeping pace has every point in the file this soon (s) after the clock stops:
#: tens of the simulator's ticks, and the Channel Access round trips that tell us.
_PACE = 0.1


def fly_throughput(
    profile: Profile,
    settings: Settings,
    bare: Session,
    work_dir: Path,
    *,
    seconds: float = FLY_SECONDS,
    frames: int = FLY_FRAMES,
) -> list[BenchRow]:
    """Rows of the two fly tables, with the connected devices and RunEngine of ``bare`` (a
    session without subscriptions) on the bench's simulator; ``settings`` is the bench's (its
    catalogue). The PandA and raw h5py write in a temporary directory in ``work_dir``.

    The PandA's clock runs last: its million pulses a second also reach the detector's IOC
    (TTLOUT1 is its trigger cable), which is then busy for a while discarding them, and would
    take a frame of those still queued were it armed, and slow raw h5py down.
    """
    panda_spec = _spec(profile, PandA, "a PandA")
    detector_spec = next(
        (
            d
            for d in profile.devices
            if issubclass(d.device_class, AreaDetector)
            and d.sim.get("trigger", panda_spec.name) == panda_spec.name
        ),
        None,
    )
    if detector_spec is None:
        raise BenchTableError(
            f"profile {profile.name!r} has no area detector {panda_spec.name} triggers"
        )
    encoders = panda_spec.options.get("encoders", {})
    motor_name = encoders.get("1", encoders.get(1))
    if motor_name is None:
        raise BenchTableError(f"{panda_spec.name}: no motor on encoder 1 (options.encoders)")
    devices = bare.devices
    panda, detector = devices[panda_spec.name], devices[detector_spec.name]
    rows = _area_detector(profile, settings, bare, detector, panda, devices[motor_name], frames)
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fly-", dir=work_dir) as tmp:
        block = max(round(float(panda_spec.sim.get("tick", _PANDA_TICK)) / CLOCK_PERIOD), 1)
        raw_points, raw_seconds = _raw_appends(Path(tmp, "raw.h5"), block, seconds)
        capture = call_in_bluesky_event_loop(
            _clock_capture(panda, panda_spec.prefix, Path(tmp), seconds)
        )
    table = (
        f"PandA position capture into HDF5, {seconds:g} s, points/s "
        f"(goal >= {PANDA_GOAL / 1e6:g} M points/s with zero loss)"
    )
    panda_rows = [
        _rate_row(
            table,
            f"raw h5py append: time + value, {block}-row blocks, flush each (SWMR)",
            raw_points,
            raw_seconds,
            "point",
        ),
        _rate_row(
            table,
            f"PandA capture (CLOCK at 1 MHz): {capture.points:,} points, zero loss, in the "
            f"file {capture.lag * 1e3:.0f} ms after the clock stopped",
            capture.points,
            capture.seconds,
            "point",
            min_rate=PANDA_GOAL,
        ),
    ]
    return panda_rows + rows


def _spec(profile: Profile, cls: type, what: str) -> DeviceSpec:
    spec = next((d for d in profile.devices if issubclass(d.device_class, cls)), None)
    if spec is None:
        raise BenchTableError(f"profile {profile.name!r} has no {what} ({cls.__name__})")
    return spec


def _rate_row(
    table: str,
    name: str,
    count: int,
    seconds: float,
    what: str,
    min_rate: float | None = None,
) -> BenchRow:
    """A row of ``count`` points or frames (``what``) in ``seconds``, against its table's
    first row's rate."""
    return BenchRow(
        table,
        name,
        seconds / count * 1e3,
        ratio_of="rate",
        unit=f"ms/{what}",
        events_per_s=count / seconds,
        min_rate=min_rate,
    )


# -- PandA capture ----------------------------------------------------------------------------


@dataclass
class _ClockCapture:
    points: int
    """Pulses the clock emitted, every one of them in the file."""
    lag: float
    """Seconds from the clock stopping until the last point was in the file."""

    @property
    def seconds(self) -> float:
        """The time the clock ran (by its own timestamps: ``points`` periods), plus the
        writer's lag beyond ``_PACE``: a writer falling behind has its backlog counted."""
        return self.points * CLOCK_PERIOD + max(self.lag - _PACE, 0.0)


async def _clock_capture(
    panda: PandA, prefix: str, directory: Path, seconds: float
) -> _ClockCapture:
    """CLOCK1 at 1 MHz for ``seconds``, captured (INENC1.VAL and TS_TRIG) into a file in
    ``directory``; raise ``BenchTableError`` unless every pulse is in it exactly once."""
    # TTLOUT1's last post after the clock stops: [first index, t0, t1, ...] of its last
    # pulses, so first index + count is every pulse the clock emitted.
    ttl = epics_signal_r(Array1D[np.float64], f"{prefix.rstrip(':')}:{PULSE_PV}")
    await ttl.connect()
    data = panda.data
    await panda.route(PandaBitSource.CLOCK)
    await asyncio.gather(
        panda.clock.enable.set(PandaBit.ZERO),
        panda.pcap.ts_capture.set(PandaCapture.VALUE),
        panda.pcap.ts_dataset.set("time"),
        *(
            inenc.val_capture.set(PandaCapture.VALUE if n == 1 else PandaCapture.NO)
            for n, inenc in panda.inenc.items()
        ),
        panda.inenc[1].val_dataset.set("x"),
        panda.clock.period.set(CLOCK_PERIOD),
        data.capture_mode.set(PandaCaptureMode.FOREVER),
        data.flush_period.set(0.0),  # as hutch's PandA device: flush as the rows come
        data.hdf_file_name.set("panda.h5"),
        data.hdf_directory.set(str(directory)),
    )
    await data.capture.set(True)
    try:
        if not await data.capture.get_value():
            raise BenchTableError(
                f"{prefix} DATA capture did not start: {await data.status.get_value()}"
            )
        await panda.pcap.arm.set(True)
        await panda.clock.enable.set(PandaBit.ONE)
        await asyncio.sleep(seconds)
        await panda.clock.enable.set(PandaBit.ZERO)
        stopped = time.perf_counter()
        last = await ttl.get_value()
        emitted = int(last[0]) + len(last) - 1
        await panda.pcap.arm.set(False)
        deadline = time.perf_counter() + _FLUSH_TIMEOUT
        while (written := await data.num_captured.get_value()) < emitted:
            if time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.002)
        flushed = time.perf_counter()
        path = Path(await data.hdf_full_file_path.get_value())
    finally:  # the clock stopped and the file closed, whatever happened
        await panda.clock.enable.set(PandaBit.ZERO)
        await panda.pcap.arm.set(False)
        await data.capture.set(False)
    with h5py.File(path, "r") as f:
        times, positions = f["time"][()], f["x"][()]
    if not (len(times) == len(positions) == written == emitted):
        raise BenchTableError(
            f"PandA capture lost points: {len(times)} timestamps and {len(positions)} "
            f"positions in {path.name}, NUM_CAPTURED {written}, the clock emitted {emitted}"
        )
    # No pulse missing or doubled between the first and the last: one period apart each.
    gaps = np.flatnonzero(np.abs(np.diff(times) - CLOCK_PERIOD) > 1e-9)
    if len(gaps):
        raise BenchTableError(
            f"PandA capture: {len(gaps)} timestamps of {len(times)} are not one clock period "
            f"after the one before (the first after point {gaps[0]})"
        )
    return _ClockCapture(points=emitted, lag=flushed - stopped)


def _raw_appends(path: Path, block: int, seconds: float) -> tuple[int, float]:
    """(points, seconds) of raw h5py appending ``block`` rows at a time to the two float64
    datasets of a SWMR file, as the simulated PandA's writer does, for about ``seconds``."""
    stamps = np.arange(block) * CLOCK_PERIOD
    values = np.full(block, 1.2345)
    with h5py.File(path, "w", libver="latest", locking=False) as f:
        columns = [
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(CHUNK,))
            for name in ("time", "x")
        ]
        f.swmr_mode = True
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for dataset, rows in zip(columns, (stamps + n * CLOCK_PERIOD, values), strict=True):
                dataset.resize((n + block,))
                dataset[n:] = rows
            f.flush()
            n += block
    return n, time.perf_counter() - start


# -- area detector ----------------------------------------------------------------------------


def _area_detector(
    profile: Profile,
    settings: Settings,
    bare: Session,
    detector: AreaDetector,
    panda: PandA,
    motor: Any,
    frames: int,
) -> list[BenchRow]:
    """A ``frames``-frame fly scan of ``motor`` at the detector's nominal rate in a full
    session on ``bare``'s RunEngine and devices: frames/s end to end, beside that rate."""
    readout, scale = call_in_bluesky_event_loop(
        _values(detector.driver.readout_time, panda.inenc[1].val_scale)
    )
    step = _STEP_COUNTS * abs(scale)
    start = -(frames // 2) * step  # centred on 0, well inside the demo stage's soft limits
    stop = start + (frames - 1) * step
    # Given the exposure, fly_scan triggers TRIGGER_MARGIN slower than the nominal rate.
    table = (
        f"Area detector fly scan ({detector.name}, triggers at {1 - TRIGGER_MARGIN:.0%} of its "
        "nominal rate): frames written and catalogued / run wall time (NeXus, catalogue, plot)"
    )
    nominal = (
        f"detector nominal rate: 1 / ({EXPOSURE * 1e3:g} ms exposure + {readout * 1e3:g} ms "
        "readout), computed ceiling"
    )
    RE = bare.RE
    docs: list[tuple[str, dict[str, Any]]] = []
    with (
        Session(profile, settings, connect=False, RE=RE) as session,
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),  # the live table
        warnings.catch_warnings(),
    ):
        # The live table says it leaves the frames out; so it should.
        warnings.filterwarnings("ignore", "The key .* will be skipped", UserWarning)
        # Its own devices are not connected: its baseline reads the bench's of those names.
        session.baseline.baseline = [bare.devices[name] for name in profile.baseline]

        def fly(num: int, last: float) -> Any:
            return plans.fly_scan(
                [detector],
                motor,
                start,
                last,
                num,
                panda=panda,
                exposure=EXPOSURE,
            )

        RE(bps.mv(motor, start))
        RE(fly(10, start + 9 * step))  # warm up: the recorder's and catalogue's first run
        RE(bps.mv(motor, start))
        token = RE.subscribe(lambda name, doc: docs.append((name, doc)))
        try:
            began = time.perf_counter()
            result = RE(fly(frames, stop))
            seconds = time.perf_counter() - began
        finally:
            RE.unsubscribe(token)
        if result.exit_status != "success":
            raise BenchTableError(f"the fly scan ended {result.exit_status}: {result.reason}")
        uid = result.run_start_uids[0]
        catalogued = session.runs_container[uid]["primary"][detector.name].shape[0]
    in_file = _frames_in_file(docs, detector.name)
    if not catalogued == in_file == frames:
        raise BenchTableError(
            f"fly scan of {frames} frames: {in_file} in {detector.name}'s file, "
            f"{catalogued} in the catalogue"
        )
    return [
        _rate_row(table, nominal, frames, frames * (EXPOSURE + readout), "frame"),
        _rate_row(
            table,
            f"area detector, fly scan end to end: {frames} frames, full session",
            frames,
            seconds,
            "frame",
        ),
    ]


async def _values(*signals: Any) -> list[Any]:
    return list(await asyncio.gather(*(s.get_value() for s in signals)))


def _frames_in_file(docs: list[tuple[str, dict[str, Any]]], data_key: str) -> int:
    """Frames in the detector's HDF5 file, found from the run's stream resource."""
    resource = next(
        (doc for name, doc in docs if name == "stream_resource" and doc["data_key"] == data_key),
        None,
    )
    if resource is None:
        raise BenchTableError(f"the fly scan's documents reference no file of {data_key}")
    with h5py.File(urlparse(resource["uri"]).path, "r", swmr=True) as f:
        return f[resource["parameters"]["dataset"]].shape[0]
