"""A simulated ESS disk chopper: the PVs NICOS drives (``devices.chopper.DiskChopper``).

The disk is modelled by its speed and its rotation angle (turns since the TDC mark was at the
beam). The speed ramps at a fixed acceleration. At a speed commensurate with the source's
pulse rate the phase control pulls the disk's TDC delay (when the TDC mark passes the beam,
after each pulse's T0, `hutch.tof`) towards ``TotDly`` with a first-order time
constant; the lock is judged once per source pulse, as the real controller compares its
TDC timestamps with the timing system's. Pulses are computed from the wall clock, not read
from the source IOC: both follow ``tof.pulse_time``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import numpy as np
from caproto import AlarmSeverity, AlarmStatus, ChannelType, SkipWrite
from caproto.server import PVGroup, PvpropertyDouble, pvproperty

from hutch import tof

from .options import sim_options
from .pvs import enum_pv

__all__ = ["ALARMS", "COMMANDS", "STATES", "DiskChopperSim"]

log = logging.getLogger(__name__)

#: ``ChopState_R``, ``C_Execute`` and the alarm PVs: the strings of ``devices.chopper`` (not
#: imported: the simulator must start without ophyd-async), checked equal by the tests.
STATES = (
    "Stopped",
    "Accelerating",
    "Decelerating",
    "AtSpeed",
    "PhaseLocked",
    "Parking",
    "Parked",
    "Fault",
)
COMMANDS = ("Idle", "Start", "Stop", "Park", "ClearAlarms")
ALARMS = (
    "Comm_Alrm",
    "HW_Alrm",
    "IntLock_Alrm",
    "Lvl_Alrm",
    "Pos_Alrm",
    "Pwr_Alrm",
    "Ref_Alrm",
    "SW_Alrm",
    "Volt_Alrm",
)

_DEFAULTS: dict[str, Any] = {
    "pulse_rate": tof.ESS_PULSE_RATE,  # Hz: must be the source's
    "max_speed": 28.0,  # Hz
    "acceleration": 7.0,  # Hz/s (time-scaled: real choppers take minutes)
    "park_speed": 90.0,  # deg/s, turning to the park angle
    "phase_settle": 0.5,  # s, time constant of the phase control
    "jitter_ns": 20.0,  # rms of the TDC delay, per pulse
    "lock_window_ns": 200.0,  # |DiffTSSamples| below this for LOCK_PULSES pulses: locked
}

TICK = 0.05
"""Seconds between updates while the speed or the park angle changes (20 Hz)."""
LOCK_PULSES = 3
"""Consecutive pulses within the lock window that make the chopper PhaseLocked."""
KNOCK_S = 1e-4
"""How far (s of TDC delay, at most a quarter turn) ``SIM:LOCKLOSS`` knocks the phase off."""
_EPOCH_PULSES = 5040
"""The model's time origin is a pulse whose index is a multiple of this (lcm of 1..10), so a
disk at rate/m (m up to 10) turns in step with the absolute pulse numbering."""


def _wrap(x: float, period: float) -> float:
    """``x`` wrapped into [-period/2, period/2)."""
    return (x + period / 2) % period - period / 2


class _Checked(PvpropertyDouble):
    """A setpoint whose putter checks the range itself, with a message naming the limit, in
    place of caproto's generic control-limit check (the limits are still served)."""

    async def verify_value(self, value: float) -> Any:
        return await self.putter(self, value)


