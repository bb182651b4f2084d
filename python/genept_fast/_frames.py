"""AnnData dataframes (``obs``, ``var``) read from an ``.h5ad`` / ``.zarr`` store without anndata.

Importing anndata costs more than a second of CPU (pandas, dask.array, its I/O registry); a
command that only needs the gene names and a column or two of ``var`` pays it for nothing.
:func:`read_frame` and :func:`read_column` read the elements of anndata's on-disk format that a
dataframe is made of, in an h5py or zarr group, and return exactly what
``anndata.io.read_elem`` returns for them (tests/test_frames.py compares the two on frames that
anndata itself writes):

- ``dataframe`` 0.2.0: the ``_index`` and ``column-order`` attributes, one element per column;
- ``array`` 0.2.0 and ``string-array`` 0.2.0 datasets (HDF5 strings read as ``str``);
- ``categorical`` 0.2.0 (``codes`` + ``categories``, the ``ordered`` attribute);
- ``nullable-integer``, ``nullable-boolean``, ``nullable-string-array`` 0.1.0 (``values`` +
  ``mask``).

Anything else (another encoding or version, an element written without encoding metadata, an
attribute in a form anndata converts) is handed to ``anndata.io.read_elem``, never guessed.

:func:`columns` reads no more than a command needs, and without pandas (~0.35 s of start-up):
a :class:`Columns` knows the frame's column names from its attributes and reads a column only
when asked, string and categorical columns as numpy object arrays.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Columns", "columns", "read_column", "read_frame"]


class _Unknown(Exception):  # an internal signal, never raised to a caller
    """An element this module does not read; anndata reads it instead."""


def _anndata_read(elem: Any) -> Any:
    from anndata.io import read_elem

    return read_elem(elem)


def _is_h5(elem: Any) -> bool:
    h5py = sys.modules.get("h5py")
    return h5py is not None and isinstance(elem, (h5py.Dataset, h5py.Group))


def _is_group(elem: Any) -> bool:
    return hasattr(elem, "keys") and not hasattr(elem, "shape")


def _attr(elem: Any, name: str, default: Any = None) -> Any:
    """An attribute as anndata's ``_read_attr`` reads it, or :class:`_Unknown` where it would
    convert a form this module does not (a fixed-length string array in HDF5)."""
    attrs = elem.attrs
    if name not in attrs:
        return default
    value = attrs[name]
    if _is_h5(elem):
        import h5py

        attr_id = attrs.get_id(name)
        dtype = h5py.check_string_dtype(attr_id.dtype)
        if dtype is not None and dtype.length is not None:
            if len(attr_id.shape) != 0:
                raise _Unknown
            return value.decode("utf-8")
    return value


def _spec(elem: Any) -> tuple[str, str]:
    kind, version = _attr(elem, "encoding-type", ""), _attr(elem, "encoding-version", "")
    if not isinstance(kind, str) or not isinstance(version, str):
        raise _Unknown
    return kind, version


def _read_array(elem: Any, kind: str) -> Any:
    if kind == "string-array" and _is_h5(elem):
        return elem.asstr()[()]
    return elem[()]


def _read_categorical(elem: Any) -> pd.Categorical:
    import pandas as pd

    return pd.Categorical.from_codes(
        codes=_read(elem["codes"]),
        categories=_read(elem["categories"]),
        ordered=bool(_attr(elem, "ordered")),
    )


def _read_nullable(elem: Any, kind: str) -> Any:
    import pandas as pd

    values, mask = _read(elem["values"]), _read(elem["mask"])
    if kind == "nullable-integer":
        return pd.arrays.IntegerArray(values, mask=mask)
    if kind == "nullable-boolean":
        return pd.arrays.BooleanArray(values, mask=mask)
    na_strings = np.dtypes.StringDType(na_object=pd.NA)  # anndata's NULLABLE_NUMPY_STRING_TYPE
    arr = pd.array(values.astype(na_strings), dtype=pd.StringDtype())
    arr[mask] = pd.NA
    return arr


_ARRAYS = {("array", "0.2.0"), ("string-array", "0.2.0")}
_NULLABLE = {"nullable-integer", "nullable-boolean", "nullable-string-array"}


def _read(elem: Any) -> Any:
    """One element of a dataframe, or :class:`_Unknown`."""
    kind, version = _spec(elem)
    if _is_group(elem):
        if (kind, version) == ("categorical", "0.2.0"):
            return _read_categorical(elem)
        if kind in _NULLABLE and version == "0.1.0":
            return _read_nullable(elem, kind)
    elif (kind, version) in _ARRAYS:
        return _read_array(elem, kind)
    raise _Unknown


def _read_or_fall_back(elem: Any) -> Any:
    try:
        return _read(elem)
    except _Unknown:
        return _anndata_read(elem)


def read_column(elem: Any) -> Any:
    """One column of an AnnData dataframe (``store["var"][name]``), as
    ``anndata.io.read_elem(elem)`` returns it: a numpy array, a ``pd.Categorical`` or a pandas
    nullable array. Read without anndata where the encoding is one this module knows."""
    return _read_or_fall_back(elem)


def _header(group: Any) -> tuple[list[str], str]:
    """A dataframe group's column names (in order) and index key, or :class:`_Unknown` where
    it is not a ``dataframe`` 0.2.0 this module reads."""
    if not _is_group(group) or _spec(group) != ("dataframe", "0.2.0"):
        raise _Unknown
    order = list(_attr(group, "column-order"))
    index_key = _attr(group, "_index")
    if not isinstance(index_key, str) or not all(isinstance(c, str) for c in order):
        raise _Unknown
    return order, index_key


def read_frame(group: Any, columns: list[str] | None = None) -> pd.DataFrame:
    """The AnnData dataframe ``group`` (``store["var"]``) as ``anndata.io.read_elem(group)``
    returns it, or only its index and ``columns`` (``read_elem(group)[columns]``).

    Raises
    ------
    KeyError
        A name of ``columns`` is not a column of the frame.
    """
    import pandas as pd

    try:
        order, index_key = _header(group)
    except _Unknown:
        frame = _anndata_read(group)
        return frame if columns is None else frame[columns]
    if columns is not None:
        missing = [c for c in columns if c not in order]
        if missing:
            raise KeyError(missing)
    index = _read_or_fall_back(group[index_key])
    if columns == []:  # read_elem(group)[[]]: the columns' index typed as the frame's
        frame = pd.DataFrame(index=index, columns=order if order else None)[[]]
    else:
        names = order if columns is None else columns
        frame = pd.DataFrame(
            {k: _read_or_fall_back(group[k]) for k in names},
            index=index,
            columns=names if names else None,
        )
    if index_key != "_index":
        frame.index.name = index_key
    return frame


def _categorical_values(elem: Any) -> np.ndarray:
    """A categorical column's values as an object array, missing values NaN: what
    ``pd.Categorical.astype(object)`` holds, read without pandas."""
    if _spec(elem) != ("categorical", "0.2.0"):
        raise _Unknown
    codes, categories = _read(elem["codes"]), _read(elem["categories"])
    if not isinstance(codes, np.ndarray) or not isinstance(categories, np.ndarray):
        raise _Unknown
    if codes.ndim != 1 or codes.dtype.kind not in "iu" or categories.ndim != 1:
        raise _Unknown
    codes = codes.astype(np.int64)
    if codes.size and (codes.min() < -1 or codes.max() >= categories.shape[0]):
        raise _Unknown  # pandas refuses such codes: let it say so
    values = np.full(codes.shape, np.nan, dtype=object)
    have = codes >= 0
    values[have] = categories.astype(object)[codes[have]]
    return values


def _values(elem: Any) -> Any:
    """One column for :class:`Columns`: a numpy array (text as objects, a categorical one
    decoded), or what :func:`read_column` returns for the encodings that need pandas."""
    try:
        if _is_group(elem):
            return _categorical_values(elem)
        values = _read(elem)
    except _Unknown:
        return read_column(elem)
    if isinstance(values, np.ndarray) and values.dtype.kind in "TUS":
        return values.astype(object)  # a DataFrame holds text (zarr's StringDType) as objects
    return values


class Columns:
    """The columns of an AnnData dataframe, each read on first use, without pandas for the
    plain, string and categorical ones (:func:`columns` opens it).

    It offers the part of a DataFrame's interface that gene matching reads
    (:func:`genept_fast.genes.match.dataset_identifiers`, ``var_columns``): ``columns`` (the
    names, in the frame's order), ``name in frame`` and ``frame[name]``, a 1-D array whose
    ``astype(object).tolist()`` equals the DataFrame column's (a categorical column is its
    values as an object array, missing ones NaN) and whose dtype is ``object`` where the
    DataFrame's is ``object`` or ``category``. Other encodings (nullable arrays) are read as
    :func:`read_column` reads them. The group must stay open while it is used.
    """

    def __init__(self, group: Any, names: list[str]) -> None:
        self._group = group
        self._names = names
        self._read: dict[str, Any] = {}

    @property
    def columns(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._read:
            self._read[name] = _values(self._group[name])
        return self._read[name]


def columns(group: Any) -> Columns | None:
    """The AnnData dataframe ``group`` as :class:`Columns`, or ``None`` where it is not a
    dataframe this module reads (:func:`read_frame` would hand it to anndata)."""
    try:
        order, _ = _header(group)
    except _Unknown:
        return None
    return Columns(group, order)
