"""HDF5 building blocks of hutch's NeXus files: names, values, and the growing columns of a
stream's data keys (`hutch.callbacks.nexus`)."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any

import h5py
import numpy as np

__all__ = [
    "STRING",
    "Column",
    "coerce",
    "create_column",
    "free_name",
    "iso",
    "nx_name",
    "scalar",
    "set_class",
    "to_json",
    "write_fields",
]

logger = logging.getLogger("hutch.callbacks.nexus")

STRING = h5py.string_dtype()


def iso(timestamp: float) -> str:
    """ISO 8601 in the local timezone, with its UTC offset."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat()


def to_json(doc: Any) -> str:
    """``doc`` as JSON; numpy values as lists, anything else unknown as its repr."""

    # Documents may hold numpy scalars/arrays or tuples; keep the note readable rather than fail.
    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic | np.ndarray):
            return obj.tolist()
        return repr(obj)

    return json.dumps(doc, default=default, sort_keys=True)


def nx_name(name: str) -> str:
    """A valid NeXus name for ``name``: letters, digits and '_', not starting with a digit."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", str(name))
    return name if name and not name[0].isdigit() else f"_{name}"


def set_class(group: h5py.Group, nx_class: str) -> h5py.Group:
    group.attrs["NX_class"] = nx_class
    return group


def free_name(group: h5py.Group, name: str) -> str:
    """``name``, or ``name_2``, ``name_3``... if ``group`` already holds that name."""
    candidate, n = name, 1
    while candidate in group:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def row_dtype(data_key: dict[str, Any]) -> np.dtype:
    """HDF5 element type for one data key (event-model dtype, refined by dtype_numpy for arrays)."""
    if data_key.get("external"):
        return STRING  # unfilled external data: the event holds a datum id
    kind = data_key.get("dtype")
    if kind == "integer":
        return np.dtype("int64")
    if kind == "boolean":
        return np.dtype("bool")
    if kind == "string":
        return STRING
    if kind == "array" and data_key.get("dtype_numpy"):
        try:
            dtype = np.dtype(data_key["dtype_numpy"])
        except TypeError:
            return np.dtype("float64")
        return STRING if dtype.kind in "OSU" else dtype
    return np.dtype("float64")


def fill_value(dtype: np.dtype) -> Any:
    """What a row holds until written: NaN for floats so a gap cannot pass for a reading."""
    return np.nan if dtype.kind in "fc" else None


def coerce(value: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """One row of ``shape`` and ``dtype``; shorter/longer waveforms are padded/cut to fit."""
    if dtype == STRING:
        if shape:
            return np.asarray(value, dtype=object).astype(str).astype(object)
        return np.asarray(value if isinstance(value, str) else str(value), dtype=object)
    array = np.asarray(value)
    if dtype.kind in "iub" and array.dtype.kind in "fc" and np.any(array != np.round(array)):
        # Integer-typed key (dtype guessed from an initial integer value) now reads a fraction.
        raise ValueError(f"{value!r} would be truncated to {dtype}")
    array = array.astype(dtype, copy=False)
    if array.shape == shape:
        return array
    if array.ndim != len(shape):
        raise ValueError(f"shape {array.shape} does not fit declared shape {shape}")
    row = np.full(shape, fill_value(dtype) or 0, dtype=dtype)
    overlap = tuple(slice(0, min(a, b)) for a, b in zip(array.shape, shape, strict=True))
    row[overlap] = array[overlap]
    return row


def _chunks(dtype: np.dtype, shape: tuple[int, ...]) -> tuple[int, ...]:
    """About 1 MiB per chunk along the event axis; one frame per chunk for big frames."""
    row = tuple(max(1, n) for n in shape)
    row_bytes = max(1, dtype.itemsize) * int(np.prod(row))
    return (max(1, min(1024, 2**20 // row_bytes)), *row)


def scalar(value: Any) -> Any:
    """A value h5py stores as a scalar dataset: numbers as they are, anything else as text."""
    array = np.asarray(value)
    if array.dtype.kind in "biufc":
        return value
    return str(value) if array.ndim == 0 else to_json(value)


def write_fields(group: h5py.Group, fields: dict[str, Any]) -> None:
    """Metadata fields: ``{"value": v, "units": u}`` dicts become a field with units."""
    for key, value in fields.items():
        if value is None:
            continue
        units = None
        if isinstance(value, dict) and "value" in value:
            value, units = value["value"], value.get("units")
        dataset = group.create_dataset(free_name(group, nx_name(key)), data=scalar(value))
        if units:
            dataset.attrs["units"] = str(units)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc":
        return bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))
    return bool(np.all(a == b))


class Column:
    """The growing datasets of one data key: values and their timestamps.

    Their length, row shape and dtype are kept here: asking h5py costs an HDF5 call each.
    A column of 1-D arrays also keeps its first row and whether every row so far equals it
    (``constant``): such a field (a radial axis ``q`` given with every point) is shown as one
    1-D axis of the signal (`hutch.callbacks.nexus_layout`).
    """

    def __init__(self, values: h5py.Dataset, timestamps: h5py.Dataset) -> None:
        self.values, self.timestamps = values, timestamps
        self.length = values.shape[0]
        self.row_shape: tuple[int, ...] = values.shape[1:]
        self.dtype = values.dtype
        self.reference: np.ndarray | None = None
        self.constant = len(self.row_shape) == 1 and self.dtype.kind in "biuf"

    def write(self, rows: list[int], values: list[Any], timestamps: list[float]) -> bool:
        """Write one value per row index, growing the column as needed (never shrinking).

        A page of consecutive rows is one HDF5 write per dataset; a page with gaps, missing
        values or a value that does not fit is written row by row. Returns whether the
        column's ``reference`` or ``constant`` changed.
        """
        n = max(self.length, max(rows) + 1)
        if n > self.length:
            self.values.resize(n, axis=0)
            self.timestamps.resize(n, axis=0)
            self.length = n
        first, count = rows[0], len(rows)
        if rows == list(range(first, first + count)):
            self.timestamps[first : first + count] = timestamps
            block = self._block(values)
            if block is not None:
                self.values[first : first + count] = block
                return self._track(list(block))
        else:
            for i, timestamp in zip(rows, timestamps, strict=True):
                self.timestamps[i] = timestamp
        written = []
        for i, value in zip(rows, values, strict=True):
            if value is None:  # key missing from this event: leave the fill value
                continue
            try:
                row = coerce(value, self.dtype, self.row_shape)
            except (TypeError, ValueError) as err:
                # Keep the row (fill value) so every column of the stream stays aligned.
                logger.warning("%s row %d not written: %s", self.values.name, i, err)
                continue
            self.values[i] = row
            written.append(row)
        return self._track(written)

    def _track(self, rows: list[np.ndarray]) -> bool:
        if not self.constant or not rows:
            return False
        changed = self.reference is None
        if changed:
            self.reference = np.array(rows[0], dtype=self.dtype)
        if not all(_same(np.asarray(row), self.reference) for row in rows):
            self.constant, changed = False, True
        return changed

    def _block(self, values: list[Any]) -> np.ndarray | None:
        """All of a page's values as one array of the column's type, or None if one of them
        is missing or does not fit (then each row is written, or reported, on its own)."""
        if any(value is None for value in values):
            return None
        dtype, row_shape = self.dtype, self.row_shape
        try:
            if dtype != STRING:
                block = np.asarray(values)
                if block.shape == (len(values), *row_shape) and not (
                    dtype.kind in "iub" and block.dtype.kind in "fc"
                ):
                    return block.astype(dtype, copy=False)
            return np.stack([coerce(value, dtype, row_shape) for value in values])
        except (TypeError, ValueError):
            return None


def create_column(home: h5py.Group, name: str, data_key: dict[str, Any], rows: int) -> Column:
    """The datasets of one data key in ``home``: ``name`` and ``name_timestamps``, ``rows``
    long already (rows written for the stream before read as fill values: columns stay
    aligned)."""
    dtype = row_dtype(data_key)
    external = data_key.get("external")
    shape = () if external else tuple(int(n) for n in data_key.get("shape") or ())
    values = home.create_dataset(
        name,
        shape=(rows, *shape),
        maxshape=(None, *shape),
        chunks=_chunks(dtype, shape),
        dtype=dtype,
        fillvalue=fill_value(dtype),
    )
    # scippnexus takes an unlabelled dimension to be dim_<i> only in the signal: labelled,
    # a waveform beside a scalar signal has dimensions it can tell (dim_0: the point).
    for i in range(1, values.ndim):
        values.dims[i].label = f"dim_{i}"
    if data_key.get("units"):
        values.attrs["units"] = str(data_key["units"])
    if data_key.get("source"):
        values.attrs["source"] = str(data_key["source"])
    if external:
        values.attrs["external"] = str(external)
    timestamps = home.create_dataset(
        free_name(home, f"{name}_timestamps"),
        shape=(rows,),
        maxshape=(None,),
        chunks=(1024,),
        dtype="float64",
        fillvalue=np.nan,
    )
    timestamps.attrs["units"] = "s"
    return Column(values, timestamps)
