"""Property tests: every kernel against an obviously correct numpy/scipy reference.

Inputs cover empty matrices, empty rows, int32 and int64 indices, unsorted indices, duplicate
entries (summed, as scipy does), ties, negative and zero values, float32 and float64, all sparse
formats and dense arrays. GenePT-w is also checked with a dense-gene set (the GEMM path) and
with the fused raw-count preprocessing, and for bitwise equality across chunks and threads.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import genept_fast as gf
from genept_fast import GeneptError, _core
from genept_fast.preprocess import normalize_log1p

settings.register_profile("ci", max_examples=120, deadline=None)
settings.load_profile("ci")


@st.composite
def coo_parts(
    draw: st.DrawFn, counts: bool = False, max_cells: int = 12
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Raw (rows, cols, vals, shape): possibly duplicated, in random order, with ties.

    ``counts``: non-negative integers (raw counts, many zeros and ties), else half-integers
    from a small range (ties, zeros and negatives).
    """
    n = draw(st.integers(0, max_cells))
    g = draw(st.integers(0, 15))
    k = draw(st.integers(0, 5 * max_cells)) if n and g else 0
    rows = np.array(
        draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=k, max_size=k)), dtype=np.int64
    )
    cols = np.array(
        draw(st.lists(st.integers(0, max(g - 1, 0)), min_size=k, max_size=k)), dtype=np.int64
    )
    lo, hi, scale = (0, 30, 1) if counts else (-4, 12, 2)
    vals = (
        np.array(draw(st.lists(st.integers(lo, hi), min_size=k, max_size=k)), dtype=np.float64)
        / scale
    )
    return rows, cols, vals, (n, g)


@st.composite
def matrices(
    draw: st.DrawFn, counts: bool = False, max_cells: int = 12
) -> tuple[object, np.ndarray]:
    """A matrix in some input form, and its dense float64 value (duplicates summed)."""
    rows, cols, vals, shape = draw(coo_parts(counts, max_cells))
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


def _stored_abs(X, dense: np.ndarray) -> np.ndarray:
    """|stored entries| summed per cell and gene: duplicates that cancel (a, -a) still count,
    since a fused multiply-add leaves the rounding residual of a * e. Added by hand: scipy's
    abs() of a COO array sums the duplicates first."""
    if not sp.issparse(X):
        return np.abs(dense)
    coo = sp.coo_array(X)
    stored = np.zeros(dense.shape)
    np.add.at(stored, (coo.row, coo.col), np.abs(coo.data.astype(np.float64)))
    return stored


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
    stored = _stored_abs(X, dense)
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


def reference_log1p(dense: np.ndarray) -> np.ndarray:
    """normalize_total(1e4) + log1p of a dense count matrix, in float64."""
    totals = dense.sum(axis=1, keepdims=True)
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(dense * scale)


def _bound(
    dense: np.ndarray, E: np.ndarray, normalize: bool, stored: np.ndarray | None = None
) -> np.ndarray:
    """float32 accumulation error bound per row: relative to |X| @ |E| (before cancellation;
    ``stored``: |X| with duplicates summed as absolute values, see _stored_abs)."""
    raw_norm = np.linalg.norm(dense @ E.astype(np.float64), axis=1, keepdims=True)
    absx = np.abs(dense) if stored is None else stored
    scale = np.linalg.norm(absx @ np.abs(E.astype(np.float64)), axis=1, keepdims=True)
    if normalize:
        scale = np.divide(scale, raw_norm, out=np.zeros_like(scale), where=raw_norm > 0)
    return 1e-5 * scale + 1e-12


def _chunks(X: object, n: int, cuts: list[int]) -> list[object]:
    Xc = sp.csr_array(X) if sp.issparse(X) else np.asarray(X)
    edges = [0, *sorted({min(c, n) for c in cuts}), n]
    return [Xc[a:b] for a, b in itertools.pairwise(edges)]


@given(
    m=matrices(max_cells=30),
    d=st.integers(1, 110),
    normalize=st.booleans(),
    seed=st.integers(0, 2**31),
    cuts=st.lists(st.integers(0, 30), max_size=3),
    threads=st.integers(1, 3),
)
def test_weighted_embedding_is_bitwise_stable_across_chunks_and_threads(
    m, d, normalize, seed, cuts, threads
):
    """The reference to float32 rounding, and the same bits for any chunking and thread count
    (chunks named by their row_offset, which must not change the result)."""
    X, dense = m
    n, g = dense.shape
    E = np.random.default_rng(seed).standard_normal((g, d)).astype(np.float32)
    got = gf.weighted_embedding(X, E, normalize=normalize, n_threads=threads)
    want = reference_weighted(dense, E, normalize)
    bound = _bound(dense, E, normalize, _stored_abs(X, dense))
    assert np.all(np.abs(got - want) <= bound)
    chunks = _chunks(X, n, cuts)
    starts = [0, *itertools.accumulate(c.shape[0] for c in chunks)]
    parts = [
        gf.weighted_embedding(c, E, normalize=normalize, n_threads=1, row_offset=a)
        for c, a in zip(chunks, starts, strict=False)
    ]
    stacked = np.concatenate(parts) if parts else got[:0]
    assert stacked.tobytes() == got.tobytes()  # bitwise, +0.0 and -0.0 told apart
    assert not np.signbit(got[got == 0]).any()


