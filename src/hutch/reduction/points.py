"""A stream's points, whole: the values its events carry and the arrays its StreamDatums
point at, put together per seq_num.

A step scan's point is an event (motor positions) and a StreamDatum (the frame); a fly
scan's points come only as StreamDatums, one per captured field (PandA positions, frames),
each covering many seq_nums. `StreamPoints` hands out `Block`s of consecutive points once
every field of the stream has them, in seq_num order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hutch.reduction.external import ExternalArrays

__all__ = ["Block", "StreamPoints"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    """Consecutive points of one stream: ``data[key][i]`` is field ``key`` at ``seq_nums[i]``
    (a scalar field as a 1-D array, a frame field as ``(n, height, width)``)."""

    seq_nums: np.ndarray
    time: np.ndarray
    data: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.seq_nums)


@dataclass
class _Chunk:
    start: int  # first seq_num
    values: np.ndarray | list[Any]
    times: np.ndarray | None = None

    @property
    def stop(self) -> int:
        return self.start + len(self.values)


@dataclass
class StreamPoints:
    """Collects one stream's events and StreamDatums (resolved by ``external``) and gives
    out the points complete in every field (`ready`)."""

    descriptor: dict[str, Any]
    external: ExternalArrays
    next_seq: int = 1
    _chunks: dict[str, list[_Chunk]] = field(default_factory=dict)
    _times: list[_Chunk] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._chunks = {key: [] for key in self.descriptor["data_keys"]}
        # Whether events carry some of the fields (a step scan's positions): then a point
        # is whole with its event, and takes its time. A stream all in files (a count of an
        # area detector: its events are empty and may come after their StreamDatum; a fly
        # scan: no events) has its points whole with their StreamDatums, and no times, so
        # that live and replayed reductions see the same points.
        self._events_carry = any(
            not data_key.get("external") for data_key in self.descriptor["data_keys"].values()
        )

    @property
    def keys(self) -> list[str]:
        return list(self._chunks)

    @property
    def external_keys(self) -> list[str]:
        keys = self.descriptor["data_keys"]
        return [k for k in keys if keys[k].get("external")]

    def add_event_page(self, page: dict[str, Any]) -> None:
        seq_nums = list(page.get("seq_num") or ())
        if not seq_nums or not self._events_carry:
            return
        if seq_nums[0] < self.next_seq:
            # A point taken again (a suspender rewound the plan): its reduction was given.
            logger.warning(
                "stream %s: seq_num %d again; points already reduced are not reduced again",
                self.descriptor.get("name"),
                seq_nums[0],
            )
        data = page.get("data") or {}
        for key, chunks in self._chunks.items():
            if key in data:
                chunks.append(_Chunk(seq_nums[0], list(data[key])))
        self._times.append(_Chunk(seq_nums[0], list(page.get("time") or ())))

    def add_stream_datum(self, doc: dict[str, Any]) -> None:
        key, seq_nums, rows = self.external.stream_datum(doc)
        if key in self._chunks and len(seq_nums):
            self._chunks[key].append(_Chunk(seq_nums.start, rows))

    def ready(self) -> Block | None:
        """The points from ``next_seq`` on that every field has, or None."""
        stop = min((self._covered(chunks) for chunks in self._chunks.values()), default=0)
        if stop <= self.next_seq:
            return None
        start, self.next_seq = self.next_seq, stop
        data = {key: self._take(chunks, start, stop) for key, chunks in self._chunks.items()}
        if self._times:
            times = np.asarray(self._take(self._times, start, stop), dtype=float)
        else:
            times = np.full(stop - start, np.nan)
        return Block(np.arange(start, stop), times, data)

    def _covered(self, chunks: list[_Chunk]) -> int:
        """The first seq_num from ``next_seq`` on that ``chunks`` lack."""
        stop = self.next_seq
        for chunk in sorted(chunks, key=lambda c: c.start):
            if chunk.start > stop:
                break
            stop = max(stop, chunk.stop)
        return stop

    @staticmethod
    def _take(chunks: list[_Chunk], start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop`` of ``chunks``; chunks wholly before ``stop`` are let go."""
        parts, kept = [], []
        for chunk in sorted(chunks, key=lambda c: c.start):
            if chunk.stop <= start:
                continue
            low, high = max(start, chunk.start), min(stop, chunk.stop)
            if low < high:
                parts.append(np.asarray(chunk.values[low - chunk.start : high - chunk.start]))
            if chunk.stop > stop:
                kept.append(chunk)
        chunks[:] = kept
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
