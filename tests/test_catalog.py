"""The embedded tiled catalogue: runs written by TiledWriter read back equal to the documents.

Every test that uses the module's catalogue runs twice: on the default SQLite catalogue and
on PostgreSQL (a throwaway cluster of the test worker, ``tests/postgres.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import httpx
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RequestAbort
from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns
from ophyd.sim import det, det4, motor, motor1, motor2
from tiled.client import from_uri

from hutch.catalog import (
    CatalogError,
    catalog_status,
    documents_of,
    ensure_catalog,
    get_run,
    make_tiled_writer,
    run_summaries,
    run_uri,
    runs_container,
    search_runs,
    stop_catalog,
)
from hutch.cli import main as hutch_main
from hutch.config import Settings, SettingsError, redact_uri

BEAMLINE = "testbl"
# Starting a catalogue takes ~10 s on an idle machine, far more on a loaded CI box.
START_TIMEOUT = 240


def _json(doc):
    """As the catalogue stores it: the RunEngine emits tuples where tiled gives back lists."""
    return json.loads(json.dumps(doc))


@pytest.fixture(autouse=True)
def _embedded_catalog(monkeypatch):
    """An external catalogue configured in the environment must not leak into these tests."""
    monkeypatch.delenv("HUTCH_CATALOG_URI", raising=False)
    monkeypatch.delenv("HUTCH_CATALOG_API_KEY", raising=False)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request) -> str:
    """The catalogue's database: the embedded default (SQLite) or PostgreSQL."""
    return request.param


def _database(request, backend: str) -> str | None:
    """``Settings.catalog_database`` for ``backend``: None, or a new PostgreSQL database."""
    if backend == "sqlite":
        return None
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture(scope="module")
def settings(request, backend, tmp_path_factory, free_port):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        catalog_port=free_port(),
        catalog_database=_database(request, backend),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HUTCH_CATALOG_URI", raising=False)
        ensure_catalog(settings, timeout=START_TIMEOUT)
        yield settings
        stop_catalog(settings)


@pytest.fixture(scope="module")
def catalog(settings):
    return ensure_catalog(settings)


@pytest.fixture
def RE(catalog):
    """A RunEngine writing into the beamline container, also keeping what it emitted."""
    RE = RunEngine({})
    container = runs_container(catalog, BEAMLINE)
    RE.writer_token = RE.subscribe(make_tiled_writer(container))
    RE.emitted = []
    RE.subscribe(lambda name, doc: RE.emitted.append((name, doc)))
    RE.container = container
    return RE


def test_scan_reads_back_equal_to_the_emitted_documents(RE, catalog):
    (uid,) = RE(bp.scan([det], motor, -1, 1, 7))
    emitted = RE.emitted
    start = next(doc for name, doc in emitted if name == "start")
    stop = next(doc for name, doc in emitted if name == "stop")
    (descriptor,) = [doc for name, doc in emitted if name == "descriptor"]
    events = [doc for name, doc in emitted if name == "event"]
    assert len(events) == 7

    run = get_run(RE.container, uid)
    assert uid in RE.container
    assert run.uri == run_uri(catalog, BEAMLINE, uid)
    assert dict(run.metadata["start"]) == _json(start)
    assert dict(run.metadata["stop"]) == _json(stop)
    assert run.metadata["stop"]["num_events"] == {"primary": 7}

    primary = run["primary"]
    for key in ("motor", "det"):
        expected = [e["data"][key] for e in events]
        np.testing.assert_array_equal(primary[key].read(), expected)
        np.testing.assert_array_equal(np.asarray(primary.read()[key]), expected)

    replayed = list(documents_of(run))
    names = [name for name, _ in replayed]
    assert names[0] == "start" and names[-1] == "stop"
    assert replayed[0][1] == _json(start)
    (replayed_descriptor,) = [doc for name, doc in replayed if name == "descriptor"]
    # The writer normalises descriptors to the newest schema, which adds dtype_numpy.
    replayed_keys = replayed_descriptor["data_keys"]
    assert replayed_keys.keys() == descriptor["data_keys"].keys()
    for key, data_key in _json(descriptor["data_keys"]).items():
        assert replayed_keys[key] == {**data_key, "dtype_numpy": replayed_keys[key]["dtype_numpy"]}
    assert replayed_descriptor["uid"] == descriptor["uid"]
    replayed_events = [doc for name, doc in replayed if name == "event"]
    assert [e["seq_num"] for e in replayed_events] == [e["seq_num"] for e in events]
    assert [e["data"] for e in replayed_events] == [e["data"] for e in events]
    assert replayed[-1][1]["exit_status"] == "success"

    # Lookups by scan_id and by recency find the same run.
    assert get_run(RE.container, start["scan_id"]).metadata["start"]["uid"] == uid
    assert get_run(RE.container, -1).metadata["start"]["uid"] == uid
    with pytest.raises(KeyError):
        get_run(RE.container, "no-such-uid")


