"""Scan numbers that name one run: "scan 1234" of a beamline is one run, whoever took it.

Every run's start document carries a ``scan_id``, the number users quote in the logbook,
find the run by (``catalog[1234]``, ``hutch export nexus 1234``) and see in its file names
(``demo_01234_1a2b3c4d.nxs``). hutch counts them per beamline (profile) and data directory
in one file, ``<data dir>/run/scan_ids/<profile>``, shared by every process that takes runs:
``hutch shell``, ``hutch run``, ``hutch demo``, the queue server's worker and ``hutch bench``
all build a `hutch.session.Session`, which installs `RunEngineScanIds` on its RunEngine. Two
processes never get the same number, and a number is only used by a run that started:
a run refused before its start document (missing metadata) leaves its number to the next.

Setting ``RE.md["scan_id"] = 1000`` jumps ahead (the next run is 1001), as in bluesky; a
number at or below the last one taken changes nothing, since it would name two runs. A
per-run ``scan_id`` (``RE(plan, scan_id=N)``, the plan's ``md``) is a request, granted
when N is still free: the run gets max(N, next free number).

Why not bluesky's own: its default ``scan_id_source`` is ``RE.md["scan_id"] + 1``, per
process; the shell kept ``RE.md`` in bluesky's ``PersistentDict``, but that is one file
per key, written without locking and read into a cache when opened, so two processes would
both read 41 and both write 42. Here the last number taken is read, incremented and
written under an exclusive ``flock``, and replaced atomically (temporary file, fsync,
rename), so a crash leaves the old number or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hutch.errors import Refusal

__all__ = ["RunEngineScanIds", "ScanCounter", "ScanIdError", "scan_counter"]


class ScanIdError(Refusal):
    """A scan number could not be read or given: the counter file or ``RE.md["scan_id"]``
    holds something that is not a whole number; the message names which. Raised as the run
    opens, before its start document."""


def scan_counter(run_dir: Path, beamline: str) -> ScanCounter:
    """The scan counter of ``beamline`` (a profile name) kept under ``run_dir``
    (``Settings.run_dir``): ``run_dir/scan_ids/<beamline>``."""
    return ScanCounter(Path(run_dir) / "scan_ids" / beamline)


class ScanCounter:
    """The last scan number taken, in the file ``path`` (one decimal number; absent: 0).

    `take` is atomic across processes and threads: under an exclusive ``flock`` of
    ``path`` + ``.lock`` (never replaced, so every taker locks the same file) it reads the
    number, writes the next one to a temporary file, fsyncs it and renames it over
    ``path``. `last` and `peek` read without the lock: the rename makes every read see
    either the old number or the new one.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"ScanCounter({str(self.path)!r})"

    def last(self) -> int:
        """The last number taken (0 if none yet)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        try:
            return int(text.strip())
        except ValueError:
            raise ScanIdError(
                f"the scan counter {self.path} holds {text[:40]!r}, not a number: write "
                f"the last scan number taken into it (the catalogue's newest scan id)"
            ) from None

    def peek(self, floor: int = 0) -> int:
        """The number `take` would give now, without taking it: max(last + 1, floor + 1)."""
        return max(self.last(), floor) + 1

    def take(self, floor: int = 0) -> int:
        """Take the next number, max(last + 1, floor + 1), and return it; no other taker
        in any process gets it."""
        with self._locked():
            number = max(self.last(), floor) + 1
            self._write(number)
        return number

    def advance(self, to: int) -> int:
        """Count ``to`` as taken if it is beyond the last number (a user's jump that no run
        took yet); return the last number taken."""
        with self._locked():
            last = self.last()
            if to > last:
                self._write(to)
                last = to
        return last

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A descriptor of its own per call: flock excludes other open files, also this
        # process's other threads.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, number: int) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            with open(tmp, "w") as f:
                f.write(f"{number}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # The rename itself survives a crash once the directory is synced too.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _whole_number(value: Any, where: str) -> int:
    """``value`` as a scan number (``--md scan_id=5`` gives the text "5"), or ScanIdError."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)  # True is not scan 1, 3.5 no scan at all
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ScanIdError(
            f"{where} is {value!r}, not a whole number: set it to the last scan number "
            f"to count on from (the next run gets the one after), or leave it to hutch"
        ) from None


