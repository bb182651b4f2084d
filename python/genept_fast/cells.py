"""The one reading layer for cells: which matrix of an AnnData is embedded, and its rows by chunks.

Every path that reads cells (``gf.tl``, :mod:`genept_fast.stream`, :mod:`genept_fast.dask`,
:mod:`genept_fast.annotate`, :mod:`genept_fast.eval` and the commands) goes through this module:

- :func:`choose_matrix` is THE rule for which matrix is read, with one default: ``layer`` given
  → ``layers/<layer>``; ``use_raw=True`` → ``raw/X``; ``use_raw=None`` (the default) →
  ``raw/X`` when the data has ``raw``, else ``X``; ``use_raw=False`` → ``X``.
- :func:`open_cells` opens an AnnData (in memory, a view, or backed), a path to an ``.h5ad`` file
  or AnnData ``.zarr`` store (the current on-disk layout and the legacy one that anndata still
  reads), a TileDB-SOMA experiment (:class:`genept_fast.soma.SomaSource`), or returns an
  existing :class:`ChunkSource` as is. What it returns is a
  :class:`CellSource`: ``read(a, b)`` gives rows ``a:b`` as a ``scipy.sparse.csr_array`` of float32
  or float64 (float16 and integer matrices are upcast to float32 chunk by chunk; bool, complex,
  object and string matrices are refused by name).
- :class:`AnnDataStore` reads the tables of a file (``obs``, ``var``, ``raw/var``, ``obsm``) in
  either layout; :class:`AnnDataSource` reads the rows of a file's matrix;
  :class:`AnnDataObjectSource` those of an AnnData object; :class:`ArraySource` wraps any matrix.

The legacy layout (anndata < 0.7, e.g. scanpy's bundled ``10x_pbmc68k_reduced.h5ad``) keeps
``obs``/``var``/``raw.var`` as structured arrays whose first field is the index, categorical
columns as integer codes with the categories in ``uns/<column>_categories``, ``raw.X`` and
``raw.var`` at the top level, ``obsm`` as one structured array with a field per embedding, and
sparse matrices marked by ``h5sparse_format``. :class:`AnnDataStore` maps the current names
(``raw/X``, ``raw/var``) onto it, so nothing above this module knows there are two layouts.

anndata itself is imported only to read a current-layout table (``anndata.io.read_elem``) or when
the caller hands in an AnnData object: the streamed rows are sliced from h5py/zarr directly (see
:mod:`genept_fast.stream.sources` for the memory measurement behind this).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np
import scipy.sparse as sp

from genept_fast.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from typing_extensions import Self

    from genept_fast._frames import Columns

__all__ = [
    "AnnDataObjectSource",
    "AnnDataSource",
    "AnnDataStore",
    "ArraySource",
    "CellSource",
    "ChunkSource",
    "check_chunk_size",
    "choose_matrix",
    "has_raw",
    "matrix_options",
    "open_cells",
    "read_obs_names",
    "read_var",
    "read_var_names",
    "source_matrix",
    "source_var",
]

#: Dense matrices are read in blocks of at most this many values (256 MB of float32).
DENSE_BLOCK_VALUES = 64 * 1024 * 1024

#: Errors h5py and zarr raise on a truncated or corrupt store.
_READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)


# -- the rule ----------------------------------------------------------------------------------


def check_chunk_size(chunk_size: Any) -> int:
    """``chunk_size`` (cells per chunk read) as an int; an :class:`InputError` unless it is a
    positive integer."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        msg = f"chunk_size must be a positive integer, got {chunk_size!r}"
        raise InputError(msg)
    if chunk_size < 1:
        msg = f"chunk_size must be at least 1, got {chunk_size}"
        raise InputError(msg)
    return int(chunk_size)


def choose_matrix(*, has_raw: bool, layer: str | None, use_raw: bool | None) -> str:
    """Which matrix to embed: THE rule, with one default, used by every path.

    Parameters
    ----------
    has_raw
        Whether the data has ``raw`` (``adata.raw``, or ``raw/X`` in the file).
    layer
        Read ``layers/<layer>``.
    use_raw
        ``True``: ``raw/X``; ``False``: ``X``; ``None`` (the default): ``raw/X`` when the data has
        raw, else ``X``.

    Returns
    -------
    str
        ``"X"``, ``"raw/X"`` or ``"layers/<layer>"``; also the provenance vocabulary.

    Raises
    ------
    InputError
        ``layer`` together with ``use_raw=True``, or ``use_raw=True`` without raw.
    """
    if use_raw is not None and not isinstance(use_raw, (bool, np.bool_)):
        msg = f"use_raw must be True, False or None, got {use_raw!r}"
        raise InputError(msg)
    if layer is not None:
        if not isinstance(layer, str) or not layer:
            msg = f"layer must be a non-empty string, got {layer!r}"
            raise InputError(msg)
        if use_raw:
            msg = "give either layer= or use_raw=True, not both (raw has no layers)"
            raise InputError(msg)
        return f"layers/{layer}"
    if use_raw:
        if not has_raw:
            msg = (
                "use_raw=True but the data has no raw (adata.raw is None); "
                "leave use_raw unset or pass use_raw=False to read X, or layer= for a layer"
            )
            raise InputError(msg)
        return "raw/X"
    if use_raw is None and has_raw:
        return "raw/X"
    return "X"


def _layer_of(matrix: str) -> str | None:
    return matrix[len("layers/") :] if matrix.startswith("layers/") else None


