"""The live-plot process, ``python -m hutch.liveplot_process ADDRESS PARENT_PID``, started by
`hutch.liveplot.LivePlots`: it draws a session's runs as their documents come.

bluesky's ``RemoteDispatcher`` receives the documents (decoded by `hutch.liveplot.decode`,
which executes nothing that arrives) and runs `LiveView` on each in the main thread; a task
on the dispatcher's event loop processes the windows' events in between (as bluesky's old
"kicker" did), so matplotlib runs in one thread and the drawing coalesces when documents
come fast. The process ends when its session stops it or dies.

The backend is matplotlib's TkAgg: Tk comes with Python (tkinter) and needs only the X
library on the machine, whereas PyQt5 is no dependency of hutch's and Qt's X11 plugin needs
X libraries (libxcb-xinerama, libxkbcommon-x11, ...) that a beamline server or CI machine
often lacks; without them Qt aborts the process at its first window. bluesky's Qt
"teleporter" is not needed either: every callback runs in this process's main thread. Qt is
used only where Python has no tkinter.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from hutch.liveplot import decode
from hutch.reduction.external import ExternalArrays
from hutch.reduction.points import Block, StreamPoints

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

__all__ = ["FrameView", "LiveView", "main"]

logger = logging.getLogger(__name__)

_BACKENDS = ("TkAgg", "QtAgg")
# Seconds between two passes over the windows' events: what a user's click waits at most.
_GUI_INTERVAL_S = 0.03
_PARENT_POLL_S = 0.5


def _figure(label: str, **kwargs: Any) -> Figure:
    """The window ``label``, opened if it is not (logged: the test reads which opened)."""
    import matplotlib.pyplot as plt

    if label in plt.get_figlabels():
        return plt.figure(label)
    logger.info("window %r", label)
    return plt.figure(label, layout="constrained", **kwargs)


def _images(descriptor: dict[str, Any]) -> list[str]:
    """The stream's fields holding a frame per point (two or more dimensions)."""
    keys = descriptor.get("data_keys") or {}
    return [k for k, dk in keys.items() if len(dk.get("shape") or ()) >= 2]


def _sum_key(key: str) -> str:
    return f"{key}-sum"


def _without_images(descriptor: dict[str, Any], images: list[str]) -> dict[str, Any]:
    """The descriptor `LiveView` gives bluesky's callbacks for a stream it puts together: each
    frame field is replaced by its sum per point (a number to plot against the motors and
    map), every other field is a plain value in the events (no longer external); waveforms
    are left out."""

    def renamed(key: str) -> str | None:
        if key in images:
            return _sum_key(key)
        shape = keys[key].get("shape") or ()
        return key if int(np.prod(shape)) <= 1 else None

    keys = descriptor["data_keys"]
    data_keys = {}
    for key, data_key in keys.items():
        name = renamed(key)
        if name is None:
            continue
        if key in images:
            data_keys[name] = {"dtype": "number", "shape": [], "source": f"sum of {key}"}
        else:
            plain = {k: v for k, v in data_key.items() if k != "external"}
            data_keys[name] = {**plain, "shape": []}

    def fields(names: list[str]) -> list[str]:
        return [n for n in map(renamed, names) if n is not None]

    hints = {
        device: {**hint, "fields": fields(hint.get("fields") or [])}
        for device, hint in (descriptor.get("hints") or {}).items()
    }
    object_keys = {
        device: fields(names) for device, names in (descriptor.get("object_keys") or {}).items()
    }
    return {**descriptor, "data_keys": data_keys, "hints": hints, "object_keys": object_keys}


def _to_top_right(figure: Figure) -> None:
    """Put the window in the screen's top right corner, beside bluesky's plots (which a
    window manager places, or the X server at the top left) rather than over them."""
    window = getattr(figure.canvas.manager, "window", None)
    if hasattr(window, "wm_geometry"):  # Tk: a negative offset counts from the right edge
        window.wm_geometry("-0+0")


