"""The recorder process: documents leave the RunEngine's thread and none is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from event_model import compose_run

from hutch.catalog import get_run
from hutch.recorder import Recorder, RecorderConfig, RecorderError
from hutch.recording_queue import coalesce as _coalesce
from hutch.services import process_alive

TIMEOUT = 60.0


def _wait_for(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_queued_events_of_one_stream_are_packed_into_pages_in_order():
    run = compose_run()
    a = run.compose_descriptor(
        name="primary", data_keys={"x": {"source": "x", "dtype": "number", "shape": []}}
    )
    b = run.compose_descriptor(
        name="baseline", data_keys={"y": {"source": "y", "dtype": "number", "shape": []}}
    )
    events = [a.compose_event(data={"x": i}, timestamps={"x": i}) for i in range(3)]
    other = b.compose_event(data={"y": 9}, timestamps={"y": 9})
    messages = [
        ("start", run.start_doc),
        *[("event", e) for e in events[:2]],
        ("event", other),
        ("event", events[2]),
        ("stop", run.compose_stop()),
    ]
    out = list(_coalesce(messages))
    assert [name for name, _ in out] == ["start", "event_page", "event_page", "event_page", "stop"]
    assert out[1][1]["seq_num"] == [1, 2] and out[1][1]["data"] == {"x": [0, 1]}
    assert out[2][1]["data"] == {"y": [9]}
    assert out[3][1]["seq_num"] == [3]


def test_a_recorder_that_cannot_start_names_itself_and_shows_its_log(tmp_path):
    log = tmp_path / "recorder.log"
    # No such protocol: building the catalogue writer fails in the recorder.
    recorder = Recorder(RecorderConfig(beamline="x", catalog_uri="nosuch://127.0.0.1:1"), log)
    try:
        with pytest.raises(RecorderError, match=r"recorder \(pid \d+\) exited .* start") as info:
            recorder.wait_ready()
    finally:
        recorder.close()
    assert "nosuch" in str(info.value)  # the log's end, with the cause


def test_a_recorder_dying_mid_run_fails_the_run_loudly(RE, session, tmp_path):
    det = session.devices["det"]
    recorder = Recorder(RecorderConfig(beamline="demo", nexus_dir=tmp_path), tmp_path / "log")
    recorder.wait_ready()
    token = RE.subscribe(recorder)

    def plan():
        yield from bps.open_run()
        yield from bps.trigger_and_read([det])
        os.kill(recorder.pid, signal.SIGKILL)
        time.sleep(0.5)
        yield from bps.trigger_and_read([det])
        yield from bps.close_run()

    try:
        with pytest.raises(RecorderError, match=r"recorder \(pid \d+\) exited with code -9"):
            RE(plan())
    finally:
        RE.unsubscribe(token)
        recorder.close()
    # The session's own recorder is another process: the failed run is still recorded there.
    record = session.runs[-1]
    assert record.exit_status == "fail"
    assert record.nexus is not None and record.nexus.exists()


def test_the_catalogue_gets_every_event_once_the_recorder_is_idle(session):
    """Fewer events than a catalogue batch are in the catalogue while the run is still open."""
    RE, det = session.RE, session.devices["det"]
    counts: list[int] = []

    def events_in_catalogue(uid: str) -> int:
        try:
            return get_run(session.runs_container, uid)["primary"]["seq_num"].shape[0]
        except KeyError:  # no event written yet
            return 0

    def plan():
        uid = yield from bps.open_run()
        for _ in range(3):
            yield from bps.trigger_and_read([det])
        # The run stays open: only the recorder's idle flush can get them there.
        _wait_for(lambda: events_in_catalogue(uid) >= 3, "3 events in the catalogue")
        counts.append(events_in_catalogue(uid))
        yield from bps.close_run()

    RE(plan())
    assert counts == [3]


# A session in a process of its own, writing NeXus and the catalogue of the test session
# (HUTCH_CATALOG_URI); its plan gets OUT (a path) to report on.
_SESSION = """
import json, os, sys
from pathlib import Path

import bluesky.plans as bp
import numpy as np

from hutch.ca import configure_ca_client
from hutch.config import Settings
from hutch.profile import load_profile
from hutch.session import Session

data_dir, ca_port, OUT = sys.argv[1:]
configure_ca_client(*map(int, ca_port.split(",")))
session = Session(
    load_profile("demo"), Settings(data_dir=Path(data_dir)), live_table=False, plots=False
)
"""

_PUBLISH_UNTIL_KILLED = """
from ophyd.sim import det1

published = open(OUT, "w")
primary = set()

def log(name, doc):
    # Subscribed after the recorder, whose callback returns once the recorder holds the
    # document: every event written here (and synced to disk) had reached the recorder.
    if name == "start":
        published.write(f"start {doc['uid']} {session.recorder.pid}\\n")
    elif name == "descriptor" and doc["name"] == "primary":
        primary.add(doc["uid"])
        return
    elif name == "event" and doc["descriptor"] in primary:
        published.write(f"event {doc['seq_num']}\\n")
    else:
        return
    published.flush()
    os.fsync(published.fileno())

session.RE.subscribe(log)
session.RE(bp.count([det1], num=1_000_000, delay=0.01))
"""


def _session_process(script: str, session, sim, data_dir, out) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(HUTCH_CATALOG_URI=session.catalog.uri, HUTCH_CATALOG_API_KEY=session.catalog.api_key)
    ports = ",".join(map(str, sim.ports))
    return subprocess.Popen(
        [sys.executable, "-c", _SESSION + script, str(data_dir), ports, str(out)], env=env
    )


def _assert_no_crash(data_dir) -> None:
    """The recorder's log (under ``data_dir``) shows no crash (it runs faulthandler)."""
    (log,) = (data_dir / "run").glob("recorder-*.log")
    assert "Fatal Python error" not in log.read_text(), log.read_text()[-3000:]