def matrix_options(matrix: str) -> tuple[str | None, bool]:
    """The ``(layer, use_raw)`` that :func:`choose_matrix` maps to ``matrix`` (its inverse):
    what to pass to open the same matrix again, elsewhere (a Dask worker)."""
    return _layer_of(matrix), matrix == "raw/X"


def check_dtype(dtype: Any, matrix: str, where: str = "") -> np.dtype[Any]:
    """The dtype rows of a matrix of ``dtype`` are read as (float32 or float64).

    float32 and float64 are kept; float16 and integers become float32; anything else (bool,
    complex, object, strings, longdouble) is an :class:`InputError` naming the dtype and matrix.
    """
    dt = np.dtype(dtype)
    if dt in (np.float32, np.float64):
        return dt
    if dt == np.float16 or dt.kind in "iu":
        return np.dtype(np.float32)
    msg = (
        f"{where}{matrix} has dtype {dt}, which is not an expression matrix (numbers); "
        "expected float32, float64, float16 or integers"
    )
    raise InputError(msg)


def _to_csr(block: Any, dtype: np.dtype[Any], n_genes: int) -> sp.csr_array:
    """Rows read from any matrix as a CSR array of ``dtype`` (one conversion, at the edge)."""
    if hasattr(block, "compute"):  # a Dask array in adata.X
        block = block.compute()
    if sp.issparse(block):
        out = sp.csr_array(cast("Any", block))
        return out if out.dtype == dtype else out.astype(dtype)
    arr = np.asarray(block)
    if arr.ndim == 1:  # one row of a dense matrix indexed by an integer
        arr = arr.reshape(1, n_genes)
    return sp.csr_array(arr.astype(dtype, copy=False))


# -- protocols ---------------------------------------------------------------------------------


