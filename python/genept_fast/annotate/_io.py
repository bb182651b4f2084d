"""Cell embeddings and labels for annotation, from an AnnData in memory or a file, by row chunks.

:class:`EmbeddingSource` reads ``obsm/<key>`` of an ``.h5ad`` (h5py) or AnnData ``.zarr``, and the
flat zarr store that ``genept-fast encode -o out.zarr`` writes (``obs_names`` and ``<key>`` at the
root), one block of rows at a time, so a query larger than memory streams. Files are read through
the reading layer (:class:`genept_fast.cells.AnnDataStore`), so the legacy on-disk layout (one
structured array for ``obsm``, structured-array ``obs``) reads like the current one.
:func:`combine` turns the blocks of one or more embeddings into the vectors that are searched:
each embedding L2-normalised, concatenated, and the concatenation L2-normalised again (so the
inner product is the cosine similarity; with several embeddings it is the mean of their cosines,
the GenePT paper's "ensemble"). All-zero rows stay zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast import kernels
from genept_fast.cells import AnnDataStore, _attr, _is_group
from genept_fast.errors import InputError

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData

__all__ = [
    "AnnDataEmbeddings",
    "EmbeddingSource",
    "combine",
    "embedding_params",
    "label_codes",
    "obsm_keys_arg",
    "positive_int",
]


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int, or a InputError naming ``name`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        msg = f"{name} must be a positive integer, got {value!r}"
        raise InputError(msg)
    return int(value)


def obsm_keys_arg(obsm_key: str | Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """``obsm_key`` as a list of distinct keys (``default`` when ``None``)."""
    if obsm_key is None:
        keys = list(default)
    elif isinstance(obsm_key, str):
        keys = [obsm_key]
    else:
        keys = [str(k) for k in obsm_key]
    if not keys:
        msg = "obsm_key names no embedding"
        raise InputError(msg)
    if len(set(keys)) != len(keys):
        msg = f"obsm_key lists a key twice: {keys}"
        raise InputError(msg)
    return keys


def combine(
    parts: Sequence[np.ndarray],
    keys: Sequence[str],
    *,
    start: int = 0,
    where: str = "",
    n_threads: int | None = None,
) -> np.ndarray:
    """The searched vectors of a block: each part L2-normalised, concatenated, normalised again.

    ``start`` (the block's first row in the whole matrix) and ``where`` name the position of a
    NaN or infinite value in the error.
    """
    out = []
    for key, part in zip(keys, parts, strict=True):
        arr = np.asarray(part)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            msg = f"{where}obsm[{key!r}] has non-numeric dtype {arr.dtype}"
            raise InputError(msg)
        bad = ~np.isfinite(arr)
        if bad.any():
            r, c = (int(v[0]) for v in np.nonzero(bad))
            msg = (
                f"{where}obsm[{key!r}] has {int(bad.sum())} NaN or infinite values in rows "
                f"{start}:{start + arr.shape[0]}, the first at cell {start + r}, dimension {c}"
            )
            raise InputError(msg)
        out.append(kernels.l2_normalize(arr, n_threads=n_threads))
    if len(out) == 1:
        return out[0]
    return kernels.l2_normalize(np.concatenate(out, axis=1), n_threads=n_threads)


def label_codes(
    values: Any, label_key: str, cell_names: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """int32 codes into the sorted distinct labels; a missing label is an error naming the cell."""
    import pandas as pd

    series = pd.Series(np.asarray(values, dtype=object))
    missing = series.isna().to_numpy() | series.astype(str).str.strip().eq("").to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        msg = (
            f"reference obs[{label_key!r}] has {int(missing.sum())} missing labels (NaN or "
            f"empty), the first at cell {first} ({cell_names[first]!r}); drop those cells "
            "or label them"
        )
        raise InputError(msg)
    text = series.astype(str).to_numpy()
    classes, codes = np.unique(text, return_inverse=True)
    if len(classes) < 2:
        only = f" ({classes[0]!r})" if len(classes) else ""
        msg = (
            f"reference obs[{label_key!r}] has {len(classes)} label{only}; transferring labels "
            "needs at least 2"
        )
        raise InputError(msg)
    return codes.astype(np.int32), [str(c) for c in classes]


def embedding_params(uns: Any, key: str) -> dict[str, Any]:
    """What made ``obsm[key]``: method, model, dimension and text source (the fields of
    :mod:`genept_fast.encode.provenance`'s record that a query and its reference must share)
    from ``uns[key]["params"]``, as text.

    ``uns[key]`` may also be the attributes of encode's zarr store, which hold the record under
    the key itself (``{key: {"params": ...}, ...}``); parameters kept as JSON text (encode's
    zarr and parquet stores) are parsed.
    """
    try:
        record = uns[key]
        if hasattr(record, "get") and "params" not in record and key in record:
            record = record[key]
        params = record["params"]
    except (KeyError, TypeError, IndexError):
        return {}
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            return {}
    if not hasattr(params, "get"):
        return {}
    fields = ("method", "model", "dimension", "text_source")
    return {f: str(params[f]) for f in fields if f in params}


class AnnDataEmbeddings:
    """Rows of ``adata.obsm[key]`` for each key of an AnnData in memory (or backed).

    Like :class:`EmbeddingSource`, it has ``keys``, ``dims``, ``n_cells``, ``params`` (what made
    each embedding), ``where`` (a prefix for messages), ``read(a, b)`` (one array per key),
    ``obs_names()``, ``obs_column(name)`` and ``close()``: the protocol that
    :func:`~genept_fast.annotate.build_reference` and :func:`~genept_fast.annotate.predict` read.
    """

    def __init__(self, adata: AnnData, keys: Sequence[str], *, what: str = "") -> None:
        self.keys = list(keys)
        self.where = what
        self._mats = []
        for key in self.keys:
            if key not in adata.obsm:
                msg = f"{what}obsm has no key {key!r}; available: {sorted(adata.obsm)}"
                raise InputError(msg)
            M: Any = adata.obsm[key]
            if hasattr(M, "to_numpy"):
                M = M.to_numpy()
            if len(getattr(M, "shape", ())) != 2:
                msg = f"{what}obsm[{key!r}] must be 2-D (cells × dimensions), got {M!r:.60}"
                raise InputError(msg)
            self._mats.append(M)
        self.n_cells = int(adata.n_obs)
        self.dims = [int(M.shape[1]) for M in self._mats]
        self.params = {k: embedding_params(adata.uns, k) for k in self.keys}
        self._names = adata.obs_names
        self._obs = adata.obs

    def obs_column(self, name: str) -> np.ndarray:
        if name not in self._obs:
            msg = f"{self.where}obs has no column {name!r}; available: {list(self._obs.columns)}"
            raise InputError(msg)
        return np.asarray(self._obs[name].to_numpy(), dtype=object)

    def obs_names(self) -> list[str]:
        return [str(n) for n in self._names]

    def read(self, a: int, b: int) -> list[np.ndarray]:
        out = []
        for M in self._mats:
            block: Any = M[a:b]
            out.append(np.asarray(block.toarray() if hasattr(block, "toarray") else block))
        return out

    def close(self) -> None:
        pass


class EmbeddingSource:
    """Rows of one or more embeddings of an ``.h5ad`` / ``.zarr`` file, read by chunks.

    Parameters
    ----------
    path
        An AnnData ``.h5ad`` or ``.zarr`` (embeddings in ``obsm``), or the zarr store of
        ``genept-fast encode`` (the embedding array at the root, beside ``obs_names``).
    keys
        Embeddings to read; all must have one row per cell.
    """

    def __init__(self, path: str | os.PathLike[str], keys: Sequence[str]) -> None:
        self.path = Path(path)
        self.keys = list(keys)
        self.where = f"{self.path}: "
        if not self.path.exists():
            msg = f"input not found: {self.path}"
            raise FileNotFoundError(msg)
        self._store = AnnDataStore(self.path)
        self.kind = self._store.kind
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        store = self._store
        #: encode's zarr output: arrays at the root, parameters in the root's attributes
        self.flat = store.get("obsm") is None and store.get("obs_names") is not None
        if not self.flat and store.get("obs") is None:
            msg = f"{self.path}: has no obs group; is it an AnnData file?"
            raise InputError(msg)
        have = sorted(k for k in store.root if k != "obs_names") if self.flat else store.obsm_keys()
        self._arrays = []
        for key in self.keys:
            if key not in have:
                where = "arrays" if self.flat else "obsm keys"
                msg = f"{self.path}: has no embedding {key!r}; {where}: {have or 'none'}"
                raise InputError(msg)
            arr = store.get(key) if self.flat else store.obsm(key)
            if _is_group(arr) or len(arr.shape) != 2:
                enc = _attr(arr, "encoding-type") if _is_group(arr) else arr.shape
                msg = f"{self.path}: obsm[{key!r}] is not a dense 2-D array ({enc})"
                raise InputError(msg)
            self._arrays.append(arr)
        n = {int(a.shape[0]) for a in self._arrays}
        if len(n) != 1:
            msg = f"{self.path}: embeddings {self.keys} have different numbers of rows {sorted(n)}"
            raise InputError(msg)
        self.n_cells = n.pop()
        self.dims = [int(a.shape[1]) for a in self._arrays]
        self.params = {k: self._params(k) for k in self.keys}

    def _params(self, key: str) -> dict[str, Any]:
        if self.flat:
            return embedding_params({key: dict(self._store.root.attrs)}, key)
        params = self._store.params(key)
        return {} if params is None else embedding_params({key: {"params": params}}, key)

    def obs_names(self) -> list[str]:
        if self.flat:
            names = self._store.root["obs_names"][:]
            return [v.decode() if isinstance(v, bytes) else str(v) for v in names]
        return self._store.index("obs")

    def obs_frame(self) -> pd.DataFrame:
        """The whole ``obs`` table (only the cell names for encode's zarr store)."""
        import pandas as pd

        if self.flat:
            return pd.DataFrame(index=pd.Index(self.obs_names(), dtype=str))
        return self._store.frame("obs")

    def obs_column(self, name: str) -> np.ndarray:
        """One ``obs`` column, read on its own (the legacy layout reads the whole table)."""
        if self.flat:
            msg = f"{self.path}: obs has no column {name!r}; available: []"
            raise InputError(msg)
        return np.asarray(self._store.column("obs", name), dtype=object)

    def fingerprint(self) -> dict[str, Any]:
        return self._store.fingerprint()

    def read(self, a: int, b: int) -> list[np.ndarray]:
        try:
            return [np.asarray(arr[a:b]) for arr in self._arrays]
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
            msg = (
                f"{self.path}: cannot read rows {a}:{b} of {self.keys} (truncated or corrupt?): {e}"
            )
            raise InputError(msg) from e

    def close(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()

    def __enter__(self) -> EmbeddingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
