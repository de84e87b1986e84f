"""Save a PNG plot of each bluesky run when it ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from event_model import DocumentRouter
from matplotlib.figure import Figure

from hutch.callbacks.nexus import PRIMARY, render_filename, unclobbered
from hutch.callbacks.plot_data import RunData
from hutch.callbacks.plot_render import render
from hutch.reduction.external import ExternalArrays
from hutch.reduction.points import StreamPoints

__all__ = ["PlotSaver", "render"]

logger = logging.getLogger(__name__)

SUMMARY = "summary"  # a derived run's one-event stream of results (peak centre, ...)
_KEEP_UNITS = 64


class PlotSaver(DocumentRouter):
    """Save one PNG per run in ``directory`` when the run stops.

    Subscribe it to a RunEngine (``RE.subscribe(PlotSaver(path))``) or feed it a replay. It
    plots the primary stream: each hinted detector field in a panel of its own against the
    first scanned axis (or time for a count); for a 2-D scan a map of the first detector field
    on the positions measured; for 1-D arrays per point (I(q)) a heat map or waterfall
    (`hutch.callbacks.plot_render`). Data the detectors wrote to files (StreamResource and
    StreamDatum documents: area-detector frames, PandA captures) are read as their documents
    arrive and reduced at once to what the plot shows: frame sums and positions, and each
    area detector's brightest frame, drawn beside. A run with no events still gets a PNG
    saying "no data". Drawing uses matplotlib's Agg canvas directly, never pyplot, so it is
    safe off the main thread and leaves no figures open.
    ``path_for(uid)`` and ``last_path`` tell where a run's plot went.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        filename_template: str = "{beamline}_{scan_id:05d}_{uid8}.png",
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.filename_template = filename_template
        self.last_path: Path | None = None
        self._paths: dict[str, Path] = {}
        self._runs: dict[str, RunData] = {}  # by run uid
        self._by_descriptor: dict[str, RunData] = {}  # primary descriptors
        self._summaries: dict[str, RunData] = {}  # summary descriptors
        self._external = ExternalArrays()
        # Units of the last runs stopped, for derived runs of theirs still to come.
        self._stopped_units: dict[str, dict[str, str]] = {}

    def path_for(self, uid: str) -> Path | None:
        """The PNG saved for run ``uid``, if this saver saw that run stop."""
        return self._paths.get(uid)

    def figure(self, run: RunData, stop: dict[str, Any]) -> Figure:
        """The figure saved for a finished run (`render`); a subclass may change or keep it."""
        return render(run, stop)

    def start(self, doc: dict[str, Any]) -> None:
        run = self._runs[doc["uid"]] = RunData(start=doc)
        raw_uid = doc.get("raw_uid", "")
        if raw := self._runs.get(raw_uid):  # a derived run: its axes have the raw run's units
            run.other_units.update(raw.known_units())
        else:
            run.other_units.update(self._stopped_units.get(raw_uid, {}))

    def descriptor(self, doc: dict[str, Any]) -> None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is None:
            return
        data_keys = doc.get("data_keys") or {}
        name = doc.get("name", PRIMARY)
        if name == SUMMARY:
            self._summaries[doc["uid"]] = run
            run.summary.update({k: (dk, None) for k, dk in data_keys.items()})
        if name != PRIMARY:
            # Units of the motors a PandA captures without units (the baseline has them).
            run.other_units.update(
                {k: dk["units"] for k, dk in data_keys.items() if dk.get("units")}
            )
            return
        run.descriptors.add(doc["uid"])
        run.data_keys.update(data_keys)
        run.hints.update(doc.get("hints") or {})
        self._by_descriptor[doc["uid"]] = run
        external = {k: dk for k, dk in data_keys.items() if dk.get("external")}
        if external and run.points is None:
            # Whole points of the fields in files (frames, captured positions), in order.
            run.points = StreamPoints({**doc, "data_keys": external}, self._external)

    def event_page(self, doc: dict[str, Any]) -> None:
        # Single events reach here too: DocumentRouter packs them into one-row pages.
        descriptor = doc.get("descriptor", "")
        if (run := self._summaries.get(descriptor)) is not None:
            for key, values in (doc.get("data") or {}).items():
                if key in run.summary and values:
                    run.summary[key] = (run.summary[key][0], values[-1])
        elif (run := self._by_descriptor.get(descriptor)) is not None:
            run.add_event_page(doc)

    def stream_resource(self, doc: dict[str, Any]) -> None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is not None:
            self._external.stream_resource(doc)
            run.resources[doc["uid"]] = doc.get("data_key", "")

    def stream_datum(self, doc: dict[str, Any]) -> None:
        run = self._by_descriptor.get(doc.get("descriptor", ""))
        if run is None or run.points is None or run.failed_reading:
            return
        points = run.points
        if points.descriptor["uid"] != doc["descriptor"]:
            return  # a second primary descriptor's: read only the first's files
        try:
            points.add_stream_datum(doc)
            while (block := points.ready()) is not None:
                run.add_block(block)
        except Exception as exc:  # a plot must not fail the scan: it shows what it has
            key = run.resources.get(doc.get("stream_resource", ""), doc.get("uid"))
            run.failed_reading = f"{key} not read: {exc}"
            logger.warning("PlotSaver: run %s: %s", run.start.get("uid"), run.failed_reading)

    def stop(self, doc: dict[str, Any]) -> None:
        run = self._runs.pop(doc.get("run_start", ""), None)
        if run is None:
            return
        for uid in run.descriptors:
            self._by_descriptor.pop(uid, None)
        for uid in [u for u, r in self._summaries.items() if r is run]:
            del self._summaries[uid]
        self._external.forget(set(run.resources))
        self._stopped_units[run.start["uid"]] = run.known_units()
        while len(self._stopped_units) > _KEEP_UNITS:
            del self._stopped_units[next(iter(self._stopped_units))]  # the oldest
        try:
            fig = self.figure(run, doc)
        except Exception:  # an odd run must not fail the scan over a picture
            logger.exception("PlotSaver: could not draw run %s", run.start.get("uid"))
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = unclobbered(self.directory / render_filename(self.filename_template, run.start))
        try:
            fig.savefig(path, dpi=100)
        except OSError as err:
            raise OSError(f"PlotSaver cannot write {path}: {err}") from err
        self._paths[run.start["uid"]] = self.last_path = path