def test_container_is_a_catalog_of_bluesky_runs_with_databroker_v1(RE):
    (uid,) = RE(bp.grid_scan([det4], motor1, -1, 1, 3, motor2, -1, 1, 2))
    container = RE.container
    assert isinstance(container, CatalogOfBlueskyRuns)
    assert [(s.name, s.version) for s in container.specs] == [("CatalogOfBlueskyRuns", "3.0")]

    # databroker's v1 Broker API on the same container.
    header = container.v1[uid]
    assert header.start["uid"] == uid
    table = header.table()
    assert len(table) == 6
    events = [doc for name, doc in RE.emitted if name == "event"]
    np.testing.assert_array_equal(table["det4"], [e["data"]["det4"] for e in events])


def test_run_summaries_list_open_failed_and_finished_runs_newest_last(RE, catalog):
    container = RE.container
    seen_while_open = []

    def failing_scan(n_before_failure):
        """A scan failing after some points; checks the catalogue while the run is open."""
        steps = []

        def per_step(detectors, step, pos_cache):
            if len(steps) == n_before_failure:
                seen_while_open.append(run_summaries(container, limit=1)[-1])
                raise RuntimeError("simulated beam loss")
            steps.append(step)
            yield from bps.one_nd_step(detectors, step, pos_cache)

        return bp.scan([det], motor, -1, 1, 10, per_step=per_step)

    (ok_uid,) = RE(bp.scan([det], motor, -1, 1, 7))
    # A writer flushing every 2 events shows the open run's progress.
    RE.subscribe(make_tiled_writer(container, batch_size=2))
    RE.unsubscribe(RE.writer_token)  # one writer per run
    with pytest.raises(RuntimeError, match="simulated beam loss"):
        RE(failing_scan(4))
    failed_uid = next(doc["uid"] for name, doc in reversed(RE.emitted) if name == "start")

    (open_summary,) = seen_while_open
    assert open_summary.uid == failed_uid
    assert open_summary.exit_status is None
    assert open_summary.events == {"primary": 4}

    summaries = run_summaries(container, limit=2)
    assert [s.uid for s in summaries] == [ok_uid, failed_uid]
    ok, failed = summaries
    assert (ok.exit_status, ok.events, ok.plan_name) == ("success", {"primary": 7}, "scan")
    assert (failed.exit_status, failed.events) == ("fail", {"primary": 4})
    assert failed.scan_id == ok.scan_id + 1
    assert failed.uri == run_uri(catalog, BEAMLINE, failed_uid)
    assert failed.start_time.tzinfo is not None
    assert json.loads(json.dumps(failed.to_json()))["exit_status"] == "fail"

    run = get_run(container, failed_uid)
    assert run.metadata["stop"]["exit_status"] == "fail"
    emitted_det = [
        doc["data"]["det"]
        for name, doc in RE.emitted
        if name == "event" and doc["descriptor"] in {d["uid"] for d in run.descriptors}
    ]
    np.testing.assert_array_equal(run["primary"]["det"].read(), emitted_det)
    assert len(run_summaries(container, limit=100)) == len(list(container))


def test_writing_without_the_api_key_is_refused(catalog):
    runs_container(catalog, BEAMLINE)
    body = {"data": {"structure_family": "container", "structure": None, "specs": []}}
    url = f"{catalog.uri}/api/v1/metadata/{BEAMLINE}"
    with httpx.Client(trust_env=False) as client:
        for headers in ({}, {"Authorization": "Apikey wrongkey"}):
            response = client.post(url, json=body, headers=headers)
            assert response.status_code in (401, 403), response.text
            assert client.get(url, headers=headers).status_code in (401, 403)
        authorized = {"Authorization": f"Apikey {catalog.api_key}"}
        assert client.get(url, headers=authorized).status_code == 200


