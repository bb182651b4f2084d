"""GenePT-w on Dask arrays of sparse row blocks, on one machine or a ``dask.distributed`` cluster.

- :func:`weighted_embedding` maps the Rust kernel over the row blocks of a Dask array whose
  blocks are scipy sparse (or dense) matrices: what anndata's lazy readers
  (``anndata.experimental.read_elem_lazy``, ``read_lazy``) give, or :func:`read_csr`. The gene
  embedding table travels to each worker once: scattered with ``broadcast=True`` when a
  distributed client is active, otherwise shared in memory by the local scheduler.
- :func:`read_csr` is a Dask array of CSR row blocks of an ``.h5ad``/``.zarr`` file (``X``, a
  layer or ``raw/X``), read by :class:`genept_fast.stream.AnnDataSource` in each task.
- :func:`encode_h5ad_dask` chains the two with the per-cell preprocessing (done by the kernel
  as it reads each block).

Threads: each task runs the kernel with ``n_threads`` threads (default 1); keep Dask worker
threads × ``n_threads`` ≤ cores. Requires the ``dask`` extra (``dask[array]``, ``distributed``).
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from genept_fast._extras import missing_extra
from genept_fast.errors import InputError
from genept_fast.kernels import (
    PreparedEmbeddings,
    as_embeddings,
    as_gene_index,
    prepare_embeddings,
    table_fingerprint,
)
from genept_fast.kernels import weighted_embedding as _weighted_embedding
from genept_fast.preprocess import AUTO_SAMPLE_CELLS, resolve_preprocess

try:
    import dask.array as da
except ImportError:
    _EXTRA = "dask"
    raise missing_extra(_EXTRA, "genept_fast.dask") from None

if TYPE_CHECKING:
    import os

    import numpy.typing as npt

    from genept_fast.preprocess import Preprocess
    from genept_fast.table import GeneEmbeddings

__all__ = ["encode_h5ad_dask", "read_csr", "weighted_embedding"]


def _aligned(a: np.ndarray, dtype: type) -> np.ndarray:
    # Arrays deserialised by distributed can sit at unaligned addresses; the core wants aligned.
    return np.require(a, dtype=dtype, requirements=["C", "A"])


class _Table:
    """The gene-embedding table and its options, shipped to each worker once.

    Unpickling (on a worker) aligns the arrays once, and the first task on a worker lays the
    table out for the kernel (:func:`genept_fast.prepare_embeddings`), so tasks never copy it.
    """

    def __init__(
        self, E: np.ndarray, gene_index: np.ndarray | None, normalize: bool, token: str
    ) -> None:
        self.E = _aligned(E, np.float32)
        self.gene_index = None if gene_index is None else _aligned(gene_index, np.int64)
        self.normalize = normalize
        self.token = token
        self._prepared: PreparedEmbeddings | None = None
        self._lock = threading.Lock()

    def prepared(self) -> PreparedEmbeddings:
        """The kernel-ready table, built on first use in this process."""
        with self._lock:
            if self._prepared is None:
                self._prepared = prepare_embeddings(self.E)
            return self._prepared

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("E", "gene_index", "normalize", "token")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["E"], state["gene_index"], state["normalize"], state["token"]
        )

    def __dask_tokenize__(self) -> str:
        return self.token


def _make_table(
    gene_embeddings: npt.ArrayLike, gene_index: npt.ArrayLike | None, normalize: bool
) -> _Table:
    E = as_embeddings(gene_embeddings)
    gi = as_gene_index(gene_index)
    token = f"genept-table-{table_fingerprint(E, gi, bool(normalize))}"
    return _Table(E, gi, bool(normalize), token)


def _share(table: _Table) -> Any:
    """A scattered future (distributed client active) or the table itself (local schedulers)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - dask without distributed
        return table
    try:
        client = default_client()
    except ValueError:
        return table
    return client.scatter(table, broadcast=True, hash=False)


