"""``hutch shell`` as a user runs it: IPython in a terminal (tmux), the real simulator and a
real catalogue; and the pieces it is made of, in process."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import bluesky.plan_stubs as bps
import pytest
from sessions import offline_session

from hutch.ca import ca_client_env
from hutch.catalog import ensure_catalog, runs_container, stop_catalog
from hutch.config import Settings
from hutch.positions import format_where_all, where_all
from hutch.profile import load_profile
from hutch.session import Session

DEMO = Path(__file__).resolve().parents[1] / "profiles" / "demo.toml"
# Generous: the catalogue's first start and the recorder's imports take tens of seconds on a
# busy two-core machine; nothing here waits for a fixed time.
START_TIMEOUT = 300.0
COMMAND_TIMEOUT = 180.0


class Terminal:
    """A command in a detached tmux session on a tmux server of its own (``-L``), read back
    with ``capture-pane`` and typed into with ``send-keys``, as a user's terminal would be."""

    def __init__(self, tmp_path: Path, argv: list[str], env: dict[str, str]) -> None:
        tmux = shutil.which("tmux")
        if tmux is None:
            pytest.fail("hutch shell is tested in tmux: install it (bash .ci/setup --tests)")
        self.tmux = [tmux, "-L", f"hutch-test-{uuid.uuid4().hex[:12]}"]
        self.env = env
        self.prompt = 1
        conf = tmp_path / f"tmux-{uuid.uuid4().hex[:6]}.conf"
        conf.write_text("set -g history-limit 100000\n")
        # The pane stays after the command ends, so its last words can still be read.
        script = f'{shlex.join(argv)}; echo "[shell exited $?]"; sleep 3600'
        self._tmux("-f", str(conf), "new-session", "-d", "-s", "shell", "-x", "220", "-y", "50",
                   script)  # fmt: skip

    def _tmux(self, *args: str) -> str:
        proc = subprocess.run(
            [*self.tmux, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args[:3])} failed: {proc.stderr}")
        return proc.stdout

    def text(self) -> str:
        """Everything the terminal shows and scrolled past, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "shell")

    def wait_for(self, pattern: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Poll the terminal until ``pattern`` (a regex) shows; return the whole text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} not shown within {timeout:g} s; the terminal:\n{text[-6000:]}"
                )
            time.sleep(0.5)

    def type(self, keys: str, *, enter: bool = True) -> None:
        self._tmux("send-keys", "-t", "shell", "-l", keys)
        if enter:
            self._tmux("send-keys", "-t", "shell", "Enter")

    def started(self) -> str:
        """Wait for IPython's first prompt (after the banner); return the banner, its
        whitespace (line wrapping) made single spaces."""
        text = self.wait_for(r"In \[1\]: ", START_TIMEOUT)
        return " ".join(text[: text.index("In [1]: ")].split())

    def run(self, line: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Type ``line`` at the prompt, wait for the next prompt, return what it printed."""
        here, after = f"In [{self.prompt}]: ", f"In [{self.prompt + 1}]: "
        self.type(line)
        text = self.wait_for(re.escape(after), timeout)
        self.prompt += 1
        return text[text.rindex(here) : text.rindex(after)]

    def exit(self) -> None:
        self.type("exit")
        self.wait_for(r"\[shell exited 0\]", COMMAND_TIMEOUT)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, timeout=60)


@pytest.fixture
def shell_env(sim, tmp_path, free_port) -> Iterator[tuple[dict[str, str], Settings]]:
    """Environment of a ``hutch shell`` on the worker's simulator, with a data directory and
    catalogue of its own (stopped at the end), no display, IPython's own files in tmp."""
    settings = Settings(data_dir=tmp_path / "data", catalog_port=free_port())
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(ca_client_env(*sim.ports))
    env.update(
        HUTCH_DATA_DIR=str(settings.data_dir),
        HUTCH_CATALOG_PORT=str(settings.catalog_port),
        IPYTHONDIR=str(tmp_path / "ipython"),
        MPLBACKEND="Agg",
        TERM="tmux-256color",
    )
    try:
        yield env, settings
    finally:
        stop_catalog(settings)