@given(
    m=matrices(counts=True, max_cells=30),
    d=st.integers(1, 100),
    seed=st.integers(0, 2**31),
    cuts=st.lists(st.integers(0, 30), max_size=3),
    threads=st.integers(1, 3),
)
def test_fused_log1p_matches_two_step_path_and_reference(m, d, seed, cuts, threads):
    """preprocess='log1p' on raw counts (duplicates, unsorted, int64, float32/64, empty rows):
    the float64 reference and the two-step path (normalize_log1p, then the kernel) to float32
    rounding, and the same bits for any chunking and thread count."""
    X, dense = m
    n, g = dense.shape
    E = np.random.default_rng(seed).standard_normal((g, d)).astype(np.float32)
    got = gf.weighted_embedding(X, E, preprocess="log1p", n_threads=threads)
    lognorm = reference_log1p(dense)
    bound = _bound(lognorm, E, True)
    assert np.all(np.abs(got - reference_weighted(lognorm, E, True)) <= bound)
    two_step = gf.weighted_embedding(normalize_log1p(X), E)
    assert np.all(np.abs(got - two_step) <= 2 * bound)
    assert np.all(got[dense.sum(axis=1) == 0] == 0)  # zero total: zero embedding
    parts = [
        gf.weighted_embedding(c, E, preprocess="log1p", n_threads=1) for c in _chunks(X, n, cuts)
    ]
    stacked = np.concatenate(parts) if parts else got[:0]
    assert stacked.tobytes() == got.tobytes()


@given(
    seed=st.integers(0, 2**31),
    kinds=st.lists(st.sampled_from(["low", "tagged", "large", "fraction", "empty"]), max_size=12),
    g=st.integers(1, 400),
    index64=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    cuts=st.lists(st.integers(0, 12), max_size=2),
)
@settings(max_examples=60)
def test_fused_log1p_each_lookup_path_matches_reference(seed, kinds, g, index64, dtype, cuts):
    """Rows that take each of the kernel's log1p lookups: many entries with small counts (the
    table filled at once), few entries (remembered per count), a count of 1024 or more or a
    fraction (computed per value): the float64 reference to float32 rounding, and the same
    bits for any chunking."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((len(kinds), g))
    for r, kind in enumerate(kinds):
        if kind == "empty":
            continue
        k = g if kind == "low" else max(1, g // 8)
        cols = rng.choice(g, size=min(k, g), replace=False)
        v = rng.integers(1, 4, size=cols.size).astype(np.float64)
        if kind == "tagged":
            v = rng.integers(0, 1024, size=cols.size).astype(np.float64)
        if kind == "large":
            v[rng.integers(cols.size)] = rng.integers(1024, 100_000)
        if kind == "fraction":
            v[rng.integers(cols.size)] += 0.5
        dense[r, cols] = v
    X = sp.csr_array(dense.astype(dtype))
    if index64:
        X.indices = X.indices.astype(np.int64)
        X.indptr = X.indptr.astype(np.int64)
    E = rng.standard_normal((g, 24)).astype(np.float32)
    got = gf.weighted_embedding(X, E, preprocess="log1p")
    lognorm = reference_log1p(dense)
    assert np.all(np.abs(got - reference_weighted(lognorm, E, True)) <= _bound(lognorm, E, True))
    if "fraction" not in kinds:
        # Integer counts: the kernel's values are float32(log1p(x * (1e4 / total))) with an
        # exact float64 total, whichever lookup it used, so it equals the plain kernel on
        # those values computed by numpy, bit for bit.
        total = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
        scale = np.divide(1e4, total, out=np.zeros_like(total), where=total > 0)
        per_entry = np.repeat(scale, np.diff(X.indptr))
        Xlog = sp.csr_array((X.data, X.indices, X.indptr), shape=X.shape)
        Xlog.data = np.log1p(X.data.astype(np.float64) * per_entry).astype(np.float32)
        assert got.tobytes() == gf.weighted_embedding(Xlog, E).tobytes()
    parts = [gf.weighted_embedding(c, E, preprocess="log1p") for c in _chunks(X, len(kinds), cuts)]
    stacked = np.concatenate(parts) if parts else got[:0]
    assert stacked.tobytes() == got.tobytes()


def test_fused_log1p_rejects_negative_counts_and_bad_options():
    X = sp.csr_array(np.array([[1.0, 2.0], [0.0, -3.0]], dtype=np.float32))
    E = np.eye(2, dtype=np.float32)
    with pytest.raises(GeneptError, match=r"negative values .*cell 1, gene 1"):
        gf.weighted_embedding(X, E, preprocess="log1p")
    with pytest.raises(GeneptError, match="preprocess must be"):
        gf.weighted_embedding(X, E, preprocess="auto")


def test_dense_gemm_path_is_gone():
    """The dense-gene GEMM was removed (measured a wash against the gather): its parameter is
    a TypeError and its helpers are gone."""
    X = sp.csr_array(np.array([[1.0, 2.0], [0.0, 3.0]], dtype=np.float32))
    E = np.eye(2, dtype=np.float32)
    with pytest.raises(TypeError, match="dense_genes"):
        gf.weighted_embedding(X, E, dense_genes=None)
    assert not hasattr(gf.kernels, "dense_genes")
    assert not hasattr(gf.kernels, "DENSE_MIN_FRACTION")
    assert not hasattr(_core, "choose_dense_genes")
    with pytest.raises(TypeError, match="dense_genes"):
        _core.weighted_embedding(X.indptr, X.indices, X.data, 2, E, dense_genes=None)
