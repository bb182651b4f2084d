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
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["read_column", "read_frame"]


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
        if not _is_group(group) or _spec(group) != ("dataframe", "0.2.0"):
            raise _Unknown
        order = list(_attr(group, "column-order"))
        index_key = _attr(group, "_index")
        if not isinstance(index_key, str) or not all(isinstance(c, str) for c in order):
            raise _Unknown
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
