"""The queue server for real: redis-server, the RE Manager, bluesky-httpserver, the simulated
beamline and the catalogue, driven through `hutch queue` and the HTTP API.

One stack for the module (starting it opens the worker environment: about a minute).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hutch_command import HUTCH, hutch

from hutch.ca import ca_client_env
from hutch.catalog import ensure_catalog, get_run, runs_container, stop_catalog
from hutch.config import Settings
from hutch.queue.client import manager_api
from hutch.queue.services import QueueState, api_key, status
from hutch.scan_ids import scan_counter

DEADLINE = 300.0  # seconds for a queue to run: generous on a busy 2-core machine


def _hutch(*args: str, env: dict[str, str], check: bool = True, timeout: float = 600):
    """``hutch queue ARGS``."""
    return hutch("queue", *args, env=env, check=check, timeout=timeout)


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    state: QueueState
    data: Path

    def key(self, group: str) -> str:
        return api_key("demo", self.settings, group)

    def http(self, method: str, path: str, group: str | None = None, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"ApiKey {self.key(group)}"} if group else {}
        with httpx.Client(base_url=self.state.http_uri, trust_env=False, timeout=60) as client:
            return client.request(method, f"/api{path}", headers=headers, **kwargs)

    def manager_status(self) -> dict:
        api = manager_api(self.state)
        try:
            return api.status(reload=True)
        finally:
            api.close()

    def history(self) -> list[dict]:
        return json.loads(_hutch("history", "--json", "-n", "1000", env=self.env).stdout)

    def run_queue(self, expect_history: int) -> list[dict]:
        """Start the queue and wait until the history holds ``expect_history`` items and the
        manager is idle; return the history."""
        _hutch("start", env=self.env)
        deadline = time.monotonic() + DEADLINE
        while True:
            status = self.manager_status()
            done = status["items_in_history"] >= expect_history
            if done and status["manager_state"] == "idle":
                return self.history()
            assert time.monotonic() < deadline, f"the queue did not finish: {status}"
            time.sleep(1.0)


@pytest.fixture(scope="module")
def stack(sim, tmp_path_factory, free_port):
    if shutil.which("redis-server") is None:
        pytest.fail(
            "redis-server is not installed: `bash .ci/setup --tests` installs it", pytrace=False
        )
    data = tmp_path_factory.mktemp("queue-data")
    env = dict(os.environ)
    env.update(ca_client_env(*sim.ports))
    catalog_port = free_port()
    env.update(
        HUTCH_DATA_DIR=str(data),
        HUTCH_CATALOG_PORT=str(catalog_port),
        HUTCH_QUEUE_HTTP_PORT=str(free_port()),
        HUTCH_QUEUE_ZMQ_PORT=str(free_port()),
        HUTCH_QUEUE_ZMQ_INFO_PORT=str(free_port()),
    )
    settings = Settings(data_dir=data, catalog_port=catalog_port)
    try:
        _hutch("up", env=env)
        state = status("demo", settings)
        assert state is not None
        yield Stack(env, settings, state, data)
    finally:
        _hutch("down", env=env, check=False)
        stop_catalog(settings)
    assert status("demo", settings) is None


def _catalogued(stack: Stack, uid: str) -> dict:
    container = runs_container(ensure_catalog(stack.settings), "demo")
    return container[uid].metadata


def test_items_from_http_and_cli_run_and_land_in_the_catalogue(stack):
    assert stack.manager_status()["items_in_queue"] == 0
    before = stack.manager_status()["items_in_history"]
    item = {"item_type": "plan", "name": "count", "args": [["det"]], "kwargs": {"num": 3},
            "meta": {"sample": "via HTTP"}}  # fmt: skip
    response = stack.http("POST", "/queue/item/add", "scientist", json={"item": item})
    assert response.status_code == 200 and response.json()["success"], response.text
    _hutch("add", "scan", "[det]", "sample_x", "0", "2", "num=5", "--md", "sample=via CLI",
           env=stack.env)  # fmt: skip
    # bluesky-queueserver's own CLI, unchanged (its requests name the group "primary").
    qserver = subprocess.run(
        [str(Path(sys.executable).with_name("qserver")), "-a", stack.state.zmq_control,
         "queue", "add", "plan", json.dumps({"name": "count", "args": [["det"]],
                                             "kwargs": {"num": 2}})],
        env=stack.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert qserver.returncode == 0 and "'success': True" in qserver.stdout, qserver.stdout

    history = stack.run_queue(before + 3)[-3:]
    assert [h["name"] for h in history] == ["count", "scan", "count"]
    for entry, sample, events in zip(
        history, ["via HTTP", "via CLI", "demo sample"], [3, 5, 2], strict=True
    ):
        assert entry["result"]["exit_status"] == "completed", entry["result"]
        (uid,) = entry["result"]["run_uids"]
        md = _catalogued(stack, uid)
        assert md["start"]["sample"] == sample
        assert md["start"]["profile"] == "demo"
        assert md["stop"]["exit_status"] == "success"
        assert md["stop"]["num_events"]["primary"] == events
        # The same session as `hutch run`: a NeXus file per run.
        assert list((stack.data / "nexus").rglob(f"*{uid[:8]}*.nxs")), uid
    # `hutch queue history` shows it too.
    assert "completed  scan" in _hutch("history", env=stack.env).stdout


def test_http_needs_a_key_and_an_observer_cannot_edit_or_start(stack):
    item = {"item_type": "plan", "name": "count", "args": [["det"]]}
    # No key: refused. bluesky-httpserver 0.0.14 answers 401 (and a WWW-Authenticate header).
    for method, path, body in [("GET", "/status", None), ("POST", "/queue/item/add", item),
                               ("POST", "/queue/start", None)]:  # fmt: skip
        response = stack.http(method, path, json={"item": body} if body else None)
        assert response.status_code == 401, (path, response.text)
        assert "WWW-Authenticate" in response.headers
    # A wrong key: 401 too.
    with httpx.Client(trust_env=False) as client:
        response = client.get(f"{stack.state.http_uri}/api/status",
                              headers={"Authorization": "ApiKey 0123abcd"})  # fmt: skip
    assert response.status_code == 401
    # The observer's key reads, but cannot edit, start or stop the queue: 403 (hutch's server
    # turns bluesky-httpserver 0.0.14's 401 "Not enough permissions" into 403).
    assert stack.http("GET", "/status", "observer").status_code == 200
    assert stack.http("GET", "/queue/get", "observer").status_code == 200
    for path, body in [("/queue/item/add", {"item": item}), ("/queue/start", None),
                       ("/queue/stop", None), ("/queue/clear", None),
                       ("/environment/close", None)]:  # fmt: skip
        response = stack.http("POST", path, "observer", json=body)
        assert response.status_code == 403, (path, response.text)
        assert "Not enough permissions" in response.json()["detail"]
    assert stack.manager_status()["items_in_queue"] == 0
    # The observer's group may not queue any plan even past the HTTP roles (0MQ, as observer).
    api = manager_api(stack.state)
    api.user_group = "observer"
    try:
        with pytest.raises(Exception, match="not in the list of allowed plans|not allowed"):
            api.item_add(item)
    finally:
        api.close()


def test_a_sample_list_of_20_rows_runs_to_completion(stack, tmp_path):
    before = stack.manager_status()["items_in_history"]
    rows = ["plan,params,num,sample,md.temperature"]
    for i in range(1, 21):
        if i % 5 == 0:
            rows.append(f'scan,"[det] sample_x 0 1",3,S{i:02d},{290 + i}')
        else:
            rows.append(f"count,[det],2,S{i:02d},{290 + i}")
    samples = tmp_path / "samples.csv"
    samples.write_text("\n".join(rows) + "\n")
    out = _hutch("load", str(samples), env=stack.env)
    assert len(out.stdout.split()) == 20
    assert stack.manager_status()["items_in_queue"] == 20

    history = stack.run_queue(before + 20)[-20:]
    assert all(h["result"]["exit_status"] == "completed" for h in history), history
    assert [h["meta"]["sample"] for h in history] == [f"S{i:02d}" for i in range(1, 21)]
    md = _catalogued(stack, history[-1]["result"]["run_uids"][0])
    assert md["start"]["sample"] == "S20" and md["start"]["temperature"] == "310"
    assert md["stop"]["num_events"]["primary"] == 3


def test_a_bad_sample_list_is_refused_whole_with_row_numbers(stack, tmp_path):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text(
        "plan,params,num,sample\n"
        "count,[det],2,fine\n"  # row 1: good
        "counts,[det],2,typo\n"  # row 2: unknown plan
        "count,[det],two,bad argument\n"  # row 3: not a literal
        "count,[det],2,extra,cell\n"  # row 4: more cells than columns
        'scan,"[det] sample_x 0 1",3,fine\n'  # row 5: good
        "count,[det] nmu=3,,bad keyword\n"  # row 6: no such parameter
    )
    proc = _hutch("load", str(bad_csv), env=stack.env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "nothing queued" in proc.stderr
    for row, reason in [(2, "'counts' is not offered"), (3, "'two'"), (4, "more cell"),
                        (6, "'nmu'")]:  # fmt: skip
        assert f"row {row}: " in proc.stderr and reason in proc.stderr, proc.stderr
    assert "row 1:" not in proc.stderr and "row 5:" not in proc.stderr

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(
        "- {plan: count, args: [[det]], num: 2, sample: fine}\n"
        "- {args: [[det]]}\n"  # row 2: no plan
        "- {plan: scan, args: [[det], sample_x, 0, 1], num: 3, sampel: typo}\n"  # row 3
        "- just a string\n"  # row 4
    )
    proc = _hutch("load", str(bad_yaml), env=stack.env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "row 2: no plan" in proc.stderr
    assert "row 3: " in proc.stderr and "'sampel'" in proc.stderr
    assert "row 4: not a mapping" in proc.stderr
    assert stack.manager_status()["items_in_queue"] == 0  # nothing half-loaded


def test_a_failing_plan_leaves_the_queue_consistent_and_the_environment_reopens(stack):
    before = stack.manager_status()["items_in_history"]
    # sample_x travels -10..10 mm: the worker refuses the scan before its run opens.
    _hutch("add", "scan", "[det]", "sample_x", "0", "20", "num=5", env=stack.env)
    _hutch("add", "count", "[det]", "num=2", env=stack.env)
    history = stack.run_queue(before + 1)
    failed = history[-1]
    assert failed["name"] == "scan"
    assert failed["result"]["exit_status"] == "failed"
    assert "scan: sample_x stop 20 mm is outside sample_x's soft limits" in failed["result"]["msg"]
    assert failed["result"]["run_uids"] == []  # nothing moved, no run opened
    # The queue stopped at the failure, the RE Manager's way: the failed item is back at the
    # front of the queue (a new uid), the next one behind it. Drop the failed one; the next runs.
    status = stack.manager_status()
    assert status["items_in_queue"] == 2 and status["re_state"] == "idle"
    queue = stack.http("GET", "/queue/get", "scientist").json()["items"]
    assert [i["name"] for i in queue] == ["scan", "count"]
    response = stack.http("POST", "/queue/item/remove", "scientist", json={"pos": "front"})
    assert response.json()["success"], response.text
    history = stack.run_queue(before + 2)
    assert history[-1]["name"] == "count"
    assert history[-1]["result"]["exit_status"] == "completed"

    # Close and re-open the worker environment over HTTP (admin), then run again.
    assert stack.http("POST", "/environment/close", "admin").json()["success"]
    deadline = time.monotonic() + DEADLINE
    while stack.manager_status()["worker_environment_exists"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert stack.http("POST", "/environment/open", "admin").json()["success"]
    while True:
        status = stack.manager_status()
        if status["worker_environment_exists"] and status["manager_state"] == "idle":
            break
        assert time.monotonic() < deadline, status
        time.sleep(1.0)
    _hutch("add", "count", "[det]", "num=1", "--md", "sample=after reopen", env=stack.env)
    last = stack.run_queue(before + 3)[-1]
    assert last["result"]["exit_status"] == "completed"
    assert _catalogued(stack, last["result"]["run_uids"][0])["start"]["sample"] == "after reopen"


def test_hutch_run_processes_and_the_queue_take_consecutive_scan_numbers(stack):
    """Two ``hutch run`` started together, then a queued plan, in one data directory: each
    run has a number of its own, in its start document, file name and catalogue lookup."""
    first = scan_counter(stack.settings.run_dir, "demo").last() + 1
    runs = [
        subprocess.Popen([*HUTCH, "run", "count", "[det]", "-q"], env=stack.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
    starts = [_catalogued(stack, out.split()[-1])["start"] for out, _ in outputs]
    assert sorted(start["scan_id"] for start in starts) == [first, first + 1]

    before = stack.manager_status()["items_in_history"]
    _hutch("add", "count", "[det]", "num=1", env=stack.env)
    entry = stack.run_queue(before + 1)[-1]
    assert entry["result"]["exit_status"] == "completed", entry["result"]
    (uid,) = entry["result"]["run_uids"]
    starts.append(_catalogued(stack, uid)["start"])
    assert starts[-1]["scan_id"] == entry["result"]["scan_ids"][0] == first + 2

    container = runs_container(ensure_catalog(stack.settings), "demo")
    for start in starts:
        number, uid = start["scan_id"], start["uid"]
        assert (stack.data / "nexus" / f"demo_{number:05d}_{uid[:8]}.nxs").is_file()
        assert get_run(container, number).metadata["start"]["uid"] == uid


def test_queue_up_without_a_beamline_names_the_devices_then_sim_starts_one(tmp_path, free_port):
    """Without a beamline `hutch queue up` says which devices did not connect (with their
    PVs) and what to do, in a few lines and no traceback; ``--sim`` starts the profile's
    simulated beamline with the queue and ``queue down`` stops both."""
    env = dict(os.environ)
    env.update(ca_client_env(free_port()))  # nothing serves Channel Access there
    env.update(
        HUTCH_DATA_DIR=str(tmp_path / "data"),
        HUTCH_CATALOG_PORT=str(free_port()),
        HUTCH_QUEUE_HTTP_PORT=str(free_port()),
        HUTCH_QUEUE_ZMQ_PORT=str(free_port()),
        HUTCH_QUEUE_ZMQ_INFO_PORT=str(free_port()),
    )
    settings = Settings(data_dir=tmp_path / "data")
    try:
        failed = _hutch("up", env=env, check=False)
        assert failed.returncode == 1, failed.stderr
        assert "Traceback" not in failed.stderr
        assert "could not open its environment" in failed.stderr
        assert "device(s) did not connect" in failed.stderr
        for device, prefix in (("sample_x", "DEMO:SAMPLE:X"), ("det", "DEMO:SCALER1")):
            assert re.search(rf"^  {device}: \d+ PVs {prefix}", failed.stderr, re.M)
        assert len(failed.stderr.splitlines()) < 12  # a line per device, not per PV
        assert "hutch queue up --sim" in failed.stderr
        assert status("demo", settings) is None  # nothing left running

        up = _hutch("up", "--sim", "--port", str(free_port()), env=env)
        assert "simulated beamline" in up.stdout
        assert hutch("sim", "status", env=env, check=False).returncode == 0
        assert status("demo", settings) is not None
    finally:
        _hutch("down", env=env, check=False)
        hutch("catalog", "down", env=env, check=False)
    assert hutch("sim", "status", env=env, check=False).returncode == 1
