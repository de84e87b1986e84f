"""Every offered plan refuses bad arguments when called, and positions beyond a motor's soft
limits before its run opens: against the simulated beamline over Channel Access."""

import math

import bluesky.plan_stubs as bps
import pytest
from bluesky.utils import is_plan

from hutch import plans
from hutch.plans.checks import check_arguments


@pytest.fixture
def starts(session):
    """The start documents the session's RunEngine emits during the test."""
    docs = []
    token = session.RE.subscribe(lambda name, doc: docs.append(doc), "start")
    yield docs
    session.RE.unsubscribe(token)


def _position(session, motor):
    return session.RE(bps.rd(motor.user_readback)).plan_result


@pytest.mark.parametrize(
    ("plan", "args", "kwargs", "message"),
    [
        ("scan", ("sample_x", 0, 1), {"num": -3}, "scan: num must be a whole number of at least 1"),
        ("scan", ("sample_x", 0, math.inf), {"num": 3}, "sample_x stop must be a finite number"),
        ("grid_scan", ("sample_x", 0, 1, 2.5), {}, "sample_x num must be a whole number"),
        ("list_scan", ("sample_x", []), {}, "the positions of sample_x must be a non-empty list"),
        ("count", (), {"num": 3, "delay": [0.1]}, "delay lists 1 delays; 3 points need 2"),
    ],
)
def test_bad_arguments_are_refused_when_the_plan_is_called(session, plan, args, kwargs, message):
    d = session.devices
    resolved = [d.get(a, a) if isinstance(a, str) else a for a in args]
    with pytest.raises(plans.ScanArgumentError, match=message):
        getattr(plans, plan)([d["det"]], *resolved, **kwargs)  # no RunEngine needed


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: plans.scan([d["det"]], d["sample_x"], 0, 12, num=5),
         r"scan: sample_x stop 12 mm is outside sample_x's soft limits \[-10, 10\] mm"),
        (lambda d: plans.grid_scan([d["det"]], d["sample_y"], -6, 0, 3, d["sample_x"], 0, 1, 3),
         r"grid_scan: sample_y start -6 mm is outside sample_y's soft limits \[-5, 5\] mm"),
        (lambda d: plans.rel_scan([d["det"]], d["sample_x"], -1, 30, num=3),
         r"rel_scan: sample_x stop \+30 from .* mm is outside sample_x's soft limits"),
        (lambda d: plans.list_scan([d["det"]], d["slit_gap"], [1.0, 6.0]),
         r"list_scan: slit_gap position 1 6 mm is outside slit_gap's soft limits \[0, 5\] mm"),
        (lambda d: plans.align(d["sample_x"], d["det"], 9, 11, 5),
         r"align: stop 11 mm is outside sample_x's soft limits"),
    ],
)  # fmt: skip
def test_positions_beyond_soft_limits_are_refused_before_the_run_opens(
    session, starts, make, message
):
    d = session.devices
    where = {name: _position(session, d[name]) for name in ("sample_x", "sample_y", "slit_gap")}
    runs = len(session.runs)
    with pytest.raises(plans.ScanArgumentError, match=message):
        session.RE(make(d))
    assert starts == [] and len(session.runs) == runs  # no run opened
    assert {name: _position(session, d[name]) for name in where} == where  # nothing moved


def test_a_plan_within_limits_runs(session):
    d = session.devices
    result = session.RE(plans.rel_scan([d["det"]], d["sample_x"], -0.5, 0.5, num=3))
    assert result.exit_status == "success"


def test_wrapped_plans_look_like_bluesky_plans():
    """The queue server lists them (is_plan) with bluesky's signatures and docstrings."""
    import inspect

    import bluesky.plans as bp

    for name in ("count", "scan", "rel_scan", "grid_scan", "list_scan"):
        plan = getattr(plans, name)
        assert is_plan(plan)
        assert inspect.signature(plan) == inspect.signature(getattr(bp, name))
        assert plan.__doc__ == getattr(bp, name).__doc__
    det = type("Det", (), {"name": "det"})()
    assert check_arguments(plans.count, ([det],), {"num": None}) == []  # count until stopped