@runtime_checkable
class ChunkSource(Protocol):
    """A cells × genes matrix that can be read one block of rows at a time."""

    @property
    def name(self) -> str:
        """What to call the source in messages (a path, a query)."""
        ...

    @property
    def n_cells(self) -> int: ...

    @property
    def n_genes(self) -> int: ...

    @property
    def var_names(self) -> list[str]:
        """One name per gene column."""
        ...

    def obs_names(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Names of cells ``start:stop``."""
        ...

    def read(self, start: int, stop: int) -> sp.csr_array:
        """Rows ``start:stop`` as a CSR array of shape ``(stop - start, n_genes)``."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able values that change when the data changes (size, mtime, shape...)."""
        ...

    def close(self) -> None: ...


class CellSource(ChunkSource, Protocol):
    """A :class:`ChunkSource` of an AnnData's chosen matrix, with its tables."""

    #: ``"X"``, ``"raw/X"`` or ``"layers/<name>"``: also the provenance vocabulary.
    matrix: str

    @property
    def var(self) -> pd.DataFrame:
        """The var table of the chosen matrix (``raw.var`` for ``raw/X``)."""
        ...

    def obs_frame(self) -> pd.DataFrame:
        """The whole obs table."""
        ...


def source_matrix(source: ChunkSource) -> str:
    """What a source reads, for provenance: ``X``, ``raw/X``, ``layers/<name>`` or its name."""
    matrix = getattr(source, "matrix", None)
    return matrix if isinstance(matrix, str) else source.name


def source_var(source: ChunkSource) -> pd.DataFrame | None:
    """The var table of a source that has one (an AnnData), else ``None``."""
    if isinstance(source, (AnnDataSource, AnnDataObjectSource)):
        return source.var
    frame = getattr(source, "var_frame", None)
    return frame() if callable(frame) else None


# -- stores (files) ----------------------------------------------------------------------------


def _attr(obj: Any, name: str) -> Any:
    v = obj.attrs.get(name)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return v


def _is_group(obj: Any) -> bool:
    return hasattr(obj, "keys") and not hasattr(obj, "shape")


def _decode(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _path_fingerprint(path: Path) -> dict[str, Any]:
    if path.is_dir():
        size = 0
        mtime = 0
        n_files = 0
        for root, _dirs, files in os.walk(path):
            for f in files:
                st = Path(root, f).stat()
                size += st.st_size
                mtime = max(mtime, st.st_mtime_ns)
                n_files += 1
        return {"size": size, "mtime_ns": mtime, "n_files": n_files}
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def open_store(path: Path, kind: str) -> Any:
    """The root group of an ``.h5ad`` (h5py, read-only) or ``.zarr`` store (``kind``)."""
    if kind == "h5ad":
        import h5py

        try:
            return h5py.File(path, "r")
        except OSError as e:
            msg = f"{path}: cannot open as HDF5/.h5ad (truncated or corrupt file?): {e}"
            raise InputError(msg) from e
    import zarr

    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as e:
        msg = f"{path}: cannot open as a zarr store: {e}"
        raise InputError(msg) from e


def _store_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if path.is_dir():
        return "zarr"
    if suffix in (".h5ad", ".h5", ".hdf5"):
        return "h5ad"
    with path.open("rb") as f:
        head = f.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        return "h5ad"
    msg = f"{path}: not an .h5ad (HDF5) file nor a .zarr directory"
    raise InputError(msg)


class _Field:
    """One field of a legacy structured ``obsm`` array, seen as a 2-D array."""

    def __init__(self, dataset: Any, name: str) -> None:
        self._ds = dataset
        self._name = name
        sub = dataset.dtype[name]
        self.dtype = sub.base
        self.shape = (int(dataset.shape[0]), *(int(s) for s in sub.shape))

    def __getitem__(self, rows: Any) -> np.ndarray:
        if hasattr(self._ds, "fields"):  # h5py reads only this field
            return np.asarray(self._ds.fields(self._name)[rows])
        return np.asarray(self._ds[rows][self._name])


class AnnDataStore:
    """An ``.h5ad`` file or AnnData ``.zarr`` store opened read-only, in either on-disk layout.

    Elements are named as in the current layout (``X``, ``raw/X``, ``raw/var``, ``layers/<n>``,
    ``obs``, ``var``, ``obsm``); in a legacy file they are found where anndata < 0.7 put them.

    Raises
    ------
    InputError
        The path does not exist or is not an HDF5 file / zarr store.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            msg = f"input not found: {self.path}"
            raise InputError(msg)
        self.kind = _store_kind(self.path)
        self.root: Any = open_store(self.path, self.kind)

    # -- elements ------------------------------------------------------------------------------

    def _where(self, key: str) -> str | None:
        try:
            if key in self.root:
                return key
            legacy = {"raw/X": "raw.X", "raw/var": "raw.var", "raw/varm": "raw.varm"}.get(key)
            if legacy is not None and "raw" not in self.root and legacy in self.root:
                return legacy
        except _READ_ERRORS as e:
            msg = f"{self.path}: cannot read {key!r} (truncated or corrupt file?): {e}"
            raise InputError(msg) from e
        return None

    def get(self, key: str) -> Any:
        """The element ``key`` (current-layout name), or ``None`` when the store has none."""
        where = self._where(key)
        if where is None:
            return None
        try:
            return self.root[where]
        except _READ_ERRORS as e:
            msg = f"{self.path}: cannot read {key!r} (truncated or corrupt file?): {e}"
            raise InputError(msg) from e

    def require(self, key: str, what: str = "") -> Any:
        """:meth:`get`, or an :class:`InputError` when the element is missing."""
        elem = self.get(key)
        if elem is None:
            msg = f"{self.path}: has no {key}{what}; is it an AnnData file?"
            raise InputError(msg)
        return elem

    @property
    def has_raw(self) -> bool:
        """Whether the store has ``raw/X`` (``raw.X`` in the legacy layout)."""
        return self._where("raw/X") is not None

    @property
    def legacy(self) -> bool:
        """Whether ``obs`` is a structured array (the layout of anndata < 0.7)."""
        obs = self.get("obs")
        return obs is not None and not _is_group(obs)

    def layers(self) -> list[str]:
        """Names of the layers."""
        group = self.get("layers")
        return sorted(group.keys()) if group is not None and _is_group(group) else []

    # -- tables --------------------------------------------------------------------------------

    def index(self, key: str, start: int = 0, stop: int | None = None) -> list[str]:
        """Rows ``start:stop`` of the index of the table ``key`` (``obs``, ``var``, ``raw/var``)."""
        table = self.require(key, " table")
        try:
            if not _is_group(table):  # legacy: a structured array, the index its first field
                first = table.dtype.names[0]
                if hasattr(table, "fields"):
                    return _decode(table.fields(first)[start:stop])
                return _decode(table[start:stop][first])
            arr = table[_attr(table, "_index") or "_index"]
            values = arr.asstr()[start:stop] if hasattr(arr, "asstr") else arr[start:stop]
        except _READ_ERRORS as e:
            msg = f"{self.path}: cannot read the index of {key} (truncated or corrupt?): {e}"
            raise InputError(msg) from e
        return _decode(values)

    def frame(self, key: str) -> pd.DataFrame:
        """The table ``key`` (``obs``, ``var``, ``raw/var``) as a DataFrame, in memory."""
        table = self.require(key, " table")
        try:
            if not _is_group(table):
                return self._legacy_frame(table, categories=key in ("obs", "var"))
            # what anndata.io.read_elem returns, without importing anndata (1.3-2 CPU s of a
            # command's start-up); an encoding _frames does not know goes to read_elem
            from genept_fast._frames import read_frame

            return read_frame(table)
        except InputError:
            raise
        except Exception as e:  # anndata raises its own AnnDataReadError on a corrupt table
            msg = f"{self.path}: cannot read {key} (truncated or corrupt?): {e}"
            raise InputError(msg) from e

    def column(self, key: str, name: str) -> Any:
        """One column of the table ``key`` (``obs``, ``var``), read on its own in the current
        layout (the legacy layout reads the whole table)."""
        table = self.require(key, " table")
        if not _is_group(table):
            frame = self.frame(key)
            if name not in frame.columns:
                msg = f"{self.path}: {key} has no column {name!r}; available: {list(frame.columns)}"
                raise InputError(msg)
            return frame[name].to_numpy()
        index = _attr(table, "_index") or "_index"
        if name not in table or name == index:
            have = [c for c in table if c != index]
            msg = f"{self.path}: {key} has no column {name!r}; available: {have}"
            raise InputError(msg)
        try:
            from genept_fast._frames import read_column

            return read_column(table[name])
        except Exception as e:  # anndata raises its own AnnDataReadError on a corrupt column
            msg = f"{self.path}: cannot read {key}[{name!r}] (truncated or corrupt?): {e}"
            raise InputError(msg) from e

    def columns(self, key: str) -> _StoreColumns | None:
        """The columns of the table ``key`` (``var``, ``raw/var``), each read when first asked
        for, without pandas (:class:`genept_fast._frames.Columns`); ``None`` where only
        :meth:`frame` reads it (the legacy layout, an encoding ``_frames`` does not know)."""
        table = self.require(key, " table")
        if not _is_group(table):
            return None
        from genept_fast._frames import columns

        found = columns(table)
        return None if found is None else _StoreColumns(found, f"{self.path}: {key}")

    def _legacy_frame(self, table: Any, *, categories: bool) -> pd.DataFrame:
        import pandas as pd

        arr = np.asarray(table[()])
        names = list(arr.dtype.names or ())
        if not names:
            msg = f"{self.path}: {table.name} is neither a table group nor a structured array"
            raise InputError(msg)
        columns: dict[str, Any] = {}
        for name in names[1:]:
            col = arr[name]
            if col.ndim != 1:
                continue  # multi-dimensional fields are not columns
            if col.dtype.kind == "S":
                col = np.array(_decode(col), dtype=object)
            columns[name] = col
        index = pd.Index(_decode(arr[names[0]]), dtype=object)
        df = pd.DataFrame(columns, index=index)
        if categories:
            self._legacy_categories(df)
        return df

    def _legacy_categories(self, df: pd.DataFrame) -> None:
        """Integer codes with ``uns/<column>_categories`` become categoricals (as anndata does)."""
        import pandas as pd

        uns = self.get("uns")
        if uns is None or not _is_group(uns):
            return
        for column in list(df.columns):
            cats_key = f"{column}_categories"
            if cats_key not in uns or df[column].dtype.kind not in "iu":
                continue
            cats = np.asarray(uns[cats_key][()]).reshape(-1)
            codes: Any = df[column].to_numpy()
            if codes.size and int(codes.max()) >= len(cats):
                continue  # the categories belong to the other axis (anndata's rule)
            df[column] = pd.Categorical.from_codes(codes, categories=pd.Index(_decode(cats)))

    def obsm_keys(self) -> list[str]:
        """Names of the ``obsm`` entries."""
        obsm = self.get("obsm")
        if obsm is None:
            return []
        if _is_group(obsm):
            return sorted(obsm.keys())
        return list(obsm.dtype.names or ())

    def obsm(self, key: str) -> Any:
        """``obsm[key]`` as an array-like read by rows (``None`` when missing)."""
        obsm = self.get("obsm")
        if obsm is None:
            return None
        if not _is_group(obsm):
            return _Field(obsm, key) if key in (obsm.dtype.names or ()) else None
        return obsm.get(key)

    def obsm_dict(self) -> dict[str, Any]:
        """Every ``obsm`` entry, in memory."""
        obsm = self.get("obsm")
        if obsm is None:
            return {}
        try:
            if not _is_group(obsm):
                return {k: _Field(obsm, k)[:] for k in self.obsm_keys()}
            from anndata.io import read_elem

            return dict(read_elem(obsm))
        except Exception as e:
            msg = f"{self.path}: cannot read obsm (truncated or corrupt?): {e}"
            raise InputError(msg) from e

    def params(self, key: str) -> Any:
        """``uns[key]["params"]`` (what made ``obsm[key]``: the provenance record), in memory;
        ``None`` when the file has none or it cannot be read (provenance never blocks a job)."""
        try:
            from anndata.io import read_elem

            uns = self.get("uns")
            if uns is None or not _is_group(uns) or key not in uns or "params" not in uns[key]:
                return None
            return read_elem(uns[key]["params"])
        except Exception:
            return None

    def fingerprint(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), **_path_fingerprint(self.path)}

    def close(self) -> None:
        root, self.root = getattr(self, "root", None), None
        if root is not None and hasattr(root, "close"):
            root.close()

    def __enter__(self) -> AnnDataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- sources -----------------------------------------------------------------------------------


class _StoreColumns:
    """:class:`genept_fast._frames.Columns` of a file's table, whose read errors name the file
    and column (an :class:`InputError`, as :meth:`AnnDataStore.column` raises)."""

    def __init__(self, found: Columns, where: str) -> None:
        self._found = found
        self._where = where

    @property
    def columns(self) -> list[str]:
        return self._found.columns

    def __contains__(self, name: object) -> bool:
        return name in self._found

    def __getitem__(self, name: str) -> Any:
        if name not in self._found:
            raise KeyError(name)
        try:
            return self._found[name]
        except Exception as e:  # h5py/zarr (or anndata's own) error on a corrupt column
            msg = f"{self._where}[{name!r}]: cannot read it (truncated or corrupt?): {e}"
            raise InputError(msg) from e


def _as_index_dtype(a: np.ndarray) -> np.ndarray:
    if a.dtype in (np.int32, np.int64):
        return a
    return a.astype(np.int64)


class _Rows:
    """What the matrix sources share: the shape, the row-range check, the context manager."""

    _shape: tuple[int, int]

    @property
    def n_cells(self) -> int:
        return self._shape[0]

    @property
    def n_genes(self) -> int:
        return self._shape[1]

    def _check_rows(self, start: int, stop: int) -> None:
        if not (0 <= start <= stop <= self.n_cells):
            msg = f"rows {start}:{stop} out of range for {self.n_cells} cells"
            raise InputError(msg)

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AnnDataSource(_Rows):
    """Rows of ``X``, ``layers[layer]`` or ``raw.X`` of an ``.h5ad`` file or AnnData ``.zarr``.

    Parameters
    ----------
    path
        An ``.h5ad`` (HDF5) file or an AnnData ``.zarr`` directory, current or legacy layout.
    layer, use_raw
        The matrix, by :func:`choose_matrix` (default: ``raw/X`` when the file has it, else
        ``X``).
    validate
        Check every chunk read (monotone ``indptr``, column indices in range).

    Raises
    ------
    InputError
        The path does not exist, is not an AnnData store, is truncated or corrupt, lacks the
        requested matrix, holds it in a layout that cannot be read by rows (CSC), or in a dtype
        that is not numbers.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        layer: str | None = None,
        use_raw: bool | None = None,
        validate: bool = True,
    ) -> None:
        self.path = Path(path)
        self.validate = validate
        self._request = (layer, use_raw)
        self._store = AnnDataStore(self.path)
        #: "h5ad" or "zarr"
        self.kind = self._store.kind
        try:
            self.matrix = choose_matrix(has_raw=self._store.has_raw, layer=layer, use_raw=use_raw)
            self._setup()
        except BaseException:
            self.close()
            raise
        self.layer, self.use_raw = matrix_options(self.matrix)

    @property
    def element(self) -> str:
        """The matrix read (the former name of :attr:`matrix`)."""
        return self.matrix

    @property
    def legacy(self) -> bool:
        """Whether the file has the legacy on-disk layout (see :class:`AnnDataStore`)."""
        return self._store.legacy

    def copy_obs(self, dest: Any) -> bool:
        """Copy the ``obs`` group into the h5py group ``dest`` inside HDF5 (column by column,
        no pandas) when that gives a current-layout ``obs``: an ``.h5ad`` file in the current
        layout. Returns whether it did; the caller writes :meth:`obs_frame` otherwise."""
        if self.kind != "h5ad" or self.legacy:
            return False
        root = self._store.root
        root.copy(root["obs"], dest, name="obs")
        return True

    def _setup(self) -> None:
        self._var_key = "raw/var" if self.matrix == "raw/X" else "var"
        elem = self._store.get(self.matrix)
        if elem is None:
            layer = _layer_of(self.matrix)
            if layer is None:
                msg = f"{self.path}: has no {self.matrix} matrix"
            else:
                have = ", ".join(self._store.layers()) or "none"
                msg = f"{self.path}: has no layer {layer!r} (layers: {have})"
            raise InputError(msg)
        self._elem = elem
        self._store.require("obs", " group")
        try:
            self._init_matrix(elem)
        except InputError:
            raise
        except _READ_ERRORS as e:
            msg = f"{self.path}: cannot read {self.matrix} (truncated or corrupt file?): {e}"
            raise InputError(msg) from e
        self._var_names: list[str] | None = None
        self._var: pd.DataFrame | None = None

    def _init_matrix(self, elem: Any) -> None:
        if _is_group(elem):
            self._init_sparse(elem)
        else:
            if len(elem.shape) != 2:
                msg = f"{self.path}: {self.matrix} is not 2-D (shape {elem.shape})"
                raise InputError(msg)
            self.sparse = False
            self._shape = (int(elem.shape[0]), int(elem.shape[1]))
            self.dtype = check_dtype(elem.dtype, self.matrix, f"{self.path}: ")

    def _init_sparse(self, elem: Any) -> None:
        enc = _attr(elem, "encoding-type") or _attr(elem, "h5sparse_format")
        if enc in ("csc_matrix", "csc"):
            msg = (
                f"{self.path}: {self.matrix} is stored as CSC (column-compressed), which "
                "cannot be read by rows without loading all of it; convert it once to CSR, "
                "e.g. adata = anndata.read_h5ad(path); adata.X = adata.X.tocsr(); "
                "adata.write_h5ad(new_path)"
            )
            raise InputError(msg)
        if enc not in ("csr_matrix", "csr"):
            msg = f"{self.path}: {self.matrix} has unsupported encoding {enc!r}"
            raise InputError(msg)
        shape = _attr(elem, "shape") if "shape" in elem.attrs else _attr(elem, "h5sparse_shape")
        self.sparse = True
        self._data = elem["data"]
        self._indices = elem["indices"]
        self._indptr = elem["indptr"]
        n_cells, n_genes = (int(s) for s in shape)
        if self._indptr.shape != (n_cells + 1,):
            msg = (
                f"{self.path}: {self.matrix}/indptr has {self._indptr.shape[0]} entries, "
                f"expected n_cells + 1 = {n_cells + 1} (corrupt file?)"
            )
            raise InputError(msg)
        nnz = int(self._indptr[n_cells]) if n_cells else 0
        first = int(self._indptr[0])
        if first != 0 or self._data.shape != (nnz,) or self._indices.shape != (nnz,):
            msg = (
                f"{self.path}: {self.matrix} is inconsistent: indptr runs {first}..{nnz} but "
                f"data has {self._data.shape[0]} and indices {self._indices.shape[0]} entries "
                "(truncated or corrupt file?)"
            )
            raise InputError(msg)
        self._shape = (n_cells, n_genes)
        self.dtype = check_dtype(self._data.dtype, self.matrix, f"{self.path}: ")

    # -- protocol ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def var_names(self) -> list[str]:
        if self._var_names is None:
            names = self._store.index(self._var_key)
            if len(names) != self.n_genes:
                msg = (
                    f"{self.path}: {self._var_key} has {len(names)} names but {self.matrix} has "
                    f"{self.n_genes} columns"
                )
                raise InputError(msg)
            self._var_names = names
        return self._var_names

    def obs_names(self, start: int = 0, stop: int | None = None) -> list[str]:
        return self._store.index("obs", start, self.n_cells if stop is None else stop)

    @property
    def var(self) -> pd.DataFrame:
        """The var table of the matrix read (``raw/var`` for ``raw/X``), in memory."""
        if self._var is None:  # read once: every path asks for it (gene matching, provenance)
            self._var = self._store.frame(self._var_key)
        return self._var

    def var_frame(self) -> pd.DataFrame:
        """The var table of the matrix read (the former name of :attr:`var`)."""
        return self.var

    def var_columns(self) -> pd.DataFrame | _StoreColumns:
        """The var table of the matrix read, for gene matching: its columns read one at a time
        when asked for, without pandas (:meth:`AnnDataStore.columns`), or :attr:`var` where the
        file's layout needs the whole frame (or it is already read)."""
        if self._var is None:
            found = self._store.columns(self._var_key)
            if found is not None:
                return found
        return self.var

    def obs_frame(self) -> pd.DataFrame:
        """The whole obs table (loaded in memory)."""
        return self._store.frame("obs")

    def fingerprint(self) -> dict[str, Any]:
        return {
            **self._store.fingerprint(),
            "element": self.matrix,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
        }

    def read(self, start: int, stop: int) -> sp.csr_array:
        self._check_rows(start, stop)
        try:
            return self._read_sparse(start, stop) if self.sparse else self._read_dense(start, stop)
        except InputError:
            raise
        except _READ_ERRORS as e:
            msg = (
                f"{self.path}: cannot read rows {start}:{stop} of {self.matrix} "
                f"(truncated or corrupt file?): {e}"
            )
            raise InputError(msg) from e

    def _read_sparse(self, start: int, stop: int) -> sp.csr_array:
        indptr = np.asarray(self._indptr[start : stop + 1])
        lo, hi = int(indptr[0]), int(indptr[-1])
        if self.validate and (hi < lo or np.any(np.diff(indptr) < 0)):
            msg = (
                f"{self.path}: {self.matrix}/indptr decreases within rows {start}:{stop} "
                "(corrupt file)"
            )
            raise InputError(msg)
        data = np.asarray(self._data[lo:hi]).astype(self.dtype, copy=False)
        indices = _as_index_dtype(np.asarray(self._indices[lo:hi]))
        if data.shape[0] != hi - lo or indices.shape[0] != hi - lo:
            msg = f"{self.path}: {self.matrix} data/indices shorter than indptr says (truncated?)"
            raise InputError(msg)
        local = indptr - lo
        if indices.dtype == np.int32 and hi - lo < 2**31 - 1:
            local = local.astype(np.int32)
        else:
            local = local.astype(np.int64)
            indices = indices.astype(np.int64, copy=False)
        if self.validate and indices.size:
            lo_i, hi_i = int(indices.min()), int(indices.max())
            if lo_i < 0 or hi_i >= self.n_genes:
                bad = lo_i if lo_i < 0 else hi_i
                msg = (
                    f"{self.path}: {self.matrix} has column index {bad} within rows "
                    f"{start}:{stop}, outside 0..{self.n_genes - 1} (corrupt file)"
                )
                raise InputError(msg)
        return sp.csr_array((data, indices, local), shape=(stop - start, self.n_genes))

    def _read_dense(self, start: int, stop: int) -> sp.csr_array:
        step = max(1, DENSE_BLOCK_VALUES // max(self.n_genes, 1))
        parts = [
            _to_csr(self._elem[a : min(a + step, stop)], self.dtype, self.n_genes)
            for a in range(start, stop, step)
        ]
        if not parts:
            return sp.csr_array((0, self.n_genes), dtype=self.dtype)
        return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")

    def close(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for Dask: re-open by path on the other side, the same matrix.
        return {
            "path": self.path,
            "layer": self.layer,
            "use_raw": self.use_raw,
            "validate": self.validate,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            layer=state["layer"],
            use_raw=state["use_raw"],
            validate=state["validate"],
        )


class AnnDataObjectSource(_Rows):
    """Rows of the chosen matrix of an AnnData object: in memory, a view, or backed.

    Rows are sliced (``X[a:b]``), never the whole matrix copied: a view or a backed object is
    sliced as ``adata[a:b]`` first, so only those rows are materialised or read from disk.

    Parameters
    ----------
    adata
        The AnnData.
    layer, use_raw
        The matrix, by :func:`choose_matrix`.
    """

    def __init__(
        self, adata: AnnData, *, layer: str | None = None, use_raw: bool | None = None
    ) -> None:
        self._adata = adata
        self.matrix = choose_matrix(has_raw=adata.raw is not None, layer=layer, use_raw=use_raw)
        self.layer, self.use_raw = matrix_options(self.matrix)
        if self.layer is not None and self.layer not in adata.layers:
            have = ", ".join(map(str, adata.layers.keys())) or "none"
            msg = f"the AnnData has no layer {self.layer!r} (layers: {have})"
            raise InputError(msg)
        self._ref, self._obs_rows, self._var_cols = _view_parts(adata)
        self._M = self._matrix_of(adata) if self._obs_rows is None else None
        probe = self._M if self._M is not None else self._view_block(0, 0)[0]
        self._var = adata.raw.var if self.use_raw else adata.var
        self._shape = (int(adata.n_obs), len(self._var))
        shape = tuple(probe.shape)
        if (
            len(shape) != 2
            or shape[1] != self._shape[1]
            or (self._M is not None and shape[0] != self._shape[0])
        ):
            msg = f"{self.matrix} has shape {shape}, expected {self._shape} (cells × genes)"
            raise InputError(msg)
        self.dtype = check_dtype(probe.dtype, self.matrix)

    def _matrix_of(self, adata: AnnData) -> Any:
        if self.use_raw:
            M = adata.raw.X
        elif self.layer is not None:
            M = adata.layers[self.layer]
        else:
            M = adata.X
        if M is None:
            msg = f"the AnnData has no {self.matrix} matrix (adata.X is None)"
            raise InputError(msg)
        return M

    @property
    def name(self) -> str:
        filename = getattr(self._adata, "filename", None)
        return str(filename) if filename is not None else "<AnnData>"

    @property
    def var(self) -> pd.DataFrame:
        """The var table of the chosen matrix (``adata.raw.var`` for ``raw/X``)."""
        return self._var

    @property
    def var_names(self) -> list[str]:
        return [str(g) for g in self._var.index]

    def obs_names(self, start: int = 0, stop: int | None = None) -> list[str]:
        return [str(c) for c in self._adata.obs_names[start:stop]]

    def obs_frame(self) -> pd.DataFrame:
        return self._adata.obs

    def read(self, start: int, stop: int) -> sp.csr_array:
        self._check_rows(start, stop)
        if self._M is not None:
            return _to_csr(self._M[start:stop], self.dtype, self.n_genes)
        return self._read_view(start, stop)

    def _read_view(self, start: int, stop: int) -> sp.csr_array:
        block, order = self._view_block(start, stop)
        out = _to_csr(block, self.dtype, self.n_genes)
        return out if order is None else out[order]

    def _view_block(self, start: int, stop: int) -> tuple[Any, np.ndarray | None]:
        """Rows ``start:stop`` of a view (or backed object), read through one view of the parent
        AnnData, and the order to put them in (``None``: as read).

        anndata cannot index a backed view again, and a view's matrix is its whole subset; so
        the rows are looked up in the parent, and h5py gets them increasing and unique.
        """
        assert self._obs_rows is not None
        rows = self._obs_rows[start:stop]
        order = None
        if rows.size > 1 and not np.all(np.diff(rows) > 0):
            rows, order = np.unique(rows, return_inverse=True)
        which: Any = rows
        if not rows.size:  # (an empty index array reads float64 from a backed raw)
            which = slice(0, 0)
        elif int(rows[-1]) - int(rows[0]) + 1 == rows.size:  # a range: one slice
            which = slice(int(rows[0]), int(rows[-1]) + 1)
        sub = self._ref[which] if self.use_raw else self._ref[which, self._var_cols]
        return self._matrix_of(sub), order

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "matrix": self.matrix, "shape": list(self._shape)}
        h = hashlib.blake2b(digest_size=16)
        if self._adata.isbacked:  # the file says when it changed; the view which rows
            out.update(_path_fingerprint(Path(self._adata.filename)))
            for name in self._adata.obs_names:
                h.update(str(name).encode() + b"\0")
        else:
            step = max(1, DENSE_BLOCK_VALUES // max(self.n_genes, 1))
            for a in range(0, self.n_cells, step):
                X = self.read(a, min(a + step, self.n_cells))
                for arr in (np.diff(X.indptr), X.indices, X.data):
                    h.update(np.ascontiguousarray(arr).tobytes())
        out["blake2b"] = h.hexdigest()
        return out

    def close(self) -> None:
        self._M = None


class ArraySource(_Rows):
    """An in-memory matrix (any scipy.sparse or dense) seen as a :class:`ChunkSource`."""

    matrix = "X"

    def __init__(
        self,
        X: Any,
        *,
        obs_names: list[str] | None = None,
        var_names: list[str] | None = None,
        name: str = "<array>",
    ) -> None:
        dtype = check_dtype(X.dtype if hasattr(X, "dtype") else np.asarray(X).dtype, "X")
        M: Any = X if sp.issparse(X) else np.asarray(X).astype(dtype, copy=False)
        self._X = sp.csr_array(M)
        if self._X.dtype != dtype:
            self._X = self._X.astype(dtype)
        n, g = self._shape = (int(self._X.shape[0]), int(self._X.shape[1]))
        self._obs = obs_names if obs_names is not None else [str(i) for i in range(n)]
        self._var = var_names if var_names is not None else [str(j) for j in range(g)]
        if len(self._obs) != n or len(self._var) != g:
            msg = f"obs_names/var_names lengths ({len(self._obs)}, {len(self._var)}) != X.shape"
            raise InputError(msg)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def var_names(self) -> list[str]:
        return list(self._var)

    def obs_names(self, start: int = 0, stop: int | None = None) -> list[str]:
        return list(self._obs[start:stop])

    def read(self, start: int, stop: int) -> sp.csr_array:
        return sp.csr_array(self._X[start:stop])

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.blake2b(digest_size=16)
        for a in (self._X.indptr, self._X.indices, self._X.data):
            h.update(np.ascontiguousarray(a).tobytes())
        return {"name": self._name, "shape": list(self._X.shape), "blake2b": h.hexdigest()}


# -- the entry point ---------------------------------------------------------------------------


def _view_parts(adata: AnnData) -> tuple[Any, np.ndarray | None, Any]:
    """``(parent, row positions, gene selection)`` of a view or a backed AnnData (which is read
    by rows from its file); ``(adata, None, None)`` for an AnnData in memory."""
    if not (adata.is_view or adata.isbacked):
        return adata, None, None
    if not adata.is_view:
        return adata, np.arange(adata.n_obs), slice(None)
    # anndata keeps a view's parent and indices in these attributes (since 0.7); no public API
    ref = adata._adata_ref
    rows = np.arange(ref.n_obs)[adata._oidx]
    return ref, rows, adata._vidx


def _is_anndata(data: Any) -> bool:
    # anndata is imported only by whoever made the object: no AnnData exists without it
    anndata = sys.modules.get("anndata")
    return anndata is not None and isinstance(data, anndata.AnnData)


def _is_soma_experiment(data: Any) -> bool:
    # tiledbsoma is imported only by whoever opened the experiment
    tiledbsoma = sys.modules.get("tiledbsoma")
    return tiledbsoma is not None and isinstance(data, tiledbsoma.Experiment)


def open_cells(
    data: Any,
    *,
    layer: str | None = None,
    use_raw: bool | None = None,
    soma_options: dict[str, Any] | None = None,
) -> CellSource | ChunkSource:
    """The cells of ``data`` as a source read by row chunks.

    Parameters
    ----------
    data
        An AnnData (in memory, a view, or backed ``read_h5ad(..., backed="r")``), a path to an
        ``.h5ad`` file or AnnData ``.zarr`` store (current or legacy on-disk layout), or an
        existing :class:`ChunkSource` (returned as is; what it reads is
        :func:`source_matrix`), or a TileDB-SOMA experiment: its URI (a local directory,
        ``tiledb://``, ``s3://``...) or an open ``tiledbsoma.Experiment``, read by
        :class:`genept_fast.soma.SomaSource` (the ``soma`` extra).
    layer, use_raw
        The matrix, by :func:`choose_matrix`: ``layers/<layer>``; ``raw/X`` with
        ``use_raw=True``; by default ``raw/X`` when the data has raw, else ``X``. For a SOMA
        experiment ``layer`` is the ``X`` layer (default ``raw``, or the only one).
    soma_options
        For a SOMA experiment: ``measurement``, ``obs_filter``, ``var_key``, ``obs_key``,
        ``context`` (see :class:`genept_fast.soma.SomaSource`).

    Returns
    -------
    CellSource
        A context manager; ``read(a, b)`` gives rows ``a:b`` as a float32/float64
        ``scipy.sparse.csr_array``.

    Raises
    ------
    InputError
        Conflicting or impossible ``layer``/``use_raw``, a missing matrix or file, a corrupt
        file, or a matrix whose dtype is not numbers (bool, complex, object, strings).
    """
    if _is_anndata(data):
        return AnnDataObjectSource(data, layer=layer, use_raw=use_raw)
    from genept_fast import soma  # imports tiledbsoma only when a SOMA source is opened

    if soma.is_soma_uri(data) or _is_soma_experiment(data):
        if use_raw:
            msg = "use_raw= is for an AnnData; a SOMA experiment has X layers (layer='raw')"
            raise InputError(msg)
        return soma.SomaSource(data, layer=layer, **(soma_options or {}))
    if soma_options:
        msg = f"soma_options= apply to a SOMA experiment, not to {type(data).__name__} {data!r}"
        raise InputError(msg)
    if isinstance(data, (str, os.PathLike)):
        return AnnDataSource(data, layer=layer, use_raw=use_raw)
    if isinstance(data, ChunkSource):
        if layer is not None or use_raw:
            msg = (
                "layer= and use_raw= apply to an AnnData or a file; "
                f"the source {data.name!r} reads its own matrix"
            )
            raise InputError(msg)
        return data
    msg = (
        "expected an AnnData, a path to an .h5ad file or .zarr store, a SOMA experiment, or "
        f"a ChunkSource; got {type(data).__name__}"
    )
    raise InputError(msg)


# -- tables of a file --------------------------------------------------------------------------


def has_raw(path: str | os.PathLike[str]) -> bool:
    """Whether an ``.h5ad``/``.zarr`` AnnData stores ``raw/X`` (either layout)."""
    with AnnDataStore(path) as store:
        return store.has_raw


def read_var(
    path: str | os.PathLike[str], *, layer: str | None = None, use_raw: bool | None = None
) -> pd.DataFrame:
    """The var table of the matrix :func:`choose_matrix` picks (``raw/var`` for ``raw/X``) of an
    ``.h5ad``/``.zarr`` AnnData, without its matrix."""
    with AnnDataStore(path) as store:
        matrix = choose_matrix(has_raw=store.has_raw, layer=layer, use_raw=use_raw)
        return store.frame("raw/var" if matrix == "raw/X" else "var")


def read_var_names(
    path: str | os.PathLike[str], *, layer: str | None = None, use_raw: bool | None = None
) -> list[str]:
    """Gene names of the matrix :func:`choose_matrix` picks of an ``.h5ad``/``.zarr`` AnnData."""
    with AnnDataSource(path, layer=layer, use_raw=use_raw) as src:
        return src.var_names


def read_obs_names(path: str | os.PathLike[str]) -> list[str]:
    """Cell names of an ``.h5ad``/``.zarr`` AnnData, without loading the matrix."""
    with AnnDataStore(path) as store:
        return store.index("obs")
