"""``hutch reduce NAME RUN``: a profile's reduction run again on a catalogued run.

The run's documents come back from the catalogue (as ``hutch export`` replays them), go
through the same `ReductionRunner` the recorder's reduction lane runs live, and the derived
run goes to the same writers of record (a `hutch.recorder.Recorder`: NeXus, PNG,
catalogue). So a replay gives the live derived run again, but for uids and times: after a
reduction's fix (a new version), with other parameters, or for a run taken before the
reduction was in the profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hutch.catalog import CatalogConfig, documents_of, runs_container
from hutch.config import Settings
from hutch.errors import HutchError
from hutch.export import find_run, in_order
from hutch.profile import Profile, ReductionSpec
from hutch.recorder import Recorder, RecorderConfig
from hutch.reduction.runner import ReductionRunner

__all__ = ["Replayed", "ReplayError", "reduce_run"]


class ReplayError(HutchError):
    """A reduction could not be replayed: the message names the run or the reduction."""


@dataclass
class Replayed:
    """What a replay made: the derived runs' uids, exit status and files."""

    raw_uid: str
    derived: list[dict[str, Any]] = field(default_factory=list)


def reduce_run(
    profile: Profile,
    settings: Settings,
    catalog: CatalogConfig,
    reduction: str,
    run: str | int,
    *,
    parameters: dict[str, Any] | None = None,
) -> Replayed:
    """Run the profile's reduction ``reduction`` (with ``parameters`` changed) on the
    catalogued run ``run`` (uid, uid prefix, scan id or -N) and write its derived run."""
    try:
        spec = profile.reduction(reduction)
    except KeyError as exc:
        raise ReplayError(exc.args[0]) from None
    if parameters:
        spec = ReductionSpec.model_validate({**spec.model_dump(), **parameters})
    base = profile.path.parent if profile.path else None
    container = runs_container(catalog, profile.name)
    raw = find_run(container, run)
    start = raw.metadata["start"]
    if "raw_uid" in start:
        raise ReplayError(f"run {start['uid'][:8]} is a derived run ({start['plan_name']})")
    recorder = Recorder(
        RecorderConfig(
            beamline=profile.name,
            nexus_dir=settings.nexus_dir,
            plot_dir=settings.plot_dir,
            catalog_uri=catalog.uri,
            catalog_api_key=catalog.api_key,
        ),
        settings.run_dir / f"recorder-reduce-{os.getpid()}.log",
    )
    stops: dict[str, dict[str, Any]] = {}

    def emit(name: str, doc: dict[str, Any]) -> None:
        recorder(name, doc)
        if name == "stop":
            stops[doc["run_start"]] = doc

    replayed = Replayed(start["uid"])
    runner = ReductionRunner(lambda _: [spec.make(base)], emit)
    try:
        for name, doc in in_order(documents_of(raw)):
            runner(name, doc)
        runner.close()
    finally:
        recorder.close()
    for uid, stop in stops.items():
        replayed.derived.append(
            {
                "uid": uid,
                "exit_status": stop["exit_status"],
                "reason": stop.get("reason", ""),
                "outputs": recorder.outputs(uid),
            }
        )
    if not replayed.derived:
        raise ReplayError(
            f"reduction {reduction!r} found nothing to reduce in run {start['uid'][:8]} "
            f"(scan {start.get('scan_id')}, {start.get('plan_name')}): it has no "
            f"{spec.model_extra.get('detector')!r} in its primary stream"
        )
    return replayed
