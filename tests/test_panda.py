"""The simulated PandA and hutch's PandA against each other: real Channel Access, real HDF5.

The simulator runs in a process of its own serving a motor record and a PandA whose encoder 1
reads it. Each device check runs a RunEngine in a child process that points its CA client at
that simulator before its first CA use (libca reads the environment once per process, and
this worker's may already serve the demo beamline); the child prints its results as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import h5py
import numpy as np
import pytest
from event_model import DocumentNames, schema_validators
from ioc_process import run_client, serving

PANDA = "TEST:PANDA1"
MOTOR = "TEST:M1"
MOTOR_SIM = {
    "velocity": 2.0,
    "max_velocity": 10,
    "acceleration": 0.05,
    "low_limit": -20,
    "high_limit": 20,
}
RESOLUTION = 1e-4  # the motor record's default MRES: one encoder count

SIM_SCRIPT = f"""
from hutch.simulators.motor import MotorRecord
from hutch.simulators.panda import PandASim
from hutch.simulators.server import run

motor = MotorRecord({MOTOR!r}, sim={MOTOR_SIM!r})
panda = PandASim({PANDA!r}, encoders={{1: motor}})
run({{**motor.pvdb, **panda.pvdb}}, ["127.0.0.1"])
"""

CLIENT_PRELUDE = f"""
import asyncio, json, sys, time
from hutch.ca import configure_ca_client

port, directory = int(sys.argv[1]), sys.argv[2]
configure_ca_client(port)  # before the first CA use of this process

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky import RunEngine
from ophyd_async.core import (
    DetectorTrigger, StaticFilenameProvider, StaticPathProvider, TriggerInfo, init_devices,
)
from hutch.devices.panda import PandA, PcompInfo, SeqInfo

RE = RunEngine({{}}, call_returns_result=True)
docs = []
RE.subscribe(lambda name, doc: docs.append((name, doc)))
result = {{}}

def panda_device(filename, **kwargs):
    provider = StaticPathProvider(StaticFilenameProvider(filename), directory)
    with init_devices():
        panda = PandA({PANDA!r}, provider, name="panda1", **kwargs)
    return panda

def call(coro, timeout=60):
    return asyncio.run_coroutine_threadsafe(coro, RE.loop).result(timeout=timeout)
"""


@pytest.fixture(scope="module")
def panda_port(free_port, tmp_path_factory) -> Iterator[int]:
    """The port of a simulator serving the motor and the PandA reading it on encoder 1."""
    with serving(
        SIM_SCRIPT,
        free_port(),
        f"{PANDA}:PCAP:ACTIVE",
        tmp_path_factory.mktemp("panda-sim") / "sim.log",
    ) as port:
        yield port


def client(port: int, directory: Path, body: str, *args: Any) -> dict[str, Any]:
    """Run ``body`` in a child with a RunEngine and CA on ``port``; its JSON output."""
    return run_client(CLIENT_PRELUDE, body, port, directory, *args)


def stream_data(docs: list[list[Any]]) -> dict[str, tuple[Path, str, list[tuple[int, int]]]]:
    """Validated documents' external data: data key -> (file, dataset, datum index ranges)."""
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)
    ranges: dict[str, list[tuple[int, int]]] = {}
    for name, doc in docs:
        if name == "stream_datum":
            indices = doc["indices"]
            ranges.setdefault(doc["stream_resource"], []).append(
                (indices["start"], indices["stop"])
            )
    return {
        doc["data_key"]: (
            Path(urlparse(doc["uri"]).path),
            doc["parameters"]["dataset"],
            sorted(ranges.get(doc["uid"], [])),
        )
        for name, doc in docs
        if name == "stream_resource"
    }


def covered(ranges: list[tuple[int, int]]) -> int:
    """Rows the stream_datum ranges cover, checking they are contiguous from 0."""
    stop = 0
    for start, end in ranges:
        assert start == stop, ranges
        stop = end
    return stop


def read(path: Path, dataset: str) -> np.ndarray:
    with h5py.File(path, "r", swmr=True) as f:
        return f[dataset][()]


