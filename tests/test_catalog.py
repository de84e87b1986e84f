"""The embedded tiled catalogue: runs written by TiledWriter read back equal to the documents."""

from __future__ import annotations

import json
import os
import socket
import stat
from concurrent.futures import ThreadPoolExecutor

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import httpx
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns
from ophyd.sim import det, det4, motor, motor1, motor2

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
    stop_catalog,
)
from hutch.config import Settings

BEAMLINE = "testbl"


def _json(doc):
    """As the catalogue stores it: the RunEngine emits tuples where tiled gives back lists."""
    return json.loads(json.dumps(doc))


@pytest.fixture(autouse=True)
def _embedded_catalog(monkeypatch):
    """An external catalogue configured in the environment must not leak into these tests."""
    monkeypatch.delenv("HUTCH_CATALOG_URI", raising=False)
    monkeypatch.delenv("HUTCH_CATALOG_API_KEY", raising=False)


@pytest.fixture(scope="module")
def settings(tmp_path_factory, free_port):
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), catalog_port=free_port())
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HUTCH_CATALOG_URI", raising=False)
        ensure_catalog(settings)
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


def test_server_is_reused_stopped_and_keeps_runs_across_restarts(tmp_path, free_port):
    settings = Settings(data_dir=tmp_path, catalog_port=free_port())
    assert catalog_status(settings) is None
    # Two callers at once get one server: the start is serialised by a file lock.
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: ensure_catalog(settings), range(2))
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

        again = ensure_catalog(settings)
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