def test_api_key_is_private_and_alphanumeric(settings, catalog):
    key_file = settings.catalog_dir / "api_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((settings.run_dir / "catalog.log").stat().st_mode) == 0o600
    assert catalog.api_key == key_file.read_text().strip() and catalog.api_key.isalnum()
    # The key is handed over in the environment, never on the command line.
    pid = catalog_status(settings)["pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        assert catalog.api_key.encode() not in cmdline.read()


def test_server_is_reused_stopped_and_keeps_runs_across_restarts(
    request, backend, tmp_path, free_port
):
    settings = Settings(
        data_dir=tmp_path, catalog_port=free_port(), catalog_database=_database(request, backend)
    )
    assert catalog_status(settings) is None
    # Two callers at once get one server: the start is serialised by a file lock.
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: ensure_catalog(settings, START_TIMEOUT), range(2))
    try:
        assert first == second
        status = catalog_status(settings)
        assert status["ready"] and status["port"] == settings.catalog_port
        assert ensure_catalog(settings) == first
        assert catalog_status(settings)["pid"] == status["pid"]

        RE = RunEngine({})
        RE.subscribe(make_tiled_writer(runs_container(first, BEAMLINE)))
        (uid,) = RE(bp.count([det], 3))

        assert stop_catalog(settings) is True
        assert catalog_status(settings) is None
        assert stop_catalog(settings) is False

        again = ensure_catalog(settings, timeout=START_TIMEOUT)
        assert catalog_status(settings)["pid"] != status["pid"]
        run = get_run(runs_container(again, BEAMLINE), uid)
        assert run.metadata["stop"]["num_events"] == {"primary": 3}
        np.testing.assert_array_equal(run["primary"]["det"].read().shape, (3,))
    finally:
        stop_catalog(settings)


