"""Scans with hardware triggering: fly scans driven by a PandA, and step scans with detectors
that write their own files.

In a fly scan the motor moves at constant velocity through the scan range; the PandA's
position compare (PCOMP) fires a trigger each time the motor's encoder crosses the next of
``num`` equally spaced positions, every detector takes one frame per trigger and writes it to
its own HDF5 file, and the PandA captures the encoder position of each trigger. The run's
documents only reference those files (StreamResource / StreamDatum).

Every plan checks its arguments against the hardware before anything moves: the velocity
against the motor's maximum (VMAX), the range with its run-up and run-down against the soft
limits, and the trigger rate against each detector's exposure and dead time. A bad argument
raises `ScanArgumentError` naming it, and no run is opened.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
from bluesky.utils import FailedStatus, MsgGenerator
from ophyd_async.core import (
    DetectorTrigger,
    Device,
    FlyMotorInfo,
    Signal,
    StandardDetector,
    TriggerInfo,
)

from hutch.devices.panda import PandA, PcompInfo

from .checks import Axis, ScanArgumentError, checked, read_axis

__all__ = ["DeviceFailure", "fly_scan", "snake_fly_scan", "step_scan"]

#: Seconds between two collections of a fly scan's frames while it runs: at most this much
#: of the detectors' data is written but not yet referenced by the run if one of them dies.
FLUSH_PERIOD = 0.2
#: Fraction of each trigger period kept free beyond the detectors' exposure and dead time:
#: trigger times jitter a little, and a trigger during the dead time is lost.
TRIGGER_MARGIN = 0.02


class DeviceFailure(RuntimeError):
    """A device stopped answering or failed during a scan; the message starts with its name.

    The run is closed with exit_status 'fail' and this message as its reason; the data
    collected until then stay in the run.
    """


def _signal_sources(device: Any) -> Iterator[str]:
    for _, child in device.children():
        if isinstance(child, Signal):
            yield child.source.partition("://")[2] or child.source
        else:
            yield from _signal_sources(child)


def _failed_device(error: BaseException, devices: Sequence[Any]) -> str | None:
    """The device an error is about: the one whose status failed, or whose PV it names."""
    text = f"{error!r} {error}"
    for device in devices:
        if f"device: {device.name}," in text:  # a failed status (bluesky's FailedStatus)
            return device.name
    for device in devices:
        if isinstance(device, Device) and any(s and s in text for s in _signal_sources(device)):
            return device.name
    return None


def _naming_failures(devices: Sequence[Any], plan: MsgGenerator) -> MsgGenerator:
    """Run ``plan``; an error that comes from one of ``devices`` is raised again as a
    `DeviceFailure` naming it, so the run's stop document says which device failed (a
    timeout of ophyd-async names only a PV)."""
    try:
        return (yield from plan)
    except Exception as error:
        name = _failed_device(error, devices)
        if name is None:
            raise
        # A failed status's own message is the status's repr; what went wrong is its cause.
        cause = error.__cause__ if isinstance(error, FailedStatus) and error.__cause__ else error
        raise DeviceFailure(f"{name} failed: {cause}") from error


def _deadtime(plan: str, detector: StandardDetector, trigger: DetectorTrigger) -> MsgGenerator:
    (future,) = yield from bps.wait_for([detector.get_trigger_deadtime])
    triggers, deadtime = future.result()
    if trigger not in triggers:
        supported = ", ".join(sorted(t.name for t in triggers))
        raise ScanArgumentError(
            f"{plan}: detectors: {detector.name} cannot be triggered {trigger.name} "
            f"(it supports {supported})"
        )
    return deadtime or 0.0


@dataclass(frozen=True)
class _Timing:
    period: float
    """Seconds between triggers."""
    exposure: float
    speed: float
    """Motor speed during the constant-velocity part, positive."""


def _timing(
    plan: str,
    detectors: Sequence[StandardDetector],
    axis: Axis,
    step: float,
    velocity: float | None,
    exposure: float | None,
) -> MsgGenerator[_Timing]:
    """Trigger period, exposure and speed from whichever of velocity and exposure is given,
    checked against VMAX and every detector's dead time."""
    if velocity is None and exposure is None:
        raise ScanArgumentError(f"{plan}: give velocity or exposure (or both)")
    deadtimes = {}
    for detector in detectors:
        deadtimes[detector.name] = yield from _deadtime(
            plan, detector, DetectorTrigger.EXTERNAL_EDGE
        )
    slowest = max(deadtimes, key=deadtimes.get, default=None)
    deadtime = deadtimes.get(slowest, 0.0) if slowest else 0.0
    # Each trigger period keeps a margin beyond exposure and dead time: trigger times jitter.
    usable = 1 - TRIGGER_MARGIN
    if velocity is None:
        period = (exposure + deadtime) / usable
        velocity = abs(step) / period
    else:
        period = abs(step) / velocity
        if exposure is None:
            exposure = period * usable - deadtime
    if velocity > axis.max_velocity:
        raise ScanArgumentError(
            f"{plan}: velocity {velocity:g} {axis.units}/s exceeds {axis.name}'s maximum "
            f"velocity (VMAX) {axis.max_velocity:g} {axis.units}/s"
        )
    # (A relative 1e-9: a period computed from exactly these numbers must pass.)
    if exposure <= 0 or period * usable * (1 + 1e-9) < exposure + deadtime:
        fastest = (max(exposure, 0) + deadtime) / usable
        raise ScanArgumentError(
            f"{plan}: velocity {velocity:g} {axis.units}/s triggers every {period * 1e3:.4g} ms "
            f"({1 / period:.4g} Hz), faster than {slowest} can take frames: exposure "
            f"{max(exposure, 0) * 1e3:.4g} ms + dead time {deadtime * 1e3:.4g} ms + "
            f"{TRIGGER_MARGIN:.0%} margin (at most {1 / fastest:.4g} Hz)"
        )
    return _Timing(period=period, exposure=exposure, speed=velocity)


