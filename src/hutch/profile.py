"""Beamline profiles: one declarative TOML file per beamline.

A profile is the single source of truth for a beamline: the simulator serves exactly the PVs
of its devices, and the IPython session, the CLI and the queue server load exactly its devices,
metadata defaults and plans.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "MAIN_IOC",
    "STANDARD_METADATA",
    "DeviceSpec",
    "MetadataDefaults",
    "NexusSpec",
    "PeakModel",
    "Profile",
    "ProfileError",
    "QueueGroup",
    "QueueSpec",
    "ReductionSpec",
    "SimulationSpec",
    "SuspenderSpec",
    "find_profile",
    "load_profile",
    "resolve_class",
]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The IOC of devices whose profile entry names none.
MAIN_IOC = "main"


class ProfileError(ValueError):
    """A profile could not be found, parsed or validated; the message names file, key and reason."""


def resolve_class(path: str) -> type:
    """Import ``package.module.Class`` (or ``package.module:Class``) and return the class."""
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    if not sep:
        raise ValueError(f"{path!r} is not a dotted import path like 'package.module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(cls, type):
        raise ValueError(f"{path!r} is not a class")
    return cls


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NexusSpec(_Strict):
    """How a device is written to NeXus files, where its class's default does not fit."""

    nx_class: str | None = Field(default=None, alias="class", pattern=r"^NX[a-z_]+$")
    """NeXus base class of the device's group, e.g. ``NXdisk_chopper``."""
    fields: dict[str, str] = {}
    """Data key suffix (without the device name; ``value`` for the device's own reading) ->
    NeXus field name, e.g. ``{ value = "x_gap" }``."""
    monitors: list[str] = []
    """Data key suffixes that are beam monitors (written as NXmonitor), e.g. ``["I0"]``."""


class DeviceSpec(_Strict):
    """One device of the beamline: what it is, where its PVs live, how to simulate it."""

    name: str
    """Name in the session namespace and prefix of its data keys; a Python identifier."""
    cls: str = Field(alias="class")
    """Import path of the device class, e.g. ``ophyd_async.epics.motor.Motor``."""
    prefix: str
    """PV prefix passed to the device class."""
    options: dict[str, Any] = {}
    """Extra keyword arguments for the device class."""
    sim: dict[str, Any] = {}
    """Settings of the simulated hardware (limits, velocity, initial value, ...)."""
    description: str = ""
    nexus: NexusSpec = NexusSpec()
    """NeXus class and field names; the class defaults to the device class's (``nexus_class``)."""
    ioc: str = MAIN_IOC
    """The simulated IOC (one server process, one port) serving the device, as at a beamline
    where e.g. each area detector runs its own IOC: it can fail or restart on its own."""

    @field_validator("name", "ioc")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"{value!r} is not a Python identifier")
        return value

    @field_validator("cls")
    @classmethod
    def _importable(cls, value: str) -> str:
        resolve_class(value)
        return value

    @property
    def device_class(self) -> type:
        return resolve_class(self.cls)


class PeakModel(_Strict):
    """The simulated sample: a Gaussian peak along one motor, scaled by slit gap and current."""

    axis: str
    """Device name of the motor the peak lies along."""
    center: float
    sigma: float = Field(gt=0)
    rate: float = Field(gt=0)
    """Detector counts per second at the peak centre, at the reference gap and current."""
    background: float = Field(default=0.0, ge=0)
    """Detector counts per second far from the peak."""
    monitor_rate: float = Field(default=1.0e6, gt=0)
    """I0 monitor counts per second at the reference gap and current."""
    gap: str | None = None
    """Device name of the slit-gap motor; the flux is proportional to the gap."""
    reference_gap: float = Field(default=1.0, gt=0)
    current: str | None = None
    """Device name of the beam-current monitor; the flux is proportional to the current."""
    reference_current: float = Field(default=300.0, gt=0)


