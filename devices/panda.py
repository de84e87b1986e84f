"""A PandABox-style position compare and capture controller, over Channel Access.

ophyd-async's own PandA (``ophyd_async.fastcs.panda``) finds its blocks through PVI over
PVAccess; this one addresses PandABlocks-ioc's Channel Access names (``PREFIX:BLOCKn:FIELD``)
directly, with the same detector pattern: PCAP arms, captured positions go to an HDF5 file
through the DATA block, and flyers drive position compare (PCOMP) and the sequencer (SEQ).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ophyd_async.core import (
    DEFAULT_TIMEOUT,
    Array1D,
    ConfinedModel,
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    Device,
    DeviceVector,
    FlyableLogic,
    PathProvider,
    SignalDict,
    StandardDetector,
    StandardFlyable,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
    StrictEnum,
    set_and_wait_for_other_value,
    wait_for_value,
)
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw
from ophyd_async.fastcs.panda import (
    PandaCaptureMode,
    PandaPcompDirection,
    PandaTimeUnits,
    SeqTable,
    SeqTrigger,
)
from pydantic import Field, model_validator

__all__ = [
    "ClockBlock",
    "DataBlock",
    "InencBlock",
    "PandA",
    "PandaAcquireLogic",
    "PandaBit",
    "PandaBitSource",
    "PandaCapture",
    "PandaHdfDataLogic",
    "PandaPosSource",
    "PandaTriggerLogic",
    "PandaTtlSource",
    "PcapBlock",
    "PcompBlock",
    "PcompFlyLogic",
    "PcompInfo",
    "SeqBlock",
    "SeqInfo",
    "SeqTableFlyLogic",
    "TtlOutBlock",
]

NUM_ENCODERS = 4
CHUNK_ROWS = 1024
"""Rows per HDF5 chunk of every captured dataset (PandABlocks-ioc's)."""


class PandaBit(StrictEnum):
    """A bit input held at a constant: ENABLE fields."""

    ZERO = "ZERO"
    ONE = "ONE"


class PandaBitSource(StrictEnum):
    """The pulse outputs that PCAP.TRIG and TTLOUT1 can be cabled to."""

    PCOMP = "PCOMP1.OUT"
    SEQ = "SEQ1.OUTA"
    CLOCK = "CLOCK1.OUT"


class PandaTtlSource(StrictEnum):
    """TTLOUT1.VAL: what the TTL output to the detectors follows."""

    ZERO = "ZERO"
    PCOMP = "PCOMP1.OUT"
    SEQ = "SEQ1.OUTA"
    CLOCK = "CLOCK1.OUT"


class PandaPosSource(StrictEnum):
    """Position inputs (PCOMP1.INP, SEQ1.POSA): an encoder, or ZERO."""

    ZERO = "ZERO"
    INENC1 = "INENC1.VAL"
    INENC2 = "INENC2.VAL"
    INENC3 = "INENC3.VAL"
    INENC4 = "INENC4.VAL"


class PandaCapture(StrictEnum):
    """What PCAP captures of a field on each trigger."""

    NO = "No"
    VALUE = "Value"


class InencBlock(Device):
    """INENCn: an encoder input; ``val`` is ``counts * val_scale + val_offset`` in the user
    units of its motor, and ``val_capture``/``val_dataset`` say whether (and under which
    dataset name) PCAP captures it."""

    def __init__(self, prefix: str, name: str = "") -> None:
        self.val = epics_signal_r(float, prefix + "VAL")
        self.val_scale = epics_signal_rw(float, prefix + "VAL_SCALE")
        self.val_offset = epics_signal_rw(float, prefix + "VAL_OFFSET")
        self.val_capture = epics_signal_rw(PandaCapture, prefix + "VAL:CAPTURE")
        self.val_dataset = epics_signal_rw(str, prefix + "VAL:DATASET")
        super().__init__(name)


class PcompBlock(Device):
    """PCOMP1: pulses when an encoder crosses START + i*STEP (counts) in DIR, PULSES of
    them (0: forever) once it has been PRE_START before START; ACTIVE until done."""

    def __init__(self, prefix: str, name: str = "") -> None:
        self.enable = epics_signal_rw(PandaBit, prefix + "ENABLE")
        self.inp = epics_signal_rw(PandaPosSource, prefix + "INP")
        self.start = epics_signal_rw(int, prefix + "START")
        self.step = epics_signal_rw(int, prefix + "STEP")
        self.width = epics_signal_rw(int, prefix + "WIDTH")
        self.pre_start = epics_signal_rw(int, prefix + "PRE_START")
        self.pulses = epics_signal_rw(int, prefix + "PULSES")
        self.dir = epics_signal_rw(PandaPcompDirection, prefix + "DIR")
        self.active = epics_signal_r(bool, prefix + "ACTIVE")
        self.health = epics_signal_r(str, prefix + "HEALTH")
        super().__init__(name)


class SeqBlock(Device):
    """SEQ1: the sequencer; its table is one waveform per column (``set_table`` writes a
    whole ``SeqTable``), its times in units of PRESCALE PRESCALE_UNITS."""

    _COLUMNS = ("repeats", "trigger", "position", "time1", "outa1", "time2", "outa2")

    def __init__(self, prefix: str, name: str = "") -> None:
        for column in self._COLUMNS:
            pv = f"{prefix}TABLE:{column.upper()}"
            setattr(self, f"table_{column}", epics_signal_rw(Array1D[np.int32], pv))
        self.repeats = epics_signal_rw(int, prefix + "REPEATS")
        self.prescale = epics_signal_rw(float, prefix + "PRESCALE")
        self.prescale_units = epics_signal_rw(PandaTimeUnits, prefix + "PRESCALE_UNITS")
        self.enable = epics_signal_rw(PandaBit, prefix + "ENABLE")
        self.active = epics_signal_r(bool, prefix + "ACTIVE")
        self.posa = epics_signal_rw(PandaPosSource, prefix + "POSA")
        self.health = epics_signal_r(str, prefix + "HEALTH")
        super().__init__(name)

    async def set_table(self, table: SeqTable) -> None:
        """Write ``table`` (ophyd-async's ``SeqTable``; outputs B-F are not cabled here)."""
        triggers = list(SeqTrigger)
        columns = {
            "repeats": table.repeats,
            "trigger": [triggers.index(SeqTrigger(t)) for t in table.trigger],
            "position": table.position,
            "time1": table.time1,
            "outa1": table.outa1,
            "time2": table.time2,
            "outa2": table.outa2,
        }
        for column, values in columns.items():
            wide = np.asarray(values, dtype=np.int64)
            if len(wide) and (wide.max() > np.iinfo(np.int32).max):
                raise ValueError(f"SEQ table {column.upper()} beyond the IOC's int32")
            columns[column] = wide.astype(np.int32)
        await asyncio.gather(*(getattr(self, f"table_{c}").set(columns[c]) for c in self._COLUMNS))


class ClockBlock(Device):
    """CLOCK1: a pulse every ``period`` seconds while enabled."""

    def __init__(self, prefix: str, name: str = "") -> None:
        self.period = epics_signal_rw(float, prefix + "PERIOD")
        self.enable = epics_signal_rw(PandaBit, prefix + "ENABLE")
        self.health = epics_signal_r(str, prefix + "HEALTH")
        super().__init__(name)


class PcapBlock(Device):
    """PCAP: while armed, each pulse of ``trig`` captures the enabled fields and the pulse
    time since arm (TS_TRIG)."""

    def __init__(self, prefix: str, name: str = "") -> None:
        self.arm = epics_signal_rw(bool, prefix + "ARM")
        self.active = epics_signal_r(bool, prefix + "ACTIVE")
        self.trig = epics_signal_rw(PandaBitSource, prefix + "TRIG")
        self.ts_capture = epics_signal_rw(PandaCapture, prefix + "TS_TRIG:CAPTURE")
        self.ts_dataset = epics_signal_rw(str, prefix + "TS_TRIG:DATASET")
        super().__init__(name)


class TtlOutBlock(Device):
    """TTLOUT1: the TTL output cabled to the detectors."""

    def __init__(self, prefix: str, name: str = "") -> None:
        self.val = epics_signal_rw(PandaTtlSource, prefix + "VAL")
        super().__init__(name)


class DataBlock(Device):
    """DATA: the IOC's HDF5 writer of captured rows (``num_captured`` counts those flushed)."""

    def __init__(self, prefix: str, name: str = "") -> None:
        self.hdf_directory = epics_signal_rw(str, prefix + "HDF_DIRECTORY")
        self.hdf_file_name = epics_signal_rw(str, prefix + "HDF_FILE_NAME")
        self.hdf_full_file_path = epics_signal_r(str, prefix + "HDF_FULL_FILE_PATH")
        self.num_capture = epics_signal_rw(int, prefix + "NUM_CAPTURE")
        self.num_captured = epics_signal_r(int, prefix + "NUM_CAPTURED")
        self.num_received = epics_signal_r(int, prefix + "NUM_RECEIVED")
        self.capture = epics_signal_rw(bool, prefix + "CAPTURE")
        self.capture_mode = epics_signal_rw(PandaCaptureMode, prefix + "CAPTURE_MODE")
        self.flush_period = epics_signal_rw(float, prefix + "FLUSH_PERIOD")
        self.create_directory = epics_signal_rw(int, prefix + "CREATE_DIRECTORY")
        self.directory_exists = epics_signal_r(bool, prefix + "DIRECTORY_EXISTS")
        self.status = epics_signal_r(str, prefix + "STATUS")
        super().__init__(name)


# -- detector logics --------------------------------------------------------------------------


class PandaTriggerLogic(DetectorTriggerLogic):
    """The PandA captures on the edges of its own pulses (EXTERNAL_EDGE or EXTERNAL_LEVEL):
    nothing to set up per trigger, and one FPGA clock tick of deadtime."""

    def get_deadtime(self, config_values: SignalDict) -> float:
        return 8e-9  # one tick of the 125 MHz FPGA clock

    async def prepare_edge(self, num: int, livetime: float) -> None:
        pass

    async def prepare_level(self, num: int) -> None:
        pass


class PandaAcquireLogic(DetectorAcquireLogic):
    """Arms PCAP (and waits for ACTIVE) to acquire; disarms to stop."""

    def __init__(self, pcap: PcapBlock) -> None:
        self.pcap = pcap

    async def start_acquiring(self) -> None:
        await set_and_wait_for_other_value(self.pcap.arm, True, self.pcap.active, True)

    async def wait_for_idle(self) -> None:
        pass  # PCAP stays armed until unstage: the flyers say when pulses are over

    async def ensure_stopped(self) -> None:
        await set_and_wait_for_other_value(self.pcap.arm, False, self.pcap.active, False)


class PandaHdfDataLogic(DetectorDataLogic):
    """Captured rows into one HDF5 file per prepare, written by the IOC's DATA block.

    Names the datasets first: encoder ``n`` cabled to motor ``m`` (``encoders``) is captured
    as ``<detector>-<m>``, the timestamps (seconds since arm) as ``<detector>-time``. Every
    captured field becomes one stream resource (a float64 dataset at the file's root), its
    data key the dataset name; NUM_CAPTURED (rows flushed) counts the collections.
    """

    def __init__(
        self,
        path_provider: PathProvider,
        data: DataBlock,
        pcap: PcapBlock,
        inenc: DeviceVector[InencBlock],
        encoders: Mapping[int, str],
    ) -> None:
        self.path_provider = path_provider
        self.data = data
        self.pcap = pcap
        self.inenc = inenc
        self.encoders = dict(encoders)

    async def _name_datasets(self, name: str) -> None:
        await asyncio.gather(
            self.pcap.ts_capture.set(PandaCapture.VALUE),
            self.pcap.ts_dataset.set(f"{name}-time"),
            *(self.inenc[n].val_capture.set(PandaCapture.VALUE) for n in self.encoders),
            *(self.inenc[n].val_dataset.set(f"{name}-{m}") for n, m in self.encoders.items()),
        )

    async def datasets(self) -> list[str]:
        """The dataset names of the fields PCAP captures (as the IOC will write them)."""
        ts_capture, ts_dataset = await asyncio.gather(
            self.pcap.ts_capture.get_value(), self.pcap.ts_dataset.get_value()
        )
        names = [ts_dataset or "PCAP.TS_TRIG.Value"] if ts_capture == PandaCapture.VALUE else []
        for n, inenc in self.inenc.items():
            capture, dataset = await asyncio.gather(
                inenc.val_capture.get_value(), inenc.val_dataset.get_value()
            )
            if capture == PandaCapture.VALUE:
                names.append(dataset or f"INENC{n}.VAL.Value")
        return names

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        await self._name_datasets(datakey_name)
        path_info = self.path_provider(datakey_name)
        # The IOC creates directories when HDF_DIRECTORY is set: the depth goes first.
        await self.data.create_directory.set(path_info.create_dir_depth)
        await asyncio.gather(
            self.data.flush_period.set(0.0),  # flush as the rows come
            self.data.hdf_directory.set(str(path_info.directory_path)),
            self.data.hdf_file_name.set(f"{path_info.filename}.h5"),
            self.data.capture_mode.set(PandaCaptureMode.FOREVER),
        )
        if not await self.data.directory_exists.get_value():
            status = await self.data.status.get_value()
            raise OSError(f"PandA cannot write to {path_info.directory_path}: {status}")
        await self.data.capture.set(True)
        # The IOC refuses a capture it cannot start; ophyd-async does not report refused puts.
        if not await self.data.capture.get_value():
            status = await self.data.status.get_value()
            raise RuntimeError(f"PandA {datakey_name}: DATA capture did not start: {status}")
        resources = [
            StreamResourceInfo(
                data_key=dataset,
                shape=(),
                dtype_numpy=np.dtype(np.float64).str,
                chunk_shape=(CHUNK_ROWS,),
                parameters={"dataset": f"/{dataset}"},
            )
            for dataset in await self.datasets()
        ]
        return StreamResourceDataProvider(
            uri=f"{path_info.directory_uri}{path_info.filename}.h5",
            resources=resources,
            mimetype="application/x-hdf5",
            collections_written_signal=self.data.num_captured,
        )

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [f"{datakey_name}-{motor}" for motor in self.encoders.values()]

    async def stop(self) -> None:
        await self.data.capture.set(False)


# -- flyers -----------------------------------------------------------------------------------


async def _route(
    pcap: PcapBlock | None, ttlout: TtlOutBlock | None, source: PandaBitSource
) -> None:
    await asyncio.gather(
        *([pcap.trig.set(source)] if pcap else []),
        *([ttlout.val.set(PandaTtlSource(source.value))] if ttlout else []),
    )


async def _enable(block: PcompBlock | SeqBlock, what: str) -> None:
    """ENABLE ONE and wait for ACTIVE; if the block will not start, its HEALTH says why.

    ACTIVE is monitored from before the put: a short sequence may be over (ACTIVE back to 0)
    before a monitor started after the put would see it go to 1."""
    subscribed, went_active = asyncio.Event(), asyncio.Event()

    def update(reading: dict[str, Any]) -> None:
        subscribed.set()
        if next(iter(reading.values()))["value"]:
            went_active.set()

    block.active.subscribe_reading(update)
    try:
        await asyncio.wait_for(subscribed.wait(), DEFAULT_TIMEOUT)
        went_active.clear()  # only a rise after ENABLE counts
        await block.enable.set(PandaBit.ONE)
        health = await block.health.get_value()
        if health != "OK":
            await block.enable.set(PandaBit.ZERO)
            raise RuntimeError(f"{what} did not start: {health}")
        try:
            await asyncio.wait_for(went_active.wait(), DEFAULT_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"{what} did not become ACTIVE") from None
    finally:
        block.active.clear_sub(update)


async def _disable(block: PcompBlock | SeqBlock) -> None:
    await block.enable.set(PandaBit.ZERO)
    await wait_for_value(block.active, False, timeout=DEFAULT_TIMEOUT)


class PcompInfo(ConfinedModel):
    """A position-compare pulse train in the user units of an encoder's motor: pulses at
    ``start + i*step``, fired while the motor moves the way ``step`` goes."""

    encoder: int = Field(ge=1, le=NUM_ENCODERS, description="INENC number compared")
    start: float = Field(description="Position of the first pulse (user units)")
    step: float = Field(
        description="Between pulses (user units, a whole number of counts); its sign is the "
        "direction of motion that fires them"
    )
    pulses: int = Field(ge=0, description="Pulses to produce; 0 means forever")
    direction: PandaPcompDirection | None = Field(
        default=None,
        description="Motion direction (user units) that fires pulses: by default the step's "
        "sign; EITHER: whichever way the motor comes from (guessed at kickoff)",
    )
    width: float | None = Field(default=None, gt=0, description="Pulse width; default |step|/2")
    pre_start: float = Field(default=0.0, ge=0, description="Run-up before start (user units)")

    @model_validator(mode="after")
    def _step_and_direction(self) -> PcompInfo:
        if self.step == 0:
            raise ValueError("PCOMP step must not be 0")
        positive = self.step > 0
        if (self.direction == PandaPcompDirection.POSITIVE and not positive) or (
            self.direction == PandaPcompDirection.NEGATIVE and positive
        ):
            raise ValueError(f"PCOMP step {self.step} goes against direction {self.direction}")
        return self


def _counts(value: float, scale: float, what: str, whole: bool = False) -> int:
    counts = value / scale
    if whole and not math.isclose(counts, round(counts), rel_tol=1e-6, abs_tol=1e-6):
        raise ValueError(
            f"PCOMP {what} {value} is not a whole number of encoder counts ({abs(scale)} each)"
        )
    return round(counts)


@dataclass
class PcompFlyLogic(FlyableLogic[PcompInfo, None]):
    """Position compare as a flyer: pulses at ``start + i*step`` (user units) of a moving
    motor. Prepare converts to counts through the encoder's VAL_SCALE/VAL_OFFSET and, given
    ``pcap``/``ttlout``, cables PCAP.TRIG and TTLOUT1 to PCOMP1.OUT; kickoff enables it;
    complete waits for the last pulse."""

    pcomp: PcompBlock
    inenc: DeviceVector[InencBlock]
    pcap: PcapBlock | None = None
    ttlout: TtlOutBlock | None = None

    async def on_prepare(self, value: PcompInfo) -> None:
        await self.pcomp.enable.set(PandaBit.ZERO)
        inenc = self.inenc[value.encoder]
        scale, offset = await asyncio.gather(
            inenc.val_scale.get_value(), inenc.val_offset.get_value()
        )
        if scale == 0:
            raise ValueError(f"INENC{value.encoder}.VAL_SCALE is 0")
        direction = value.direction
        if direction != PandaPcompDirection.EITHER:  # in counts, which run backwards if scale < 0
            direction = (
                PandaPcompDirection.POSITIVE
                if (value.step > 0) == (scale > 0)
                else PandaPcompDirection.NEGATIVE
            )
        width = value.width if value.width is not None else abs(value.step) / 2
        await asyncio.gather(
            self.pcomp.inp.set(PandaPosSource(f"INENC{value.encoder}.VAL")),
            self.pcomp.start.set(_counts(value.start - offset, scale, "start")),
            self.pcomp.step.set(_counts(abs(value.step), abs(scale), "step", whole=True)),
            self.pcomp.width.set(max(_counts(width, abs(scale), "width"), 1)),
            self.pcomp.pre_start.set(_counts(value.pre_start, abs(scale), "pre_start")),
            self.pcomp.pulses.set(value.pulses),
            self.pcomp.dir.set(direction),
            _route(self.pcap, self.ttlout, PandaBitSource.PCOMP),
        )

    async def on_kickoff(self, ctx: None) -> None:
        await _enable(self.pcomp, "PCOMP1")

    async def on_complete(self, ctx: None) -> None:
        await wait_for_value(self.pcomp.active, False, timeout=None)

    async def stop(self) -> None:
        await _disable(self.pcomp)


class SeqInfo(ConfinedModel):
    """A sequencer table to run: rows of time-based pulses, optionally gated by position."""

    table: SeqTable = Field(description="Rows (ophyd-async's SeqTable); POSITION in counts")
    repeats: int = Field(default=1, ge=0, description="Repeats of the table; 0 means forever")
    prescale: float = Field(default=1e-6, gt=0, description="Seconds per table time unit")
    encoder: int | None = Field(
        default=None, ge=1, le=NUM_ENCODERS, description="INENC compared by POSA rows"
    )


@dataclass
class SeqTableFlyLogic(FlyableLogic[SeqInfo, None]):
    """The sequencer as a flyer: prepare loads the table (POSA cabled to ``encoder``, and
    given ``pcap``/``ttlout``, PCAP.TRIG and TTLOUT1 cabled to SEQ1.OUTA); kickoff enables
    it; complete waits until the table has run. Rising edges of OUTA are the pulses.
    ``PandA.counts`` converts a user position to the counts of a POSITION column."""

    seq: SeqBlock
    pcap: PcapBlock | None = None
    ttlout: TtlOutBlock | None = None

    async def on_prepare(self, value: SeqInfo) -> None:
        await self.seq.enable.set(PandaBit.ZERO)
        posa = PandaPosSource(f"INENC{value.encoder}.VAL") if value.encoder else PandaPosSource.ZERO
        # Units before the value: the real PandA rescales PRESCALE when its units change.
        await self.seq.prescale_units.set(PandaTimeUnits.S)
        await asyncio.gather(
            self.seq.prescale.set(value.prescale),
            self.seq.repeats.set(value.repeats),
            self.seq.posa.set(posa),
            self.seq.set_table(value.table),
            _route(self.pcap, self.ttlout, PandaBitSource.SEQ),
        )

    async def on_kickoff(self, ctx: None) -> None:
        await _enable(self.seq, "SEQ1")

    async def on_complete(self, ctx: None) -> None:
        await wait_for_value(self.seq.active, False, timeout=None)

    async def stop(self) -> None:
        await _disable(self.seq)


# -- the detector -----------------------------------------------------------------------------


class PandA(StandardDetector):
    """A PandABox-style controller at ``PREFIX`` (e.g. ``DEMO:PANDA1``) for fly scans:
    it fires position-compare or sequencer pulses at the detectors (TTLOUT1) and captures the
    encoder positions and timestamps of every pulse into an HDF5 file.

    As a detector (``prepare`` with EXTERNAL_EDGE or EXTERNAL_LEVEL triggering) each pulse is
    one collection; ``encoders`` names the motor on each encoder (``{1: "sample_x"}``), so the
    data keys are ``<name>-sample_x`` and ``<name>-time``. ``pcomp_flyer`` (``PcompInfo``) and
    ``seq_flyer`` (``SeqInfo``) produce the pulses; ``route`` cables capture and TTL output to
    another source (e.g. CLOCK1).
    """

    def __init__(
        self,
        prefix: str,
        path_provider: PathProvider,
        name: str = "",
        encoders: Mapping[int | str, str] | None = None,
    ) -> None:
        base = prefix.rstrip(":") + ":"
        self.encoders = {int(n): str(motor) for n, motor in (encoders or {}).items()}
        for n in self.encoders:
            if not 1 <= n <= NUM_ENCODERS:
                raise ValueError(
                    f"panda {name or prefix}: encoder {n}; it has INENC1..{NUM_ENCODERS}"
                )
        self.inenc = DeviceVector(
            {n: InencBlock(f"{base}INENC{n}:") for n in range(1, NUM_ENCODERS + 1)}
        )
        self.pcomp = PcompBlock(base + "PCOMP1:")
        self.seq = SeqBlock(base + "SEQ1:")
        self.clock = ClockBlock(base + "CLOCK1:")
        self.pcap = PcapBlock(base + "PCAP:")
        self.data = DataBlock(base + "DATA:")
        self.ttlout = TtlOutBlock(base + "TTLOUT1:")
        self.pcomp_logic = PcompFlyLogic(self.pcomp, self.inenc, self.pcap, self.ttlout)
        self.seq_logic = SeqTableFlyLogic(self.seq, self.pcap, self.ttlout)
        self.pcomp_flyer: StandardFlyable[PcompInfo, None] = self.pcomp_logic.with_device()
        self.seq_flyer: StandardFlyable[SeqInfo, None] = self.seq_logic.with_device()
        self.add_detector_logics(
            PandaTriggerLogic(),
            PandaAcquireLogic(self.pcap),
            PandaHdfDataLogic(path_provider, self.data, self.pcap, self.inenc, self.encoders),
        )
        self.add_config_signals(
            self.pcap.trig,
            *(self.inenc[n].val_scale for n in self.encoders),
            *(self.inenc[n].val_offset for n in self.encoders),
        )
        super().__init__(name=name)

    async def route(self, source: PandaBitSource | str) -> None:
        """Cable PCAP.TRIG and TTLOUT1 to ``source`` (PCOMP1.OUT, SEQ1.OUTA or CLOCK1.OUT):
        its pulses are then captured and trigger the detectors."""
        await _route(self.pcap, self.ttlout, PandaBitSource(source))

    async def counts(self, encoder: int, position: float) -> int:
        """Encoder ``encoder``'s counts at user ``position`` (for a SEQ table's POSITION)."""
        inenc = self.inenc[encoder]
        scale, offset = await asyncio.gather(
            inenc.val_scale.get_value(), inenc.val_offset.get_value()
        )
        return round((position - offset) / scale)
