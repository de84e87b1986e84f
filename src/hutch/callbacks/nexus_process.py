"""The provenance of a derived run (`hutch.reduction`) in its NeXus file: an NXprocess."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py

from hutch.callbacks.nexus_fields import iso, set_class, to_json

__all__ = ["write_process"]


def write_process(
    entry: h5py.Group, start: dict[str, Any], path: Path, raw_path: Path | None
) -> h5py.Group | None:
    """``/entry/process`` (NXprocess) of a derived run's file ``path``: which reduction
    (``program`` "hutch <kind>", ``version``, ``date``), its parameters (NXnote, JSON), the
    raw run it reduced (``raw_uid``; NXnote ``raw`` with the raw NeXus file's name, relative
    to this file's folder) and, when that file exists, ``raw_data``, an external link to the
    raw run's ``/entry/data``. The reduction's fields are written into the group as well.

    None for a run that is not derived (no ``reduction`` in its start document).
    """
    reduction = start.get("reduction")
    if not isinstance(reduction, dict):
        return None
    name = str(reduction.get("name", ""))
    kind = str(reduction.get("kind") or name)
    version = str(reduction.get("version", ""))
    raw_uid = str(reduction.get("raw_uid") or start.get("raw_uid") or "")
    raw_plan = reduction.get("raw_plan_name") or "run"

    process = set_class(entry.create_group("process"), "NXprocess")
    process["program"] = f"hutch {kind}"
    process["version"] = version
    process["date"] = iso(start.get("time", 0.0))
    process["sequence_index"] = 1
    process["description"] = (
        f"{name}: {kind} {version} (hutch {reduction.get('program_version', '?')}) "
        f"of run {raw_uid} ({raw_plan})"
    )
    process["raw_uid"] = raw_uid

    parameters = set_class(process.create_group("parameters"), "NXnote")
    parameters["type"] = "application/json"
    parameters["description"] = f"parameters of {name} ({kind} {version})"
    parameters["data"] = to_json(reduction.get("parameters") or {})

    raw = set_class(process.create_group("raw"), "NXnote")
    raw["type"] = "application/x-hdf5"
    raw["description"] = f"the raw run {raw_uid} ({raw_plan}) this run reduces"
    if raw_path is not None:
        # Relative, as the detectors' files: the folder can move as a whole.
        filename = os.path.relpath(raw_path, path.parent)
        raw["file_name"] = filename
        if raw_path.exists():  # a dangling link trips some readers up
            process["raw_data"] = h5py.ExternalLink(filename, "/entry/data")
    return process