def test_a_taken_port_is_reported_with_the_setting_to_change(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = Settings(data_dir=tmp_path, catalog_port=port)
        with pytest.raises(CatalogError, match=rf"port {port}.*HUTCH_CATALOG_PORT"):
            ensure_catalog(settings)
    assert catalog_status(settings) is None


def test_external_catalog_from_the_environment_starts_nothing(tmp_path, monkeypatch, free_port):
    monkeypatch.setenv("HUTCH_CATALOG_URI", "http://tiled.example:8000/")
    monkeypatch.setenv("HUTCH_CATALOG_API_KEY", "abc123")
    settings = Settings(data_dir=tmp_path, catalog_port=free_port())
    config = ensure_catalog(settings)
    assert (config.uri, config.api_key, config.external) == (
        "http://tiled.example:8000",
        "abc123",
        True,
    )
    assert not (settings.run_dir / "catalog.json").exists()
    assert stop_catalog(settings) is False
    assert not os.path.exists(settings.catalog_dir / "api_key")


def test_concurrent_starters_all_read_the_same_complete_key(tmp_path):
    """Racing starters once read the key file while it was still empty (tiled then refused)."""
    from hutch.catalog import _api_key

    for attempt in range(20):
        settings = Settings(data_dir=tmp_path / str(attempt))
        with ThreadPoolExecutor(8) as pool:
            keys = set(pool.map(lambda _, s=settings: _api_key(s), range(8)))
        (key,) = keys
        assert key.isalnum() and len(key) == 64


def _listening(port: int) -> list[str]:
    """The addresses (as /proc/net/tcp spells them) with a socket listening on ``port``."""
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if local.endswith(f":{port:04X}") and state == "0A":  # 0A: LISTEN
                    listening.append(local.split(":")[0])
    return listening


def test_server_listens_on_loopback_only(settings, catalog):
    assert _listening(settings.catalog_port) == ["0100007F"]  # 127.0.0.1, no other socket


def test_server_listens_where_configured(tmp_path, monkeypatch, free_port):
    """HUTCH_CATALOG_HOST moves the server to another address (here 127.0.0.2, another
    loopback address, so nothing leaves the machine); clients follow it, the key still rules."""
    monkeypatch.setenv("HUTCH_CATALOG_HOST", "127.0.0.2")
    monkeypatch.setenv("HUTCH_CATALOG_PORT", str(free_port()))
    settings = Settings.from_env(tmp_path)
    try:
        config = ensure_catalog(settings, timeout=START_TIMEOUT)
        assert config.uri == f"http://127.0.0.2:{settings.catalog_port}"
        assert _listening(settings.catalog_port) == ["0200007F"]  # 127.0.0.2 only
        container = runs_container(config, BEAMLINE)
        assert BEAMLINE in from_uri(config.uri, api_key=config.api_key)
        assert len(container) == 0
        with httpx.Client(trust_env=False) as client:
            refused = client.post(f"{config.uri}/api/v1/metadata/", json={})
        assert refused.status_code in (401, 403)
    finally:
        stop_catalog(settings)


def _pg_tables(uri: str) -> set[str]:
    import asyncpg

    async def tables() -> set[str]:
        conn = await asyncpg.connect(uri)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        finally:
            await conn.close()
        return {row["tablename"] for row in rows}

    return asyncio.run(tables())


def test_the_configured_database_holds_the_catalogue_and_the_event_tables(RE, settings):
    root = settings.catalog_dir
    tables_before = (
        set() if settings.catalog_database is None else _pg_tables(settings.catalog_database)
    )
    (uid,) = RE(bp.count([det], 2))
    np.testing.assert_array_equal(get_run(RE.container, uid)["primary"]["det"].read().shape, (2,))
    status = catalog_status(settings)
    if settings.catalog_database is None:
        assert (root / "catalog.db").is_file() and (root / "storage.duckdb").is_file()
        assert status["database"] == f"sqlite:///{root / 'catalog.db'}"
        return
    assert not (root / "catalog.db").exists() and not (root / "storage.duckdb").exists()
    assert status["database"] == settings.catalog_database
    # The URI reaches the server through its environment, not the configuration file.
    config_text = (settings.run_dir / "catalog-config.yml").read_text()
    assert settings.catalog_database not in config_text
    tables = _pg_tables(settings.catalog_database)
    assert {"nodes", "data_sources", "assets"} <= tables
    assert any(name.startswith("table_") for name in tables - tables_before)  # the new events


def test_a_running_catalogue_on_another_database_is_not_reused(settings, catalog):
    other = None if settings.catalog_database else "postgresql://nobody@127.0.0.1:9/elsewhere"
    moved = Settings(
        data_dir=settings.data_dir, catalog_port=settings.catalog_port, catalog_database=other
    )
    with pytest.raises(CatalogError, match="hutch catalog down"):
        ensure_catalog(moved)
    assert catalog_status(settings)["ready"]


def test_catalog_database_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("HUTCH_CATALOG_DATABASE", "postgres://bl@db.example:5433/runs")
    assert Settings.from_env(tmp_path).catalog_database == "postgresql://bl@db.example:5433/runs"
    monkeypatch.setenv("HUTCH_CATALOG_DATABASE", "")
    assert Settings.from_env(tmp_path).catalog_database is None
    for bad in ("mysql://bl:secret@db/runs", "postgresql+asyncpg://bl@db/runs", "runs.db"):
        monkeypatch.setenv("HUTCH_CATALOG_DATABASE", bad)
        with pytest.raises(SettingsError, match="HUTCH_CATALOG_DATABASE") as error:
            Settings.from_env(tmp_path)
        assert "secret" not in str(error.value)
    assert redact_uri("postgresql://bl:secret@db:5432/runs") == "postgresql://bl:***@db:5432/runs"


# ---------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------

# The demo profile's container, so that `hutch runs` (profile demo) lists these runs.
SEARCH_BEAMLINE = "demo"


class Searchable:
    """Runs of different metadata in one container, by name, oldest first."""

    def __init__(self, container):
        self.container = container
        self.uids: dict[str, str] = {}
        self.between: datetime | None = None  # after the first two runs, before the others

    def names(self, uids) -> list[str]:
        by_uid = {uid: name for name, uid in self.uids.items()}
        return [by_uid.get(uid, uid) for uid in uids]

    def search(self, **criteria) -> list[str]:
        return self.names(s.uid for s in search_runs(self.container, **criteria))


@pytest.fixture(scope="module")
def searchable(catalog) -> Searchable:
    """Six runs: samples as strings and as dicts, proposals as text and as a number, and
    every exit status (the open run's writer never gets its stop document)."""
    container = runs_container(catalog, SEARCH_BEAMLINE)
    runs = Searchable(container)
    writer = make_tiled_writer(container)
    started = []

    def record(name, doc):
        if name == "start":
            started.append(doc["uid"])

    RE = RunEngine({})
    RE.subscribe(writer)
    RE.subscribe(record)
    # A run left open: its writer is never given the stop document.
    open_writer = make_tiled_writer(container, batch_size=1)
    unstopped = RunEngine({})
    unstopped.subscribe(lambda name, doc: None if name == "stop" else open_writer(name, doc))
    unstopped.subscribe(record)

    def run(name, plan, *, raises=None, engine=RE):
        if raises is None:
            engine(plan)
        else:
            with pytest.raises(raises):
                engine(plan)
        runs.uids[name] = started[-1]

    run("si_count", bp.count([det], 2, md={"sample": "Si wafer", "proposal": "p-1001"}))
    sample = {"name": "Si wafer", "thickness_mm": 0.5}
    run("si_scan", bp.scan([det], motor, -1, 1, 3, md={"sample": sample, "proposal": "p-1001"}))
    runs.between = datetime.now(UTC)
    md = {"sample": "LaB6", "proposal": "2002", "purpose": "Calibration standard"}
    run("lab6_count", bp.count([det], 2, md=md))

    @bpp.run_decorator(md={"plan_name": "scan", "sample": {"name": "LaB6"}, "proposal": 2002})
    def failing():
        yield from bps.trigger_and_read([det])
        raise RuntimeError("simulated beam loss")

    run("lab6_fail", failing(), raises=RuntimeError)

    @bpp.run_decorator(md={"plan_name": "count", "sample": "empty holder", "proposal": "p-1001"})
    def aborted():
        yield from bps.null()
        raise RequestAbort()

    run("holder_abort", aborted())  # the RunEngine ends it "abort" and does not raise

    md = {"sample": "LaB6", "proposal": "2002"}
    run("lab6_open", bp.count([det], 1, md=md), engine=unstopped)
    return runs


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({}, ["si_count", "si_scan", "lab6_count", "lab6_fail", "holder_abort", "lab6_open"]),
        # sample: a string, or a dict's name
        ({"sample": "Si wafer"}, ["si_count", "si_scan"]),
        ({"sample": "LaB6"}, ["lab6_count", "lab6_fail", "lab6_open"]),
        ({"sample": "Si"}, []),
        # proposal: "2002" also finds the one stored as the number 2002
        ({"proposal": "p-1001"}, ["si_count", "si_scan", "holder_abort"]),
        ({"proposal": "2002"}, ["lab6_count", "lab6_fail", "lab6_open"]),
        ({"plan_name": "scan"}, ["si_scan", "lab6_fail"]),
        ({"exit_status": "success"}, ["si_count", "si_scan", "lab6_count"]),
        ({"exit_status": "fail"}, ["lab6_fail"]),
        ({"exit_status": "abort"}, ["holder_abort"]),
        ({"exit_status": "open"}, ["lab6_open"]),
        # text: whole words, any case, any punctuation, in start or stop document
        ({"text": "calibration"}, ["lab6_count"]),
        ({"text": "  STANDARD, calibration! "}, ["lab6_count"]),
        ({"text": "calib"}, []),
        ({"text": "wafer"}, ["si_count", "si_scan"]),
        ({"text": "beam loss"}, ["lab6_fail"]),  # the stop document's reason
        ({"text": "beam holder"}, []),
        # combinations: every criterion holds
        ({"sample": "LaB6", "exit_status": "success"}, ["lab6_count"]),
        ({"proposal": "p-1001", "plan_name": "count"}, ["si_count", "holder_abort"]),
        (
            {"sample": "LaB6", "proposal": "2002", "plan_name": "scan", "text": "loss"},
            ["lab6_fail"],
        ),
        ({"sample": "Si wafer", "exit_status": "fail"}, []),
        # limit: the newest, still newest last
        ({"sample": "LaB6", "limit": 2}, ["lab6_fail", "lab6_open"]),
        ({"sample": "Si wafer", "limit": 1}, ["si_scan"]),
        ({"limit": 2}, ["holder_abort", "lab6_open"]),
        # more than tiled serves in one page (300): fetched page by page
        ({"sample": "Si wafer", "limit": 1000}, ["si_count", "si_scan"]),
    ],
)
def test_search_runs_by_metadata(searchable, criteria, expected):
    assert searchable.search(**criteria) == expected


