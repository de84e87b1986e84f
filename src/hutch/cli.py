"""The ``hutch`` command: one CLI with a subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from hutch.config import Settings
from hutch.errors import HutchError
from hutch.profile import Profile, ProfileError, load_profile
from hutch.runplan import PlanArgumentError

__all__ = ["main"]


class CommandError(HutchError):
    """A command cannot go on; the message says what is at fault."""


def _common(parser: argparse.ArgumentParser, *, port: bool = True) -> None:
    parser.add_argument("--profile", default="demo", help="beamline profile name or path")
    parser.add_argument(
        "--data-dir", help="where data, catalogue and state live ($HUTCH_DATA_DIR, ./hutch-data)"
    )
    if port:
        parser.add_argument(
            "--port",
            type=int,
            help="Channel Access port of the simulator ($HUTCH_CA_PORT, else the profile's)",
        )


def _context(args: argparse.Namespace) -> tuple[Profile, Settings, int]:
    profile = load_profile(args.profile)
    settings = Settings.from_env(args.data_dir)
    port = getattr(args, "port", None) or settings.ca_port or profile.simulation.port
    return profile, settings, port


def _cmd_demo(args: argparse.Namespace) -> int:
    from hutch.demo import run_demo

    profile, settings, port = _context(args)
    summary = run_demo(profile, settings, port, keep_running=args.keep_running, quiet=args.json)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    return 0 if summary.ok else 1


def _cmd_sim(args: argparse.Namespace) -> int:
    from hutch import simulators

    profile, settings, port = _context(args)
    if args.action == "up":
        if not args.detach:
            simulators.serve(profile, port)
            return 0
        state = simulators.start(profile, port, settings)
        print(f"simulator for {profile.name!r} up on 127.0.0.1:{state.port} (pid {state.pid})")
    elif args.action == "down":
        stopped = simulators.stop(profile.name, settings)
        print(f"simulator for {profile.name!r} {'stopped' if stopped else 'was not running'}")
    elif args.action == "status":
        state = simulators.status(profile.name, settings)
        if state is None:
            print(f"simulator for {profile.name!r} is not running")
            return 1
        print(f"simulator for {profile.name!r} up on 127.0.0.1:{state.port} (pid {state.pid})")
    return 0


def _cmd_beam(args: argparse.Namespace) -> int:
    from hutch import simulators

    profile, _, port = _context(args)
    action = simulators.beam_dump if args.action == "dump" else simulators.beam_restore
    action(profile, port)
    print(f"beam {'dumped' if args.action == 'dump' else 'restored'} on {profile.name!r}")
    return 0


def _cmd_catalog(args: argparse.Namespace) -> int:
    from hutch.catalog import catalog_status, ensure_catalog, stop_catalog

    settings = Settings.from_env(args.data_dir)
    if args.action == "up":
        config = ensure_catalog(settings)
        print(f"catalogue up at {config.uri}")
    elif args.action == "down":
        print("catalogue " + ("stopped" if stop_catalog(settings) else "was not running"))
    else:
        status = catalog_status(settings)
        if status is None:
            print("catalogue is not running")
            return 1
        print(json.dumps(status, indent=2, default=str))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from hutch.ca import configure_ca_client
    from hutch.runplan import build_plan
    from hutch.session import Session

    profile, settings, port = _context(args)
    configure_ca_client(port)
    with Session(profile, settings, live_table=not args.quiet) as session:
        plan = build_plan(profile, session.devices, args.plan, args.params)
        try:
            result = session.run(plan)
        except Exception as exc:
            # The RunEngine has closed the run(s) with exit_status 'fail'; what was acquired is
            # in the NeXus file and the catalogue. Say which runs, then what went wrong.
            for record in session.runs:
                print(record.uid)
            runs = ", ".join(
                f"{r.uid[:8]} ({r.exit_status}, {sum(r.events.values())} events kept)"
                for r in session.runs
            )
            raise CommandError(
                f"plan {args.plan} failed: {exc}\n  run(s): {runs or 'none'}"
            ) from exc
        for uid in result.run_start_uids:
            print(uid)
        if result.plan_result is not None and not isinstance(result.plan_result, str):
            # What the plan found (e.g. align's centre); stdout stays the uids for scripts.
            print(f"{args.plan} returned {result.plan_result}", file=sys.stderr)
        if result.exit_status != "success":
            raise CommandError(f"plan {args.plan} ended {result.exit_status}: {result.reason}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from hutch.catalog import ensure_catalog, run_summaries, runs_container

    profile, settings, _ = _context(args)
    container = runs_container(ensure_catalog(settings), profile.name)
    summaries = run_summaries(container, limit=args.limit)
    if args.json:
        print(json.dumps([s.to_json() for s in summaries], indent=2))
        return 0
    print(f"{'scan':>5}  {'uid':8}  {'plan':12}  {'start (UTC)':19}  {'status':8}  events")
    for s in summaries:
        events = ", ".join(f"{k}={v}" for k, v in s.events.items())
        print(
            f"{s.scan_id if s.scan_id is not None else '-':>5}  {s.uid[:8]}  "
            f"{(s.plan_name or '-')[:12]:12}  {s.start_time:%Y-%m-%d %H:%M:%S}  "
            f"{s.exit_status or 'open':8}  {events}"
        )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from hutch.bench import run_bench

    run_bench(load_profile(args.profile), points=args.points, ops=args.ops, as_json=args.json)
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    print(f"{profile.path}: profile {profile.name!r} is valid")
    for spec in profile.devices:
        print(f"  {spec.name:14} {spec.cls:34} {spec.prefix}")
    print(f"  plans: {', '.join(profile.plans)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hutch", description="Beamline control and data acquisition on bluesky."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="run the simulated beamline end to end",
        description="Start the simulated beamline if it is not up, run a set of scans and "
        "report each run: uid, NeXus file, catalogue URI, plot, fitted vs true peak centre.",
    )
    _common(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the simulator and catalogue this demo started running",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("sim", help="the simulated beamline (caproto IOCs)")
    sim = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = sim.add_parser("up", help="serve the profile's PVs (foreground unless --detach)")
    _common(q)
    q.add_argument("-d", "--detach", action="store_true", help="run in the background")
    q = sim.add_parser("down", help="stop a background simulator")
    _common(q, port=False)
    q = sim.add_parser("status", help="is the simulator up?")
    _common(q, port=False)
    for q in sim.choices.values():
        q.set_defaults(func=_cmd_sim)
    q = sim.add_parser("beam", help="dump or restore the simulated beam")
    q.add_argument("action", choices=["dump", "restore"])
    _common(q)
    q.set_defaults(func=_cmd_beam)

    p = sub.add_parser("catalog", help="the embedded tiled catalogue server")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--data-dir", help="where the catalogue lives")
    p.set_defaults(func=_cmd_catalog)

    p = sub.add_parser(
        "run",
        help="run one plan of the profile",
        description="Run one plan against the profile's devices and print the run uid(s). "
        "Arguments are Python literals, positional or key=value; names of the profile's "
        "devices resolve to the devices, e.g.  hutch run scan '[det]' sample_x 0 5 num=11",
    )
    p.add_argument("plan")
    p.add_argument("params", nargs="*", metavar="ARG")
    p.add_argument("-q", "--quiet", action="store_true", help="no live table")
    _common(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("runs", help="list recent runs from the catalogue")
    _common(p, port=False)
    p.add_argument("-n", "--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser(
        "bench",
        help="measure step-scan overhead against the Channel Access floor",
        description="Against a private simulator, catalogue and C softIoc: CA latency of the "
        "simulator beside the C softIoc; a step scan's cost per point on the C softIoc (raw "
        "Channel Access, ophyd-async, ophyd v1, soft signals) and on the simulator (raw "
        "Channel Access, hutch's devices with and without the session's subscriptions, "
        "ophyd v1/pyepics); and each run's fixed cost.",
    )
    p.add_argument("--profile", default="demo", help="beamline profile name or path")
    p.add_argument("--points", type=int, default=200, help="points per step scan")
    p.add_argument("--ops", type=int, default=500, help="operations per latency row")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("profile", help="validate and show a beamline profile")
    _common(p, port=False)
    p.set_defaults(func=_cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hutch`` console script."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ProfileError, PlanArgumentError) as exc:  # bad input: nothing was started
        print(f"hutch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (HutchError, ConnectionError) as exc:
        print(f"hutch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
