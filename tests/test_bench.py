"""``hutch bench``'s NeXus throughput, fly scan, metadata search, start-up and reduction
tables, run small: the rows are produced with positive numbers (their values are the bench's
business, not the tests')."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hutch.bench import DEFAULT_TABLES, TABLES, BenchRow, run_bench
from hutch.bench import search as bench_search
from hutch.bench import startup as bench_startup
from hutch.bench.search import search_latency
from hutch.cli import main


@pytest.fixture(autouse=True)
def _private_catalogue(monkeypatch, free_port):
    """The bench's catalogues on this worker's ports, never on an external catalogue."""
    monkeypatch.delenv("HUTCH_CATALOG_URI", raising=False)
    monkeypatch.delenv("HUTCH_CATALOG_API_KEY", raising=False)
    monkeypatch.setattr(bench_search, "free_port", free_port)
    monkeypatch.setattr(bench_startup, "free_port", free_port)


def test_help_names_every_table(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    shown = capsys.readouterr().out
    assert all(name in shown for name in TABLES)


def test_an_unknown_table_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "nexus", "nonesuch"])
    assert "nonesuch" in capsys.readouterr().err


def test_nexus_throughput_table(demo_profile, tmp_path, capsys):
    rows = run_bench(demo_profile, tables=["nexus"], events=20, data_dir=tmp_path)
    assert len(rows) == 8  # raw h5py and NexusWriter: 2 streams x single events and pages
    for row in rows:
        assert row.ms > 0 and row.events_per_s > 0 and row.mb_per_s > 0 and row.ratio > 0
    writers = [r for r in rows if r.name.startswith("NexusWriter")]
    assert len(writers) == 4
    assert all(r.met is not None and r.baseline.startswith("raw h5py") for r in writers)
    out = capsys.readouterr().out
    assert "NeXus writer throughput" in out and "Run time: nexus" in out
    assert not [p for p in (tmp_path / "bench").rglob("*") if p.is_file()], "files left"


# libca is configured once per process, for the bench's own simulator: the fly table runs in
# a process of its own, on this worker's ports.
_FLY = """
import sys
from pathlib import Path

import hutch.bench.ca
from hutch.profile import load_profile

data_dir, *ports = sys.argv[1:]
hutch.bench.ca.free_port = lambda: int(ports.pop())
hutch.bench.run_bench(load_profile("demo"), tables=["fly"], fly_seconds=0.3, fly_frames=50,
                      data_dir=Path(data_dir), as_json=True)