def test_search_runs_by_start_time(searchable):
    between = searchable.between
    before, after = (
        ["si_count", "si_scan"],
        ["lab6_count", "lab6_fail", "holder_abort", "lab6_open"],
    )
    assert searchable.search(since=between) == after
    assert searchable.search(until=between) == before
    # A naive datetime is local time.
    assert searchable.search(since=between.astimezone().replace(tzinfo=None)) == after
    assert searchable.search(since=between - timedelta(days=1), until=between) == before
    assert searchable.search(since=between + timedelta(days=1)) == []
    assert searchable.search(since=between, sample="Si wafer") == []
    assert searchable.search(since=between, exit_status="open", proposal="2002") == ["lab6_open"]


def test_search_runs_summaries_are_those_of_run_summaries(searchable):
    container = searchable.container
    assert search_runs(container, limit=3) == run_summaries(container, limit=3)
    (failed,) = search_runs(container, exit_status="fail")
    assert (failed.plan_name, failed.events) == ("scan", {"primary": 1})
    (still_open,) = search_runs(container, exit_status="open")
    assert still_open.exit_status is None and still_open.events == {"primary": 1}


@pytest.mark.parametrize(
    ("criteria", "message"),
    [
        ({"exit_status": "finished"}, "exit_status must be one of success, fail, abort, open"),
        ({"text": " -- "}, "has no word"),
        ({"limit": 0}, "limit must be at least 1"),
        (
            {"since": datetime(2025, 2, 1, tzinfo=UTC), "until": datetime(2025, 1, 1, tzinfo=UTC)},
            "is after until",
        ),
    ],
)
def test_search_runs_refuses_bad_criteria(searchable, criteria, message):
    with pytest.raises(ValueError, match=message):
        search_runs(searchable.container, **criteria)


