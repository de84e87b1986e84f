"""Shared fixtures: free ports, the demo profile, and one simulated beamline per test worker.

Channel Access stays on loopback: nothing in the suite searches the network.
"""

from __future__ import annotations

import os

# Before anything imports a CA library: libca reads these once per process.
for _key, _value in {
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    "EPICS_CA_MAX_ARRAY_BYTES": "100000000",
}.items():
    os.environ.setdefault(_key, _value)

import random  # noqa: E402
import socket  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402

from hutch.ca import configure_ca_client  # noqa: E402
from hutch.config import Settings  # noqa: E402
from hutch.profile import Profile, load_profile  # noqa: E402


def _port_range() -> range:
    """This worker's share of 20000-31999, below Linux's ephemeral range (32768-60999).

    Ports the kernel hands out for outgoing connections (tiled clients, CA clients) never
    land here, and two xdist workers never pick the same port.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    start = 20000 + (index % 6) * 2000
    return range(start, start + 2000)


def _free_port() -> int:
    """A loopback port free for both TCP and UDP (a CA server needs both)."""
    for port in random.sample(_port_range(), 200):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free TCP+UDP port on 127.0.0.1 in {_port_range()}")


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a loopback port free for TCP and UDP."""
    return _free_port


@pytest.fixture(scope="session")
def demo_profile() -> Profile:
    """The demo beamline profile."""
    return load_profile("demo")


@pytest.fixture(scope="session")
def tof_profile() -> Profile:
    """The TOF neutron instrument's profile."""
    return load_profile("tof")


_BEAMLINES: dict[str, object] = {}


@pytest.fixture(scope="session")
def sim(tmp_path_factory, demo_profile, tof_profile):
    """The demo beamline simulated on a port of its own (one per xdist worker), and beside
    it the TOF instrument (`tof_sim`): libca reads its server list once per process, so
    both are started before this process's CA clients point at their IOCs.

    Starting them uses caproto's client, not libca; yields the demo's SimState.
    """
    from hutch import simulators

    settings = Settings(data_dir=tmp_path_factory.mktemp("hutch-data"))
    states = []
    try:
        for profile in (demo_profile, tof_profile):
            state = simulators.start(profile, _free_port(), settings, timeout=60)
            states.append(state)
            _BEAMLINES[profile.name] = state
        configure_ca_client(*(port for state in states for port in state.ports))
        yield states[0]
    finally:
        for profile in (demo_profile, tof_profile)[: len(states)]:
            simulators.stop(profile.name, settings)


@pytest.fixture(scope="session")
def tof_sim(sim):
    """The TOF instrument's simulator (its SimState), started with the demo's (`sim`)."""
    return _BEAMLINES["tof"]


@pytest.fixture(scope="session")
def RE(sim):
    """A RunEngine whose event loop the ophyd-async devices of the session live on.

    One per process: aioca's callbacks need a loop that outlives every test.
    """
    from bluesky import RunEngine

    return RunEngine({}, call_returns_result=True)


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    """hutch settings of this worker: its own data dir and catalogue port."""
    return Settings(data_dir=tmp_path_factory.mktemp("session-data"), catalog_port=_free_port())


@pytest.fixture(scope="session")
def session(sim, RE, settings, demo_profile):
    """A hutch Session on the simulated demo beamline, with NeXus, plots and the catalogue.

    Uses the worker's RunEngine (and so its event loop); stops the catalogue at the end.
    """
    from hutch.catalog import stop_catalog
    from hutch.session import Session

    try:
        with Session(demo_profile, settings, live_table=False, RE=RE) as session:
            yield session
    finally:
        stop_catalog(settings)


@pytest.fixture
def ca(sim) -> Iterator[tuple[Callable, Callable]]:
    """(read, write) over CA to the session's simulator: ``read(pv)``, ``write(pv, v)``."""
    from hutch.simulators import ca_read, ca_write

    def read(pv: str):
        return ca_read(pv, sim.port, timeout=5.0)

    def write(pv: str, value, wait: bool = True, timeout: float = 60.0):
        ca_write(pv, value, sim.port, timeout=timeout, wait=wait)

    yield read, write


# PostgreSQL, the catalogue's scale option: one throwaway cluster per test worker.
from postgres import PostgresCluster, PostgresMissing, postgres_cluster  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this worker on 127.0.0.1; ``create_database()`` gives a URI.

    Fails (does not skip) when the server is not installed: the catalogue must be tested
    on PostgreSQL too, and ``bash .ci/setup --tests`` installs it.
    """
    try:
        with postgres_cluster(_free_port()) as cluster:
            yield cluster
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def session_docs(session) -> Iterator[list[tuple[str, dict]]]:
    """Every document of the session's runs during the test, as (name, doc)."""
    import copy

    collected: list[tuple[str, dict]] = []
    token = session.RE.subscribe(lambda name, doc: collected.append((name, copy.deepcopy(doc))))
    yield collected
    session.RE.unsubscribe(token)
