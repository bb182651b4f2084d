"""Property tests: every kernel against an obviously correct numpy/scipy reference.

Inputs cover empty matrices, empty rows, int32 and int64 indices, unsorted indices, duplicate
entries (summed, as scipy does), ties, negative and zero values, float32 and float64, all sparse
formats and dense arrays.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import genept_fast as gf

settings.register_profile("ci", max_examples=120, deadline=None)
settings.load_profile("ci")


@st.composite
def coo_parts(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Raw (rows, cols, vals, shape): possibly duplicated, in random order, with ties."""
    n = draw(st.integers(0, 12))
    g = draw(st.integers(0, 15))
    k = draw(st.integers(0, 60)) if n and g else 0
    rows = np.array(
        draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=k, max_size=k)), dtype=np.int64
    )
    cols = np.array(
        draw(st.lists(st.integers(0, max(g - 1, 0)), min_size=k, max_size=k)), dtype=np.int64
    )
    # Half-integers from a small range: many exact ties, zeros, negatives.
    vals = (
        np.array(draw(st.lists(st.integers(-4, 12), min_size=k, max_size=k)), dtype=np.float64) / 2
    )
    return rows, cols, vals, (n, g)


@st.composite
def matrices(draw: st.DrawFn) -> tuple[object, np.ndarray]:
    """A matrix in some input form, and its dense float64 value (duplicates summed)."""
    rows, cols, vals, shape = draw(coo_parts())
    dense = np.zeros(shape)
    np.add.at(dense, (rows, cols), vals)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    form = draw(st.sampled_from(["csr_raw", "csr", "csr64", "csc", "coo", "dense", "csr_matrix"]))
    if form == "dense":
        return dense.astype(dtype), dense
    coo = sp.coo_array((vals.astype(dtype), (rows, cols)), shape=shape)
    if form == "csr_raw":
        # Unsorted, duplicated CSR exactly as given (scipy would keep it as is).
        order = np.argsort(rows, kind="stable")
        indptr = np.zeros(shape[0] + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
        X = sp.csr_array(
            (vals[order].astype(dtype), cols[order].astype(np.int32), indptr), shape=shape
        )
        return X, dense
    if form == "csr64":
        X = coo.tocsr()
        X.indptr = X.indptr.astype(np.int64)
        X.indices = X.indices.astype(np.int64)
        return X, dense
    if form == "csc":
        return coo.tocsc(), dense
    if form == "coo":
        return coo, dense
    if form == "csr_matrix":
        return sp.csr_matrix(coo), dense
    return coo.tocsr(), dense


def reference_weighted(dense: np.ndarray, E: np.ndarray, normalize: bool) -> np.ndarray:
    out = dense @ E.astype(np.float64)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    return out


def reference_top(dense: np.ndarray, n: int) -> np.ndarray:
    n = min(n, dense.shape[1])  # n is clamped to the number of genes
    out = np.full((dense.shape[0], n), -1, dtype=np.int32)
    for r, row in enumerate(dense):
        genes = np.flatnonzero(row > 0)
        # Descending value, ties by ascending gene index.
        order = np.lexsort((genes, -row[genes]))[:n]
        out[r, : len(order)] = genes[order]
    return out


@given(
    m=matrices(),
    d=st.integers(1, 140),
    normalize=st.booleans(),
    edt=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**31),
    prepared=st.booleans(),
)
def test_weighted_embedding_matches_reference(m, d, normalize, edt, seed, prepared):
    X, dense = m
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((dense.shape[1], d)).astype(edt)
    table = gf.prepare_embeddings(E) if prepared else E
    got = gf.weighted_embedding(X, table, normalize=normalize)
    assert got.dtype == np.float32
    assert got.shape == (dense.shape[0], d)
    # float32 accumulation: the error is bounded relative to |X| @ |E| (the row's scale before
    # any cancellation); for normalised rows relative to the unnormalised norm likewise.
    want = reference_weighted(dense, E.astype(np.float32), normalize)
    raw_norm = np.linalg.norm(dense @ E.astype(np.float64), axis=1, keepdims=True)
    # |stored entries| summed per cell and gene: duplicates that cancel (a, -a) still count,
    # since a fused multiply-add leaves the rounding residual of a * e
    stored = abs(sp.coo_array(X)).toarray() if sp.issparse(X) else np.abs(dense)
    scale = np.linalg.norm(stored @ np.abs(E.astype(np.float64)), axis=1, keepdims=True)
    if normalize:
        scale = np.divide(scale, raw_norm, out=np.zeros_like(scale), where=raw_norm > 0)
    assert np.all(np.abs(got - want) <= 1e-5 * scale + 1e-12)
    assert np.isfinite(got).all()
    if normalize:
        zero = (raw_norm[:, 0] == 0) | (np.abs(dense).sum(axis=1) == 0)
        assert np.all(got[zero] == 0) or not zero.any()


@given(m=matrices(), n=st.integers(1, 20))
def test_top_genes_matches_reference(m, n):
    X, dense = m
    got = gf.top_genes(X, n)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, reference_top(dense, n))


@given(m=matrices(), n=st.integers(1, 6), sep=st.sampled_from([" ", ", ", ""]))
def test_cell_sentences_match_reference(m, n, sep):
    X, dense = m
    names = [f"G{j}" for j in range(dense.shape[1])]
    got = gf.cell_sentences(X, names, n, prefix="P: ", sep=sep)
    top = reference_top(dense, n)
    want = ["P: " + sep.join(names[g] for g in row if g >= 0) for row in top]
    assert got == want


@given(
    m=matrices(),
    d=st.integers(1, 70),
    seed=st.integers(0, 2**31),
    threads=st.integers(1, 3),
)
def test_gene_index_equals_reindexed_matrix(m, d, seed, threads):
    """Mapping columns through gene_index equals building the re-indexed table by hand."""
    X, dense = m
    g = dense.shape[1]
    rng = np.random.default_rng(seed)
    n_emb = int(rng.integers(1, 20))
    E = rng.standard_normal((n_emb, d)).astype(np.float32)
    gene_index = rng.integers(-1, n_emb, size=g)
    aligned = np.where((gene_index >= 0)[:, None], E[np.clip(gene_index, 0, None)], 0).astype(
        np.float32
    )
    got = gf.weighted_embedding(X, E, gene_index=gene_index, n_threads=threads)
    want = gf.weighted_embedding(X, aligned, n_threads=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_results_independent_of_threads_and_blocks():
    """Each output element is summed in ascending gene order: bitwise equal for any split."""
    from genept_fast import _core

    rng = np.random.default_rng(3)
    X = sp.random(3000, 500, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    E = rng.standard_normal((500, 200)).astype(np.float32)
    base = gf.weighted_embedding(X, E, n_threads=1)
    for threads in (2, 3):
        np.testing.assert_array_equal(gf.weighted_embedding(X, E, n_threads=threads), base)
    for block in (1, 7, 4096):
        got = _core.weighted_embedding(
            X.indptr, X.indices, X.data, 500, E, n_threads=2, block_rows=block
        )
        np.testing.assert_array_equal(got, base)
