"""Sessions for tests of the session itself: no writers, no catalogue, no connection."""

from __future__ import annotations

from typing import Any

from bluesky import RunEngine
from bluesky.run_engine import get_bluesky_event_loop

from hutch.config import Settings
from hutch.profile import Profile
from hutch.session import Session


def offline_session(profile: Profile, settings: Settings, **options: Any) -> Session:
    """A `Session` of ``profile`` on a RunEngine of its own (on bluesky's event loop, where
    ophyd-async devices live) without NeXus, plots, catalogue or device connection."""
    return Session(
        profile,
        settings,
        RE=RunEngine({}, loop=get_bluesky_event_loop(), call_returns_result=True),
        live_table=False,
        nexus=False,
        plots=False,
        catalog=False,
        connect=False,
        **options,
    )