FLY = """
N, START, STEP = 20, 1.4, 0.05  # mm; a pulse every 500 counts
with init_devices():
    from hutch.devices.motor import Motor
    motor = Motor("TEST:M1", name="sample_x")
panda = panda_device("fly", encoders={"1": "sample_x"})
from ophyd_async.core import FlyMotorInfo

RE(bps.mv(motor, 0.0))

@bpp.stage_decorator([panda, motor])
@bpp.run_decorator()
def fly():
    # Constant velocity (2 mm/s) from 1.0 to 2.6 mm: the pulses at 1.4 .. 2.35 mm, well
    # clear of the run-up (the simulated motor's readback ticks at 20 Hz).
    yield from bps.prepare(motor, FlyMotorInfo(start_position=1.0, end_position=2.6,
                                               time_for_move=0.8), wait=True)
    yield from bps.prepare(panda.pcomp_flyer, PcompInfo(encoder=1, start=START, step=STEP,
                                                        pulses=N), wait=True)
    yield from bps.prepare(panda, TriggerInfo(trigger=DetectorTrigger.EXTERNAL_LEVEL,
                                              number_of_events=N), wait=True)
    yield from bps.declare_stream(panda, name="primary", collect=True)
    yield from bps.kickoff(panda, wait=True)
    yield from bps.kickoff(panda.pcomp_flyer, wait=True)
    yield from bps.kickoff(motor, wait=True)
    yield from bps.collect_while_completing(flyers=[motor, panda.pcomp_flyer, panda],
                                            dets=[panda], flush_period=0.2,
                                            stream_name="primary")

result["exit"] = RE(fly()).exit_status
result["num_captured"] = call(panda.data.num_captured.get_value())
result["pcomp_active"] = call(panda.pcomp.active.get_value())
result["hints"] = panda.hints
"""


def test_pcomp_fly_captures_each_compare_point_once(panda_port, tmp_path):
    """A motor flown at constant velocity through N compare points: N pulses, N captured
    positions (each on its compare point to one encoder count), increasing timestamps, and
    stream documents covering exactly the N rows of the HDF5 file."""
    out = client(panda_port, tmp_path, FLY)
    assert out["exit"] == "success"
    n, start, step = 20, 1.4, 0.05
    assert out["num_captured"] == n
    assert out["pcomp_active"] is False
    assert out["hints"] == {"fields": ["panda1-sample_x"]}
    data = stream_data(out["docs"])
    assert set(data) == {"panda1-sample_x", "panda1-time"}
    for path, _, ranges in data.values():
        assert path.parent == tmp_path and path.name == "fly.h5"
        assert covered(ranges) == n
    positions = read(*data["panda1-sample_x"][:2])
    times = read(*data["panda1-time"][:2])
    assert len(positions) == len(times) == n
    expected = start + step * np.arange(n)
    assert np.all(np.diff(positions) > 0)
    np.testing.assert_allclose(positions, expected, atol=RESOLUTION * 1.01)
    assert np.all(times > 0) and np.all(np.diff(times) > 0)
    # Timestamps interpolated along the constant-velocity move: 0.05 mm at 2 mm/s apart.
    np.testing.assert_allclose(np.diff(times), step / 2.0, rtol=0.2)
    descriptor = next(doc for name, doc in out["docs"] if name == "descriptor")
    assert descriptor["data_keys"]["panda1-sample_x"]["external"] == "STREAM:"


