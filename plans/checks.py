"""Checks that refuse a plan before anything moves and before its run opens.

Every plan hutch offers is wrapped by `checked`. Its arguments are checked when the plan is
called, before the RunEngine sees it: counts are whole numbers, positions and times finite
numbers, motors and detectors devices. Then, as the plan's first messages and still before
its run opens, each motor's soft limits (and, for relative plans, its position) are read and
every position the plan would move it to is checked against them. A refusal raises
`ScanArgumentError` naming the plan, the parameter or motor, the value and the limit, in one
line. bluesky's ``check_limits`` is not used: it runs the plan without the RunEngine, so it
cannot answer the reads of relative plans, and ophyd-async motors have no ``check_value``.

The argument checks need no device: ``hutch run`` and ``hutch queue`` run them on the
command line's values before connecting anything (`check_arguments`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.utils import MsgGenerator

from hutch.errors import Refusal
from hutch.reduction.roi import STATISTICS

__all__ = [
    "COUNT_STATISTICS",
    "PEAK_STATISTICS",
    "Axis",
    "ScanArgumentError",
    "Target",
    "check_arguments",
    "checked",
    "count",
    "number",
    "read_axis",
]


class ScanArgumentError(Refusal):
    """A plan argument that is not acceptable or that the hardware cannot do; the message
    names the argument and the limit.

    Raised before the run opens and before anything moves.
    """


@dataclass(frozen=True)
class Target:
    """Positions a plan would move a motor to (relative to where it is, if ``relative``)."""

    motor: Any
    positions: Sequence[tuple[str, float]]
    """Each position with how the user named it, e.g. ``("sample_x stop", 5.0)``."""
    relative: bool = False


@dataclass(frozen=True)
class Axis:
    """What a motor allows, read from it before the scan."""

    name: str
    units: str
    low: float
    high: float
    max_velocity: float = math.nan
    acceleration_time: float = math.nan

    def check(self, plan: str, parameter: str, position: float, what: str = "") -> None:
        """Refuse ``position`` (what ``parameter`` asks for) outside the soft limits."""
        if self.low == self.high == 0:  # the motor record's "no soft limits"
            return
        if not self.low <= position <= self.high:
            raise ScanArgumentError(
                f"{plan}: {parameter} {what}{position:g} {self.units} is outside {self.name}'s "
                f"soft limits [{self.low:g}, {self.high:g}] {self.units}"
            )


def has_soft_limits(motor: Any) -> bool:
    """A motor record (ophyd-async or classic ophyd): it has soft limits to read."""
    return all(hasattr(motor, a) for a in ("low_limit_travel", "high_limit_travel", "motor_egu"))


def read_axis(motor: Any, *, motion: bool = False) -> MsgGenerator[Axis]:
    """Read a motor record's soft limits and units (with ``motion``, also its maximum
    velocity and acceleration time, which fly scans need)."""
    low = yield from bps.rd(motor.low_limit_travel)
    high = yield from bps.rd(motor.high_limit_travel)
    units = yield from bps.rd(motor.motor_egu)
    if not motion:
        return Axis(motor.name, units, low, high)
    vmax = yield from bps.rd(motor.max_velocity)
    accl = yield from bps.rd(motor.acceleration_time)
    return Axis(motor.name, units, low, high, vmax, accl)


def count(plan: str, parameter: str, value: Any, least: int = 1) -> int:
    """``value`` as a number of points, at least ``least``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or int(value) != value
        or value < least
    ):
        raise ScanArgumentError(
            f"{plan}: {parameter} must be a whole number of at least {least}, not {value!r}"
        )
    return int(value)


