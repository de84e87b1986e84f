"""hutch: beamline control and data acquisition on the bluesky ecosystem."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hutch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
