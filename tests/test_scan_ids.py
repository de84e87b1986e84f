"""Scan numbers: one counter per beamline and data directory, shared by every process.

Two ``hutch run`` processes and the queue server taking runs of one data directory are in
``test_queue.py`` (they share its queue stack).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine
from bluesky.preprocessors import run_decorator
from bluesky.run_engine import get_bluesky_event_loop
from hutch_command import hutch
from sessions import bare_profile, offline_session, write_run

from hutch import plans
from hutch.catalog import AmbiguousScanIdError, get_run, runs_container
from hutch.config import Settings
from hutch.export import ExportError, export_nexus
from hutch.scan_ids import ScanIdError, scan_counter
from hutch.session import MissingMetadataError, Session

DEMO = Path(__file__).resolve().parents[1] / "profiles" / "demo.toml"

# Takes 50 numbers once the file argv[2] exists; prints them on one line.
TAKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hutch.scan_ids import scan_counter

    counter = scan_counter(Path(sys.argv[1]), "demo")
    print("ready", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.005)
    print(" ".join(str(counter.take()) for _ in range(50)), flush=True)
    """
)


def test_two_processes_taking_at_once_get_distinct_consecutive_numbers(tmp_path):
    run_dir, go = tmp_path / "run", tmp_path / "go"
    takers = [
        subprocess.Popen(
            [sys.executable, "-c", TAKER, str(run_dir), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for taker in takers:  # both imported and waiting: they start taking together
            assert taker.stdout.readline() == "ready\n", taker.stderr.read()
        go.touch()
        outputs = [taker.communicate(timeout=120) for taker in takers]
    finally:
        for taker in takers:
            if taker.poll() is None:
                taker.kill()
                taker.wait()
    numbers = []
    for taker, (out, err) in zip(takers, outputs, strict=True):
        assert taker.returncode == 0, err
        mine = [int(n) for n in out.split()]
        assert len(mine) == 50 and mine == sorted(mine)  # each taker's numbers increase
        numbers += mine
    assert sorted(numbers) == list(range(1, 101))  # no number twice, none skipped
    counter = scan_counter(run_dir, "demo")
    assert counter.last() == 100 and counter.peek() == 101 and counter.last() == 100
    assert counter.peek(floor=1000) == 1001
    assert scan_counter(run_dir, "other-beamline").last() == 0  # one counter per beamline

    # A counter file that is not a number is an error naming it, not scan 1 again.
    counter.path.write_text("garbage\n")
    with pytest.raises(ScanIdError, match=f"{counter.path}.*'garbage"):
        counter.take()


def test_a_refused_run_leaves_its_number_to_the_next(session):
    """On the simulated beamline with the catalogue: the refused run takes no number, the
    next run gets it, in its start document, its file name and the catalogue's lookup."""
    RE, d = session.RE, session.devices
    counter = scan_counter(session.settings.run_dir, session.profile.name)
    (uid,) = RE(plans.count([d["det"]], num=1)).run_start_uids
    number = session.record(uid).scan_id
    assert counter.last() == number and RE.md["scan_id"] == number

    sample = RE.md.pop("sample")
    try:
        for _ in range(2):
            with pytest.raises(MissingMetadataError):
                RE(plans.count([d["det"]], num=1))
        assert counter.last() == number
    finally:
        RE.md["sample"] = sample
    (uid,) = RE(plans.count([d["det"]], num=1)).run_start_uids
    record = session.record(uid)
    assert record.scan_id == number + 1 and RE.md["scan_id"] == number + 1
    assert counter.last() == number + 1
    assert record.nexus.name == f"demo_{number + 1:05d}_{uid[:8]}.nxs"
    assert record.png.name == f"demo_{number + 1:05d}_{uid[:8]}.png"
    # Looked up by scan id, each is the one run with that number.
    assert get_run(session.runs_container, number + 1).metadata["start"]["uid"] == uid
    assert session.runs_container[number + 1].metadata["start"]["uid"] == uid  # the shell's


def test_shell_and_plain_sessions_share_the_counter(tmp_path):
    """A shell's session (RE.md kept on disk) and another process's session take turns."""
    profile = bare_profile(tmp_path, "numbered")
    settings = Settings(data_dir=tmp_path / "data")

    def session(**options) -> Session:
        return offline_session(profile, settings, **options)

    def run(s: Session, **md) -> int:
        @run_decorator(md=md)
        def empty():
            yield from bps.null()

        (uid,) = s.RE(empty()).run_start_uids
        return s.record(uid).scan_id

    shell, plain = session(persist_md=True), session()
    try:
        shell.RE.md["sample"] = "LaB6"
        assert [run(shell), run(plain, sample="Si"), run(shell)] == [1, 2, 3]
        with pytest.raises(MissingMetadataError):
            run(plain)  # refused: takes nothing
        assert run(plain, sample="Si") == 4
        # The user jumps ahead in the shell; the jump is the shell's next run.
        shell.RE.md["scan_id"] = 1000
        with pytest.raises(MissingMetadataError):
            run(shell, sample=" ")  # refused after the jump: neither is lost
        assert run(shell) == 1001
        assert run(plain, sample="Si") == 1002
        # Numbers at or below the last one taken would name two runs: ignored.
        shell.RE.md["scan_id"] = 5
        assert run(shell) == 1003
        with pytest.raises(ScanIdError, match=r"RE.md\['scan_id'\] is 'x'"):
            shell.RE.md["scan_id"] = "x"
            run(shell)
        shell.RE.md["scan_id"] = 1003
        with pytest.raises(MissingMetadataError):
            run(shell, sample=None)  # bluesky leaves its peek in RE.md; closing undoes it
    finally:
        shell.close()
    try:
        assert run(plain, sample="Si") == 1004
    finally:
        plain.close()

    # The next shell reads the kept RE.md: the scan id its last run took, not the refused
    # run's number; its next run follows the plain session's.
    with session(persist_md=True) as shell:
        assert shell.RE.md["scan_id"] == 1003 and shell.RE.md["sample"] == "LaB6"
        assert run(shell) == 1005
        shell.RE.md["scan_id"] = 2000  # a jump no run took yet holds after the session
    with session() as plain:
        assert run(plain, sample="Si") == 2001
    assert scan_counter(settings.run_dir, "numbered").last() == 2001
    # The RunEngine's own numbering is back after close.
    assert plain.RE.scan_id_source(plain.RE.md) == 2002  # bluesky's: RE.md["scan_id"] + 1


def test_a_session_puts_back_the_run_engines_scan_id_source_and_normalizer(tmp_path):
    """Chained like the md_validator: the owner's normalizer still runs, and is back after."""
    profile = bare_profile(tmp_path, "numbered")

    def normalizer(md):
        md["normalized"] = True
        return md

    def source(md):
        return 42

    RE = RunEngine({}, loop=get_bluesky_event_loop(), md_normalizer=normalizer)
    RE.scan_id_source = source
    starts: list[dict] = []
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    with offline_session(profile, Settings(data_dir=tmp_path / "data"), RE=RE):
        RE(plans.count([], num=1), sample="Si")
    RE(plans.count([], num=1), sample="Si")
    assert [(s["scan_id"], s["normalized"]) for s in starts] == [(1, True), (42, True)]
    assert (RE.scan_id_source, RE.md_normalizer) == (source, normalizer)


def test_a_scan_id_naming_several_runs_is_an_error_naming_them(session, sim, tmp_path):
    """Runs from before scan numbers were counted may share one: no silent newest pick."""
    name = "scan-ids-ambiguous"
    profile = tmp_path / f"{name}.toml"
    profile.write_text(DEMO.read_text().replace('name = "demo"', f'name = "{name}"', 1))
    container = runs_container(session.catalog, name)
    uids = [f"{digit * 8}-0000-4000-8000-000000000000" for digit in "abc"]
    write_run(container, uids[0], scan_id=7, plan_name="count")
    write_run(container, uids[1], scan_id=7, plan_name="count")
    write_run(container, uids[2], scan_id=8, plan_name="count")

    with pytest.raises(AmbiguousScanIdError) as info:
        get_run(container, 7)
    message = str(info.value)
    assert "\n" not in message and "scan id 7 names 2 runs" in message
    assert uids[0][:8] in message and uids[1][:8] in message and uids[2][:8] not in message
    with pytest.raises(AmbiguousScanIdError):
        container[7]  # the shell's catalog[7]
    with pytest.raises(AmbiguousScanIdError):
        container.scan_id[7]
    assert get_run(container, 8).metadata["start"]["uid"] == uids[2]
    assert get_run(container, uids[1][:8]).metadata["start"]["uid"] == uids[1]
    with pytest.raises(ExportError, match="scan id 7 names 2 runs"):
        export_nexus(container, "7", tmp_path / "export")

    # As the user sees it: one line naming the runs, nothing written.
    env = {
        **os.environ,
        "HUTCH_DATA_DIR": str(session.settings.data_dir),
        "HUTCH_CATALOG_PORT": str(session.settings.catalog_port),
    }
    out = tmp_path / "cli-export"
    proc = hutch("export", "nexus", "7", "--profile", str(profile), "-o", str(out), env=env,
                 check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("hutch export: error: run '7' in the catalogue ")
    assert "scan id 7 names 2 runs: aaaaaaaa (count, " in line and "bbbbbbbb (count, " in line
    assert not out.exists()
