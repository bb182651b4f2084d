"""The three GenePT kernels, with input normalisation in front of the Rust core.

This module is the only caller of :mod:`genept_fast._core`. It converts what users hand in
(any scipy.sparse matrix or array, a dense ndarray, int32 or int64 indices, integer or float
values) to the one layout the core accepts, copying only when it must:

- CSR with ``int32`` or ``int64`` indices and ``float32`` or ``float64`` data is borrowed as is;
- any other sparse format is converted to CSR once, dense input likewise;
- integer or boolean values are cast (to float32, or float64 for 32/64-bit integers);
- ``float64`` gene embeddings are cast to ``float32`` once (the output is float32 anyway).

All work runs in Rust with the GIL released, in parallel over cells. ``n_threads`` defaults to
all cores, and the environment variable ``GENEPT_FAST_NUM_THREADS`` caps it. A request above
:func:`thread_limit` (4 × the available cores) is capped to it with a warning: more threads
cannot run faster, and a pool of thousands takes most of a minute to start.

No argument makes a kernel abort, panic or hang: ``n`` is clamped to the number of genes, every
result's size is computed before it is allocated, and one larger than this machine's memory is
an :class:`~genept_fast.errors.InvalidArgumentError` saying how much it would need. Kernel errors
(all :class:`~genept_fast.errors.InputError`, see :mod:`genept_fast.errors`) carry the cell and
gene at fault as ``exc.cell`` and ``exc.gene``; the ``row_offset`` of a call (a chunk's first
row) is added to the cell in Rust, so attributes and messages give positions in the whole matrix.

GenePT-w sums each cell's genes in a fixed order (ascending table row, stored duplicates in
stored order), so results are bitwise identical for any thread count and any chunking of the
cells: encoding rows ``a:b`` gives the bits of rows ``a:b`` of the whole-matrix call.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import xxhash

from genept_fast import _core
from genept_fast._core import PreparedEmbeddings
from genept_fast.errors import (
    GeneptError,
    InputError,
    InvalidArgumentError,
    MalformedMatrixError,
    ShapeError,
)
from genept_fast.preprocess import TARGET_SUM

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

__all__ = [
    "DEFAULT_PREFIX",
    "CsrParts",
    "GeneptError",
    "PreparedEmbeddings",
    "as_csr",
    "as_embeddings",
    "as_gene_index",
    "cell_sentences",
    "coo_into_csr",
    "is_kernel_error",
    "l2_normalize",
    "offset_cells",
    "prepare_embeddings",
    "resolved_threads",
    "sentences_from_top",
    "table_fingerprint",
    "thread_limit",
    "top_genes",
    "weighted_embedding",
]

#: The sentence prefix of GenePT-s.
DEFAULT_PREFIX = "A cell with genes ranked by expression: "

_SMALL_INTS = (np.bool_, np.int8, np.int16, np.uint8, np.uint16, np.float16)


@dataclass(frozen=True)
class CsrParts:
    """A CSR matrix in the exact layout the Rust core borrows."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    @property
    def n_cells(self) -> int:
        return self.shape[0]

    @property
    def n_genes(self) -> int:
        return self.shape[1]


def _value_dtype(dtype: np.dtype[Any], name: str) -> np.dtype[Any]:
    if dtype in (np.float32, np.float64):
        return dtype
    if any(dtype == t for t in _SMALL_INTS):
        return np.dtype(np.float32)
    if np.issubdtype(dtype, np.integer):
        return np.dtype(np.float64)
    if np.issubdtype(dtype, np.floating):  # longdouble
        return np.dtype(np.float64)
    msg = (
        f"{name} has unsupported dtype {dtype}; expected a real numeric type (float32/float64/int)"
    )
    raise InvalidArgumentError(msg)


