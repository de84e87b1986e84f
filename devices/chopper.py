"""A neutron disk chopper as ESS exposes it over EPICS (the PVs NICOS drives)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from bluesky.protocols import Movable
from ophyd_async.core import (
    Array1D,
    AsyncStatus,
    DeviceVector,
    StandardReadable,
    StrictEnum,
    soft_signal_r_and_setter,
    wait_for_value,
)
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw, epics_signal_w

from hutch.errors import HutchError, Refusal
from hutch.tof import ESS_PULSE_RATE, speed_is_commensurate

__all__ = [
    "ALARMS",
    "LOCK_TIMEOUT",
    "ChopperCommand",
    "ChopperError",
    "ChopperRefusal",
    "ChopperSetpoint",
    "ChopperState",
    "DiskChopper",
]

#: Seconds a chopper may take to reach its speed and lock (real ones take minutes).
LOCK_TIMEOUT = 300.0

#: The chopper's alarm PVs (string records whose severity is the alarm's), as ESS names them.
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


class ChopperState(StrictEnum):
    """``ChopState_R``: what the chopper is doing."""

    STOPPED = "Stopped"
    ACCELERATING = "Accelerating"
    DECELERATING = "Decelerating"
    AT_SPEED = "AtSpeed"
    PHASE_LOCKED = "PhaseLocked"
    PARKING = "Parking"
    PARKED = "Parked"
    FAULT = "Fault"


class ChopperCommand(StrictEnum):
    """``C_Execute``: the command last given (writing one executes it)."""

    IDLE = "Idle"
    START = "Start"
    STOP = "Stop"
    PARK = "Park"
    CLEAR_ALARMS = "ClearAlarms"


@dataclass(frozen=True)
class ChopperSetpoint:
    """Where to take a chopper: ``speed`` (Hz) and the total delay of its TDC mark after
    each source pulse (ns, ``TotDly``; None keeps the present delay). The chopper writes
    the delay setpoint ``ChopDly-S`` that gives it with its calibration offsets
    (``BeamPosDly-S``, ``MechDly-S``)."""

    speed: float
    delay: float | None = None


class ChopperError(HutchError, RuntimeError):
    """A chopper did not get where it was sent (a fault, no lock in time); the message names
    the chopper, its state and its alarms."""


class ChopperRefusal(Refusal):
    """A chopper setting refused before anything was written: the message names the
    chopper and the limit (a speed beyond the drive's, a slit too narrow for a band)."""


class DiskChopper(StandardReadable, Movable[float | ChopperSetpoint]):
    """A disk chopper (``PREFIX`` as ESS's ``...:Chop-XXX-101:``): speed and delay
    setpoints, state, phase lock, park angle and alarms, as NICOS drives an ESS chopper.

    ``set(14.0)`` (or ``bps.mv(chopper, 14.0)``) spins it to 14 Hz and completes once it is
    phase-locked to the source; ``set(ChopperSetpoint(14.0, delay=...))`` sets the delay
    too; ``set(0)`` brakes it to a stop and ``park(angle)`` parks the disk. A speed beyond
    the IOC's drive limits, or not an integer multiple or fraction of the source's
    ``pulse_rate`` (a chopper cannot lock otherwise), is refused before anything is
    written. It is not Stoppable, as NICOS's ESS choppers are not: the RunEngine stops
    what a plan moved when the plan ends or is aborted, and a chopper takes minutes to
    spin up again.

    Its geometry comes from the profile (``options``), for NeXus (NXdisk_chopper) and the
    band calculations: ``distance`` from the source (m), ``slit_edges`` (degrees from the
    TDC mark, ``[[begin, end], ...]``), ``radius`` and ``slit_height`` (m), and ``speed``,
    the speed (Hz) it runs at in the instrument's configuration (`set_wavelength_band`
    spins it to that unless told otherwise).
    """

    def __init__(
        self,
        prefix: str,
        name: str = "",
        *,
        distance: float,
        slit_edges: Sequence[Sequence[float]],
        radius: float = 0.35,
        slit_height: float = 0.1,
        speed: float | None = None,
        pulse_rate: float = ESS_PULSE_RATE,
    ) -> None:
        self.slit_edges = [(float(b), float(e)) for b, e in slit_edges]
        for begin, end in self.slit_edges:
            if not 0 <= begin < end <= 360 + begin:
                raise ValueError(f"slit_edges: [{begin:g}, {end:g}] is not a slit")
        self.pulse_rate = float(pulse_rate)
        self.nominal_speed = float(speed) if speed else None
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.speed = epics_signal_r(float, prefix + "Spd_R")
            self.phase = epics_signal_r(float, prefix + "Phs_R")
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.in_phase = epics_signal_r(bool, prefix + "InPhs_R")
            self.state = epics_signal_r(ChopperState, prefix + "ChopState_R")
            self.delay_error = epics_signal_r(float, prefix + "DiffTSSamples")
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.speed_setpoint = epics_signal_rw(float, prefix + "Spd_S")
            self.delay = epics_signal_rw(float, prefix + "ChopDly-S")
            self.total_delay = epics_signal_r(float, prefix + "TotDly")
            self.park_angle = epics_signal_rw(float, prefix + "Park_S")
            self.distance, _ = soft_signal_r_and_setter(float, float(distance), units="m")
            self.radius, _ = soft_signal_r_and_setter(float, float(radius), units="m")
            self.slit_height, _ = soft_signal_r_and_setter(float, float(slit_height), units="m")
            self.slits, _ = soft_signal_r_and_setter(int, len(self.slit_edges))
            edges = np.array(self.slit_edges, dtype=np.float64).ravel()
            self.slit_edges_deg, _ = soft_signal_r_and_setter(
                Array1D[np.float64], edges, units="deg"
            )
        self.command = epics_signal_rw(ChopperCommand, prefix + "C_Execute")
        self.park_command = epics_signal_w(int, prefix + "C_Park")
        self.position = epics_signal_r(float, prefix + "Pos_R")
        self.mechanical_delay = epics_signal_rw(float, prefix + "MechDly-S")
        self.beam_position_delay = epics_signal_rw(float, prefix + "BeamPosDly-S")
        self.alarms = DeviceVector(
            {i: epics_signal_r(str, prefix + alarm) for i, alarm in enumerate(ALARMS)}
        )
        super().__init__(name=name)
        self._distance = float(distance)

    @property
    def distance_m(self) -> float:
        """Distance from the source (m), as the profile gives it."""
        return self._distance

    async def check_speed(self, speed: float) -> None:
        """Raise `ChopperRefusal` unless ``speed`` (Hz) is within the IOC's drive limits
        (``Spd_S``'s control limits) and commensurate with the source's pulse rate."""
        limits = (await self.speed_setpoint.describe())[self.speed_setpoint.name].get("limits")
        control = (limits or {}).get("control") or {}
        low, high = control.get("low"), control.get("high")
        pv = self.speed_setpoint.source.removeprefix("ca://")
        if low is not None and high is not None and low < high:
            if speed > high:
                raise ChopperRefusal(
                    f"{self.name}: speed {speed:g} Hz is above its maximum {high:g} Hz ({pv})"
                )
            if speed < low:
                raise ChopperRefusal(
                    f"{self.name}: speed {speed:g} Hz is below its minimum {low:g} Hz ({pv})"
                )
        if speed and not speed_is_commensurate(speed, self.pulse_rate):
            raise ChopperRefusal(
                f"{self.name}: speed {speed:g} Hz is not a multiple or fraction of the "
                f"source's {self.pulse_rate:g} Hz pulses: it could never lock its phase"
            )

    @AsyncStatus.wrap
    async def set(self, value: float | ChopperSetpoint, timeout: float = LOCK_TIMEOUT) -> None:
        """Spin to the speed (and delay) and wait until phase-locked; 0 stops the disk."""
        setpoint = value if isinstance(value, ChopperSetpoint) else ChopperSetpoint(value)
        await self.check_speed(setpoint.speed)
        if setpoint.speed == 0:
            await self._stop(timeout)
            return
        writes = [self.speed_setpoint.set(setpoint.speed)]
        if setpoint.delay is not None:
            writes.append(self.delay.set(await self._delay_setpoint(setpoint)))
        await asyncio.gather(*writes)
        await self.command.set(ChopperCommand.START)
        await self.wait_locked(timeout)

    async def _delay_setpoint(self, setpoint: ChopperSetpoint) -> float:
        """``ChopDly-S`` (ns) for the total delay ``setpoint.delay`` at its speed."""
        beam_position, mechanical = await asyncio.gather(
            self.beam_position_delay.get_value(), self.mechanical_delay.get_value()
        )
        turn = 1e9 / setpoint.speed
        offset = beam_position + mechanical / 360.0 * turn
        return (float(setpoint.delay or 0.0) - offset) % turn

    async def wait_locked(self, timeout: float = LOCK_TIMEOUT) -> None:
        """Wait until the chopper is phase-locked; a fault or a timeout raises, naming the
        chopper, its state and its alarms."""
        failed: list[ChopperState] = []

        def locked_or_failed(state: ChopperState) -> bool:
            if state == ChopperState.FAULT:
                failed.append(state)
                return True
            return state == ChopperState.PHASE_LOCKED

        try:
            await wait_for_value(self.state, locked_or_failed, timeout)
        except TimeoutError:
            raise ChopperError(
                f"{self.name}: not phase-locked within {timeout:g} s ({await self._situation()})"
            ) from None
        if failed:
            raise ChopperError(f"{self.name}: fault while spinning up ({await self._situation()})")

    async def _situation(self) -> str:
        state, speed, error, alarms = await asyncio.gather(
            self.state.get_value(),
            self.speed.get_value(),
            self.delay_error.get_value(),
            asyncio.gather(*(a.get_value() for a in self.alarms.values())),
        )
        raised = [f"{ALARMS[i]}: {text}" for i, text in enumerate(alarms) if text]
        words = f"state {state.value}, {speed:g} Hz, delay error {error:g} ns"
        return words + (f"; alarms: {'; '.join(raised)}" if raised else "")

    async def _stop(self, timeout: float) -> None:
        await self.command.set(ChopperCommand.STOP)
        try:
            await wait_for_value(self.state, ChopperState.STOPPED, timeout)
        except TimeoutError:
            raise ChopperError(
                f"{self.name}: not stopped within {timeout:g} s ({await self._situation()})"
            ) from None

    @AsyncStatus.wrap
    async def park(self, angle: float | None = None, timeout: float = LOCK_TIMEOUT) -> None:
        """Stop the disk and turn it to ``angle`` (degrees; default: the IOC's Park_S)."""
        if angle is not None:
            await self.park_angle.set(angle)
        await self.command.set(ChopperCommand.PARK)
        try:
            await wait_for_value(self.state, ChopperState.PARKED, timeout)
        except TimeoutError:
            raise ChopperError(
                f"{self.name}: not parked within {timeout:g} s ({await self._situation()})"
            ) from None
