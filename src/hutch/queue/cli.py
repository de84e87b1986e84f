"""``hutch queue``: start, stop and drive the profile's queue server from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from hutch.config import Settings
from hutch.profile import Profile, load_profile

__all__ = ["register"]


def _context(args: argparse.Namespace) -> tuple[Profile, Settings]:
    return load_profile(args.profile), Settings.from_env(args.data_dir)


def _running(profile: Profile, settings: Settings):
    from hutch.queue.services import QueueError, status

    state = status(profile.name, settings)
    if state is None:
        raise QueueError(
            f"the queue server of {profile.name!r} is not running "
            f"(hutch queue up --profile {profile.name})"
        )
    return state


@contextlib.contextmanager
def _manager(profile: Profile, settings: Settings) -> Iterator[Any]:
    """The RE Manager's client; a refused or unanswered request becomes a `QueueError`."""
    from bluesky_queueserver_api.comm_base import RequestFailedError, RequestTimeoutError

    from hutch.queue.client import manager_api
    from hutch.queue.services import QueueError

    api = manager_api(_running(profile, settings))
    try:
        yield api
    except RequestFailedError as exc:
        raise QueueError(f"the RE Manager refused: {exc}") from None
    except RequestTimeoutError as exc:
        raise QueueError(f"the RE Manager did not answer: {exc}") from None
    finally:
        api.close()