class FrameView:
    """The latest frame of each area detector, in a window per detector ("det1: latest
    frame", top right on the screen), updated as frames come; the title says which scan and
    point it is."""

    def __init__(self) -> None:
        self._images: dict[str, AxesImage] = {}
        self._scan_id: Any = None

    def start(self, doc: dict[str, Any]) -> None:
        self._scan_id = doc.get("scan_id")

    def show(self, key: str, frame: np.ndarray, seq_num: int) -> None:
        import matplotlib.pyplot as plt

        frame = np.asarray(frame)
        image = self._images.get(key)
        if (
            image is None
            or not plt.fignum_exists(image.figure.number)
            or image.get_array().shape != frame.shape
        ):
            figure = _figure(f"{key}: latest frame")
            _to_top_right(figure)
            figure.clear()
            axes = figure.subplots()
            image = axes.imshow(frame, cmap="viridis", interpolation="nearest")
            figure.colorbar(image, ax=axes, label=key)
            axes.set_xlabel("column")
            axes.set_ylabel("row")
            self._images[key] = image
        else:
            image.set_data(frame)
        low, high = float(np.nanmin(frame)), float(np.nanmax(frame))
        image.set_clim(low, high if high > low else low + 1)
        image.axes.set_title(f"scan {self._scan_id}: {key}, point {seq_num}")
        image.figure.canvas.draw_idle()


class LiveView:
    """What the live-plot process draws of each run: bluesky's ``BestEffortCallback`` (plots
    on, table off) for scalars against the scanned motor and, for grid and snake scans, maps
    of the detector over the two scanned positions; `FrameView` for area detectors' frames.

    Frames are not in the documents: a stream with external fields (StreamResource and
    StreamDatum documents: frames, fly scans' captured positions) is put together point by
    point (`StreamPoints`, reading the detectors' HDF5 files with `ExternalArrays`) and
    given to the plots as events, each frame replaced by its sum. A document it cannot draw
    is logged once per run and skipped; at each stop, how many points of each stream were
    given to the plots.
    """

    def __init__(self) -> None:
        from bluesky.callbacks.best_effort import BestEffortCallback

        self.plots = BestEffortCallback(fig_factory=_figure, table_enabled=False)
        self.plots.disable_heading()
        self.plots.disable_baseline()
        self.frames = FrameView()
        self._external = ExternalArrays()
        self._streams: dict[str, StreamPoints] = {}  # descriptor uid: streams put together
        self._images: dict[str, list[str]] = {}
        self._resources: set[str] = set()
        self._failed: set[tuple[str, str]] = set()
        self._stream_names: dict[str, str] = {}  # descriptor uid: stream name
        self._drawn: Counter[str] = Counter()  # points given to the plots, per stream
        self._scan_id: Any = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            getattr(self, f"_{name}", self._plots)(name, doc)
        except Exception as exc:
            if (name, type(exc).__name__) not in self._failed:  # once per run
                self._failed.add((name, type(exc).__name__))
                logger.warning("cannot draw a %s document: %s: %s", name, type(exc).__name__, exc)

    def _plots(self, name: str, doc: dict[str, Any]) -> None:
        self.plots(name, doc)

    def _start(self, name: str, doc: dict[str, Any]) -> None:
        self._end_run()
        self._scan_id = doc.get("scan_id")
        self.frames.start(doc)
        self.plots(name, doc)

    def _descriptor(self, name: str, doc: dict[str, Any]) -> None:
        self._stream_names[doc["uid"]] = doc.get("name", "primary")
        keys = doc.get("data_keys") or {}
        images = _images(doc)
        if images or any(dk.get("external") for dk in keys.values()):
            self._streams[doc["uid"]] = StreamPoints(doc, self._external)
            self._images[doc["uid"]] = images
            doc = _without_images(doc, images)
        self.plots(name, doc)

    def _event(self, name: str, doc: dict[str, Any]) -> None:
        if doc["descriptor"] not in self._streams:
            self._to_plots(name, doc, 1)
            return
        page = {
            "descriptor": doc["descriptor"], "seq_num": [doc["seq_num"]], "time": [doc["time"]],
            "data": {k: [v] for k, v in doc["data"].items()},
        }  # fmt: skip
        self._event_page("event_page", page)

    def _event_page(self, name: str, doc: dict[str, Any]) -> None:
        points = self._streams.get(doc["descriptor"])
        if points is None:
            self._to_plots(name, doc, len(doc["seq_num"]))
            return
        points.add_event_page(doc)
        self._draw_ready(doc["descriptor"])

    def _stream_resource(self, name: str, doc: dict[str, Any]) -> None:
        self._external.stream_resource(doc)
        self._resources.add(doc["uid"])

    def _stream_datum(self, name: str, doc: dict[str, Any]) -> None:
        points = self._streams.get(doc["descriptor"])
        if points is not None:
            points.add_stream_datum(doc)
            self._draw_ready(doc["descriptor"])

    def _stop(self, name: str, doc: dict[str, Any]) -> None:
        self.plots(name, doc)
        drawn = ", ".join(f"{stream} {n}" for stream, n in self._drawn.items()) or "none"
        logger.info(
            "scan %s ended (%s); points drawn: %s", self._scan_id, doc.get("exit_status"), drawn
        )
        self._end_run()

    def _to_plots(self, name: str, doc: dict[str, Any], points: int) -> None:
        stream = self._stream_names.get(doc["descriptor"], "?")
        if stream not in self.plots.noplot_streams:  # the baseline is not drawn
            self._drawn[stream] += points
        self.plots(name, doc)

    def _end_run(self) -> None:
        self._external.forget(self._resources)
        self._resources.clear()
        self._streams.clear()
        self._images.clear()
        self._failed.clear()
        self._stream_names.clear()
        self._drawn.clear()

    def _draw_ready(self, descriptor: str) -> None:
        points, images = self._streams[descriptor], self._images[descriptor]
        while (block := points.ready()) is not None:
            for key in images:
                self.frames.show(key, block.data[key][-1], int(block.seq_nums[-1]))
            self._to_plots("event_page", self._page(descriptor, block, images), len(block))

    @staticmethod
    def _page(descriptor: str, block: Block, images: list[str]) -> dict[str, Any]:
        """The block's points as an event page of the descriptor `_without_images` gave."""
        n = len(block)
        data: dict[str, list] = {}
        for key, values in block.data.items():
            values = np.asarray(values)
            if key in images:
                data[_sum_key(key)] = values.reshape(n, -1).sum(axis=1, dtype=float).tolist()
            elif values.size == n:  # one value per point (a PandA's capture comes as [v])
                data[key] = values.reshape(n).tolist()
        times = block.time.tolist()
        seq_nums = [int(s) for s in block.seq_nums]
        return {
            "descriptor": descriptor,
            "uid": [f"{descriptor}/{s}" for s in seq_nums],
            "seq_num": seq_nums,
            "time": times,
            "data": data,
            "timestamps": {key: times for key in data},
            "filled": {},
        }


