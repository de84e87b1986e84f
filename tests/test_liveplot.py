"""Live plots (`hutch.liveplot`) drawn for real: an X server of the tests' own (Xvfb), scans on
the simulated beamline, and the live-plot process's windows looked at in screenshots, saved
under /tmp (``hutch-liveplot-*.png``). Also: a viewer that cannot draw, stops or dies never
holds up or fails a scan, it ends with its session, and what it receives is never executed."""

from __future__ import annotations

import logging
import os
import pickle
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import msgpack_numpy
import numpy as np
import pytest
from PIL import Image, ImageGrab

from hutch import plans
from hutch.cli import _parser
from hutch.liveplot import LivePlots, decode, encode

SCREEN = (1600, 1200)
SHOTS = Path("/tmp")
# Generous: the live-plot process imports matplotlib, Tk and bluesky (seconds on a busy
# two-core machine); nothing waits for a fixed time.
TIMEOUT = 120.0
LINE = (31, 119, 180)  # matplotlib's first line colour, bluesky's LivePlot's
DARK = (68, 1, 84)  # viridis at its low end: a frame's background, a map's low values
BRIGHT = (253, 231, 37)  # viridis at its high end


@pytest.fixture(scope="module")
def display(tmp_path_factory) -> Iterator[str]:
    """An X display of this module's own: Xvfb on a free display number (it picks one and
    says which, ``-displayfd``). Skipped without Xvfb, except in CI, which must test this."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        message = "Xvfb is not installed: bash .ci/setup --tests installs it (Debian's xvfb)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    log = tmp_path_factory.mktemp("xvfb") / "xvfb.log"
    read, write = os.pipe()
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [xvfb, "-displayfd", str(write), "-screen", "0", "{}x{}x24".format(*SCREEN),
             "-nolisten", "tcp"],
            pass_fds=(write,), stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    os.close(write)
    try:
        number = ""
        if select.select([read], [], [], 60)[0]:
            number = os.read(read, 64).decode().strip()
        if not number:
            pytest.fail(f"Xvfb did not start: {log.read_text()}", pytrace=False)
        yield f":{number}"
    finally:
        os.close(read)
        server.terminate()
        server.wait(30)


@pytest.fixture
def live_plots(session, tmp_path) -> Iterator[Callable[[], LivePlots]]:
    """``live_plots()``: a `LivePlots` subscribed to the session's RunEngine for the test
    (started at its first run, logging to the test's directory), unsubscribed and closed at
    the end."""
    made: list[tuple[LivePlots, int]] = []

    def make() -> LivePlots:
        plots = LivePlots(tmp_path / f"liveplot-{len(made)}.log")
        made.append((plots, session.RE.subscribe(plots)))
        return plots

    yield make
    for plots, token in made:
        session.RE.unsubscribe(token)
        plots.close()


def _log(plots: LivePlots) -> str:
    return plots.log_path.read_text() if plots.log_path.exists() else ""


def _windows(plots: LivePlots) -> list[str]:
    """The windows the live-plot process opened, by title."""
    return re.findall(r"window '(.*)'", _log(plots))


def _wait_drawn(plots: LivePlots, scan_id: int, points: int) -> None:
    """Until the live-plot process has given the plots the scan's ``points``."""
    wanted = f"scan {scan_id} ended (success); points drawn: primary {points}"
    deadline = time.monotonic() + TIMEOUT
    while wanted not in _log(plots):
        assert plots.pid is not None or not plots.off, f"the viewer is gone:\n{_log(plots)}"
        assert time.monotonic() < deadline, f"not drawn: {wanted!r}; its log:\n{_log(plots)}"
        time.sleep(0.2)


def _colour(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 16) -> np.ndarray:
    """Where the screenshot has ``colour``: a boolean mask, rows by columns."""
    pixels = np.asarray(image.convert("RGB"), dtype=int)
    return (np.abs(pixels - colour) <= tolerance).all(axis=-1)


def _screenshot(display: str, name: str, shows: Callable[[Image.Image], bool]) -> Image.Image:
    """The display once it ``shows`` what is wanted (drawing follows the documents by a
    frame or two), saved as /tmp/hutch-liveplot-NAME.png either way."""
    path = SHOTS / f"hutch-liveplot-{name}.png"
    deadline = time.monotonic() + 30
    while True:
        image = ImageGrab.grab(xdisplay=display)
        if shows(image) or time.monotonic() > deadline:
            image.save(path)
            assert shows(image), f"{path} does not show the plot"
            return image
        time.sleep(0.3)


def _line_across_plot(image: Image.Image) -> bool:
    """bluesky's LivePlot: many pixels of the line colour, the line across a plot's width."""
    columns = np.flatnonzero(_colour(image, LINE).any(axis=0))
    return len(columns) > 300 and _colour(image, LINE).sum() > 1500


def test_live_plots_draw_scans_frames_and_maps(session, display, live_plots, monkeypatch):
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    plots = live_plots()
    d = session.devices
    det, det1, panda1, x, y = d["det"], d["det1"], d["panda1"], d["sample_x"], d["sample_y"]
    left, right = slice(0, SCREEN[0] // 2), slice(SCREEN[0] // 2, None)

    # Scalars against the scanned motor: the demo sample's peak at sample_x 2.5. The viewer
    # starts with this run and still shows all of it.
    result = session.RE(plans.scan([det], x, 1.5, 3.5, 15))
    assert result.exit_status == "success"
    _wait_drawn(plots, session.record(result.run_start_uids[0]).scan_id, 15)
    assert _windows(plots) == ["det-I0 det-diode vs sample_x"]
    _screenshot(display, "scan", _line_across_plot)

    # An area detector: its latest frame (the beam spot on the dark detector), top right,
    # beside the scalars (det1's frame sums among them) plotted against the motor.
    result = session.RE(plans.step_scan([det1, det], x, -1.0, 1.0, 5))
    assert result.exit_status == "success"
    _wait_drawn(plots, session.record(result.run_start_uids[0]).scan_id, 5)
    assert _windows(plots)[1:] == ["det-I0 det-diode det1-sum vs sample_x", "det1: latest frame"]

    def frame_and_plot(image: Image.Image) -> bool:
        frame = _colour(image, DARK)[:, right]
        spot = _colour(image, BRIGHT, tolerance=60)[:, right]
        return frame.sum() > 50_000 and spot.sum() > 4 and _line_across_plot(image)

    _screenshot(display, "frames", frame_and_plot)

    # A snaking grid scan: maps of the detector over the two motors; the peak is a bright
    # column at sample_x 2.5 in the diode's map.
    result = session.RE(plans.grid_scan([det], y, -0.5, 0.5, 3, x, 1.5, 3.5, 5, snake_axes=True))
    assert result.exit_status == "success"
    _wait_drawn(plots, session.record(result.run_start_uids[0]).scan_id, 15)
    assert _windows(plots)[3:] == ["det-I0 det-diode vs sample_x sample_y"]

    def maps(image: Image.Image) -> bool:
        return _colour(image, DARK)[:, left].sum() > 20_000 and (
            _colour(image, BRIGHT)[:, left].sum() > 10_000
        )

    _screenshot(display, "grid", maps)

    # A snake fly scan: frames and positions only in the detectors' files; the map of the
    # frames' sums over the captured positions, and the latest frame.
    result = session.RE(
        plans.snake_fly_scan([det1], y, -0.5, 0.5, 3, x, -1.0, 1.0, 6, panda=panda1, velocity=2.0)
    )
    assert result.exit_status == "success"
    _wait_drawn(plots, session.record(result.run_start_uids[0]).scan_id, 18)
    assert _windows(plots)[4:] == ["det1-sum vs panda1-sample_x panda1-sample_y"]

    def scatter_map(image: Image.Image) -> bool:
        # Its window opens top left, over the grid's maps: white, with coloured markers.
        top_left = np.asarray(image.convert("RGB"), dtype=int)[:500, :600]
        white = (top_left == 255).all(axis=-1).mean()
        coloured = (top_left.max(axis=-1) - top_left.min(axis=-1) > 60).sum()
        return white > 0.6 and coloured > 2000 and _colour(image, DARK)[:, right].sum() > 50_000

    _screenshot(display, "snake", scatter_map)

    pid = plots.pid
    assert "cannot draw" not in _log(plots)
    plots.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended with its session's LivePlots (and reaped)


def test_a_stopped_or_dead_viewer_never_holds_up_a_scan(
    session, display, live_plots, monkeypatch, caplog
):
    monkeypatch.setenv("DISPLAY", display)
    plots = live_plots()
    plots.start()
    assert plots.wait_ready(TIMEOUT), _log(plots)
    det, x = session.devices["det"], session.devices["sample_x"]

    # A viewer that takes nothing (stopped): the scan goes on; documents wait or are dropped.
    first = plots.pid
    os.kill(first, signal.SIGSTOP)
    try:
        assert session.RE(plans.scan([det], x, 1.5, 3.5, 30)).exit_status == "success"
    finally:
        os.kill(first, signal.SIGCONT)

    # One that died: one line, and a new one for the next run, which it shows.
    os.kill(first, signal.SIGKILL)
    with caplog.at_level(logging.WARNING, logger="hutch.liveplot"):
        deadline = time.monotonic() + TIMEOUT
        while plots.pid is not None or plots.wait_ready(0):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        result = session.RE(plans.scan([det], x, 1.5, 3.5, 5))
    assert result.exit_status == "success"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "hutch.liveplot"]
    assert "exited with code -9; a new one starts with the next run" in line
    assert plots.wait_ready(TIMEOUT) and plots.pid not in (None, first)
    _wait_drawn(plots, session.record(result.run_start_uids[0]).scan_id, 5)


def test_a_viewer_that_cannot_open_the_display_never_fails_a_scan(
    session, live_plots, monkeypatch, caplog
):
    monkeypatch.setenv("DISPLAY", ":65000")  # no X server there
    plots = live_plots()
    det = session.devices["det"]
    with caplog.at_level(logging.WARNING, logger="hutch.liveplot"):
        assert session.RE(plans.count([det], num=3)).exit_status == "success"
        deadline = time.monotonic() + TIMEOUT
        while not plots.off:
            assert time.monotonic() < deadline, _log(plots)
            time.sleep(0.1)
        assert session.RE(plans.count([det], num=3)).exit_status == "success"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "hutch.liveplot"]
    assert "live plots off: the live-plot process exited with code 1 before it could draw" in line
    assert "cannot open the display ':65000'" in line
    assert plots.pid is None


