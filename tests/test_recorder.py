"""The recorder process: documents leave the RunEngine's thread and none is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from event_model import compose_run

from hutch.recorder import Recorder, RecorderConfig, RecorderError, _coalesce
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


_ACQUIRE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import bluesky.plans as bp

    from hutch.ca import configure_ca_client
    from hutch.config import Settings
    from hutch.profile import load_profile
    from hutch.session import Session

    data_dir, ca_port, sent_log = sys.argv[1:]
    configure_ca_client(int(ca_port))
    session = Session(
        load_profile("demo"), Settings(data_dir=Path(data_dir)),
        live_table=False, plots=False, catalog=False,
    )
    sent = open(sent_log, "w")

    def log(name, doc):
        # Subscribed after the recorder: a line here is a document already sent to it.
        if name == "start":
            sent.write(f"start {doc['uid']} {session.recorder.pid}\\n")
        elif name == "event":
            sent.write(f"event {doc['seq_num']}\\n")
        sent.flush()

    session.RE.subscribe(log)
    session.RE(bp.count([session.devices["det"]], num=100_000, delay=0.3))
    """
)


def test_killing_the_acquiring_process_loses_no_sent_event(sim, tmp_path):
    sent_log = tmp_path / "sent.log"
    child = subprocess.Popen(
        [sys.executable, "-c", _ACQUIRE, str(tmp_path / "data"), str(sim.port), str(sent_log)]
    )
    try:

        def lines() -> list[str]:
            return sent_log.read_text().splitlines() if sent_log.exists() else []

        _wait_for(lambda: len(lines()) >= 6 or child.poll() is not None, "5 events")
        assert child.poll() is None, "the acquiring process ended early"
        # Kill between two events (0.3 s apart), not while one is being sent.
        n = len(lines())
        _wait_for(lambda: len(lines()) > n, "the next event")
        time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    _, uid, recorder_pid = lines()[0].split()
    sent = [int(line.split()[1]) for line in lines()[1:]]
    assert sent == list(range(1, len(sent) + 1))
    # The orphaned recorder writes what it received, then exits on its own.
    _wait_for(lambda: not process_alive(int(recorder_pid)), "the recorder to exit")

    (path,) = (tmp_path / "data" / "nexus").glob(f"*{uid[:8]}.nxs")
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert entry["entry_identifier"][()].decode() == uid
        # Not closed: no stop document came.
        assert "end_time" not in entry and "run_status" not in entry
        counts = entry["data"]["det-diode"][()]
        assert len(counts) == len(sent)
        assert not np.isnan(counts.astype(float)).any()