def number(plan: str, parameter: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a finite number (with ``positive``, greater than 0)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ScanArgumentError(f"{plan}: {parameter} must be a finite number, not {value!r}")
    if positive and not value > 0:
        raise ScanArgumentError(f"{plan}: {parameter} must be positive, not {value!r}")
    return float(value)


def _optional(plan: str, parameter: str, value: Any, *, positive: bool = True) -> None:
    if value is not None:
        number(plan, parameter, value, positive=positive)


def _device(plan: str, parameter: str, value: Any) -> str:
    """``value`` must be a device (or, before devices connect, a stand-in with a name)."""
    if isinstance(value, str | bytes | Real | Mapping | list | tuple) or value is None:
        raise ScanArgumentError(f"{plan}: {parameter} must be a device, not {value!r}")
    return getattr(value, "name", str(value))


def _detectors(plan: str, value: Any) -> None:
    if not isinstance(value, list | tuple):
        raise ScanArgumentError(
            f"{plan}: detectors must be a list of devices, e.g. [det], not {value!r}"
        )
    for i, detector in enumerate(value):
        _device(plan, f"detectors[{i}]", detector)


def _groups(plan: str, args: Sequence[Any], size: int, names: str) -> list[Sequence[Any]]:
    """Split ``args`` into groups of ``size`` (``names`` describes one group)."""
    if not args or len(args) % size:
        raise ScanArgumentError(
            f"{plan}: after the detectors give {names} for each motor "
            f"({len(args)} argument{'s' if len(args) != 1 else ''} given)"
        )
    return [args[i : i + size] for i in range(0, len(args), size)]


def _ends(plan: str, motor: str, start: Any, stop: Any, prefix: str | None = None):
    """A line's two ends, named ``<motor> start`` and ``<motor> stop`` (or as ``prefix``)."""
    prefix = f"{motor} " if prefix is None else prefix
    return [
        (f"{prefix}{p}", number(plan, f"{prefix}{p}", v))
        for p, v in (("start", start), ("stop", stop))
    ]


def _listed(plan: str, motor: str, positions: Sequence[Any]) -> list[tuple[str, float]]:
    labels = [f"{motor} position {i}" for i in range(len(positions))]
    return [(label, number(plan, label, p)) for label, p in zip(labels, positions, strict=True)]


# Each plan's argument check: (plan name, bound arguments) -> the positions it moves to.
_Spec = Callable[[str, Mapping[str, Any]], list[Target]]


def _count_plan(plan: str, a: Mapping[str, Any]) -> list[Target]:
    _detectors(plan, a["detectors"])
    if a["num"] is not None:  # None: count until stopped
        count(plan, "num", a["num"])
    delay = a["delay"]
    # A list is checked whole; another iterable (a generator) is the plan's to consume.
    listed = isinstance(delay, list | tuple)
    delays = delay if listed else [] if isinstance(delay, Iterable) else [delay]
    if listed and a["num"] is not None and len(delays) < a["num"] - 1:
        raise ScanArgumentError(
            f"{plan}: delay lists {len(delays)} delays; {a['num']} points need {a['num'] - 1}"
        )
    for d in delays:
        if d is not None:
            number(plan, "delay", d)
            if d < 0:
                raise ScanArgumentError(f"{plan}: delay must not be negative, not {d!r}")
    return []


def _line_scans(relative: bool) -> _Spec:
    def spec(plan: str, a: Mapping[str, Any]) -> list[Target]:
        _detectors(plan, a["detectors"])
        args, num = list(a["args"]), a["num"]
        if num is None and len(args) % 3 == 1:  # bluesky's older form: num last
            num = args.pop()
        if num is None:
            raise ScanArgumentError(f"{plan}: give the number of points, num=N")
        count(plan, "num", num)
        targets = []
        for motor, start, stop in _groups(plan, args, 3, "motor, start, stop"):
            name = _device(plan, "motor", motor)
            targets.append(Target(motor, _ends(plan, name, start, stop), relative))
        return targets

    return spec


def _grid_scans(relative: bool) -> _Spec:
    def spec(plan: str, a: Mapping[str, Any]) -> list[Target]:
        _detectors(plan, a["detectors"])
        targets = []
        for motor, start, stop, num in _groups(plan, a["args"], 4, "motor, start, stop, num"):
            name = _device(plan, "motor", motor)
            count(plan, f"{name} num", num)
            targets.append(Target(motor, _ends(plan, name, start, stop), relative))
        return targets

    return spec


def _list_scans(relative: bool) -> _Spec:
    def spec(plan: str, a: Mapping[str, Any]) -> list[Target]:
        _detectors(plan, a["detectors"])
        targets = []
        for motor, positions in _groups(plan, a["args"], 2, "motor, [positions]"):
            name = _device(plan, "motor", motor)
            if not isinstance(positions, list | tuple) or not positions:
                raise ScanArgumentError(
                    f"{plan}: the positions of {name} must be a non-empty list, not {positions!r}"
                )
            targets.append(Target(motor, _listed(plan, name, positions), relative))
        return targets

    return spec


def _log_scan(plan: str, a: Mapping[str, Any]) -> list[Target]:
    _detectors(plan, a["detectors"])
    name = _device(plan, "motor", a["motor"])
    count(plan, "num", a["num"])
    ends = []
    for parameter in ("start", "stop"):
        exponent = number(plan, parameter, a[parameter])
        try:
            ends.append((f"{name} 10**{parameter}", 10.0**exponent))
        except OverflowError:
            raise ScanArgumentError(
                f"{plan}: {parameter} {exponent:g} is a power of ten too large (10**{exponent:g})"
            ) from None
    return [Target(a["motor"], ends)]


def _scan_nd(plan: str, a: Mapping[str, Any]) -> list[Target]:
    _detectors(plan, a["detectors"])
    by_key = getattr(a["cycler"], "by_key", None)
    if by_key is None:
        raise ScanArgumentError(f"{plan}: cycler must be a cycler of motor positions")
    targets = []
    for motor, positions in by_key().items():
        name = _device(plan, "cycler motor", motor)
        targets.append(Target(motor, _listed(plan, name, positions)))
    return targets


PEAK_STATISTICS = ("sum", "net", "max")
"""The ROI statistics with a peak to find (`align`): a centroid or width has none."""
COUNT_STATISTICS = ("sum", "net")
"""The ROI statistics that are counts, whose Poisson error is their square root."""


def _roi(plan: str, value: Any) -> None:
    """None or an area detector's region of interest: four whole numbers of pixels."""
    if value is None:
        return
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ScanArgumentError(
            f"{plan}: roi must be (min_x, min_y, size_x, size_y) in pixels, not {value!r}"
        )
    labels = ("min_x", "min_y", "size_x", "size_y")
    for label, v, least in zip(labels, value, (0, 0, 1, 1), strict=True):
        count(plan, f"roi {label}", v, least)


def _statistic(plan: str, a: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """``field``: a statistic in ``allowed`` if it names one (always, with an ``roi``)."""
    field, roi = a["field"], a["roi"]
    if field is not None and not isinstance(field, str):
        raise ScanArgumentError(f"{plan}: field must be a field name, not {field!r}")
    statistic = field in STATISTICS or (roi is not None and field is not None)
    if statistic and field not in allowed:
        raise ScanArgumentError(
            f"{plan}: field {field!r}: an area detector's ROI statistic here is one of "
            f"{', '.join(allowed)}"
        )
    _roi(plan, roi)
    _optional(plan, "exposure", a["exposure"])


def _align(plan: str, a: Mapping[str, Any]) -> list[Target]:
    name = _device(plan, "motor", a["motor"])
    _device(plan, "detector", a["detector"])
    count(plan, "num", a["num"], 3)  # fewer points have no peak to find
    _statistic(plan, a, PEAK_STATISTICS)
    return [Target(a["motor"], _ends(plan, name, a["start"], a["stop"], ""))]


def _center_on_centroid(plan: str, a: Mapping[str, Any]) -> list[Target]:
    name = _device(plan, "motor", a["motor"])
    _device(plan, "detector", a["detector"])
    count(plan, "num", a["num"], 2)  # a line needs two points
    if a["axis"] not in ("x", "y"):
        raise ScanArgumentError(f"{plan}: axis must be 'x' or 'y', not {a['axis']!r}")
    if a["target"] is not None:
        number(plan, "target", a["target"])
    _roi(plan, a["roi"])
    _optional(plan, "exposure", a["exposure"])
    return [Target(a["motor"], _ends(plan, name, a["start"], a["stop"], ""))]


def _count_until(plan: str, a: Mapping[str, Any]) -> list[Target]:
    _detectors(plan, a["detectors"])
    if not a["detectors"]:
        raise ScanArgumentError(f"{plan}: detectors must name at least one detector")
    if not isinstance(a["field"], str) or not a["field"]:
        raise ScanArgumentError(f"{plan}: field must be a field name, not {a['field']!r}")
    given = [p for p in ("relative_error", "total") if a[p] is not None]
    if len(given) != 1:
        raise ScanArgumentError(
            f"{plan}: give one of relative_error (e.g. 0.01) or total (counts), "
            f"not {' and '.join(given) or 'neither'}"
        )
    _optional(plan, given[0], a[given[0]])
    count(plan, "max_points", a["max_points"])
    _statistic(plan, a, COUNT_STATISTICS)
    return []


def _choppers(plan: str, a: Mapping[str, Any]) -> None:
    value = a["choppers"]
    if not isinstance(value, list | tuple) or not value:
        raise ScanArgumentError(
            f"{plan}: choppers must be a list of disk choppers, e.g. [psc, bwc], not {value!r}"
        )
    for i, chopper in enumerate(value):
        _device(plan, f"choppers[{i}]", chopper)


def _set_wavelength_band(plan: str, a: Mapping[str, Any]) -> list[Target]:
    _choppers(plan, a)
    low = number(plan, "lambda_min", a["lambda_min"], positive=True)
    high = number(plan, "lambda_max", a["lambda_max"], positive=True)
    if low >= high:
        raise ScanArgumentError(f"{plan}: lambda_min {low:g} Å must be below lambda_max {high:g} Å")
    speeds = a["speed"] if isinstance(a["speed"], list | tuple) else [a["speed"]]
    for speed in speeds:
        if speed is not None:
            number(plan, "speed", speed, positive=True)
    _optional(plan, "detector_distance", a["detector_distance"])
    return []


def _park_choppers(plan: str, a: Mapping[str, Any]) -> list[Target]:
    _choppers(plan, a)
    if a["angle"] is not None:
        number(plan, "angle", a["angle"])
    return []


def _tof_count(plan: str, a: Mapping[str, Any]) -> list[Target]:
    _device(plan, "detector", a["detector"])
    given = [p for p in ("seconds", "pulses", "charge") if a[p] is not None]
    if len(given) != 1:
        raise ScanArgumentError(
            f"{plan}: give one preset, seconds, pulses or charge (µC), "
            f"not {' and '.join(given) or 'none'}"
        )
    if given == ["pulses"]:
        count(plan, "pulses", a["pulses"])
    else:
        number(plan, given[0], a[given[0]], positive=True)
    count(plan, "num", a["num"])
    choppers = a["choppers"]
    if not isinstance(choppers, list | tuple):
        raise ScanArgumentError(
            f"{plan}: choppers must be a list of disk choppers, e.g. [psc, bwc], not {choppers!r}"
        )
    for i, chopper in enumerate(choppers):
        _device(plan, f"choppers[{i}]", chopper)
    if a["source"] is not None:
        _device(plan, "source", a["source"])
    if a["md"] is not None and not isinstance(a["md"], Mapping):
        raise ScanArgumentError(f"{plan}: md must be a dict of metadata, not {a['md']!r}")
    return []


def _step_scan(plan: str, a: Mapping[str, Any]) -> list[Target]:
    _detectors(plan, a["detectors"])
    name = _device(plan, "motor", a["motor"])
    count(plan, "num", a["num"])
    _optional(plan, "exposure", a["exposure"])
    return [Target(a["motor"], _ends(plan, name, a["start"], a["stop"], ""))]


def _fly_scan(plan: str, a: Mapping[str, Any]) -> list[Target]:
    # Soft limits with run-up and run-down, VMAX and trigger rates: the plan checks those
    # itself, once it has read the hardware (hutch.plans.fly).
    _detectors(plan, a["detectors"])
    _device(plan, "motor", a["motor"])
    _device(plan, "panda", a["panda"])
    count(plan, "num", a["num"], 2)
    for parameter in ("start", "stop"):
        number(plan, parameter, a[parameter])
    for parameter in ("velocity", "exposure"):
        _optional(plan, parameter, a[parameter])
    return []


def _snake_fly_scan(plan: str, a: Mapping[str, Any]) -> list[Target]:
    _detectors(plan, a["detectors"])
    for parameter in ("slow", "fast", "panda"):
        _device(plan, parameter, a[parameter])
    count(plan, "slow_num", a["slow_num"])
    count(plan, "fast_num", a["fast_num"], 2)
    for parameter in ("slow_start", "slow_stop", "fast_start", "fast_stop"):
        number(plan, parameter, a[parameter])
    for parameter in ("velocity", "exposure"):
        _optional(plan, parameter, a[parameter])
    return []


_SPECS: dict[str, _Spec] = {
    "count": _count_plan,
    "scan": _line_scans(relative=False),
    "rel_scan": _line_scans(relative=True),
    "grid_scan": _grid_scans(relative=False),
    "rel_grid_scan": _grid_scans(relative=True),
    "list_scan": _list_scans(relative=False),
    "rel_list_scan": _list_scans(relative=True),
    "log_scan": _log_scan,
    "scan_nd": _scan_nd,
    "align": _align,
    "center_on_centroid": _center_on_centroid,
    "count_until": _count_until,
    "set_wavelength_band": _set_wavelength_band,
    "park_choppers": _park_choppers,
    "tof_count": _tof_count,
    "step_scan": _step_scan,
    "fly_scan": _fly_scan,
    "snake_fly_scan": _snake_fly_scan,
}


def check_arguments(
    plan: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> list[Target]:
    """Check ``plan(*args, **kwargs)``'s arguments without touching a device and return the
    positions it would move each motor to; raise `ScanArgumentError` naming what is wrong.

    Arguments that do not fit the signature are left to Python's own error at the call.
    """
    name = plan.__name__
    spec = _SPECS.get(name)
    if spec is None:
        return []
    try:
        bound = inspect.signature(plan).bind(*args, **kwargs)
    except TypeError:
        return []
    bound.apply_defaults()
    return spec(name, bound.arguments)


def _within_soft_limits(
    plan: str, targets: Sequence[Target], make_plan: Callable[[], Any]
) -> MsgGenerator[Any]:
    for target in targets:
        if not has_soft_limits(target.motor):
            continue
        axis = yield from read_axis(target.motor)
        offset = 0.0
        if target.relative:
            offset = yield from bps.rd(target.motor.user_readback)
        for label, position in target.positions:
            what = f"{position:+g} from {offset:g} = " if target.relative else ""
            axis.check(plan, label, offset + position, what)
    # Made only now: a bluesky plan never iterated warns when it is garbage-collected.
    return (yield from make_plan())


def checked(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a plan) refusing bad arguments when called and positions beyond a
    motor's soft limits before its run opens (see the module's docstring)."""
    name = function.__name__

    @functools.wraps(function)
    def plan(*args: Any, **kwargs: Any) -> MsgGenerator[Any]:
        targets = check_arguments(function, args, kwargs)
        return _within_soft_limits(name, targets, lambda: function(*args, **kwargs))

    plan._is_plan_ = True  # bluesky.utils.is_plan: the queue server lists it as a plan
    return plan
