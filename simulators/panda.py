"""A simulated PandABox: position compare, sequencer, clock, position capture into HDF5.

Served over Channel Access with PandABlocks-ioc's names, ``PREFIX:BLOCKn:FIELD``
(``DEMO:PANDA1:PCOMP1:START``). Positions are encoder counts as in the FPGA; ``INENCn:VAL`` is
``counts * VAL_SCALE + VAL_OFFSET``, the counts being ``position_at(t) / resolution`` of the
motor cabled to encoder ``n``.

The FPGA's 125 MHz logic is simulated in ticks of ~2 ms: each tick takes the encoder positions
at its two ends, finds every compare point or sequencer position crossed in between and
timestamps the pulse by linear interpolation (exact at constant velocity); time-based pulses
(CLOCK, sequencer phases) are computed exactly. Everything is vectorised with numpy, so a
1 MHz clock is captured into HDF5 without loss. Each block keeps its own progress (pulse or
edge index), so a pulse is produced exactly once whatever the tick boundaries.

Blocks: ``INENC1..4``, ``PCOMP1``, ``SEQ1`` (rows triggered Immediate, POSA>=POSITION or
POSA<=POSITION), ``CLOCK1``, ``PCAP`` (captures the INENC values whose ``VAL:CAPTURE`` is
Value and the pulse timestamp ``TS_TRIG``, seconds since arm), ``TTLOUT1`` (the cable to the
detectors: ``add_pulse_listener`` in-process, the simulator-only ``SIM:TTLOUT1`` over CA) and
``DATA`` (the HDF5 writer, with PandABlocks-ioc's FIRST_N / LAST_N / FOREVER modes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty

from .options import sim_options

__all__ = [
    "BIT_SOURCES",
    "PULSE_PV",
    "POS_SOURCES",
    "SEQ_TRIGGERS",
    "EncoderSource",
    "PandASim",
    "PulseListener",
]

log = logging.getLogger(__name__)

PULSE_PV = "SIM:TTLOUT1"
"""Simulator-only PV (after ``PREFIX:``) of TTLOUT1's pulses: ``[first_index, t0, t1, ...]``."""

NUM_ENCODERS = 4
MAX_ROWS = 4096
"""Rows of the sequencer table (as the FPGA's)."""

CHUNK = 1024
"""HDF5 chunk length (rows) of every captured dataset, as PandABlocks-ioc's."""

FPGA_TICK = 8e-9
"""The FPGA clock period (125 MHz): the shortest sequencer phase."""

MIN_CLOCK_PERIOD = 1e-7
"""The shortest CLOCK1 period the simulator accepts (10 MHz); it captures a few MHz at most."""

_MAX_PULSES = 5_000_000
"""Pulses one block may produce in one tick; beyond, it stops with an error in its HEALTH
(a rate no simulator tick can carry), rather than exhaust the memory."""

_MAX_ROWS_PER_TICK = 100_000
"""Table rows (or position-triggered runs) one tick may go through, for the same reason."""

_MAX_TTL_BATCH = 8192
"""Pulse times per post of ``SIM:TTLOUT1``; a larger batch is posted in pieces."""

_INENC_PERIOD = 0.1
"""Seconds between ``INENCn:VAL`` updates (and between ticks while nothing runs)."""

BIT_SOURCES = ("PCOMP1.OUT", "SEQ1.OUTA", "CLOCK1.OUT")
"""The pulse outputs PCAP.TRIG and TTLOUT1.VAL can be cabled to."""

POS_SOURCES = ("ZERO", *(f"INENC{n}.VAL" for n in range(1, NUM_ENCODERS + 1)))
"""The position inputs of PCOMP1.INP and SEQ1.POSA."""

SEQ_TRIGGERS = (
    "Immediate",
    "BITA=0",
    "BITA=1",
    "BITB=0",
    "BITB=1",
    "BITC=0",
    "BITC=1",
    "POSA>=POSITION",
    "POSA<=POSITION",
    "POSB>=POSITION",
    "POSB<=POSITION",
    "POSC>=POSITION",
    "POSC<=POSITION",
)
"""The codes of ``SEQ1:TABLE:TRIGGER`` (the FPGA's, and ophyd-async's ``SeqTrigger`` order)."""

_IMMEDIATE, _POSA_GT, _POSA_LT = 0, 7, 8
_SUPPORTED_TRIGGERS = (_IMMEDIATE, _POSA_GT, _POSA_LT)

