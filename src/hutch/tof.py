"""Time-of-flight arithmetic and a pulsed source's timing: when pulses leave the target,
when a disk chopper's slits are at the beam, which delays pass a wavelength band, and an
event's wavelength. The simulated IOCs (source, choppers, detectors), the devices, the
plans and the reduction all compute them here, so they agree without talking, as a
facility's timing system makes real ones agree.

Conventions (hutch's, kept to the physics ESS instruments use):

- Pulse ``n`` of a source at ``rate`` Hz leaves the target at ``T0(n) = n / rate``, POSIX
  seconds: the pulses are aligned to the wall clock, so any process knows them.
- A disk chopper spinning at ``f`` Hz with a total delay ``delay`` (ns, ``TotDly``) has its
  top-dead-centre mark (TDC) at the beam at ``T0(n) + delay + k / f`` for integer ``k``.
  A point of the disk at angle ``θ`` degrees from the TDC mark (measured against the
  rotation, as NXdisk_chopper's ``slit_edges``) reaches the beam ``θ / (360 f)`` later, so a
  slit ``[begin, end]`` is open from ``delay + begin / (360 f)`` to ``delay + end / (360 f)``
  after each TDC passage, every ``1 / f``.
- The phase in degrees is the delay as an angle of the disk: ``360 f delay`` (mod 360).
- A neutron of wavelength ``λ`` (Å) flies ``L`` metres in ``L λ / 3956.034`` seconds
  (``h / m_n`` = 3956.034 m Å / s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = [
    "ESS_PULSE_LENGTH",
    "ESS_PULSE_RATE",
    "H_OVER_MN",
    "arrival_window",
    "band_delay",
    "band_window",
    "d_spacing",
    "delay_from_phase",
    "phase_from_delay",
    "pulse_index",
    "pulse_time",
    "pulse_time_ns",
    "pulse_times_between",
    "speed_is_commensurate",
    "time_of_flight",
    "unwrap_time_of_flight",
    "wavelength",
    "wavelength_from_tof",
]

#: ESS's source: 14 pulses a second, each 2.857 ms long.
ESS_PULSE_RATE = 14.0
ESS_PULSE_LENGTH = 2.857e-3
#: Planck's constant over the neutron's mass, in m Å / s: v = H_OVER_MN / λ.
H_OVER_MN = 3956.034


def pulse_index(t: float, rate: float = ESS_PULSE_RATE) -> int:
    """The index of the last pulse at or before POSIX time ``t``."""
    return math.floor(t * rate)


def pulse_time(n: int | np.ndarray, rate: float = ESS_PULSE_RATE) -> float | np.ndarray:
    """POSIX time (s) at which pulse ``n`` leaves the target."""
    return n / rate


def pulse_times_between(t0: float, t1: float, rate: float = ESS_PULSE_RATE) -> np.ndarray:
    """Indices of the pulses leaving in ``(t0, t1]``."""
    return np.arange(pulse_index(t0, rate) + 1, pulse_index(t1, rate) + 1, dtype=np.int64)


def phase_from_delay(delay_ns: float, speed_hz: float) -> float:
    """The chopper's phase (degrees, 0-360) for a TDC delay ``delay_ns`` at ``speed_hz``."""
    return (360.0 * abs(speed_hz) * delay_ns * 1e-9) % 360.0


def delay_from_phase(phase_deg: float, speed_hz: float) -> float:
    """The TDC delay (ns, within one turn) giving ``phase_deg`` at ``speed_hz``."""
    if speed_hz == 0:
        raise ValueError("a stopped chopper has no phase")
    return (phase_deg % 360.0) / (360.0 * abs(speed_hz)) * 1e9


def speed_is_commensurate(speed_hz: float, rate: float = ESS_PULSE_RATE) -> bool:
    """Whether a chopper at ``speed_hz`` sees the same disk angle at every pulse (or every
    m-th): its speed an integer multiple or an integer fraction of the pulse rate. Only then
    can it lock its phase to the source."""
    speed = abs(speed_hz)
    if speed == 0:
        return False
    ratio = speed / rate if speed >= rate else rate / speed
    return abs(ratio - round(ratio)) < 1e-9 * ratio


def time_of_flight(
    distance_m: float | np.ndarray, wavelength_aa: float | np.ndarray
) -> float | np.ndarray:
    """Seconds a neutron of ``wavelength_aa`` Å takes to fly ``distance_m`` metres."""
    return distance_m * wavelength_aa / H_OVER_MN


def wavelength(distance_m: float | np.ndarray, tof_s: float | np.ndarray) -> float | np.ndarray:
    """The wavelength (Å) of a neutron that flew ``distance_m`` metres in ``tof_s`` seconds:
    λ = h t / (m_n L)."""
    return H_OVER_MN * tof_s / distance_m


