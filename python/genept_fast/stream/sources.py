"""Chunk sources: cells × genes matrices read from disk one block of rows at a time.

A :class:`ChunkSource` is anything with ``n_cells``, ``n_genes``, ``var_names``,
``obs_names(start, stop)``, ``read(start, stop) -> scipy.sparse.csr_array``, ``fingerprint()``
and ``close()``. The streaming encoder (:func:`genept_fast.stream.encode_file`) and the Dask reader
(:func:`genept_fast.dask.read_csr`) only talk to this protocol, so another source (a TileDB-SOMA /
CELLxGENE Census query, a database cursor) plugs in by implementing these few members.

Built in:

- :class:`AnnDataSource` reads ``X``, ``layers/<name>`` or ``raw/X`` of an ``.h5ad`` file (h5py)
  or an AnnData ``.zarr`` store (zarr v2 or v3) without loading it: CSR rows are sliced straight
  from ``data``/``indices`` over ``[indptr[a], indptr[b])``; dense datasets are read in blocks and
  sparsified. CSC-encoded matrices cannot be read by rows and raise ``InputError``. Tables
  (``var``, ``obs``: :meth:`AnnDataSource.var_frame`, :func:`read_var`) are read by anndata
  (``anndata.io.read_elem``).
- :class:`ArraySource` wraps an in-memory matrix (handy for tests and small jobs).

Why the CSR rows are not read by anndata's ``anndata.io.sparse_dataset`` (measured; it reads
the same row slices from h5py and zarr, and was tried): the reader runs in every streamed job,
and importing anndata costs that job 130 MB of resident memory (a process with numpy, scipy,
h5py and :mod:`genept_fast.stream` imported: 106 MB; with ``anndata.io`` too: 236 MB). In
``benches/bench_stream.py --cells 100000`` (D = 1536, chunk 10,000) the stream's peak RSS
went from 973 MB to 1,100 MB, past its 1 GiB goal, while reading got no faster: 200 M
nonzeros in 10,000-row chunks, checks included, took 0.85 s against 0.73 s here (best of
five, page cache warm, load ~4). The hand-written slicer is ~40 lines, reads only
``indptr[a:b+1]`` and the ``data``/``indices`` range it names, and keeps this module's
corruption checks (header, monotone ``indptr``, column indices in range).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from genept_fast.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AnnDataSource",
    "ArraySource",
    "ChunkSource",
    "check_chunk_size",
    "has_raw",
    "open_source",
    "read_obs_names",
    "read_var",
    "read_var_names",
    "source_matrix",
    "source_var",
]

#: Dense matrices are read in blocks of at most this many values (256 MB of float32).
DENSE_BLOCK_VALUES = 64 * 1024 * 1024


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


def _attr(obj: Any, name: str) -> Any:
    v = obj.attrs.get(name)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return v


def _is_group(obj: Any) -> bool:
    return hasattr(obj, "keys") and not hasattr(obj, "shape")


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


def _as_index_dtype(a: np.ndarray) -> np.ndarray:
    if a.dtype in (np.int32, np.int64):
        return a
    return a.astype(np.int64)


class AnnDataSource:
    """Rows of ``X``, ``layers[layer]`` or ``raw.X`` of an ``.h5ad`` file or AnnData ``.zarr``.

    Parameters
    ----------
    path
        An ``.h5ad`` (HDF5) file or an AnnData ``.zarr`` directory.
    layer
        Read ``layers/<layer>`` instead of ``X``.
    use_raw
        Read ``raw/X`` (and take gene names from ``raw/var``).
    validate
        Check every chunk read (monotone ``indptr``, column indices in range, finite values).

    Raises
    ------
    InputError
        The path does not exist, is not an AnnData store, is truncated or corrupt, lacks the
        requested matrix, or holds it in a layout that cannot be read by rows (CSC).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        layer: str | None = None,
        use_raw: bool = False,
        validate: bool = True,
    ) -> None:
        self.path = Path(path)
        self.layer = layer
        self.use_raw = bool(use_raw)
        self.validate = validate
        if layer is not None and use_raw:
            msg = "give either layer= or use_raw=True, not both (raw has no layers)"
            raise InputError(msg)
        if not self.path.exists():
            msg = f"input not found: {self.path}"
            raise InputError(msg)
        self.kind = _store_kind(self.path)
        self._root: Any = self._open()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------------------

    def _open(self) -> Any:
        return open_store(self.path, self.kind)

    def _get(self, key: str) -> Any:
        try:
            if key not in self._root:
                return None
            return self._root[key]
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            msg = f"{self.path}: cannot read {key!r} (truncated or corrupt file?): {e}"
            raise InputError(msg) from e

    def _setup(self) -> None:
        if self.use_raw:
            self.element = "raw/X"
            self._var_key = "raw/var"
        elif self.layer is not None:
            self.element = f"layers/{self.layer}"
            self._var_key = "var"
        else:
            self.element = "X"
            self._var_key = "var"
        elem = self._get(self.element)
        if elem is None:
            what = {"raw/X": "no raw/X (adata.raw is not set)", "X": "no X matrix"}.get(
                self.element, f"no layer {self.layer!r}"
            )
            if self.layer is not None:
                layers = self._get("layers")
                have = sorted(layers.keys()) if layers is not None else []
                what += f" (layers: {', '.join(have) or 'none'})"
            msg = f"{self.path}: has {what}"
            raise InputError(msg)
        self._elem = elem
        obs = self._get("obs")
        if obs is None:
            msg = f"{self.path}: has no obs group; is it an AnnData file?"
            raise InputError(msg)
        self._obs = obs
        try:
            self._init_matrix(elem)
        except InputError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
            msg = f"{self.path}: cannot read {self.element} (truncated or corrupt file?): {e}"
            raise InputError(msg) from e
        self._var_names: list[str] | None = None

    def _init_matrix(self, elem: Any) -> None:
        if _is_group(elem):
            enc = _attr(elem, "encoding-type") or _attr(elem, "h5sparse_format")
            if enc in ("csc_matrix", "csc"):
                msg = (
                    f"{self.path}: {self.element} is stored as CSC (column-compressed), which "
                    "cannot be read by rows without loading all of it; convert it once to CSR, "
                    "e.g. adata = anndata.read_h5ad(path); adata.X = adata.X.tocsr(); "
                    "adata.write_h5ad(new_path)"
                )
                raise InputError(msg)
            if enc not in ("csr_matrix", "csr"):
                msg = f"{self.path}: {self.element} has unsupported encoding {enc!r}"
                raise InputError(msg)
            shape = _attr(elem, "shape") if "shape" in elem.attrs else _attr(elem, "h5sparse_shape")
            self.sparse = True
            self._data = elem["data"]
            self._indices = elem["indices"]
            self._indptr = elem["indptr"]
            n_cells, n_genes = (int(s) for s in shape)
            if self._indptr.shape != (n_cells + 1,):
                msg = (
                    f"{self.path}: {self.element}/indptr has {self._indptr.shape[0]} entries, "
                    f"expected n_cells + 1 = {n_cells + 1} (corrupt file?)"
                )
                raise InputError(msg)
            nnz = int(self._indptr[n_cells]) if n_cells else 0
            first = int(self._indptr[0])
            if first != 0 or self._data.shape != (nnz,) or self._indices.shape != (nnz,):
                msg = (
                    f"{self.path}: {self.element} is inconsistent: indptr runs {first}..{nnz} but "
                    f"data has {self._data.shape[0]} and indices {self._indices.shape[0]} entries "
                    "(truncated or corrupt file?)"
                )
                raise InputError(msg)
            self._shape = (n_cells, n_genes)
        else:
            if len(elem.shape) != 2:
                msg = f"{self.path}: {self.element} is not 2-D (shape {elem.shape})"
                raise InputError(msg)
            self.sparse = False
            self._shape = (int(elem.shape[0]), int(elem.shape[1]))

    # -- protocol ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def n_cells(self) -> int:
        return self._shape[0]

    @property
    def n_genes(self) -> int:
        return self._shape[1]

    def _read_index(self, group_key: str, start: int, stop: int | None) -> list[str]:
        group = self._get(group_key)
        if group is None:
            msg = f"{self.path}: has no {group_key} group"
            raise InputError(msg)
        index_key = _attr(group, "_index") or "_index"
        try:
            arr = group[index_key]
            values = arr.asstr()[start:stop] if hasattr(arr, "asstr") else arr[start:stop]
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
            msg = f"{self.path}: cannot read {group_key}/{index_key} (truncated or corrupt?): {e}"
            raise InputError(msg) from e
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    @property
    def var_names(self) -> list[str]:
        if self._var_names is None:
            names = self._read_index(self._var_key, 0, None)
            if len(names) != self.n_genes:
                msg = (
                    f"{self.path}: {self._var_key} has {len(names)} names but {self.element} has "
                    f"{self.n_genes} columns"
                )
                raise InputError(msg)
            self._var_names = names
        return self._var_names

    def obs_names(self, start: int = 0, stop: int | None = None) -> list[str]:
        return self._read_index("obs", start, self.n_cells if stop is None else stop)

    def var_frame(self) -> pd.DataFrame:
        """The ``var`` table (``raw/var`` with ``use_raw``) of the matrix read (in memory)."""
        from anndata.io import read_elem

        group = self._get(self._var_key)
        if group is None:
            msg = f"{self.path}: no {self._var_key} group (is it an AnnData file?)"
            raise InputError(msg)
        try:
            return read_elem(group)
        except Exception as e:
            msg = f"{self.path}: cannot read {self._var_key} (truncated or corrupt?): {e}"
            raise InputError(msg) from e

    def obs_frame(self) -> pd.DataFrame:
        """The whole ``obs`` table (loaded in memory)."""
        from anndata.io import read_elem

        try:
            return read_elem(self._obs)
        except Exception as e:
            msg = f"{self.path}: cannot read obs (truncated or corrupt?): {e}"
            raise InputError(msg) from e

    def fingerprint(self) -> dict[str, Any]:
        return {
            "path": str(self.path.resolve()),
            **_path_fingerprint(self.path),
            "element": self.element,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
        }

    def read(self, start: int, stop: int) -> sp.csr_array:
        if not (0 <= start <= stop <= self.n_cells):
            msg = f"rows {start}:{stop} out of range for {self.n_cells} cells"
            raise InputError(msg)
        try:
            return self._read_sparse(start, stop) if self.sparse else self._read_dense(start, stop)
        except InputError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
            msg = (
                f"{self.path}: cannot read rows {start}:{stop} of {self.element} "
                f"(truncated or corrupt file?): {e}"
            )
            raise InputError(msg) from e

    def _read_sparse(self, start: int, stop: int) -> sp.csr_array:
        indptr = np.asarray(self._indptr[start : stop + 1])
        lo, hi = int(indptr[0]), int(indptr[-1])
        if self.validate and (hi < lo or np.any(np.diff(indptr) < 0)):
            msg = (
                f"{self.path}: {self.element}/indptr decreases within rows {start}:{stop} "
                "(corrupt file)"
            )
            raise InputError(msg)
        data = np.asarray(self._data[lo:hi])
        indices = _as_index_dtype(np.asarray(self._indices[lo:hi]))
        if data.shape[0] != hi - lo or indices.shape[0] != hi - lo:
            msg = f"{self.path}: {self.element} data/indices shorter than indptr says (truncated?)"
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
                    f"{self.path}: {self.element} has column index {bad} within rows "
                    f"{start}:{stop}, outside 0..{self.n_genes - 1} (corrupt file)"
                )
                raise InputError(msg)
        return sp.csr_array((data, indices, local), shape=(stop - start, self.n_genes))

    def _read_dense(self, start: int, stop: int) -> sp.csr_array:
        step = max(1, DENSE_BLOCK_VALUES // max(self.n_genes, 1))
        parts = [
            sp.csr_array(np.asarray(self._elem[a : min(a + step, stop)]))
            for a in range(start, stop, step)
        ]
        if not parts:
            return sp.csr_array((0, self.n_genes), dtype=self._elem.dtype)
        return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")

    def close(self) -> None:
        root, self._root = getattr(self, "_root", None), None
        if root is not None and hasattr(root, "close"):
            root.close()

    def __enter__(self) -> AnnDataSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for Dask: re-open by path on the other side.
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


class ArraySource:
    """An in-memory matrix (any scipy.sparse or dense) seen as a :class:`ChunkSource`."""

    def __init__(
        self,
        X: Any,
        *,
        obs_names: list[str] | None = None,
        var_names: list[str] | None = None,
        name: str = "<array>",
    ) -> None:
        self._X = sp.csr_array(X)
        n, g = self._X.shape
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
    def n_cells(self) -> int:
        return int(self._X.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self._X.shape[1])

    @property
    def var_names(self) -> list[str]:
        return list(self._var)

    def obs_names(self, start: int = 0, stop: int | None = None) -> list[str]:
        return list(self._obs[start:stop])

    def read(self, start: int, stop: int) -> sp.csr_array:
        return sp.csr_array(self._X[start:stop])

    def fingerprint(self) -> dict[str, Any]:
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for a in (self._X.indptr, self._X.indices, self._X.data):
            h.update(np.ascontiguousarray(a).tobytes())
        return {"name": self._name, "shape": list(self._X.shape), "blake2b": h.hexdigest()}

    def close(self) -> None:
        pass


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


def open_source(
    path: str | os.PathLike[str], *, layer: str | None = None, use_raw: bool = False
) -> AnnDataSource:
    """Open an ``.h5ad`` file or AnnData ``.zarr`` store as a :class:`ChunkSource`."""
    return AnnDataSource(path, layer=layer, use_raw=use_raw)


def read_var_names(path: str | os.PathLike[str], *, use_raw: bool = False) -> list[str]:
    """Gene names of an ``.h5ad``/``.zarr`` AnnData (``raw.var_names`` with ``use_raw``)."""
    with AnnDataSource(path, use_raw=use_raw) as src:
        return src.var_names


def read_var(path: str | os.PathLike[str], *, use_raw: bool = False) -> pd.DataFrame:
    """The ``var`` table (``raw/var`` with ``use_raw``) of an ``.h5ad``/``.zarr`` AnnData,
    without its matrix."""
    p = Path(path)
    key = "raw/var" if use_raw else "var"
    try:
        root = open_store(p, _store_kind(p))
    except OSError as exc:
        msg = f"{p}: cannot read ({exc})"
        raise InputError(msg) from exc
    try:
        from anndata.io import read_elem

        try:
            group = root[key]
        except KeyError as exc:
            msg = f"{p}: no {key} group (is it an AnnData file?)"
            raise InputError(msg) from exc
        try:
            return read_elem(group)
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            msg = f"{p}: cannot read {key} (truncated or corrupt?): {exc}"
            raise InputError(msg) from exc
    finally:
        if hasattr(root, "close"):
            root.close()


def has_raw(path: str | os.PathLike[str]) -> bool:
    """Whether an ``.h5ad``/``.zarr`` AnnData stores ``raw/X``."""
    p = Path(path)
    root = open_store(p, _store_kind(p))
    try:
        return "raw" in root and "X" in root["raw"]
    except (OSError, KeyError) as exc:
        msg = f"{p}: cannot read ({exc})"
        raise InputError(msg) from exc
    finally:
        if hasattr(root, "close"):
            root.close()


def source_var(source: ChunkSource) -> pd.DataFrame | None:
    """The ``var`` table of a source that has one (an AnnData file), else ``None``."""
    frame = getattr(source, "var_frame", None)
    return frame() if callable(frame) else None


def source_matrix(source: ChunkSource) -> str:
    """What a source reads, for provenance: ``X``, ``raw/X``, ``layers/<name>`` or its name."""
    element = getattr(source, "element", None)
    return element if isinstance(element, str) else source.name


def read_obs_names(path: str | os.PathLike[str]) -> list[str]:
    """Cell names of an ``.h5ad``/``.zarr`` AnnData, without loading the matrix."""
    with AnnDataSource(path) as src:
        return src.obs_names()