"""


def test_fly_table(tmp_path, free_port):
    """The PandA captures a 1 MHz clock without loss (the table fails otherwise) beside raw
    h5py; the area detector's fly scan writes and catalogues its frames (ditto)."""
    ports = [str(free_port()) for _ in range(4)]
    proc = subprocess.run(
        [sys.executable, "-c", _FLY, str(tmp_path), *ports],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tables"] == ["fly"] and not out["errors"]
    rows = {r["name"].split(":")[0]: r for r in out["rows"]}
    assert list(rows) == [
        "raw h5py append",
        "PandA capture (CLOCK at 1 MHz)",
        "detector nominal rate",
        "area detector, fly scan end to end",
    ]
    for row in rows.values():
        assert row["ms"] > 0 and row["events_per_s"] > 0 and row["ratio"] > 0
    panda = rows["PandA capture (CLOCK at 1 MHz)"]
    assert "zero loss" in panda["name"] and panda["unit"] == "ms/point"
    assert panda["min_rate"] == 1e6 and panda["met"] is not None
    assert "50 frames" in rows["area detector, fly scan end to end"]["name"]
    assert not [p for p in (tmp_path / "bench").rglob("*") if p.is_file()], "files left"


def test_search_over_a_small_catalogue(tmp_path):
    said: list[str] = []
    rows = search_latency(tmp_path, runs=60, repeats=2, log=said.append)
    assert [r.name.split(":")[0] for r in rows] == [
        "run_summaries",
        "by sample",
        "by proposal and time range",
        "by plan_name",
        "by exit_status",
        "by free text",
    ]
    assert all(isinstance(r, BenchRow) and 0 < r.ms <= r.worst_ms for r in rows)
    by = {r.name.split(":")[0]: r for r in rows}
    # Every sample and plan searched for is in the catalogue.
    assert by["by sample"].found >= 1 and by["by plan_name"].found >= 1
    assert by["run_summaries"].found == 20
    assert any("populated 60 runs" in line for line in said)
    # What makes the next bench search this catalogue instead of populating another.
    home = tmp_path / "bench" / bench_search._cache_version(60)
    marker = json.loads((home / "populated.json").read_text())
    assert marker["version"] == home.name and marker["runs"] == 60 and marker["queries"]
    assert (home / "catalog" / "catalog.db").is_file()


def test_startup_table(demo_profile, tmp_path, capsys):
    """hutch shell, hutch run and hutch queue up, each started once beside the baseline, on
    the table's own simulator, catalogue and queue ports."""
    rows = run_bench(demo_profile, tables=["startup"], startup_tries=1, data_dir=tmp_path)
    assert [r.name for r in rows] == [
        'python -c "import bluesky, ophyd_async"',
        "hutch shell, to its first prompt",
        "hutch run count '[det]', end to end",
        "hutch queue up, to ready",
    ]
    for row in rows:
        assert row.unit == "median s" and 0 < row.ms <= row.worst_ms and row.ratio > 0
    assert [r.max_ms for r in rows] == [None, 5000, 5000, 15000]
    assert all(r.met is not None for r in rows[1:])
    out = capsys.readouterr().out
    assert "Start-up" in out and "Run time: startup" in out
    assert not [p for p in (tmp_path / "bench").rglob("*") if p.is_file()], "files left"


def test_reduce_table(demo_profile, tmp_path, capsys):
    """The online-reduction tables, run small (8 frames, 128 x 128 for the large size): rows
    of every table with their units, baselines and goals; no timings are judged here."""
    assert "reduce" in TABLES and "reduce" in DEFAULT_TABLES
    rows = run_bench(
        demo_profile, tables=["reduce"], reduce_frames=8, reduce_side=128, data_dir=tmp_path
    )
    tables = list(dict.fromkeys(r.table for r in rows))
    assert [t.split(" ")[0] for t in tables] == ["Azimuthal", "ROI", "Keep-up:", "Latency,"]
    names = [r.name.split(",")[0] for r in rows]
    assert names == [
        *["pyFAI integrate1d", "pyFAI integrate1d", "AzimuthalIntegration via ReductionRunner"] * 2,
        *["numpy frames.sum(axis=(1", "numpy sum", "RoiStatistics via ReductionRunner"] * 2,
        "det1 maximum frame rate: 1 / (0.5 ms exposure + 2 ms readout)",
        "det1_spot in the recorder's reduction lane",
        "det2 maximum frame rate: 1 / (0.5 ms exposure + 2 ms readout)",
        "det2_powder in the recorder's reduction lane",
        *["det1_spot"] * 2,
        *["det2_powder"] * 2,
    ]
    assert "det2 256x256" in rows[0].name and "128x128" in rows[3].name
    assert "det1 128x96" in rows[6].name and "128x128" in rows[9].name
    for row in rows:
        # Every row is a ratio against a row of its own table measured in this run.
        assert row.baseline in [r.name for r in rows if r.table == row.table]
        assert row.ms > 0 and row.ratio > 0
        if row.table == tables[-1]:
            assert row.unit == "median ms" and row.ratio_of == "time"
            assert row.ms <= row.p95_ms <= row.worst_ms
        else:
            assert row.unit == "ms/frame" and row.ratio_of == "rate" and row.events_per_s > 0
    goals = {r.name.split(",")[0]: r.min_ratio for r in rows if r.min_ratio is not None}
    assert goals == {
        "AzimuthalIntegration via ReductionRunner": 0.9,
        "det1_spot in the recorder's reduction lane": 1.0,
        "det2_powder in the recorder's reduction lane": 1.0,
    }
    assert all(r.met is not None for r in rows if r.min_ratio is not None)
    out = capsys.readouterr().out
    assert "p95 ms" in out and "Run time: reduce" in out
    assert not [p for p in (tmp_path / "bench").rglob("*") if p.is_file()], "files left"
