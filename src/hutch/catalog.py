"""The run catalogue: an embedded tiled server, the writer that fills it and the reader.

Every run is written by bluesky-tiled-plugins' ``TiledWriter`` into a container named after
the beamline.  By default that container lives in an *embedded* catalogue: a tiled server
process that hutch starts on demand, listening on 127.0.0.1 only unless ``HUTCH_CATALOG_HOST``
says otherwise (SQLite catalogue, files plus DuckDB tables under ``Settings.catalog_dir``),
shared by the IPython session, the queue server and
``hutch runs``.  ``HUTCH_CATALOG_DATABASE=postgresql://...`` makes that same embedded
server keep its catalogue and event tables in PostgreSQL, the option for large catalogues
and several writers.  Setting ``HUTCH_CATALOG_URI`` (and ``HUTCH_CATALOG_API_KEY``) points
hutch at an external tiled server instead, and nothing is started.  ``search_runs`` finds
runs by metadata with queries the catalogue's database evaluates.

Starting, finding and stopping the embedded server lives in `hutch.catalog_server`, which
needs no tiled client (a session imports only that); its names are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bluesky_tiled_plugins import TiledWriter
from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns
from bluesky_tiled_plugins.queries import TimeRange
from tiled.client import from_uri
from tiled.client.container import Container
from tiled.queries import Eq, FullText, In, KeyPresent
from tiled.structures.core import Spec

# The server's side, which needs no tiled client (`hutch.session` imports it from there).
from hutch.catalog_server import (  # noqa: F401  (_api_key: for the tests)
    CatalogConfig,
    CatalogError,
    _api_key,
    catalog_status,
    ensure_catalog,
    run_uri,
    stop_catalog,
)
from hutch.errors import HutchError

__all__ = [
    "EXIT_STATUSES",
    "AmbiguousScanIdError",
    "OPEN",
    "CatalogConfig",
    "CatalogError",
    "RunSummary",
    "catalog_status",
    "documents_of",
    "ensure_catalog",
    "get_run",
    "make_tiled_writer",
    "run_summaries",
    "run_uri",
    "runs_container",
    "search_runs",
    "stop_catalog",
]

# Version 3 of the spec tells bluesky-tiled-plugins' client that runs are stored in SQL
# tables (its ``is_sql``), which enables partial-uid search and the v3 run client.
RUNS_SPEC = Spec("CatalogOfBlueskyRuns", version="3.0")

# Events are written in batches: each write is one HTTP request (~50 ms here), so writing
# every event (batch_size=1) made a 200-point scan 10x slower than a batched one.  Ten
# events per request keeps that overhead near 5 ms/event while a live run shows up in
# the catalogue at most nine points behind; TiledWriter writes the remainder at the stop
# document, so nothing is lost when a run ends, successfully or not.
DEFAULT_BATCH_SIZE = 10


@dataclass
class RunSummary:
    """One line of the run listing: who, what, when, how it ended and how much data."""

    uid: str
    scan_id: int | None
    plan_name: str | None
    start_time: datetime
    exit_status: str | None  # None while the run is still open
    events: dict[str, int] = field(default_factory=dict)  # stream name -> number of events
    uri: str = ""

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-serialisable types (the start time in ISO 8601, UTC)."""
        out = asdict(self)
        out["start_time"] = self.start_time.isoformat()
        return out


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def runs_container(config: CatalogConfig, beamline: str) -> Container:
    """The catalogue container holding ``beamline``'s runs, created on first use.

    The container carries the ``CatalogOfBlueskyRuns`` spec, so the client returned is
    bluesky-tiled-plugins' ``CatalogOfBlueskyRuns``: ``c[uid]``, ``c[scan_id]``, ``c[-1]``,
    ``c.v1`` (databroker's v1 ``Broker``) all work on it.
    """
    client = from_uri(config.uri, api_key=config.api_key)
    if beamline not in client:
        try:
            client.create_container(beamline, specs=[RUNS_SPEC])
        except Exception:
            # Another process may have created it between the check and the create.
            if beamline not in client:
                raise
    container = client[beamline]
    if "CatalogOfBlueskyRuns" not in {spec.name for spec in container.specs}:
        raise CatalogError(
            f"{config.uri}/api/v1/metadata/{beamline} exists but is not a catalogue of "
            f"bluesky runs (specs {list(container.specs)})"
        )
    return _v3(container)


def _v3(container: Container) -> Container:
    """The container with runs read in the v3 (SQL) layout, whatever was used before, as a
    `_RunCatalog` (a scan id naming several runs is an error).

    bluesky-tiled-plugins 2.0's ``.v1``/``.v2`` accessors ``copy.copy`` tiled's
    ``OneShotCachedMap`` of structure clients, which shares its dict, so using databroker's
    v1 API anywhere in the process switches every run client to the v2 layout (streams with
    'data'/'timestamps' sub-containers). ``.v3`` sets it back; it makes no request.
    """
    v3 = container.v3
    return _RunCatalog(v3.context, item=v3.item, structure_clients=v3.structure_clients)


