"""Plans offered by hutch: bluesky's standard plans plus beamline procedures.

A profile's ``plans`` list names plans from this module's ``__all__``; the CLI and the queue
server offer exactly those.
"""

from bluesky.plans import (
    count,
    grid_scan,
    list_scan,
    log_scan,
    rel_grid_scan,
    rel_list_scan,
    rel_scan,
    scan,
    scan_nd,
)

from .align import AlignmentError, AlignResult, align  # noqa: F401  (results of align)
from .fly import DeviceFailure, ScanArgumentError, fly_scan, snake_fly_scan, step_scan  # noqa: F401

__all__ = [
    "align",
    "count",
    "fly_scan",
    "grid_scan",
    "list_scan",
    "log_scan",
    "rel_grid_scan",
    "rel_list_scan",
    "rel_scan",
    "scan",
    "scan_nd",
    "snake_fly_scan",
    "step_scan",
]
