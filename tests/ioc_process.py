"""A simulated IOC of the test's own in a process of its own, and clients of it in child
processes: libca reads its environment once per process, and a test worker's CA client may
already serve the demo beamline, so each device check runs a RunEngine in a child that points
its CA client at the IOC before its first CA use, and prints its results as JSON."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.ca import ca_server_env
from hutch.simulators import ca_read

#: The end of every client script: its documents and ``result`` as one line of JSON.
CLIENT_EPILOGUE = """
def plain(value):
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)

print(json.dumps({"docs": docs, **result}, default=plain))
"""


@contextlib.contextmanager
def serving(script: str, port: int, probe: str, log: Path) -> Iterator[int]:
    """Run ``script`` (which serves PVs on loopback) as a CA server on ``port`` until the
    block ends; wait until it answers ``probe``. Yields the port."""
    env = {**os.environ, **ca_server_env(port)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ca_read(probe, port, timeout=1.0)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"simulator did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_client(
    prelude: str, body: str, port: int, directory: Path, *args: Any, timeout: float = 300
) -> dict[str, Any]:
    """Run ``prelude + body`` in a child (argv: port, directory, args); its JSON output."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            prelude + body + CLIENT_EPILOGUE,
            str(port),
            str(directory),
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(f"client failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
