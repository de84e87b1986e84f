"""Plans offered by hutch: bluesky's standard plans plus beamline procedures.

A profile's ``plans`` list names plans from this module's ``__all__`` (which lists nothing
else); the CLI and the queue server offer exactly those. Every one of them checks its
arguments when called and its motors' soft limits before its run opens
(`hutch.plans.checks`): a bad argument is refused with `ScanArgumentError` before anything
moves.
"""

import bluesky.plans as _bp

from .align import AlignmentError, AlignResult, align  # noqa: F401  (results of align)
from .centroid import CentroidResult, center_on_centroid  # noqa: F401
from .checks import ScanArgumentError, checked  # noqa: F401  (its refusals)
from .choppers import BandResult, park_choppers, set_wavelength_band  # noqa: F401
from .count_until import CountResult, count_until  # noqa: F401
from .fly import DeviceFailure, fly_scan, snake_fly_scan, step_scan  # noqa: F401
from .reduced import ReductionError  # noqa: F401  (a steering plan's reduction failed)
from .tof import tof_count

count = checked(_bp.count)
grid_scan = checked(_bp.grid_scan)
list_scan = checked(_bp.list_scan)
log_scan = checked(_bp.log_scan)
rel_grid_scan = checked(_bp.rel_grid_scan)
rel_list_scan = checked(_bp.rel_list_scan)
rel_scan = checked(_bp.rel_scan)
scan = checked(_bp.scan)
scan_nd = checked(_bp.scan_nd)

__all__ = [
    "align",
    "center_on_centroid",
    "count",
    "count_until",
    "fly_scan",
    "grid_scan",
    "list_scan",
    "log_scan",
    "park_choppers",
    "rel_grid_scan",
    "rel_list_scan",
    "rel_scan",
    "scan",
    "scan_nd",
    "set_wavelength_band",
    "snake_fly_scan",
    "step_scan",
    "tof_count",
]