_TIME_UNITS = {"min": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
_BIT = ("ZERO", "ONE")
_BOOL = ("0", "1")
_CAPTURE = ("No", "Value")
_EMPTY = np.empty(0)

_DEFAULTS: dict[str, Any] = {"tick": 0.002}


class EncoderSource(Protocol):
    """What an INENC is cabled to: a motor's position at any time (``MotorRecord``)."""

    @property
    def resolution(self) -> float:
        """User units per encoder count."""
        ...

    def position_at(self, t: float) -> float:
        """The user position at wall-clock time ``t`` (``time.time()`` base)."""
        ...


PulseListener = Callable[[int, np.ndarray], Awaitable[None]]
"""``async listener(first_index, times)``: a batch of TTLOUT1 pulses (wall-clock times), the
first being pulse ``first_index`` since the source was last enabled."""


# -- PV helpers -----------------------------------------------------------------------------


def _enum(name: str, strings: tuple[str, ...], value: str | None = None, **kw: Any) -> Any:
    return pvproperty(
        name=name, value=value or strings[0], enum_strings=strings, dtype=ChannelType.ENUM, **kw
    )


def _text(name: str, value: str = "", length: int = 1024, **kw: Any) -> Any:
    """A long string (CHAR waveform), as PandABlocks-ioc serves paths and names."""
    return pvproperty(
        name=name,
        value=value,
        dtype=ChannelType.CHAR,
        max_length=length,
        string_encoding="utf-8",
        **kw,
    )


def _column(name: str, doc: str) -> Any:
    return pvproperty(name=name, value=[], dtype=int, max_length=MAX_ROWS, doc=doc)


async def _put(prop: Any, value: Any) -> None:
    """Server-side update of a PV (the block logic, not a client put)."""
    if prop.value != value:
        await prop.write(value, verify_value=False)


# -- the blocks' logic, in simulation time (seconds since the simulator started) ----------------


@dataclass
class _Segment:
    """An input's counts over one tick: linear from ``c0`` at ``t0`` to ``c1`` at ``t1``."""

    t0: float
    t1: float
    c0: float
    c1: float

    def at(self, t: Any) -> Any:
        if self.t1 <= self.t0:
            return self.c1 + 0.0 * np.asarray(t)
        return self.c0 + (t - self.t0) * ((self.c1 - self.c0) / (self.t1 - self.t0))

    def scaled(self, sign: int) -> _Segment:
        return _Segment(self.t0, self.t1, sign * self.c0, sign * self.c1)

    def reach(self, level: float, above: bool, after: float) -> float | None:
        """The first time from ``after`` (in the tick) the counts are >= ``level`` (``above``)
        or <= ``level``; None if not within the tick."""
        ca = float(self.at(after))
        if (ca >= level) if above else (ca <= level):
            return after
        c1 = self.c1
        if not ((c1 >= level) if above else (c1 <= level)):
            return None
        return after + (level - ca) / (c1 - ca) * (self.t1 - after)


class _PcompLogic:
    """PCOMP: after enable, once INP has been beyond START - PRE_START (in the compare
    direction), a pulse each time INP reaches START + i*STEP; ACTIVE until the last pulse has
    ended (INP past its START + i*STEP + WIDTH) or disable. Parameters are latched at enable."""

    def __init__(self) -> None:
        self.active = False
        self.count = 0  # pulses since the last enable
        self._state = "idle"  # "pre", "pulsing", "falling"

    def enable(self, t: float, params: Mapping[str, Any], counts_now: float) -> str:
        """Start at time ``t``; returns HEALTH ("OK" or the error, then not active)."""
        start, pre = float(params["start"]), abs(float(params["pre_start"]))
        direction = params["dir"]
        if direction == "Either":  # guessed once, from where INP is at enable
            if counts_now < start - pre:
                direction = "Positive"
            elif counts_now > start + pre:
                direction = "Negative"
            else:
                self.active, self._state = False, "idle"
                return "Error: can't guess DIR: INP is within PRE_START of START"
        self._sign = 1 if direction == "Positive" else -1
        self._start = self._sign * start
        self._pre = pre
        self._step = abs(float(params["step"]))
        self._width = abs(float(params["width"]))
        self._pulses = max(int(params["pulses"]), 0)
        self._next = 0
        self._from = t
        self.count = 0
        self.active, self._state = True, "pre"
        return "OK"

    def disable(self) -> None:
        self.active, self._state = False, "idle"

    def advance(self, seg: _Segment) -> np.ndarray:
        """The pulse times in this tick."""
        if not self.active:
            return _EMPTY
        x = seg.scaled(self._sign)  # compare in the positive sense
        after = max(seg.t0, self._from)
        times = _EMPTY
        if self._state == "pre":
            reached = x.reach(self._start - self._pre, above=False, after=after)
            if reached is None:
                return _EMPTY
            self._state, after = "pulsing", reached
        if self._state == "pulsing":
            times = self._pulse(x, after)
            if len(times):
                after = float(times[-1])
        if self._state == "falling":
            last = self._start + (self._next - 1) * self._step
            if x.reach(last + self._width, above=True, after=after) is not None:
                self.disable()
        return times

    def _pulse(self, x: _Segment, after: float) -> np.ndarray:
        xa, xb = float(x.at(after)), x.c1
        level = self._start + self._next * self._step
        highest = max(xa, xb)
        if highest < level:
            return _EMPTY
        n = 1 if self._step == 0 else int((highest - level) // self._step) + 1
        if self._pulses:
            n = min(n, self._pulses - self._next)
        if n > _MAX_PULSES:
            raise _RateError("Error: more compare points in one tick than the simulator carries")
        levels = level + self._step * np.arange(n)
        if xb > xa:
            times = after + np.maximum(levels - xa, 0.0) * ((x.t1 - after) / (xb - xa))
        else:  # only levels already passed at ``after`` (e.g. the start, no PRE_START)
            times = np.full(n, after)
        self._next += n
        self.count += n
        if self._step == 0 or (self._pulses and self._next >= self._pulses):
            self._state = "falling"
        return times


class _SeqLogic:
    """SEQ: the table's rows in order, each waiting for its trigger (checked on every repeat)
    then running phase 1 (skipped when TIME1 is 0) and phase 2; the table REPEATS times.
    Pulses are the rising edges of OUTA. The table, PRESCALE and REPEATS are latched at
    enable."""

    def __init__(self) -> None:
        self.active = False
        self.count = 0

    def enable(self, t: float, table: Mapping[str, np.ndarray], repeats: int, unit: float) -> None:
        self._rep = table["repeats"].astype(np.int64)
        self._trig = table["trigger"].astype(np.int64)
        self._pos = table["position"].astype(np.float64)
        self._t1 = table["time1"].astype(np.float64) * unit
        self._t2 = np.maximum(table["time2"].astype(np.float64) * unit, FPGA_TICK)
        self._out1 = table["outa1"].astype(bool)
        self._out2 = table["outa2"].astype(bool)
        self._table_repeats = max(int(repeats), 0)
        self._tables_done = 0
        self._row = 0
        self._reps_done = 0  # repeats of the row finished before the current run
        self._waiting = True  # for the row's trigger, from self._now
        self._now = t
        self._level = False
        self.count = 0
        self.active = True

    def disable(self) -> None:
        self.active = False

    def advance(self, seg: _Segment, t1: float) -> np.ndarray:
        """The OUTA rising-edge times in this tick, ``seg`` being POSA."""
        out: list[np.ndarray] = []
        produced = rows = 0
        while self.active:
            row = self._row
            rows += 1
            if rows > _MAX_ROWS_PER_TICK:
                raise _RateError("Error: more table rows in one tick than the simulator carries")
            if self._waiting and not self._start_run(seg, t1):
                break
            times, ended = self._run_edges(seg, t1)
            if len(times):
                out.append(times)
                produced += len(times)
                if produced > _MAX_PULSES:
                    raise _RateError("Error: more pulses in one tick than the simulator carries")
            if not ended:
                break
            if ended == "row":
                self._next_row(row)
        self.count += produced
        return np.concatenate(out) if out else _EMPTY

    def _start_run(self, seg: _Segment, t1: float) -> bool:
        """Wait for the row's trigger; True once it is met (the run starts)."""
        row = self._row
        trigger = self._trig[row]
        if trigger == _IMMEDIATE:
            start: float | None = self._now
        else:
            start = seg.reach(self._pos[row], trigger == _POSA_GT, max(self._now, seg.t0))
        if start is None:
            self._now = t1
            return False
        self._waiting = False
        self._run_start = start
        self._edge = 0  # next edge of the run to produce
        return True

    def _run_edges(self, seg: _Segment, t1: float) -> tuple[np.ndarray, str | None]:
        """Produce the run's edges before ``t1``; says if the run ended ("row", "trigger")."""
        row = self._row
        t_one, t_two = self._t1[row], self._t2[row]
        period = t_one + t_two
        phases = (
            ((0.0, self._out1[row]), (t_one, self._out2[row]))
            if t_one > 0
            else ((0.0, self._out2[row]),)
        )
        per = len(phases)
        reps_left = math.inf if self._rep[row] == 0 else int(self._rep[row]) - self._reps_done
        started = math.floor((t1 - self._run_start) / period) + 1  # repeats begun before t1
        last_edge = int(min(started, reps_left) * per)
        if last_edge - self._edge > 2 * _MAX_PULSES:
            raise _RateError("Error: more pulses in one tick than the simulator carries")
        edges = np.arange(self._edge, max(last_edge, self._edge))
        rep, phase = np.divmod(edges, per)
        offsets = np.array([p[0] for p in phases])
        levels = np.array([p[1] for p in phases], dtype=bool)
        times = self._run_start + rep * period + offsets[phase]
        keep = times < t1
        times, rep, phase = times[keep], rep[keep], phase[keep]
        ended: str | None = None
        if self._trig[row] != _IMMEDIATE:
            # The trigger is checked again at the start of every repeat but the first.
            firsts = np.flatnonzero((phase == 0) & (rep > 0))
            at = seg.at(times[firsts])
            ok = at >= self._pos[row] if self._trig[row] == _POSA_GT else at <= self._pos[row]
            if not ok.all():
                fail = int(firsts[np.argmin(ok)])
                self._now = float(times[fail])
                self._reps_done += int(rep[fail])
                self._waiting, ended = True, "trigger"
                times, phase = times[:fail], phase[:fail]
        lv = levels[phase]
        before = np.concatenate(([self._level], lv[:-1]))
        rising = times[lv & ~before]
        if len(lv):
            self._level = bool(lv[-1])
        if ended:
            return rising, ended
        self._edge += len(times)
        if self._edge == reps_left * per:
            end = self._run_start + reps_left * period
            if end <= t1:
                self._now = end
                return rising, "row"
        return rising, None

    def _next_row(self, row: int) -> None:
        self._row, self._reps_done, self._waiting = row + 1, 0, True
        if self._row == len(self._rep):
            self._row = 0
            self._tables_done += 1
            if self._table_repeats and self._tables_done >= self._table_repeats:
                self.active, self._level = False, False


class _ClockLogic:
    """CLOCK: a pulse every PERIOD seconds from enable (the first at enable)."""

    def __init__(self) -> None:
        self.active = False
        self.count = 0

    def enable(self, t: float, period: float) -> None:
        self._origin, self._period, self._next = t, max(period, MIN_CLOCK_PERIOD), 0
        self.count = 0
        self.active = True

    def retune(self, t: float, period: float) -> None:
        """A new PERIOD while running: the next pulse one new period after the last one."""
        period = max(period, MIN_CLOCK_PERIOD)
        if self._next:
            t = max(self._origin + (self._next - 1) * self._period + period, t)
        self._origin, self._period, self._next = t, period, 0

    def disable(self) -> None:
        self.active = False

    def advance(self, t1: float) -> np.ndarray:
        if not self.active:
            return _EMPTY
        end = math.ceil((t1 - self._origin) / self._period)
        if end - self._next > _MAX_PULSES:
            raise _RateError("Error: more pulses in one tick than the simulator carries")
        times = self._origin + np.arange(self._next, max(end, self._next)) * self._period
        times = times[times < t1]
        self._next += len(times)
        self.count += len(times)
        return times


class _RateError(RuntimeError):
    """A block asked for more pulses in one tick than the simulator can carry."""


# -- HDF5 capture -----------------------------------------------------------------------------


class _Capture:
    """One capture of the DATA block (CAPTURE=1 until it ends): rows of the armed PCAP,
    appended to one HDF5 file (SWMR, one float64 dataset per field at the root) by a single
    writer task that writes in a worker thread, and counts them only once flushed.

    The file is created at the first arm (PandABlocks-ioc's StartData), with the fields
    captured then; a later arm must capture the same fields (else the capture ends)."""

    def __init__(
        self,
        path: str,
        mode: str,
        num_capture: int,
        flush_period: float,
        on_written: Callable[[int, int], Awaitable[None]],
        on_error: Callable[[_Capture, Exception], None],
    ) -> None:
        self.path = path
        self.mode = mode
        self.num_capture = max(num_capture, 0)
        self.flush_period = max(flush_period, 0.0)
        self.fields: tuple[str, ...] | None = None
        self.sources: tuple[int, ...] = ()  # of each field: 0 for TS_TRIG, n for INENCn
        self.received = 0
        self.written = 0
        self.full = False  # FIRST_N: got its rows
        self._on_written = on_written
        self._on_error = on_error
        self.error: Exception | None = None
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._writing_allowed = mode != "LAST_N"  # LAST_N writes its buffer at the end
        self._task: asyncio.Task[None] | None = None
        self._file: h5py.File | None = None

    def start_data(self, fields: tuple[str, ...], sources: tuple[int, ...]) -> str | None:
        """An arm: the fields it captures. Returns an error when they differ from the file's."""
        if self.fields is None:
            self.fields, self.sources = fields, sources
            self._task = asyncio.create_task(self._run())
            return None
        if (fields, sources) != (self.fields, self.sources):
            return "Error: mismatched capture fields for this file: capture ended"
        return None

    def add(self, columns: dict[str, np.ndarray], n: int) -> None:
        """Rows captured by the PCAP, one array per field."""
        if self.full or self._closing:
            return
        if self.mode == "FIRST_N" and self.num_capture:
            n = min(n, self.num_capture - self.received)
            columns = {k: v[:n] for k, v in columns.items()}
            self.full = self.received + n >= self.num_capture
        self._pending.append(columns)
        self._pending_rows += n
        self.received += n
        if self.mode == "LAST_N" and self._pending_rows > 2 * self.num_capture:
            self._trim()
        self._wake.set()

    def _trim(self) -> None:
        """LAST_N: keep only the last NUM_CAPTURE rows pending."""
        keep = self.num_capture
        columns, rows = self._take()
        if rows:
            self._pending = [{k: v[-keep:] for k, v in columns.items()}]
            self._pending_rows = min(rows, keep)

    def _take(self) -> tuple[dict[str, np.ndarray], int]:
        """The pending rows, as one array per field, and how many; none pending after."""
        pending, rows = self._pending, self._pending_rows
        self._pending, self._pending_rows = [], 0
        if not pending:
            return {}, 0
        return {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}, rows

    async def finish(self, write_buffer: bool = True) -> None:
        """End the capture: write what is pending (LAST_N: its last rows when
        ``write_buffer``), close the file."""
        if self.mode == "LAST_N":
            if write_buffer and self.num_capture:
                self._trim()
                self._writing_allowed = True
            else:
                self._take()  # a capture stopped by hand writes no LAST_N rows
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        try:
            await asyncio.to_thread(self._open)
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._writing_allowed and self._pending:
                    columns, rows = self._take()
                    await asyncio.to_thread(self._append, columns)
                    self.written += rows
                    await self._on_written(self.written, self.received)
                if self._closing and not self._pending:
                    break
                if self.flush_period and not self._closing:
                    await asyncio.sleep(self.flush_period)  # more rows per flush
        except Exception as exc:  # a full disk, say: the capture ends with the error
            self.error, self.full = exc, True
            self._take()
            self._on_error(self, exc)
        finally:
            if self._file is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._file.close)

    def _open(self) -> None:
        assert self.fields is not None
        self._file = h5py.File(self.path, "w", libver="latest")
        for name in self.fields:
            self._file.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(CHUNK,)
            )
        self._file.swmr_mode = True  # readers may follow the file while it grows

    def _append(self, columns: dict[str, np.ndarray]) -> None:
        assert self._file is not None
        for name, values in columns.items():
            dataset = self._file[name]
            n = dataset.shape[0]
            dataset.resize((n + len(values),))
            dataset[n:] = values
        self._file.flush()


