"""Sample lists (CSV or YAML): one queue item per row, checked whole before any is queued.

A CSV file has a header row. Its columns: ``plan`` (required), ``params`` (arguments as on the
command line of ``hutch run``: ``[det] sample_x 0 5 num=11``), ``sample`` and ``md.KEY``
(run metadata, kept as strings), and any other column is a keyword argument of the plan
(a Python literal or a device name; an empty cell leaves it out).

A YAML file is a list of mappings with ``plan``, and optionally ``args`` (a list), ``kwargs``
(a mapping), ``params`` (a string as above), ``sample``, ``md`` (a mapping); any other key is
a keyword argument. Device names are plain strings there.

Rows are numbered from 1, the first sample (for CSV, the row after the header). A list with
any bad row is refused whole, naming every bad row and why.
"""

from __future__ import annotations

import csv
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hutch.errors import Refusal
from hutch.profile import Profile
from hutch.runplan import PlanArgumentError, check_call, parse_params

__all__ = ["QueueItem", "SampleListError", "item_from_tokens", "load_sample_list", "make_item"]


class SampleListError(PlanArgumentError):
    """A sample list was refused; ``problems`` lists ``(row, reason)`` for every bad row."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]) -> None:
        lines = "\n  ".join(f"row {row}: {reason}" for row, reason in problems)
        super().__init__(f"{path}: sample list refused, nothing queued\n  {lines}")
        self.problems = problems


@dataclass
class QueueItem:
    """One plan for the queue: name, JSON arguments (device names as strings), run metadata."""

    plan: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_item(self) -> dict[str, Any]:
        """The item as bluesky-queueserver takes it."""
        item: dict[str, Any] = {"item_type": "plan", "name": self.plan}
        if self.args:
            item["args"] = self.args
        if self.kwargs:
            item["kwargs"] = self.kwargs
        if self.meta:
            item["meta"] = self.meta
        return item


def _device_names(profile: Profile) -> dict[str, str]:
    # parse_params turns bare device names into strings: the RE Manager resolves them.
    return {spec.name: spec.name for spec in profile.devices}


def make_item(
    profile: Profile,
    plan: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> QueueItem:
    """A queue item, once the plan is offered, its arguments fit its signature, the item is
    JSON and its metadata has what the profile requires; else `PlanArgumentError`."""
    item = QueueItem(plan, list(args or []), dict(kwargs or {}), dict(meta or {}))
    check_call(profile, plan, item.args, item.kwargs)
    try:
        json.dumps(item.to_item())
    except (TypeError, ValueError) as exc:
        raise PlanArgumentError(f"arguments are not plain data: {exc}") from None
    merged = {**profile.metadata.model_dump(exclude_none=True), **item.meta}
    missing = profile.metadata.missing(merged)
    if missing:
        raise PlanArgumentError(f"run metadata lacks {', '.join(missing)} (required)")
    return item


def item_from_tokens(
    profile: Profile, plan: str, tokens: list[str], meta: dict[str, Any] | None = None
) -> QueueItem:
    """A queue item from command-line arguments (``hutch queue add``), checked as `make_item`."""
    args, kwargs = parse_params(tokens, _device_names(profile))
    return make_item(profile, plan, args, kwargs, meta)


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "plan" not in reader.fieldnames:
            raise SampleListError(path, [(0, "the header row has no 'plan' column")])
        return list(reader)


def _from_csv_row(profile: Profile, row: dict[str | None, Any]) -> QueueItem:
    if None in row:  # csv puts cells beyond the header under None
        raise PlanArgumentError(f"{len(row[None])} more cell(s) than the header has columns")
    cells = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
    plan = cells.pop("plan", "")
    if not plan:
        raise PlanArgumentError("no plan")
    tokens = shlex.split(cells.pop("params", ""))
    meta: dict[str, Any] = {}
    for key in list(cells):
        if key == "sample" or key.startswith("md."):
            value = cells.pop(key)
            if value:
                meta[key.removeprefix("md.")] = value
    tokens += [f"{key}={value}" for key, value in cells.items() if value]
    return item_from_tokens(profile, plan, tokens, meta)


def _from_yaml_row(profile: Profile, row: Any) -> QueueItem:
    if not isinstance(row, dict):
        raise PlanArgumentError(f"not a mapping of plan, args, kwargs, ... but {row!r}")
    row = dict(row)
    plan = row.pop("plan", None)
    if not isinstance(plan, str) or not plan:
        raise PlanArgumentError("no plan")
    args, kwargs = row.pop("args", []), row.pop("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise PlanArgumentError("args must be a list and kwargs a mapping")
    if "params" in row:
        more_args, more_kwargs = parse_params(shlex.split(str(row.pop("params"))),
                                              _device_names(profile))  # fmt: skip
        args, kwargs = [*args, *more_args], {**kwargs, **more_kwargs}
    meta = row.pop("md", {}) or {}
    if not isinstance(meta, dict):
        raise PlanArgumentError("md must be a mapping")
    if "sample" in row:
        meta = {**meta, "sample": row.pop("sample")}
    return make_item(profile, plan, args, {**kwargs, **row}, meta)


def load_sample_list(profile: Profile, path: str | Path) -> list[QueueItem]:
    """Every row of the sample list at ``path`` as a queue item, or `SampleListError` naming
    every bad row (nothing is returned for a list with one)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            rows, convert = _csv_rows(path), _from_csv_row
        elif path.suffix.lower() in (".yaml", ".yml"):
            rows, convert = yaml.safe_load(path.read_text()), _from_yaml_row
            if not isinstance(rows, list):
                raise SampleListError(path, [(0, "the file is not a list of rows")])
        else:
            raise SampleListError(path, [(0, "not a .csv, .yaml or .yml file")])
    except (OSError, UnicodeDecodeError, csv.Error, yaml.YAMLError) as exc:
        raise SampleListError(path, [(0, f"cannot read it: {exc}")]) from None
    if not rows:
        raise SampleListError(path, [(0, "no rows")])
    items, problems = [], []
    for number, row in enumerate(rows, start=1):
        try:
            items.append(convert(profile, row))
        except Refusal as exc:  # a bad plan, argument (hutch.plans.checks) or metadata
            problems.append((number, str(exc)))
    if problems:
        raise SampleListError(path, problems)
    return items
