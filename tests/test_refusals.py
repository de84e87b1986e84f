"""Bad input to ``hutch run`` is refused in one line, before anything moves or a run opens.

Each case runs the real command against the simulated beamline over Channel Access: exit
status 2, one line on stderr naming what is wrong, nothing on stdout (no run uid), and at the
end no run in the catalogue or NeXus directory and every motor where it was.
"""

import json
import os
import shlex

import pytest
from hutch_command import hutch

from hutch.ca import ca_client_env

# (arguments of `hutch run`, what the one-line error says or the parts it must hold). The
# first seven are the ones a new user tried; those reaching a motor's soft limits need the
# devices connected.
CASES = [
    ("scan '[det]' sample_x 0 5 num=-3", "num must be a whole number of at least 1, not -3"),
    ("scan '[det]' sample_x 0 5 num=0", "num must be a whole number of at least 1, not 0"),
    ("scan '[det]' sample_x 0 5 num=2.5", "num must be a whole number of at least 1, not 2.5"),
    (
        "scan '[det]' sample_x 0 \"'a'\" num=5",
        "sample_x stop must be a finite number, not 'a'",
    ),
    ("scan '[det]' sample_x 0 1e999 num=5", "sample_x stop must be a finite number, not inf"),
    (
        "scan '[det]' sample_x 0 50 num=5",
        "scan: sample_x stop 50 mm is outside sample_x's soft limits [-10, 10] mm",
    ),
    ("teleport", "plan 'teleport' is not offered by profile 'demo'"),
    ("scan '[det]' sample_q 0 1 num=5", "'sample_q' is neither a Python literal nor a device"),
    ("count '[det]' nmu=3", "unexpected keyword argument 'nmu'"),
    ("scan '[det]' sample_x 0 1", "scan: give the number of points, num=N"),
    ("scan '[det]' sample_x 0 num=3", "give motor, start, stop for each motor (2 arguments given)"),
    ("scan '[det]' 5 0 1 num=3", "scan: motor must be a device, not 5"),
    ("count det", "count: detectors must be a list of devices, e.g. [det], not det"),
    ("count '[det]' num=3 delay=-1", "count: delay must not be negative, not -1"),
    (
        "grid_scan '[det]' sample_x 0 1 3 sample_y 0 1 \"'x'\"",
        "grid_scan: sample_y num must be a whole number of at least 1, not 'x'",
    ),
    (
        "list_scan '[det]' sample_x '[0, 1, 99]'",
        "list_scan: sample_x position 2 99 mm is outside sample_x's soft limits [-10, 10] mm",
    ),
    (
        "rel_scan '[det]' sample_y -1 100 num=3",
        # Relative to wherever the suite's other tests left sample_y.
        ("rel_scan: sample_y stop +100 from ", " mm is outside sample_y's soft limits [-5, 5] mm"),
    ),
    (
        "scan '[det]' slit_gap 1 -2 num=3",
        "scan: slit_gap stop -2 mm is outside slit_gap's soft limits [0, 5] mm",
    ),
    ("align sample_x det 0 1 2", "align: num must be a whole number of at least 3, not 2"),
    (
        "fly_scan '[det1]' sample_x -1 1 1 panda=panda1 velocity=1.0",
        "fly_scan: num must be a whole number of at least 2, not 1",
    ),
    (
        "fly_scan '[det1]' sample_x -1 1 21 panda=panda1 velocity=-2",
        "fly_scan: velocity must be positive, not -2",
    ),
    (
        "fly_scan '[det1]' sample_x -1 1 21 panda=panda1 velocity=1000.0",
        "exceeds sample_x's maximum velocity (VMAX) 50 mm/s",
    ),
    ("count '[det]' --md 'sample= '", "required metadata missing: sample"),
]

MOTORS = ["DEMO:SAMPLE:X.RBV", "DEMO:SAMPLE:Y.RBV", "DEMO:SLIT:GAP.RBV"]


@pytest.fixture
def env(sim, tmp_path, free_port):
    env = dict(os.environ)
    env.update(ca_client_env(*sim.ports))
    env.update(HUTCH_DATA_DIR=str(tmp_path / "data"), HUTCH_CATALOG_PORT=str(free_port()))
    return env


def test_bad_arguments_are_refused_in_one_line_before_anything_moves(env, tmp_path, ca):
    read, _ = ca
    where = {pv: read(pv) for pv in MOTORS}
    try:
        _refusals(env, tmp_path, read, where)
    finally:
        hutch("catalog", "down", env=env)


def _refusals(env, tmp_path, read, where):
    for command_line, expected in CASES:
        proc = hutch("run", *shlex.split(command_line), "-q", env=env, check=False)
        what = f"hutch run {command_line}"
        assert proc.returncode == 2, f"{what}: exit {proc.returncode}\n{proc.stderr}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, f"{what}:\n{proc.stderr}"
        assert lines[0].startswith("hutch run: error: "), f"{what}: {lines[0]}"
        for part in (expected,) if isinstance(expected, str) else expected:
            assert part in lines[0], f"{what}: {lines[0]}"
        assert proc.stdout == "", f"{what} printed a run: {proc.stdout}"
    assert {pv: read(pv) for pv in MOTORS} == where
    nexus = tmp_path / "data" / "nexus"
    assert not nexus.exists() or not list(nexus.glob("*.nxs"))

    # No refusal opened a run or used a scan number: the next run is scan 1, the only one.
    hutch("run", "count", "[det]", "-q", env=env)
    runs = json.loads(hutch("runs", "--json", env=env).stdout)
    assert [(r["scan_id"], r["plan_name"], r["exit_status"]) for r in runs] == [
        (1, "count", "success")
    ]


def test_debug_shows_the_traceback(env):
    proc = hutch(
        "run", "scan", "[det]", "sample_x", "0", "5", "num=-3", "--debug", env=env, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hutch run: error: scan: num must")