SEQ = """
from ophyd_async.fastcs.panda import SeqTable
from hutch.devices.panda import PandaCapture
panda = panda_device("seq")
RE(bps.mv(panda.inenc[1].val_capture, PandaCapture.NO))  # a former test may have left it on
# Row 1: 30 pulses of 2 ms; row 2: 20 pulses of 1 ms (time units of 1 us); the table twice.
table = SeqTable.row(repeats=30, time1=1000, outa1=True, time2=1000) + SeqTable.row(
    repeats=20, time1=500, outa1=True, time2=500
)
N = 2 * (30 + 20)

@bpp.stage_decorator([panda, panda.seq_flyer])
@bpp.run_decorator()
def run():
    yield from bps.prepare(panda.seq_flyer, SeqInfo(table=table, repeats=2, prescale=1e-6),
                           wait=True)
    yield from bps.prepare(panda, TriggerInfo(trigger=DetectorTrigger.EXTERNAL_EDGE,
                                              number_of_events=N), wait=True)
    yield from bps.declare_stream(panda, name="primary", collect=True)
    yield from bps.kickoff(panda, wait=True)
    yield from bps.kickoff(panda.seq_flyer, wait=True)
    yield from bps.collect_while_completing(flyers=[panda.seq_flyer, panda], dets=[panda],
                                            flush_period=0.2, stream_name="primary")

result["exit"] = RE(run()).exit_status
result["num_captured"] = call(panda.data.num_captured.get_value())
result["trig"] = call(panda.pcap.trig.get_value())
result["ttl"] = call(panda.ttlout.val.get_value())

async def unsupported():  # a row waiting for BITA: the simulator has no bit inputs
    from ophyd_async.fastcs.panda import SeqTrigger
    await panda.seq_flyer.prepare(SeqInfo(table=SeqTable.row(trigger=SeqTrigger.BITA_1)))
    try:
        await panda.seq_flyer.kickoff()
    except RuntimeError as exc:
        return str(exc)

result["unsupported"] = call(unsupported())
"""


def test_seq_table_of_timed_pulses(panda_port, tmp_path):
    """A sequencer table of timed pulses, repeated: exactly the expected count captured, at
    exactly the table's times."""
    out = client(panda_port, tmp_path, SEQ)
    assert out["exit"] == "success"
    n = 2 * (30 + 20)
    assert out["num_captured"] == n
    assert (out["trig"], out["ttl"]) == ("SEQ1.OUTA", "SEQ1.OUTA")
    assert out["unsupported"].startswith("SEQ1 did not start: Error: unsupported trigger")
    data = stream_data(out["docs"])
    assert set(data) == {"panda1-time"}
    path, dataset, ranges = data["panda1-time"]
    assert covered(ranges) == n
    times = read(path, dataset)
    assert len(times) == n
    one_table = np.concatenate([np.full(30, 2e-3), np.full(20, 1e-3)])
    np.testing.assert_allclose(
        np.diff(times), np.concatenate([one_table, one_table])[:-1], atol=1e-9
    )


CLOCK = """
from ophyd_async.core import Array1D
from ophyd_async.epics.core import epics_signal_r
from hutch.devices.panda import PandaBit, PandaCapture, PandaCaptureMode

PERIOD, SECONDS = float(sys.argv[3]), float(sys.argv[4])
panda = panda_device("clock")
ttl = epics_signal_r(Array1D[np.float64], "TEST:PANDA1:SIM:TTLOUT1")
call(ttl.connect())

async def bench():
    d = panda.data
    await panda.route("CLOCK1.OUT")
    await asyncio.gather(
        panda.pcap.ts_capture.set(PandaCapture.VALUE),
        panda.pcap.ts_dataset.set("clock-time"),
        panda.inenc[1].val_capture.set(PandaCapture.VALUE),
        panda.inenc[1].val_dataset.set("clock-x"),
        panda.clock.period.set(PERIOD),
        d.capture_mode.set(PandaCaptureMode.FOREVER),
        d.flush_period.set(0.0),
        d.hdf_file_name.set("clock.h5"),
        d.hdf_directory.set(directory),
    )
    await d.capture.set(True)
    await panda.pcap.arm.set(True)
    started = time.monotonic()
    await panda.clock.enable.set(PandaBit.ONE)
    await asyncio.sleep(SECONDS)
    await panda.clock.enable.set(PandaBit.ZERO)
    stopped = time.monotonic()
    last = await ttl.get_value()  # the final batch: [first_index, t0, t1, ...]
    expected = int(last[0]) + len(last) - 1
    await panda.pcap.arm.set(False)
    deadline = time.monotonic() + 120
    while (written := await d.num_captured.get_value()) < expected:
        assert time.monotonic() < deadline, (written, expected)
        await asyncio.sleep(0.01)
    flushed = time.monotonic()
    await d.capture.set(False)
    return {
        "expected": expected,
        "num_captured": await d.num_captured.get_value(),
        "file": await d.hdf_full_file_path.get_value(),
        "clock_seconds": stopped - started,
        "seconds_to_flushed": flushed - started,
        "status": await d.status.get_value(),
    }

result.update(call(bench(), timeout=300))
"""


