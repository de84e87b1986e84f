"""The demo's neutron time-of-flight instrument (a neutron profile, as profiles/tof.toml):
its disk choppers spun up and phased to a wavelength band, checked over Channel Access,
recorded in a run, the event-mode detector counting pulses of the band, a chopper knocked
out of phase and back, and all parked (`hutch.demo` calls `neutron_runs` in a session on
that profile)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bluesky.plan_stubs as bps
import h5py
import numpy as np

from hutch import plans, simulators
from hutch.devices import DiskChopper, NeutronSource
from hutch.devices.chopper import ChopperRefusal
from hutch.devices.event_detector import EventDetector
from hutch.tof import unwrap_time_of_flight, wavelength_from_tof

if TYPE_CHECKING:
    from hutch.demo import DemoSummary
    from hutch.session import Session

__all__ = ["DEMO_BAND", "neutron_runs"]

#: The wavelength band (Å) the demo selects, each chopper at its profile's speed.
DEMO_BAND = (1.0, 2.6)
#: Seconds the demo knocks a chopper out of phase (the simulator's SIM:LOCKLOSS).
_LOCK_LOSS_S = 1.0
#: Source pulses the demo's event count takes (2 s at 14 Hz).
_PULSES = 28


def neutron_runs(session: Session, summary: DemoSummary, record: Any) -> None:
    """Choppers: a speed beyond the drive's limit refused with nothing written; the cascade
    phased to `DEMO_BAND` and locked; a run recording them (NXdisk_chopper in its NeXus
    file); an event count of the band (`tof_count`); a chopper out of phase that locks
    again; all parked."""
    devices, RE = session.devices, session.RE
    choppers = [d for d in devices.values() if isinstance(d, DiskChopper)]
    if not choppers:
        return
    sources = [d for d in devices.values() if isinstance(d, NeutronSource)]
    names = ", ".join(c.name for c in choppers)

    first = choppers[0]
    before = RE(bps.rd(first.speed_setpoint)).plan_result
    try:
        RE(plans.set_wavelength_band([first], *DEMO_BAND, speed=1000.0))
        limit = None
    except ChopperRefusal as exc:
        limit = str(exc)
    summary.extra["refused_chopper_speed"] = limit
    summary.check(
        f"{first.name}: a speed beyond the drive's limit is refused before anything is written",
        limit is not None
        and "above its maximum" in limit
        and RE(bps.rd(first.speed_setpoint)).plan_result == before,
        limit or "not refused",
    )

    began = time.monotonic()
    band = RE(plans.set_wavelength_band(choppers, *DEMO_BAND)).plan_result
    spin_up = time.monotonic() - began
    locked = {c.name: RE(bps.rd(c.in_phase)).plan_result for c in choppers}
    summary.extra["wavelength_band"] = {
        "band": list(DEMO_BAND),
        "resolution": band.resolution,
        "seconds": round(spin_up, 1),
        "choppers": {
            name: {"speed": s.speed, "delay_ns": s.delay} for name, s in band.setpoints.items()
        },
    }
    summary.check(
        f"choppers {names} spun up and phase-locked to the band "
        f"{DEMO_BAND[0]:g}-{DEMO_BAND[1]:g} Å",
        all(locked.values()),
        f"in phase: {locked}, in {spin_up:.1f} s",
    )
    delays = {c.name: RE(bps.rd(c.total_delay)).plan_result for c in choppers}
    summary.check(
        "each chopper's delay read back over CA centres its slit on the band",
        all(abs(delays[n] - s.delay) < 1.0 for n, s in band.setpoints.items()),
        ", ".join(f"{n} {d:.0f} ns" for n, d in delays.items()),
    )

    run = record(
        f"choppers phased for {DEMO_BAND[0]:g}-{DEMO_BAND[1]:g} Å",
        RE(plans.count([*sources, *choppers], num=3, md={"band": list(DEMO_BAND)})),
    )
    _check_nexus_choppers(summary, run, choppers)
    detectors = [d for d in devices.values() if isinstance(d, EventDetector)]
    if detectors:
        run = record(
            f"neutron events: {_PULSES} pulses of the band counted",
            RE(
                plans.tof_count(
                    detectors[0],
                    pulses=_PULSES,
                    choppers=choppers,
                    source=sources[0] if sources else None,
                )
            ),
        )
        # The simulated instrument's source-sample distance (its geometry's truth).
        l1 = float(session.profile.device(detectors[0].name).sim.get("sample_distance", 76.5))
        _check_events(summary, run, detectors[0], l1, band.resolution)

    _lock_loss(session, summary, choppers[-1])

    RE(plans.park_choppers(choppers))
    states = {c.name: RE(bps.rd(c.state)).plan_result.value for c in choppers}
    summary.check(
        f"choppers {names} parked",
        set(states.values()) == {"Parked"},
        ", ".join(f"{n} {s}" for n, s in states.items()),
    )


def _check_nexus_choppers(summary: DemoSummary, run: Any, choppers: list[DiskChopper]) -> None:
    """The run's NeXus file describes every chopper as an NXdisk_chopper: its speed at each
    point, phase, delay, slit edges and distance."""
    path = run.record.nexus
    missing = []
    try:
        with h5py.File(path, "r") as f:
            for chopper in choppers:
                group = f.get(f"entry/instrument/{chopper.name}")
                if group is None or group.attrs.get("NX_class") != "NXdisk_chopper":
                    missing.append(f"{chopper.name} (no NXdisk_chopper)")
                    continue
                for field in ("rotation_speed", "phase", "delay", "slit_edges", "distance"):
                    if field not in group:
                        missing.append(f"{chopper.name}/{field}")
    except OSError as exc:
        missing.append(str(exc))
    summary.check(
        f"run {run.record.scan_id}: NeXus NXdisk_chopper groups with speed, phase, delay, "
        "slit edges and distance",
        not missing,
        f"missing {', '.join(missing)}" if missing else str(path),
    )


def _check_events(
    summary: DemoSummary, run: Any, det: EventDetector, l1: float, leak: float
) -> None:
    """The event run: its NeXus file links the acquisition's row of the detector's event
    file; that file's NXdetector (pixels and NXevent_data) loads in ESS's reader scippnexus
    as events with pixel and time coordinates; it holds the pulses counted, every event of
    the acquisition, and their wavelengths (time of flight from the moderator over L1 + L2)
    lie in the band within the edges the choppers leave open."""
    import scippnexus as snx

    tag = f"run {run.record.scan_id}"
    path = run.record.nexus
    try:
        with h5py.File(path, "r") as f:
            link = f[f"entry/instrument/{det.name}"].get("acquisition", getlink=True)
            row = f[f"entry/instrument/{det.name}/acquisition"][-1]
        event_file = Path(path).parent / link.filename
        with h5py.File(event_file, "r") as f:
            bank = f["entry/instrument/bank"]
            first, stop = int(row[2]), int(row[3])
            pulses = int(row[1] - row[0])
            eto = bank["events/event_time_offset"][first:stop]
            ids = bank["events/event_id"][first:stop]
            numbers = bank["detector_number"][()].ravel()
            offsets = np.stack(
                [bank[f"{axis}_pixel_offset"][()].ravel() for axis in "xyz"], axis=-1
            )
        with snx.File(event_file) as f:
            loaded = f["entry/instrument/bank"][()]
        # An NXdetector with a depends_on chain loads as a DataGroup holding its signal.
        events = loaded.get("events") if hasattr(loaded, "get") else loaded
        binned = getattr(events, "bins", None) is not None
        dims = getattr(events, "dims", ())
    except (OSError, KeyError, ValueError, IndexError) as exc:
        summary.check(f"{tag}: events in NeXus", False, f"{path}: {exc}")
        return
    summary.check(
        f"{tag}: scippnexus loads the detector's NXdetector as events by pixel",
        binned and "detector_number" in dims,
        f"dims {dims}, binned {binned}",
    )
    summary.check(
        f"{tag}: {_PULSES} pulses counted, every event of the acquisition in the file",
        pulses == _PULSES and stop > first,
        f"{pulses} pulses, {stop - first} events",
    )
    # Each event's flight path: the source to the sample, then to its pixel.
    order = np.argsort(numbers)
    pixel = order[np.searchsorted(numbers, ids, sorter=order)]
    path_length = l1 + np.linalg.norm(offsets[pixel], axis=-1)
    tof = unwrap_time_of_flight(eto, path_length, *DEMO_BAND)
    wavelengths = wavelength_from_tof(tof, path_length)
    low, high = DEMO_BAND[0] - leak, DEMO_BAND[1] + leak
    inside = float(np.mean((wavelengths >= low) & (wavelengths <= high))) if len(tof) else 0.0
    summary.extra["events"] = {
        "pulses": pulses,
        "events": stop - first,
        "wavelength_min": float(wavelengths.min()) if len(tof) else None,
        "wavelength_max": float(wavelengths.max()) if len(tof) else None,
        "inside_band": inside,
    }
    summary.check(
        f"{tag}: the events' wavelengths lie in the band {DEMO_BAND[0]:g}-{DEMO_BAND[1]:g} Å "
        f"(edges ± {leak:.2f} Å)",
        inside >= 0.999,
        f"{inside:.4%} of {len(tof)} events, λ {summary.extra['events']['wavelength_min']:.3f}"
        f"-{summary.extra['events']['wavelength_max']:.3f} Å"
        if len(tof)
        else "no events",
    )


def _lock_loss(session: Session, summary: DemoSummary, chopper: DiskChopper) -> None:
    """The simulator knocks ``chopper`` out of phase for `_LOCK_LOSS_S`: it reports it, then
    locks again by itself."""
    from bluesky.run_engine import call_in_bluesky_event_loop
    from ophyd_async.core import wait_for_value

    state = simulators.status(session.profile.name, session.settings)
    pv = chopper.speed.source.removeprefix("ca://").removesuffix("Spd_R") + "SIM:LOCKLOSS"
    simulators.ca_write(pv, _LOCK_LOSS_S, state.port)
    lost = not session.RE(bps.rd(chopper.in_phase)).plan_result
    began = time.monotonic()
    try:
        call_in_bluesky_event_loop(wait_for_value(chopper.in_phase, True, timeout=30))
        again = True
    except TimeoutError:
        again = False
    summary.check(
        f"{chopper.name}: knocked out of phase (simulated), it reports it and locks again",
        lost and again,
        f"lost: {lost}, locked again after {time.monotonic() - began:.1f} s",
    )
    summary.extra["lock_loss"] = {"chopper": chopper.name, "relocked": again}


def print_neutrons(summary: DemoSummary, out: Any) -> None:
    """The neutron instrument's lines of the demo's report: the band and the choppers."""
    band = summary.extra.get("wavelength_band")
    if band is None:
        return
    choppers = ", ".join(
        f"{name} {c['speed']:g} Hz delay {c['delay_ns'] / 1e6:.3f} ms"
        for name, c in band["choppers"].items()
    )
    print(
        f"band        {band['band'][0]:g}-{band['band'][1]:g} Å (edges within "
        f"{band['resolution']:.2f} Å), locked in {band['seconds']:g} s: {choppers}",
        file=out,
    )
    events = summary.extra.get("events")
    if events and events["wavelength_min"] is not None:
        print(
            f"events      {events['events']} in {events['pulses']} pulses, λ "
            f"{events['wavelength_min']:.3f}-{events['wavelength_max']:.3f} Å "
            f"({events['inside_band']:.2%} in the band)",
            file=out,
        )
    if summary.extra.get("refused_chopper_speed"):
        print(f"refused     {summary.extra['refused_chopper_speed']}", file=out)