def pulse_time_ns(n: int | np.ndarray, rate: float = ESS_PULSE_RATE) -> np.ndarray:
    """T0(n) = n / rate in whole ns since the epoch (int64), computed exactly: n / rate in
    float64 would be off by hundreds of ns at today's pulse numbers."""
    ratio = Fraction(rate).limit_denominator(1_000_000)
    num, den = ratio.numerator, ratio.denominator
    n = np.asarray(n, dtype=np.int64)
    q, r = np.divmod(n * den, num)  # int64 ns reach 2262 anyway: n * den cannot overflow
    return q * 1_000_000_000 + (r * 1_000_000_000 + num // 2) // num


def band_window(
    distance: float, wavelength_min: float, wavelength_max: float, pulse_length: float
) -> tuple[float, float]:
    """Seconds after T0 between which the band's neutrons of a whole pulse pass
    ``distance`` m: from ``L λmin / 3956`` (the fastest, left at T0) to
    ``τ + L λmax / 3956`` (the slowest, left at the pulse's end)."""
    if not 0 < wavelength_min < wavelength_max:
        raise ValueError(
            f"wavelength band [{wavelength_min:g}, {wavelength_max:g}] Å: it must be "
            "0 < lambda_min < lambda_max"
        )
    return (
        distance * wavelength_min / H_OVER_MN,
        pulse_length + distance * wavelength_max / H_OVER_MN,
    )


def band_delay(
    distance: float,
    speed: float,
    slit: Sequence[float],
    wavelength_min: float,
    wavelength_max: float,
    pulse_length: float = ESS_PULSE_LENGTH,
) -> float:
    """The TDC delay (ns, within one turn) that centres ``slit`` ([begin, end] degrees from
    the TDC mark) of a chopper at ``distance`` m spinning at ``speed`` Hz on the band's
    window there (`band_window`). A slit shorter than the window cuts the band (a
    pulse-shaping chopper does, on purpose); a longer one lets the band's edges blur by up to
    its excess."""
    if speed == 0:
        raise ValueError("a chopper standing still has no delay")
    opens, closes = band_window(distance, wavelength_min, wavelength_max, pulse_length)
    turn = 1.0 / abs(speed)
    begin, end = slit
    # The TDC mark leads the slit's centre by the centre's angle from the mark.
    return (((opens + closes) / 2 - (begin + end) / 720.0 * turn) % turn) * 1e9


def arrival_window(
    distance: float | np.ndarray,
    wavelength_min: float,
    wavelength_max: float,
    pulse_length: float = ESS_PULSE_LENGTH,
    rate: float = ESS_PULSE_RATE,
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds after T0 between which the band's neutrons arrive at ``distance`` m, the spare
    time of the pulse period split before and after; a `ValueError` if the band takes longer
    than a pulse period to arrive (frames overlap)."""
    distance = np.asarray(distance, dtype=np.float64)
    first, last = band_window(distance, wavelength_min, wavelength_max, pulse_length)
    period = 1.0 / rate
    spare = period - (last - first)
    if np.any(spare <= 0):
        raise ValueError(
            f"the band {wavelength_min:g}-{wavelength_max:g} Å takes "
            f"{np.max(last - first) * 1e3:.1f} ms to arrive over {np.max(distance):g} m, more "
            f"than the {period * 1e3:.1f} ms between pulses: frames would overlap"
        )
    return first - spare / 2, last + spare / 2


def unwrap_time_of_flight(
    event_time_offset: np.ndarray,
    distance: float | np.ndarray,
    wavelength_min: float,
    wavelength_max: float,
    pulse_length: float = ESS_PULSE_LENGTH,
    rate: float = ESS_PULSE_RATE,
) -> np.ndarray:
    """Frame unwrapping: the time of flight (ns, from the T0 of the pulse that emitted the
    neutron) of events recorded ``event_time_offset`` ns after the T0 they are filed under
    (the latest pulse's when they arrived, as ESS records them), for neutrons of the band
    [``wavelength_min``, ``wavelength_max``] Å flying ``distance`` m (per event or one):
    each lands at the one time of the band's `arrival_window` that agrees with its offset
    modulo the pulse period."""
    start, _ = arrival_window(distance, wavelength_min, wavelength_max, pulse_length, rate)
    t = np.asarray(event_time_offset, dtype=np.float64) * 1e-9
    return (start + np.mod(t - start, 1.0 / rate)) * 1e9


def wavelength_from_tof(
    tof: np.ndarray,
    distance: float | np.ndarray,
    *,
    time_zero: float = 0.0,
    distance_zero: float = 0.0,
) -> np.ndarray:
    """Wavelength (Å) of neutrons that flew ``distance`` m in ``tof`` ns since their pulse's
    T0: λ = h (t - t₀) / (m_n (L - L₀)), with an effective start (``time_zero`` ns,
    ``distance_zero`` m) where a pulse-shaping chopper defines it (0, 0: the plain
    λ = h t / (m_n L))."""
    seconds = (np.asarray(tof, dtype=np.float64) - time_zero) * 1e-9
    return H_OVER_MN * seconds / (np.asarray(distance, dtype=np.float64) - distance_zero)


def d_spacing(wavelength: np.ndarray, two_theta: np.ndarray) -> np.ndarray:
    """Bragg's law: d = λ / (2 sin θ) (Å, for λ in Å and 2θ in degrees)."""
    return np.asarray(wavelength) / (2 * np.sin(np.radians(np.asarray(two_theta)) / 2))