@dataclass(frozen=True)
class _Row:
    start: float
    stop: float

    @property
    def step_sign(self) -> float:
        return 1.0 if self.stop >= self.start else -1.0


def _fly_info(row: _Row, step: float, num: int, timing: _Timing) -> FlyMotorInfo:
    # Half a step beyond each end: the motor is at constant velocity when it crosses the
    # first and last trigger positions, and the PCOMP input starts on the pre-start side.
    half = row.step_sign * abs(step) / 2
    return FlyMotorInfo(
        start_position=row.start - half,
        end_position=row.stop + half,
        time_for_move=num * timing.period,
    )


def _check_rows(
    plan: str,
    axis: Axis,
    rows: Sequence[_Row],
    step: float,
    num: int,
    timing: _Timing,
    names: tuple[str, str] = ("start", "stop"),
) -> None:
    """Every row's run-up and run-down within the soft limits; ``names`` are the plan's
    parameters for the first and last position."""
    first, last = names
    for row in rows:
        info = _fly_info(row, step, num, timing)
        # A snake's backward rows start at the last position: name what the user gave.
        up, down = (first, last) if row.step_sign == rows[0].step_sign else (last, first)
        axis.check(plan, up, info.ramp_up_start_pos(axis.acceleration_time), "with run-up ")
        axis.check(plan, down, info.ramp_down_end_pos(axis.acceleration_time), "with run-down ")


def _encoder(plan: str, panda: PandA, motor: Any, step: float) -> MsgGenerator[int]:
    """The PandA encoder reading ``motor``; ``step`` must be a whole number of its counts."""
    number = next((n for n, name in panda.encoders.items() if name == motor.name), None)
    if number is None:
        raise ScanArgumentError(
            f"{plan}: motor: {motor.name} has no encoder on {panda.name} (its encoders: "
            f"{', '.join(f'{n}={m}' for n, m in panda.encoders.items()) or 'none'})"
        )
    scale = yield from bps.rd(panda.inenc[number].val_scale)
    counts = abs(step / scale)
    if not math.isclose(counts, round(counts), rel_tol=1e-6, abs_tol=1e-6):
        raise ScanArgumentError(
            f"{plan}: num: the step {abs(step):g} between trigger positions is not a whole "
            f"number of {panda.name}'s encoder counts ({abs(scale):g} each); choose num so "
            "that (stop - start) / (num - 1) is"
        )
    return number


