"""The paper's expression preprocessing, done per cell so that it streams.

GenePT-w weights gene embeddings by log-normalised expression. When a matrix holds raw counts,
each cell is scaled to ``target_sum`` total counts and ``log1p``-transformed, which equals
``sc.pp.normalize_total(adata, target_sum=1e4); sc.pp.log1p(adata)``. A fixed ``target_sum``
keeps the transform local to each cell, so a chunk of cells gives the same result as the whole
matrix (scanpy's default, the median of totals, would need a pass over every cell first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp

from genept_fast.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "AUTO_SAMPLE_CELLS",
    "TARGET_SUM",
    "Preprocess",
    "apply_preprocess",
    "check_preprocess",
    "has_negative",
    "looks_like_counts",
    "normalize_log1p",
    "resolve_preprocess",
]

#: Counts per cell after normalisation (scanpy's ``target_sum=1e4``).
TARGET_SUM = 1e4

#: ``"auto"``: log-normalise when the values look like raw counts; ``"log1p"``: always;
#: ``"none"``: use the values as they are.
Preprocess = Literal["auto", "log1p", "none"]


def _values(X: Any) -> np.ndarray:
    if sp.issparse(X):
        sparse: Any = X  # scipy's stubs type issparse's guard as the bare base class
        return np.asarray(sparse.data)
    return np.asarray(X)


def has_negative(X: Any) -> bool:
    """True when any stored value of ``X`` is negative (scaled data, not expression)."""
    v = _values(X)
    return bool(v.size and v.min() < 0)


def looks_like_counts(X: Any, *, max_values: int = 1_000_000) -> bool:
    """True when the (first ``max_values``) stored values are non-negative integers.

    Log-normalised or scaled data has fractional (or negative) values; count matrices do not.
    An all-zero matrix is not treated as counts.
    """
    v = _values(X).ravel()[:max_values]
    v = v[v != 0]
    if v.size == 0:
        return False
    if np.issubdtype(v.dtype, np.integer):
        return bool((v >= 0).all())
    if not np.issubdtype(v.dtype, np.floating):
        return False
    return bool((v >= 0).all() and np.all(np.floor(v) == v))


def normalize_log1p(X: Any, *, target_sum: float = TARGET_SUM) -> sp.csr_array:
    """Return ``log1p(target_sum * X / rowsum(X))`` as a new float32 CSR array.

    The input is never modified. Cells with zero total stay zero. Negative values are an error
    (they cannot be counts).
    """
    csr = sp.csr_array(X, dtype=np.float32, copy=True)
    csr.sum_duplicates()
    if csr.data.size and csr.data.min() < 0:
        msg = "cannot log-normalise: the matrix has negative values, so it does not hold counts"
        raise InputError(msg)
    totals = np.asarray(csr.sum(axis=1)).ravel().astype(np.float64)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    counts_per_row = np.diff(csr.indptr)
    csr.data *= np.repeat(scale, counts_per_row).astype(np.float32)
    np.log1p(csr.data, out=csr.data)
    return csr


#: Cells read from the start of a matrix to decide ``preprocess="auto"``.
AUTO_SAMPLE_CELLS = 2_000


def check_preprocess(how: Any) -> str:
    """``how`` if it is ``"auto"``, ``"log1p"`` or ``"none"``, else an :class:`InputError`."""
    if how not in ("auto", "log1p", "none"):
        msg = f"preprocess must be 'auto', 'log1p' or 'none', got {how!r}"
        raise InputError(msg)
    return str(how)


def resolve_preprocess(how: str, sample: Callable[[], Any]) -> Literal["log1p", "none"]:
    """Decide ``how`` once for a whole matrix, so that every chunk is treated alike.

    ``sample`` returns the first cells (about :data:`AUTO_SAMPLE_CELLS`); it is only called for
    ``"auto"``, which becomes ``"log1p"`` when they look like raw counts, else ``"none"``.
    """
    if check_preprocess(how) == "auto":
        return "log1p" if looks_like_counts(sample()) else "none"
    return "log1p" if how == "log1p" else "none"


def apply_preprocess(X: Any, how: Preprocess = "auto") -> tuple[Any, bool]:
    """Apply ``how`` to ``X``; returns the matrix to encode and whether it was log-normalised."""
    if how == "none":
        return X, False
    if check_preprocess(how) == "log1p" or (how == "auto" and looks_like_counts(X)):
        return normalize_log1p(X), True
    return X, False
