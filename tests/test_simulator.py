"""The simulated beamline against real Channel Access clients: ophyd-async, ophyd, caproto."""

from __future__ import annotations

import time

import bluesky.plan_stubs as bps
import pytest
from bluesky.run_engine import call_in_bluesky_event_loop
from bluesky.utils import FailedStatus
from ophyd_async.core import init_devices
from ophyd_async.epics.motor import Motor, MotorLimitsError

from hutch.simulators import beam_dump, beam_restore
from hutch.simulators.physics import BeamlinePhysics

TIMEOUT = 30.0


def _wait_for(condition, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sample_x(RE):
    with init_devices():
        motor = Motor("DEMO:SAMPLE:X", name="sample_x")
    return motor


def _get(signal):
    return call_in_bluesky_event_loop(signal.get_value())


def test_ophyd_async_motor_put_completes_when_the_move_is_done(RE, sample_x, ca):
    read, _ = ca
    for target in (3.25, -1.5, 0.0):
        RE(bps.mv(sample_x, target))
        # The put-callback came back only once the move was over.
        assert _get(sample_x.motor_done_move) == 1
        assert _get(sample_x.user_readback) == pytest.approx(target, abs=1e-4)
        assert read("DEMO:SAMPLE:X.DRBV") == pytest.approx(target, abs=1e-4)
        assert read("DEMO:SAMPLE:X.RRBV") == round(target / 1e-4)


def test_ophyd_async_motor_refuses_targets_beyond_soft_limits(RE, sample_x):
    before = _get(sample_x.user_readback)

    async def move():
        await sample_x.set(50.0)

    with pytest.raises(MotorLimitsError) as info:
        call_in_bluesky_event_loop(move())
    message = str(info.value)
    assert "sample_x" in message and "50.0" in message
    assert "-10.0" in message and "10.0" in message
    assert _get(sample_x.user_readback) == before


def test_ophyd_epics_motor_in_the_same_run_engine(RE, sample_x, ca):
    from ophyd import EpicsMotor

    gap = EpicsMotor("DEMO:SLIT:GAP", name="slit_gap")
    gap.wait_for_connection(timeout=TIMEOUT)
    assert gap.limits == (0.0, 5.0)
    try:
        RE(bps.mv(gap, 2.0, sample_x, 1.0))
        assert gap.user_readback.get(use_monitor=False) == pytest.approx(2.0, abs=1e-3)
        assert _get(sample_x.user_readback) == pytest.approx(1.0, abs=1e-4)
    finally:
        RE(bps.mv(gap, 1.0, sample_x, 0.0))
        gap.destroy()


def test_set_current_position_changes_the_offset(ca):
    from ophyd import EpicsMotor

    read, write = ca
    motor = EpicsMotor("DEMO:SAMPLE:Y", name="sample_y")
    motor.wait_for_connection(timeout=TIMEOUT)
    dial = read("DEMO:SAMPLE:Y.DRBV")
    try:
        motor.set_current_position(dial + 1.25)
        assert read("DEMO:SAMPLE:Y.OFF") == pytest.approx(1.25)
        assert read("DEMO:SAMPLE:Y.RBV") == pytest.approx(dial + 1.25)
        assert read("DEMO:SAMPLE:Y.DRBV") == pytest.approx(dial)  # nothing moved
        assert read("DEMO:SAMPLE:Y.HLM") == pytest.approx(5.0 + 1.25)
        assert read("DEMO:SAMPLE:Y.SET") == "Use"
    finally:
        write("DEMO:SAMPLE:Y.OFF", 0.0)
        motor.destroy()
    assert read("DEMO:SAMPLE:Y.RBV") == pytest.approx(dial)
    assert read("DEMO:SAMPLE:Y.HLM") == pytest.approx(5.0)


def test_limit_violation_is_refused_like_the_motor_record(ca):
    read, write = ca
    before = read("DEMO:SAMPLE:Y.RBV")
    write("DEMO:SAMPLE:Y", 99.0)  # the put completes at once, without motion
    assert read("DEMO:SAMPLE:Y.LVIO") == 1
    assert read("DEMO:SAMPLE:Y") == pytest.approx(before)
    assert read("DEMO:SAMPLE:Y.RBV") == pytest.approx(before)
    assert read("DEMO:SAMPLE:Y.DMOV") == 1
    write("DEMO:SAMPLE:Y", before + 0.5)
    assert read("DEMO:SAMPLE:Y.LVIO") == 0
    assert read("DEMO:SAMPLE:Y.RBV") == pytest.approx(before + 0.5)
    write("DEMO:SAMPLE:Y", before)


def test_stop_halts_a_long_move(ca):
    read, write = ca
    write("DEMO:SAMPLE:Y.VELO", 0.5)
    try:
        write("DEMO:SAMPLE:Y", 4.5, wait=False)
        _wait_for(lambda: read("DEMO:SAMPLE:Y.DMOV") == 0, what="move start")
        _wait_for(lambda: read("DEMO:SAMPLE:Y.RBV") > 0.05, what="motion")
        write("DEMO:SAMPLE:Y.STOP", 1)
        _wait_for(lambda: read("DEMO:SAMPLE:Y.DMOV") == 1, what="DMOV after STOP")
        stopped = read("DEMO:SAMPLE:Y.RBV")
        assert 0 < stopped < 4.5
        assert read("DEMO:SAMPLE:Y") == pytest.approx(stopped)  # VAL := RBV
        assert read("DEMO:SAMPLE:Y.MOVN") == 0
        time.sleep(0.3)
        assert read("DEMO:SAMPLE:Y.RBV") == stopped
    finally:
        write("DEMO:SAMPLE:Y.VELO", 20.0)
        write("DEMO:SAMPLE:Y", 0.0)
    assert read("DEMO:SAMPLE:Y.RBV") == 0.0


def test_velocity_is_clipped_to_vmax(ca):
    read, write = ca
    write("DEMO:SAMPLE:Y.VELO", 1000.0)
    try:
        assert read("DEMO:SAMPLE:Y.VELO") == read("DEMO:SAMPLE:Y.VMAX") == 50.0
    finally:
        write("DEMO:SAMPLE:Y.VELO", 20.0)


def _count(ca, preset=0.2):
    read, write = ca
    write("DEMO:SCALER1.TP", preset)
    write("DEMO:SCALER1.CNT", 1)  # completes when the count is over
    assert read("DEMO:SCALER1.CNT") == "Done"
    assert read("DEMO:SCALER1.T") == pytest.approx(preset)
    return {n: read(f"DEMO:SCALER1.S{n}") for n in (1, 2, 3)}


def test_scaler_counts_follow_the_beam_current(ca, sim, demo_profile):
    read, _ = ca
    assert read("DEMO:SCALER1.NM2") == "I0" and read("DEMO:SCALER1.NM3") == "diode"
    counts = _count(ca)
    assert counts[1] == pytest.approx(1e7 * 0.2)
    assert counts[2] > 0.5 * 1e6 * 0.2  # monitor at ~reference flux
    beam_dump(demo_profile, sim.port)
    try:
        assert read("DEMO:SR:CURRENT") == 0.0
        dumped = _count(ca)
        assert dumped[2] == 0 and dumped[3] == 0
    finally:
        beam_restore(demo_profile, sim.port)
    assert read("DEMO:SR:CURRENT") > 250
    assert _count(ca)[2] > 0.5 * 1e6 * 0.2


def test_scaler_counts_peak_at_the_true_centre(ca, demo_profile):
    _, write = ca
    centre = BeamlinePhysics(demo_profile.simulation.peak, {}).true_center
    positions = [centre + d for d in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    try:
        diode = []
        for x in positions:
            write("DEMO:SAMPLE:X", x)
            diode.append(_count(ca, preset=0.1)[3])
    finally:
        write("DEMO:SAMPLE:X", 0.0)
    assert positions[diode.index(max(diode))] == pytest.approx(centre)


def test_hutch_scaler_triggers_and_reads(RE, sim):
    from hutch.devices.scaler import Scaler

    with init_devices():
        det = Scaler("DEMO:SCALER1", channels={"I0": 2, "diode": 3}, name="det")
    RE(bps.mv(det.preset_time, 0.1))
    RE(bps.trigger(det, wait=True))
    reading = call_in_bluesky_event_loop(det.read())
    assert reading["det-I0"]["value"] > 0


def test_background_lifecycle(tmp_path, free_port, demo_profile):
    from hutch.config import Settings
    from hutch.simulators import ca_read, start, status, stop

    settings = Settings(data_dir=tmp_path)
    port = free_port()
    state = start(demo_profile, port, settings, timeout=60)
    try:
        assert (state.port, state.profile) == (port, "demo")
        assert (settings.run_dir / "sim-demo.json").exists()
        assert status("demo", settings) == state
        assert ca_read("DEMO:SAMPLE:X.EGU", port, timeout=5) == "mm"
    finally:
        assert stop("demo", settings) is True
    assert status("demo", settings) is None
    assert not (settings.run_dir / "sim-demo.json").exists()
    assert stop("demo", settings) is False


def test_device_without_simulator_is_named(demo_profile):
    from hutch.profile import DeviceSpec
    from hutch.simulators import SimulatorError, make_pvdb

    odd = DeviceSpec.model_validate({"name": "odd", "class": "ophyd.Device", "prefix": "X:"})
    profile = demo_profile.model_copy(update={"devices": [*demo_profile.devices, odd]})
    with pytest.raises(SimulatorError, match=r"'odd'.*ophyd\.device\.Device"):
        make_pvdb(profile)


def test_ca_server_circuits_have_nagle_off(free_port, monkeypatch):
    """Without TCP_NODELAY a put-callback reply waits ~40 ms for the client's delayed ACK."""
    import asyncio
    import socket
    import threading

    from caproto.server import PVGroup, pvproperty

    from hutch.simulators.server import NoDelayContext

    class One(PVGroup):
        x = pvproperty(value=1.0)

    port = free_port()
    monkeypatch.setenv("EPICS_CA_SERVER_PORT", str(port))  # caproto binds this port
    loop = asyncio.new_event_loop()
    contexts = []

    async def serve():
        contexts.append(NoDelayContext(One(prefix="nodelay:").pvdb, ["127.0.0.1"]))
        await contexts[0].run()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "the CA server did not start"
                time.sleep(0.1)
        with client:
            while not contexts[0].circuits:
                assert time.monotonic() < deadline, "the CA server did not accept"
                time.sleep(0.05)
            (circuit,) = contexts[0].circuits
            server_side = circuit.client.writer.get_extra_info("socket")
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=10)


def test_staged_hutch_motor_reads_exact_positions_and_follows_limit_changes(RE, ca):
    """hutch's Motor reads its move settings from monitors while staged: positions stay
    exact and a soft limit lowered mid-scan still stops the next move."""
    from hutch.devices import Motor as HutchMotor

    read, write = ca
    with init_devices():
        motor = HutchMotor("DEMO:SAMPLE:Y", name="sample_y")

    def run_staged(plan):
        RE(bps.stage(motor))
        try:
            RE(plan)
        finally:
            RE(bps.unstage(motor))

    def path():
        for target in (0.5, -1.25, 2.0):
            yield from bps.mv(motor, target)
            reading = yield from bps.rd(motor)
            assert reading == pytest.approx(target, abs=1e-4)
            assert read("DEMO:SAMPLE:Y.RBV") == pytest.approx(target, abs=1e-4)

    run_staged(path())
    try:

        def beyond_new_limit():
            yield from bps.mv(motor, 0.0)
            write("DEMO:SAMPLE:Y.HLM", 0.5)  # while staged: arrives by monitor
            yield from bps.sleep(0.2)
            yield from bps.mv(motor, 0.8)

        with pytest.raises(FailedStatus, match=r"to 0.8mm but motor limits .* x <= 0.5mm"):
            run_staged(beyond_new_limit())
        assert read("DEMO:SAMPLE:Y.RBV") == pytest.approx(0.0, abs=1e-4)
    finally:
        write("DEMO:SAMPLE:Y.HLM", 5.0)
