"""Channel Access environment for hutch's simulators and clients.

libca (used by aioca and pyepics) reads these variables once, when a process creates its CA
context, so clients must be configured before the first PV is touched.
"""

from __future__ import annotations

import os

__all__ = ["ca_client_env", "ca_server_env", "configure_ca_client"]

LOOPBACK = "127.0.0.1"


def ca_server_env(port: int, host: str = LOOPBACK) -> dict[str, str]:
    """Environment for a CA server bound to ``host:port``, beaconing only to loopback."""
    return {
        "EPICS_CAS_INTF_ADDR_LIST": host,
        "EPICS_CAS_SERVER_PORT": str(port),
        # caproto's server reads the client-side name for its TCP/UDP port.
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CAS_BEACON_ADDR_LIST": LOOPBACK,
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    }


def ca_client_env(*ports: int, host: str = LOOPBACK) -> dict[str, str]:
    """Environment for a CA client that searches only the servers at ``host:port``, ..."""
    return {
        "EPICS_CA_ADDR_LIST": " ".join(f"{host}:{port}" for port in ports),
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        # Large enough for a waveform of a few MB; libca's default is 16 kB.
        "EPICS_CA_MAX_ARRAY_BYTES": "100000000",
    }


def configure_ca_client(*ports: int) -> None:
    """Point this process's CA clients at the servers on ``ports`` (before any CA use)."""
    os.environ.update(ca_client_env(*ports))
