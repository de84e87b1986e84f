"""``python -m hutch.simulators --profile demo --port 5064``: serve a profile in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from hutch.profile import load_profile

from .ioc import serve


def main(argv: list[str] | None = None) -> int:
    """Serve the simulated beamline of a profile over Channel Access until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m hutch.simulators", description=main.__doc__)
    parser.add_argument("--profile", default="demo", help="profile name or path")
    parser.add_argument("--port", type=int, default=None, help="CA server port (profile's)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
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
    serve(profile, args.port or profile.simulation.port, args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