# -- the PV groups ----------------------------------------------------------------------------


class _Inenc(PVGroup):
    """INENCn: an encoder input, its scaled value and its capture settings."""

    val = pvproperty(name="VAL", value=0.0, read_only=True, precision=6)
    val_scale = pvproperty(name="VAL_SCALE", value=1.0, precision=9)
    val_offset = pvproperty(name="VAL_OFFSET", value=0.0, precision=6)
    capture = _enum("VAL:CAPTURE", _CAPTURE)
    dataset = _text("VAL:DATASET", length=256)


class _Pcomp(PVGroup):
    """PCOMP1: position compare."""

    enable = _enum("ENABLE", _BIT)
    inp = _enum("INP", POS_SOURCES)
    start = pvproperty(name="START", value=0, doc="First compare point (counts)")
    step = pvproperty(name="STEP", value=0, doc="Between compare points (counts)")
    width = pvproperty(name="WIDTH", value=0, doc="Pulse width (counts)")
    pre_start = pvproperty(name="PRE_START", value=0, doc="Run-up before START (counts)")
    pulses = pvproperty(name="PULSES", value=1, doc="Pulses to produce (0: forever)")
    dir = _enum("DIR", ("Positive", "Negative", "Either"))
    active = _enum("ACTIVE", _BOOL, read_only=True)
    health = _text("HEALTH", "OK", length=256, read_only=True)

    @enable.putter
    async def enable(self, instance: Any, value: str) -> str:
        await self.parent._pcomp_enable(value == "ONE")
        return value


