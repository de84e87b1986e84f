"""``hutch reduce NAME RUN``: run one of the profile's reductions again on a catalogued run."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hutch.config import Settings
from hutch.errors import Refusal
from hutch.profile import load_profile

__all__ = ["register"]


class ParameterError(Refusal):
    """A ``--param`` that is not KEY=VALUE."""


def _parameter(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParameterError(f"--param {text!r}: give KEY=VALUE (VALUE as JSON, or text)")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _cmd_reduce(args: argparse.Namespace) -> int:
    from hutch.catalog_server import ensure_catalog
    from hutch.reduction.replay import reduce_run

    profile = load_profile(args.profile)
    settings = Settings.from_env(args.data_dir)
    parameters = dict(_parameter(p) for p in args.param or ())
    replayed = reduce_run(
        profile, settings, ensure_catalog(settings), args.name, args.run, parameters=parameters
    )
    if args.json:
        print(json.dumps({"raw_uid": replayed.raw_uid, "derived": replayed.derived}, indent=2))
        return 0
    for run in replayed.derived:
        status = run["exit_status"] + (f" ({run['reason']})" if run["reason"] else "")
        print(f"derived run {run['uid']} of {replayed.raw_uid[:8]}: {status}")
        for kind, path in run["outputs"].items():
            print(f"  {kind}: {path}")
    return 0 if all(r["exit_status"] == "success" for r in replayed.derived) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hutch reduce``."""
    p = subparsers.add_parser(
        "reduce",
        help="run a reduction of the profile on a catalogued run",
        description="Run the profile's reduction NAME on the catalogued run RUN (a uid, a "
        "unique uid prefix of 5+ characters, a scan id, or -1 for the newest run) as the "
        "recorder runs it live, and write its derived run (NeXus, PNG, catalogue).",
    )
    p.add_argument("name", metavar="NAME", help="a reduction of the profile ([[reductions]])")
    p.add_argument("run", metavar="RUN", help="uid, uid prefix, scan id, or -N")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="change a parameter for this run (VALUE as JSON, e.g. rois='{\"a\": [0,0,8,8]}')",
    )
    p.add_argument("--json", action="store_true", help="print the derived runs as JSON")
    p.add_argument("--profile", default="demo", help="beamline profile name or path")
    p.add_argument(
        "--data-dir", help="where data, catalogue and state live ($HUTCH_DATA_DIR, ./hutch-data)"
    )
    p.set_defaults(func=_cmd_reduce)