def _fly_rows(
    detectors: Sequence[StandardDetector],
    panda: PandA,
    motor: Any,
    encoder: int,
    rows: Sequence[_Row],
    num: int,
    step: float,
    timing: _Timing,
    slow: Any = None,
    slow_positions: Sequence[float] = (),
) -> MsgGenerator[None]:
    """Fly ``rows`` in one primary stream: detectors and PandA armed once for every trigger
    of the scan, the motor and the position compare set up again for each row."""
    total = num * len(rows)
    yield from bps.prepare(
        panda,
        TriggerInfo(trigger=DetectorTrigger.EXTERNAL_LEVEL, number_of_events=total),
        wait=True,
    )
    for detector in detectors:
        yield from bps.prepare(
            detector,
            TriggerInfo(
                trigger=DetectorTrigger.EXTERNAL_EDGE,
                number_of_events=total,
                livetime=timing.exposure,
            ),
            group="prepare",
        )
    yield from bps.wait(group="prepare")
    collectors = [*detectors, panda]
    yield from bps.declare_stream(*collectors, name="primary", collect=True)
    for index, row in enumerate(rows):
        if slow is not None:
            yield from bps.mv(slow, slow_positions[index])
        yield from bps.prepare(motor, _fly_info(row, step, num, timing), wait=True)
        yield from bps.prepare(
            panda.pcomp_flyer,
            PcompInfo(encoder=encoder, start=row.start, step=row.step_sign * abs(step), pulses=num),
            wait=True,
        )
        for collector in collectors:  # this row's share of the triggers the scan armed for
            yield from bps.mv(collector.events_to_kickoff, num)
        yield from bps.kickoff_all(*collectors, wait=True)
        yield from bps.kickoff(panda.pcomp_flyer, wait=True)
        yield from bps.kickoff(motor, wait=True)
        yield from bps.collect_while_completing(
            flyers=[motor, panda.pcomp_flyer, *collectors],
            dets=collectors,
            flush_period=FLUSH_PERIOD,
            stream_name="primary",
        )


def _restoring_velocity(motor: Any, plan: MsgGenerator) -> MsgGenerator:
    """Run ``plan`` and put the motor's velocity back afterwards (a fly scan changes it)."""
    velocity = yield from bps.rd(motor.velocity)
    return (yield from bpp.finalize_wrapper(plan, bps.mv(motor.velocity, velocity)))