class _Seq(PVGroup):
    """SEQ1: the sequencer; its table is one waveform per column (equal lengths)."""

    table_repeats = _column("TABLE:REPEATS", "Repeats of each row (0: forever)")
    table_trigger = _column("TABLE:TRIGGER", "Trigger of each row (SEQ_TRIGGERS index)")
    table_position = _column("TABLE:POSITION", "POSA compare position of each row (counts)")
    table_time1 = _column("TABLE:TIME1", "Phase 1 time of each row (time units)")
    table_outa1 = _column("TABLE:OUTA1", "OUTA during phase 1 of each row (0/1)")
    table_time2 = _column("TABLE:TIME2", "Phase 2 time of each row (time units)")
    table_outa2 = _column("TABLE:OUTA2", "OUTA during phase 2 of each row (0/1)")
    repeats = pvproperty(name="REPEATS", value=1, doc="Repeats of the table (0: forever)")
    prescale = pvproperty(name="PRESCALE", value=1.0, precision=6, doc="Time unit, in units")
    prescale_units = _enum("PRESCALE_UNITS", tuple(_TIME_UNITS), value="s")
    enable = _enum("ENABLE", _BIT)
    active = _enum("ACTIVE", _BOOL, read_only=True)
    posa = _enum("POSA", POS_SOURCES)
    health = _text("HEALTH", "OK", length=256, read_only=True)

    rejected: str | None = None
    """Why the last TRIGGER column was refused (the table cannot run until it is rewritten)."""

    @table_trigger.putter
    async def table_trigger(self, instance: Any, value: Any) -> Any:
        codes = np.asarray(value, dtype=np.int64)
        bad = sorted({int(c) for c in codes if c not in _SUPPORTED_TRIGGERS})
        if bad:
            names = ", ".join(
                SEQ_TRIGGERS[c] if 0 <= c < len(SEQ_TRIGGERS) else str(c) for c in bad
            )
            self.rejected = (
                f"Error: unsupported trigger(s) {names}: the simulator has Immediate, POSA"
            )
            await _put(self.health, self.rejected)
            raise ValueError(self.rejected)
        self.rejected = None
        return value

    @enable.putter
    async def enable(self, instance: Any, value: str) -> str:
        await self.parent._seq_enable(value == "ONE")
        return value