def as_csr(X: Any, *, name: str = "X") -> CsrParts:
    """Return ``X`` (cells × genes) as :class:`CsrParts`, copying only what must change.

    Accepts any ``scipy.sparse`` matrix or array, a dense ``numpy`` array (or anything
    ``np.asarray`` takes), or :class:`CsrParts` (returned as they are). Raises
    :class:`~genept_fast.errors.ShapeError` on a wrong ndim and
    :class:`~genept_fast.errors.InvalidArgumentError` on an unsupported dtype.
    """
    if isinstance(X, CsrParts):
        return X
    csr: Any
    if sp.issparse(X):
        sparse: Any = X  # scipy's stubs type issparse's guard as the bare base class
        if sparse.ndim != 2:
            msg = f"{name} must be 2-D (cells × genes), got a {sparse.ndim}-D sparse array"
            raise ShapeError(msg)
        csr = sparse if sparse.format == "csr" else sparse.tocsr()
        indptr, indices, data = csr.indptr, csr.indices, csr.data
        shape = (int(csr.shape[0]), int(csr.shape[1]))
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            msg = f"{name} must be 2-D (cells × genes), got shape {arr.shape}"
            raise ShapeError(msg)
        _value_dtype(arr.dtype, name)
        csr = sp.csr_array(arr)
        indptr, indices, data = csr.indptr, csr.indices, csr.data
        shape = (int(arr.shape[0]), int(arr.shape[1]))

    data = _aligned(data, _value_dtype(data.dtype, name))
    if not (indptr.dtype == indices.dtype and indptr.dtype in (np.int32, np.int64)):
        # anndata stores int64 indptr with int32 indices: narrowing indptr (n_cells + 1
        # values) is cheap, widening indices (nnz values) is not.
        nnz = int(indptr[-1]) if indptr.size else 0
        if indices.dtype == np.int32 and nnz <= np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)
        else:
            indptr = indptr.astype(np.int64)
            indices = indices.astype(np.int64)
    indptr = _aligned(indptr, indptr.dtype)
    indices = _aligned(indices, indices.dtype)
    if indptr.shape != (shape[0] + 1,):
        msg = f"{name}: indptr has {indptr.shape[0]} entries, expected n_cells + 1 = {shape[0] + 1}"
        raise MalformedMatrixError(msg)
    return CsrParts(indptr, indices, data, shape)


def prepare_embeddings(
    gene_embeddings: npt.ArrayLike, *, n_threads: int | None = None
) -> PreparedEmbeddings:
    """Check a genes × D table once and lay it out for fast repeated GenePT-w calls.

    :func:`weighted_embedding` reads a plain numpy table in place on calls of fewer than 2,000
    cells (packing the gene ranges each block of cells needs as it goes), and re-lays it out
    tile-major first on larger calls: a copy of the table on every call, checked as it is
    copied, into a buffer of the table's size that the process keeps for the next such call
    (the OS may take its pages back whenever it needs memory). A prepared table is checked and
    tiled once and reads about 10% faster per cell than one read in place. When the same table
    encodes many chunks (streaming, Dask), prepare it once and pass the result instead; the
    original array may then be dropped. Measurements: ``docs/benchmarks.md``.
    """
    if isinstance(gene_embeddings, PreparedEmbeddings):
        return gene_embeddings
    return PreparedEmbeddings(as_embeddings(gene_embeddings), n_threads=_check_threads(n_threads))


def _aligned(arr: np.ndarray, dtype: Any) -> np.ndarray:
    """``arr`` as a C-contiguous, aligned array of ``dtype``; a copy only when needed.

    Arrays unpickled from a buffer (Dask workers) can sit at unaligned addresses, which the
    core cannot borrow.
    """
    return np.require(arr, dtype=dtype, requirements=["C", "A"])


def as_embeddings(E: Any) -> np.ndarray:
    """``E`` as a 2-D, C-contiguous, aligned float32 array (a copy only when needed)."""
    arr = np.asarray(E)
    if arr.ndim != 2:
        msg = f"gene_embeddings must be 2-D (genes × dimensions), got shape {arr.shape}"
        raise ShapeError(msg)
    if arr.dtype != np.float32:
        _value_dtype(arr.dtype, "gene_embeddings")
    return _aligned(arr, np.float32)