def _shell(tmp_path: Path, env: dict[str, str], *args: str) -> Terminal:
    # `hutch shell`, as the console script runs it.
    return Terminal(tmp_path, [sys.executable, "-m", "hutch.cli", "shell", *args], env)


def _positioner(text: str, name: str) -> float:
    """The value column of ``name``'s row in a ``%wa``-style table."""
    match = re.search(rf"^\s+{name}\s+(-?\d+\.\d+)\s", text, re.MULTILINE)
    assert match, f"no row for {name} in:\n{text}"
    return float(match.group(1))


def test_shell_scans_moves_counts_and_keeps_metadata_across_sessions(shell_env, tmp_path):
    env, settings = shell_env
    term = _shell(tmp_path, env, "--profile", "demo")
    try:
        banner = term.started()
        assert "8 connected: sample_x sample_y slit_gap ring_current det panda1 det1 det2" in banner
        assert "NOT CONNECTED" not in banner
        assert f"PNGs in {settings.plot_dir} (no display)" in banner
        assert "%wa" in banner and "scan" in banner

        out = term.run("RE(scan([det], sample_x, 0, 1, 3))")
        match = re.search(r"run_start_uids=\('([0-9a-f-]{36})',\)", out)
        assert match, out
        uid = match.group(1)
        assert "exit_status='success'" in out
        assert "det-diode" in out  # the live table

        # A refusal is one line, and nothing moved.
        out = term.run("RE(scan([det], sample_x, 0, 50, 3))")
        assert "refused: scan: sample_x stop 50 mm is outside sample_x's soft limits" in out
        assert "Traceback" not in out

        out = term.run("%wa")
        assert abs(_positioner(out, "sample_x") - 1.0) < 1e-3  # where the scan ended
        assert re.search(r"^\s+slit_gap\s.*mm\s+\(ophyd\)$", out, re.MULTILINE), out
        assert re.search(r"ring_current-current\s+\d", out), out
        assert "Detectors writing files (read within runs): panda1, det1, det2" in out

        out = term.run("%mov sample_x 0.5")
        assert abs(_positioner(out, "sample_x") - 0.5) < 1e-3
        out = term.run("%movr sample_x 0.25")
        assert abs(_positioner(out, "sample_x") - 0.75) < 1e-3
        out = term.run("%wa sample_x")
        assert abs(_positioner(out, "sample_x") - 0.75) < 1e-3

        out = term.run("%ct")
        assert re.search(r"^\s+det-diode\s+\d+$", out, re.MULTILINE), out
        assert "sample_x-user_setpoint" not in out  # the counted reading, not the baseline
        count_uid = re.search(r"run ([0-9a-f-]{36}) \(success\)", out).group(1)

        assert "RE.md['proposal'] = 'p-1'" in term.run('proposal("p-1")')
        assert "'count'" in term.run('catalog[-1].metadata["start"]["plan_name"]')
        out = term.run(f'catalog["{uid}"].metadata["stop"]["num_events"]')
        assert "'primary': 3" in out

        # Tab completion of an ophyd-async device's children.
        term.type("sample_x.user_rea", enter=False)
        term._tmux("send-keys", "-t", "shell", "Tab")
        term.wait_for(r"sample_x\.user_readback", 30)
        assert "ca://DEMO:SAMPLE:X.RBV" in term.run(".source")
        term.exit()
    finally:
        term.close()

    # What the catalogue holds, read from outside the shell.
    runs = runs_container(ensure_catalog(settings), "demo")
    start, stop = runs[uid].metadata["start"], runs[uid].metadata["stop"]
    assert (start["plan_name"], stop["exit_status"]) == ("scan", "success")
    assert stop["num_events"]["primary"] == 3
    assert runs[count_uid].metadata["start"]["plan_name"] == "count"
    assert list(settings.plot_dir.glob(f"*{uid[:8]}*.png"))

    # A new shell: the proposal set in the last one is still RE.md's, and goes into runs.
    term = _shell(tmp_path, env, "--profile", "demo")
    try:
        banner = term.started()
        assert "proposal='p-1'" in banner
        assert "'p-1'" in term.run('RE.md["proposal"]')
        assert re.search(r"Out\[\d+\]: 2$", term.run('RE.md["scan_id"]'), re.MULTILINE)
        term.run("%ct")
        out = term.run('[catalog[-1].metadata["start"][k] for k in ("proposal", "scan_id")]')
        assert "['p-1', 3]" in out
        term.exit()
    finally:
        term.close()