@pytest.fixture
def hutch_runs(settings, searchable, monkeypatch, capsys):
    """``hutch runs ARGS`` in this process against the module's catalogue: (status, out, err)."""
    monkeypatch.setenv("HUTCH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("HUTCH_CATALOG_PORT", str(settings.catalog_port))
    if settings.catalog_database:
        monkeypatch.setenv("HUTCH_CATALOG_DATABASE", settings.catalog_database)
    else:
        monkeypatch.delenv("HUTCH_CATALOG_DATABASE", raising=False)

    def hutch_runs(*args: str) -> tuple[int, str, str]:
        try:
            status = hutch_main(["runs", "--profile", "demo", *args])
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code
        out, err = capsys.readouterr()
        return status, out, err

    return hutch_runs


def test_hutch_runs_searches(hutch_runs, searchable):
    def names(*args):
        status, out, err = hutch_runs(*args, "--json")
        assert status == 0, err
        return searchable.names(r["uid"] for r in json.loads(out))

    assert names("--sample", "LaB6") == ["lab6_count", "lab6_fail", "lab6_open"]
    assert names("--proposal", "2002", "--plan", "scan") == ["lab6_fail"]
    assert names("--status", "open") == ["lab6_open"]
    assert names("--text", "calibration standard") == ["lab6_count"]
    assert names("--sample", "LaB6", "-n", "1") == ["lab6_open"]
    between = searchable.between
    assert names("--sample", "Si wafer", "--until", between.isoformat()) == ["si_count", "si_scan"]
    assert names("--since", between.isoformat(), "--status", "abort") == ["holder_abort"]
    # A bare date for --until includes that (local) day; for --since it starts it.
    first = get_run(searchable.container, searchable.uids["si_count"])
    start = datetime.fromtimestamp(first.metadata["start"]["time"])  # local time
    day, next_day = start.date().isoformat(), (start.date() + timedelta(days=1)).isoformat()
    assert "si_count" in names("--sample", "Si wafer", "--until", day)
    assert "si_count" in names("--sample", "Si wafer", "--since", day)
    assert "si_count" not in names("--sample", "Si wafer", "--since", next_day)

    status, out, err = hutch_runs("--sample", "Si wafer")  # the table
    assert status == 0, err
    lines = out.splitlines()
    assert "plan" in lines[0] and len(lines) == 3
    assert searchable.uids["si_scan"][:8] in lines[2] and "success" in lines[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "argument --since: 'yesterday' is not an ISO date"),
        (["--until", "2025-13-01"], "argument --until: '2025-13-01' is not an ISO date"),
        (["--status", "finished"], "argument --status: invalid choice: 'finished'"),
        (["--limit", "0"], "argument -n/--limit: '0' is not a whole number of at least 1"),
        (
            ["--since", "2025-02-01", "--until", "2025-01-01"],
            "--since (2025-02-01T00:00:00) is not before --until",
        ),
    ],
)
def test_hutch_runs_names_the_bad_flag(hutch_runs, args, message):
    status, out, err = hutch_runs(*args)
    assert status == 2 and out == ""
    assert message in err


