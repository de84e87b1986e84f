"""Neutron events of the simulated time-of-flight powder diffractometer (`neutrons.py`), as
ESS's detectors record them: per pulse, pixel ids and times after the pulse's T0.

Generating events one neutron at a time from the physics would be slow; instead, for given
chopper settings, `NeutronSimulator` draws a large pool of neutrons that pass the choppers
and reach the detector (or monitor) once, each with its pixel and its arrival time after the
T0 of the pulse that emitted it, and then fills each pulse with a Poisson number (mean ∝ the
pulse's proton charge) of pool entries taken at a random place. The pool is rebuilt when the
choppers change.

The pool is sampled exactly (rejection sampling) from: emission time x spectrum x chopper
transmission x (for Bragg events) powder intensity in each pixel, ∝ Ω I d⁴ sin²θ φ(λ) (the
time-of-flight Lorentz factor λ⁴/sin²θ = 16 d⁴ sin²θ). To keep the acceptance high with a
pulse-shaping chopper open for a few % of the pulse, emission times are drawn only within the
openings of the most restrictive chopper, and wavelengths from a tabulated bound of the
transmitted spectrum.

A neutron arriving ``t`` after its pulse's T0 is recorded under the latest pulse at its
arrival: ``k = floor(t · rate)`` pulses later, at ``t - k / rate`` (frame wrapping: slow
neutrons of pulse n carry pulse n+1's event_time_zero). `hutch.tof.unwrap_time_of_flight`
undoes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hutch.tof import H_OVER_MN, pulse_time_ns

from .neutrons import Chopper, Instrument, Source

__all__ = ["NeutronSimulator", "PulseEvents", "histogram_events"]

_STEP = 0.002
"""Å: the wavelength grid on which the transmitted spectrum is bounded."""
_TRUNCATE = 5.0
"""Peaks are Gaussians cut at this many σ."""
_CHUNK = 1 << 18
"""Candidates drawn at a time while building a pool (bounded memory)."""


@dataclass(frozen=True)
class PulseEvents:
    """The events recorded under consecutive pulses, in NeXus NXevent_data layout:
    ``pulse`` indices, ``event_time_zero`` (int64 ns since the epoch: T0 of each pulse),
    ``event_index`` (int64: each pulse's first event in this block), ``event_id`` (int32
    pixel ids) and ``event_time_offset`` (int32 ns after the pulse's T0)."""

    pulse: np.ndarray
    event_time_zero: np.ndarray
    event_index: np.ndarray
    event_id: np.ndarray
    event_time_offset: np.ndarray

    def __len__(self) -> int:
        return len(self.event_id)

    @property
    def counts(self) -> np.ndarray:
        """Events per pulse."""
        return np.diff(np.append(self.event_index, len(self.event_id)))


def histogram_events(event_time_offset: np.ndarray, edges_ns: np.ndarray) -> np.ndarray:
    """Counts of events per time bin (``edges_ns``: bin edges in ns after T0)."""
    return np.histogram(np.asarray(event_time_offset), bins=np.asarray(edges_ns))[0]


class _Windows:
    """One chopper's open windows (s after T0) as a neutron emitted ``t_e`` after T0 meets
    them: ``distance`` m away, padded so that ``reach`` windows follow any first one."""

    def __init__(self, distance: float, opens: np.ndarray, closes: np.ndarray, t_end: float):
        self.distance = distance
        # At most this many windows overlap one emission-long stretch.
        finite = opens[np.isfinite(opens)]
        turns = math.ceil(t_end / np.min(np.diff(finite))) if len(finite) > 1 else 0
        self.reach = max(min(len(opens), turns + 2), 1)
        pad = np.full(self.reach, np.inf)
        self.opens, self.closes = np.concatenate([opens, pad]), np.concatenate([closes, pad])
        self.closed = not len(opens)
        self.t_end = t_end

    def clipped(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The windows a neutron of each ``lam`` can meet, as emission times (lo, hi: one row
        per neutron) clipped to the emission; empty ones have lo = hi."""
        shift = (self.distance * lam / H_OVER_MN)[:, None]
        first = np.searchsorted(self.closes, shift[:, 0], side="right")
        index = np.minimum(first[:, None] + np.arange(self.reach), len(self.opens) - 1)
        lo = np.clip(self.opens[index] - shift, 0.0, self.t_end)
        return lo, np.clip(self.closes[index] - shift, lo, self.t_end)

    def bound(self) -> float:
        """The most open time within any stretch as long as the emission."""
        opens, closes = self.opens[: -self.reach], self.closes[: -self.reach]
        starts = np.concatenate([opens, closes - self.t_end])
        starts = starts[np.isfinite(starts)]
        if self.closed or not len(starts):
            return 0.0 if self.closed else self.t_end
        lo = np.maximum(opens[None, :], starts[:, None])
        hi = np.minimum(closes[None, :], starts[:, None] + self.t_end)
        return float(np.clip(hi - lo, 0, None).sum(axis=1).max())


class _Cascade:
    """The choppers upstream of ``end`` m: which (emission time, λ) pass them all, and how
    to draw them."""

    def __init__(self, choppers: Sequence[Chopper], source: Source, end: float) -> None:
        self.source = source
        lo, hi = source.wavelength_range
        t_end = source.emission_end
        self.windows: list[_Windows] = []
        for chopper in choppers:
            if chopper.distance < end:
                first, last = chopper.distance * lo / H_OVER_MN, chopper.distance * hi / H_OVER_MN
                opens, closes = chopper.openings(first - 1e-3, t_end + last + 1e-3)
                self.windows.append(_Windows(chopper.distance, opens, closes, t_end))
        if not self.windows:  # nothing to chop: an always open "chopper" at the moderator
            self.windows.append(_Windows(0.0, np.array([-np.inf]), np.array([np.inf]), t_end))
        # The reference chopper, within whose openings emission times are drawn: the one
        # open least during any stretch as long as the emission.
        self.ref = min(self.windows, key=_Windows.bound)
        self.others = [w for w in self.windows if w is not self.ref]
        # The transmitted spectrum's bound on a grid: φ(λ) x (reference's open time at λ),
        # kept only where a neutron can pass them all.
        self.grid = np.arange(lo, hi + _STEP, _STEP)
        self.flux = source.flux(self.grid)
        lo_grid, hi_grid = self.ref.clipped(self.grid)
        self.open_time = (hi_grid - lo_grid).sum(axis=1)  # the reference's, at each λ
        self.passing = self.passing_length(self.grid) > 0

    def passing_length(self, lam: np.ndarray) -> np.ndarray:
        """Seconds of emission time whose neutrons of ``lam`` pass all the choppers: where
        every chopper has a window (each chopper's windows are disjoint, so that is where
        the count of windows covering the time equals the number of choppers)."""
        if any(w.closed for w in self.windows):
            return np.zeros(len(lam))
        edges = [w.clipped(lam) for w in self.windows]
        starts = np.concatenate([lo for lo, _ in edges], axis=1)
        times = np.concatenate([starts, *(hi for _, hi in edges)], axis=1)
        step = np.concatenate([np.ones_like(starts), -np.ones_like(starts)], axis=1)
        order = np.argsort(times, axis=1, kind="stable")
        times = np.take_along_axis(times, order, axis=1)
        cover = np.cumsum(np.take_along_axis(step, order, axis=1), axis=1)[:, :-1]
        return (np.diff(times, axis=1) * (cover == len(self.windows))).sum(axis=1)

    def upper(self, half_width: int) -> np.ndarray:
        """A bound of φ(λ) x open length over grid points i - half_width ... i + 1 + half_width,
        at each i (the last point is the grid's end)."""
        from scipy.ndimage import maximum_filter1d

        size = 2 * half_width + 3
        flux = maximum_filter1d(self.flux, size, mode="nearest", origin=-1)
        open_time = maximum_filter1d(self.open_time, size, mode="nearest", origin=-1)
        # The open length changes at most at L/3956 s per Å between grid points (where it is
        # 0 at all of them, it is 0 between: a window passes wavelengths over far more than a
        # step); the spectrum is smooth (1 % covers its curvature within a step).
        margin = np.where(open_time > 0, self.ref.distance / H_OVER_MN * _STEP, 0.0)
        # Where no neutron passes all choppers at any grid point of the stretch, none passes
        # between them either (but for slivers narrower than a step: negligible).
        passing = maximum_filter1d(self.passing, size, mode="nearest", origin=-1)
        return 1.01 * flux * (open_time + margin) * passing

    def emission(self, lam: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Emission times drawn uniformly within the reference chopper's openings for each
        ``lam``, and each one's weight: open length x emission density / its maximum x
        whether the other choppers let it through."""
        lo, hi = self.ref.clipped(lam)
        length = hi - lo
        total = length.sum(axis=1)
        u = rng.random(len(lam)) * total
        cumulative = np.cumsum(length, axis=1)
        which = np.minimum((u[:, None] >= cumulative).sum(axis=1), self.ref.reach - 1)
        rows = np.arange(len(lam))
        before = cumulative[rows, which] - length[rows, which]
        t_emit = lo[rows, which] + (u - before)
        weight = total * self.source.emission_density(t_emit) / self.source.emission_density_max
        for other in self.others:
            t = t_emit + other.distance * lam / H_OVER_MN
            index = np.searchsorted(other.opens, t, side="right") - 1
            inside = (index >= 0) & (t < other.closes[np.maximum(index, 0)])
            weight = np.where(inside, weight, 0.0)
        lo_lam, hi_lam = self.source.wavelength_range
        weight = np.where((lam >= lo_lam) & (lam <= hi_lam), weight, 0.0)
        return t_emit, weight

    def incident(
        self, n: int, rng: np.random.Generator, cells: np.ndarray, total: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` candidate neutrons (λ, emission time, acceptance probability) drawn from
        the grid's cell bounds ``cells`` (cumulative, ``total`` at the end)."""
        cell = np.searchsorted(cells, rng.random(n) * total, side="right")
        cell = np.minimum(cell, len(self.grid) - 2)
        lam = self.grid[cell] + rng.random(n) * _STEP
        t_emit, weight = self.emission(lam, rng)
        bound = np.diff(cells, prepend=0.0)[cell] / _STEP
        accept = self.source.flux(lam) * weight / np.where(bound > 0, bound, np.inf)
        return lam, t_emit, accept


@dataclass(frozen=True)
class _Pool:
    """Neutrons that reach a detector: pixel ids and times after the T0 they are recorded
    under, grouped by how many pulses after their own that is (``segment_start``)."""

    event_id: np.ndarray
    event_time_offset: np.ndarray
    segment_start: np.ndarray
    events_per_uc: float

    @classmethod
    def from_arrivals(
        cls,
        ids: np.ndarray,
        arrival: np.ndarray,
        rate: float,
        per_uc: float,
        rng: np.random.Generator,
    ) -> _Pool:
        shuffle = rng.permutation(len(ids))
        ids, arrival = ids[shuffle], arrival[shuffle]
        late = np.floor(arrival * rate).astype(np.int64)
        offset = np.rint((arrival - late / rate) * 1e9).astype(np.int32)
        # A stable sort of small integers is a radix sort: linear in the pool's size.
        order = np.argsort(
            late.astype(np.int16 if late.max(initial=0) < 2**15 else np.int64), kind="stable"
        )
        counts = np.bincount(late, minlength=1)
        start = np.concatenate([[0], np.cumsum(counts)])
        return cls(ids[order].astype(np.int32), offset[order], start, per_uc if len(ids) else 0.0)


class _Stream:
    """One detector's events, pulse after pulse, keeping the neutrons still in flight (those
    recorded under pulses after the last one generated) for the next call."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.pool: _Pool | None = None
        self.carry_pulses = np.empty(0, np.int64)  # recording pulse of each carried group
        self.carry_counts = np.empty(0, np.int64)
        self.carry_ids = np.empty(0, np.int32)
        self.carry_offsets = np.empty(0, np.int32)

    def generate(
        self, pulses: np.ndarray, charges: np.ndarray, rng: np.random.Generator
    ) -> PulseEvents:
        pool = self.pool
        assert pool is not None
        sizes = np.diff(pool.segment_start)
        first, count = int(pulses[0]), len(pulses)
        mean = np.clip(np.nan_to_num(charges), 0, None) * pool.events_per_uc
        share = sizes / max(int(sizes.sum()), 1)
        n = rng.poisson(mean[:, None] * share[None, :])  # (emitting pulse, pulses late)
        late = np.arange(len(sizes))
        # Blocks of one emitting pulse and lateness, ordered by the pulse they are recorded
        # under (first + index + lateness); each a contiguous run of its pool segment.
        record = (np.arange(count)[:, None] + late[None, :]).ravel()
        order = np.argsort(record, kind="stable")
        block_n = n.ravel()[order]
        block_late = np.broadcast_to(late, n.shape).ravel()[order]
        size, base = sizes[block_late], pool.segment_start[:-1][block_late]
        start = rng.integers(0, np.maximum(size - block_n, 0) + 1)
        out_start = np.cumsum(block_n) - block_n
        index = np.repeat(base + start - out_start, block_n) + np.arange(block_n.sum())
        if np.any(block_n > size):  # a pulse larger than its pool segment: wrap around it
            segment = np.repeat(base, block_n)
            index = segment + (index - segment) % np.repeat(np.maximum(size, 1), block_n)
        counts = np.bincount(record[order], weights=block_n, minlength=count + len(sizes) - 1)
        counts = counts.astype(np.int64)
        ids, offsets = pool.event_id[index], pool.event_time_offset[index]
        counts, ids, offsets = self._merge_carry(first, counts, ids, offsets)
        emitted = int(counts[:count].sum())
        later = counts[count:]
        self.carry_pulses = first + count + np.flatnonzero(later)
        self.carry_counts = later[later > 0]
        self.carry_ids, self.carry_offsets = ids[emitted:].copy(), offsets[emitted:].copy()
        counts = counts[:count]
        return PulseEvents(
            pulse=pulses,
            event_time_zero=pulse_time_ns(pulses, self.rate),
            event_index=np.cumsum(counts) - counts,
            event_id=ids[:emitted],
            event_time_offset=offsets[:emitted],
        )

    def _merge_carry(
        self, first: int, counts: np.ndarray, ids: np.ndarray, offsets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Put the neutrons still in flight from earlier calls before this call's events of
        the pulse they are recorded under; drop those of pulses this call skipped."""
        if len(self.carry_counts) == 0:
            return counts, ids, offsets
        reach = int(self.carry_pulses[-1]) - first + 1
        if reach > len(counts):  # the pool changed and its neutrons arrive sooner
            counts = np.concatenate([counts, np.zeros(reach - len(counts), np.int64)])
        starts = np.concatenate([[0], np.cumsum(counts)])
        id_parts, offset_parts = [], []
        done = carried = 0
        counts = counts.copy()
        for pulse, n in zip(self.carry_pulses.tolist(), self.carry_counts.tolist(), strict=True):
            rel = pulse - first
            if rel >= 0:
                at = int(starts[rel])
                id_parts += [ids[done:at], self.carry_ids[carried : carried + n]]
                offset_parts += [offsets[done:at], self.carry_offsets[carried : carried + n]]
                counts[rel] += n
                done = at
            carried += n
        id_parts.append(ids[done:])
        offset_parts.append(offsets[done:])
        return counts, np.concatenate(id_parts), np.concatenate(offset_parts)


class NeutronSimulator:
    """Events of an `Instrument`'s detector bank and monitor, pulse by pulse.

    ``detector_events(pulses, charges)`` and ``monitor_events(pulses, charges)`` give the
    events recorded under consecutive ``pulses`` (indices n, T0 = n / rate) whose proton
    charges (µC) are ``charges``: a Poisson number of neutrons per pulse, with mean
    ``charge x events_per_uc``, each filed under the pulse that is the latest when it
    arrives. Neutrons still in flight after the last pulse asked for are kept for the next
    call; pulses skipped between calls lose theirs. `set_choppers` changes the chopper
    settings (pools are rebuilt lazily, at the next call).
    """

    def __init__(
        self,
        instrument: Instrument,
        *,
        pool_size: int = 1 << 20,
        monitor_pool_size: int = 1 << 18,
        seed: int | None = None,
    ) -> None:
        self.instrument = instrument
        self.pool_size = int(pool_size)
        self.monitor_pool_size = int(monitor_pool_size)
        self._rng = np.random.default_rng(seed)
        rate = instrument.source.rate
        self._detector, self._monitor = _Stream(rate), _Stream(rate)
        self._transmission: dict[str, float] = {}

    def set_choppers(self, choppers: Sequence[Chopper]) -> None:
        """New chopper settings (delays, speeds...); the neutrons in flight are kept."""
        self.instrument = self.instrument.with_choppers(choppers)
        self._detector.pool = self._monitor.pool = None
        self._transmission.clear()

    # -- what the instrument delivers ------------------------------------------------------

    def transmission(self, where: str = "sample") -> float:
        """Share of the emitted neutrons (all wavelengths) that pass the choppers upstream
        of the ``"sample"`` or the ``"monitor"``."""
        if where not in self._transmission:
            if where == "sample":
                self._detector_pool()
            else:
                self._monitor_pool()
        return self._transmission[where]

    @property
    def detector_events_per_uc(self) -> float:
        """Mean detector events per µC of proton charge at the present chopper settings."""
        return self._detector_pool().events_per_uc

    @property
    def monitor_events_per_uc(self) -> float:
        """Mean monitor events per µC of proton charge at the present chopper settings."""
        return self._monitor_pool().events_per_uc

    def detector_events(self, pulses: Sequence[int], charges: Sequence[float]) -> PulseEvents:
        """The detector bank's events recorded under ``pulses`` (consecutive indices)."""
        self._detector_pool()
        return self._detector.generate(*_checked(pulses, charges), self._rng)

    def monitor_events(self, pulses: Sequence[int], charges: Sequence[float]) -> PulseEvents:
        """The monitor's events recorded under ``pulses`` (consecutive indices)."""
        self._monitor_pool()
        return self._monitor.generate(*_checked(pulses, charges), self._rng)

    def expected_monitor_histogram(self, edges_ns: np.ndarray, charge: float) -> np.ndarray:
        """Mean monitor counts per time bin (``edges_ns`` after T0) in a pulse, at a steady
        ``charge`` µC per pulse (slow neutrons of earlier pulses included)."""
        pool = self._monitor_pool()
        counts = histogram_events(pool.event_time_offset, edges_ns)
        return counts * (charge * pool.events_per_uc / max(len(pool.event_id), 1))

    # -- the pools ------------------------------------------------------------------------

    def _monitor_pool(self) -> _Pool:
        if self._monitor.pool is None:
            inst = self.instrument
            cascade = _Cascade(inst.choppers, inst.source, inst.monitor.distance)
            lam, t_emit, transmission = _incident(cascade, self.monitor_pool_size, self._rng)
            self._transmission["monitor"] = transmission
            arrival = t_emit + inst.monitor.distance * lam / H_OVER_MN
            ids = np.full(len(lam), inst.monitor.event_id, np.int32)
            per_uc = inst.source.neutrons_per_uc * transmission * inst.monitor.efficiency
            self._monitor.pool = _Pool.from_arrivals(
                ids, arrival, inst.source.rate, per_uc, self._rng
            )
        return self._monitor.pool

    def _detector_pool(self) -> _Pool:
        if self._detector.pool is None:
            inst = self.instrument
            cascade = _Cascade(inst.choppers, inst.source, inst.sample_distance)
            n_background = round(self.pool_size * inst.sample.background_fraction)
            # The background's draw also measures the transmission: at least 2^16 of them.
            lam, t_emit, transmission = _incident(cascade, max(n_background, 1 << 16), self._rng)
            self._transmission["sample"] = transmission
            lam, t_emit = lam[:n_background], t_emit[:n_background]
            bank = inst.bank
            pixel = self._rng.choice(
                bank.size, len(lam), p=bank.solid_angle / bank.solid_angle.sum()
            )
            ids = [bank.detector_number[pixel]]
            arrivals = [t_emit + (inst.sample_distance + bank.l2[pixel]) * lam / H_OVER_MN]
            per_uc = (
                inst.source.neutrons_per_uc
                * transmission
                * inst.sample.scattering_fraction
                * bank.coverage
                * bank.efficiency
            )
            bragg = None
            if self.pool_size > n_background and transmission > 0:
                bragg = _bragg(inst, cascade, self.pool_size - n_background, self._rng)
            if bragg is not None:
                pixel, lam, t_emit = bragg
                ids.append(bank.detector_number[pixel])
                arrivals.append(t_emit + (inst.sample_distance + bank.l2[pixel]) * lam / H_OVER_MN)
            else:  # no reflection reaches the bank at these wavelengths: background only
                per_uc *= inst.sample.background_fraction
            self._detector.pool = _Pool.from_arrivals(
                np.concatenate(ids), np.concatenate(arrivals), inst.source.rate, per_uc, self._rng
            )
        return self._detector.pool


def _checked(pulses: Sequence[int], charges: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    pulses_arr = np.atleast_1d(np.asarray(pulses, dtype=np.int64))
    charges_arr = np.atleast_1d(np.asarray(charges, dtype=np.float64))
    if pulses_arr.shape != charges_arr.shape or pulses_arr.ndim != 1 or not len(pulses_arr):
        raise ValueError("pulses and charges: two 1-D arrays of one length, at least one pulse")
    if np.any(np.diff(pulses_arr) != 1):
        raise ValueError("pulses must be consecutive indices")
    return pulses_arr, charges_arr


def _collect(n: int, draw: Callable[[int], list[np.ndarray]]) -> list[np.ndarray]:
    """Call ``draw(chunk)`` (returning accepted arrays) until ``n`` are accepted."""
    parts: list[list[np.ndarray]] = []
    have, tries = 0, 0
    while have < n:
        got = draw(_CHUNK)
        parts.append(got)
        have += len(got[0])
        tries += 1
        if tries == 16 and have * 4000 < n * tries:  # would take > 1e9 candidates
            raise RuntimeError("the choppers pass (almost) no neutrons: cannot fill the pool")
    return [np.concatenate(column)[:n] for column in zip(*parts, strict=True)]


def _incident(
    cascade: _Cascade, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """``n`` neutrons (λ, emission time) that pass the cascade, and the share of all
    emitted neutrons that do (the mean acceptance x the proposal's normalisation)."""
    cells = np.cumsum(cascade.upper(0)[:-1] * _STEP)  # each grid cell's bound, summed
    total = float(cells[-1])
    if total <= 0:  # a closed chopper, or none passes them all
        return np.empty(0), np.empty(0), 0.0
    accepted: list[float] = []

    def draw(chunk: int) -> list[np.ndarray]:
        lam, t_emit, accept = cascade.incident(chunk, rng, cells, total)
        accepted.append(float(accept.sum()) / chunk)
        keep = rng.random(chunk) < accept
        return [lam[keep], t_emit[keep]]

    lam, t_emit = _collect(n, draw)
    transmission = total * cascade.source.emission_density_max * float(np.mean(accepted))
    return lam, t_emit, transmission


def _bragg(
    inst: Instrument, cascade: _Cascade, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``n`` Bragg-scattered neutrons that passed the cascade: (pixel, λ, emission time);
    None if no reflection reaches the bank at the wavelengths that pass."""
    bank, sample = inst.bank, inst.sample
    width = sample.relative_width
    d, intensity = (np.array(v, dtype=np.float64) for v in zip(*sample.reflections, strict=True))
    sin_theta = np.sin(np.radians(bank.two_theta) / 2)
    lam_nominal = 2 * d[None, :] * sin_theta[:, None]  # (pixel, reflection)
    half = math.ceil(_TRUNCATE * width * lam_nominal.max() / _STEP) + 1
    upper = cascade.upper(half)
    cell = np.floor((lam_nominal - cascade.grid[0]) / _STEP).astype(np.int64)
    inside = (cell >= 0) & (cell < len(upper))
    bound = np.where(inside, upper[np.clip(cell, 0, len(upper) - 1)], 0.0)
    table = (bank.solid_angle * sin_theta**2)[:, None] * (intensity * d**4)[None, :] * bound
    # Only the (pixel, reflection) pairs in the transmitted band: a small table is fast.
    pairs = np.flatnonzero(table.ravel() > 0)
    if not len(pairs):
        return None
    weights = table.ravel()[pairs]
    weights /= weights.sum()
    flat_bound, flat_lam = bound.ravel()[pairs], lam_nominal.ravel()[pairs]
    pair_pixel = pairs // len(d)

    def draw(chunk: int) -> list[np.ndarray]:
        # Counts per pair, not a draw per neutron: the pool is shuffled once it is full.
        pick = np.repeat(np.arange(len(pairs)), rng.multinomial(chunk, weights))
        z = rng.standard_normal(chunk)
        lam = flat_lam[pick] * (1 + width * z)
        t_emit, weight = cascade.emission(lam, rng)
        accept = cascade.source.flux(lam) * weight / flat_bound[pick]
        keep = (np.abs(z) <= _TRUNCATE) & (rng.random(chunk) < accept)
        return [pair_pixel[pick[keep]], lam[keep], t_emit[keep]]

    pixel, lam, t_emit = _collect(n, draw)
    return pixel, lam, t_emit
