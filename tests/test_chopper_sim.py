"""The simulated neutron source and disk choppers over real Channel Access.

One process serves a source and two choppers (fast options: the ramps and the phase settling
take a second, not minutes); the tests talk to them with caproto's clients (safe beside the
worker's libca), and follow state changes with monitors. Every wait polls with a generous
deadline: nothing here asserts on how long a step takes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from caproto import AlarmSeverity
from ioc_process import serving

from hutch.ca import ca_client_env
from hutch.simulators import ca_read, ca_write
from hutch.simulators.chopper import ALARMS, COMMANDS, STATES, DiskChopperSim
from hutch.simulators.source import NeutronSourceSim
from hutch.tof import ESS_PULSE_RATE

SRC = "TEST:SRC:"
C1 = "TEST:CHOP1:"
C2 = "TEST:CHOP2:"
FAST = {"acceleration": 30.0, "phase_settle": 0.1}
DEADLINE = 20.0  # s: a busy 2-core machine is slow, never this slow
RATE = ESS_PULSE_RATE
CHARGE = 2.0 / 2.0 * 1e3 / RATE  # µC per pulse: 2 MW / 2 GeV = 1 mA, at 14 Hz

SIM_SCRIPT = f"""
from hutch.simulators.chopper import DiskChopperSim
from hutch.simulators.server import run
from hutch.simulators.source import NeutronSourceSim

source = NeutronSourceSim({SRC!r})
choppers = [DiskChopperSim(prefix, sim={FAST!r}) for prefix in ({C1!r}, {C2!r})]
run({{**source.pvdb, **choppers[0].pvdb, **choppers[1].pvdb}}, ["127.0.0.1"])
"""


@pytest.fixture(scope="module")
def port(free_port, tmp_path_factory) -> Iterator[int]:
    """The port of the process serving the source and the two choppers."""
    log = tmp_path_factory.mktemp("chopper-sim") / "sim.log"
    with serving(SIM_SCRIPT, free_port(), C2 + "ChopState_R", log) as port:
        yield port


def read(port: int, pv: str) -> Any:
    return ca_read(pv, port)


def write(port: int, pv: str, value: Any) -> None:
    ca_write(pv, value, port)  # a put-callback: the IOC has acted on it when this returns


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def wait_state(port: int, chopper: str, state: str) -> None:
    wait_until(lambda: read(port, chopper + "ChopState_R") == state, f"{chopper} {state}")


def read_meta(port: int, pv: str, data_type: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``pv``'s full response (``time``: with alarm status; ``control``: with limits)."""
    from caproto.sync.client import read as caproto_read

    with monkeypatch.context() as patch:
        for key, value in ca_client_env(port).items():
            patch.setenv(key, value)
        return caproto_read(pv, data_type=data_type, timeout=2.0, repeater=False)


@contextlib.contextmanager
def watching(port: int, monkeypatch: pytest.MonkeyPatch, *pvs: str) -> Iterator[dict[str, list]]:
    """Every value the enum PVs ``pvs`` take while the block runs, as their strings, by PV:
    a monitor misses no state however slowly this test polls."""
    from caproto.threading.client import Context

    for key, value in ca_client_env(port).items():
        monkeypatch.setenv(key, value)
    context = Context()
    seen: dict[str, list] = {pv: [] for pv in pvs}
    callbacks = []  # caproto holds callbacks weakly
    try:
        for channel in context.get_pvs(*pvs, timeout=5.0):
            channel.wait_for_connection(timeout=5.0)
            strings = channel.read(data_type="control").metadata.enum_strings
            values = seen[channel.name]

            def record(sub: Any, response: Any, values=values, strings=strings) -> None:
                values.append(strings[response.data[0]].decode())

            callbacks.append(record)
            channel.subscribe(data_type="native").add_callback(record)
        wait_until(lambda: all(seen.values()), "the monitors' first values")
        yield seen
        for pv, values in seen.items():  # the last updates may still be on their way
            wait_until(lambda pv=pv, values=values: values[-1] == read(port, pv), pv)
    finally:
        context.disconnect()


