"""The tables ``hutch bench`` measures, by name: the CLI lists and selects them from here
without importing the bench itself (bluesky, ophyd, Channel Access)."""

from __future__ import annotations

__all__ = ["CA_TABLES", "DEFAULT_TABLES", "TABLES"]

#: Every table ``hutch bench`` can measure, by the name that selects it, with what it holds.
TABLES: dict[str, str] = {
    "latency": "Channel Access latency: caget and caput-callback, hutch simulator vs C softIoc",
    "softioc-scan": "step scan on the C softIoc, ms per point: raw CA floor, ophyd-async, "
    "ophyd v1, soft signals",
    "sim-scan": "step scan on the hutch simulator, ms per point: raw CA floor, hutch devices, "
    "full session, ophyd v1; and each stack's fixed cost per run",
    "fly": "fly scans on the hutch simulator: PandA position capture of CLOCK1 at 1 MHz into "
    "HDF5 with zero loss (points/s) vs raw h5py appends on the same disk, goal 1 M points/s; "
    "area detector fly scan in a full session, frames/s end to end vs its nominal rate",
    "nexus": "NeXus writer throughput (events/s, MB/s): NexusWriter vs raw h5py appends of "
    "the same data, scalar stream and 512x512 frames, single events and pages; goal: 80% of raw",
    "ingest": "catalogue ingest (events/s): TiledWriter vs raw tiled-client appends, scalar "
    "stream, hutch's batch size, single events and pages",
    "search": "metadata search latency over 10 000 catalogued runs (sample, proposal + time "
    "range, plan, exit status, free text) vs the 20 newest; goal: under 1 s. The catalogue "
    "is populated once and kept under the data directory",
    "startup": "start-up, seconds until usable: hutch shell to its first prompt, hutch run "
    "count '[det]' end to end, hutch queue up to ready (goals 5 s, 5 s, 15 s), vs python -c "
    "'import bluesky, ophyd_async'; simulator and catalogue already up",
    "reduce": "online reduction, frames/s through a ReductionRunner (documents, HDF5 frames): "
    "pyFAI azimuthal integration vs pyFAI's own integrate1d (goal 90%), ROI statistics vs "
    "numpy summing the frames, 256x256 / 128x96 (demo) and 1024x1024; the recorder's "
    "reduction lane vs the detector's maximum frame rate (goal: keeps up); latency per frame "
    "in-process and through the recorder",
}

#: What a bare ``hutch bench`` measures: every table.
DEFAULT_TABLES: tuple[str, ...] = tuple(TABLES)

#: The tables measured over Channel Access, on one simulator, softIoc and RunEngine they share
#: (`hutch.bench.ca`).
CA_TABLES: tuple[str, ...] = ("latency", "softioc-scan", "sim-scan", "fly")