def as_gene_index(gene_index: npt.ArrayLike | None) -> np.ndarray | None:
    """A ``gene_index`` argument as a C-contiguous int64 array (``None`` stays ``None``)."""
    if gene_index is None:
        return None
    gi = np.asarray(gene_index)
    if gi.ndim != 1 or not np.issubdtype(gi.dtype, np.integer):
        msg = f"gene_index must be a 1-D integer array, got shape {gi.shape} dtype {gi.dtype}"
        raise InvalidArgumentError(msg)
    return _aligned(gi, np.int64)


def table_fingerprint(E: np.ndarray, gene_index: np.ndarray | None, normalize: bool) -> str:
    """A content hash of a GenePT-w table and its options (resume manifests, Dask tokens):
    ``"xxh3-128:<hex>"``.

    XXH3 (128 bits) reads a 20,000 × 1536 table in ~15 ms where BLAKE2b took 0.15-0.7 s of a
    command's start. It identifies a job's table among the user's own; it is not a guard
    against someone crafting a collision (Dask fingerprints arrays with the same hash). The
    fingerprints written before it were bare BLAKE2b digests: a resume manifest holding one
    differs from every new fingerprint, so its partial work is discarded with a warning and
    the job starts over, never mixed with new chunks.
    """
    h = xxhash.xxh3_128()
    h.update(repr(E.shape).encode())
    h.update(np.ascontiguousarray(E).data.cast("B"))
    if gene_index is not None:
        h.update(np.ascontiguousarray(gene_index).data.cast("B"))
    h.update(b"normalize" if normalize else b"raw")
    return f"xxh3-128:{h.hexdigest()}"


def thread_limit() -> int:
    """The most threads a kernel call uses: 4 × the cores this process may run on."""
    return int(_core.thread_limit())


def _check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int if it is an integer (not a bool) ≥ ``minimum``, else an error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        msg = f"{name} must be an integer ≥ {minimum}, got {value!r}"
        raise InvalidArgumentError(msg)
    if value < minimum:
        msg = f"{name} must be at least {minimum}, got {value}"
        raise InvalidArgumentError(msg)
    return int(value)


def _check_threads(n_threads: int | None) -> int | None:
    if n_threads is None:
        return None
    n_threads = _check_int(n_threads, "n_threads", 1)
    limit = thread_limit()
    if n_threads > limit:
        warnings.warn(
            f"n_threads={n_threads} is more than 4 threads per available core; using {limit}",
            UserWarning,
            stacklevel=3,
        )
        return limit
    return n_threads


def _check_n(n: int) -> int:
    return _check_int(n, "n", 1)


def _check_offset(row_offset: int) -> int:
    return _check_int(row_offset, "row_offset", 0)


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def _check_result_size(n_cells: int, width: int, itemsize: int, what: str, hint: str) -> None:
    """Refuse a result larger than this machine's memory before allocating it."""
    nbytes = n_cells * width * itemsize  # Python integers: no overflow
    total = _physical_memory()
    if total is not None and nbytes > total:
        msg = (
            f"{what} would need {nbytes / 1e9:,.1f} GB of memory ({n_cells:,} cells × {width:,}"
            f" × {itemsize} bytes), more than this machine's {total / 1e9:,.1f} GB; {hint}"
        )
        raise InvalidArgumentError(msg)