class AmbiguousScanIdError(HutchError, ValueError):
    """A scan id names more than one run (runs from before scan numbers were counted per
    beamline and data directory, `hutch.scan_ids`); the message lists them by uid."""


#: Runs an ambiguous scan id's error names at most.
_AMBIGUOUS_SHOWN = 5


class _RunCatalog(CatalogOfBlueskyRuns):
    """bluesky-tiled-plugins' catalogue of runs, where ``catalog[N]`` (and
    ``catalog.scan_id[N]``) is the one run with scan id N, or `AmbiguousScanIdError` if
    several have it, instead of the newest of them."""

    def _lookup_by_scan_id(self, scan_id):
        found = self.search(Eq("start.scan_id", scan_id))
        runs = found.values().head(_AMBIGUOUS_SHOWN + 1)
        if not runs:
            raise KeyError(f"No match for scan_id={scan_id}")
        if len(runs) == 1:
            return runs[0]
        total = len(found) if len(runs) > _AMBIGUOUS_SHOWN else len(runs)  # one more request
        named = ", ".join(_run_label(run) for run in runs[:_AMBIGUOUS_SHOWN])
        if total > _AMBIGUOUS_SHOWN:
            named += f" and {total - _AMBIGUOUS_SHOWN} more"
        raise AmbiguousScanIdError(
            f"scan id {scan_id} names {total} runs: {named}; "
            f"give the run's uid instead (its first 8 characters are enough)"
        )


def _run_label(run: Container) -> str:
    """``1a2b3c4d (count, 2025-06-01 10:00:00 UTC)``: a run as an error message names it."""
    start = run.metadata["start"]
    when = datetime.fromtimestamp(start["time"], UTC)
    return f"{start['uid'][:8]} ({start.get('plan_name', '?')}, {when:%Y-%m-%d %H:%M:%S} UTC)"


def make_tiled_writer(container: Container, batch_size: int = DEFAULT_BATCH_SIZE) -> TiledWriter:
    """A RunEngine callback writing every run's documents into ``container``.

    Events are sent ``batch_size`` at a time and the rest at the run's stop document
    (see ``DEFAULT_BATCH_SIZE``).  Subscribe it with ``RE.subscribe(writer)``.
    """
    return TiledWriter(container, batch_size=batch_size)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def _event_counts(run: Container) -> dict[str, int]:
    stop = run.metadata.get("stop") or {}
    if "num_events" in stop:  # closed run: the stop document has the count, no extra request
        return dict(stop["num_events"])
    # Open run: every stream has a seq_num column as long as the events written so far.
    return {name: int(run[name]["seq_num"].shape[0]) for name in run}


def run_summaries(container: Container, limit: int = 20) -> list[RunSummary]:
    """Summaries of the ``limit`` most recent runs in ``container``, newest last.

    Only those runs are fetched (tiled slices the container server-side in insertion
    order); an open run has ``exit_status`` None and the number of events written so far.
    """
    return search_runs(container, limit=limit)


