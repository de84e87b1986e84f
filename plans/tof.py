"""Time-of-flight counting: acquisitions of an event-mode detector to a preset of seconds,
good pulses or proton charge, suspended while a chopper is out of phase."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky import Msg
from bluesky.suspenders import SuspendBoolLow
from bluesky.utils import MsgGenerator, short_uid
from ophyd_async.core import TriggerInfo

from hutch.devices.chopper import ChopperState, DiskChopper
from hutch.devices.event_detector import EventDetector, PresetMode
from hutch.suspenders import SuspenderSignal

from .checks import ScanArgumentError, checked

__all__ = ["LIVENESS_TIMEOUT", "tof_count"]

LIVENESS_TIMEOUT = 60.0
"""Seconds the detector may go without processing a pulse (counted or vetoed) before an
acquisition fails: the IOC or the source's timing is dead. Not a bound on the acquisition,
which a Pulses or Charge preset prolongs for as long as pulses are vetoed."""

# A chopper in one of these states will not lock by itself: counting would wait forever.
_NOT_LOCKING = (
    ChopperState.STOPPED,
    ChopperState.DECELERATING,
    ChopperState.PARKING,
    ChopperState.PARKED,
    ChopperState.FAULT,
)


def _preset(seconds: Any, pulses: Any, charge: Any) -> tuple[PresetMode, float]:
    given = [
        (mode, value)
        for mode, value in (
            (PresetMode.TIME, seconds),
            (PresetMode.PULSES, pulses),
            (PresetMode.CHARGE, charge),
        )
        if value is not None
    ]
    if len(given) != 1:  # the argument check says so first; a direct caller gets it here
        raise ScanArgumentError("tof_count: give exactly one of seconds, pulses or charge")
    mode, value = given[0]
    return mode, float(value)


def _lock_suspender(chopper: DiskChopper) -> SuspendBoolLow:
    return SuspendBoolLow(
        SuspenderSignal(chopper.in_phase),
        tripped_message=(
            f"{chopper.name} is out of phase: the detector vetoes its pulses; counting "
            "resumes when it locks again"
        ),
    )


def _status_done(status: Any) -> asyncio.Future:
    """A future of the RunEngine's loop done when ``status`` is (however it ends)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finished(_: Any) -> None:
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    status.add_callback(finished)
    return done


def _acquisition(detector: EventDetector, readables: Sequence[Any], rewindable: bool):
    """One acquisition and its event, never re-triggered by a suspension.

    bluesky suspends only a plan it can rewind to a checkpoint: after
    ``Msg("clear_checkpoint")`` a suspender's trip aborts the run ("No checkpoint; cannot
    suspend", ``RunEngine.request_suspend``), and with a checkpoint before the trigger
    (``count``'s way) it replays the trigger on resuming, a second acquisition. So the
    acquisition runs with the RunEngine not rewindable: a suspension then replays nothing.
    It cancels whatever the RunEngine was awaiting, though, and that message returns None
    once it resumes, as if done (a ``wait`` would lose its group): so the plan waits on the
    trigger's status itself, again after every interruption, while the acquisition goes on
    (the IOC vetoes the unlocked pulses and counts the rest to its preset). The event is
    then bundled after a checkpoint, rewindable as the RunEngine was: a suspension while
    reading replays only the reads, of counters and a file row that stay as the finished
    acquisition left them. The detector is read last: its read hands out the StreamDatum
    of the acquisition's row once (ophyd-async's data providers do), so a suspension
    landing in the milliseconds of that read or of the save would replay the event
    without it, a hazard of bluesky's rewinding any ophyd-async detector shares.
    """
    yield Msg("rewindable", None, False)
    group = short_uid("tof_count")
    status = yield from bps.trigger(detector, group=group)
    while not status.done:
        yield from bps.wait_for([lambda: _status_done(status)])
    yield from bps.wait(group)  # raises the acquisition's failure, if it failed
    yield Msg("rewindable", None, rewindable)
    yield Msg("checkpoint")
    yield from bps.create("primary")

    def read_all():
        readings: dict[str, Any] = {}
        for obj in [*readables, detector]:
            readings.update((yield from bps.read(obj)) or {})
        return readings

    def drop(error: BaseException):
        yield from bps.drop()
        raise error

    return (yield from bpp.contingency_wrapper(read_all(), except_plan=drop, else_plan=bps.save))