class RunEngineScanIds:
    """Gives every run of a RunEngine ``RE`` the next number of ``counter``.

    bluesky opens a run in this order: ``RE.md["scan_id"] = RE.scan_id_source(RE.md)``,
    then ``RE.md_validator`` (which may refuse the run: hutch's `RequiredMetadata`), then
    ``RE.md_normalizer`` on a copy of the run's merged metadata, whose result becomes the
    start document. So `peek`, installed as ``scan_id_source``, only says which number the
    run would get; `normalize`, installed as ``md_normalizer`` and chained after the one it
    replaces, takes the number once the run passed validation and puts it in the run's
    metadata and in ``RE.md["scan_id"]``. A refused run takes nothing.

    ``RE.md["scan_id"]`` is honoured as bluesky does, as the last number taken: the next run
    gets max(``RE.md["scan_id"]`` + 1, the counter's next number). So a user's
    ``RE.md["scan_id"] = 1000`` jumps ahead, and the shell's kept ``RE.md`` continues its
    numbers in a data directory without a counter yet. Only what bluesky stored there from
    `peek` for a run that was then refused is not taken for the user's: it is the number
    the next run gets, and `uninstall` puts back what was there before. `uninstall` also
    counts a jump no run took as taken, so it holds in the next session.

    `uninstall` gives ``RE`` back the scan_id_source and md_normalizer this replaced, or, if
    others were installed on top since, leaves them and turns this one into a pass-through.
    """

    def __init__(self, RE: Any, counter: ScanCounter) -> None:
        self.RE = RE
        self.counter = counter
        self.previous_source: Callable[[dict], Any] = RE.scan_id_source
        self.previous_normalizer: Callable[[Any], Any] = RE.md_normalizer
        self.active = True
        # RE.md["scan_id"] as last seen here: what was there, then what bluesky stored from
        # `peek`, then the number the last run took. Another value is the user's.
        self._ours = RE.md.get("scan_id")
        self._floor = 0  # RE.md["scan_id"] as a number, until a run takes a number past it
        with contextlib.suppress(ScanIdError):  # not a number: nothing to count on from
            self._floor = 0 if self._ours is None else _whole_number(self._ours, "")
        self._peeked: int | None = None  # the number told to the run now opening
        self._before_peek: Any = self._ours
        RE.scan_id_source = self.peek
        RE.md_normalizer = self.normalize

    def _in_charge(self) -> bool:
        return self.active and self.RE.scan_id_source == self.peek

    def _note_user_scan_id(self, md: Any) -> None:
        current = md.get("scan_id")
        if current != self._ours:  # set (or deleted) by the user since this object wrote it
            self._floor = 0 if current is None else _whole_number(current, "RE.md['scan_id']")
            self._ours = current

    def peek(self, md: dict[str, Any]) -> Any:
        """``RE.scan_id_source``: the number the run opening now would get; takes nothing."""
        if not self.active:
            return self.previous_source(md)
        self._note_user_scan_id(md)
        current = md.get("scan_id")
        if self._peeked is None or current != self._peeked:  # not left by a refused run
            self._before_peek = current
        self._peeked = self.counter.peek(self._floor)
        self._ours = self._peeked  # bluesky puts it in RE.md["scan_id"] next
        return self._peeked

    def normalize(self, md: Any) -> Any:
        """``RE.md_normalizer``: the replaced normalizer's result, with the run's scan
        number taken now (the run passed validation) in ``scan_id``."""
        md = self.previous_normalizer(md)
        if not self._in_charge() or self._peeked is None:
            return md
        floor = self._floor
        requested = md.get("scan_id")
        if requested is not None and requested != self._peeked:  # the run asks for one
            floor = max(floor, _whole_number(requested, "the run's scan_id") - 1)
        number = self.counter.take(floor)
        md["scan_id"] = number
        self.RE.md["scan_id"] = number  # where bluesky would leave it
        self._ours, self._floor, self._peeked = number, 0, None
        return md

    def uninstall(self) -> None:
        """Stop numbering ``RE``'s runs: count a user's jump no run took as taken, undo
        what a refused run left in ``RE.md["scan_id"]``, put back what this replaced."""
        if self._in_charge():
            current = self.RE.md.get("scan_id")
            if current != self._ours:
                with contextlib.suppress(ScanIdError):  # not a number: no jump, as at a run
                    self._note_user_scan_id(self.RE.md)
            elif self._peeked is not None:  # the last run opening was refused
                if self._before_peek is None:
                    self.RE.md.pop("scan_id", None)
                else:
                    self.RE.md["scan_id"] = self._before_peek
            if self._floor:
                self.counter.advance(self._floor)
        self.active = False
        if self.RE.scan_id_source == self.peek:
            self.RE.scan_id_source = self.previous_source
        if self.RE.md_normalizer == self.normalize:
            self.RE.md_normalizer = self.previous_normalizer