def test_the_viewer_ends_when_its_session_dies(display, tmp_path):
    # A session process with live plots, killed (-9: no atexit, no close).
    log = tmp_path / "liveplot.log"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from hutch.liveplot import LivePlots
        plots = LivePlots(Path({str(log)!r}))
        plots.start()
        assert plots.wait_ready({TIMEOUT})
        print(plots.pid, flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "DISPLAY": display}
    session = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    try:
        viewer = int(session.stdout.readline())
    finally:
        session.kill()
        session.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{viewer}").exists() and "zombie" not in _status(viewer):
        assert time.monotonic() < deadline, f"the viewer outlived its session:\n{log.read_text()}"
        time.sleep(0.1)
    assert "is gone; exiting" in log.read_text()


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "zombie"  # gone between the two looks


def test_documents_go_as_msgpack_and_nothing_received_is_executed(tmp_path):
    doc = {
        "data": {"x": np.float64(1.5), "n": np.int32(3), "frame": np.arange(6, dtype=np.uint16)},
        "shape": (2, 3),
        "names": ["a", "b"],
    }
    back = decode(encode(doc))
    assert back["data"]["x"] == 1.5 and back["data"]["n"] == 3 and back["shape"] == [2, 3]
    np.testing.assert_array_equal(back["data"]["frame"], np.arange(6, dtype=np.uint16))

    # msgpack-numpy's own decoding unpickles an array of Python objects: that runs code.
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (ran,))

    evil = msgpack.packb(
        {"data": {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1],
                  b"data": pickle.dumps(Payload())}},
        use_bin_type=True,
    )  # fmt: skip
    with pytest.raises(ValueError, match="refusing"):
        decode(evil)
    assert not ran.exists()
    msgpack.unpackb(evil, object_hook=msgpack_numpy.decode)  # what the guard keeps out
    assert ran.exists()


def test_hutch_shell_no_plots():
    assert _parser().parse_args(["shell", "--no-plots"]).no_plots
    assert not _parser().parse_args(["shell"]).no_plots
