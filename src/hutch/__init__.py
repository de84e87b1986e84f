"""hutch: beamline control and data acquisition on the bluesky ecosystem."""

import atexit
import gc
import importlib.util
import sys
from typing import Any


def _runtime_of_setuptools_dso() -> None:
    """Let ``setuptools_dso.runtime`` load without ``setuptools_dso/__init__``.

    epicscorelibs finds its libraries with ``setuptools_dso.runtime`` (stdlib only), but
    importing it runs the package's ``__init__``, which imports setuptools and
    pkg_resources, for building extensions: 0.45 s of the start-up of every process that
    uses Channel Access. The package is registered without running its ``__init__``; the
    first use of anything else of it (a build) runs the ``__init__`` then.
    """
    if "setuptools_dso" in sys.modules:
        return
    spec = importlib.util.find_spec("setuptools_dso")
    if spec is None or spec.loader is None:
        return
    package = importlib.util.module_from_spec(spec)

    def build_time(name: str) -> Any:
        del package.__getattr__
        spec.loader.exec_module(package)  # type: ignore[union-attr]
        return getattr(package, name)

    package.__getattr__ = build_time  # type: ignore[attr-defined]
    sys.modules["setuptools_dso"] = package


_runtime_of_setuptools_dso()

# pyepics (ophyd v1) and aioca (ophyd-async) must share epicscorelibs' libca: two copies of
# libca in one process stall ophyd's subscriptions. This only works before epics.ca loads.
import epicscorelibs.path.pyepics  # noqa: E402, F401

# At exit, after every other exit handler (registered first, so run last): what is still
# alive then dies with the process, so the interpreter's last garbage collections need not
# walk it (0.5 s and more for a session's objects, at the end of every command).
atexit.register(gc.freeze)


def __getattr__(name: str) -> Any:
    # From the installed metadata, on first use only (importlib.metadata scans sys.path).
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("hutch")
        except PackageNotFoundError:  # running from a source tree that is not installed
            value = "0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module 'hutch' has no attribute {name!r}")
