"""Synthetic atlas-like expression data for the benchmarks (generated, never committed).

Each cell expresses about ``nnz_per_cell`` of ``n_genes`` genes with the skew of real
single-cell data: a core of ~300 genes (ribosomal, housekeeping) is present in ~90% of cells,
the rest follow a power law, so most genes are rare. Values are log1p-normalised counts
(``log1p(1e4 * count / total)``): counts are small integers, so a cell has many tied values.
``values="counts"`` gives the same cells' raw counts instead (float32, as CELLxGENE stores
them). Gene columns are shuffled so that common genes are not all at low indices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from collections.abc import Iterator

N_CORE = 300
CORE_P = 0.9


def gene_probabilities(n_genes: int, nnz_per_cell: int, seed: int = 0) -> np.ndarray:
    """Per-gene probability of being expressed in a cell; sums to ``nnz_per_cell``."""
    rng = np.random.default_rng(seed)
    n_core = min(N_CORE, n_genes)
    rest = n_genes - n_core
    p = np.empty(n_genes)
    p[:n_core] = CORE_P
    if rest:
        ranks = np.arange(1, rest + 1, dtype=np.float64)
        w = ranks**-1.2
        target = max(nnz_per_cell - n_core * CORE_P, 0.0)
        # Scale the power law to the target, capping probabilities at 0.8 (re-spread the excess).
        scale = target / w.sum()
        for _ in range(20):
            q = np.minimum(w * scale, 0.8)
            if q.sum() >= target * 0.999:
                break
            scale *= target / q.sum()
        p[n_core:] = np.minimum(w * scale, 0.8)
    return p[rng.permutation(n_genes)]


def iter_chunks(
    n_cells: int,
    n_genes: int = 30_000,
    nnz_per_cell: int = 2_000,
    *,
    seed: int = 0,
    chunk: int = 2_000,
    dtype: type = np.float32,
    values: str = "log1p",
) -> Iterator[sp.csr_array]:
    """Yield CSR chunks of at most ``chunk`` cells; together they form one matrix.

    ``values``: ``"log1p"`` (log-normalised) or ``"counts"`` (the raw counts of the same cells).
    """
    if values not in ("log1p", "counts"):
        msg = f"values must be 'log1p' or 'counts', got {values!r}"
        raise ValueError(msg)
    p = gene_probabilities(n_genes, nnz_per_cell, seed).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    for start in range(0, n_cells, chunk):
        c = min(chunk, n_cells - start)
        mask = rng.random((c, n_genes), dtype=np.float32) < p
        rows, cols = np.nonzero(mask)
        # Counts: geometric, heavier for common genes (mean ~ 1 + 3p).
        counts = rng.geometric(1.0 / (1.0 + 3.0 * p[cols])).astype(np.float64)
        totals = np.bincount(rows, weights=counts, minlength=c)
        if values == "counts":
            vals = counts.astype(dtype)
        else:
            vals = np.log1p(1e4 * counts / totals[rows]).astype(dtype)
        indptr = np.zeros(c + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=c), out=indptr[1:])
        yield sp.csr_array((vals, cols.astype(np.int32), indptr), shape=(c, n_genes))


def make_csr(
    n_cells: int,
    n_genes: int = 30_000,
    nnz_per_cell: int = 2_000,
    *,
    seed: int = 0,
    dtype: type = np.float32,
    values: str = "log1p",
) -> sp.csr_array:
    """One CSR matrix of ``n_cells`` synthetic cells (int32 indices where they fit)."""
    parts = list(iter_chunks(n_cells, n_genes, nnz_per_cell, seed=seed, dtype=dtype, values=values))
    if not parts:
        return sp.csr_array((0, n_genes), dtype=dtype)
    X = sp.vstack(parts, format="csr")
    if X.nnz < 2**31 - 1:
        X.indptr = X.indptr.astype(np.int32)
        X.indices = X.indices.astype(np.int32)
    return X


def make_embeddings(n_genes: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """A float32 gene-embedding table with rows of unit norm (like text-embedding models)."""
    rng = np.random.default_rng(seed + 2)
    e = rng.standard_normal((n_genes, dim), dtype=np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return e
