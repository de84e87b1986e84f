"""``hutch bench``: tables of measured rows, each beside a baseline measured in the same run.

Every row is measured in the same process on the same machine, side by side with its
baseline, so the ratios mean something on any box; nothing here is a pass/fail test (a goal,
where a table has one, is shown met or missed). The tables (``TABLES``) can be run one by
one, each in the module named after it: Channel Access latency and step scans in
``hutch.bench.ca``, fly scans (PandA capture, area detector) in ``hutch.bench.fly``, NeXus
writer throughput in ``hutch.bench.nexus``, catalogue ingest in ``hutch.bench.ingest``,
metadata search in ``hutch.bench.search``, start-up times of the commands in
``hutch.bench.startup``, online reduction in ``hutch.bench.reduce``. `run_bench`
(``hutch.bench.run``) measures and prints them; the rows are `BenchRow` objects
(``hutch.bench.rows``), the tables' names and descriptions are in ``hutch.bench.tables``.
Importing the package imports none of the tables' libraries (bluesky, ophyd, h5py, tiled):
``hutch bench --help`` lists the tables without them.
"""

from hutch.bench.rows import BenchRow, BenchTableError, stopwatch
from hutch.bench.run import run_bench
from hutch.bench.tables import DEFAULT_TABLES, TABLES

__all__ = [
    "DEFAULT_TABLES",
    "TABLES",
    "BenchRow",
    "BenchTableError",
    "run_bench",
    "stopwatch",
]
