"""GenePT-w and GenePT-s on Dask arrays of sparse row blocks, on one machine or a
``dask.distributed`` cluster.

- :func:`weighted_embedding` maps the one GenePT-w encoder
  (:class:`genept_fast.encode.WeightedEncoder`) over the row blocks of a Dask array whose
  blocks are scipy sparse (or dense) matrices: what anndata's lazy readers
  (``anndata.experimental.read_elem_lazy``, ``read_lazy``) give, or :func:`read_csr`. The
  encoder (its table rows, gene index and options) travels to each worker once: scattered with
  ``broadcast=True`` when a distributed client is active, otherwise shared in memory by the
  local scheduler; each process lays the table out for the kernel once.
- :func:`read_csr` is a Dask array of CSR row blocks of an ``.h5ad``/``.zarr`` file (``X``, a
  layer or ``raw/X``), read by the reading layer (:mod:`genept_fast.cells`) in each task.
- :func:`encode_h5ad_dask` starts a GenePT-w job as ``gf.tl`` and the stream do and maps its
  encoder over :func:`read_csr`.
- :func:`sentence_embedding` and :func:`encode_h5ad_sentences_dask` do the same for GenePT-s:
  the one GenePT-s encoder of the job (for a static model such as ``"wordllama"`` the kernel's
  sum, :class:`genept_fast.encode.static.StaticSentenceEncoder`; for another model its
  sentences embedded in each task, cached by the embedder) mapped over the row blocks.

Threads: each task runs the kernel with ``n_threads`` threads (default 1); keep Dask worker
threads × ``n_threads`` ≤ cores. Requires the ``dask`` extra (``dask[array]``, ``distributed``).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from genept_fast._extras import missing_extra
from genept_fast.cells import check_chunk_size, matrix_options, open_cells
from genept_fast.encode import SentenceEncoder, WeightedEncoder, start_sentences, start_weighted
from genept_fast.encode.static import StaticSentenceEncoder
from genept_fast.errors import InputError
from genept_fast.kernels import DEFAULT_PREFIX

try:
    import dask.array as da
except ImportError:
    _EXTRA = "dask"
    raise missing_extra(_EXTRA, "genept_fast.dask") from None

if TYPE_CHECKING:
    import os

    import numpy.typing as npt

    from genept_fast.cells import ChunkSource
    from genept_fast.embed import Embedder
    from genept_fast.preprocess import Preprocess
    from genept_fast.table import GeneEmbeddings

__all__ = [
    "encode_h5ad_dask",
    "encode_h5ad_sentences_dask",
    "read_csr",
    "sentence_embedding",
    "weighted_embedding",
]

#: What :func:`_map` maps: the one encoder of GenePT-w or of GenePT-s.
Encoder = WeightedEncoder | SentenceEncoder | StaticSentenceEncoder


def _task_threads(n_threads: Any) -> int:
    """Kernel threads per task: a positive integer (Dask tasks never take all the cores)."""
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        msg = f"n_threads must be a positive integer, got {n_threads!r}"
        raise InputError(msg)
    return int(n_threads)


def _share(encoder: Encoder) -> Any:
    """A scattered future (distributed client active) or the encoder itself (local schedulers:
    their threads share it, and its table is laid out once)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - dask without distributed
        return encoder
    try:
        client = default_client()
    except ValueError:
        return encoder
    return client.scatter(encoder, broadcast=True, hash=False)


def _encode_block(
    block: Any, encoder: Encoder, block_info: dict[Any, Any] | None = None
) -> np.ndarray:
    # block_info (filled in by map_blocks) gives the block's first row in the whole array, so
    # that an error names the cell's global position.
    offset = int(block_info[0]["array-location"][0][0]) if block_info else 0
    return encoder(block, row_offset=offset)


def _check_x(x: Any) -> None:
    if not isinstance(x, da.Array):
        msg = f"x must be a dask.array.Array, got {type(x).__name__}"
        raise InputError(msg)
    if x.ndim != 2:
        msg = f"x must be 2-D (cells × genes), got {x.ndim}-D"
        raise InputError(msg)


def _map(x: da.Array, encoder: Encoder) -> da.Array:
    """``encoder`` on each row block of ``x`` (the genes in one block), lazily."""
    _check_x(x)
    if isinstance(encoder, WeightedEncoder):
        encoder.check_genes(int(x.shape[1]), "x")
        dim, token = encoder.dim, "genept-w"
    else:
        dim, token = _sentence_dim(encoder, int(x.shape[1])), "genept-s"
    if x.numblocks[1] != 1:
        x = x.rechunk({1: -1})
    return da.map_blocks(
        _encode_block,
        x,
        _share(encoder),
        chunks=(x.chunks[0], (dim,)),
        dtype=np.float32,
        meta=np.empty((0, 0), dtype=np.float32),
        token=token,
    )