def _complete_lines(path) -> list[str]:
    """The lines of ``path`` that were written whole (a kill may cut the last one short)."""
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_killing_the_acquiring_process_loses_no_published_event(session, sim, tmp_path):
    """kill -9 mid-run: the NeXus file and the catalogue hold every event the dying session
    had published (emitted past its recorder callback), and the run is not closed in either.

    The process is killed at no particular moment, so it may die after the recorder
    acknowledged event m + 1 but before the test's callback logged it: the recorder then has
    one event more than the log, never fewer, and never two more (the RunEngine emits the
    next event only after every callback has taken this one).
    """
    published = tmp_path / "published.log"
    child = _session_process(_PUBLISH_UNTIL_KILLED, session, sim, tmp_path / "data", published)
    try:
        _wait_for(
            lambda: len(_complete_lines(published)) > 30 or child.poll() is not None, "30 events"
        )
        assert child.poll() is None, "the acquiring process ended early"
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    start, *events = _complete_lines(published)
    _, uid, recorder_pid = start.split()
    logged = [int(line.split()[1]) for line in events]
    assert logged == list(range(1, len(logged) + 1))
    # The orphaned recorder writes what it received, then exits on its own.
    _wait_for(lambda: not process_alive(int(recorder_pid)), "the recorder to exit")
    _assert_no_crash(tmp_path / "data")

    (path,) = (tmp_path / "data" / "nexus").glob(f"*{uid[:8]}.nxs")
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert entry["entry_identifier"][()].decode() == uid
        assert "end_time" not in entry and "run_status" not in entry  # no stop came
        data = entry["data"]
        nexus = data[data.attrs["signal"]][()]
    assert len(logged) <= len(nexus) <= len(logged) + 1
    assert not np.isnan(nexus).any()

    run = get_run(session.runs_container, uid)
    assert not run.metadata.get("stop")  # not closed
    primary = run["primary"]
    np.testing.assert_array_equal(primary["seq_num"].read(), np.arange(1, len(nexus) + 1))
    np.testing.assert_array_equal(primary["det1"].read(), nexus)


_FILL_THE_DISK = """
from ophyd.sim import SynSignal

rng = np.random.default_rng(0)  # random: no compression can make it fit
frame = SynSignal(func=lambda: rng.random(131072), name="frame")  # 1 MiB per event
stops = []
session.RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
try:
    session.RE(bp.count([frame], num=10))
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
record = session.runs[-1]
with open(OUT, "w") as out:
    json.dump(
        dict(
            uid=record.uid,
            error=error,
            exit_status=record.exit_status,
            reason=record.reason,
            events=record.events,
            nexus=str(record.nexus),
            stops=stops,
        ),
        out,
        default=str,
    )
session.close()
"""


@pytest.fixture
def small_disk(tmp_path):
    """``tmp_path / "data" / "nexus"``, a 3 MiB tmpfs (mounting needs root), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root; this user is not")
    mount_point = tmp_path / "data" / "nexus"
    mount_point.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # Lazy: a recorder left behind by a failed test must not turn it into a teardown error.
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def _frames(f: h5py.File) -> np.ndarray:
    """The one dataset of 1 MiB rows in the file, wherever the NeXus layout puts it."""
    found: list[h5py.Dataset] = []
    f.visititems(
        lambda _, obj: (
            found.append(obj)
            if isinstance(obj, h5py.Dataset) and obj.shape[1:] == (131072,)
            else None
        )
    )
    assert len({d.id for d in found}) == 1, found  # hard links: one dataset, many names
    return found[0][()]


def test_a_full_disk_fails_the_run_loudly_and_the_catalogue_keeps_it(
    session, sim, tmp_path, small_disk
):
    """NeXus on a 3 MiB disk, 10 MiB of data: RE(plan) fails naming the file, the run's one
    stop document says 'fail' with that reason, the catalogue holds every event and that
    stop, and the NeXus file holds the events written before the disk filled."""
    out = tmp_path / "result.json"
    child = _session_process(_FILL_THE_DISK, session, sim, tmp_path / "data", out)
    try:
        assert child.wait(TIMEOUT * 2) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    _assert_no_crash(tmp_path / "data")  # HDF5 crashes on closing a file it could not write
    result = json.loads(out.read_text())
    nexus = Path(result["nexus"])
    assert nexus.parent == small_disk
    assert result["error"].startswith("RecorderError: ") and str(nexus) in result["error"]
    assert "No space left on device" in result["error"]
    assert result["exit_status"] == "fail" and str(nexus) in result["reason"]
    (stop,) = result["stops"]  # one stop document, which the callbacks after the recorder got
    assert stop["exit_status"] == "fail" and str(nexus) in stop["reason"]
    emitted = result["events"]["primary"]

    run = get_run(session.runs_container, result["uid"])
    assert run.metadata["stop"]["exit_status"] == "fail"
    assert str(nexus) in run.metadata["stop"]["reason"]
    np.testing.assert_array_equal(run["primary"]["seq_num"].read(), np.arange(1, emitted + 1))
    catalogued = run["primary"]["frame"].read()
    assert catalogued.shape == (emitted, 131072)

    with h5py.File(nexus, "r") as f:
        frames = _frames(f)
    written = 0
    while written < min(len(frames), emitted) and np.array_equal(
        frames[written], catalogued[written]
    ):
        written += 1
    assert 1 <= written < emitted, (written, emitted)
