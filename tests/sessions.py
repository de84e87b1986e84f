"""Helpers for tests of the session and the catalogue: a beamline with no devices, sessions
without writers or connection, and a small run written straight into a catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bluesky import RunEngine
from bluesky.run_engine import get_bluesky_event_loop
from event_model import compose_run

from hutch.catalog import make_tiled_writer
from hutch.config import Settings
from hutch.profile import Profile, load_profile
from hutch.session import Session


def bare_profile(directory: Path, name: str) -> Profile:
    """A profile ``name`` without devices, offering ``count`` and requiring a sample, written
    to ``directory`` and loaded from there."""
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nplans = ["count"]\ndevices = []\n\n[metadata]\n'
        f'facility = "HUTCH"\nbeamline = "{name}"\nrequired = ["sample"]\n'
    )
    return load_profile(path)


def write_run(container: Any, uid: str, x: float = 1.0, **metadata: Any) -> None:
    """A run of one event (``x``) with start ``metadata``, written into ``container`` as the
    recorder's catalogue writer writes."""
    bundle = compose_run(uid=uid, metadata=metadata)
    stream = bundle.compose_descriptor(
        name="primary", data_keys={"x": {"dtype": "number", "shape": [], "source": "sim"}}
    )
    writer = make_tiled_writer(container)
    writer("start", bundle.start_doc)
    writer("descriptor", stream.descriptor_doc)
    writer("event", stream.compose_event(data={"x": x}, timestamps={"x": 0.0}))
    writer("stop", bundle.compose_stop())


def offline_session(
    profile: Profile, settings: Settings, RE: RunEngine | None = None, **options: Any
) -> Session:
    """A `Session` of ``profile`` on ``RE`` (else a RunEngine of its own, on bluesky's event
    loop, where ophyd-async devices live) without NeXus, plots, catalogue or connection."""
    return Session(
        profile,
        settings,
        RE=RE or RunEngine({}, loop=get_bluesky_event_loop(), call_returns_result=True),
        live_table=False,
        nexus=False,
        plots=False,
        catalog=False,
        connect=False,
        **options,
    )
