"""The hutch command as a user runs it: subprocesses, real simulator, real catalogue."""

import json
import os
import time
from pathlib import Path

import h5py
from hutch_command import hutch as _hutch

from hutch.ca import ca_client_env


def _env(tmp_path, free_port, ca_port):
    env = dict(os.environ)
    env.update(ca_client_env(ca_port))
    env.update(
        HUTCH_DATA_DIR=str(tmp_path / "data"),
        HUTCH_CATALOG_PORT=str(free_port()),
        HUTCH_CA_PORT=str(ca_port),
    )
    return env


def test_demo_runs_to_completion_and_describes_itself(tmp_path, free_port):
    env = _env(tmp_path, free_port, free_port())
    proc = _hutch("demo", "--json", env=env)
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True, summary["checks"]
    # Its refusals are one line each: no traceback anywhere in what it prints.
    assert "Traceback" not in proc.stderr and "Run aborted" not in proc.stderr, proc.stderr
    assert "soft limits" in summary["refused_scan"]
    for key in ("refused_scan", "refused_fly_scan", "refused_run"):
        assert f"refused     {summary[key].splitlines()[0]}" in proc.stderr
    assert summary["simulator_started"] is True
    plan_names = [run["plan_name"] for run in summary["runs"]]
    assert plan_names == [
        "count",
        "scan",
        "scan",
        "align",
        "count",
        "step_scan",
        "fly_scan",
        "snake_fly_scan",
        "count",
        "center_on_centroid",
        "count_until",
        "count",  # the neutron instrument's choppers, phased for a band
        "tof_count",  # its event-mode detector, counting pulses of that band
    ]
    # Each detector run names its derived runs (the profile's reductions, made live).
    derived = {run["title"]: run.get("derived", []) for run in summary["runs"]}
    kinds = {(d["reduction"], d["kind"], d["exit_status"]) for ds in derived.values() for d in ds}
    assert kinds == {
        ("det1_spot", "roi_stats", "success"),
        ("det_norm", "normalise", "success"),
        ("det_peak", "peak_stats", "success"),
        ("det2_powder", "azimuthal", "success"),
    }
    for run in derived.values():
        for d in run:
            assert Path(d["nexus"]).exists() and Path(d["png"]).exists()
    replayed = summary["replayed_reduction"]
    assert replayed["data_equal"] and replayed["metadata_equal"]
    for run in summary["runs"]:
        assert run["exit_status"] == "success"
        assert run["events"]["primary"] > 0
        with h5py.File(run["nexus"], "r") as f:
            assert f["entry/entry_identifier"][()].decode() == run["uid"]
        assert Path(run["png"]).stat().st_size > 1000
        assert run["catalog_uri"].endswith(run["uid"])
    align = summary["runs"][3]
    assert abs(align["fitted_center"] - align["true_center"]) <= 0.02 * align["true_center"]
    dump = summary["runs"][4]  # a beam dump mid-count: suspended, resumed, no point without beam
    assert dump["longest_gap_seconds"] >= dump["beam_off_seconds"]
    assert dump["lowest_current"] > 10
    assert all(check["ok"] for check in summary["checks"])

    # The catalogue (restarted on demand) lists the demo's runs.
    runs = json.loads(_hutch("runs", "--json", "-n", "100", env=env).stdout)
    # The demo's own runs, then the four it queued (the derived runs beside them); the
    # neutron instrument's in its own container.
    demo_uids = [run["uid"] for run in summary["runs"][:-2]]
    measured = [r["uid"] for r in runs if not r["plan_name"].startswith("reduce ")]
    assert measured[-15:] == demo_uids + summary["queue"]["run_uids"]
    tof_runs = json.loads(_hutch("runs", "--profile", "tof", "--json", env=env).stdout)
    assert [r["uid"] for r in tof_runs] == [run["uid"] for run in summary["runs"][-2:]]
    assert summary["events"]["pulses"] == 28 and summary["events"]["inside_band"] >= 0.999
    assert summary["profiles"] == ["demo", "tof"]
    band = summary["wavelength_band"]
    assert set(band["choppers"]) == {"psc", "bwc", "foc"} and band["band"] == [1.0, 2.6]
    assert "above its maximum" in summary["refused_chopper_speed"]
    assert summary["lock_loss"]["relocked"] is True
    # The fly scans: frames and captured positions, and a refused one.
    fly = summary["runs"][6]
    assert fly["frames"] == {"points": 61, "data_key": "det1"}
    assert "VMAX" in summary["refused_fly_scan"]
    # The queue server ran a sample list and a scan sent over HTTP into the same catalogue.
    queue = summary["queue"]
    assert queue["exit_statuses"] == ["completed"] * 4
    assert (queue["unauthenticated_status"], queue["observer_start_status"]) == (401, 403)
    _hutch("catalog", "down", env=env)
    # The simulators the demo started ended with it.
    deadline = time.monotonic() + 30
    for profile in ("demo", "tof"):
        while _hutch("sim", "status", "--profile", profile, env=env, check=False).returncode != 1:
            assert time.monotonic() < deadline, f"the demo's {profile} simulator outlived it"
            time.sleep(0.5)


def test_run_plan_from_the_command_line(tmp_path, free_port):
    env = _env(tmp_path, free_port, free_port())
    _hutch("sim", "up", "--detach", env=env)
    try:
        proc = _hutch("run", "scan", "[det]", "sample_x", "0", "1", "num=5", "-q", env=env)
        uid = proc.stdout.strip().splitlines()[-1]
        assert len(uid) == 36
        runs = json.loads(_hutch("runs", "--json", "-n", "100", env=env).stdout)
        measured = [r for r in runs if not r["plan_name"].startswith("reduce ")]
        assert measured[-1]["uid"] == uid
        assert measured[-1]["events"] == {"baseline": 2, "primary": 5}
        # The profile's reductions of the scaler's scans, written before `hutch run` ended.
        derived = {r["plan_name"]: r for r in runs if r["plan_name"].startswith("reduce ")}
        assert set(derived) == {"reduce det_norm", "reduce det_peak"}
        assert all(r["exit_status"] == "success" for r in derived.values())

        # Bad arguments are refused before anything moves: tests/test_refusals.py.
    finally:
        _hutch("sim", "down", env=env)
        _hutch("catalog", "down", env=env)
