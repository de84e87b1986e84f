"""The embedded catalogue's server: started on demand, found, stopped; how to reach it.

What a session needs of the catalogue is its URI and API key (`ensure_catalog`), which
needs no tiled client: this module imports none, so a session starts without the client's
libraries (tiled, bluesky-tiled-plugins, dask, pandas: seconds), which only the recorder
process and the readers (`hutch.catalog`) load. The server is a tiled process
(``python -m hutch.tiled_server``) listening on 127.0.0.1 unless ``HUTCH_CATALOG_HOST`` says
otherwise; ``HUTCH_CATALOG_URI`` (and ``HUTCH_CATALOG_API_KEY``) select an external server
instead, and nothing is started. `hutch.catalog` re-exports these names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hutch import services
from hutch.config import Settings, redact_uri
from hutch.errors import HutchError

__all__ = [
    "CatalogConfig",
    "CatalogError",
    "catalog_status",
    "ensure_catalog",
    "run_uri",
    "stop_catalog",
]

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
    """True if the server is ready and accepts our key (so it is ours, not a stranger's).

    Two GETs with the standard library's client: a session asks this at every start, and
    an HTTP client library would cost it a tenth of a second of imports.
    """
    headers = {"Authorization": f"Apikey {config.api_key}"} if config.api_key else {}
    uri = urlsplit(config.uri)
    connection = (
        http.client.HTTPSConnection if uri.scheme == "https" else http.client.HTTPConnection
    )(uri.hostname or "", uri.port, timeout=timeout)
    try:
        for path, sent in (("/healthz", {}), ("/api/v1/", headers)):
            connection.request("GET", uri.path.rstrip("/") + path, headers=sent)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                return False
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


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


def run_uri(config: CatalogConfig, beamline: str, uid: str) -> str:
    """The catalogue URI of one run (its tiled metadata endpoint)."""
    return f"{config.uri}/api/v1/metadata/{beamline}/{uid}"
