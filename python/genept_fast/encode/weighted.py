"""GenePT-w: each cell's expression-weighted sum of gene embeddings, by the Rust kernel.

:class:`WeightedEncoder` is the only code that turns chunks of cells into GenePT-w embeddings:
``gf.tl.genept_w`` calls it on the chunks of an AnnData, the streaming pipeline
(:func:`genept_fast.stream.encode_weighted`) on the chunks of a file, and Dask
(:mod:`genept_fast.dask`) on each row block, on any worker.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast.errors import InputError
from genept_fast.kernels import (
    as_embeddings,
    as_gene_index,
    prepare_embeddings,
    table_fingerprint,
    weighted_embedding,
)

if TYPE_CHECKING:
    import numpy.typing as npt
    import scipy.sparse as sp

    from genept_fast.kernels import PreparedEmbeddings

__all__ = ["WeightedEncoder"]


def _aligned(a: np.ndarray, dtype: type) -> np.ndarray:
    # Arrays deserialised by distributed can sit at unaligned addresses; the core wants aligned.
    return np.require(a, dtype=dtype, requirements=["C", "A"])


class WeightedEncoder:
    """GenePT-w with a fixed table: ``enc(chunk, row_offset=a)`` embeds rows ``a:`` of a matrix.

    Parameters
    ----------
    gene_embeddings
        Table rows × D, float32 (float64 is cast once): the rows in use
        (:func:`genept_fast.encode.match_table` keeps only those).
    gene_index
        Length-``n_genes`` map from the matrix's columns to table rows (``-1``: no embedding);
        ``None``: row ``j`` embeds column ``j``.
    normalize
        L2-normalise each cell's embedding.
    n_threads
        Kernel threads per call (default all cores, capped by ``GENEPT_FAST_NUM_THREADS``).
    preprocess
        ``"log1p"``: each chunk holds raw counts, normalised to 10,000 per cell and
        ``log1p``-transformed by the kernel as it reads them; ``"none"``: the values as they are.
        A job decides it once, from its first cells (:func:`genept_fast.encode.open_job`).

    Notes
    -----
    The table is laid out for the kernel (:func:`genept_fast.prepare_embeddings`) on the first
    call in each process, once, and the plain rows are then dropped: only one copy is kept.
    Pickled before that (Dask ships the encoder to its workers: the scheduler's threads share
    one object, a ``distributed`` cluster gets it scattered once per worker), the encoder
    carries the plain rows, the gene index and its options. ``fingerprint`` (a hash of the
    table, ``gene_index`` and ``normalize``) identifies it in resume manifests and Dask graphs.
    """

    def __init__(
        self,
        gene_embeddings: npt.ArrayLike,
        *,
        gene_index: npt.ArrayLike | None = None,
        normalize: bool = True,
        n_threads: int | None = None,
        preprocess: str = "none",
    ) -> None:
        E = as_embeddings(gene_embeddings)
        self.gene_index = as_gene_index(gene_index)
        self.normalize = bool(normalize)
        self.fingerprint = f"genept-w:{table_fingerprint(E, self.gene_index, self.normalize)}"
        self._setup(E, n_threads, preprocess)

    def _setup(self, E: np.ndarray, n_threads: int | None, preprocess: str) -> None:
        self.begin(preprocess)
        self.shape: tuple[int, int] = (int(E.shape[0]), int(E.shape[1]))
        self.n_threads = n_threads
        self._rows: np.ndarray | None = E
        self._table: PreparedEmbeddings | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.shape[1]

    @property
    def n_genes(self) -> int | None:
        """Columns of the matrices it encodes (``None``: one per table row)."""
        return None if self.gene_index is None else int(self.gene_index.shape[0])

    def check_genes(self, n_genes: int, what: str) -> None:
        """Refuse a matrix of ``n_genes`` columns (named ``what``) the table does not map."""
        if self.gene_index is not None and self.gene_index.shape[0] != n_genes:
            msg = (
                f"gene_index has {self.gene_index.shape[0]} entries but {what} has {n_genes} genes"
            )
            raise InputError(msg)
        if self.gene_index is None and self.shape[0] != n_genes:
            msg = (
                f"gene_embeddings has {self.shape[0]} rows but {what} has {n_genes} genes; "
                "pass gene_index= to map genes to rows"
            )
            raise InputError(msg)

    def table(self) -> PreparedEmbeddings:
        """The kernel-ready table, laid out on first use in this process."""
        with self._lock:
            if self._table is None:
                assert self._rows is not None  # dropped only once the table exists
                self._table = prepare_embeddings(self._rows, n_threads=self.n_threads)
                self._rows = None
            return self._table

    def begin(self, preprocess: str) -> None:
        """Fix the job's resolved ``preprocess`` (``"log1p"`` or ``"none"``), which the kernel
        then applies to each chunk as it reads it (see
        :func:`genept_fast.stream.encode_file`)."""
        if preprocess not in ("log1p", "none"):
            msg = f"preprocess must be 'log1p' or 'none' once a job starts, got {preprocess!r}"
            raise InputError(msg)
        self.preprocess = preprocess

    def __call__(
        self, X: sp.csr_array, *, row_offset: int = 0, out: np.ndarray | None = None
    ) -> np.ndarray:
        """GenePT-w of the cells of ``X``, rows ``row_offset:`` of the whole matrix (errors name
        cells there); written into ``out`` when given."""
        return weighted_embedding(
            X,
            self.table(),
            gene_index=self.gene_index,
            normalize=self.normalize,
            n_threads=self.n_threads,
            out=out,
            row_offset=row_offset,
            preprocess=self.preprocess,
        )

    def __getstate__(self) -> dict[str, Any]:
        if self._rows is None:
            msg = (
                "this WeightedEncoder has laid its table out for the kernel and dropped the "
                "plain rows; build a new one to send it to another process"
            )
            raise InputError(msg)
        return {
            "rows": self._rows,
            "gene_index": self.gene_index,
            "normalize": self.normalize,
            "n_threads": self.n_threads,
            "preprocess": self.preprocess,
            "fingerprint": self.fingerprint,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        gi = state["gene_index"]
        self.gene_index = None if gi is None else _aligned(gi, np.int64)
        self.normalize = state["normalize"]
        self.fingerprint = state["fingerprint"]
        self._setup(_aligned(state["rows"], np.float32), state["n_threads"], state["preprocess"])

    def __dask_tokenize__(self) -> str:
        return f"{self.fingerprint}:{self.preprocess}"
