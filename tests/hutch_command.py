"""The ``hutch`` command as a user runs it: a subprocess, its output checked."""

from __future__ import annotations

import subprocess
import sys

HUTCH = [sys.executable, "-m", "hutch.cli"]


def hutch(*args: str, env: dict[str, str], check: bool = True, timeout: float = 600):
    """Run ``hutch ARGS``; with ``check``, fail showing its output unless it exits 0."""
    proc = subprocess.run([*HUTCH, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"hutch {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc
