"""Where hutch keeps its data and how it reaches its services, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Locations and ports shared by every hutch command of one installation.

    ``HUTCH_DATA_DIR`` (default ``./hutch-data``) holds NeXus files, plots, the embedded
    catalogue and the state files of background services; ``HUTCH_CATALOG_PORT`` (default
    8765) is the embedded catalogue's port; ``HUTCH_CA_PORT`` overrides the profile's
    simulator port.
    """

    data_dir: Path
    catalog_port: int = 8765
    ca_port: int | None = None

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike | None = None) -> Settings:
        root = data_dir or os.environ.get("HUTCH_DATA_DIR") or "hutch-data"
        ca_port = os.environ.get("HUTCH_CA_PORT")
        return cls(
            data_dir=Path(root).resolve(),
            catalog_port=int(os.environ.get("HUTCH_CATALOG_PORT", "8765")),
            ca_port=int(ca_port) if ca_port else None,
        )

    @property
    def nexus_dir(self) -> Path:
        return self.data_dir / "nexus"

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