@checked
def tof_count(
    detector: EventDetector,
    *,
    seconds: float | None = None,
    pulses: int | None = None,
    charge: float | None = None,
    num: int = 1,
    choppers: Sequence[DiskChopper] = (),
    source: Any = None,
    md: Mapping[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Count ``num`` acquisitions of the event-mode ``detector`` in one run, each to a
    preset: ``seconds`` of wall clock, ``pulses`` good pulses or ``charge`` µC of protons on
    target (give exactly one). Each acquisition is one event: the detector's counts (pulses,
    vetoed pulses, events, monitor events, charge) and its row of the event file, with the
    ``source``'s and ``choppers``' readings when given.

    With ``choppers``, the run is suspended while one of them is out of phase and resumes
    when it locks again. The acquisition in flight is not restarted: the detector vetoes the
    pulses of an unlocked chopper (and while the beam is off) and counts them apart, so a
    pulses or charge preset still ends with its preset of good pulses (a time preset ends
    on time, with fewer). A chopper that is stopped, parked or in fault when the plan
    starts is refused (it would never lock); phase the choppers first
    (``set_wavelength_band``). Returns the run's uid.
    """
    plan = "tof_count"
    if not isinstance(detector, EventDetector):
        raise ScanArgumentError(f"{plan}: {detector!r} is not an event-mode detector")
    choppers = list(choppers)
    for chopper in choppers:
        if not isinstance(chopper, DiskChopper):
            raise ScanArgumentError(f"{plan}: {chopper!r} is not a disk chopper")
    mode, value = _preset(seconds, pulses, charge)
    readables = list(dict.fromkeys([*([source] if source is not None else []), *choppers]))
    _md: dict[str, Any] = {
        "detectors": [detector.name],
        "num_points": num,
        "num_intervals": num - 1,
        "plan_args": {
            "detector": repr(detector),
            "seconds": seconds,
            "pulses": pulses,
            "charge": charge,
            "num": num,
            "choppers": [repr(c) for c in choppers],
            "source": None if source is None else repr(source),
        },
        "plan_name": plan,
        "preset": {"mode": mode.value, "value": value},
        "hints": {},
    }
    _md.update(md or {})
    _md["hints"].setdefault("dimensions", [(("time",), "primary")])

    for chopper in choppers:
        state = yield from bps.rd(chopper.state)
        if state in _NOT_LOCKING:
            raise ScanArgumentError(
                f"{plan}: {chopper.name} is {state.value} and will not lock: phase the "
                "choppers first (set_wavelength_band)"
            )
    # A Time preset comes with the trigger's livetime; the others are set on the detector.
    if mode is not PresetMode.TIME:
        yield from bps.mv(detector.preset_mode, mode, detector.preset, value)
    info = TriggerInfo(
        livetime=value if mode is PresetMode.TIME else 0.0, exposure_timeout=LIVENESS_TIMEOUT
    )
    rewindable = yield Msg("rewindable", None, None)

    def counting():
        for _ in range(num):
            yield from _acquisition(detector, readables, rewindable)

    def staged():
        yield from bps.prepare(detector, info, wait=True)  # the event file is created here
        return (yield from bpp.run_wrapper(counting(), md=_md))

    body = bpp.stage_wrapper(staged(), [detector, *readables])
    if choppers:
        body = bpp.suspend_wrapper(body, [_lock_suspender(c) for c in choppers])
    return (yield from bpp.finalize_wrapper(body, _restore_rewindable(rewindable)))


def _restore_rewindable(rewindable: bool):
    yield Msg("rewindable", None, rewindable)
