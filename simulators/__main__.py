"""``python -m hutch.simulators --profile demo --port 5064``: serve a profile in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from hutch.profile import load_profile

from .ioc import serve


def _exit_with(pid: int) -> None:
    """End this server (as SIGTERM would) once process ``pid`` has gone."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        except PermissionError:
            pass  # alive, owned by someone else
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    """Serve the simulated beamline of a profile over Channel Access until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m hutch.simulators", description=main.__doc__)
    parser.add_argument("--profile", default="demo", help="profile name or path")
    parser.add_argument("--port", type=int, default=None, help="CA server port (profile's)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--ioc", default=None, help="IOC of the profile to serve (its first)")
    parser.add_argument(
        "--peers", default="", help="comma-separated ports of the profile's other IOCs"
    )
    parser.add_argument("--exit-with", type=int, metavar="PID", help="exit when PID exits")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("caproto").setLevel(logging.WARNING)  # one line per client otherwise
    profile = load_profile(args.profile)
    # SIGTERM (hutch sim down) ends the server like Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.exit_with:
        threading.Thread(target=_exit_with, args=(args.exit_with,), daemon=True).start()
    peers = [int(port) for port in args.peers.split(",") if port]
    serve(profile, args.port or profile.simulation.port, args.host, args.ioc, peers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
