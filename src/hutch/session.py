"""One place that builds a beamline session: devices, RunEngine and its subscriptions."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.run_engine import RunEngineResult, call_in_bluesky_event_loop
from event_model import DocumentRouter

import hutch
from hutch.callbacks import NexusWriter, PlotSaver
from hutch.catalog import CatalogConfig, ensure_catalog, make_tiled_writer, run_uri, runs_container
from hutch.config import Settings
from hutch.devices import connect_devices, make_devices
from hutch.profile import Profile
from hutch.suspenders import make_suspender

__all__ = ["RunRecord", "Session"]

logger = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """What one run of a session produced, filled in from its documents."""

    uid: str
    scan_id: int | None
    plan_name: str | None
    exit_status: str | None = None
    reason: str = ""
    events: dict[str, int] = field(default_factory=dict)
    """Number of events per stream (points, as the stop document counts them)."""
    nexus: Path | None = None
    png: Path | None = None
    catalog_uri: str | None = None


class _RunRecorder(DocumentRouter):
    """Counts each run's events per stream and keeps its exit status, for summaries."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, RunRecord] = {}
        self._streams: dict[str, tuple[RunRecord, str]] = {}
        self._counts: dict[str, Counter] = {}

    def start(self, doc):
        self.runs[doc["uid"]] = RunRecord(doc["uid"], doc.get("scan_id"), doc.get("plan_name"))
        self._counts[doc["uid"]] = Counter()

    def descriptor(self, doc):
        record = self.runs.get(doc["run_start"])
        if record is not None:
            self._streams[doc["uid"]] = (record, doc.get("name", "primary"))
            record.events.setdefault(doc.get("name", "primary"), 0)

    def event_page(self, doc):
        record, stream = self._streams.get(doc["descriptor"], (None, None))
        if record is not None:
            record.events[stream] += len(doc["seq_num"])

    def stop(self, doc):
        record = self.runs.get(doc["run_start"])
        if record is not None:
            record.exit_status = doc["exit_status"]
            record.reason = doc.get("reason", "")
            # The RunEngine's count: a point taken again after a suspension counts once.
            record.events.update(doc.get("num_events") or {})


class Session:
    """A beamline session for one profile: its devices, connected, and a RunEngine ``RE``
    whose every run is shown as a live table and written to a NeXus file, a PNG plot and
    the catalogue.

    Use ``session.run(plan)`` (or ``session.RE(plan)``); ``session.devices`` maps device names
    to devices; ``session.runs`` lists what each run produced. The profile's
    ``[[suspenders]]`` are installed on ``RE`` (``session.suspenders``): a beam dump suspends
    a run instead of recording points without beam.
    """

    def __init__(
        self,
        profile: Profile,
        settings: Settings | None = None,
        *,
        live_table: bool = True,
        nexus: bool = True,
        plots: bool = True,
        catalog: bool = True,
        connect: bool = True,
        connect_timeout: float = 10.0,
        md: dict[str, Any] | None = None,
        RE: RunEngine | None = None,
    ) -> None:
        self.profile = profile
        self.settings = settings or Settings.from_env()
        # The queue server and tests bring their own RunEngine; it must return results.
        self.RE = RE or RunEngine(call_returns_result=True)
        self.RE.md.update(profile.metadata.model_dump(exclude_none=True))
        self.RE.md.update(profile=profile.name, hutch_version=hutch.__version__)
        self.RE.md.update(md or {})

        self._recorder = _RunRecorder()
        self.RE.subscribe(self._recorder)
        if live_table:
            bec = BestEffortCallback()
            bec.disable_plots()  # PlotSaver draws the plots; the table is the live view
            self.RE.subscribe(bec)
        self.nexus = NexusWriter(self.settings.nexus_dir) if nexus else None
        if self.nexus:
            self.RE.subscribe(self.nexus)
        self.plots = PlotSaver(self.settings.plot_dir) if plots else None
        if self.plots:
            self.RE.subscribe(self.plots)
        self.catalog: CatalogConfig | None = None
        if catalog:
            self.catalog = ensure_catalog(self.settings)
            self.runs_container = runs_container(self.catalog, profile.name)
            self.RE.subscribe(make_tiled_writer(self.runs_container))

        self.devices = make_devices(profile)
        self.connection_failures: dict[str, list[str]] = {}
        self.suspenders = []
        if connect:
            self.connect(connect_timeout)
            # Suspenders watch live signals: only once they are connected.
            self.suspenders = [make_suspender(s, self.devices) for s in profile.suspenders]
            for suspender in self.suspenders:
                self.RE.install_suspender(suspender)

    def connect(self, timeout: float = 10.0, *, raise_on_failure: bool = True) -> None:
        """Connect all devices concurrently; raise listing every missing PV (or keep them)."""
        self.connection_failures = call_in_bluesky_event_loop(
            connect_devices(self.devices, timeout, raise_on_failure=raise_on_failure)
        )

    def run(self, plan) -> RunEngineResult:
        """Run a plan on the RunEngine and return its result (uids, return value, status)."""
        return self.RE(plan)

    @property
    def runs(self) -> list[RunRecord]:
        """Every run of this session so far, oldest first, with its outputs."""
        records = list(self._recorder.runs.values())
        for record in records:
            if self.nexus:
                record.nexus = self.nexus.path_for(record.uid)
            if self.plots:
                record.png = self.plots.path_for(record.uid)
            if self.catalog:
                record.catalog_uri = run_uri(self.catalog, self.profile.name, record.uid)
        return records

    def record(self, uid: str) -> RunRecord:
        """The `RunRecord` of the run ``uid``."""
        return next(r for r in self.runs if r.uid == uid)