def search_runs(
    container: Container,
    *,
    sample: str | None = None,
    proposal: str | None = None,
    plan_name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    exit_status: str | None = None,
    text: str | None = None,
    limit: int = 20,
) -> list[RunSummary]:
    """Summaries of the ``limit`` most recent runs matching every criterion given, newest last.

    - ``sample``: the start document's ``sample``, a string or a dict with that ``name``;
    - ``proposal``, ``plan_name``: equal to the start document's field (a proposal made of
      digits also matches one stored as a number);
    - ``since`` (inclusive) and ``until`` (exclusive): the run's start time; a naive
      datetime is local time, as in ``datetime.timestamp()``;
    - ``exit_status``: ``'success'``, ``'fail'`` or ``'abort'`` from the stop document, or
      ``OPEN`` (``'open'``) for runs that have none (still running, or their writer died);
    - ``text``: every word of it (case-insensitive, whole words) occurs in the run's
      metadata, the start and stop documents: tiled's ``FullText``, an SQLite FTS5 index
      or a PostgreSQL text search.  Words are split at anything but letters and digits
      (``Si_wafer-2`` is ``si wafer 2``).  On SQLite field names also match, as FTS5
      indexes the metadata's JSON text; PostgreSQL indexes string values only.

    The criteria are tiled queries, evaluated by the catalogue's database: only the runs
    returned are transferred, however many the catalogue holds (on PostgreSQL, equality
    and text criteria use tiled's GIN indexes on the metadata).  Raises ``ValueError`` for
    an unknown ``exit_status``, ``since`` after ``until``, a ``text`` without a word or a
    ``limit`` below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    found = _v3(container)
    # Keys are spelled in full: CatalogOfBlueskyRuns.search prefixes others with "start.".
    if proposal is not None:
        found = found.search(In("start.proposal", _str_or_number(proposal)))
    if plan_name is not None:
        found = found.search(Eq("start.plan_name", plan_name))
    if since is not None or until is not None:
        found = found.search(_time_range(since, until))
    if exit_status is not None:
        found = found.search(_exit_status_query(exit_status))
    if text is not None:
        words = _words(text)
        if not words:
            raise ValueError(f"text {text!r} has no word to search for")
        for word in words:
            found = found.search(FullText(word))
    if sample is None:
        return _summaries(found.values().page_size(_PAGE).tail(limit), container.uri)
    # tiled's queries are AND-ed; "sample is X or sample.name is X" is two searches, each
    # limited server-side, merged here (a run matches only one: sample is a str or a dict).
    runs = [
        *found.search(Eq("start.sample", sample)).values().page_size(_PAGE).tail(limit),
        *found.search(Eq("start.sample.name", sample)).values().page_size(_PAGE).tail(limit),
    ]
    runs.sort(key=lambda run: run.metadata["start"]["time"])
    return _summaries(runs[-limit:], container.uri)


# tiled serves at most 300 runs per request; longer listings take several pages.
_PAGE = 300

# The ``exit_status`` that selects runs without a stop document.
OPEN = "open"
EXIT_STATUSES = ("success", "fail", "abort", OPEN)


def _exit_status_query(exit_status: str) -> Eq | KeyPresent:
    if exit_status not in EXIT_STATUSES:
        raise ValueError(
            f"exit_status must be one of {', '.join(EXIT_STATUSES)}, not {exit_status!r}"
        )
    if exit_status == OPEN:
        return KeyPresent("stop.exit_status", exists=False)
    return Eq("stop.exit_status", exit_status)


def _str_or_number(value: str) -> list[str | int]:
    """The stored forms a value typed as text may have: "1234" may be stored as 1234."""
    value = str(value)
    return [value, int(value)] if value.isascii() and value.isdigit() else [value]


def _time_range(since: datetime | None, until: datetime | None) -> TimeRange:
    """bluesky-tiled-plugins' query on the start time, from datetimes."""
    start = None if since is None else since.timestamp()
    end = None if until is None else until.timestamp()
    if start is not None and end is not None and start > end:
        raise ValueError(f"since ({since.isoformat()}) is after until ({until.isoformat()})")
    # Timestamps are absolute, so the time zone TimeRange wants for strings plays no part.
    return TimeRange(timezone="UTC", since=start, until=end)


def _words(text: str) -> list[str]:
    """The words of a free-text search, lower case.

    Both full-text engines split text at anything but letters and digits; searching word
    by word keeps their query syntaxes (FTS5's quotes, AND/OR/NOT, PostgreSQL's & | !)
    out of the user's text, and lower case keeps FTS5 from reading a word as an operator.
    """
    return list(dict.fromkeys(re.findall(r"[^\W_]+", text.lower())))


def _summaries(runs: Iterable[Container], base: str) -> list[RunSummary]:
    summaries = []
    for run in runs:
        start = run.metadata["start"]
        stop = run.metadata.get("stop") or {}
        summaries.append(
            RunSummary(
                uid=start["uid"],
                scan_id=start.get("scan_id"),
                plan_name=start.get("plan_name"),
                start_time=datetime.fromtimestamp(start["time"], UTC),
                exit_status=stop.get("exit_status"),
                events=_event_counts(run),
                uri=f"{base}/{start['uid']}",
            )
        )
    return summaries


def get_run(container: Container, key: str | int) -> Container:
    """One run by uid (or a unique uid prefix of 5+ characters), scan_id, or -N for the Nth
    newest measured run (not counting derived runs).

    Raises ``KeyError`` if there is no such run, `AmbiguousScanIdError` (a ``ValueError``)
    if several runs have the scan id, ``ValueError`` for a uid prefix too short or shared.
    """
    runs = _v3(container)
    if isinstance(key, int) and key < 0:
        # The Nth newest measurement: derived runs (reductions, ``start.raw_uid``) follow
        # their raw run and are found by uid.
        runs = runs.search(KeyPresent("start.raw_uid", exists=False))
    try:
        return runs[key]
    except IndexError:  # -N beyond the number of runs
        raise KeyError(key) from None


def documents_of(run: Container) -> Iterator[tuple[str, dict[str, Any]]]:
    """Replay a run's bluesky documents (start, descriptors, events, ..., stop) from tiled.

    The server rebuilds them from what it stored, so this is what a consumer of the
    catalogue sees; events may come back as individual ``event`` documents.
    """
    for name, doc in run.documents():
        yield name, dict(doc)
