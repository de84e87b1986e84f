"""Export a catalogued run to a file, by replaying its documents from the catalogue.

``hutch export nexus RUN`` writes the NeXus file of any run in the catalogue with the same
`NexusWriter` the live session uses, fed the documents the catalogue gives back
(`hutch.catalog.documents_of`). So the file can be made again after the live one was lost,
moved or never written (a session without ``nexus``), and it has the live file's structure.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
from event_model import pack_event_page, unpack_event_page
from tiled.client.container import Container

from hutch.catalog import documents_of, get_run
from hutch.errors import HutchError

__all__ = [
    "ExportError",
    "export_nexus",
    "find_run",
    "in_order",
    "nexus_differences",
    "write_nexus",
]

logger = logging.getLogger(__name__)

#: Events packed into one page: one HDF5 write per column and one flush per page.
PAGE_SIZE = 1000


class ExportError(HutchError):
    """A run could not be found in the catalogue or written out; the message says which."""


def find_run(container: Container, key: str | int) -> Container:
    """The run ``key`` names; a string of digits is a scan id, or -N, as an int would be."""
    where = f"the catalogue {container.uri}"
    text = str(key).strip()
    candidates: list[str | int] = [text]
    if re.fullmatch(r"[+-]?\d+", text):
        candidates = [int(text)]
        if text.isdigit() and len(text) >= 5:
            candidates.append(text)  # a uid prefix may be all digits: a scan id first, then that
    if candidates[0] == 0:
        # The client would read 0 as "the oldest run"; it is neither a scan id nor -N.
        raise ExportError(f"no run 0 in {where}: give a uid, a scan id (1, 2...) or -N")
    for candidate in candidates:
        try:
            return get_run(container, candidate)
        except KeyError:
            continue
        except ValueError as exc:  # a uid prefix that is too short or matches several runs
            raise ExportError(f"run {text!r} in {where}: {exc}") from None
    first = candidates[0]
    if len(candidates) > 1:
        what = f"scan id or uid prefix {text}"
    elif isinstance(first, int):
        what = f"scan id {first}" if first > 0 else f"run {first}"
    else:
        what = f"run {text!r}"
    raise ExportError(f"no {what} in {where}")


def in_order(docs: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documents in an order a live consumer would have seen them, events packed in pages.

    The catalogue rebuilds a run's documents from what it stored and orders them by time, so
    an event may come before its descriptor, a page as single events, and the stop document
    (empty if the run never closed) last. Here: an event only after its descriptor (held
    until then); consecutive events of one descriptor in one page; the stop last, and only
    if it is one (an open run has none: its file stays not closed).
    """
    held: dict[str, list[dict[str, Any]]] = defaultdict(list)  # by unseen descriptor uid
    seen: set[str] = set()
    page: list[dict[str, Any]] = []
    stop: dict[str, Any] | None = None

    def flush() -> Iterator[tuple[str, dict[str, Any]]]:
        if page:
            yield "event_page", pack_event_page(*page)
            page.clear()

    def add(event: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        if page and (
            page[-1]["descriptor"] != event["descriptor"]
            or page[-1]["data"].keys() != event["data"].keys()
            or len(page) >= PAGE_SIZE
        ):
            yield from flush()
        page.append(event)

    for name, doc in docs:
        if name in ("event", "event_page"):
            events = [doc] if name == "event" else list(unpack_event_page(doc))
            if doc["descriptor"] not in seen:
                held[doc["descriptor"]].extend(events)
            else:
                for event in events:
                    yield from add(event)
            continue
        yield from flush()
        if name == "stop":
            stop = doc if doc.get("run_start") else None
            continue
        yield name, doc
        if name == "descriptor":
            seen.add(doc["uid"])
            for event in held.pop(doc["uid"], []):
                yield from add(event)
    yield from flush()
    if held:
        orphans = sum(len(events) for events in held.values())
        logger.warning("%d event(s) of %d unknown descriptor(s) left out", orphans, len(held))
    if stop is not None:
        yield "stop", stop


def write_nexus(documents: Iterable[tuple[str, dict[str, Any]]], directory: Path | str) -> Path:
    """Write one run's ``(name, doc)`` documents to a NeXus file in ``directory``, as the live
    session would, and return its path.

    The documents may come as a catalogue gives them back: events before their descriptor,
    single events or pages, JSON types (lists for tuples), no stop document (the file is then
    left not closed, as a live file without one). Raises `ExportError` if there is no start
    document or the writer could not write every part of the file.
    """
    from hutch.callbacks import NexusWriter

    writer = NexusWriter(Path(directory))
    uid = None
    try:
        for name, doc in in_order(documents):
            if name == "start":
                if uid is not None:
                    raise ExportError(f"a second run ({doc.get('uid')}) follows run {uid}")
                uid = doc["uid"]
            writer(name, doc)
    except OSError as exc:  # the writer names the file it could not create or write
        raise ExportError(f"cannot export run {uid}: {exc}") from exc
    finally:
        writer.close()  # closes the file of a run without a stop document
    path = writer.path_for(uid) if uid is not None else None
    if path is None:
        raise ExportError("no start document: nothing to export")
    return path


def export_nexus(container: Container, key: str | int, directory: Path | str) -> Path:
    """Write the NeXus file of the run ``key`` of ``container`` into ``directory``.

    ``key`` is a uid, a unique uid prefix (5+ characters), a scan id (the newest run with
    it) or -N for the Nth newest run, as an int or a string (``"-1"``; a string of 5+ digits
    found as no scan id is tried as a uid prefix). The run's documents are replayed from the
    catalogue (`hutch.catalog.documents_of`) through `hutch.callbacks.NexusWriter`, as the live
    session writes them (`write_nexus`), so the file has the live file's structure and
    data; a run that never closed gives a file marked not closed (no end time, no run
    status), as the live one. The file name is the live one's; an existing file is never
    overwritten (``_1``, ``_2``... are added).

    Returns the path written. Raises `ExportError` naming the run and the catalogue if there
    is no such run or the catalogue cannot replay it, and naming the file if it could not be
    written completely.
    """
    run = find_run(container, key)
    try:
        return write_nexus(documents_of(run), directory)
    except (httpx.HTTPError, ValueError) as exc:  # tiled's ClientError is an HTTPError
        raise ExportError(f"cannot replay run {key!r} from {run.uri}: {exc}") from exc


# -- comparing files ------------------------------------------------------------------

# Attributes of the root group that describe the file rather than the run: its own path
# (an export is another file) and its creation time (an export is written later; today's
# writer happens to use the run's start time, NeXus defines it as when the file was made).
FILE_ATTRIBUTES = {"file_name", "file_time"}


def _values_equal(a, b) -> bool:
    """Equal values: arrays element-wise with NaN equal to NaN, strings as strings."""
    try:
        np.testing.assert_array_equal(a, b, strict=True)
    except AssertionError:
        return False
    return True


def _tree(f: h5py.File) -> dict[str, Any]:
    """Every link of the file by path (a hard link to a dataset shared by two groups is
    listed under both paths; soft and external links as the links themselves)."""
    links: dict[str, object] = {"/": f}

    def visit(name: str, link) -> None:
        links[f"/{name}"] = f[name] if isinstance(link, h5py.HardLink) else link

    f.visititems_links(visit)
    return links


def nexus_differences(live: Path, exported: Path) -> list[str]:
    """What differs between two NeXus files (a live one and its export), structurally and in
    content; empty if they are the same.

    Walks both trees whatever their layout: the set of paths; the kind of each (group,
    dataset, soft or external link and its target); every attribute and its value (except
    the root's `FILE_ATTRIBUTES`); each dataset's shape, maximum shape, dtype (and string
    encoding) and values, NaN equal to NaN. Not compared: chunking and compression, how
    the writer lays bytes out on disk, which may depend on how many rows came per write.
    """
    out: list[str] = []
    with h5py.File(live, "r") as a, h5py.File(exported, "r") as b:
        ta, tb = _tree(a), _tree(b)
        for path in sorted(ta.keys() - tb.keys()):
            out.append(f"{path}: only in the live file")
        for path in sorted(tb.keys() - ta.keys()):
            out.append(f"{path}: only in the exported file")
        for path in sorted(ta.keys() & tb.keys()):
            x, y = ta[path], tb[path]
            if type(x) is not type(y):
                out.append(f"{path}: {type(x).__name__} live, {type(y).__name__} exported")
                continue
            if isinstance(x, h5py.SoftLink | h5py.ExternalLink):
                if vars(x) != vars(y):
                    out.append(f"{path}: link {vars(x)} live, {vars(y)} exported")
                continue
            skip = FILE_ATTRIBUTES if path == "/" else set()
            for key in sorted((x.attrs.keys() | y.attrs.keys()) - skip):
                if key not in x.attrs or key not in y.attrs:
                    out.append(f"{path}@{key}: in one file only")
                elif not _values_equal(x.attrs[key], y.attrs[key]):
                    out.append(f"{path}@{key}: {x.attrs[key]!r} live, {y.attrs[key]!r} exported")
            if isinstance(x, h5py.Dataset):
                for what in ("shape", "maxshape", "dtype"):
                    if getattr(x, what) != getattr(y, what):
                        out.append(f"{path}: {what} {getattr(x, what)} != {getattr(y, what)}")
                if h5py.check_string_dtype(x.dtype) != h5py.check_string_dtype(y.dtype):
                    out.append(f"{path}: string type differs")
                if x.shape == y.shape and not _values_equal(x[()], y[()]):
                    out.append(f"{path}: values differ\n  live     {x[()]!r}\n  exported {y[()]!r}")
    return out