def test_hutch_runs_as_a_command(settings, searchable):
    env = {**os.environ, "HUTCH_DATA_DIR": str(settings.data_dir)}
    env["HUTCH_CATALOG_PORT"] = str(settings.catalog_port)
    env.pop("HUTCH_CATALOG_DATABASE", None)
    if settings.catalog_database:
        env["HUTCH_CATALOG_DATABASE"] = settings.catalog_database
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hutch.cli",
            "runs",
            "--sample",
            "LaB6",
            "--status",
            "fail",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = json.loads(proc.stdout)
    assert run["uid"] == searchable.uids["lab6_fail"] and run["exit_status"] == "fail"


def test_a_derived_run_of_spectra_is_catalogued(catalog):
    """A derived run whose points are arrays (an azimuthal integration's I(q) and q, as the
    reduction lane emits them: pages of numpy rows) reads back equal, on either database."""
    from event_model import compose_run

    container = runs_container(catalog, BEAMLINE)
    writer = make_tiled_writer(container)
    bundle = compose_run(metadata={"raw_uid": "r", "reduction": {"name": "powder"}})
    stream = bundle.compose_descriptor(
        name="primary",
        data_keys={
            "sample_x": {"dtype": "number", "shape": [], "source": "raw"},
            "I": {"dtype": "array", "shape": [400], "source": "reduction:powder"},
            "q": {"dtype": "array", "shape": [400], "source": "reduction:powder"},
        },
    )
    rng = np.random.default_rng(1)
    intensity, q = rng.random((5, 400)), np.tile(np.linspace(0.1, 40, 400), (5, 1))
    writer("start", bundle.start_doc)
    writer("descriptor", stream.descriptor_doc)
    for rows in (slice(0, 1), slice(1, 5)):  # a first page of one point, then the rest
        n = rows.stop - rows.start
        writer(
            "event_page",
            stream.compose_event_page(
                data={
                    "sample_x": list(np.arange(5.0)[rows]),
                    "I": list(intensity[rows]),
                    "q": list(q[rows]),
                },
                timestamps={k: [0.0] * n for k in ("sample_x", "I", "q")},
                seq_num=list(range(rows.start + 1, rows.stop + 1)),
                time=[0.0] * n,
            ),
        )
    writer("stop", bundle.compose_stop())
    data = container[bundle.start_doc["uid"]]["primary"].read()
    np.testing.assert_array_equal(np.asarray(data["I"]), intensity)
    np.testing.assert_array_equal(np.asarray(data["q"]), q)


def test_runs_written_while_others_are_read_are_all_kept(catalog):
    """Clients reading the catalogue while the recorder writes runs with new streams (a
    reduction's derived runs bring new table schemas) lose nothing: every run reads back
    whole. (tiled's DuckDB tables once lost a new stream's table to a concurrent read.)"""
    from event_model import compose_run

    container = runs_container(catalog, BEAMLINE)
    writer = make_tiled_writer(container, batch_size=1)
    written: list[tuple[str, str]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        client = runs_container(catalog, BEAMLINE)
        while not stop.is_set():
            for uid, key in written[-3:]:  # the newest, as a live view reads
                try:
                    client[uid]["summary"].read()[key]
                except Exception as exc:  # noqa: BLE001 - a read may fail; the writes must not
                    failures.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for i in range(30):
            key = f"stat_{i}"  # a new schema: a new table each run
            bundle = compose_run(metadata={"raw_uid": "r"})
            stream = bundle.compose_descriptor(
                name="summary", data_keys={key: {"dtype": "number", "shape": [], "source": "s"}}
            )
            writer("start", bundle.start_doc)
            writer("descriptor", stream.descriptor_doc)
            writer("event", stream.compose_event(data={key: float(i)}, timestamps={key: 0.0}))
            writer("stop", bundle.compose_stop())
            written.append((bundle.start_doc["uid"], key))
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    for i, (uid, key) in enumerate(written):
        assert float(container[uid]["summary"].read()[key][0]) == i
