"""The ``hutch`` command: one CLI with a subcommand per job."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from hutch.bench.tables import DEFAULT_TABLES, TABLES
from hutch.config import Settings
from hutch.errors import HutchError, PlanArgumentError, Refusal
from hutch.profile import Profile, ProfileError, load_profile
from hutch.queue.cli import register as register_queue
from hutch.reduction.cli import register as register_reduce

__all__ = ["main"]


class CommandError(HutchError):
    """A command cannot go on; the message says what is at fault."""


def _common(parser: argparse.ArgumentParser, *, port: bool = True, profiles: bool = False) -> None:
    if profiles:
        parser.add_argument(
            "--profile",
            action="append",
            help="beamline profile name or path; repeat for several (default: demo and tof)",
        )
    else:
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
    from hutch.demo import DEMO_PROFILES, run_demo

    names = args.profile or list(DEMO_PROFILES)
    profiles = [load_profile(name) for name in names]
    settings = Settings.from_env(args.data_dir)
    port = args.port or settings.ca_port or profiles[0].simulation.port
    summary = run_demo(profiles, settings, port, keep_running=args.keep_running, quiet=args.json)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    return 0 if summary.ok else 1


def _cmd_sim(args: argparse.Namespace) -> int:
    from hutch import simulators

    profile, settings, port = _context(args)
    if args.action == "up":
        if not args.detach and len(profile.iocs) == 1:
            simulators.serve(profile, port)
            return 0
        # Several IOCs: each is a process of its own; in the foreground they end with this one.
        state = simulators.start(
            profile, port, settings, exit_with=None if args.detach else os.getpid()
        )
        print(f"simulator for {profile.name!r} up: {simulators.describe(state)}")
        if not args.detach:
            with contextlib.suppress(KeyboardInterrupt):
                while simulators.status(profile.name, settings) is not None:
                    time.sleep(1.0)
            simulators.stop(profile.name, settings)
    elif args.action == "down":
        stopped = simulators.stop(profile.name, settings)
        print(f"simulator for {profile.name!r} {'stopped' if stopped else 'was not running'}")
    elif args.action == "status":
        state = simulators.status(profile.name, settings)
        if state is None:
            print(f"simulator for {profile.name!r} is not running")
            return 1
        print(f"simulator for {profile.name!r} up: {simulators.describe(state)}")
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


def _md_item(text: str) -> tuple[str, str]:
    """An argparse type: ``key=value`` run metadata; the value is kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. sample=Si)")
    return key.strip(), value


def _cmd_run(args: argparse.Namespace) -> int:
    from hutch.runplan import prepare_call

    profile, settings, port = _context(args)
    # Everything the user typed is checked before a device connects: a refusal is immediate.
    call = prepare_call(profile, args.plan, args.params)
    md = dict(args.md or ())
    missing = profile.metadata.missing({**profile.metadata.model_dump(exclude_none=True), **md})
    if missing:
        flags = " ".join(f"--md {key}=..." for key in missing)
        raise PlanArgumentError(
            f"run refused before it started: required metadata missing: {', '.join(missing)}. "
            f"Give it with {flags} (profile {profile.name!r} requires "
            f"{', '.join(profile.metadata.required_keys)}: {profile.path}, [metadata] required)"
        )

    from hutch import simulators
    from hutch.ca import configure_ca_client
    from hutch.session import Session

    # The running simulator's IOCs; else the caller's own CA environment, else the port.
    state = simulators.status(profile.name, settings)
    if state is not None:
        configure_ca_client(*state.ports)
    elif "EPICS_CA_ADDR_LIST" not in os.environ:
        configure_ca_client(port)
    try:
        session = Session(profile, settings, live_table=not args.quiet, md=md)
    except ConnectionError as exc:
        hint = (
            ""
            if state is not None
            else (
                f"\nIs the beamline up? The simulated one: hutch sim up --detach --profile "
                f"{profile.name}"
            )
        )
        raise CommandError(f"{exc}{hint}") from exc
    with session:
        try:
            result = session.run(call.build(session.devices))
        except Refusal:  # refused before its run opened: bad input, nothing moved
            raise
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


def _when(*, end_of_day: bool = False) -> Callable[[str], datetime]:
    """An argparse type: an ISO 8601 date or date-time (naive: local time).

    With ``end_of_day`` a bare date means the end of that day, so ``--until 2025-03-01``
    includes the runs of 1 March (the search's upper bound is exclusive).
    """

    def parse(value: str) -> datetime:
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not an ISO date or date-time (e.g. 2025-03-01, "
                f"2025-03-01T14:30 or 2025-03-01T14:30+02:00)"
            ) from None
        if end_of_day and len(value.strip()) == 10:  # YYYY-MM-DD, no time of day
            when += timedelta(days=1)
        return when

    return parse


