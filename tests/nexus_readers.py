"""What NeXus readers make of a file: scippnexus (ESS), silx (ESRF) and nexusformat (NeXpy)
open every NXdata group, and every detector or monitor group holding data, with its signal
and axes, without falling back to a plain group or to index axes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import scipp as sc
import scippnexus as snx
from nexusformat.nexus import nxload
from silx.io.nxdata import NXdata

PLOTTED = ("NXdata",)
COMPONENTS = ("NXdetector", "NXmonitor")


@dataclass
class Read:
    """One group as the readers read it."""

    path: str
    nx_class: str
    scipp: sc.DataArray  # scippnexus: the group (NXdata) or its signal (NXdetector, NXmonitor)
    silx_axes: list[str | None] | None = None  # NXdata only
    nexusformat_axes: list[str] | None = None  # NXdata only


def _groups(f: h5py.File) -> dict[str, str]:
    """Every NXdata, NXdetector and NXmonitor group in the file (not through external
    links: those are the linked file's), by path."""
    found: dict[str, str] = {}

    def visit(name: str, obj) -> None:
        nx_class = obj.attrs.get("NX_class") if isinstance(obj, h5py.Group) else None
        if nx_class in PLOTTED + COMPONENTS:
            found[name] = str(nx_class)

    f.visititems(visit)
    return found


def _signal_of(group: h5py.Group) -> str | None:
    if "signal" in group.attrs:
        return str(group.attrs["signal"])
    return "data" if "data" in group else None


def read_all(path: Path) -> dict[str, Read]:
    """Every plottable group of the file, read by the three readers; fails on any fallback."""
    with h5py.File(path, "r") as f:
        groups = {p: c for p, c in _groups(f).items() if _signal_of(f[p]) is not None}
        signals = {p: _signal_of(f[p]) for p in groups}
        silx = {}
        for p, nx_class in groups.items():
            if nx_class in PLOTTED:
                nxdata = NXdata(f[p])
                assert nxdata.is_valid, f"silx: {path}:/{p}: {nxdata.issues}"
                silx[p] = nxdata.axes_dataset_names

    reads: dict[str, Read] = {}
    with snx.File(path, "r") as f, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p, nx_class in groups.items():
            loaded = f[p][()]
            scipp = loaded if nx_class in PLOTTED else loaded[signals[p]]
            assert isinstance(scipp, sc.DataArray), f"scippnexus: {path}:/{p}: {type(loaded)}"
            reads[p] = Read(p, nx_class, scipp, silx.get(p))
    fallbacks = [str(w.message) for w in caught if "Falling back" in str(w.message)]
    assert not fallbacks, fallbacks

    root = nxload(str(path))
    for p, read in reads.items():
        if read.nx_class in PLOTTED:
            group = root[p]
            assert group.nxsignal is not None, f"nexusformat: {path}:/{p} has no signal"
            assert group.nxsignal.nxname == signals[p]
            axes = group.plot_axes
            assert group.nxsignal.valid_axes(axes), f"nexusformat: {path}:/{p}: {axes}"
            read.nexusformat_axes = [axis.nxname for axis in group.nxaxes]
    root.close()
    return reads