def test_shell_lists_devices_that_did_not_connect_and_still_scans(shell_env, tmp_path):
    env, _ = shell_env
    text = DEMO.read_text().replace('name = "demo"', 'name = "ghosts"', 1)
    text += (
        '\n[[devices]]\nname = "ghost"\nclass = "ophyd_async.epics.motor.Motor"\n'
        'prefix = "NOWHERE:M1"\n'
    )
    profile = tmp_path / "ghosts.toml"
    profile.write_text(text)
    term = _shell(tmp_path, env, "--profile", str(profile), "--timeout", "3")
    try:
        banner = term.started()
        assert "8 connected: sample_x sample_y slit_gap ring_current det panda1 det1 det2" in banner
        assert "NOT CONNECTED (1;" in banner
        match = re.search(r"ghost: missing PVs (.*?) plans ", banner)
        assert match and "NOWHERE:M1." in match.group(1), banner
        assert "DEMO:" not in match.group(1)
        assert "suspend ring_current.current < 10" in banner  # the other devices' suspender

        out = term.run("RE(scan([det], sample_x, 0, 1, 3))")
        assert "exit_status='success'" in out, out
        assert re.search(r"^NOT CONNECTED\s+ghost: missing NOWHERE:M1\.", term.run("%wa"), re.M)
        term.exit()
    finally:
        term.close()


def test_session_keeps_metadata_across_sessions_and_profile_fills_only_the_rest(sim, tmp_path):
    # ``sim`` first: building ophyd (v1) devices starts libca, which must see the simulator.
    settings = Settings(data_dir=tmp_path)
    profile = load_profile("demo")

    def session(**options) -> Session:
        return offline_session(profile, settings, **options)

    with session(persist_md=True) as first:
        assert first.RE.md["proposal"] == "commissioning"  # the profile's default
        first.RE.md["proposal"] = "p-42"
        first.RE.md["sample"] = {"name": "LaB6", "temperature": 295}
    with session(persist_md=True, md={"operator": "night shift"}) as second:
        md = second.RE.md
        assert md["proposal"] == "p-42"
        assert md["sample"] == {"name": "LaB6", "temperature": 295}
        assert (md["facility"], md["beamline"]) == ("HUTCH", "demo")
        assert md["operator"] == "night shift"  # the session's md= still wins
        assert set(md["devices"]) == {d.name for d in profile.devices}
    with session() as other:  # without persist_md nothing is read or written
        assert other.RE.md["proposal"] == "commissioning"


def test_where_all_reads_both_device_generations(session):
    d = session.devices
    session.RE(bps.mv(d["sample_x"], 0.25, d["slit_gap"], 1.5))
    report = where_all(d, {"ghost": ["NOWHERE:M1.VAL", "NOWHERE:M1.RBV"]})
    rows = {p.name: p for p in report.positioners}
    assert abs(rows["sample_x"].value - 0.25) < 1e-3 and rows["sample_x"].units == "mm"
    assert (rows["sample_x"].low, rows["sample_x"].high) == (-10.0, 10.0)
    assert rows["slit_gap"].generation == "ophyd" and abs(rows["slit_gap"].value - 1.5) < 1e-3
    readings = {r.name: r for r in report.readings}
    assert readings["ring_current"].values["ring_current-current"] > 0
    assert set(readings["det"].values) >= {"det-I0", "det-diode"}
    assert report.file_writers == ["panda1", "det1", "det2"]
    text = format_where_all(report)
    assert "NOT CONNECTED    ghost: missing NOWHERE:M1.VAL, NOWHERE:M1.RBV" in text
    session.RE(bps.mv(d["sample_x"], 0.0, d["slit_gap"], 1.0))  # as the simulator starts