def _check(pv: str, value: float, low: float, high: float, units: str, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{pv} {value} is not a number")
    if value > high:
        raise ValueError(f"{pv} {value:g} {units} is above the {what} {high:g} {units}")
    if value < low:
        raise ValueError(f"{pv} {value:g} {units} is below the minimum {low:g} {units}")
    return value


def _alarm(name: str) -> Any:
    return pvproperty(
        name=name,
        value="",
        dtype=ChannelType.STRING,
        read_only=True,
        alarm_group=name,  # its own alarm: a PVGroup's PVs share one by default
        doc=f"{name}: the alarm's message, '' when clear; its severity is the alarm's",
    )


def _number(name: str, units: str, precision: int, doc: str, **kwargs: Any) -> Any:
    return pvproperty(name=name, value=0.0, units=units, precision=precision, doc=doc, **kwargs)


class DiskChopperSim(PVGroup):
    """One simulated disk chopper, ``PREFIX`` as ESS's ``...:Chop-XXX-101:``.

    Setpoints: ``Spd_S`` (Hz, 0..max_speed; re-targets a running disk), ``ChopDly-S`` (ns,
    0..1e9/pulse_rate), ``MechDly-S`` (deg), ``BeamPosDly-S`` (ns), ``Park_S`` (deg). Commands:
    ``C_Execute`` (Idle/Start/Stop/Park/ClearAlarms; a refused one fails the put) and
    ``C_Park`` (1 parks). Readbacks: ``ChopState_R``, ``Spd_R``, ``Pos_R`` (deg), ``Phs_R``
    (deg), ``DiffTSSamples`` (ns, TDC delay minus ``TotDly``), ``InPhs_R``, ``TotDly`` (ns)
    and the alarm string PVs of ``ALARMS``.

    Simulator-only controls: ``SIM:LOCKLOSS`` (s: knocks the phase off that long, then it
    re-locks) and ``SIM:FAULT`` (an alarm's name: trips it; the disk coasts down).

    For other simulators in the same process: ``speed`` (Hz), ``delay_ns`` (the TDC delay
    after the last pulse's T0), ``locked`` and ``angle`` (deg).

    ``sim`` options: ``pulse_rate, max_speed, acceleration, park_speed, phase_settle,
    jitter_ns, lock_window_ns``.
    """

    chop_state = enum_pv("ChopState_R", STATES, read_only=True, doc="What the chopper is doing")
    c_execute = enum_pv("C_Execute", COMMANDS, doc="The last command; writing one executes it")
    c_park = pvproperty(name="C_Park", value=0, doc="Writing 1 parks the disk")
    spd_s = _number("Spd_S", "Hz", 3, "Speed setpoint", dtype=_Checked)
    spd_r = _number("Spd_R", "Hz", 3, "Speed", read_only=True)
    chop_dly = _number("ChopDly-S", "ns", 1, "Chopper delay after T0", dtype=_Checked)
    mech_dly = _number("MechDly-S", "deg", 3, "Calibration: the TDC mark's offset")
    beam_pos_dly = _number("BeamPosDly-S", "ns", 1, "Calibration: the beam position's")
    tot_dly = _number("TotDly", "ns", 1, "TDC delay the phase control aims at", read_only=True)
    phs_r = _number("Phs_R", "deg", 3, "Phase: the TDC delay as a disk angle", read_only=True)
    diff_ts = _number("DiffTSSamples", "ns", 1, "TDC delay minus TotDly", read_only=True)
    in_phs_r = enum_pv("InPhs_R", ("No", "Yes"), read_only=True, doc="Phase-locked to the pulses")
    park_s = _number("Park_S", "deg", 3, "Park angle")
    pos_r = _number("Pos_R", "deg", 3, "Disk angle (resolver)", read_only=True)

    comm_alrm = _alarm("Comm_Alrm")
    hw_alrm = _alarm("HW_Alrm")
    intlock_alrm = _alarm("IntLock_Alrm")
    lvl_alrm = _alarm("Lvl_Alrm")
    pos_alrm = _alarm("Pos_Alrm")
    pwr_alrm = _alarm("Pwr_Alrm")
    ref_alrm = _alarm("Ref_Alrm")
    sw_alrm = _alarm("SW_Alrm")
    volt_alrm = _alarm("Volt_Alrm")

    sim_lockloss = _number("SIM:LOCKLOSS", "s", 2, "Simulator only: knock the phase off (s)")
    sim_fault = pvproperty(
        name="SIM:FAULT",
        value="",
        dtype=ChannelType.STRING,
        doc="Simulator only: an alarm's name trips it",
    )

    def __init__(
        self,
        prefix: str,
        *,
        sim: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, **kwargs)
        self.options = sim_options("disk chopper", prefix, sim, _DEFAULTS)
        o = self.options
        self.rate = float(o["pulse_rate"])
        for key in ("pulse_rate", "max_speed", "acceleration", "park_speed"):
            if not float(o[key]) > 0:
                raise ValueError(f"disk chopper {prefix}: sim option {key} must be > 0")
        self._rng = rng or np.random.default_rng()
        # Model time: seconds since the T0 of an epoch pulse, from time_ns (time.time()'s
        # float has 240 ns steps, the lock window's order).
        now_ns = time.time_ns()
        self._epoch_n = tof.pulse_index(now_ns * 1e-9, self.rate) // _EPOCH_PULSES
        self._epoch_n *= _EPOCH_PULSES
        self._epoch_ns = round(self._epoch_n * 10**9 / Fraction(self.rate))
        self._s = self._now()
        self._f = 0.0  # speed, Hz
        self._target = 0.0  # the speed the drive aims at, Hz
        self._turns = 0.0  # disk angle in turns, 0 = TDC mark at the beam
        self._park_pending = False  # stopping to park
        self._parking = False  # turning to the park angle
        self._parked = False
        self._fault: str | None = None
        self._knocked_until = -math.inf  # model time the SIM:LOCKLOSS knock ends
        self._good = 0  # consecutive pulses within the lock window
        self._locked = False
        self._last_pulse = self._pulse_at(self._s)
        self._sample_ns = math.nan  # TDC delay after the last pulse's T0 (with jitter)
        self._error_ns = 0.0
        self._wake = asyncio.Event()

    # -- for other simulators of the process ------------------------------------------------

    @property
    def speed(self) -> float:
        """The disk's actual speed (Hz)."""
        return self._f

    @property
    def delay_ns(self) -> float:
        """The disk's actual TDC delay (ns, jitter included) as last measured: the TDC mark
        passes the beam at ``T0(n) + delay + k / speed`` (k whole; at rate/m, n a multiple of
        m; at a speed not commensurate, n the last pulse). NaN while the disk stands still."""
        return self._sample_ns

    @property
    def locked(self) -> bool:
        """True while the disk is phase-locked to the source's pulses."""
        return self._locked

    @property
    def angle(self) -> float:
        """The disk's angle (deg, ``Pos_R``): 0 with the TDC mark at the beam."""
        return self._turns * 360.0

    # -- the model --------------------------------------------------------------------------

    def _now(self) -> float:
        return (time.time_ns() - self._epoch_ns) * 1e-9

    def _pulse_at(self, s: float) -> int:
        return self._epoch_n + math.floor(s * self.rate)

    def _pulse_local(self, n: int) -> float:
        return (n - self._epoch_n) / self.rate

    @property
    def target_delay_ns(self) -> float:
        """``TotDly``: the chopper delay plus the calibrations, the mechanical one turned
        into time at the speed setpoint."""
        speed = float(self.spd_s.value)
        mech = tof.delay_from_phase(float(self.mech_dly.value), speed) if speed > 0 else 0.0
        return float(self.chop_dly.value) + float(self.beam_pos_dly.value) + mech

    def _tdc_delay(self) -> float:
        """The TDC delay (s, within one turn) of the disk as it turns now, in model time."""
        return (self._s - self._turns / self._f) % (1.0 / self._f)

    def _controlling(self) -> bool:
        f = self._f
        return (
            f > 0
            and f == self._target
            and self._fault is None
            and self._s >= self._knocked_until
            and tof.speed_is_commensurate(f, self.rate)
        )

    def _advance(self, s: float) -> None:
        """Bring the disk to model time ``s``: speed ramp, angle, parking, phase control."""
        dt = s - self._s
        if dt <= 0:
            return
        f0, target, accel = self._f, self._target, float(self.options["acceleration"])
        if f0 != target:
            ramp = min(dt, abs(target - f0) / accel)
            f1 = target if ramp < dt else f0 + math.copysign(accel * ramp, target - f0)
            turns = (f0 + f1) / 2 * ramp + f1 * (dt - ramp)
        else:
            f1, turns = f0, f0 * dt
        self._f, self._s = max(f1, 0.0), s
        self._turns = (self._turns + turns) % 1.0
        if self._f == 0 and self._park_pending:
            self._park_pending, self._parking = False, True
        if self._f == 0 and self._parking:
            self._turn_to_park(dt)
        if self._controlling():
            period = 1.0 / self._f
            aim = (self.target_delay_ns * 1e-9) % period
            error = _wrap(self._tdc_delay() - aim, period)
            error *= math.exp(-dt / float(self.options["phase_settle"]))
            self._turns = ((s - (aim + error)) * self._f) % 1.0

    def _turn_to_park(self, dt: float) -> None:
        goal = (float(self.park_s.value) / 360.0) % 1.0
        left = _wrap(goal - self._turns, 1.0)
        step = float(self.options["park_speed"]) / 360.0 * dt
        if abs(left) <= step:
            self._turns, self._parking, self._parked = goal, False, True
        else:
            self._turns = (self._turns + math.copysign(step, left)) % 1.0

    def _sample(self, n: int) -> None:
        """The controller's TDC timestamp for pulse ``n``: delay, error, lock."""
        f = self._f
        if f <= 0:
            self._sample_ns, self._error_ns = math.nan, 0.0
            self._lose_lock()
            return
        commensurate = tof.speed_is_commensurate(f, self.rate)
        period_ns = 1e9 / f
        # A commensurate disk turns in step with the pulses: its delay is the same after each
        # (T0 is a whole number of turns from the epoch); any other drifts pulse by pulse.
        reference = 0.0 if commensurate else self._pulse_local(n)
        jitter = float(self.options["jitter_ns"]) * self._rng.standard_normal()
        delay = (((self._tdc_delay() - reference) % (1.0 / f)) * 1e9 + jitter) % period_ns
        self._sample_ns = delay
        self._error_ns = _wrap(delay - self.target_delay_ns % period_ns, period_ns)
        if self._controlling() and abs(self._error_ns) < float(self.options["lock_window_ns"]):
            self._good += 1
        else:
            self._good = 0
        self._locked = self._good >= LOCK_PULSES

    def _lose_lock(self) -> None:
        self._good, self._locked = 0, False

    def _state(self) -> str:
        if self._fault is not None:
            return "Fault"
        if self._f != self._target:
            return "Accelerating" if self._target > self._f else "Decelerating"
        if self._f == 0:
            if self._parking or self._park_pending:
                return "Parking"
            return "Parked" if self._parked else "Stopped"
        return "PhaseLocked" if self._locked else "AtSpeed"

    def _moving(self) -> bool:
        return self._f != self._target or self._parking or self._park_pending

    # -- publishing ---------------------------------------------------------------------------

    @staticmethod
    async def _put(prop: Any, value: Any) -> None:
        if prop.value != value:
            await prop.write(value, verify_value=False)

    async def _publish(self, sampled: bool = False) -> None:
        await self._put(self.spd_r, self._f)
        await self._put(self.pos_r, self.angle)
        if sampled or self._f == 0:
            stopped = math.isnan(self._sample_ns)
            phase = 0.0 if stopped else tof.phase_from_delay(self._sample_ns, self._f)
            await self._put(self.diff_ts, self._error_ns)
            await self._put(self.phs_r, phase)
        await self._put(self.in_phs_r, "Yes" if self._locked else "No")
        await self._put(self.chop_state, self._state())

    async def _publish_total_delay(self) -> None:
        await self._put(self.tot_dly, self.target_delay_ns)

    async def _changed(self) -> None:
        """After a command or setpoint: publish at once, and let the loop re-plan its sleep."""
        await self._publish()
        self._wake.set()

    # -- the run loop -----------------------------------------------------------------------

    @chop_state.startup
    async def chop_state(self, instance: Any, async_lib: Any) -> None:
        o = self.options
        limits = {"lower_ctrl_limit": 0.0, "lower_disp_limit": 0.0}
        top = float(o["max_speed"])
        await self.spd_s.write_metadata(upper_ctrl_limit=top, upper_disp_limit=top, **limits)
        top = 1e9 / self.rate
        await self.chop_dly.write_metadata(upper_ctrl_limit=top, upper_disp_limit=top, **limits)
        await self._publish_total_delay()
        self._s = self._now()
        self._last_pulse = self._pulse_at(self._s)
        await self._publish()
        while True:
            wait = self._pulse_local(self._last_pulse + 1) - self._now() + 1e-4
            if self._moving():
                wait = min(wait, TICK)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.0))
            try:
                await self._step()
            except Exception:
                log.exception("disk chopper %s: simulation step failed", self.prefix)

    async def _step(self) -> None:
        self._advance(self._now())
        latest = self._pulse_at(self._s)
        # Judge every pulse passed (a late loop skips none; a very late one, only the last few).
        first = max(self._last_pulse + 1, latest - LOCK_PULSES + 1)
        for n in range(first, latest + 1):
            self._sample(n)
        sampled = latest > self._last_pulse
        self._last_pulse = max(self._last_pulse, latest)
        await self._publish(sampled)

    # -- commands and setpoints ---------------------------------------------------------------

    async def execute(self, command: str) -> None:
        """Execute ``command`` (one of ``COMMANDS``); a refusal raises ValueError."""
        self._advance(self._now())
        if command == "Start":
            if self._fault is not None:
                raise ValueError(f"Start refused: chopper in Fault ({self._fault}); ClearAlarms")
            speed = float(self.spd_s.value)
            if speed <= 0:
                raise ValueError("Start refused: Spd_S is 0 Hz")
            self._park_pending = self._parking = self._parked = False
            self._retarget(speed)
        elif command == "Stop":
            self._park_pending = self._parking = self._parked = False
            self._retarget(0.0)
        elif command == "Park":
            if self._fault is not None:
                raise ValueError(f"Park refused: chopper in Fault ({self._fault}); ClearAlarms")
            self._parked = False
            if self._f > 0 or self._target > 0:
                self._park_pending, self._parking = True, False
                self._retarget(0.0)
            else:
                self._parking = True
        elif command == "ClearAlarms":
            self._fault = None
            for name in ALARMS:
                await getattr(self, name.lower()).write(
                    "", status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM
                )
        elif command != "Idle":
            raise ValueError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
        await self._changed()

    def _retarget(self, speed: float) -> None:
        if speed != self._target:
            self._lose_lock()
        self._target = speed

    @c_execute.putter
    async def c_execute(self, instance: Any, value: str) -> str:
        await self.execute(value)
        return value

    @c_park.putter
    async def c_park(self, instance: Any, value: int) -> int:
        if value:
            await self.execute("Park")
            await self.c_execute.write("Park", verify_value=False)
        return 0

    @spd_s.putter
    async def spd_s(self, instance: Any, value: float) -> float:
        top = float(self.options["max_speed"])
        value = _check("Spd_S", float(value), 0.0, top, "Hz", "maximum speed (max_speed)")
        self._advance(self._now())
        await instance.write(value, verify_value=False)
        await self._publish_total_delay()  # the mechanical delay is an angle: its time changes
        running = self._target > 0 and self._fault is None
        if running:
            self._retarget(value)
        await self._changed()
        raise SkipWrite

    async def _delay_changed(self, instance: Any, value: float) -> None:
        self._advance(self._now())
        await instance.write(value, verify_value=False)
        await self._publish_total_delay()
        self._lose_lock()
        await self._changed()
        raise SkipWrite

    @chop_dly.putter
    async def chop_dly(self, instance: Any, value: float) -> None:
        top = 1e9 / self.rate
        value = _check("ChopDly-S", float(value), 0.0, top, "ns", "pulse period")
        await self._delay_changed(instance, value)

    @mech_dly.putter
    async def mech_dly(self, instance: Any, value: float) -> None:
        await self._delay_changed(instance, float(value))

    @beam_pos_dly.putter
    async def beam_pos_dly(self, instance: Any, value: float) -> None:
        await self._delay_changed(instance, float(value))

    @sim_lockloss.putter
    async def sim_lockloss(self, instance: Any, value: float) -> float:
        self._advance(self._now())
        self._knocked_until = self._s + max(float(value), 0.0)
        if value > 0 and self._f > 0:
            period = 1.0 / self._f
            self._turns = (self._turns - min(KNOCK_S, period / 4) * self._f) % 1.0
            self._lose_lock()
        await self._changed()
        return value

    async def trip(self, alarm: str, message: str = "simulated fault") -> None:
        """Trip ``alarm`` (one of ``ALARMS``): MAJOR severity, state Fault, the disk coasts."""
        if alarm not in ALARMS:
            raise ValueError(f"unknown alarm {alarm!r}; known: {', '.join(ALARMS)}")
        self._advance(self._now())
        self._fault = alarm
        self._park_pending = self._parking = False
        self._retarget(0.0)
        self._lose_lock()
        await getattr(self, alarm.lower()).write(
            message[:39], status=AlarmStatus.STATE, severity=AlarmSeverity.MAJOR_ALARM
        )
        await self._changed()

    @sim_fault.putter
    async def sim_fault(self, instance: Any, value: str) -> str:
        if value.strip():
            await self.trip(value.strip())
        return value
