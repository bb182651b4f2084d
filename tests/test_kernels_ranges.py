"""GenePT-w on tables of several gene ranges, row-major against tiled (hypothesis).

A plain numpy table is read in place on calls of fewer than 2,000 cells: the kernel packs
each 512-row range of it as it goes. These tables span several ranges and tile widths (below
one 96-float tile, a partial last tile), mapped through a ``gene_index`` that skips and
repeats rows, so that the packed reads are exercised where they differ from a tiled table's:
the results must be the prepared (tiled) table's bits, and agree with scipy.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import genept_fast as gf


@settings(max_examples=25, deadline=None)
@given(
    n_rows=st.integers(1, 1700),
    n_cols=st.integers(1, 1800),
    cells=st.integers(1, 40),
    d=st.sampled_from([1, 7, 40, 96, 100, 200, 290]),
    density=st.floats(0.0, 0.2),
    threads=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_row_major_table_equals_tiled_and_scipy(n_rows, n_cols, cells, d, density, threads, seed):
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n_rows, d)).astype(np.float32)
    X = sp.random(cells, n_cols, density=density, format="csr", random_state=rng)
    X.data = X.data.astype(np.float32)
    gene_index = rng.integers(-1, n_rows, size=n_cols)
    plain = gf.weighted_embedding(X, E, gene_index=gene_index, n_threads=threads)
    tiled = gf.weighted_embedding(X, gf.prepare_embeddings(E), gene_index=gene_index)
    np.testing.assert_array_equal(plain, tiled)

    # scipy: X's columns mapped onto table rows (skipped genes dropped), then X @ E.
    keep = gene_index >= 0
    M = sp.csr_array(
        (np.ones(keep.sum()), (np.flatnonzero(keep), gene_index[keep])), shape=(n_cols, n_rows)
    )
    raw = (X.astype(np.float64) @ M) @ E.astype(np.float64)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    want = np.divide(raw, norms, out=np.zeros_like(raw), where=norms > 0)
    scale = np.linalg.norm(abs(X.astype(np.float64)) @ M @ np.abs(E.astype(np.float64)), axis=1)
    tol = 1e-5 * np.divide(scale, norms[:, 0], out=np.zeros_like(scale), where=norms[:, 0] > 0)
    assert np.all(np.abs(plain - want) <= tol[:, None] + 1e-12)