def _encode_block(
    block: Any,
    table: _Table,
    n_threads: int,
    preprocess: str,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    # block_info (filled in by map_blocks) gives the block's first row in the whole array, so
    # that an error names the cell's global position.
    offset = int(block_info[0]["array-location"][0][0]) if block_info else 0
    return _weighted_embedding(
        block,
        table.prepared(),
        gene_index=table.gene_index,
        normalize=table.normalize,
        n_threads=n_threads,
        preprocess=preprocess,
        row_offset=offset,
    )


def weighted_embedding(
    x: da.Array,
    gene_embeddings: npt.ArrayLike,
    *,
    gene_index: npt.ArrayLike | None = None,
    normalize: bool = True,
    n_threads: int = 1,
    preprocess: str = "none",
) -> da.Array:
    """GenePT-w embeddings of a Dask array of cells × genes, one task per row block.

    Parameters
    ----------
    x
        Cells × genes Dask array whose blocks are scipy sparse matrices/arrays (CSR is used as
        is) or dense arrays. Blocks that split the genes are merged first (``rechunk``).
    gene_embeddings
        Genes × D table, float32 (float64 is cast once). Scattered to every worker once when a
        ``distributed`` client is active.
    gene_index
        Optional length-``n_genes`` map from ``x``'s columns to rows of ``gene_embeddings``
        (``-1``: no embedding).
    normalize
        L2-normalise each cell's embedding.
    n_threads
        Kernel threads per task; keep Dask worker threads × ``n_threads`` ≤ cores.
    preprocess
        ``"log1p"``: ``x`` holds raw counts, normalised and ``log1p``-transformed by the kernel
        (see :func:`genept_fast.weighted_embedding`); ``"none"``: the values as they are.

    Returns
    -------
    A lazy float32 Dask array ``(n_cells, D)`` with the row chunks of ``x``; ``.compute()``
    gives a numpy array equal to :func:`genept_fast.weighted_embedding` on the whole matrix.
    """
    if not isinstance(x, da.Array):
        msg = f"x must be a dask.array.Array, got {type(x).__name__}"
        raise InputError(msg)
    if x.ndim != 2:
        msg = f"x must be 2-D (cells × genes), got {x.ndim}-D"
        raise InputError(msg)
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        msg = f"n_threads must be a positive integer, got {n_threads!r}"
        raise InputError(msg)
    table = _make_table(gene_embeddings, gene_index, normalize)
    n_genes = x.shape[1]
    if table.gene_index is not None and table.gene_index.shape[0] != n_genes:
        msg = f"gene_index has {table.gene_index.shape[0]} entries but x has {n_genes} genes"
        raise InputError(msg)
    if table.gene_index is None and table.E.shape[0] != n_genes:
        msg = (
            f"gene_embeddings has {table.E.shape[0]} rows but x has {n_genes} genes; "
            "pass gene_index= to map genes to rows"
        )
        raise InputError(msg)
    if x.numblocks[1] != 1:
        x = x.rechunk({1: -1})
    dim = int(table.E.shape[1])
    return da.map_blocks(
        _encode_block,
        x,
        _share(table),
        n_threads=int(n_threads),
        preprocess=str(preprocess),
        chunks=(x.chunks[0], (dim,)),
        dtype=np.float32,
        meta=np.empty((0, 0), dtype=np.float32),
        token="genept-w",
    )


class _RowReader:
    """Array-like over an AnnData matrix for ``da.from_array``: slicing rows reads CSR blocks.

    Pickles as (path, layer, use_raw); each process opens the file once, on first read.
    """

    def __init__(self, path: str, layer: str | None, use_raw: bool) -> None:
        from genept_fast.stream.sources import AnnDataSource

        self.path, self.layer, self.use_raw = path, layer, use_raw
        src = AnnDataSource(path, layer=layer, use_raw=use_raw)
        try:
            self.shape = (src.n_cells, src.n_genes)
            self.dtype = np.dtype(src.read(0, 0).dtype)
            self.fingerprint = src.fingerprint()
        finally:
            src.close()
        self.ndim = 2
        self._src: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_src"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getitem__(self, key: tuple[slice, slice]) -> sp.csr_matrix:
        from genept_fast.stream.sources import AnnDataSource

        rows, cols = key
        if self._src is None:
            self._src = AnnDataSource(self.path, layer=self.layer, use_raw=self.use_raw)
        start, stop, _ = rows.indices(self.shape[0])
        block = sp.csr_matrix(self._src.read(start, stop))
        if cols != slice(None) and cols.indices(self.shape[1]) != (0, self.shape[1], 1):
            block = block[:, cols]
        return block


def read_csr(
    path: str | os.PathLike[str],
    *,
    layer: str | None = None,
    use_raw: bool = False,
    chunk_size: int = 10_000,
) -> da.Array:
    """A lazy Dask array of CSR row blocks of an ``.h5ad`` file or AnnData ``.zarr`` store.

    Each task opens the file by path (once per worker process) and reads its rows with
    :class:`genept_fast.stream.AnnDataSource` (validated; corrupt data raises
    ``InputError`` naming the file). On a multi-machine cluster the path must be visible to every
    worker (shared filesystem).
    """
    from pathlib import Path

    from genept_fast.stream.sources import check_chunk_size

    check_chunk_size(chunk_size)
    reader = _RowReader(str(Path(path).resolve()), layer, bool(use_raw))
    h = hashlib.blake2b(repr((reader.fingerprint, int(chunk_size))).encode(), digest_size=16)
    return da.from_array(
        reader,
        chunks=(int(chunk_size), -1),
        asarray=False,
        fancy=False,
        meta=sp.csr_matrix((0, 0), dtype=reader.dtype),
        name=f"genept-read-{h.hexdigest()}",
    )


def encode_h5ad_dask(
    path: str | os.PathLike[str],
    gene_embeddings: npt.ArrayLike | GeneEmbeddings,
    *,
    gene_index: npt.ArrayLike | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    preprocess: Preprocess = "auto",
    chunk_size: int = 10_000,
    normalize: bool = True,
    n_threads: int = 1,
    gene_key: str | None = None,
) -> da.Array:
    """GenePT-w of every cell of an ``.h5ad``/``.zarr`` file as a lazy Dask array.

    :func:`read_csr`, then :func:`weighted_embedding` with the per-cell preprocessing done by the
    kernel (``"auto"`` decides once, from the first cells, whether the values are raw counts).
    ``gene_embeddings`` may be a :class:`~genept_fast.table.GeneEmbeddings` table: it is then
    matched to the file's genes through the gene identity layer
    (:func:`genept_fast.encode.match_table`: ``var[gene_key]`` or ``var_names`` first, as
    :func:`genept_fast.tl.genept_w`; no ``gene_index``), and only the rows in use travel to the
    workers. Call ``.compute()`` for a numpy array, or ``.to_zarr(...)`` / ``da.store`` to
    write it out without gathering it on the client.
    """
    from genept_fast import table

    if isinstance(gene_embeddings, table.GeneEmbeddings):
        from genept_fast.encode import match_table
        from genept_fast.stream.sources import read_var

        if gene_index is not None:
            msg = "gene_index= is for a plain matrix; a table is matched by gene name"
            raise InputError(msg)
        var = read_var(path, use_raw=use_raw)
        match = match_table(
            gene_embeddings, list(map(str, var.index)), var, gene_key=gene_key, what=str(path)
        )
        gene_embeddings, gene_index = match.rows, match.index
    elif gene_key is not None:
        msg = "gene_key= is for a GeneEmbeddings table; a matrix is mapped by gene_index="
        raise InputError(msg)
    x = read_csr(path, layer=layer, use_raw=use_raw, chunk_size=chunk_size)

    def sample() -> Any:
        from genept_fast.stream.sources import AnnDataSource

        with AnnDataSource(path, layer=layer, use_raw=use_raw) as src:
            return src.read(0, min(src.n_cells, AUTO_SAMPLE_CELLS))

    first: list[Any] = []

    def first_cells() -> Any:
        if not first:
            first.append(sample())
        return first[0]

    how = resolve_preprocess(preprocess, first_cells)
    return weighted_embedding(
        x,
        gene_embeddings,
        gene_index=gene_index,
        normalize=normalize,
        n_threads=n_threads,
        preprocess=how,
    )
