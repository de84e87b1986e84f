"""The arrays a run's StreamResource and StreamDatum documents point at, read from the HDF5
files the detectors wrote (area-detector frames, PandA captures).

event-model's ``Filler`` fills the older Resource/Datum documents only; for StreamDatum the
field's readers are tiled's adapters, which need a catalogue. Reductions and plots read the
files the documents name directly, as they are written: the detectors write them in SWMR
mode and count a frame only once it is flushed, so a StreamDatum's rows are in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = ["ExternalArrays", "resource_path"]

_HDF5 = ("application/x-hdf5", "application/x-hdf5-swmr", None)


def resource_path(doc: dict[str, Any]) -> Path:
    """The file a StreamResource names (``file://host/path``, or a path under ``root``)."""
    uri = str(doc.get("uri") or "")
    path = Path(uri.removeprefix("file://localhost").removeprefix("file://"))
    if not path.is_absolute():
        path = Path(doc.get("root", "/")) / path
    return path


class ExternalArrays:
    """Resolves StreamDatum documents into the rows they index.

    Feed it each ``stream_resource`` and call ``stream_datum(doc)`` for the data key, the
    seq_nums and the array (first dimension: one row per seq_num) of each StreamDatum,
    read from the file as it is then (read-only, as an SWMR reader where written so).
    """

    def __init__(self) -> None:
        self._resources: dict[str, dict[str, Any]] = {}

    def stream_resource(self, doc: dict[str, Any]) -> None:
        self._resources[doc["uid"]] = doc

    def stream_datum(self, doc: dict[str, Any]) -> tuple[str, range, np.ndarray]:
        """(data key, seq_nums, rows) of one StreamDatum; a `KeyError` for a resource not
        seen, an `OSError` naming the file if it cannot be read."""
        resource = self._resources[doc["stream_resource"]]
        if resource.get("mimetype") not in _HDF5:
            raise OSError(
                f"{resource['data_key']}: cannot read {resource.get('mimetype')} data "
                f"({resource.get('uri')})"
            )
        seq = doc["seq_nums"]
        indices = doc["indices"]
        path = resource_path(resource)
        dataset_name = (resource.get("parameters") or {}).get("dataset", "/entry/data/data")
        rows = self._read(path, dataset_name, int(indices["start"]), int(indices["stop"]))
        return resource["data_key"], range(int(seq["start"]), int(seq["stop"])), rows

    @staticmethod
    def _read(path: Path, dataset_name: str, start: int, stop: int) -> np.ndarray:
        # A fresh open per read: an HDF5 SWMR reader that keeps the file open was seen to
        # return an earlier frame's data for a frame appended since (its cached chunk
        # index), even after refreshing the dataset. Opening costs well under a
        # millisecond; a StreamDatum of a fly scan covers many frames.
        try:
            file = h5py.File(path, "r", swmr=True)
        except OSError:  # not written for SWMR readers (an older file format)
            try:
                file = h5py.File(path, "r")
            except OSError as err:
                raise OSError(f"cannot read {path}: {err}") from None
        with file:
            dataset = file[dataset_name]
            if dataset.shape[0] < stop:
                raise OSError(
                    f"{path}: {dataset_name} holds {dataset.shape[0]} rows, the document "
                    f"names rows {start} to {stop - 1}"
                )
            return np.asarray(dataset[start:stop])

    def forget(self, run_resources: set[str]) -> None:
        """Drop the resources ``run_resources`` (a run has ended)."""
        for uid in run_resources:
            self._resources.pop(uid, None)

    def close(self) -> None:
        self._resources.clear()
