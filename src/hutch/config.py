"""Where hutch keeps its data and how it reaches its services, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hutch.errors import HutchError

__all__ = ["Settings", "SettingsError", "redact_uri"]


class SettingsError(HutchError, ValueError):
    """A setting (usually from the environment) has a value hutch cannot use."""


def redact_uri(uri: str) -> str:
    """``uri`` with its password, if any, replaced by ``***`` (for logs, state and errors)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _database_uri(uri: str | None) -> str | None:
    """The catalogue database as tiled wants it (``postgresql://``), or None for SQLite."""
    if not uri:
        return None
    scheme, sep, rest = uri.partition("://")
    # tiled adds its async driver (asyncpg) itself and needs the bare scheme for table
    # storage, so a driver suffix or another database is refused here, not in the server log.
    if not sep or scheme not in ("postgresql", "postgres") or not rest:
        raise SettingsError(
            f"HUTCH_CATALOG_DATABASE must be a PostgreSQL URI like "
            f"postgresql://user@host:5432/dbname, not {redact_uri(uri)!r}"
        )
    return f"postgresql://{rest}"


@dataclass(frozen=True)
class Settings:
    """Locations and ports shared by every hutch command of one installation.

    ``HUTCH_DATA_DIR`` (default ``./hutch-data``) holds NeXus files, plots, the embedded
    catalogue and the state files of background services; ``HUTCH_CATALOG_PORT`` (default
    8765) is the embedded catalogue's port; ``HUTCH_CA_PORT`` overrides the profile's
    simulator port.  ``HUTCH_CATALOG_HOST`` (default 127.0.0.1, loopback only) is the
    address the embedded catalogue listens on: another address (a beamline network's, or
    0.0.0.0 for all) makes it reachable from other machines, still only with its API key.
    ``HUTCH_CATALOG_DATABASE`` (unset by default: SQLite and DuckDB files
    under ``catalog_dir``) is a ``postgresql://user@host:port/dbname`` URI of an existing
    database in which the embedded catalogue keeps its catalogue and event tables; keep the
    password out of it (``PGPASSWORD`` or ``~/.pgpass`` are read by both of tiled's drivers).
    """

    data_dir: Path
    catalog_port: int = 8765
    ca_port: int | None = None
    catalog_database: str | None = None
    catalog_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "catalog_database", _database_uri(self.catalog_database))

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike | None = None) -> Settings:
        """The settings from ``HUTCH_*`` environment variables; ``data_dir`` wins over theirs."""
        root = data_dir or os.environ.get("HUTCH_DATA_DIR") or "hutch-data"
        ca_port = os.environ.get("HUTCH_CA_PORT")
        return cls(
            data_dir=Path(root).resolve(),
            catalog_port=int(os.environ.get("HUTCH_CATALOG_PORT", "8765")),
            ca_port=int(ca_port) if ca_port else None,
            catalog_database=os.environ.get("HUTCH_CATALOG_DATABASE") or None,
            catalog_host=os.environ.get("HUTCH_CATALOG_HOST") or "127.0.0.1",
        )

    @property
    def catalog_address(self) -> str:
        """Where this machine's clients reach the embedded catalogue: its listening address,
        or loopback when it listens on every address."""
        return "127.0.0.1" if self.catalog_host in ("0.0.0.0", "::", "") else self.catalog_host

    @property
    def nexus_dir(self) -> Path:
        return self.data_dir / "nexus"

    @property
    def detector_dir(self) -> Path:
        """Where detectors write their own files (area detector frames, PandA captures); NeXus
        files link to them, and the catalogue serves them from here."""
        return self.data_dir / "detectors"

    @property
    def plot_dir(self) -> Path:
        return self.data_dir / "plots"

    @property
    def catalog_dir(self) -> Path:
        return self.data_dir / "catalog"

    @property
    def run_dir(self) -> Path:
        """State, pid and log files of background services (simulators, catalogue)."""
        return self.data_dir / "run"