class _Clock(PVGroup):
    """CLOCK1: a free-running pulse train."""

    period = pvproperty(name="PERIOD", value=1.0, precision=9, units="s")
    enable = _enum("ENABLE", _BIT)
    health = _text("HEALTH", "OK", length=256, read_only=True)

    @period.putter
    async def period(self, instance: Any, value: float) -> float:
        value = max(float(value), MIN_CLOCK_PERIOD)
        await self.parent._clock_period(value)
        return value

    @enable.putter
    async def enable(self, instance: Any, value: str) -> str:
        await self.parent._clock_enable(value == "ONE")
        return value


class _Pcap(PVGroup):
    """PCAP: position capture, one row per TRIG pulse while armed."""

    arm = _enum("ARM", _BOOL)
    active = _enum("ACTIVE", _BOOL, read_only=True)
    trig = _enum("TRIG", BIT_SOURCES)
    ts_capture = _enum("TS_TRIG:CAPTURE", _CAPTURE, value="Value")
    ts_dataset = _text("TS_TRIG:DATASET", length=256)

    @arm.putter
    async def arm(self, instance: Any, value: str) -> str:
        await self.parent._arm(value == "1")
        return value


class _Ttlout(PVGroup):
    """TTLOUT1: the TTL output cabled to the detectors."""

    val = _enum("VAL", ("ZERO", *BIT_SOURCES))


class _Data(PVGroup):
    """DATA: the HDF5 writer."""

    hdf_directory = _text("HDF_DIRECTORY")
    hdf_file_name = _text("HDF_FILE_NAME", length=256)
    hdf_full_file_path = _text("HDF_FULL_FILE_PATH", length=2048, read_only=True)
    num_capture = pvproperty(name="NUM_CAPTURE", value=0, doc="Rows to capture (0: forever)")
    num_captured = pvproperty(name="NUM_CAPTURED", value=0, read_only=True, doc="Rows written")
    num_received = pvproperty(name="NUM_RECEIVED", value=0, read_only=True, doc="Rows captured")
    capture = _enum("CAPTURE", _BOOL)
    capture_mode = _enum("CAPTURE_MODE", ("FIRST_N", "LAST_N", "FOREVER"))
    flush_period = pvproperty(name="FLUSH_PERIOD", value=1.0, precision=3, units="s")
    create_directory = pvproperty(name="CREATE_DIRECTORY", value=0, doc="Directory depth")
    directory_exists = _enum("DIRECTORY_EXISTS", ("No", "Yes"), read_only=True)
    status = _text("STATUS", "OK", length=256, read_only=True)

    async def _unless_capturing(self, value: Any) -> Any:
        if self.capture.value == "1":
            raise ValueError("DATA: capture in progress; settings are kept until it ends")
        return value

    @hdf_directory.putter
    async def hdf_directory(self, instance: Any, value: str) -> str:
        await self._unless_capturing(value)
        exists, message = await asyncio.to_thread(
            _ensure_directory, value, int(self.create_directory.value)
        )
        await _put(self.directory_exists, "Yes" if exists else "No")
        await _put(self.status, message)
        await _put(self.hdf_full_file_path, _join(value, self.hdf_file_name.value))
        return value

    @hdf_file_name.putter
    async def hdf_file_name(self, instance: Any, value: str) -> str:
        await self._unless_capturing(value)
        await _put(self.hdf_full_file_path, _join(self.hdf_directory.value, value))
        return value

    @capture_mode.putter
    async def capture_mode(self, instance: Any, value: str) -> str:
        return await self._unless_capturing(value)

    @capture.putter
    async def capture(self, instance: Any, value: str) -> str:
        await self.parent._capture(value == "1")
        return value


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if directory and name else ""