def _sentence_dim(encoder: SentenceEncoder | StaticSentenceEncoder, n_genes: int) -> int:
    """The output width of a GenePT-s encoder for ``x`` of ``n_genes`` columns (checked)."""
    n_symbols = len(encoder.builder.symbols)
    if n_symbols != n_genes:
        msg = f"{n_symbols} gene symbols were given but x has {n_genes} genes"
        raise InputError(msg)
    dim = encoder.embedder.dimension
    if dim is None:
        msg = (
            f"{encoder.embedder.model_id} does not say its dimension before a first request;"
            " GenePT-s on Dask needs it (pass dimensions=, or use the stream)"
        )
        raise InputError(msg)
    return int(dim)


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

    Each task calls the one GenePT-w encoder (:class:`genept_fast.encode.WeightedEncoder`),
    as ``gf.tl.genept_w`` and the stream do on their chunks.

    Parameters
    ----------
    x
        Cells × genes Dask array whose blocks are scipy sparse matrices/arrays (CSR is used as
        is) or dense arrays. Blocks that split the genes are merged first (``rechunk``).
    gene_embeddings
        Genes × D table, float32 (float64 is cast once). Scattered to every worker once when a
        ``distributed`` client is active; laid out for the kernel once per worker process.
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
    encoder = WeightedEncoder(
        gene_embeddings,
        gene_index=gene_index,
        normalize=normalize,
        n_threads=_task_threads(n_threads),
        preprocess=preprocess,
    )
    return _map(x, encoder)


class _RowReader:
    """Array-like over an AnnData matrix for ``da.from_array``: slicing rows reads CSR blocks.

    Pickles as (path, layer, use_raw); each process opens the file once, on first read, with
    the reading layer (:func:`genept_fast.cells.open_cells`). ``src``: the file already opened
    by the caller, to read the shape from (left open).
    """

    def __init__(
        self, path: str, layer: str | None, use_raw: bool | None, src: ChunkSource | None = None
    ) -> None:
        self.path, self.layer, self.use_raw = path, layer, use_raw
        opened = src if src is not None else open_cells(path, layer=layer, use_raw=use_raw)
        try:
            self.shape = (int(opened.n_cells), int(opened.n_genes))
            self.dtype = np.dtype(opened.read(0, 0).dtype)
            self.fingerprint = opened.fingerprint()
        finally:
            if src is None:
                opened.close()
        self.ndim = 2
        self._src: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_src"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getitem__(self, key: tuple[slice, slice]) -> sp.csr_matrix:
        rows, cols = key
        if self._src is None:
            self._src = open_cells(self.path, layer=self.layer, use_raw=self.use_raw)
        start, stop, _ = rows.indices(self.shape[0])
        block = sp.csr_matrix(self._src.read(start, stop))
        if cols != slice(None) and cols.indices(self.shape[1]) != (0, self.shape[1], 1):
            block = block[:, cols]
        return block


def read_csr(
    path: str | os.PathLike[str],
    *,
    layer: str | None = None,
    use_raw: bool | None = None,
    chunk_size: int = 10_000,
) -> da.Array:
    """A lazy Dask array of CSR row blocks of an ``.h5ad`` file or AnnData ``.zarr`` store.

    The matrix is the one every path reads (:func:`genept_fast.cells.choose_matrix`:
    ``layers/<layer>``; ``raw/X`` with ``use_raw=True``, and by default when the file has it;
    else ``X``). Each task opens the file by path (once per worker process) and reads its rows
    with the reading layer (validated; corrupt data raises ``InputError`` naming the file). On a
    multi-machine cluster the path must be visible to every worker (shared filesystem).
    """
    return _read_csr(path, layer, use_raw, chunk_size, None)


def _read_csr(
    path: str | os.PathLike[str],
    layer: str | None,
    use_raw: bool | None,
    chunk_size: int,
    src: ChunkSource | None,
) -> da.Array:
    from pathlib import Path

    check_chunk_size(chunk_size)
    reader = _RowReader(str(Path(path).resolve()), layer, use_raw, src)
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
    gene_embeddings: npt.ArrayLike | GeneEmbeddings | str,
    *,
    gene_index: npt.ArrayLike | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    preprocess: Preprocess = "auto",
    chunk_size: int = 10_000,
    normalize: bool = True,
    n_threads: int = 1,
    gene_key: str | None = None,
) -> da.Array:
    """GenePT-w of every cell of an ``.h5ad``/``.zarr`` file as a lazy Dask array.

    The job starts as every GenePT-w job does (:func:`genept_fast.encode.start_weighted`: the
    matrix by :func:`genept_fast.cells.choose_matrix`, ``raw/X`` when the file has it and no
    layer is given; scaled first cells refused; ``"auto"`` decides once, from the first cells,
    whether the values are raw counts), then :func:`read_csr` feeds the job's
    :class:`~genept_fast.encode.WeightedEncoder` block by block, which preprocesses as it reads.
    ``gene_embeddings`` may be a :class:`~genept_fast.table.GeneEmbeddings` table (or a path to
    one): it is then matched to the file's genes through the gene identity layer
    (:func:`genept_fast.encode.match_table`: ``var[gene_key]`` or ``var_names`` first, as
    :func:`genept_fast.tl.genept_w`; no ``gene_index``), and only the rows in use travel to the
    workers. Call ``.compute()`` for a numpy array, or ``.to_zarr(...)`` / ``da.store`` to
    write it out without gathering it on the client.
    """
    with start_weighted(
        path,
        gene_embeddings,
        gene_index=gene_index,
        gene_key=gene_key,
        layer=layer,
        use_raw=use_raw,
        preprocess=preprocess,
        chunk_size=chunk_size,
        normalize=normalize,
        n_threads=_task_threads(n_threads),
    ) as job:
        layer, use_raw = matrix_options(job.cells.matrix)
        x = _read_csr(path, layer, use_raw, chunk_size, job.cells.source)
    return _map(x, job.encoder)


