"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary directory, serve it
on 127.0.0.1 and a unix socket in that directory, hand out fresh databases, remove it all.

It runs Debian's server binaries (``/usr/lib/postgresql/<version>/bin``, installed by
``bash .ci/setup --tests``).  initdb and postgres refuse to run as root, so as root they run
as the ``postgres`` user the Debian package creates.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresMissing", "find_bindir", "postgres_cluster"]

SETUP_HINT = "run `bash .ci/setup --tests` (it installs Debian's postgresql package)"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """The directory of the newest PostgreSQL server's initdb, postgres and pg_ctl."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    if initdb := shutil.which("initdb"):  # other distributions put them on PATH
        return Path(initdb).parent
    raise PostgresMissing(f"PostgreSQL's server (initdb, postgres) is not installed: {SETUP_HINT}")


class PostgresCluster:
    """A running cluster owned by the tests; trust authentication, loopback only."""

    def __init__(self, root: Path, port: int, bindir: Path, as_user: list[str]) -> None:
        self.root = root
        self.port = port
        self.bindir = bindir
        self._as_user = as_user
        self._names = itertools.count(1)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, tool: str, *args: str, timeout: float = 120) -> None:
        """Run one of the server's tools as the cluster's owner; its output goes in errors."""
        proc = subprocess.run(
            [*self._as_user, str(self.bindir / tool), *args],
            cwd=self.root,  # the owner may not be allowed into the current directory
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )

    def uri(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "hutch") -> str:
        """A new, empty database; returns its URI."""
        name = f"{prefix}{next(self._names)}"
        self.run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", name)
        return self.uri(name)


@contextmanager
def postgres_cluster(port: int) -> Iterator[PostgresCluster]:
    """Create, start and finally stop and delete a cluster listening on 127.0.0.1:``port``."""
    bindir = find_bindir()
    as_user: list[str] = []
    # Under /tmp, not pytest's tmp_path: pytest makes its base directory private to root,
    # where the postgres user could not reach the data directory.
    root = Path(tempfile.mkdtemp(prefix="hutch-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = PostgresCluster(root, port, bindir, as_user)
    started = False
    try:
        cluster.run(
            "initdb",
            "-D",
            str(cluster.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        # Durability is of no use to a cluster deleted at the end of the session.
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = root / "server.log"
        try:
            cluster.run(
                "pg_ctl",
                "-D",
                str(cluster.data),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "-t",
                "120",
                "start",
            )
        except RuntimeError as exc:
            tail = log.read_text(errors="replace") if log.exists() else "(no log)"
            raise RuntimeError(f"{exc}\n{log}:\n{tail}") from None
        started = True
        yield cluster
    finally:
        if started:
            cluster.run("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
