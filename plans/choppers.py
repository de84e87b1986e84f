"""Disk choppers: select a wavelength band, and park them."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.utils import MsgGenerator

from hutch.devices.cascade import ChopperCascade
from hutch.devices.chopper import LOCK_TIMEOUT, ChopperSetpoint, DiskChopper
from hutch.tof import ESS_PULSE_LENGTH

from .checks import ScanArgumentError, checked

__all__ = ["BandResult", "park_choppers", "set_wavelength_band"]


@dataclass(frozen=True)
class BandResult:
    """What `set_wavelength_band` set: each chopper's speed and total delay, and how far
    outside the band neutrons may leak (Å, at either edge)."""

    lambda_min: float
    lambda_max: float
    setpoints: dict[str, ChopperSetpoint]
    resolution: float


def _choppers(plan: str, choppers: Sequence[DiskChopper]) -> list[DiskChopper]:
    choppers = list(choppers) if isinstance(choppers, Sequence) else [choppers]
    if not choppers:
        raise ScanArgumentError(f"{plan}: choppers is empty")
    for chopper in choppers:
        if not isinstance(chopper, DiskChopper):
            raise ScanArgumentError(f"{plan}: {chopper!r} is not a disk chopper")
    return choppers


def _checked(check: Coroutine[Any, Any, None]) -> MsgGenerator[None]:
    """Await a device's check in the RunEngine's loop and raise what it raised (bluesky's
    ``wait_for`` waits for its awaitables but drops their exceptions)."""
    errors: list[BaseException] = []

    async def run() -> None:
        try:
            await check
        except Exception as exc:
            errors.append(exc)

    yield from bps.wait_for([run])
    if errors:
        raise errors[0]


@checked
def set_wavelength_band(
    choppers: Sequence[DiskChopper],
    lambda_min: float,
    lambda_max: float,
    *,
    speed: float | Sequence[float] | None = None,
    detector_distance: float | None = None,
    pulse_length: float = ESS_PULSE_LENGTH,
    timeout: float = LOCK_TIMEOUT,
) -> MsgGenerator[BandResult]:
    """Phase ``choppers`` to pass wavelengths ``lambda_min`` to ``lambda_max`` (Å) of
    every source pulse, and wait until all are locked.

    Each chopper's delay comes from its distance to the source (the profile's) and the
    pulse timing: its slit's centre crosses the beam half-way between the band's fastest
    neutron of the pulse's start and its slowest of the pulse's end (`ChopperCascade`).
    ``speed`` (Hz) spins every chopper to it, or each to its own (one per chopper); by
    default each runs at its speed in the profile (``options.speed``), else at its present
    speed setpoint.
    Everything is checked before any chopper is touched: speeds within the drive's limits
    and commensurate with the source, slits wide enough for the band and, given
    ``detector_distance`` (m from the source), a band whose neutrons arrive within one
    pulse period. Returns a `BandResult`.
    """
    plan = "set_wavelength_band"
    choppers = _choppers(plan, choppers)
    if isinstance(speed, Sequence) and len(speed) != len(choppers):
        raise ScanArgumentError(f"{plan}: {len(speed)} speeds for {len(choppers)} choppers")
    speeds = []
    for i, chopper in enumerate(choppers):
        if speed is not None:
            value = speed[i] if isinstance(speed, Sequence) else speed
        elif chopper.nominal_speed:
            value = chopper.nominal_speed
        else:
            value = yield from bps.rd(chopper.speed_setpoint)
        if not value:
            raise ScanArgumentError(
                f"{plan}: {chopper.name} has no speed in the profile and its setpoint is "
                "0 Hz; give speed= to spin it"
            )
        yield from _checked(chopper.check_speed(float(value)))
        speeds.append(float(value))
    cascade = ChopperCascade(choppers, choppers[0].pulse_rate, pulse_length)
    setpoints = cascade.setpoints(
        lambda_min, lambda_max, speeds, detector_distance=detector_distance
    )
    moves = [item for c in choppers for item in (c, setpoints[c.name])]
    yield from bps.mv(*moves, timeout=timeout)
    return BandResult(lambda_min, lambda_max, setpoints, cascade.resolution())


@checked
def park_choppers(
    choppers: Sequence[DiskChopper], angle: float | None = None, timeout: float = LOCK_TIMEOUT
) -> MsgGenerator[None]:
    """Stop ``choppers`` and park their disks (at ``angle`` degrees, or each one's own park
    angle), all at once; done when all are parked."""
    choppers = _choppers("park_choppers", choppers)

    def park_all() -> asyncio.Future:
        return asyncio.gather(*(chopper.park(angle, timeout) for chopper in choppers))

    yield from bps.wait_for([park_all])
