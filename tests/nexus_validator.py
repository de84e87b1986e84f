"""The NeXus project's validators run on a file: punx (definitions v2018.5, which it ships) and
nxvalidate's ``nxinspect`` (current definitions, which it ships). Both work offline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py

_PUNX = Path(sys.executable).with_name("punx")
_PUNX_ROW = re.compile(r"^(\S+)\s+(OK|NOTE|WARN|ERROR|TODO|OPTIONAL|UNUSED|COMMENT)\s+(.*\S)\s*$")
# nxvalidate sizes its log lines to the terminal and fails without one: give it a size.
_NXINSPECT = (
    "import os, sys; os.get_terminal_size = lambda *a: os.terminal_size((200, 50)); "
    "from nxvalidate.scripts.nxinspect import main; sys.argv[0] = 'nxinspect'; main()"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def punx_problems(path: Path) -> list[tuple[str, str, str]]:
    """punx's findings that are errors or warnings ('not generally acceptable').

    punx 0.3.5 cannot check files with external links (it catalogues a linked dataset under
    its name in the other file and fails), so those are checked by ``nxinspect_errors`` only.
    """
    done = subprocess.run(
        [str(_PUNX), "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"punx failed on {path}:\n{done.stdout}\n{done.stderr}"
    findings = [m.groups() for line in done.stdout.splitlines() if (m := _PUNX_ROW.match(line))]
    assert findings, f"punx reported nothing for {path}:\n{done.stdout}"
    return [f for f in findings if f[1] in ("ERROR", "WARN")]


def nxinspect_errors(path: Path) -> list[str]:
    """The errors nxvalidate's ``nxinspect -f`` reports for the file's base classes."""
    done = subprocess.run(
        [sys.executable, "-c", _NXINSPECT, "-f", str(path), "-e"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = _ANSI.sub("", done.stdout + done.stderr)
    assert done.returncode == 0, f"nxinspect failed on {path}:\n{out}"
    total = re.search(r"Total number of errors: (\d+)", out)
    assert total, f"nxinspect did not report on {path}:\n{out}"
    return [] if total.group(1) == "0" else [out]


def _external_links(group: h5py.Group) -> bool:
    for name in group:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            return True
        member = group[name] if isinstance(link, h5py.HardLink) else None
        if isinstance(member, h5py.Group) and _external_links(member):
            return True
    return False


def problems(path: Path) -> list:
    """Every error either validator finds, and punx's warnings (punx only on files without
    external links, which it cannot follow: ``punx_problems``)."""
    with h5py.File(path, "r") as f:
        linked = _external_links(f)
    return ([] if linked else punx_problems(path)) + nxinspect_errors(path)