def _md(text: str) -> tuple[str, str]:
    """An argparse type: ``key=value`` run metadata (a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. sample=Si)")
    return key.strip(), value


def _describe(state) -> str:
    return (
        f"HTTP {state.http_uri}, RE Manager {state.zmq_control} (console {state.zmq_info}), "
        f"Redis {state.redis}; API keys in {state.directory}/keys/ "
        f"({', '.join(state.groups)}; hutch's own: {state.default_group})"
    )


def _cmd_up(args: argparse.Namespace) -> int:
    from hutch.queue.services import start

    profile, settings = _context(args)
    port = None
    if args.sim:  # the simulated beamline's port, as `hutch sim up` chooses it
        port = args.port or settings.ca_port or profile.simulation.port
    state = start(profile, settings, simulator_port=port)
    print(f"queue server for {profile.name!r} up: {_describe(state)}")
    if state.simulator:
        print("  with the simulated beamline it started (hutch queue down stops it too)")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from hutch.queue.services import stop

    profile, settings = _context(args)
    stopped = stop(profile.name, settings)
    print(f"queue server for {profile.name!r} {'stopped' if stopped else 'was not running'}")
    return 0


_STATUS_KEYS = ("manager_state", "re_state", "worker_environment_exists", "items_in_queue",
                "items_in_history", "queue_stop_pending", "running_item_uid")  # fmt: skip


def _cmd_status(args: argparse.Namespace) -> int:
    profile, settings = _context(args)
    state = _running(profile, settings)
    with _manager(profile, settings) as api:
        status = api.status()
    summary = {key: status.get(key) for key in _STATUS_KEYS}
    if args.json:
        print(json.dumps({**summary, "http_uri": state.http_uri, "zmq": state.zmq_control}))
    else:
        print(f"queue server for {profile.name!r} up: {_describe(state)}")
        for key, value in summary.items():
            print(f"  {key:26} {value}")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    from hutch.queue.samples import item_from_tokens

    profile, settings = _context(args)
    item = item_from_tokens(profile, args.plan, args.params, dict(args.md or ()))
    with _manager(profile, settings) as api:
        response = api.item_add(item.to_item())
    print(response["item"]["item_uid"])
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    from hutch.queue.samples import load_sample_list
    from hutch.queue.services import QueueError

    profile, settings = _context(args)
    items = load_sample_list(profile, args.file)  # the whole list checked before any is queued
    with _manager(profile, settings) as api:
        # One batch: the RE Manager adds all of it or none.
        response = api.item_add_batch([item.to_item() for item in items])
        if not response["success"]:
            raise QueueError(response["msg"])
    for item in response["items"]:
        print(item["item_uid"])
    print(f"queued {len(items)} item(s) from {args.file}", file=sys.stderr)
    return 0


def _cmd_control(args: argparse.Namespace) -> int:
    profile, settings = _context(args)
    with _manager(profile, settings) as api:
        if args.action == "start":
            api.queue_start()
        elif args.action == "stop":
            api.queue_stop()  # after the running item
        elif args.action == "pause":
            api.re_pause("immediate" if args.now else "deferred")
        elif args.action == "resume":
            api.re_resume()
    print(f"queue {args.action}: accepted")
    return 0


def _history_line(item: dict[str, Any]) -> str:
    result = item.get("result") or {}
    params = [json.dumps(a) for a in item.get("args", [])]
    params += [f"{k}={json.dumps(v)}" for k, v in item.get("kwargs", {}).items()]
    runs = ",".join(uid[:8] for uid in result.get("run_uids", []))
    line = f"{result.get('exit_status', '?'):10} {item['name']} {' '.join(params)}"
    line += f"  runs: {runs or '-'}"
    if result.get("msg"):
        line += f"\n{'':11}{result['msg']}"
    return line


def _cmd_history(args: argparse.Namespace) -> int:
    profile, settings = _context(args)
    with _manager(profile, settings) as api:
        items = api.history_get()["items"][-args.limit :]
    if args.json:
        print(json.dumps(items, indent=2, default=str))
    else:
        for item in items:
            print(_history_line(item))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="demo", help="beamline profile name or path")
    parser.add_argument(
        "--data-dir", help="where data, catalogue and state live ($HUTCH_DATA_DIR, ./hutch-data)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hutch queue up|down|status|add|load|start|pause|resume|stop|history``."""
    p = subparsers.add_parser(
        "queue",
        help="the queue server (bluesky-queueserver and its HTTP API) for a profile",
        description="Run plans through a queue: bluesky-queueserver's RE Manager with the "
        "profile's devices and plans, and bluesky-httpserver in front of it (API keys per "
        "user group). See docs/queue.md.",
    )
    queue = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    q = queue.add_parser("up", help="start Redis, the RE Manager and the HTTP server")
    q.add_argument(
        "--sim",
        action="store_true",
        help="start the profile's simulated beamline too, unless it is up (down stops it)",
    )
    q.add_argument(
        "--port",
        type=int,
        help="with --sim: Channel Access port of the simulator ($HUTCH_CA_PORT, else the "
        "profile's)",
    )
    q.set_defaults(func=_cmd_up)
    q = queue.add_parser("down", help="stop what `up` started")
    q.set_defaults(func=_cmd_down)
    q = queue.add_parser("status", help="the RE Manager's state and the queue's length")
    q.add_argument("--json", action="store_true", help="print the status as JSON")
    q.set_defaults(func=_cmd_status)
    q = queue.add_parser(
        "add",
        help="queue one plan",
        description="Queue one plan of the profile and print the item's uid. Arguments as "
        "for `hutch run`, e.g.  hutch queue add scan '[det]' sample_x 0 5 num=11",
    )
    q.add_argument("plan")
    q.add_argument("params", nargs="*", metavar="ARG")
    q.add_argument("--md", action="append", type=_md, metavar="KEY=VALUE",
                   help="run metadata (a string), e.g. --md sample=Si; repeatable")  # fmt: skip
    q.set_defaults(func=_cmd_add)
    q = queue.add_parser(
        "load",
        help="queue a sample list (CSV or YAML), all rows or none",
        description="Queue one item per row of a sample list. The whole list is checked "
        "first; a list with a bad row is refused whole, naming each bad row and why.",
    )
    q.add_argument("file", help="a .csv, .yaml or .yml sample list (docs/queue.md)")
    q.set_defaults(func=_cmd_load)
    for action, what in (
        ("start", "run the queue"),
        ("stop", "stop the queue after the running item"),
        ("pause", "pause the running plan (at the next checkpoint, or --now)"),
        ("resume", "resume a paused plan"),
    ):
        q = queue.add_parser(action, help=what)
        if action == "pause":
            q.add_argument("--now", action="store_true", help="pause immediately")
        q.set_defaults(func=_cmd_control)
    q = queue.add_parser("history", help="the items run so far, with how each ended")
    q.add_argument("-n", "--limit", type=int, default=50, help="the last N items (default 50)")
    q.add_argument("--json", action="store_true", help="print the items as JSON")
    q.set_defaults(func=_cmd_history)
    for q in queue.choices.values():
        _common(q)