class SuspenderSpec(_Strict):
    """Suspend any run while a signal is below a floor (e.g. the beam current), and resume
    it ``sleep`` seconds after the signal is back above ``resume_above``."""

    device: str
    signal: str
    """Attribute path of the watched signal on the device, e.g. ``current``."""
    below: float
    resume_above: float
    sleep: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _hysteresis(self) -> SuspenderSpec:
        if self.resume_above < self.below:
            raise ValueError(
                f"resume_above ({self.resume_above:g}) is below below ({self.below:g})"
            )
        return self


class ReductionSpec(BaseModel):
    """A reduction the beamline runs live on its runs and on replay (`hutch reduce`): its
    ``name``, its ``kind`` (``roi_stats``, ``peak_stats``, ``normalise``, ``azimuthal`` or
    ``module:Class``), the ``plans`` whose runs it reduces (default: every run holding its
    detector), and its parameters, every other key (``detector`` and the kind's own)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    kind: str
    plans: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"reduction name {value!r} is not an identifier")
        return value

    @model_validator(mode="after")
    def _parameters(self) -> ReductionSpec:
        self.reduction_class().Parameters.model_validate(self.model_extra or {})
        return self

    def reduction_class(self) -> type:
        from hutch.reduction.base import reduction_class

        return reduction_class(self.kind)

    def make(self, base: Path | None = None) -> Any:
        """A fresh `hutch.reduction.Reduction` of this spec (file parameters relative to
        ``base``, the profile's folder)."""
        cls = self.reduction_class()
        parameters = cls.Parameters.model_validate(self.model_extra or {})
        return cls(self.name, parameters.resolved(base or Path.cwd()))

    def applies_to(self, start: Mapping[str, Any]) -> bool:
        """Whether it reduces the run that ``start`` opens (by plan name)."""
        return self.plans is None or start.get("plan_name") in self.plans


class SimulationSpec(_Strict):
    """How ``hutch sim`` simulates this beamline."""

    port: int = Field(default=5064, ge=1, le=65535)
    """Channel Access server port of the simulator (one port per simulator process)."""
    peak: PeakModel | None = None


class QueueGroup(_Strict):
    """One user group of the queue server: what its API key may do, and which plans it may
    queue (``None``: all the profile's plans)."""

    role: Literal["admin", "scientist", "observer"]
    """admin: everything, scientist: edit and run the queue, observer: read only."""
    plans: list[str] | None = None


def _default_groups() -> dict[str, QueueGroup]:
    return {
        "admin": QueueGroup(role="admin"),
        "scientist": QueueGroup(role="scientist"),
        "observer": QueueGroup(role="observer", plans=[]),
    }


class QueueSpec(_Strict):
    """How ``hutch queue up`` serves this beamline: its user groups (each gets an API key)."""

    groups: dict[str, QueueGroup] = Field(default_factory=_default_groups)
    default_group: str = "admin"
    """The group of hutch's own commands (``hutch queue add``, ``load``, ...)."""

    @model_validator(mode="after")
    def _groups(self) -> QueueSpec:
        for name in self.groups:
            if not name.isalnum() or name == "root":
                raise ValueError(f"group name {name!r} must be alphanumeric and not 'root'")
        if self.default_group not in self.groups:
            raise ValueError(f"default_group {self.default_group!r} is not in queue.groups")
        return self


#: Metadata that identifies a run: what a run's start document carries when the session has it.
STANDARD_METADATA = ("facility", "beamline", "proposal", "sample", "operator")
#: Start-document keys the RunEngine fills for every run: requiring them means nothing.
_RUN_ENGINE_KEYS = frozenset({"uid", "time", "scan_id", "plan_name", "plan_type"})


class MetadataDefaults(BaseModel):
    """Metadata every run of the beamline starts with; extra keys are kept as they are.

    ``required`` lists the keys every run's start document must carry, beside facility and
    beamline, which are always required: the session refuses a run missing any of them
    (absent, None or blank) before it starts. A name is a metadata key (letters, digits,
    underscores); one that is not a standard key (`STANDARD_METADATA`) is accepted as the
    beamline's own (e.g. ``temperature``) unless it looks like a misspelt standard one.
    """

    model_config = ConfigDict(extra="allow")

    facility: str
    beamline: str
    proposal: str | None = None
    sample: str | dict[str, Any] | None = None
    operator: str | None = None
    # Not metadata itself: excluded from model_dump(), so it never goes into RE.md.
    required: list[str] = Field(default=[], exclude=True)

    @field_validator("required")
    @classmethod
    def _required_names(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if not _IDENTIFIER.match(name):
                raise ValueError(f"{name!r} is not a metadata key (letters, digits and _)")
            if name in _RUN_ENGINE_KEYS:
                raise ValueError(f"{name!r} is set by the RunEngine for every run")
            if name in seen:
                raise ValueError(f"{name!r} is listed twice")
            seen.add(name)
            close = difflib.get_close_matches(name, STANDARD_METADATA, n=1, cutoff=0.8)
            if close and name not in STANDARD_METADATA:
                raise ValueError(f"unknown metadata key {name!r}: did you mean {close[0]!r}?")
        return value

    @property
    def required_keys(self) -> tuple[str, ...]:
        """Every key a run must carry: facility, beamline, then ``required``'s."""
        return tuple(dict.fromkeys(("facility", "beamline", *self.required)))

    def missing(self, md: Mapping[str, Any]) -> list[str]:
        """The required keys that ``md`` (a run's merged metadata) lacks or leaves blank."""

        def blank(value: Any) -> bool:
            if isinstance(value, str):
                return not value.strip()
            return value is None or (isinstance(value, Mapping | list | tuple) and not value)

        return [key for key in self.required_keys if blank(md.get(key))]


class Profile(_Strict):
    """A validated beamline profile."""

    name: str
    title: str = ""
    kind: Literal["photon", "neutron"] = "photon"
    metadata: MetadataDefaults
    plans: list[str]
    """Names of the plans offered at this beamline (from ``hutch.plans``)."""
    devices: list[DeviceSpec]
    baseline: list[str] = []
    """Devices read at the start and end of every run (bluesky's baseline stream)."""
    suspenders: list[SuspenderSpec] = []
    simulation: SimulationSpec = SimulationSpec()
    queue: QueueSpec = QueueSpec()
    reductions: list[ReductionSpec] = []
    """Reductions run live on the beamline's runs (`hutch.reduction`)."""
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("plans")
    @classmethod
    def _known_plans(cls, value: list[str]) -> list[str]:
        from hutch import plans

        unknown = [p for p in value if p not in plans.__all__]
        if unknown:
            raise ValueError(
                f"unknown plan(s) {', '.join(map(repr, unknown))}; "
                f"hutch.plans offers {', '.join(plans.__all__)}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        names = [d.name for d in self.devices]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate device name(s): {', '.join(duplicates)}")
        unknown = [b for b in self.baseline if b not in names]
        if unknown:
            raise ValueError(f"baseline names unknown device(s): {', '.join(unknown)}")
        for i, suspender in enumerate(self.suspenders):
            if suspender.device not in names:
                raise ValueError(
                    f"suspenders.{i}.device names device {suspender.device!r}, "
                    "which is not in [[devices]]"
                )
        for group_name, group in self.queue.groups.items():
            unoffered = [p for p in group.plans or () if p not in self.plans]
            if unoffered:
                raise ValueError(
                    f"queue.groups.{group_name}.plans names plan(s) the profile does not offer: "
                    f"{', '.join(unoffered)}"
                )
        reductions = [r.name for r in self.reductions]
        duplicates = sorted({n for n in reductions if reductions.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate reduction name(s): {', '.join(duplicates)}")
        for i, reduction in enumerate(self.reductions):
            detector = (reduction.model_extra or {}).get("detector")
            if detector not in names:
                raise ValueError(
                    f"reductions.{i}.detector names device {detector!r}, which is not in "
                    "[[devices]]"
                )
        peak = self.simulation.peak
        if peak is not None:
            for key in ("axis", "gap", "current"):
                ref = getattr(peak, key)
                if ref is not None and ref not in names:
                    raise ValueError(
                        f"simulation.peak.{key} names device {ref!r}, which is not in [[devices]]"
                    )
        return self

    @property
    def iocs(self) -> list[str]:
        """The simulated IOCs serving the beamline's devices: the main one (if it serves any)
        first, the others in profile order. The first is served on the simulation port."""
        names = list(dict.fromkeys(spec.ioc for spec in self.devices))
        return sorted(names, key=lambda name: name != MAIN_IOC)

    def reductions_for(self, start: Mapping[str, Any]) -> list[Any]:
        """Fresh reductions for the run that ``start`` opens (`ReductionSpec.applies_to`)."""
        base = self.path.parent if self.path else None
        return [spec.make(base) for spec in self.reductions if spec.applies_to(start)]

    def reduction(self, name: str) -> ReductionSpec:
        """The reduction called ``name``."""
        for spec in self.reductions:
            if spec.name == name:
                return spec
        known = ", ".join(r.name for r in self.reductions) or "none"
        raise KeyError(f"profile {self.name!r} has no reduction {name!r} (it has: {known})")

    def device(self, name: str) -> DeviceSpec:
        """The spec of the device called ``name``."""
        for spec in self.devices:
            if spec.name == name:
                return spec
        raise KeyError(f"profile {self.name!r} has no device {name!r}")


def _profile_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("HUTCH_PROFILE_PATH", "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "profiles")
    # The source checkout's profiles/ (hutch is installed editable from it).
    dirs.append(Path(__file__).resolve().parents[2] / "profiles")
    return dirs


def find_profile(name_or_path: str | os.PathLike) -> Path:
    """Find a profile by file path or by name in ``$HUTCH_PROFILE_PATH``, ./profiles, hutch's."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.exists():
            raise ProfileError(f"{candidate}: no such profile file")
        return candidate
    searched = _profile_dirs()
    for directory in searched:
        path = directory / f"{name_or_path}.toml"
        if path.exists():
            return path
    raise ProfileError(
        f"no profile named {str(name_or_path)!r} in {', '.join(str(d) for d in searched)}"
    )


def _line_of(text: str, loc: tuple[str | int, ...]) -> int | None:
    """Best-effort line number of the key at ``loc`` in a TOML profile, for error messages."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    if len(loc) >= 2 and isinstance(loc[1], int):
        # [[table]] arrays: find the n-th header of that array.
        headers = [i for i, line in enumerate(lines) if line.strip() == f"[[{loc[0]}]]"]
        if loc[1] < len(headers):
            start = headers[loc[1]]
            later = [i for i, line in enumerate(lines) if i > start and line.startswith("[[")]
            end = later[0] if later else len(lines)
            loc = loc[2:]
    for key in reversed([k for k in loc if isinstance(k, str)]):
        pattern = re.compile(rf"^\s*(\[+[\w.]*\b{re.escape(key)}\]+|{re.escape(key)}\s*=)")
        for i in range(start, end):
            if pattern.match(lines[i]):
                return i + 1
    return start + 1 if start else None


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load and validate a profile; errors name the file, line, key and reason."""
    path = find_profile(name_or_path)
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            key = ".".join(str(k) for k in loc) or "(top level)"
            line = _line_of(text, loc)
            where = f"{path}:{line}" if line else str(path)
            reason = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {key}: {reason}")
        raise ProfileError("invalid profile\n  " + "\n  ".join(problems)) from None
    profile.path = path
    return profile
