"""Turn a plan name and command-line arguments into a plan, as the queue server would."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hutch import plans
from hutch.errors import PlanArgumentError
from hutch.plans.checks import check_arguments
from hutch.profile import Profile

__all__ = [
    "PlanArgumentError",
    "PlanCall",
    "check_call",
    "parse_params",
    "prepare_call",
    "resolve_devices",
]


class _DeviceName:
    """Stands for a profile's device (or a child, ``det.preset_time``) while arguments are
    checked before any device exists: it is a device to the checks, not a number or text."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> _DeviceName:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _DeviceName(f"{self.name}.{attr}")

    def __repr__(self) -> str:
        return self.name


def resolve_devices(value: Any, devices: Mapping[str, Any]) -> Any:
    """Replace every string naming a device (or ``device.child``) by that device, recursively,
    the way bluesky-queueserver resolves plan parameters."""
    if isinstance(value, str):
        head, _, rest = value.partition(".")
        if head not in devices:
            return value
        obj = devices[head]
        for attr in filter(None, rest.split(".")):
            obj = getattr(obj, attr, None)
            if obj is None:
                return value
        return obj
    if isinstance(value, list | tuple):
        return type(value)(resolve_devices(v, devices) for v in value)
    if isinstance(value, dict):
        return {k: resolve_devices(v, devices) for k, v in value.items()}
    return value


class _DeviceNames(ast.NodeTransformer):
    """Turn bare device names (``det``, ``det.preset_time``) into strings for literal_eval."""

    def __init__(self, devices: Mapping[str, Any]) -> None:
        self.devices = devices

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.Constant(node.id) if node.id in self.devices else node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        dotted = ast.unparse(node)
        if dotted.partition(".")[0] in self.devices and dotted.replace(".", "").isidentifier():
            return ast.Constant(dotted)
        return node


def _literal(token: str, devices: Mapping[str, Any], where: str) -> Any:
    try:
        tree = _DeviceNames(devices).visit(ast.parse(token.strip(), mode="eval"))
        return ast.literal_eval(tree)
    except (ValueError, SyntaxError, TypeError):
        raise PlanArgumentError(
            f"{where}: {token!r} is neither a Python literal nor a device of this profile "
            f"({', '.join(devices)})"
        ) from None


def parse_params(
    tokens: Sequence[str], devices: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Split ``ARG`` and ``key=value`` tokens into positional and keyword arguments."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for i, token in enumerate(tokens, start=1):
        key, sep, text = token.partition("=")
        if sep and key.isidentifier():
            kwargs[key] = _literal(text, devices, f"parameter {key!r}")
        elif kwargs:
            raise PlanArgumentError(
                f"argument {i} ({token!r}): positional arguments must come before key=value ones"
            )
        else:
            args.append(_literal(token, devices, f"argument {i}"))
    return args, kwargs


def check_call(profile: Profile, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]):
    """The plan function ``name`` of the profile, once ``args`` and ``kwargs`` (device names
    as strings, as the queue server takes them) are known to fit its signature and pass its
    argument checks (`hutch.plans.checks`); raises a `Refusal` saying what does not."""
    if name not in profile.plans:
        raise PlanArgumentError(
            f"plan {name!r} is not offered by profile {profile.name!r} "
            f"(offered: {', '.join(profile.plans)})"
        )
    plan = getattr(plans, name)
    try:
        inspect.signature(plan).bind(*args, **kwargs)
    except TypeError as exc:
        # Parameter names only: the full annotations of bluesky's plans run to a screenful.
        params = inspect.signature(plan).parameters.values()
        names = ", ".join(str(p.replace(annotation=p.empty, default=p.empty)) for p in params)
        raise PlanArgumentError(f"plan {name}({names}): {exc}") from None
    stand_ins = {spec.name: _DeviceName(spec.name) for spec in profile.devices}
    check_arguments(plan, resolve_devices(args, stand_ins), resolve_devices(kwargs, stand_ins))
    return plan


@dataclass(frozen=True)
class PlanCall:
    """A plan of the profile and its arguments, checked; devices still named, not connected."""

    plan: Callable[..., Any]
    args: list[Any]
    kwargs: dict[str, Any]

    def build(self, devices: Mapping[str, Any]):
        """The plan called with the named devices replaced by ``devices``."""
        return self.plan(
            *resolve_devices(self.args, devices), **resolve_devices(self.kwargs, devices)
        )


def prepare_call(profile: Profile, name: str, tokens: Sequence[str]) -> PlanCall:
    """The plan ``name`` of the profile with command-line ``tokens`` parsed and checked,
    before any device connects: a refusal needs no hardware and is immediate."""
    if name not in profile.plans:  # before the arguments: the plan is the first thing wrong
        check_call(profile, name, (), {})
    names = {spec.name: spec.name for spec in profile.devices}
    args, kwargs = parse_params(tokens, names)
    return PlanCall(check_call(profile, name, args, kwargs), args, kwargs)