def _positive(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return number


def _cmd_runs(args: argparse.Namespace) -> int:
    from hutch.catalog import ensure_catalog, runs_container, search_runs

    if args.since and args.until and args.since.timestamp() >= args.until.timestamp():
        print(
            f"hutch runs: error: --since ({args.since.isoformat()}) is not before --until "
            f"({args.until.isoformat()})",
            file=sys.stderr,
        )
        return 2
    profile, settings, _ = _context(args)
    container = runs_container(ensure_catalog(settings), profile.name)
    summaries = search_runs(
        container,
        sample=args.sample,
        proposal=args.proposal,
        plan_name=args.plan,
        since=args.since,
        until=args.until,
        exit_status=args.status,
        text=args.text,
        limit=args.limit,
    )
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


def _cmd_export(args: argparse.Namespace) -> int:
    from hutch.catalog import ensure_catalog, runs_container
    from hutch.export import export_nexus

    profile, settings, _ = _context(args)
    container = runs_container(ensure_catalog(settings), profile.name)
    # Not the live directory: an export sits beside, never in place of, a live file.
    directory = Path(args.output) if args.output else settings.nexus_dir / "exported"
    print(export_nexus(container, args.run, directory))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from hutch.bench import run_bench

    run_bench(
        load_profile(args.profile),
        tables=args.tables or DEFAULT_TABLES,
        points=args.points,
        ops=args.ops,
        events=args.events,
        search_runs=args.runs,
        fly_seconds=args.fly_seconds,
        fly_frames=args.frames,
        startup_tries=args.tries,
        data_dir=Settings.from_env(args.data_dir).data_dir,
        as_json=args.json,
    )
    return 0


def _bench_table(name: str) -> str:
    """An argparse type: the name of a ``hutch bench`` table.

    Not ``choices``: with ``nargs="*"`` Python 3.11's argparse checks the empty default
    against the choices and refuses a bare ``hutch bench``.
    """
    if name not in TABLES:
        raise argparse.ArgumentTypeError(f"no table {name!r} (choose from {', '.join(TABLES)})")
    return name


def _bench_count(value: str) -> int:
    """An argparse type: a count of events or runs, at least 1."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def _bench_epilog() -> str:
    """The tables, one paragraph each, for ``hutch bench --help``."""
    lines = ["tables:"]
    for name, what in TABLES.items():
        lines += textwrap.wrap(
            what, width=88, initial_indent=f"  {name:13} ", subsequent_indent=" " * 16
        )
    return "\n".join(lines)


def _cmd_shell(args: argparse.Namespace) -> int:
    from hutch.shell import run_shell

    return run_shell(
        args.profile,
        args.data_dir,
        sim=args.sim,
        port=args.port,
        connect_timeout=args.timeout,
        plots=not args.no_plots,
    )


def _cmd_profile(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    print(f"{profile.path}: profile {profile.name!r} is valid")
    several = len(profile.iocs) > 1
    for spec in profile.devices:
        ioc = f"  (IOC {spec.ioc})" if several else ""
        print(f"  {spec.name:14} {spec.cls:34} {spec.prefix}{ioc}")
    print(f"  plans: {', '.join(profile.plans)}")
    for spec in profile.reductions:
        on = f" on runs of {', '.join(spec.plans)}" if spec.plans is not None else ""
        print(f"  reduction {spec.name}: {spec.kind} of {spec.model_extra['detector']}{on}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hutch",
        description="Beamline control and data acquisition on bluesky.",
        epilog="--debug anywhere on the command line shows the traceback of an error.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="run the simulated beamline end to end",
        description="Start the simulated beamlines if they are not up (the photon beamline "
        "'demo' and the neutron TOF instrument 'tof'), run a set of scans and report each "
        "run: uid, NeXus file, catalogue URI, plot, fitted vs true peak centre, choppers.",
    )
    _common(p, profiles=True)

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
    p.add_argument(
        "--md",
        action="append",
        type=_md_item,
        metavar="KEY=VALUE",
        help="run metadata (a string), e.g. --md sample=Si; repeatable; "
        "overrides the profile's [metadata]",
    )
    _common(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "runs",
        help="list recent runs from the catalogue, optionally searched by metadata",
        description="List the most recent runs of the profile's beamline, newest last. "
        "Criteria are combined (all must hold) and evaluated by the catalogue's database. "
        "Times are ISO 8601 dates or date-times, local time unless they carry an offset.",
    )
    _common(p, port=False)
    p.add_argument("--sample", help="sample name (start document's sample, or its name)")
    p.add_argument("--proposal", help="proposal id")
    p.add_argument("--plan", help="plan name, e.g. scan")
    p.add_argument("--since", type=_when(), metavar="WHEN", help="started at or after WHEN")
    p.add_argument(
        "--until",
        type=_when(end_of_day=True),
        metavar="WHEN",
        help="started before WHEN (a bare date includes that day)",
    )
    p.add_argument(
        "--status",
        choices=["success", "fail", "abort", "open"],  # hutch.catalog.EXIT_STATUSES
        help="how the run ended; open: no stop document (running, or its writer died)",
    )
    p.add_argument(
        "--text", help="words that must all occur in the run's metadata (whole words, any case)"
    )
    p.add_argument(
        "-n", "--limit", type=_positive, default=20, help="at most this many runs (default 20)"
    )
    p.add_argument("--json", action="store_true", help="print the runs as JSON")
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser(
        "export",
        help="write a catalogued run to a file",
        description="Write a run of the catalogue to a file by replaying its documents "
        "through the writer the live session uses, and print the file's path.",
    )
    export = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    q = export.add_parser(
        "nexus",
        help="the run's NeXus/HDF5 file",
        description="Write the NeXus file of a catalogued run, as the live session writes it. "
        "RUN is a uid (or a unique prefix of 5+ characters), a scan id, or -1 for the newest "
        "run (-N: the Nth newest). An existing file is never overwritten.",
    )
    q.add_argument("run", metavar="RUN", help="uid, uid prefix, scan id, or -N")
    q.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="directory of the file (default: <data dir>/nexus/exported)",
    )
    _common(q, port=False)
    q.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "bench",
        help="measure hutch against baselines measured in the same run (CA latency, step "
        "scans, NeXus writing, catalogue ingest and search, fly scans, start-up)",
        description=textwrap.fill(
            "Measure the named tables (default: all) and print each row beside its "
            "baseline, measured in the same run: against a private simulator, C softIoc "
            "and catalogues on free loopback ports, and on the data directory's disk.",
            width=88,
        )
        + "\n\nExample: hutch bench nexus search",
        epilog=_bench_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "tables",
        nargs="*",
        type=_bench_table,
        metavar="TABLE",
        help=f"a table to measure: {', '.join(TABLES)} (default: all)",
    )
    p.add_argument("--profile", default="demo", help="beamline profile name or path")
    p.add_argument("--points", type=int, default=200, help="points per step scan")
    p.add_argument("--ops", type=int, default=500, help="operations per latency row")
    p.add_argument(
        "--events",
        type=_bench_count,
        default=1000,
        help="events per run of the nexus table (frames: a tenth as many) and, halved, "
        "of the ingest table",
    )
    p.add_argument(
        "--runs", type=_bench_count, default=10_000, help="runs in the search table's catalogue"
    )
    p.add_argument(
        "--fly-seconds",
        type=float,
        default=None,
        help="seconds the fly table's PandA captures at 1 MHz (default 3)",
    )
    p.add_argument(
        "--frames",
        type=_bench_count,
        default=None,
        help="frames of the fly table's area-detector fly scan (default 300)",
    )
    p.add_argument(
        "--tries",
        type=_bench_count,
        default=3,
        help="how many times the startup table starts each command (default 3)",
    )
    p.add_argument(
        "--data-dir",
        help="the disk to measure on, and where the search catalogue is kept "
        "($HUTCH_DATA_DIR, ./hutch-data)",
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("profile", help="validate and show a beamline profile")
    _common(p, port=False)
    p.set_defaults(func=_cmd_profile)

    register_queue(sub)
    register_reduce(sub)

    p = sub.add_parser(
        "shell",
        help="an IPython session on the beamline: devices, plans, RE, catalog, magics",
        description="Start IPython with the profile's devices (connected; those that do not "
        "connect are listed), its plans, bluesky's plan stubs as bps, the RunEngine RE "
        "(live table, NeXus, plots, catalogue), catalog (recent runs: catalog[-1]), "
        "proposal()/sample()/operator() (kept across sessions) and the magics %%wa, %%mov, "
        "%%movr, %%ct.",
    )
    p.add_argument("--profile", default="demo", help="beamline profile name or path")
    p.add_argument(
        "--data-dir", help="where data, catalogue and state live ($HUTCH_DATA_DIR, ./hutch-data)"
    )
    p.add_argument(
        "--sim",
        action="store_true",
        help="start the profile's simulator if it is not up (it stops with the shell)",
    )
    p.add_argument(
        "--port",
        type=int,
        help="Channel Access port of the simulator ($HUTCH_CA_PORT, else the profile's)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to connect all devices (default 5)",
    )
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="no live plot windows (they open, in a process of their own, when a display is "
        "there); the PNGs are still saved",
    )
    p.set_defaults(func=_cmd_shell)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hutch`` console script.

    Exit status 0 on success, 2 for bad input (refused before anything was started or
    moved), 1 for a failure; each reported in one line, the traceback only with ``--debug``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere: hutch run ... --debug, hutch --debug run ...
    args = _parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        bad_input = isinstance(exc, ProfileError | Refusal)
        known = bad_input or isinstance(exc, HutchError | ConnectionError)
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        hint = "" if known or debug else " (--debug shows where)"
        print(f"hutch {args.command}: error: {message}{hint}", file=sys.stderr)
        return 2 if bad_input else 1


if __name__ == "__main__":
    sys.exit(main())
