"""hutch: beamline control and data acquisition on the bluesky ecosystem."""

from importlib.metadata import PackageNotFoundError, version

# pyepics (ophyd v1) and aioca (ophyd-async) must share epicscorelibs' libca: two copies of
# libca in one process stall ophyd's subscriptions. This only works before epics.ca loads.
import epicscorelibs.path.pyepics  # noqa: F401

try:
    __version__ = version("hutch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
