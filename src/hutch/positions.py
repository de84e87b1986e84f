"""Where everything is: positions of a beamline's movable devices and readings of the rest.

What ``%wa`` ("where all") shows in ``hutch shell``, for ophyd-async and classic ophyd (v1)
devices alike. ophyd-async devices are read on bluesky's event loop, classic ones in a thread,
all concurrently, each within a timeout, so one device that stopped answering costs seconds
once and is reported, not waited for device by device.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ophyd
from bluesky.protocols import Locatable, Movable, Readable
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import SignalR, StandardDetector

__all__ = ["Positioner", "Reading", "WhereAll", "format_where_all", "pv_summary", "where_all"]

#: Seconds one device may take to answer before it is reported as not answering.
READ_TIMEOUT = 3.0


@dataclass
class Positioner:
    """One movable device: where it is, where it was sent, its soft limits and units."""

    name: str
    generation: str
    """``ophyd-async`` or ``ophyd`` (classic, v1)."""
    value: Any = None
    setpoint: Any = None
    low: Any = None
    high: Any = None
    units: str = ""
    precision: int | None = None
    error: str = ""


@dataclass
class Reading:
    """The current reading of one readable device (every field its ``read()`` gives)."""

    name: str
    generation: str
    values: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class WhereAll:
    """Every device of a beamline, grouped: positioners, other readables, detectors that
    write files (read only within a run), and devices that are not connected."""

    positioners: list[Positioner] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    file_writers: list[str] = field(default_factory=list)
    not_connected: dict[str, list[str]] = field(default_factory=dict)


def _generation(device: Any) -> str:
    return "ophyd" if isinstance(device, ophyd.ophydobj.OphydObject) else "ophyd-async"


def _error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {READ_TIMEOUT:g} s"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:120]


async def _async_positioner(device: Any) -> Positioner:
    row = Positioner(device.name, "ophyd-async")
    if isinstance(device, Locatable):
        location = await device.locate()
        row.value, row.setpoint = location["readback"], location["setpoint"]
    else:  # a movable without a readback of its own: its first hinted field
        reading = await device.read()
        hinted = (getattr(device, "hints", None) or {}).get("fields") or list(reading)
        row.value = reading[hinted[0]]["value"] if hinted else None
    # The EPICS motor's soft limits, units and precision, where the device has them.
    extras = {
        key: getattr(device, attr)
        for key, attr in (
            ("low", "low_limit_travel"),
            ("high", "high_limit_travel"),
            ("units", "motor_egu"),
            ("precision", "precision"),
        )
        if isinstance(getattr(device, attr, None), SignalR)
    }
    values = await asyncio.gather(*(signal.get_value() for signal in extras.values()))
    for key, value in zip(extras, values, strict=True):
        setattr(row, key, value)
    return row


def _v1_positioner(device: Any) -> Positioner:
    row = Positioner(device.name, "ophyd")
    row.value = device.position if hasattr(device, "position") else device.get()
    setpoint = getattr(device, "user_setpoint", None)
    row.setpoint = setpoint.get() if setpoint is not None else None
    if hasattr(device, "limits"):
        row.low, row.high = device.limits
    row.units = getattr(device, "egu", "") or ""
    row.precision = getattr(device, "precision", None)
    return row


async def _reading(device: Any) -> Reading:
    generation = _generation(device)
    if generation == "ophyd":
        reading = await asyncio.to_thread(device.read)
    else:
        reading = await device.read()
    return Reading(device.name, generation, {k: v["value"] for k, v in reading.items()})


async def _gather(devices: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, BaseException]]:
    async def one(device: Any) -> Positioner | Reading:
        if isinstance(device, Movable):
            if _generation(device) == "ophyd":
                work = asyncio.to_thread(_v1_positioner, device)
            else:
                work = _async_positioner(device)
        else:
            work = _reading(device)
        return await asyncio.wait_for(work, READ_TIMEOUT)

    results = await asyncio.gather(*(one(d) for d in devices.values()), return_exceptions=True)
    found, failed = {}, {}
    for name, result in zip(devices, results, strict=True):
        (failed if isinstance(result, BaseException) else found)[name] = result
    return found, failed


def where_all(
    devices: Mapping[str, Any], not_connected: Mapping[str, list[str]] | None = None
) -> WhereAll:
    """Read where every device is: positions (readback, setpoint, limits, units) of movable
    devices, readings of other readable ones. ``not_connected`` (name: missing PVs, as
    `hutch.session.Session.connection_failures`) are listed, not read.

    Detectors that write files (area detectors, PandAs) are named only: they give a reading
    within a run, once prepared. Call it outside a running plan (it uses bluesky's event loop).
    """
    not_connected = dict(not_connected or {})
    report = WhereAll(not_connected=not_connected)
    wanted = {}
    for name, device in devices.items():
        if name in not_connected:
            continue
        if isinstance(device, StandardDetector):
            report.file_writers.append(name)
        elif isinstance(device, Movable | Readable):
            wanted[name] = device
    found, failed = call_in_bluesky_event_loop(_gather(wanted))
    for name, device in wanted.items():
        if name in found:
            row = found[name]
        elif isinstance(device, Movable):
            row = Positioner(name, _generation(device), error=_error(failed[name]))
        else:
            row = Reading(name, _generation(device), error=_error(failed[name]))
        (report.positioners if isinstance(row, Positioner) else report.readings).append(row)
    return report


def _number(value: Any, precision: int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{precision if precision is not None else 4}f}"
    return str(value)


def format_where_all(report: WhereAll) -> str:
    """``report`` as the table ``%wa`` prints, one group after another."""
    lines = []
    if report.positioners:
        header = f"  {'positioner':16} {'value':>12} {'setpoint':>12} {'low':>10} {'high':>10}"
        lines += ["Positioners", f"{header}  units"]
        for p in report.positioners:
            kind = "  (ophyd)" if p.generation == "ophyd" else ""
            if p.error:
                lines.append(f"  {p.name:16} {p.error}")
                continue
            lines.append(
                f"  {p.name:16} {_number(p.value, p.precision):>12} "
                f"{_number(p.setpoint, p.precision):>12} {_number(p.low, p.precision):>10} "
                f"{_number(p.high, p.precision):>10}  {p.units}{kind}"
            )
    if report.readings:
        lines.append("Readings")
        for r in report.readings:
            kind = "  (ophyd)" if r.generation == "ophyd" else ""
            if r.error:
                lines.append(f"  {r.name:16} {r.error}")
            for key, value in r.values.items():
                shown = f"{value:.6g}" if isinstance(value, float) else str(value)
                lines.append(f"  {key:28} {shown:>14}{kind}")
    if report.file_writers:
        lines.append(
            "Detectors writing files (read within runs): " + ", ".join(report.file_writers)
        )
    for name, pvs in report.not_connected.items():
        lines.append(f"NOT CONNECTED    {name}: missing {pv_summary(pvs)}")
    return "\n".join(lines)


def pv_summary(pvs: list[str], shown: int = 4) -> str:
    """The first ``shown`` PVs and how many more (a motor record misses ~30 at once)."""
    if not pvs:
        return "no PV reported"
    more = f" and {len(pvs) - shown} more" if len(pvs) > shown else ""
    return ", ".join(pvs[:shown]) + more