def test_clock_at_1mhz_captured_without_loss(panda_port, tmp_path):
    """CLOCK1 at 1 MHz for 0.5 s into PCAP and HDF5: every pulse the TTL output produced is
    captured, flushed and in the file exactly once (timestamps exactly one period apart)."""
    period, seconds = 1e-6, 0.5
    out = client(panda_port, tmp_path, CLOCK, period, seconds)
    expected = out["expected"]
    assert expected >= 0.4 * seconds / period  # the clock ran (however busy the machine)
    assert out["num_captured"] == expected
    times = read(Path(out["file"]), "clock-time")
    positions = read(Path(out["file"]), "clock-x")
    assert len(times) == len(positions) == expected
    # No pulse missing or doubled: a whole period between every two captured pulses.
    np.testing.assert_allclose(np.diff(times), period, atol=1e-9)
    assert times[0] >= 0
    rate = expected / out["seconds_to_flushed"]
    print(
        f"\nPandA sim: {expected} pulses at 1 MHz, all in HDF5 after "
        f"{out['seconds_to_flushed']:.2f} s ({rate / 1e6:.2f} M rows/s)"
    )


class _Stage:
    """An encoder source moving at constant velocity from ``start`` once ``go`` is called."""

    resolution = 1e-3

    def __init__(self, start: float) -> None:
        self.start, self.velocity, self.t0 = start, 0.0, 0.0

    def go(self, velocity: float) -> None:
        self.start, self.t0, self.velocity = self.position_at(time.time()), time.time(), velocity

    def position_at(self, t: float) -> float:
        return self.start + self.velocity * (t - self.t0)