def is_kernel_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a kernel's rejection of a cell or gene of its input.

    True for an :class:`~genept_fast.errors.InputError` whose ``cell`` or ``gene`` is set (a
    NaN in ``X``, a stored gene index out of range, a bad ``gene_index`` entry...); kernel
    errors about shapes or options name no position and return False.
    """
    return isinstance(exc, InputError) and (exc.cell is not None or exc.gene is not None)


def offset_cells(exc: GeneptError, offset: int, *, where: str | None = None) -> GeneptError:
    """``exc`` with its cell moved by ``offset`` rows, and ``where`` in front of its message.

    Prefer passing ``row_offset=a`` to the kernel: its errors then name cells of the whole
    matrix directly. This moves the ``cell`` of a kernel error raised without it (a kernel
    called on rows ``a:b`` named them from 0); the message is composed again from the kernel's
    fields, never parsed. ``where`` (a file name) is put in front of the message. Errors that
    name no cell or gene (see :func:`is_kernel_error`) are returned unchanged.
    """
    if not isinstance(exc, InputError) or not is_kernel_error(exc) or not (offset or where):
        return exc
    cell, text = exc.cell, str(exc)
    template = exc._cell_message
    if offset and cell is not None:
        cell += offset
        if template is not None:
            text = template.format(cell=cell)
    if where:
        text = f"{where}: {text}"
        if template is not None:
            template = where.replace("{", "{{").replace("}", "}}") + ": " + template
    moved = type(exc)(text, cell=cell, gene=exc.gene)  # the same class
    if template is not None:
        moved._cell_message = template
    return moved


def _preprocess_arg(preprocess: str) -> str:
    if preprocess not in ("none", "log1p"):
        msg = f"preprocess must be 'none' or 'log1p', got {preprocess!r}"
        raise InvalidArgumentError(msg)
    return preprocess


def weighted_embedding(
    X: Any,
    gene_embeddings: npt.ArrayLike | PreparedEmbeddings,
    *,
    gene_index: npt.ArrayLike | None = None,
    normalize: bool = True,
    n_threads: int | None = None,
    out: np.ndarray | None = None,
    row_offset: int = 0,
    preprocess: str = "none",
) -> np.ndarray:
    """GenePT-w cell embeddings: ``X @ gene_embeddings``, each row L2-normalised.

    Parameters
    ----------
    X
        Cells × genes expression (any scipy.sparse format or dense). CSR is used without a copy.
    gene_embeddings
        Genes × D, float32 (float64 is cast once), or a table from :func:`prepare_embeddings`.
        Row ``j`` embeds gene ``j`` of ``X``, unless ``gene_index`` says otherwise.
    gene_index
        Optional length-``n_genes`` integer array mapping each column of ``X`` to a row of
        ``gene_embeddings``, ``-1`` for genes without an embedding (they are skipped).
    normalize
        Divide each row by its L2 norm. A cell with no expressed embedded gene stays all zeros.
    n_threads
        Threads to use (default: all cores, capped by ``GENEPT_FAST_NUM_THREADS``; more than
        :func:`thread_limit` is capped with a warning).
    out
        Optional C-contiguous float32 ``(n_cells, D)`` array to write into (for example a
        memory map); it is returned.
    row_offset
        Position of ``X``'s first row in a larger matrix: errors name cells there (``exc.cell``
        and the message). The result does not depend on it: rows ``a:b`` of a matrix encoded
        alone give the same bits as in a call on the whole matrix.
    preprocess
        ``"none"``: use the values as they are; ``"log1p"``: ``X`` holds raw counts, and each
        cell is normalised to 10,000 total counts and ``log1p``-transformed as the kernel reads
        it (``sc.pp.normalize_total(target_sum=1e4)`` + ``sc.pp.log1p``, duplicates summed
        first), without a copy of ``X``. Negative values are then an error.

    Returns
    -------
    float32 array of shape ``(n_cells, D)``.

    Raises
    ------
    InputError
        Bad input: :class:`~genept_fast.errors.ShapeError`,
        :class:`~genept_fast.errors.NonFiniteError` (NaN/inf; ``exc.cell``, ``exc.gene``),
        :class:`~genept_fast.errors.MalformedMatrixError`, or
        :class:`~genept_fast.errors.InvalidArgumentError` (a dtype, an option, a result larger
        than this machine's memory).
    """
    csr = as_csr(X)
    E = (
        gene_embeddings
        if isinstance(gene_embeddings, PreparedEmbeddings)
        else as_embeddings(gene_embeddings)
    )
    gi = as_gene_index(gene_index)
    if out is not None and (
        not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous
    ):
        msg = "out must be a C-contiguous float32 numpy array"
        raise InvalidArgumentError(msg)
    offset = _check_offset(row_offset)
    threads = _check_threads(n_threads)
    pre = _preprocess_arg(preprocess)
    if out is None:
        dim = E.dim if isinstance(E, PreparedEmbeddings) else int(E.shape[1])
        _check_result_size(
            csr.n_cells, dim, 4, "the GenePT-w result", "encode the cells in chunks (out=)"
        )
    return _core.weighted_embedding(
        csr.indptr,
        csr.indices,
        csr.data,
        csr.n_genes,
        E,
        gene_index=gi,
        normalize=bool(normalize),
        n_threads=threads,
        out=out,
        preprocess=pre,
        target_sum=TARGET_SUM,
        row_offset=offset,
    )


def top_genes(X: Any, n: int, *, n_threads: int | None = None, row_offset: int = 0) -> np.ndarray:
    """Per cell, the indices of the ``n`` most expressed genes.

    Only strictly positive values count; genes are in descending order of value, ties broken
    by the lower gene index; rows with fewer than ``n`` positive genes are padded with ``-1``.
    Duplicate stored entries are summed first, as scipy does.

    ``n`` is clamped to the number of genes: ``top_genes(X, 10**9)`` ranks every gene. A
    result larger than this machine's memory (cells × ``n`` × 4 bytes) is refused with a
    :class:`~genept_fast.errors.InvalidArgumentError` saying how much it would need.
    ``row_offset``: as for :func:`weighted_embedding`.

    Returns
    -------
    int32 array of shape ``(n_cells, min(n, n_genes))``.
    """
    csr = as_csr(X)
    n = min(_check_n(n), max(csr.n_genes, 1))  # the core clamps to n_genes (0 too)
    offset = _check_offset(row_offset)
    width = min(n, csr.n_genes)
    _check_result_size(csr.n_cells, width, 4, f"top_genes with n={width:,}", "ask for fewer genes")
    return _core.top_genes(
        csr.indptr,
        csr.indices,
        csr.data,
        csr.n_genes,
        n,
        n_threads=_check_threads(n_threads),
        row_offset=offset,
    )


def cell_sentences(
    X: Any,
    gene_names: Sequence[str] | np.ndarray,
    n: int,
    *,
    prefix: str = DEFAULT_PREFIX,
    sep: str = " ",
    n_threads: int | None = None,
    row_offset: int = 0,
) -> list[str]:
    """GenePT-s sentences: ``prefix`` + each cell's top-``n`` gene names joined by ``sep``.

    The gene order is that of :func:`top_genes`; a cell with no expressed gene gets ``prefix``
    alone. ``gene_names`` must have one entry per column of ``X``. Any ``n`` ≥ 1 works: no
    sentence holds more genes than its cell expresses. ``row_offset``: as for
    :func:`weighted_embedding`.
    """
    csr = as_csr(X)
    names = [str(g) for g in gene_names]
    return _core.cell_sentences(
        csr.indptr,
        csr.indices,
        csr.data,
        csr.n_genes,
        names,
        min(_check_n(n), max(csr.n_genes, 1)),
        str(prefix),
        str(sep),
        n_threads=_check_threads(n_threads),
        row_offset=_check_offset(row_offset),
    )


def sentences_from_top(
    top: npt.ArrayLike,
    gene_names: Sequence[str] | np.ndarray,
    *,
    prefix: str = DEFAULT_PREFIX,
    sep: str = " ",
    n_threads: int | None = None,
) -> list[str]:
    """Sentences from ranked genes: ``prefix`` + the names of ``top[i]``'s genes joined by ``sep``.

    ``top`` is ``(n_cells, width)`` integer, each row the cell's genes in sentence order (as
    :func:`top_genes` returns them), ended by ``-1`` padding: a row's genes stop at its first
    ``-1``. Every other entry must be a position in ``gene_names``.
    """
    arr = np.asarray(top)
    if arr.ndim != 2:
        msg = f"top must be 2-D (cells × ranked genes), got shape {arr.shape}"
        raise ShapeError(msg)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        msg = f"top must hold integer gene positions, got dtype {arr.dtype}"
        raise InvalidArgumentError(msg)
    names = [str(g) for g in gene_names]
    if arr.size and (int(arr.max()) >= len(names) or int(arr.min()) < -1):
        bad = int(arr.max()) if int(arr.max()) >= len(names) else int(arr.min())
        msg = f"top holds gene position {bad}, outside -1..{len(names) - 1} (len(gene_names) - 1)"
        raise InvalidArgumentError(msg)
    ranked = np.ascontiguousarray(arr, dtype=np.int32)
    return _core.sentences_from_top(
        ranked,
        names,
        str(prefix),
        str(sep),
        n_threads=_check_threads(n_threads),
    )


def l2_normalize(matrix: npt.ArrayLike, *, n_threads: int | None = None) -> np.ndarray:
    """Return a float32 copy of ``matrix``, each row divided by its L2 norm (zero rows stay 0)."""
    arr = np.array(matrix, dtype=np.float32, order="C", copy=True)
    if arr.ndim != 2:
        msg = f"matrix must be 2-D, got shape {arr.shape}"
        raise ShapeError(msg)
    _core.l2_normalize(arr, n_threads=_check_threads(n_threads))
    return arr


def coo_into_csr(
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_cols: int,
    *,
    base: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    first: int = 0,
    row_of: np.ndarray | None = None,
    row_ids: np.ndarray | None = None,
    col_of: np.ndarray | None = None,
) -> int:
    """Sorts a block's COO entries into CSR arrays in place, stable by row; returns how many.

    ``batches`` are the block's entries as a reader got them, ``(rows, cols, values)`` per
    batch: int64 row and column joinids (TileDB-SOMA's ``soma_dim_0`` and ``soma_dim_1``) and
    float32/float64 values, taken in order (numpy views of arrow buffers do: no copy). A row
    joinid ``j`` is block row ``j - first``; with ``row_of`` (int32) it is ``row_of[j - first]``,
    a negative one skipped (a cell read but not selected); with ``row_ids`` (int64, strictly
    increasing) its position there. A column joinid ``c`` is column ``c``, or ``col_of[c]``
    (int32) with ``col_of``. ``indptr`` (``n_rows + 1`` slots) receives ``base`` plus each row's
    start; ``indices`` and ``data`` (the values' dtype) receive the kept entries from their first
    slot: pass a chunk's arrays from its current position to fill it block by block (the
    TileDB-SOMA reader does). Each row keeps its entries in the order they come. The GIL is
    released.

    Raises :class:`~genept_fast.errors.MalformedMatrixError` for a row joinid the block does
    not hold, or a column joinid that names no column in ``[0, n_cols)`` (then ``exc.gene`` is
    that joinid and ``exc.cell`` its block row), and
    :class:`~genept_fast.errors.InvalidArgumentError` for arrays of the wrong types.
    """
    return int(
        _core.coo_into_csr(
            batches,
            int(n_cols),
            int(base),
            indptr,
            indices,
            data,
            first=int(first),
            row_of=row_of,
            row_ids=row_ids,
            col_of=col_of,
        )
    )


def resolved_threads(n_threads: int | None = None) -> int:
    """The thread count a kernel call with ``n_threads`` uses (all cores, capped by the env)."""
    return int(_core.resolved_threads(_check_threads(n_threads)))
