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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from bluesky_tiled_plugins import TiledWriter
from bluesky_tiled_plugins.queries import TimeRange
from tiled.client import from_uri
from tiled.client.container import Container
from tiled.queries import Eq, FullText, In, KeyPresent
from tiled.structures.core import Spec

from hutch import services
from hutch.config import Settings, redact_uri
from hutch.errors import HutchError

__all__ = [
    "EXIT_STATUSES",
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

_STATE_FILE = "catalog.json"
_LOG_FILE = "catalog.log"
_LOCK_FILE = "catalog.lock"
_SERVER_CONFIG = "catalog-config.yml"
_API_KEY_FILE = "api_key"
# The environment variable through which the server gets the PostgreSQL URI.
_DATABASE_ENV = "HUTCH_CATALOG_DATABASE"


class CatalogError(HutchError, RuntimeError):
    """The catalogue could not be started, reached or used."""


@dataclass(frozen=True)
class CatalogConfig:
    """How to reach the catalogue: its base URI and the API key that may write to it."""

    uri: str
    api_key: str | None
    external: bool = False


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
# The embedded server
# ---------------------------------------------------------------------------------------


def _external_config() -> CatalogConfig | None:
    uri = os.environ.get("HUTCH_CATALOG_URI")
    if not uri:
        return None
    return CatalogConfig(
        uri=uri.rstrip("/"), api_key=os.environ.get("HUTCH_CATALOG_API_KEY"), external=True
    )


def _api_key(settings: Settings) -> str:
    """The embedded catalogue's single-user key, generated once and readable by the owner only.

    The key is written to a private temporary file and linked into place, so a process or
    thread racing to start the catalogue never reads a half-written (empty) key.
    """
    path = settings.catalog_dir / _API_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    # tiled only accepts alphanumeric keys (they end up in ?api_key= URLs).
    key = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    try:
        os.link(tmp, path)  # atomic, and refuses if another starter linked its key first
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink()
    return key


def _server_config(settings: Settings) -> str:
    """The tiled service configuration of the embedded catalogue.

    This mirrors ``tiled.server.SimpleTiledServer``'s writable storage (SQLite catalogue,
    a file directory and a DuckDB database for tables, an in-memory streaming cache).  It
    is served with ``tiled serve config`` rather than ``tiled serve catalog`` because only
    a configuration file can register bluesky-tiled-plugins' JSON-seq exporter, which is
    what replays a run's documents (``documents_of``).

    With ``settings.catalog_database`` (PostgreSQL) the catalogue *and* the event tables go
    to that database; only array files stay under ``catalog_dir``.  The URI is referenced
    as ``$HUTCH_CATALOG_DATABASE`` (tiled expands variables in its configuration) and
    handed over in the server's environment, so no credential is written to disk.
    """
    root = settings.catalog_dir
    if settings.catalog_database is None:
        catalog_uri = f"sqlite:///{root / 'catalog.db'}"
        table_storage = f"duckdb:///{root / 'storage.duckdb'}"
        # Initialising runs `tiled catalog init` in a subprocess (~3 s);
        # only a new catalogue needs it.
        init = not (root / "catalog.db").exists()
    else:
        catalog_uri = f"${_DATABASE_ENV}"
        # Event tables in PostgreSQL rather than DuckDB: a DuckDB file allows one
        # connection per server (tiled gives it a single-connection pool, so every table
        # read and write of every client queues on it) and lives on this machine only,
        # while tiled's SQL table adapter supports PostgreSQL natively (adbc driver,
        # pooled) and keeps a run's metadata and events in one database to back up.
        table_storage = catalog_uri
        # A database may be new on every start; tiled's `--if-not-exists` check is cheap
        # next to the subprocess that runs it, and there is no local file to test.
        init = True
    config = {
        "trees": [
            {
                "path": "/",
                "tree": "catalog",
                "args": {
                    "uri": catalog_uri,
                    "writable_storage": [str(root / "data"), table_storage],
                    # Detectors' own files, which runs reference (StreamResource).
                    "readable_storage": [str(settings.detector_dir)],
                    "init_if_not_exists": init,
                },
            }
        ],
        "streaming_cache": {"uri": "memory"},
        "media_types": {
            "BlueskyRun": {
                "application/json-seq": "bluesky_tiled_plugins.exporters:json_seq_exporter"
            }
        },
    }
    return json.dumps(config, indent=2)  # JSON is YAML


def _state_path(settings: Settings) -> Path:
    return settings.run_dir / _STATE_FILE


def _is_tiled_process(pid: int) -> bool:
    """True if ``pid`` is alive and is a tiled server (not a recycled pid or a zombie)."""
    return services.process_alive(pid, marker=b"tiled")


def _answers(config: CatalogConfig, timeout: float = 2.0) -> bool:
    """True if the server is ready and accepts our key (so it is ours, not a stranger's)."""
    headers = {"Authorization": f"Apikey {config.api_key}"} if config.api_key else {}
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            if client.get(f"{config.uri}/healthz").status_code != 200:
                return False
            return client.get(f"{config.uri}/api/v1/", headers=headers).status_code == 200
    except httpx.HTTPError:
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _port_taken_error(settings: Settings) -> CatalogError:
    return CatalogError(
        f"cannot start the catalogue: port {settings.catalog_port} on "
        f"{settings.catalog_host} is used by another program; "
        f"set HUTCH_CATALOG_PORT to a free port"
    )


@contextlib.contextmanager
def _start_lock(settings: Settings) -> Iterator[None]:
    """Serialise check-and-start across processes (session, queue server, CLI)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.run_dir / _LOCK_FILE, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_catalog(settings: Settings, timeout: float = 60) -> CatalogConfig:
    """Return how to reach the catalogue, starting the embedded server if it is not running.

    With ``HUTCH_CATALOG_URI`` set, that external server is used and nothing is started.
    Otherwise a server recorded in ``run_dir/catalog.json`` is reused if it answers; if not,
    ``tiled serve`` is started detached on ``settings.catalog_port`` (log in
    ``run_dir/catalog.log``) and this waits up to ``timeout`` seconds until it serves.
    Raises ``CatalogError`` if the port is taken or the server does not come up.
    """
    if (external := _external_config()) is not None:
        return external
    port = settings.catalog_port
    config = CatalogConfig(
        uri=f"http://{settings.catalog_address}:{port}", api_key=_api_key(settings)
    )
    with _start_lock(settings):
        state = services.read_state(_state_path(settings))
        if state is not None:
            pid = state.get("pid")
            if pid and _is_tiled_process(pid):
                _check_same_database(state, settings)
                recorded = CatalogConfig(uri=state["uri"], api_key=config.api_key)
                # A generous timeout: a busy server is slow, and replacing it would cut
                # off every other session writing to it.
                if _answers(recorded, timeout=10.0):
                    return recorded
                # Alive but deaf (hung, or started on another port): replace it.
                services.terminate(pid)
            _state_path(settings).unlink(missing_ok=True)
        if not _port_free(settings.catalog_host, port):
            raise _port_taken_error(settings)
        return _start(settings, config, timeout)


def _database_label(settings: Settings) -> str:
    """Which database the catalogue keeps its runs in, without a password."""
    if settings.catalog_database is None:
        return f"sqlite:///{settings.catalog_dir / 'catalog.db'}"
    return redact_uri(settings.catalog_database)


def _check_same_database(state: dict[str, Any], settings: Settings) -> None:
    """Refuse to hand out a running server that keeps its runs somewhere else than configured.

    Otherwise changing ``HUTCH_CATALOG_DATABASE`` would silently keep writing to the old
    database until the server happened to be restarted.
    """
    running = state.get("database") or _database_label(Settings(data_dir=settings.data_dir))
    if running != _database_label(settings):
        raise CatalogError(
            f"the catalogue running on port {state.get('port')} (pid {state.get('pid')}) "
            f"keeps its runs in {running}, but this configuration says "
            f"{_database_label(settings)}; stop it first: hutch catalog down"
        )


def _start(settings: Settings, config: CatalogConfig, timeout: float) -> CatalogConfig:
    port = settings.catalog_port
    (settings.catalog_dir / "data").mkdir(parents=True, exist_ok=True)
    server_config = settings.run_dir / _SERVER_CONFIG
    server_config.write_text(_server_config(settings))
    log_path = settings.run_dir / _LOG_FILE
    # The key goes through the environment, not argv, so `ps` does not show it.
    env = {**os.environ, "TILED_SINGLE_USER_API_KEY": config.api_key or ""}
    if settings.catalog_database is not None:
        env[_DATABASE_ENV] = settings.catalog_database
    started = time.monotonic()
    proc = services.spawn_detached(
        [
            sys.executable,
            "-m",
            "hutch.tiled_server",  # tiled's `tiled serve`, free-text search fixed
            "serve",
            "config",
            str(server_config),
            "--host",
            settings.catalog_host,
            "--port",
            str(port),
        ],
        log_path,
        env=env,
        # tiled prints the connection URL, key included, so the log is private like the key.
        log_mode=0o600,
    )
    services.write_state(
        _state_path(settings),
        {
            "pid": proc.pid,
            "port": port,
            "uri": config.uri,
            "started_at": datetime.now(UTC).isoformat(),
            "log": str(log_path),
            "database": _database_label(settings),
        },
    )
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _state_path(settings).unlink(missing_ok=True)
            tail = services.log_tail(log_path)
            if "address already in use" in tail.lower():
                raise _port_taken_error(settings)
            raise CatalogError(
                f"the catalogue server on port {port} exited with status {proc.returncode}; "
                f"end of {log_path}:\n{tail}"
            )
        if _answers(config, timeout=1.0):
            return config
        time.sleep(0.2)
    services.terminate(proc.pid)
    _state_path(settings).unlink(missing_ok=True)
    raise CatalogError(
        f"the catalogue server on port {port} was not ready after {timeout:.0f} s; "
        f"end of {log_path}:\n{services.log_tail(log_path)}"
    )


def stop_catalog(settings: Settings) -> bool:
    """Stop the embedded catalogue server; return True if one was running.

    The data stays on disk: the next ``ensure_catalog`` serves the same runs again.
    An external catalogue (``HUTCH_CATALOG_URI``) is never stopped.
    """
    if _external_config() is not None:
        return False
    with _start_lock(settings):
        state = services.read_state(_state_path(settings))
        _state_path(settings).unlink(missing_ok=True)
        if state is None or not _is_tiled_process(state.get("pid", 0)):
            return False
        services.terminate(state["pid"])
        return True


def catalog_status(settings: Settings) -> dict[str, Any] | None:
    """The catalogue's state (uri, pid, port, started_at, ready), or None if none is running."""
    if (external := _external_config()) is not None:
        return {"uri": external.uri, "external": True, "ready": _answers(external)}
    state = services.read_state(_state_path(settings))
    if state is None or not _is_tiled_process(state.get("pid", 0)):
        return None
    config = CatalogConfig(uri=state["uri"], api_key=_api_key(settings))
    return {**state, "external": False, "ready": _answers(config)}


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
    """The container with runs read in the v3 (SQL) layout, whatever was used before.

    bluesky-tiled-plugins 2.0's ``.v1``/``.v2`` accessors ``copy.copy`` tiled's
    ``OneShotCachedMap`` of structure clients, which shares its dict, so using databroker's
    v1 API anywhere in the process switches every run client to the v2 layout (streams with
    'data'/'timestamps' sub-containers). ``.v3`` sets it back; it makes no request.
    """
    return container.v3


def make_tiled_writer(container: Container, batch_size: int = DEFAULT_BATCH_SIZE) -> TiledWriter:
    """A RunEngine callback writing every run's documents into ``container``.

    Events are sent ``batch_size`` at a time and the rest at the run's stop document
    (see ``DEFAULT_BATCH_SIZE``).  Subscribe it with ``RE.subscribe(writer)``.
    """
    return TiledWriter(container, batch_size=batch_size)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def run_uri(config: CatalogConfig, beamline: str, uid: str) -> str:
    """The catalogue URI of one run (its tiled metadata endpoint)."""
    return f"{config.uri}/api/v1/metadata/{beamline}/{uid}"


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
    """One run by uid (or a unique uid prefix of 5+ characters), scan_id, or -N for the Nth newest.

    Raises ``KeyError`` if there is no such run.
    """
    try:
        return _v3(container)[key]
    except IndexError:  # -N beyond the number of runs
        raise KeyError(key) from None


def documents_of(run: Container) -> Iterator[tuple[str, dict[str, Any]]]:
    """Replay a run's bluesky documents (start, descriptors, events, ..., stop) from tiled.

    The server rebuilds them from what it stored, so this is what a consumer of the
    catalogue sees; events may come back as individual ``event`` documents.
    """
    for name, doc in run.documents():
        yield name, dict(doc)