def _open_display() -> str:
    """Choose the GUI backend and open the display (failing here, not at the first plot)."""
    import matplotlib

    for backend in _BACKENDS:
        try:
            matplotlib.use(backend, force=True)
            break
        except ImportError:
            continue
    else:
        raise RuntimeError("no GUI toolkit for matplotlib: install Python's tkinter (python3-tk)")
    import matplotlib.pyplot as plt

    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    try:
        plt.close(plt.figure())
    except Exception as exc:
        raise RuntimeError(f"cannot open the display {display!r}: {exc}") from None
    plt.ion()  # windows open as bluesky's callbacks make figures
    return backend


async def _process_gui_events() -> None:
    from matplotlib._pylab_helpers import Gcf  # pyplot's registry of open windows

    while True:
        for manager in Gcf.get_all_fig_managers():
            try:
                manager.canvas.flush_events()  # draws what the callbacks marked stale
            except Exception as exc:  # a window closing under it
                logger.debug("window events: %s", exc)
        await asyncio.sleep(_GUI_INTERVAL_S)


async def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(_PARENT_POLL_S)
    logger.info("the session (pid %d) is gone; exiting", parent)
    logging.shutdown()
    os._exit(0)  # nothing to save: a viewer


def main(argv: list[str] | None = None) -> None:
    """``python -m hutch.liveplot_process ADDRESS PARENT_PID``: started by
    `hutch.liveplot.LivePlots`, which reads the last line of its log if it exits early."""
    address, parent = argv or sys.argv[1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the session decides when it ends
    faulthandler.enable()  # a crash in the GUI toolkit leaves its stack in the log
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        backend = _open_display()
    except Exception as exc:
        logger.error("%s", exc)
        sys.exit(1)
    from bluesky.callbacks.zmq import RemoteDispatcher

    dispatcher = RemoteDispatcher(address, deserializer=decode)
    dispatcher.subscribe(LiveView())
    dispatcher.loop.create_task(_process_gui_events())
    dispatcher.loop.create_task(_exit_with(int(parent)))
    logger.info("live plots of pid %s from %s, matplotlib %s", parent, address, backend)
    dispatcher.start()  # subscribes: the session then sends what it held


if __name__ == "__main__":
    main()
