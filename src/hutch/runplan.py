"""Turn a plan name and command-line arguments into a plan, as the queue server would."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from hutch import plans
from hutch.profile import Profile

__all__ = ["PlanArgumentError", "build_plan", "check_call", "parse_params", "resolve_devices"]


class PlanArgumentError(ValueError):
    """A plan or one of its arguments is not acceptable; the message names which."""


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
    """The plan function ``name`` of the profile, once ``args`` and ``kwargs`` are known to fit
    its signature; raises `PlanArgumentError` saying what does not."""
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
    return plan


def build_plan(profile: Profile, devices: Mapping[str, Any], name: str, tokens: Sequence[str]):
    """The plan ``name`` of the profile called with ``tokens``, arguments checked before
    anything runs."""
    if name not in profile.plans:  # before the arguments: the plan is the first thing wrong
        check_call(profile, name, (), {})
    args, kwargs = parse_params(tokens, devices)
    args = resolve_devices(args, devices)
    kwargs = resolve_devices(kwargs, devices)
    plan = check_call(profile, name, args, kwargs)
    return plan(*args, **kwargs)
