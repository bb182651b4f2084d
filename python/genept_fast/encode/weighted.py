"""GenePT-w: each cell's expression-weighted sum of gene embeddings, by the Rust kernel.

:class:`WeightedEncoder` is the kernel with a fixed table, as the encoder of
:func:`genept_fast.stream.encode_file` (:func:`genept_fast.stream.encode_weighted`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from genept_fast.kernels import (
    as_embeddings,
    as_gene_index,
    prepare_embeddings,
    table_fingerprint,
    weighted_embedding,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import scipy.sparse as sp

__all__ = ["WeightedEncoder"]


class WeightedEncoder:
    """GenePT-w as an ``encoder`` for :func:`encode_file`: the Rust weighted-sum kernel.

    Calling it on a CSR chunk returns :func:`genept_fast.weighted_embedding` of the chunk. The
    table is checked and laid out for the kernel once (:func:`genept_fast.prepare_embeddings`),
    not per chunk, and only that copy is kept. The ``fingerprint`` (a hash of the table,
    ``gene_index`` and ``normalize``) identifies it in resume manifests. :meth:`begin` fixes
    the job's preprocessing once (then applied by the kernel as it reads each raw chunk).
    """

    def __init__(
        self,
        gene_embeddings: npt.ArrayLike,
        *,
        gene_index: npt.ArrayLike | None = None,
        normalize: bool = True,
        n_threads: int | None = None,
    ) -> None:
        E = as_embeddings(gene_embeddings)
        self.shape: tuple[int, int] = (int(E.shape[0]), int(E.shape[1]))
        self.gene_index = as_gene_index(gene_index)
        self.normalize = bool(normalize)
        self.n_threads = n_threads
        self.fingerprint = f"genept-w:{table_fingerprint(E, self.gene_index, self.normalize)}"
        self.table = prepare_embeddings(E, n_threads=n_threads)
        self.preprocess = "none"

    @property
    def dim(self) -> int:
        return self.shape[1]

    def begin(self, sample: Any, preprocess: str) -> dict[str, Any]:
        """Fix the job's resolved ``preprocess`` (``"log1p"`` or ``"none"``), which the kernel
        then applies to each raw chunk itself. Returns what the resume manifest records."""
        del sample
        self.preprocess = preprocess
        return {}

    def __call__(self, X: sp.csr_array, *, row_offset: int = 0) -> np.ndarray:
        return weighted_embedding(
            X,
            self.table,
            gene_index=self.gene_index,
            normalize=self.normalize,
            n_threads=self.n_threads,
            preprocess=self.preprocess,
            row_offset=row_offset,
        )