def _ensure_directory(directory: str, depth: int) -> tuple[bool, str]:
    """PandABlocks-ioc's CREATE_DIRECTORY: < 0 creates up to -depth missing directories, > 0
    all below the first ``depth`` levels, 0 none. Returns (exists and writable, status)."""
    if not directory:
        return False, "Error: no directory"
    path = Path(directory).absolute()
    missing = sum(1 for p in (*path.parents, path) if not p.exists())
    if depth < 0:
        allowed = -depth
    elif 0 < depth <= len(path.parents):
        allowed = len(path.parents) - depth
    else:
        allowed = 0
    if missing == 0:
        if os.access(path, os.W_OK):
            return True, "Dir exists and is writable"
        return False, "Error: dir exists but isn't writable"
    if missing > allowed:
        return False, f"Error: need to create {missing} > {allowed} dirs"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return False, f"Error: creating dirs: {exc}"
    return True, f"Created {missing} dirs"


def _inenc_groups() -> dict[str, SubGroup]:
    return {
        f"inenc{n}": SubGroup(_Inenc, prefix=f"INENC{n}:", doc=f"Encoder input {n}")
        for n in range(1, NUM_ENCODERS + 1)
    }


class PandASim(PVGroup):
    """A simulated PandABox at ``PREFIX:`` (e.g. ``DEMO:PANDA1``, no trailing colon): position
    compare (PCOMP1), a sequencer (SEQ1), a clock (CLOCK1) and position capture (PCAP) into
    HDF5 files (DATA), with encoders 1..4 cabled to ``encoders`` (motors, ``EncoderSource``).

    Fly scans trigger from positions exactly as with the hardware: PCOMP fires at compare
    points of a moving motor, PCAP captures the encoder values and timestamps of every pulse
    and DATA writes them to HDF5 without loss. TTLOUT1's pulses reach in-process detectors
    through :meth:`add_pulse_listener` and other processes through ``SIM:TTLOUT1``.

    A capture (DATA:CAPTURE=1) writes ``HDF_DIRECTORY/HDF_FILE_NAME``, created at the next
    arm: one float64 dataset per captured field at the file's root, named by the field's
    DATASET PV (by default ``INENCn.VAL.Value`` and ``PCAP.TS_TRIG.Value``, the timestamps in
    seconds since arm), one row per pulse. NUM_CAPTURED counts the rows flushed to the file.

    ``sim``: ``tick`` (seconds between simulation steps while a block runs, 0.002).
    """

    locals().update(_inenc_groups())
    pcomp1 = SubGroup(_Pcomp, prefix="PCOMP1:", doc="Position compare")
    seq1 = SubGroup(_Seq, prefix="SEQ1:", doc="Sequencer")
    clock1 = SubGroup(_Clock, prefix="CLOCK1:", doc="Clock")
    pcap = SubGroup(_Pcap, prefix="PCAP:", doc="Position capture")
    ttlout1 = SubGroup(_Ttlout, prefix="TTLOUT1:", doc="TTL output")
    data = SubGroup(_Data, prefix="DATA:", doc="HDF5 writer")
    pulses = pvproperty(
        name=PULSE_PV,
        value=[0.0],
        dtype=float,
        max_length=_MAX_TTL_BATCH + 1,
        read_only=True,
        doc="Simulator only: TTLOUT1 pulses, [first_index, t0, t1, ...] (wall-clock times)",
    )

    def __init__(
        self,
        prefix: str,
        *,
        sim: Mapping[str, Any] | None = None,
        encoders: Mapping[int, EncoderSource] | None = None,
        **kwargs: Any,
    ) -> None:
        prefix = prefix.rstrip(":")
        super().__init__(prefix + ":", **kwargs)
        self.options = sim_options("panda", prefix, sim, _DEFAULTS)
        self.encoders = {int(n): source for n, source in (encoders or {}).items()}
        for n in self.encoders:
            if not 1 <= n <= NUM_ENCODERS:
                raise ValueError(f"panda {prefix}: encoder {n}; it has INENC1..{NUM_ENCODERS}")
        self.inencs: dict[int, _Inenc] = {
            n: getattr(self, f"inenc{n}") for n in range(1, NUM_ENCODERS + 1)
        }
        self._resolutions: dict[int, float] = {}
        self._listeners: list[PulseListener] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # Simulation time: seconds since _epoch_ns, precise (ns) where time.time() is not.
        self._epoch_ns = time.time_ns()
        self._epoch = self._epoch_ns * 1e-9
        self._t = 0.0
        self._counts: dict[int, float] = {}
        self._pcomp = _PcompLogic()
        self._seq = _SeqLogic()
        self._clock = _ClockLogic()
        self._armed = False
        self._t_arm = 0.0
        self._active_capture: _Capture | None = None
        self._finishing: set[asyncio.Task[None]] = set()

    def add_pulse_listener(self, callback: PulseListener) -> None:
        """Cable a detector to TTLOUT1: ``await callback(first_index, times)`` for every batch
        of its pulses (wall-clock times, ``time.time()`` base), in order. Keep it quick: the
        simulation waits for it."""
        self._listeners.append(callback)

    # -- time and positions -------------------------------------------------------------------

    def _now(self) -> float:
        return (time.time_ns() - self._epoch_ns) * 1e-9

    def _resolution(self, n: int) -> float:
        """Encoder ``n``'s resolution (user units per count), read once: its counts stay put
        whatever VAL_SCALE says, as a real encoder's."""
        if n not in self._resolutions:
            self._resolutions[n] = float(self.encoders[n].resolution) or 1.0
        return self._resolutions[n]

    def _counts_at(self, t: float) -> dict[int, float]:
        wall = self._epoch + t
        return {
            n: source.position_at(wall) / self._resolution(n) for n, source in self.encoders.items()
        }

    def _segment(self, source: str, t0: float, t1: float, c1: Mapping[int, float]) -> _Segment:
        if source == "ZERO":
            return _Segment(t0, t1, 0.0, 0.0)
        n = int(source.removeprefix("INENC").removesuffix(".VAL"))
        return _Segment(t0, t1, self._counts.get(n, 0.0), c1.get(n, 0.0))

    def _value(self, n: int, counts: Any) -> Any:
        """INENCn.VAL of (continuous) ``counts``: whole counts, scaled."""
        inenc = self.inencs[n]
        return np.round(counts) * inenc.val_scale.value + inenc.val_offset.value

    # -- the simulation step --------------------------------------------------------------------

    def _busy(self) -> bool:
        return self._armed or self._pcomp.active or self._seq.active or self._clock.active

    async def _advance(self, t1: float) -> None:
        """Run the blocks from the last step to ``t1``: pulses, captures, TTL, ACTIVE flags."""
        t0 = self._t
        if t1 <= t0:
            return
        c1 = self._counts_at(t1)
        pcomp_inp = self._segment(self.pcomp1.inp.value, t0, t1, c1)
        seq_posa = self._segment(self.seq1.posa.value, t0, t1, c1)
        pulses = {
            "PCOMP1.OUT": await self._run_block(
                self._pcomp, self.pcomp1, lambda: self._pcomp.advance(pcomp_inp)
            ),
            "SEQ1.OUTA": await self._run_block(
                self._seq, self.seq1, lambda: self._seq.advance(seq_posa, t1)
            ),
            "CLOCK1.OUT": await self._run_block(
                self._clock, self.clock1, lambda: self._clock.advance(t1)
            ),
        }
        segments = {n: self._segment(f"INENC{n}.VAL", t0, t1, c1) for n in self.encoders}
        self._t, self._counts = t1, c1
        capture = self._active_capture
        if self._armed and capture is not None and capture.fields is not None:
            times = pulses[self.pcap.trig.value]
            if len(times):
                capture.add(self._rows(capture, times, segments), len(times))
                if capture.full:
                    self._end_capture(capture, "Requested number of frames captured")
        source = self.ttlout1.val.value
        if source in pulses and len(pulses[source]):
            await self._emit(source, pulses[source])
        await _put(self.pcomp1.active, _BOOL[self._pcomp.active])
        await _put(self.seq1.active, _BOOL[self._seq.active])

    async def _run_block(
        self, logic: Any, group: Any, step: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """One block's pulses of this step; a rate beyond the simulator stops the block."""
        try:
            return step()
        except _RateError as exc:
            logic.disable()
            await _put(group.health, str(exc))
            log.error("panda %s: %s", self.prefix, exc)
            return _EMPTY

    def _rows(
        self, capture: _Capture, times: np.ndarray, segments: Mapping[int, _Segment]
    ) -> dict[str, np.ndarray]:
        columns = {}
        assert capture.fields is not None
        for name, source in zip(capture.fields, capture.sources, strict=True):
            if source == 0:
                columns[name] = times - self._t_arm
            elif source in segments:
                columns[name] = self._value(source, segments[source].at(times))
            else:  # an encoder not cabled: it reads 0 counts
                columns[name] = np.full(len(times), float(self._value(source, 0.0)))
        return columns

    async def _emit(self, source: str, times: np.ndarray) -> None:
        logic = {"PCOMP1.OUT": self._pcomp, "SEQ1.OUTA": self._seq, "CLOCK1.OUT": self._clock}
        first = logic[source].count - len(times)
        wall = self._epoch + times
        for listener in self._listeners:
            try:
                await listener(first, wall)
            except Exception:
                log.exception("panda %s: TTLOUT1 pulse listener failed", self.prefix)
        for i in range(0, len(wall), _MAX_TTL_BATCH):
            batch = wall[i : i + _MAX_TTL_BATCH]
            await self.pulses.write(np.concatenate(([float(first + i)], batch)))

    async def _step_to_now(self) -> float:
        """Run the simulation up to now (the caller holds the lock); returns now."""
        now = self._now()
        await self._advance(now)
        return now

    async def _publish_values(self) -> None:
        counts = self._counts
        for n, inenc in self.inencs.items():
            await _put(inenc.val, float(self._value(n, counts.get(n, 0.0))))

    @pulses.startup
    async def pulses(self, instance: Any, async_lib: Any) -> None:
        for n in self.encoders:
            await self.inencs[n].val_scale.write(self._resolution(n))
        self._t = self._now()
        self._counts = self._counts_at(self._t)
        await self._publish_values()
        last_values = time.monotonic()
        tick = float(self.options["tick"])
        while True:
            if self._busy():
                await asyncio.sleep(tick)
            else:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _INENC_PERIOD)
            try:
                async with self._lock:
                    await self._step_to_now()
                if time.monotonic() - last_values >= _INENC_PERIOD:
                    last_values = time.monotonic()
                    await self._publish_values()
            except Exception:
                log.exception("panda %s: simulation step failed", self.prefix)

    # -- the blocks' reactions to puts -----------------------------------------------------------

    async def _pcomp_enable(self, on: bool) -> None:
        async with self._lock:
            now = await self._step_to_now()
            group = self.pcomp1
            if on and group.enable.value != "ONE":
                params = {
                    key: getattr(group, key).value
                    for key in ("start", "step", "width", "pre_start", "pulses", "dir")
                }
                here = self._segment(group.inp.value, now, now, self._counts).c1
                await _put(group.health, self._pcomp.enable(now, params, here))
            elif not on:
                self._pcomp.disable()
            await _put(group.active, _BOOL[self._pcomp.active])
        self._wake.set()

    async def _seq_enable(self, on: bool) -> None:
        async with self._lock:
            now = await self._step_to_now()
            group = self.seq1
            if on and group.enable.value != "ONE":
                table, problem = self._seq_table()
                await _put(group.health, problem or "OK")
                if problem:
                    raise ValueError(problem)
                unit = float(group.prescale.value) * _TIME_UNITS[group.prescale_units.value]
                self._seq.enable(now, table, int(group.repeats.value), unit)
            elif not on:
                self._seq.disable()
            await _put(group.active, _BOOL[self._seq.active])
        self._wake.set()

    def _seq_table(self) -> tuple[dict[str, np.ndarray], str | None]:
        group = self.seq1
        columns = ("repeats", "trigger", "position", "time1", "outa1", "time2", "outa2")
        table = {c: np.asarray(getattr(group, f"table_{c}").value, dtype=np.int64) for c in columns}
        if group.rejected:
            return table, group.rejected
        lengths = {len(v) for v in table.values()}
        if len(lengths) != 1:
            sizes = ", ".join(f"{c.upper()} {len(v)}" for c, v in table.items())
            return table, f"Error: table columns differ in length: {sizes}"
        if not lengths.pop():
            return table, "Error: the table is empty"
        if not np.isin(table["trigger"], _SUPPORTED_TRIGGERS).all():
            return table, "Error: unsupported trigger: the simulator has Immediate, POSA"
        if (table["time1"] < 0).any() or (table["time2"] < 0).any():
            return table, "Error: negative time"
        return table, None

    async def _clock_enable(self, on: bool) -> None:
        async with self._lock:
            now = await self._step_to_now()
            if on and self.clock1.enable.value != "ONE":
                self._clock.enable(now, float(self.clock1.period.value))
                await _put(self.clock1.health, "OK")
            elif not on:
                self._clock.disable()
        self._wake.set()

    async def _clock_period(self, period: float) -> None:
        if self._clock.active:
            async with self._lock:
                self._clock.retune(await self._step_to_now(), period)

    async def _arm(self, on: bool) -> None:
        async with self._lock:
            now = await self._step_to_now()
            if on and not self._armed:
                self._armed, self._t_arm = True, now
                await _put(self.pcap.active, "1")
                if self._active_capture is not None:
                    self._start_data(self._active_capture)
            elif not on and self._armed:
                self._armed = False
                await _put(self.pcap.active, "0")
                capture = self._active_capture
                if capture is not None and capture.fields is not None:
                    if capture.mode in ("FIRST_N", "LAST_N"):  # the end of its data
                        self._end_capture(capture, "Finished capture")
                    else:
                        await _put(self.data.status, "Finished capture, waiting for next arm")
        self._wake.set()

    def _capture_fields(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The captured fields' dataset names, and their sources (0: TS_TRIG, n: INENCn)."""
        names, sources = [], []
        if self.pcap.ts_capture.value == "Value":
            names.append(self.pcap.ts_dataset.value or "PCAP.TS_TRIG.Value")
            sources.append(0)
        for n, inenc in self.inencs.items():
            if inenc.capture.value == "Value":
                names.append(inenc.dataset.value or f"INENC{n}.VAL.Value")
                sources.append(n)
        return tuple(names), tuple(sources)

    def _start_data(self, capture: _Capture) -> None:
        names, sources = self._capture_fields()
        if len(set(names)) != len(names):
            self._end_capture(capture, "Error: two captured fields have the same DATASET")
            return
        problem = capture.start_data(names, sources)
        if problem:
            self._end_capture(capture, problem)
        else:
            self._schedule(_put(self.data.status, f"Writing {capture.path}"))

    def _end_capture(self, capture: _Capture, status: str) -> None:
        """End ``capture`` (from inside the simulation step): its file is finished in a task."""
        if self._active_capture is capture:
            self._active_capture = None
            self._schedule(self._finish(capture, status))

    def _schedule(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, capture: _Capture, status: str, write_buffer: bool = True) -> None:
        await capture.finish(write_buffer)
        if capture.error is not None:
            status = f"Error: writing {capture.path}: {capture.error}"
        await _put(self.data.num_captured, capture.written)
        await _put(self.data.num_received, capture.received)
        await _put(self.data.status, status)
        if self._active_capture is None:
            await _put(self.data.capture, "0")

    def _on_capture_error(self, capture: _Capture, exc: Exception) -> None:
        log.error("panda %s: writing %s failed: %s", self.prefix, capture.path, exc)
        self._end_capture(capture, f"Error: writing {capture.path}: {exc}")

    async def _on_written(self, written: int, received: int) -> None:
        await _put(self.data.num_received, received)
        await _put(self.data.num_captured, written)

    async def _capture(self, on: bool) -> None:
        data = self.data
        if on:
            if self._active_capture is not None:
                return
            await asyncio.gather(*self._finishing)  # the last capture's file is closed
            path = _join(data.hdf_directory.value, data.hdf_file_name.value)
            if data.directory_exists.value != "Yes" or not path:
                message = "Error: set an existing HDF_DIRECTORY and an HDF_FILE_NAME first"
                await _put(data.status, message)
                raise ValueError(message)
            capture = _Capture(
                path,
                data.capture_mode.value,
                int(data.num_capture.value),
                float(data.flush_period.value),
                self._on_written,
                self._on_capture_error,
            )
            if capture.mode == "LAST_N" and capture.num_capture <= 0:
                message = "Error: NUM_CAPTURE must be > 0 in LAST_N mode"
                await _put(data.status, message)
                raise ValueError(message)
            await _put(data.num_captured, 0)
            await _put(data.num_received, 0)
            await _put(data.status, "Waiting for PCAP arm")
            await _put(data.hdf_full_file_path, path)
            async with self._lock:
                await self._step_to_now()
                self._active_capture = capture
                if self._armed:
                    self._start_data(capture)
            return
        async with self._lock:
            await self._step_to_now()
            capture, self._active_capture = self._active_capture, None
        if capture is not None:
            await self._finish(capture, "Capturing disabled", write_buffer=False)
        await asyncio.gather(*self._finishing)