def _sentence_encoder(
    embedder: Embedder | str, symbols: Any, n_threads: int, options: dict[str, Any]
) -> SentenceEncoder | StaticSentenceEncoder:
    from genept_fast.encode import as_embedder
    from genept_fast.encode.job import sentence_encoder

    return sentence_encoder(
        as_embedder(embedder), [str(g) for g in symbols], n_threads=n_threads, **options
    )


def sentence_embedding(
    x: da.Array,
    symbols: Any,
    embedder: Embedder | str = "wordllama",
    *,
    top_n: int | None = None,
    prefix: str = DEFAULT_PREFIX,
    sep: str = " ",
    max_input_tokens: int | None = None,
    n_threads: int = 1,
) -> da.Array:
    """GenePT-s embeddings of a Dask array of cells × genes, one task per row block.

    Each task calls the one GenePT-s encoder, as ``gf.tl.genept_s`` and the stream do on their
    chunks: for a static model (``"wordllama"``) the kernel sums each cell's sentence gene by
    gene (:class:`genept_fast.encode.static.StaticSentenceEncoder`); for another model (``"local"``)
    each task writes its cells' sentences and embeds them (through the embedder's cache).

    Parameters
    ----------
    x
        Cells × genes Dask array whose blocks are scipy sparse matrices/arrays or dense arrays
        (blocks that split the genes are merged first).
    symbols
        One gene symbol per column of ``x`` (an empty one is never written).
    embedder
        An :class:`~genept_fast.embed.Embedder` or a spec (default ``"wordllama"``); its
        dimension must be known before the first request.
    top_n, prefix, sep, max_input_tokens
        As for :func:`genept_fast.tl.genept_s`.
    n_threads
        Kernel threads per task; keep Dask worker threads × ``n_threads`` ≤ cores.

    Returns
    -------
    A lazy float32 Dask array ``(n_cells, D)`` with the row chunks of ``x``; ``.compute()``
    gives what :func:`genept_fast.tl.genept_s` gives for the same cells.
    """
    _check_x(x)
    options = {"top_n": top_n, "prefix": prefix, "sep": sep, "max_input_tokens": max_input_tokens}
    encoder = _sentence_encoder(embedder, symbols, _task_threads(n_threads), options)
    return _map(x, encoder)


def encode_h5ad_sentences_dask(
    path: str | os.PathLike[str],
    embedder: Embedder | str = "wordllama",
    *,
    gene_key: str | None = None,
    top_n: int | None = None,
    prefix: str = DEFAULT_PREFIX,
    sep: str = " ",
    max_input_tokens: int | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    chunk_size: int = 10_000,
    n_threads: int = 1,
) -> tuple[da.Array, dict[str, Any]]:
    """GenePT-s of every cell of an ``.h5ad``/``.zarr`` file as a lazy Dask array, and the
    provenance record ``gf.tl.genept_s`` writes to ``uns`` (its ``params``).

    The job starts as every GenePT-s job does (:func:`genept_fast.encode.start_sentences`: the
    matrix by :func:`genept_fast.cells.choose_matrix`, the gene symbols by
    :func:`genept_fast.encode.resolve_gene_symbols`, scaled first cells refused), then
    :func:`read_csr` feeds the job's encoder block by block.
    """
    with start_sentences(
        path,
        embedder,
        gene_key=gene_key,
        top_n=top_n,
        prefix=prefix,
        sep=sep,
        max_input_tokens=max_input_tokens,
        n_threads=_task_threads(n_threads),
        layer=layer,
        use_raw=use_raw,
        chunk_size=chunk_size,
    ) as job:
        layer, use_raw = matrix_options(job.cells.matrix)
        x = _read_csr(path, layer, use_raw, chunk_size, job.cells.source)
        arr = _map(x, job.encoder)
    return arr, job.record(int(arr.shape[1]))
