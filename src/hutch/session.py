"""One place that builds a beamline session: devices, RunEngine and its subscriptions."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bluesky import RunEngine
from bluesky.preprocessors import SupplementalData
from bluesky.run_engine import RunEngineResult, call_in_bluesky_event_loop
from bluesky.utils import PersistentDict
from event_model import DocumentRouter
from ophyd_async.core import PathProvider, StaticPathProvider, UUIDFilenameProvider

import hutch
from hutch import patches
from hutch.catalog_server import CatalogConfig, ensure_catalog, run_uri  # no tiled client
from hutch.config import Settings
from hutch.devices import connect_devices, devices_metadata, make_devices
from hutch.errors import Refusal, quiet_refusals
from hutch.profile import Profile
from hutch.recorder import Recorder, RecorderConfig
from hutch.scan_ids import RunEngineScanIds, scan_counter
from hutch.suspenders import make_suspender

if TYPE_CHECKING:
    from bluesky.callbacks.best_effort import BestEffortCallback
    from tiled.client.container import Container

__all__ = [
    "MissingMetadataError",
    "RequiredMetadata",
    "RunRecord",
    "Session",
    "metadata_store",
]

patches.apply()
quiet_refusals()  # a refused plan is reported in one line by whoever ran it

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


def _import_in_background(module: str) -> None:
    """Start importing ``module`` in a thread of its own; an ``import`` of it elsewhere then
    waits for that one to finish (and raises its error, if any, again)."""

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    threading.Thread(target=load, name=f"import {module}", daemon=True).start()


class _RunLog(DocumentRouter):
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


def detector_paths(settings: Settings) -> PathProvider:
    """Where the session's detectors write their files: a new file per detector and
    acquisition under ``settings.detector_dir``, which the catalogue serves."""
    settings.detector_dir.mkdir(parents=True, exist_ok=True)
    return StaticPathProvider(UUIDFilenameProvider(), settings.detector_dir)


def metadata_store(settings: Settings, profile_name: str) -> Path:
    """Where a session with ``persist_md`` keeps ``RE.md`` of the beamline ``profile_name``
    between processes (bluesky's ``PersistentDict``: one file per key)."""
    return settings.run_dir / "metadata" / profile_name


class MissingMetadataError(Refusal):
    """A run was refused before it started: required metadata is missing or blank."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class RequiredMetadata:
    """A RunEngine ``md_validator`` refusing a run whose metadata (``RE.md``, the plan's
    ``md``, ``RE(plan, **md)``) lacks a key the profile requires (``[metadata] required``,
    facility and beamline always); then it calls the validator it replaced.

    bluesky calls it when the run opens, before the start document: a refused run emits
    nothing. ``uninstall(RE)`` puts the replaced validator back, or, if another has been
    chained on top of this one since, turns this one into a pass-through.
    """

    def __init__(self, profile: Profile, previous: Callable[[dict], Any] | None) -> None:
        self.profile = profile
        self.previous = previous
        self.active = True

    def __call__(self, md: dict[str, Any]) -> None:
        # Before the previous validator: bluesky's own rejects sample=None with a type error.
        if self.active and (missing := self.profile.metadata.missing(md)):
            raise MissingMetadataError(self._message(missing), missing)
        if self.previous is not None:
            self.previous(md)

    def _message(self, missing: list[str]) -> str:
        if len(missing) == 1:
            it, every = "it", f"RE.md[{missing[0]!r}] = ..."
        else:
            it, every = "them", f"RE.md.update({', '.join(f'{k}=...' for k in missing)})"
        one = "md={" + ", ".join(f"{k!r}: ..." for k in missing) + "}"
        where = f" ({self.profile.path}, [metadata] required)" if self.profile.path else ""
        return (
            f"run refused before it started: required metadata missing: {', '.join(missing)}. "
            f"Set {it} for every run with {every}, or for this run with the plan's {one}. "
            f"Profile {self.profile.name!r} requires "
            f"{', '.join(self.profile.metadata.required_keys)}{where}."
        )

    def uninstall(self, RE: RunEngine) -> None:
        """Stop validating; give ``RE`` back the validator this one replaced, if it can."""
        self.active = False
        if RE.md_validator is self:
            RE.md_validator = self.previous


class Session:
    """A beamline session for one profile: its devices, connected, and a RunEngine ``RE``
    whose every run is shown as a live table and written to a NeXus file, a PNG plot and
    the catalogue. The writing happens in a recorder process (`hutch.recorder`), in parallel
    with the acquisition; ``RE(plan)`` returns once the run is written.

    Use ``session.run(plan)`` (or ``session.RE(plan)``); ``session.devices`` maps device names
    to devices; ``session.runs`` lists what each run produced. The profile's
    ``baseline`` devices are read at the start and end of every run (``session.baseline``,
    bluesky's ``SupplementalData``); its ``[[suspenders]]`` are installed on ``RE``
    (``session.suspenders``): a beam dump suspends
    a run instead of recording points without beam. ``session.close()`` (or the end of a
    ``with Session(...)`` block) stops the recorder.

    With ``raise_on_failure=False`` devices that do not connect are kept in
    ``session.connection_failures`` (name: missing PVs) instead of failing the session; the
    rest stay usable (a suspender watching a missing device is not installed). With
    ``persist_md`` ``RE.md`` is kept on disk (`metadata_store`): what a user set
    (``RE.md["proposal"] = ...``, the scan id) is there in the next session, and the profile's
    ``[metadata]`` only fills the keys not stored yet. Runs are numbered by the beamline's
    scan counter in the data directory (`hutch.scan_ids`), whichever process takes them.
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
        raise_on_failure: bool = True,
        md: dict[str, Any] | None = None,
        RE: RunEngine | None = None,
        persist_md: bool = False,
    ) -> None:
        self.profile = profile
        self.settings = settings or Settings.from_env()
        # The queue server and tests bring their own RunEngine; it must return results.
        self.RE = RE or RunEngine(call_returns_result=True)
        defaults = profile.metadata.model_dump(exclude_none=True)
        self._stored_md: PersistentDict | None = None
        if persist_md:
            store = metadata_store(self.settings, profile.name)
            store.mkdir(parents=True, exist_ok=True)
            self._stored_md = PersistentDict(str(store))
            # What the user set last time wins over the profile's defaults.
            defaults = {k: v for k, v in defaults.items() if k not in self._stored_md}
            self._stored_md.update(self.RE.md)
            self.RE.md = self._stored_md
        self.RE.md.update(defaults)
        self.RE.md.update(profile=profile.name, hutch_version=hutch.__version__)
        self.RE.md["devices"] = devices_metadata(profile)  # NeXus classes, prefixes
        # Scan numbers from the beamline's counter in the data directory, shared by every
        # process taking runs (`hutch.scan_ids`); a refused run takes none. RE.md["scan_id"]
        # (kept by the shell, or set by the user) is the lowest last number, as in bluesky.
        self._scan_ids = RunEngineScanIds(
            self.RE, scan_counter(self.settings.run_dir, profile.name)
        )
        self.RE.md.update(md or {})
        # A run missing required metadata is refused before its start document: bluesky calls
        # RE.md_validator with the run's merged metadata when the run opens.
        self._md_validator = RequiredMetadata(profile, self.RE.md_validator)
        self.RE.md_validator = self._md_validator

        self._runs = _RunLog()
        self._tokens = [self.RE.subscribe(self._runs)]
        if live_table:
            # bluesky's live table imports matplotlib.pyplot (~0.4 s): in a thread, beside the
            # devices' connection, which mostly waits for the IOCs.
            _import_in_background("bluesky.callbacks.best_effort")
        self.catalog: CatalogConfig | None = None
        if catalog:
            # Its URI and key; the client is the recorder's (and `runs_container`'s).
            self.catalog = ensure_catalog(self.settings)
        # NeXus, plots and the catalogue are written by the recorder process, started first so
        # that its start-up (seconds of imports) overlaps everything else here.
        self.recorder: Recorder | None = None
        if nexus or plots or catalog:
            config = RecorderConfig(
                beamline=profile.name,
                nexus_dir=self.settings.nexus_dir if nexus else None,
                plot_dir=self.settings.plot_dir if plots else None,
                catalog_uri=self.catalog.uri if self.catalog else None,
                catalog_api_key=self.catalog.api_key if self.catalog else None,
                reductions=[spec.model_dump() for spec in profile.reductions],
                reductions_base=profile.path.parent if profile.path else None,
            )
            log = self.settings.run_dir / f"recorder-{os.getpid()}.log"
            self.recorder = Recorder(config, log)

        self.devices = make_devices(profile, detector_paths(self.settings))
        # The profile's baseline devices are read at the start and end of every run, once
        # they are connected (`connect`).
        self.baseline = SupplementalData(baseline=[])
        self._preprocessors: list[Callable] = [self.baseline]
        self.connection_failures: dict[str, list[str]] = {}
        self.suspenders = []
        if connect:
            self.connect(connect_timeout, raise_on_failure=raise_on_failure)
            # Suspenders watch live signals: only once they are connected.
            self.suspenders = [
                make_suspender(s, self.devices)
                for s in profile.suspenders
                if s.device not in self.connection_failures
            ]
            for suspender in self.suspenders:
                self.RE.install_suspender(suspender)
        self.live_table: BestEffortCallback | None = None
        if live_table:
            from bluesky.callbacks.best_effort import BestEffortCallback  # (see above)

            self.live_table = BestEffortCallback()
            # The recorder saves the plots; the table is the live view (an interactive shell
            # may turn the live plots on: ``session.live_table.enable_plots()``).
            self.live_table.disable_plots()
            self._tokens.append(self.RE.subscribe(self.live_table))
        if self.recorder:
            # It takes documents now; its writers may still be starting (they catch up).
            self.recorder.wait_receiving()
            self._tokens.append(self.RE.subscribe(self.recorder))  # last: it may raise
            # A writer's failure (a full disk) then fails its run instead of following it.
            self._preprocessors.append(self.recorder.check_before_close)
        self.RE.preprocessors.extend(self._preprocessors)

    @cached_property
    def runs_container(self) -> Container:
        """The catalogue's container of this beamline's runs (bluesky-tiled-plugins'
        ``CatalogOfBlueskyRuns``: ``[uid]``, ``[scan_id]``, ``[-1]``), connected on first use:
        the tiled client's imports and requests are paid only by those who read runs."""
        if self.catalog is None:
            raise AttributeError("this session has no catalogue (Session(..., catalog=False))")
        from hutch.catalog import runs_container

        return runs_container(self.catalog, self.profile.name)

    def connect(self, timeout: float = 10.0, *, raise_on_failure: bool = True) -> None:
        """Connect all devices concurrently; raise listing every missing PV (or keep them)."""
        self.connection_failures = call_in_bluesky_event_loop(
            connect_devices(self.devices, timeout, raise_on_failure=raise_on_failure)
        )
        # A device that did not connect is left out of the baseline: runs still work.
        self.baseline.baseline = [
            self.devices[name]
            for name in self.profile.baseline
            if name not in self.connection_failures
        ]

    def close(self) -> None:
        """Unsubscribe the session's callbacks from ``RE``, write persisted metadata to disk,
        let the recorder finish writing and stop it (it also stops when the process exits)."""
        for token in self._tokens:
            self.RE.unsubscribe(token)
        self._tokens.clear()
        self._md_validator.uninstall(self.RE)
        self._scan_ids.uninstall()  # before the kept RE.md is written: it may fix scan_id
        for preprocessor in self._preprocessors:
            if preprocessor in self.RE.preprocessors:
                self.RE.preprocessors.remove(preprocessor)
        self._preprocessors.clear()
        if self._stored_md is not None:
            self._stored_md.flush()  # values changed in place (RE.md["versions"]) too
            # Written: its finalizer must not write this store's values again over a later
            # session's when it is collected, which may be at exit (a refused run's traceback
            # keeps the store alive through the RunEngine's merged metadata).
            if (finalizer := getattr(self._stored_md, "_finalizer", None)) is not None:
                finalizer.detach()
            if self.RE.md is self._stored_md:
                # The RunEngine keeps a plain copy: the store is released now, its files final
                # before another session (of this process or the next) opens them.
                self.RE.md = dict(self._stored_md)
            self._stored_md = None
        if self.recorder:
            self.recorder.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, plan) -> RunEngineResult:
        """Run a plan on the RunEngine and return its result (uids, return value, status)."""
        return self.RE(plan)

    @property
    def runs(self) -> list[RunRecord]:
        """Every run of this session so far, oldest first, with its outputs."""
        records = list(self._runs.runs.values())
        for record in records:
            outputs = self.recorder.outputs(record.uid) if self.recorder else {}
            record.nexus = Path(outputs["nexus"]) if "nexus" in outputs else None
            record.png = Path(outputs["png"]) if "png" in outputs else None
            if self.catalog:
                record.catalog_uri = run_uri(self.catalog, self.profile.name, record.uid)
        return records

    def record(self, uid: str) -> RunRecord:
        """The `RunRecord` of the run ``uid``."""
        return next(r for r in self.runs if r.uid == uid)