def changes(values: list) -> list:
    """``values`` without repeats in a row."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def test_simulators_serve_the_device_classes_pvs_and_strings() -> None:
    from ophyd_async.core import Device, Signal

    from hutch.devices import chopper as device
    from hutch.devices.source import NeutronSource

    def ca_pvs(dev: Device) -> Iterator[str]:
        for _, child in dev.children():
            if isinstance(child, Signal):
                if child.source.startswith("ca://"):
                    yield child.source.removeprefix("ca://")
            else:
                yield from ca_pvs(child)

    assert tuple(state.value for state in device.ChopperState) == STATES
    assert tuple(command.value for command in device.ChopperCommand) == COMMANDS
    assert tuple(device.ALARMS) == ALARMS
    chopper = device.DiskChopper(C1, name="c", distance=10.0, slit_edges=[[0.0, 10.0]])
    source = NeutronSource(SRC, name="s")
    for dev, sim in ((chopper, DiskChopperSim(C1)), (source, NeutronSourceSim(SRC))):
        pvs = set(ca_pvs(dev))
        assert pvs and pvs <= set(sim.pvdb), sorted(pvs - set(sim.pvdb))


def test_unknown_sim_option_names_the_device() -> None:
    with pytest.raises(ValueError, match=r"disk chopper X:.*spede"):
        DiskChopperSim("X:", sim={"spede": 1})
    with pytest.raises(ValueError, match=r"neutron source S:.*rat"):
        NeutronSourceSim("S:", sim={"rat": 1})


def test_profile_devices_get_their_simulators() -> None:
    from hutch.profile import Profile
    from hutch.simulators import build_groups, make_pvdb

    chopper = {"distance": 6.5, "slit_edges": [[0.0, 10.0]]}
    profile = Profile.model_validate(
        {
            "name": "tof",
            "kind": "neutron",
            "metadata": {"facility": "HUTCH", "beamline": "tof"},
            "plans": ["count"],
            "devices": [
                {"name": "source", "class": "hutch.devices.source.NeutronSource",
                 "prefix": SRC, "sim": {"pulse_rate": 7.0}},
                {"name": "chopper", "class": "hutch.devices.chopper.DiskChopper",
                 "prefix": C1, "options": chopper, "sim": {"max_speed": 14.0}},
            ],
        }
    )  # fmt: skip
    groups = build_groups(profile)
    assert isinstance(groups["source"], NeutronSourceSim)
    assert isinstance(groups["chopper"], DiskChopperSim)
    # The chopper locks to the profile's source: it takes the source's pulse rate.
    assert groups["chopper"].options["pulse_rate"] == 7.0
    assert {C1 + "Spd_S", SRC + "AccumCharge_R"} <= set(make_pvdb(profile, groups))


def test_speed_above_the_limit_is_refused(port, monkeypatch) -> None:
    control = read_meta(port, C2 + "Spd_S", "control", monkeypatch)
    assert (control.metadata.lower_ctrl_limit, control.metadata.upper_ctrl_limit) == (0.0, 28.0)
    before = read(port, C2 + "Spd_S")
    for bad, limit in ((30.0, "maximum speed (max_speed) 28 Hz"), (-1.0, "minimum 0 Hz")):
        with pytest.raises(Exception) as info:  # noqa: PT011 - caproto's ErrorResponseReceived
            write(port, C2 + "Spd_S", bad)
        assert "ECA_PUTFAIL" in str(info.value) and limit in str(info.value)
        assert read(port, C2 + "Spd_S") == before
    with pytest.raises(Exception, match="ChopDly-S.*pulse period"):  # noqa: PT011
        write(port, C2 + "ChopDly-S", 1e9)


def test_spin_up_lock_delay_change_lock_loss_stop_and_park(port, monkeypatch) -> None:
    c = C1
    quarter = 1e9 / RATE / 4  # a quarter turn at 14 Hz: phase 90°
    with watching(port, monkeypatch, c + "ChopState_R", c + "InPhs_R") as seen:
        write(port, c + "ChopDly-S", quarter)
        write(port, c + "Spd_S", RATE)
        assert read(port, c + "TotDly") == pytest.approx(quarter)
        write(port, c + "C_Execute", "Start")
        wait_state(port, c, "PhaseLocked")
        assert read(port, c + "Spd_R") == pytest.approx(RATE)
        assert read(port, c + "InPhs_R") == "Yes"
        assert read(port, c + "Phs_R") == pytest.approx(90.0, abs=0.05)
        assert abs(read(port, c + "DiffTSSamples")) < 200
        spin_up = changes(seen[c + "ChopState_R"])
        assert spin_up == ["Stopped", "Accelerating", "AtSpeed", "PhaseLocked"]

        # A new delay loses the lock, which comes back at the new phase.
        write(port, c + "ChopDly-S", quarter / 2)
        wait_state(port, c, "PhaseLocked")
        assert read(port, c + "Phs_R") == pytest.approx(45.0, abs=0.05)
        # The mechanical calibration adds its angle (as a time at the speed) to the total.
        write(port, c + "MechDly-S", 45.0)
        assert read(port, c + "TotDly") == pytest.approx(quarter, rel=1e-9)
        wait_state(port, c, "PhaseLocked")
        assert read(port, c + "Phs_R") == pytest.approx(90.0, abs=0.05)

        # The simulator's knock: the lock is lost for a while, then comes back by itself.
        write(port, c + "SIM:LOCKLOSS", 0.3)
        wait_state(port, c, "PhaseLocked")

        write(port, c + "C_Execute", "Stop")
        wait_state(port, c, "Stopped")
        assert read(port, c + "Spd_R") == 0.0
        assert read(port, c + "InPhs_R") == "No"

        write(port, c + "Park_S", 123.0)
        write(port, c + "C_Park", 1)
        assert read(port, c + "C_Execute") == "Park"
        wait_state(port, c, "Parked")
        assert read(port, c + "Pos_R") == pytest.approx(123.0, abs=1e-6)

    locked = ["AtSpeed", "PhaseLocked"]  # each loss of lock, and the lock regained
    assert changes(seen[c + "ChopState_R"]) == [
        *spin_up,
        *locked * 3,  # the delay, the calibration, the knock
        "Decelerating",
        "Stopped",
        "Parking",
        "Parked",
    ]
    assert changes(seen[c + "InPhs_R"]) == ["No", "Yes"] * 4 + ["No"]


def test_non_commensurate_speed_never_locks_and_a_fault_clears(port, monkeypatch) -> None:
    c = C2
    write(port, c + "Spd_S", 10.0)  # 14 / 10 is no whole number
    with watching(port, monkeypatch, c + "ChopState_R", c + "InPhs_R") as seen:
        write(port, c + "C_Execute", "Start")
        wait_state(port, c, "AtSpeed")
        assert read(port, c + "Spd_R") == pytest.approx(10.0)
        samples = set()
        end = time.monotonic() + 1.5  # a commensurate disk locks within 0.5 s here
        while time.monotonic() < end:
            samples.add(round(read(port, c + "DiffTSSamples")))
            time.sleep(0.1)
        assert len(samples) > 2  # its delay after each pulse drifts
    assert changes(seen[c + "ChopState_R"]) == ["Stopped", "Accelerating", "AtSpeed"]
    assert changes(seen[c + "InPhs_R"]) == ["No"]

    write(port, c + "SIM:FAULT", "HW_Alrm")
    assert read(port, c + "ChopState_R") == "Fault"
    alarm = read_meta(port, c + "HW_Alrm", "time", monkeypatch)
    assert alarm.metadata.severity == AlarmSeverity.MAJOR_ALARM
    assert alarm.data[0].decode()
    other = read_meta(port, c + "Pwr_Alrm", "time", monkeypatch)
    assert other.metadata.severity == AlarmSeverity.NO_ALARM and other.data[0] == b""
    with pytest.raises(Exception, match="Fault"):  # noqa: PT011
        write(port, c + "C_Execute", "Start")
    wait_until(lambda: read(port, c + "Spd_R") == 0.0, "the faulty disk to coast down")
    assert read(port, c + "ChopState_R") == "Fault"  # until the alarms are cleared

    write(port, c + "C_Execute", "ClearAlarms")
    assert read(port, c + "ChopState_R") == "Stopped"
    alarm = read_meta(port, c + "HW_Alrm", "time", monkeypatch)
    assert alarm.metadata.severity == AlarmSeverity.NO_ALARM and alarm.data[0] == b""


def test_source_pulses_and_charge(port, monkeypatch) -> None:
    t = read(port, SRC + "PulseTime_R")
    assert t * RATE == pytest.approx(round(t * RATE), abs=1e-3)
    assert abs(t - time.time()) < 5.0
    assert read(port, SRC + "PulseRate_R") == RATE
    assert read(port, SRC + "Power_R") == pytest.approx(2.0, rel=0.1)

    def stamped(pv: str) -> tuple[Any, int]:
        """``pv``'s value and the index of the pulse it is of (its timestamp is the T0)."""
        response = read_meta(port, SRC + pv, "time", monkeypatch)
        return response.data[0], round(response.metadata.timestamp * RATE)

    t0 = time.monotonic()  # before the first read and after the last: n1 - n0 pulses at most
    n0, j0 = stamped("PulseCount_R")
    q0, i0 = stamped("AccumCharge_R")
    wait_until(lambda: read(port, SRC + "PulseCount_R") >= n0 + 14, "14 more pulses")
    (n1, j1), t1 = stamped("PulseCount_R"), time.monotonic()
    assert n1 - n0 <= RATE * (t1 - t0) + 3  # ~14 a second, never more
    assert n1 - n0 == j1 - j0  # every pulse counted, at its own T0
    # The charge is posted on its own after the count: wait for 14 pulses of its own.
    wait_until(lambda: stamped("AccumCharge_R")[1] >= i0 + 14, "14 more pulses of charge")
    q1, i1 = stamped("AccumCharge_R")
    assert (q1 - q0) / (i1 - i0) == pytest.approx(CHARGE, rel=0.03)  # 1 % noise per pulse

    write(port, SRC + "SIM:DUMP", 1)
    assert read(port, SRC + "Power_R") == 0.0
    wait_until(lambda: read(port, SRC + "ProtonCharge_R") == 0.0, "a pulse without protons")
    q2, i2 = stamped("AccumCharge_R")
    wait_until(lambda: stamped("AccumCharge_R")[1] >= i2 + 5, "pulses while dumped")
    assert stamped("AccumCharge_R")[0] == q2  # the clock runs on, the charge does not

    write(port, SRC + "SIM:DUMP", 0)
    wait_until(lambda: read(port, SRC + "AccumCharge_R") > q2, "charge again")
    assert read(port, SRC + "Power_R") == pytest.approx(2.0, rel=0.1)