@checked
def fly_scan(
    detectors: Sequence[StandardDetector],
    motor: Any,
    start: float,
    stop: float,
    num: int,
    *,
    panda: PandA,
    velocity: float | None = None,
    exposure: float | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Fly ``motor`` from ``start`` to ``stop`` at constant velocity, taking ``num`` frames.

    The PandA fires a trigger at each of ``num`` equally spaced positions (start and stop
    included) and captures the motor's encoder position there; every detector takes one
    frame per trigger. Give the ``velocity``, the ``exposure`` (the fastest velocity the
    detectors allow is then used), or both. Returns the run's uid.
    """
    plan = "fly_scan"
    num = int(num)
    step = (stop - start) / (num - 1)
    if step == 0:
        raise ScanArgumentError(f"{plan}: start and stop are both {start:g}")
    encoder = yield from _encoder(plan, panda, motor, step)
    axis = yield from read_axis(motor, motion=True)
    timing = yield from _timing(plan, detectors, axis, step, velocity, exposure)
    rows = [_Row(start, stop)]
    _check_rows(plan, axis, rows, step, num, timing)

    axis_key = f"{panda.name}-{motor.name}"
    metadata = {
        "plan_name": plan,
        "plan_args": {
            "detectors": [d.name for d in detectors],
            "motor": motor.name,
            "start": start,
            "stop": stop,
            "num": num,
            "panda": panda.name,
            "velocity": timing.speed,
            "exposure": timing.exposure,
        },
        "detectors": [d.name for d in detectors],
        "motors": [motor.name],
        "num_points": num,
        "num_intervals": num - 1,
        "shape": [num],
        "extents": [[start, stop]],
        "hints": {"dimensions": [([axis_key], "primary")]},
        **(md or {}),
    }

    @bpp.stage_decorator([*detectors, panda, panda.pcomp_flyer, motor])
    @bpp.run_decorator(md=metadata)
    def inner() -> MsgGenerator[None]:
        yield from _naming_failures(
            [*detectors, panda, motor],
            _fly_rows(detectors, panda, motor, encoder, rows, num, step, timing),
        )

    return (yield from _restoring_velocity(motor, inner()))


@checked
def snake_fly_scan(
    detectors: Sequence[StandardDetector],
    slow: Any,
    slow_start: float,
    slow_stop: float,
    slow_num: int,
    fast: Any,
    fast_start: float,
    fast_stop: float,
    fast_num: int,
    *,
    panda: PandA,
    velocity: float | None = None,
    exposure: float | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """A 2-D raster: step ``slow`` through ``slow_num`` rows and fly ``fast`` across each,
    alternating direction (snake), ``fast_num`` frames per row.

    Frames come in the order taken; the run's ``shape`` is ``[slow_num, fast_num]`` with
    ``snaking`` set, so the data reshape to the grid with every other row reversed.
    Returns the run's uid.
    """
    plan = "snake_fly_scan"
    slow_num, fast_num = int(slow_num), int(fast_num)
    step = (fast_stop - fast_start) / (fast_num - 1)
    if step == 0:
        raise ScanArgumentError(f"{plan}: fast_start and fast_stop are both {fast_start:g}")
    encoder = yield from _encoder(plan, panda, fast, step)
    fast_axis = yield from read_axis(fast, motion=True)
    slow_axis = yield from read_axis(slow)
    slow_positions = [
        slow_start + i * (slow_stop - slow_start) / max(slow_num - 1, 1) for i in range(slow_num)
    ]
    for parameter, position in (("slow_start", slow_start), ("slow_stop", slow_stop)):
        slow_axis.check(plan, parameter, position)
    timing = yield from _timing(plan, detectors, fast_axis, step, velocity, exposure)
    rows = [
        _Row(fast_start, fast_stop) if i % 2 == 0 else _Row(fast_stop, fast_start)
        for i in range(slow_num)
    ]
    _check_rows(plan, fast_axis, rows, step, fast_num, timing, ("fast_start", "fast_stop"))

    metadata = {
        "plan_name": plan,
        "plan_args": {
            "detectors": [d.name for d in detectors],
            "slow": slow.name,
            "slow_start": slow_start,
            "slow_stop": slow_stop,
            "slow_num": slow_num,
            "fast": fast.name,
            "fast_start": fast_start,
            "fast_stop": fast_stop,
            "fast_num": fast_num,
            "panda": panda.name,
            "velocity": timing.speed,
            "exposure": timing.exposure,
        },
        "detectors": [d.name for d in detectors],
        "motors": [slow.name, fast.name],
        "num_points": slow_num * fast_num,
        "shape": [slow_num, fast_num],
        "extents": [[slow_start, slow_stop], [fast_start, fast_stop]],
        "snaking": [False, True],
        "hints": {
            "dimensions": [
                ([f"{panda.name}-{slow.name}"], "primary"),
                ([f"{panda.name}-{fast.name}"], "primary"),
            ]
        },
        **(md or {}),
    }

    @bpp.stage_decorator([*detectors, panda, panda.pcomp_flyer, fast, slow])
    @bpp.run_decorator(md=metadata)
    def inner() -> MsgGenerator[None]:
        yield from _naming_failures(
            [*detectors, panda, fast, slow],
            _fly_rows(
                detectors, panda, fast, encoder, rows, fast_num, step, timing, slow, slow_positions
            ),
        )

    return (yield from _restoring_velocity(fast, inner()))


@checked
def step_scan(
    detectors: Sequence[Any],
    motor: Any,
    start: float,
    stop: float,
    num: int,
    *,
    exposure: float | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """A step scan (bluesky's ``scan``) whose detectors may write their own files: move,
    trigger each detector once (area detectors take a frame of ``exposure`` seconds), read.

    The range is checked against the motor's soft limits before anything moves.
    Returns the run's uid.
    """
    plan = "step_scan"
    standard = [d for d in detectors if isinstance(d, StandardDetector)]

    @bpp.stage_decorator([*detectors, motor])
    def inner() -> MsgGenerator[str]:
        # After staging, which forgets a detector's preparation.
        for detector in standard:
            info = TriggerInfo(livetime=exposure or 0.0)
            yield from bps.prepare(detector, info, group="prepare")
        yield from bps.wait(group="prepare")
        metadata = {"plan_name": plan, **({"exposure": exposure} if exposure else {}), **(md or {})}
        return (yield from bp.scan(list(detectors), motor, start, stop, num, md=metadata))

    return (yield from inner())