def test_simulator_blocks_in_process(tmp_path):
    """The simulator's blocks without Channel Access (puts through its PVs' putters): PCOMP
    guessing a negative direction, sequencer rows gated by position, the TTL output's pulse
    batches, and the FIRST_N / LAST_N capture modes."""
    import asyncio

    from hutch.simulators.panda import PandASim

    async def main() -> dict[str, Any]:
        stage = _Stage(10.0)
        panda = PandASim("T:P", encoders={1: stage})
        batches: list[tuple[int, int]] = []

        async def listener(first: int, times: np.ndarray) -> None:
            batches.append((first, len(times)))

        panda.add_pulse_listener(listener)
        loop = asyncio.create_task(panda.pulses.server_startup(None))
        await asyncio.sleep(0.1)
        pcomp, seq, pcap, data = panda.pcomp1, panda.seq1, panda.pcap, panda.data
        out: dict[str, Any] = {"scale": panda.inenc1.val_scale.value}

        async def put(prop: Any, value: Any) -> None:
            await prop.write(value)

        async def capture(name: str, mode: str = "FOREVER", num: int = 0) -> None:
            await put(data.capture_mode, mode)
            await put(data.num_capture, num)
            await put(data.hdf_file_name, name)
            await put(data.capture, "1")
            await put(pcap.arm, "1")

        async def stop() -> None:
            await put(pcap.arm, "0")
            await put(data.capture, "0")

        await put(panda.inenc1.capture, "Value")
        await put(panda.inenc1.dataset, "x")
        await put(data.flush_period, 0.0)
        await put(data.hdf_directory, str(tmp_path))
        # PCOMP: 5 pulses from 8 mm every 0.5 mm, the direction guessed (the stage is above).
        for prop, value in (
            (pcomp.inp, "INENC1.VAL"),
            (pcomp.start, 8000),
            (pcomp.step, 500),
            (pcomp.width, 100),
            (pcomp.pulses, 5),
            (pcomp.dir, "Either"),
            (pcap.trig, "PCOMP1.OUT"),
            (panda.ttlout1.val, "PCOMP1.OUT"),
        ):
            await put(prop, value)
        await capture("pcomp.h5")
        await put(pcomp.enable, "ONE")
        stage.go(-10.0)
        while pcomp.active.value == "1":
            await asyncio.sleep(0.02)
        await stop()
        out["batches"] = list(batches)
        # SEQ: 3 pulses of 10 ms once POSA <= 5 mm, then 2 once POSA <= 4 mm.
        stage.start, stage.velocity = 6.0, 0.0
        stage.go(-10.0)
        columns = {
            "repeats": [3, 2],
            "trigger": [8, 8],
            "position": [5000, 4000],
            "time1": [5, 5],
            "outa1": [1, 1],
            "time2": [5, 5],
            "outa2": [0, 0],
        }
        for column, values in columns.items():
            await put(getattr(seq, f"table_{column}"), values)
        for prop, value in (
            (seq.prescale_units, "ms"),
            (seq.prescale, 1.0),
            (seq.posa, "INENC1.VAL"),
            (pcap.trig, "SEQ1.OUTA"),
        ):
            await put(prop, value)
        await capture("seq.h5")
        await put(seq.enable, "ONE")
        while seq.active.value == "1":
            await asyncio.sleep(0.02)
        await stop()
        # Unsupported triggers are refused, and the table cannot run until rewritten.
        with pytest.raises(ValueError):
            await put(seq.table_trigger, [2, 8])
        await put(seq.enable, "ZERO")
        with pytest.raises(ValueError):
            await put(seq.enable, "ONE")
        out["seq_health"] = seq.health.value
        # CLOCK at 1 kHz: FIRST_N stops at NUM_CAPTURE rows, LAST_N keeps the last ones.
        for prop, value in (
            (panda.clock1.period, 1e-3),
            (pcap.trig, "CLOCK1.OUT"),
            (panda.ttlout1.val, "ZERO"),
        ):
            await put(prop, value)
        await put(panda.clock1.enable, "ONE")
        await capture("first.h5", "FIRST_N", 50)
        while data.capture.value == "1":
            await asyncio.sleep(0.02)
        out["first_n"] = (data.num_captured.value, data.status.value)
        await put(pcap.arm, "0")
        await capture("last.h5", "LAST_N", 20)
        await asyncio.sleep(0.2)
        await put(pcap.arm, "0")
        while data.capture.value == "1":
            await asyncio.sleep(0.02)
        out["last_n"] = (data.num_captured.value, data.num_received.value)
        await put(panda.clock1.enable, "ZERO")
        loop.cancel()
        return out

    out = asyncio.run(asyncio.wait_for(main(), 60))
    assert out["scale"] == _Stage.resolution  # VAL_SCALE defaults to the encoder's resolution
    np.testing.assert_allclose(read(tmp_path / "pcomp.h5", "x"), [8.0, 7.5, 7.0, 6.5, 6.0])
    assert len(read(tmp_path / "pcomp.h5", "PCAP.TS_TRIG.Value")) == 5
    assert [first for first, _ in out["batches"]] == list(
        np.cumsum([0] + [n for _, n in out["batches"]])[:-1]
    )
    assert sum(n for _, n in out["batches"]) == 5
    # The rows start where POSA reached 5 and 4 mm (10 mm/s), 10 ms apart within a row.
    np.testing.assert_allclose(read(tmp_path / "seq.h5", "x"), [5.0, 4.9, 4.8, 4.0, 3.9])
    times = read(tmp_path / "seq.h5", "PCAP.TS_TRIG.Value")
    np.testing.assert_allclose(np.diff(times), [0.01, 0.01, 0.08, 0.01], atol=1e-6)
    assert out["seq_health"].startswith("Error: unsupported trigger")
    assert out["first_n"] == (50, "Requested number of frames captured")
    assert len(read(tmp_path / "first.h5", "x")) == 50
    num_captured, num_received = out["last_n"]
    assert num_captured == 20 and num_received > 20
    last = read(tmp_path / "last.h5", "PCAP.TS_TRIG.Value")
    np.testing.assert_allclose(np.diff(last), 1e-3, atol=1e-9)
