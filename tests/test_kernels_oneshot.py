"""GenePT-w on a plain numpy table from 2,000 cells: re-laid out for the call (issue 21 goal 2).

From 2,000 cells a plain table is checked and re-laid out tile-major on every call, in a buffer
kept from the previous such call (its contents are never reused: each call writes all of it).
Calls in a row on different tables, shapes and gene maps must each give the prepared table's
bits and agree with scipy; a bad table after a good one is refused as ``prepare_embeddings``
refuses it; a forked child gets the right result although it inherits the parent's buffer.
"""

from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import genept_fast as gf
from genept_fast.errors import GeneptError

CELLS = 2000  # the smallest call that re-lays a plain table out


def _cells(rng: np.random.Generator, n_cols: int, density: float) -> sp.csr_array:
    X = sp.random(CELLS, n_cols, density=density, format="csr", random_state=rng)
    X.data = X.data.astype(np.float32)
    return sp.csr_array(X)


def _scipy(X: sp.csr_array, E: np.ndarray, gene_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X's columns mapped onto table rows, then X @ E normalised (float64), and the tolerance."""
    keep = gene_index >= 0
    M = sp.csr_array(
        (np.ones(keep.sum()), (np.flatnonzero(keep), gene_index[keep])),
        shape=(X.shape[1], E.shape[0]),
    )
    raw = (X.astype(np.float64) @ M) @ E.astype(np.float64)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    want = np.divide(raw, norms, out=np.zeros_like(raw), where=norms > 0)
    scale = np.linalg.norm(abs(X.astype(np.float64)) @ M @ np.abs(E.astype(np.float64)), axis=1)
    tol = 1e-5 * np.divide(scale, norms[:, 0], out=np.zeros_like(scale), where=norms[:, 0] > 0)
    return want, tol[:, None] + 1e-12


@settings(max_examples=12, deadline=None)
@given(
    tables=st.lists(
        st.tuples(st.integers(1, 1700), st.sampled_from([1, 7, 96, 100, 290])),
        min_size=2,
        max_size=3,
    ),
    n_cols=st.integers(1, 600),
    density=st.floats(0.0, 0.05),
    threads=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_calls_in_a_row_equal_prepared_and_scipy(tables, n_cols, density, threads, seed):
    rng = np.random.default_rng(seed)
    X = _cells(rng, n_cols, density)
    for n_rows, d in tables:
        E = rng.standard_normal((n_rows, d)).astype(np.float32)
        gene_index = rng.integers(-1, n_rows, size=n_cols)
        plain = gf.weighted_embedding(X, E, gene_index=gene_index, n_threads=threads)
        prepared = gf.weighted_embedding(X, gf.prepare_embeddings(E), gene_index=gene_index)
        np.testing.assert_array_equal(plain, prepared)
        want, tol = _scipy(X, E, gene_index)
        assert np.all(np.abs(plain - want) <= tol)


def test_large_tables_in_a_row():
    """Tables of several MB (the kept buffer is handed back to the OS lazily between calls),
    larger, smaller and larger again, each with other values: each call sees its own table."""
    rng = np.random.default_rng(3)
    X = _cells(rng, 6000, 0.01)
    gene_index = np.arange(6000)
    for n_rows, d in [(5000, 300), (6000, 333), (3000, 200), (6000, 333)]:
        E = rng.standard_normal((n_rows, d)).astype(np.float32)
        gi = np.where(gene_index < n_rows, gene_index, -1)
        plain = gf.weighted_embedding(X, E, gene_index=gi)
        np.testing.assert_array_equal(
            plain, gf.weighted_embedding(X, gf.prepare_embeddings(E), gene_index=gi)
        )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_bad_table_after_a_good_one_is_refused_as_prepare_refuses_it(bad):
    rng = np.random.default_rng(4)
    X = _cells(rng, 900, 0.02)
    E = rng.standard_normal((900, 100)).astype(np.float32)
    gf.weighted_embedding(X, E)
    E[700, 60] = bad
    E[800, 3] = np.nan
    with pytest.raises(GeneptError) as prep:
        gf.prepare_embeddings(E)
    with pytest.raises(GeneptError) as call:
        gf.weighted_embedding(X, E)
    assert str(call.value) == str(prep.value)
    assert "gene row 700, dimension 60" in str(call.value)
    assert call.value.gene == prep.value.gene == 700


def _child(q, seed):  # pragma: no cover - runs in a forked child
    rng = np.random.default_rng(seed)
    X = _cells(rng, 800, 0.02)
    E = rng.standard_normal((800, 150)).astype(np.float32)
    same = np.array_equal(
        gf.weighted_embedding(X, E, n_threads=2), gf.weighted_embedding(X, gf.prepare_embeddings(E))
    )
    q.put(same)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_after_a_call_in_the_parent():
    rng = np.random.default_rng(5)
    X = _cells(rng, 2000, 0.02)
    E = rng.standard_normal((2000, 200)).astype(np.float32)
    gf.weighted_embedding(X, E, n_threads=2)  # the parent keeps a buffer before the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, 6))
    p.start()
    p.join(timeout=120)
    assert p.exitcode == 0, "forked child hung or crashed"
    assert q.get(timeout=5) is True
