"""A simulated EPICS motor record, good enough for ophyd-async's ``Motor`` and ophyd's
``EpicsMotor``.

Built on caproto's motor-record field definitions (``record='motor'``), with the behaviour
of the real record where clients depend on it: moves take real time at ``.VELO``, the
put-callback on ``.VAL`` completes only when the motion is over (``.DMOV`` back to 1), soft
limits refuse a move with ``.LVIO``, ``.STOP``/``.SPMG`` stop it, and Set mode redefines the
position through ``.OFF``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from caproto import SkipWrite
from caproto.server import PVGroup, PvpropertyDouble, pvproperty
from caproto.server.records import MotorFields

from .options import sim_options

__all__ = ["MotorRecord"]

TICK = 0.05
"""Seconds between readback updates during a move (20 Hz)."""

_INT32 = 2**31 - 1

# MSTA bits (motor.h)
_MSTA_DIRECTION = 1 << 0
_MSTA_DONE = 1 << 1
_MSTA_HOME = 1 << 3
_MSTA_POSITION = 1 << 5
_MSTA_PRESENT = 1 << 8
_MSTA_MOVING = 1 << 10
_MSTA_HOMED = 1 << 14

_DEFAULTS: dict[str, Any] = {
    "egu": "mm",
    "position": 0.0,
    "velocity": 1.0,
    "max_velocity": None,  # defaults to velocity
    "acceleration": 0.2,
    "low_limit": -100.0,
    "high_limit": 100.0,
    "resolution": 1e-4,
    "precision": 4,
}


class _MotorValue(PvpropertyDouble):
    """``.VAL`` of a motor record.

    The record reports its soft limits as control limits (ophyd reads them), yet an
    out-of-range put must reach the record so it can refuse it with ``.LVIO`` like the real
    one, rather than fail in caproto's control-limit check.
    """

    async def verify_value(self, value: float) -> Any:
        return await self.putter(self, value)


def _travel(velocity: float, accel: float, cruise: float, dt: float) -> float:
    """Signed distance covered in ``dt`` from ``velocity`` under ``accel`` (same sign, or 0)
    until the speed reaches ``cruise``, then at ``cruise``."""
    if accel == 0 or abs(velocity) >= cruise:
        return velocity * dt
    ramp = min(dt, (cruise - abs(velocity)) / abs(accel))
    return velocity * ramp + 0.5 * accel * ramp**2 + math.copysign(cruise, accel) * (dt - ramp)


def _raw(value: float, resolution: float) -> int:
    steps = round(value / resolution) if resolution else 0
    return max(-_INT32, min(_INT32, steps))


class MotorRecord(PVGroup):
    """One simulated motor record, ``PREFIX`` and ``PREFIX.FIELD`` (all motor-record fields).

    ``sim`` holds the profile's simulation options: ``egu, position, velocity, max_velocity,
    acceleration, low_limit, high_limit, resolution, precision``. ``position`` is the live
    user position, for the physics model.
    """

    motor = pvproperty(value=0.0, name="", record="motor", dtype=_MotorValue, precision=4)

    def __init__(self, prefix: str, *, sim: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(prefix, **kwargs)
        self.options = sim_options("motor", prefix, sim, _DEFAULTS)
        if self.options["max_velocity"] is None:
            self.options["max_velocity"] = self.options["velocity"]
        self._dial = float(self.options["position"])
        self._target = self._dial  # dial target of the current (or last) move
        self._motion: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._pause_after_move = False
        self._homed = False
        self._last_positive = True
        # The motion since the last _dial update, for position_at between the 20 Hz readback
        # ticks: its wall-clock time (time.time()), signed dial velocity and acceleration
        # (0 at cruise), and the cruise speed the acceleration stops at.
        self._dial_time = time.time()
        self._dial_velocity = 0.0
        self._dial_accel = 0.0
        self._cruise = 0.0

    # -- conversions ----------------------------------------------------------------------

    @property
    def fields(self) -> MotorFields:
        """The record's fields (caproto's ``MotorFields`` instance)."""
        return self.motor.field_inst

    def _sign(self) -> int:
        return -1 if self.fields.user_direction.value == "Neg" else 1

    def _user(self, dial: float) -> float:
        return self._sign() * dial + self.fields.user_offset.value

    def _dial_of(self, user: float) -> float:
        return (user - self.fields.user_offset.value) * self._sign()

    @property
    def position(self) -> float:
        """The motor's live user position (the ``.RBV`` it serves)."""
        return self._user(self._dial)

    @property
    def moving(self) -> bool:
        """True while the motor is in motion."""
        return self._motion is not None and not self._motion.done()

    @property
    def resolution(self) -> float:
        """The motor resolution (``.MRES``, EGU per step): one encoder count of the motor."""
        # Before the record's startup MRES is still caproto's default (0): use the option.
        return self.fields.motor_step_size.value or float(self.options["resolution"])

    def position_at(self, t: float) -> float:
        """The user position at wall-clock time ``t`` (``time.time()`` base).

        Extrapolated from the last readback update with the current velocity: exact while the
        motor moves at constant velocity, never past the target of the move, and the standing
        position when the motor is not moving. Lets an encoder (the PandA simulator) see the
        motor between the 20 Hz readback ticks.
        """
        if not self.moving:
            return self._user(self._dial)
        dial = self._dial + _travel(
            self._dial_velocity, self._dial_accel, self._cruise, max(t - self._dial_time, 0.0)
        )
        if (self._target - self._dial) * (self._target - dial) < 0:  # would pass the target
            dial = self._target
        return self._user(dial)

    # -- publishing -----------------------------------------------------------------------

    @staticmethod
    async def _put(prop: Any, value: Any) -> None:
        # Server-side update: skip the field's own putter (the record logic lives here).
        await prop.write(value, verify_value=False)

    async def _publish_setpoint(self) -> None:
        f = self.fields
        mres = f.motor_step_size.value
        await self._put(self.motor, self._user(self._target))
        await self._put(f.dial_desired_value, self._target)
        await self._put(f.raw_desired_value, _raw(self._target, mres))
        await self._put(f.difference_dval_drbv, self._target - self._dial)

    async def _publish_readback(self) -> None:
        f = self.fields
        mres = f.motor_step_size.value
        raw = _raw(self._dial, mres)
        await self._put(f.user_readback_value, self._user(self._dial))
        await self._put(f.dial_readback_value, self._dial)
        await self._put(f.raw_readback_value, raw)
        await self._put(f.raw_motor_position, raw)
        await self._put(f.raw_encoder_position, raw)
        await self._put(f.difference_dval_drbv, self._target - self._dial)

    async def _publish_status(self) -> None:
        f = self.fields
        moving = self.moving
        at_home = abs(self._dial) < f.motor_step_size.value / 2
        msta = _MSTA_POSITION | _MSTA_PRESENT
        msta |= _MSTA_DIRECTION if self._last_positive else 0
        msta |= _MSTA_MOVING if moving else _MSTA_DONE
        msta |= _MSTA_HOME if at_home else 0
        msta |= _MSTA_HOMED if self._homed else 0
        await self._put(f.motor_status, msta)
        await self._put(f.direction_of_travel, int(self._last_positive))
        await self._put(f.at_home, int(at_home))

    async def _publish_limits(self) -> None:
        """HLM/LLM from DHLM/DLLM (via OFF and DIR), and VAL's control limits from them."""
        f = self.fields
        a = self._user(f.dial_high_limit.value)
        b = self._user(f.dial_low_limit.value)
        high, low = max(a, b), min(a, b)
        await self._put(f.user_high_limit, high)
        await self._put(f.user_low_limit, low)
        await self.motor.write_metadata(upper_ctrl_limit=high, lower_ctrl_limit=low)

    async def _publish_all(self) -> None:
        await self._publish_limits()
        await self._publish_setpoint()
        await self._publish_readback()
        await self._publish_status()

    # -- motion ---------------------------------------------------------------------------

    def _within_limits(self, dial: float) -> bool:
        f = self.fields
        high, low = f.dial_high_limit.value, f.dial_low_limit.value
        if high == 0 and low == 0:  # the record's "no soft limits"
            return True
        return low <= dial <= high

    def _speed(self) -> float:
        """Move speed: VELO, or (VELO 0) VBAS, else VMAX, else instantaneous."""
        f = self.fields
        for speed in (f.velocity.value, f.base_velocity.value, f.max_velocity.value):
            if speed > 0:
                return speed
        return math.inf

    async def move_dial(self, dial: float) -> asyncio.Future[None] | None:
        """Start, or retarget, a move to ``dial``; the record's response to a new target.

        Returns a future that resolves when the motor stops, or None when the record does not
        move: target outside the soft limits (LVIO=1, setpoint restored), or SPMG Stop/Pause.
        """
        f = self.fields
        if not self._within_limits(dial):
            await self._put(f.limit_violation, 1)
            await self._publish_setpoint()  # restores VAL/DVAL to the previous target
            return None
        await self._put(f.limit_violation, 0)
        self._target = dial
        await self._publish_setpoint()
        if f.stop_pause_move_go.value in ("Stop", "Pause"):
            return None
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if not self.moving:
            # Even a null move pulses DMOV 0 -> 1: ophyd's EpicsMotor waits for that.
            self._last_positive = dial >= self._dial
            await self._put(f.done_moving_to_value, 0)
            await self._put(f.motor_is_moving, 1)
            self._motion = asyncio.create_task(self._run_motion())
            await self._publish_status()
        return waiter

    async def move_user(self, user: float) -> asyncio.Future[None] | None:
        """Like :meth:`move_dial`, to a user position."""
        return await self.move_dial(self._dial_of(user))

    async def _run_motion(self) -> None:
        """Trapezoidal motion at the record's speed with ACCL ramps, in real time.

        The readback moves in 20 Hz ticks, by the exact distance of a constant acceleration
        up to the speed (so position_at is exact through the run-up of a fly scan); the
        deceleration at the end is approximated tick by tick.
        """
        velocity = 0.0  # speed, unsigned
        last = time.monotonic()
        self._set_motion(time.time(), 0.0, 0.0)
        while (remaining := self._target - self._dial) != 0:
            speed = self._speed()
            if math.isinf(speed):  # no velocity configured at all: arrive at once
                self._dial = self._target
                self._set_motion(time.time(), 0.0, 0.0)
                break
            accl = self.fields.seconds_to_velocity.value
            accel = speed / accl if accl > 0 and math.isfinite(speed) else math.inf
            sign = math.copysign(1.0, remaining)
            if velocity < speed and math.isfinite(accel):  # accelerating from here
                self._set_motion(self._dial_time, sign * velocity, sign * accel, speed)
            # Update the readback every TICK, but never sleep past the arrival: a short move
            # at high speed completes in its own time, not a whole tick.
            arrival = abs(remaining) / speed + (accl if math.isfinite(accel) else 0.0)
            await asyncio.sleep(min(TICK, arrival))
            now = time.monotonic()
            wall = time.time()  # the wall-clock time of this update, for position_at
            dt, last = now - last, now
            remaining = self._target - self._dial  # a retarget may have come in meanwhile
            if remaining == 0:
                break
            wanted = min(speed, math.sqrt(2 * accel * abs(remaining)))
            if velocity < wanted and math.isfinite(accel):
                step = abs(_travel(velocity, accel, wanted, dt))
                velocity = min(wanted, velocity + accel * dt)
            else:
                velocity = wanted
                step = velocity * dt
            if step >= abs(remaining):
                self._dial = self._target
                self._set_motion(wall, 0.0, 0.0)
                break
            self._dial += math.copysign(step, remaining)
            self._set_motion(wall, math.copysign(velocity, remaining), 0.0)
            self._last_positive = remaining > 0
            await self._publish_readback()
        await self._finish_motion()

    def _set_motion(
        self, wall: float, velocity: float, accel: float, cruise: float | None = None
    ) -> None:
        self._dial_time, self._dial_velocity, self._dial_accel = wall, velocity, accel
        self._cruise = abs(velocity) if cruise is None else cruise

    async def _finish_motion(self) -> None:
        f = self.fields
        self._motion = None
        await self._publish_readback()
        await self._put(f.motor_is_moving, 0)
        await self._put(f.done_moving_to_value, 1)
        await self._publish_status()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._pause_after_move:
            self._pause_after_move = False
            await self._put(f.stop_pause_move_go, "Pause")

    async def stop(self, keep_target: bool = False) -> None:
        """Stop where the motor is; VAL := RBV unless ``keep_target`` (SPMG Pause)."""
        motion = self._motion
        if motion is None or motion.done():
            if not keep_target and self._target != self._dial:
                self._target = self._dial
                await self._publish_setpoint()
            return
        motion.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await motion
        if not keep_target:
            self._target = self._dial
            await self._publish_setpoint()
        await self._finish_motion()

    @staticmethod
    async def _wait(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None:
            await waiter

    # -- startup --------------------------------------------------------------------------

    @motor.startup
    async def motor(self, instance: Any, async_lib: Any) -> None:
        o = self.options
        f = self.fields
        resolution = float(o["resolution"])
        precision = int(o["precision"])
        # Every float field of the record shows the record's precision (PREC).
        for prop in (instance, *f.pvdb.values()):
            if hasattr(prop, "precision"):
                await prop.write_metadata(precision=precision)
        # Units as the motor record gives them: positions in EGU, speeds in EGU/s, ACCL in s.
        egu = o["egu"]
        units = {
            egu: (
                instance,
                f.user_readback_value,
                f.dial_desired_value,
                f.dial_readback_value,
                f.user_high_limit,
                f.user_low_limit,
                f.dial_high_limit,
                f.dial_low_limit,
                f.user_offset,
                f.retry_deadband,
                f.motor_step_size,
                f.encoder_step_size,
            ),
            f"{egu}/s": (f.velocity, f.max_velocity, f.base_velocity, f.jog_velocity),
            "s": (f.seconds_to_velocity,),
        }
        for unit, props in units.items():
            for prop in props:
                await prop.write_metadata(units=unit)
        velocity, vmax = float(o["velocity"]), float(o["max_velocity"])
        srev = f.steps_per_revolution.value or 200
        settings = {
            f.engineering_units: o["egu"],
            f.motor_step_size: resolution,
            f.encoder_step_size: resolution,
            f.readback_step_size: 1.0,
            f.retry_deadband: resolution,
            f.egu_s_per_revolution: resolution * srev,
            f.max_velocity: vmax,
            f.velocity: min(velocity, vmax) if vmax > 0 else velocity,
            f.base_velocity: 0.0,
            f.speed: velocity / (resolution * srev),
            f.max_speed: vmax / (resolution * srev),
            f.home_velocity: velocity,
            f.jog_velocity: velocity,
            f.seconds_to_velocity: float(o["acceleration"]),
            f.tweak_step_size: 10 ** -max(precision - 2, 0),
            f.dial_high_limit: float(o["high_limit"]),
            f.dial_low_limit: float(o["low_limit"]),
            f.user_offset: 0.0,
            # caproto leaves these enums as bare indices; the record logic compares strings.
            f.user_direction: "Pos",
            f.offset_freeze_switch: "Variable",
            f.set_use_switch: "Use",
            f.stop_pause_move_go: "Go",
            f.output_specification: "@sim hutch",
            f.done_moving_to_value: 1,
            f.motor_is_moving: 0,
            f.limit_violation: 0,
            f.user_high_limit_switch: 0,
            f.user_low_limit_switch: 0,
            f.undefined: b"\x00",
        }
        for prop, value in settings.items():
            await self._put(prop, value)
        await self._publish_all()

    # -- the record's reactions to puts ---------------------------------------------------

    @motor.putter
    async def motor(self, instance: Any, value: float) -> None:
        if self.fields.set_use_switch.value == "Set":
            await self._redefine(value)
        else:
            await self._wait(await self.move_user(value))
        raise SkipWrite  # VAL was already published (or restored) by the record logic

    async def _redefine(self, user: float) -> None:
        """Set mode: make the readback read ``user`` without moving."""
        f = self.fields
        if f.offset_freeze_switch.value == "Variable":
            await self._put(f.user_offset, user - self._sign() * self._dial)
        else:  # Frozen offset: redefine the dial (controller) position instead
            self._dial = self._dial_of(user)
        self._target = self._dial
        await self._publish_all()

    @motor.fields.dial_desired_value.putter
    async def motor(fields: MotorFields, instance: Any, value: float) -> None:
        group: MotorRecord = fields.parent.group
        if fields.set_use_switch.value == "Set":
            await group._redefine(group._user(value))
        else:
            await group._wait(await group.move_dial(value))
        raise SkipWrite

    @motor.fields.raw_desired_value.putter
    async def motor(fields: MotorFields, instance: Any, value: int) -> None:
        group: MotorRecord = fields.parent.group
        await group._wait(await group.move_dial(value * fields.motor_step_size.value))
        raise SkipWrite

    @motor.fields.relative_value.putter
    async def motor(fields: MotorFields, instance: Any, value: float) -> None:
        group: MotorRecord = fields.parent.group
        waiter = await group.move_user(group._user(group._target) + value)
        await instance.write(0.0, verify_value=False)
        await group._wait(waiter)
        raise SkipWrite

    async def _tweak(self, instance: Any, value: int, sign: int) -> None:
        if value:
            step = sign * self.fields.tweak_step_size.value
            waiter = await self.move_user(self._user(self._target) + step)
            await self._wait(waiter)
        await instance.write(0, verify_value=False)
        raise SkipWrite

    @motor.fields.tweak_motor_forward.putter
    async def motor(fields: MotorFields, instance: Any, value: int) -> None:
        await fields.parent.group._tweak(instance, value, +1)

    @motor.fields.tweak_motor_reverse.putter
    async def motor(fields: MotorFields, instance: Any, value: int) -> None:
        await fields.parent.group._tweak(instance, value, -1)

    async def _home(self, instance: Any, value: int) -> None:
        # The simulated home switch sits at dial 0.
        if value:
            await instance.write(1, verify_value=False)
            waiter = await self.move_dial(0.0)
            await self._wait(waiter)
            self._homed = waiter is not None
            await self._publish_status()
        await instance.write(0, verify_value=False)
        raise SkipWrite

    @motor.fields.home_forward.putter
    async def motor(fields: MotorFields, instance: Any, value: int) -> None:
        await fields.parent.group._home(instance, value)

    @motor.fields.home_reverse.putter
    async def motor(fields: MotorFields, instance: Any, value: int) -> None:
        await fields.parent.group._home(instance, value)

    @motor.fields.stop.putter
    async def motor(fields: MotorFields, instance: Any, value: int) -> None:
        if value:
            await fields.parent.group.stop()
        await instance.write(0, verify_value=False)
        raise SkipWrite

    @motor.fields.stop_pause_move_go.putter
    async def motor(fields: MotorFields, instance: Any, value: str) -> None:
        group: MotorRecord = fields.parent.group
        await instance.write(value, verify_value=False)
        if value in ("Stop", "Pause"):
            await group.stop(keep_target=value == "Pause")
        else:  # Go, or Move (one move, then back to Pause)
            group._pause_after_move = value == "Move"
            if group._target != group._dial and not group.moving:
                await group.move_dial(group._target)
        raise SkipWrite

    @motor.fields.user_offset.putter
    async def motor(fields: MotorFields, instance: Any, value: float) -> None:
        group: MotorRecord = fields.parent.group
        await group._store(instance, value, group._publish_all)

    @motor.fields.user_direction.putter
    async def motor(fields: MotorFields, instance: Any, value: str) -> None:
        group: MotorRecord = fields.parent.group
        await group._store(instance, value, group._publish_all)

    async def _store(
        self, instance: Any, value: Any, publish: Callable[[], Awaitable[None]]
    ) -> None:
        """Keep a written field, re-derive the fields that depend on it, skip caproto's write."""
        await instance.write(value, verify_value=False)
        await publish()
        raise SkipWrite

    async def _user_limit(self, instance: Any, value: float, high: bool) -> None:
        f = self.fields
        dial = self._dial_of(value)
        # With DIR=Neg the user high limit is the dial low limit.
        dial_field = f.dial_high_limit if high == (self._sign() > 0) else f.dial_low_limit
        await self._put(dial_field, dial)
        await self._publish_limits()
        raise SkipWrite

    @motor.fields.user_high_limit.putter
    async def motor(fields: MotorFields, instance: Any, value: float) -> None:
        await fields.parent.group._user_limit(instance, value, high=True)

    @motor.fields.user_low_limit.putter
    async def motor(fields: MotorFields, instance: Any, value: float) -> None:
        await fields.parent.group._user_limit(instance, value, high=False)

    @motor.fields.dial_high_limit.putter
    async def motor(fields: MotorFields, instance: Any, value: float) -> None:
        group: MotorRecord = fields.parent.group
        await group._store(instance, value, group._publish_limits)

    @motor.fields.dial_low_limit.putter
    async def motor(fields: MotorFields, instance: Any, value: float) -> None:
        group: MotorRecord = fields.parent.group
        await group._store(instance, value, group._publish_limits)

    @motor.fields.velocity.putter
    async def motor(fields: MotorFields, instance: Any, value: float) -> float:
        # The record's range check: VBAS <= VELO <= VMAX (when VMAX > 0).
        vmax, vbas = fields.max_velocity.value, fields.base_velocity.value
        if vmax > 0:
            value = min(value, vmax)
        value = max(value, vbas)
        urev = fields.egu_s_per_revolution.value
        if urev:
            await fields.speed.write(value / urev, verify_value=False)
        return value

    @motor.fields.max_velocity.putter
    async def motor(fields: MotorFields, instance: Any, value: float) -> float:
        if value > 0 and fields.velocity.value > value:
            await fields.velocity.write(value, verify_value=False)
        return value
