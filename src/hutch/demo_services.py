"""The demo around its runs: the same beamline run unattended from the queue server, and
what happens around runs (a refused run, catalogue searches, a NeXus file rebuilt from the
catalogue). `hutch.demo` calls these."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hutch import plans, services
from hutch.catalog import search_runs
from hutch.export import export_nexus, nexus_differences
from hutch.profile import Profile
from hutch.session import MissingMetadataError, Session

if TYPE_CHECKING:
    from hutch.demo import DemoSummary

__all__ = ["SAMPLE_LIST", "data_management", "queued_runs"]


#: The demo's sample list: one queued count per row, each with its sample.
SAMPLE_LIST = """plan,params,sample,num
count,[det],Si powder,2
count,[det],LaB6,2
count,[det],CeO2,2
"""


def queued_runs(profile: Profile, session: Session, summary: DemoSummary, det: Any) -> None:
    """The same beamline run unattended from the queue server: Redis, bluesky-queueserver's
    RE Manager (its startup built from the profile) and bluesky-httpserver come up, a sample
    list and a plan sent over the HTTP API run, each run lands in the same catalogue; the API
    refuses a caller without a key (401) and an observer starting the queue (403)."""
    import httpx

    from hutch.queue import services as queue
    from hutch.queue.client import manager_api
    from hutch.queue.samples import load_sample_list

    settings = session.settings
    own = queue.status(profile.name, settings) is None
    # Free ports, not bluesky-queueserver's defaults: a queue server of another data
    # directory may hold those.
    ports = queue.QueuePorts(
        **{k: services.free_port() for k in ("http_port", "zmq_port", "zmq_info_port")}
    )
    state = queue.start(profile, settings, ports) if own else queue.status(profile.name, settings)
    assert state is not None
    samples = settings.data_dir / "demo-samples.csv"
    samples.write_text(SAMPLE_LIST)
    api = manager_api(state)
    try:
        items = [item.to_item() for item in load_sample_list(profile, samples)]
        api.item_add_batch(items)
        http = httpx.Client(base_url=f"{state.http_uri}/api", trust_env=False, timeout=60)
        key = {"Authorization": f"ApiKey {state.api_key}"}
        scan = {"item_type": "plan", "name": "scan", "args": [[det.name], "sample_x", 1, 4, 7],
                "meta": {"sample": "queued over HTTP"}}  # fmt: skip
        added = http.post("/queue/item/add", json={"item": scan}, headers=key).json()
        anonymous = http.post("/queue/start").status_code
        observer = queue.api_key(profile.name, settings, "observer")
        forbidden = http.post(
            "/queue/start", headers={"Authorization": f"ApiKey {observer}"}
        ).status_code
        started = time.monotonic()
        http.post("/queue/start", headers=key).raise_for_status()
        api.wait_for_idle(timeout=600)
        history = api.history_get()["items"][-len(items) - 1 :]
        http.close()
    finally:
        api.close()
        if own:
            queue.stop(profile.name, settings)
    done = [item.get("result", {}).get("exit_status") for item in history]
    uids = [uid for item in history for uid in item.get("result", {}).get("run_uids", [])]
    summary.extra["queue"] = {
        "http_uri": state.http_uri,
        "items": [item["name"] for item in history],
        "exit_statuses": done,
        "run_uids": uids,
        "seconds": round(time.monotonic() - started, 1),
        "unauthenticated_status": anonymous,
        "observer_start_status": forbidden,
    }
    catalogued = [uid for uid in uids if uid in session.runs_container]
    summary.check(
        "queue: a 3-row sample list and a scan added over HTTP all completed",
        added.get("success") is True and done == ["completed"] * 4 and len(uids) == 4,
        f"{done}",
    )
    summary.check("queue: every queued run is in the catalogue", catalogued == uids, f"{uids}")
    summary.check(
        "queue: HTTP without a key gets 401, an observer starting the queue 403",
        (anonymous, forbidden) == (401, 403),
        f"{anonymous}, {forbidden}",
    )
    for uid in uids:
        run = session.runs_container[uid]
        summary.check(
            f"queue: run {uid[:8]} ({run.metadata['start'].get('sample')}) exit_status success",
            run.metadata["stop"]["exit_status"] == "success",
        )


def data_management(session: Session, summary: DemoSummary, det: Any) -> None:
    """What happens around the runs: a run lacking required metadata is refused before it
    starts, the catalogue is searched by metadata, and a run's NeXus file is rebuilt from the
    catalogue equal to the live one."""
    RE = session.RE
    before = len(session.runs)
    try:
        RE(plans.count([det], num=1), sample=None)
        refused = None
    except MissingMetadataError as exc:
        refused = exc
    summary.extra["refused_run"] = str(refused) if refused else None
    summary.check(
        "a run without a sample is refused before it starts",
        refused is not None and "sample" in refused.missing and len(session.runs) == before,
        str(refused),
    )
    if session.catalog is None:
        return

    ours = {r.record.uid: r.record for r in summary.runs}
    scans = {u for u, r in ours.items() if r.plan_name == "scan"}
    searches = {
        "sample='demo sample', plan_name='scan'": {"sample": "demo sample", "plan_name": "scan"},
        "exit_status='success', free text 'demo'": {"exit_status": "success", "text": "demo"},
    }
    summary.extra["searches"] = {}
    for label, criteria in searches.items():
        found = [s.uid for s in search_runs(session.runs_container, limit=1000, **criteria)]
        summary.extra["searches"][label] = [u for u in found if u in ours]
        expected = scans if "plan_name" in criteria else set(ours)
        summary.check(f"catalogue search {label} finds this demo's runs", expected <= set(found))

    scan = next(r for r in ours.values() if r.plan_name == "scan")
    directory = session.settings.nexus_dir / "exported"
    exported = export_nexus(session.runs_container, scan.uid, directory)
    differences = nexus_differences(scan.nexus, exported)
    summary.extra["export"] = {"uid": scan.uid, "path": str(exported), "differences": differences}
    summary.check(
        "NeXus file rebuilt from the catalogue equals the live one",
        not differences,
        f"{exported}: " + "; ".join(differences[:3]),
    )
