"""The kernels' Python API: shapes, dtypes, copies, threads, fork safety, and every bad input."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import genept_fast as gf
from genept_fast import GeneptError, _core


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    X = sp.random(40, 30, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    E = rng.standard_normal((30, 16)).astype(np.float32)
    return X, E


def test_kernel_errors_are_value_errors(small):
    # GeneptError was a ValueError; now the input branch is (service errors are not)
    assert issubclass(gf.InputError, ValueError) and issubclass(gf.InputError, GeneptError)
    assert not hasattr(_core, "GeneptError")  # the classes live in genept_fast.errors
    X, E = small
    with pytest.raises(ValueError, match="shape mismatch"):
        gf.weighted_embedding(X, E[:5])


def test_weighted_basic_and_zero_rows(small):
    X, E = small
    X = X.tolil()
    X[3, :] = 0
    X = X.tocsr()
    out = gf.weighted_embedding(X, E)
    assert out.shape == (40, 16) and out.dtype == np.float32
    assert np.all(out[3] == 0)
    norms = np.linalg.norm(out, axis=1)
    assert np.allclose(norms[norms > 0], 1, atol=1e-6)
    raw = gf.weighted_embedding(X, E, normalize=False)
    np.testing.assert_allclose(raw, X @ E, rtol=1e-5, atol=1e-5)


def test_row_whose_genes_have_no_embedding_stays_zero():
    X = sp.csr_array(np.array([[1.0, 0, 0], [0, 2.0, 3.0]], dtype=np.float32))
    E = np.array([[0, 0], [1, 0], [0, 1]], dtype=np.float32)
    out = gf.weighted_embedding(X, E)
    assert np.all(out[0] == 0) and not np.isnan(out).any()
    np.testing.assert_allclose(out[1], [2 / np.sqrt(13), 3 / np.sqrt(13)], rtol=1e-6)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)])
def test_empty_inputs(shape):
    X = sp.csr_array(shape, dtype=np.float32)
    E = np.zeros((shape[1], 3), dtype=np.float32)
    assert gf.weighted_embedding(X, E).shape == (shape[0], 3)
    top = gf.top_genes(X, 2)
    # n is clamped to the number of genes (issue #9): no genes, no columns.
    assert top.shape == (shape[0], min(2, shape[1])) and np.all(top == -1)
    assert (
        gf.cell_sentences(X, [f"g{i}" for i in range(shape[1])], 2)
        == [gf.DEFAULT_PREFIX] * shape[0]
    )


def test_zero_dimension_embeddings(small):
    X, _ = small
    assert gf.weighted_embedding(X, np.zeros((30, 0), dtype=np.float32)).shape == (40, 0)


def test_integer_and_bool_values_are_cast(small):
    X, E = small
    Xi = X.copy()
    Xi.data = np.ceil(Xi.data * 10).astype(np.int64)
    np.testing.assert_allclose(
        gf.weighted_embedding(Xi, E), gf.weighted_embedding(Xi.astype(np.float64), E), rtol=1e-6
    )
    Xb = (X > 0.5).astype(bool)
    assert gf.top_genes(Xb, 3).shape == (40, 3)


def test_dense_and_float64_embeddings(small):
    X, E = small
    a = gf.weighted_embedding(X.toarray(), E.astype(np.float64))
    b = gf.weighted_embedding(X, E)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_prepared_table_equals_array_bitwise():
    rng = np.random.default_rng(5)
    X = sp.random(2500, 120, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    E = rng.standard_normal((120, 200)).astype(np.float32)
    P = gf.prepare_embeddings(E)
    assert P.shape == (120, 200) and gf.prepare_embeddings(P) is P
    full = gf.weighted_embedding(X, P)  # tiled
    np.testing.assert_array_equal(full, gf.weighted_embedding(X, E))  # >= 2000 cells: tiled
    np.testing.assert_array_equal(full[:100], gf.weighted_embedding(X[:100], E))  # row-major
    np.testing.assert_array_equal(full[:1999], gf.weighted_embedding(X[:1999], E))
    with pytest.raises(GeneptError, match=r"X has 120 genes .* 119 rows"):
        gf.weighted_embedding(X, gf.prepare_embeddings(E[:119]))
    with pytest.raises(GeneptError, match=r"gene row 3"):
        E[3, 0] = np.nan
        gf.prepare_embeddings(E)


def test_out_parameter_writes_in_place(small, tmp_path):
    X, E = small
    mm = np.lib.format.open_memmap(tmp_path / "o.npy", mode="w+", dtype=np.float32, shape=(40, 16))
    ret = gf.weighted_embedding(X, E, out=mm)
    assert ret is mm
    np.testing.assert_array_equal(np.asarray(mm), gf.weighted_embedding(X, E))
    with pytest.raises(GeneptError, match="out has shape"):
        gf.weighted_embedding(X, E, out=np.zeros((39, 16), dtype=np.float32))
    with pytest.raises(GeneptError, match="C-contiguous float32"):
        gf.weighted_embedding(X, E, out=np.zeros((40, 16), dtype=np.float64))


def test_csr_is_borrowed_not_copied(small):
    """The CSR arrays handed to the core are the user's own buffers."""
    from genept_fast.kernels import as_csr

    X, _ = small
    parts = as_csr(X)
    assert parts.data is X.data and parts.indices is X.indices and parts.indptr is X.indptr


def test_l2_normalize():
    m = np.array([[3, 4], [0, 0]], dtype=np.float64)
    np.testing.assert_allclose(gf.l2_normalize(m), [[0.6, 0.8], [0, 0]])
    assert m[0, 0] == 3


def test_thread_counts(small):
    X, E = small
    base = gf.weighted_embedding(X, E, n_threads=1)
    np.testing.assert_array_equal(gf.weighted_embedding(X, E, n_threads=4), base)
    with pytest.raises(GeneptError, match="n_threads"):
        gf.weighted_embedding(X, E, n_threads=0)
    with pytest.raises(GeneptError, match="n_threads"):
        gf.top_genes(X, 3, n_threads=-2)
    with pytest.raises(GeneptError, match="n_threads"):
        gf.top_genes(X, 3, n_threads=1.5)  # type: ignore[arg-type]


def test_thread_env_cap():
    code = "from genept_fast import _core; print(_core.resolved_threads(64))"
    env = {**os.environ, "GENEPT_FAST_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"
    env["GENEPT_FAST_NUM_THREADS"] = "lots"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "GENEPT_FAST_NUM_THREADS" in bad.stderr


def _child_encode(q):  # pragma: no cover - runs in a forked child
    rng = np.random.default_rng(1)
    X = sp.random(500, 50, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    E = rng.standard_normal((50, 8)).astype(np.float32)
    q.put(gf.weighted_embedding(X, E, n_threads=2).sum())


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_safe_after_fork(small):
    X, E = small
    gf.weighted_embedding(X, E, n_threads=2)  # the parent's pool exists before the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_encode, args=(q,))
    p.start()
    p.join(timeout=60)
    assert p.exitcode == 0, "forked child hung or crashed"
    assert np.isfinite(q.get(timeout=5))


# ---------------------------------------------------------------- bad input, one test each


def test_shape_mismatch(small):
    X, E = small
    with pytest.raises(GeneptError, match=r"X has 30 genes .* gene_embeddings has 29 rows"):
        gf.weighted_embedding(X, E[:29])


def test_wrong_ndim(small):
    X, E = small
    with pytest.raises(GeneptError, match="X must be 2-D"):
        gf.weighted_embedding(np.ones(5), E)
    with pytest.raises(GeneptError, match="gene_embeddings must be 2-D"):
        gf.weighted_embedding(X, E[0])
    with pytest.raises(GeneptError, match="X must be 2-D"):
        gf.top_genes(np.ones((2, 2, 2)), 1)


def test_nan_in_x_names_cell_and_gene(small):
    X, E = small
    X = X.copy()
    r = 5
    k = X.indptr[r]
    X.data[k] = np.nan
    with pytest.raises(GeneptError, match=rf"X contains NaN at cell {r}, gene {X.indices[k]}"):
        gf.weighted_embedding(X, E)
    with pytest.raises(GeneptError, match="NaN"):
        gf.top_genes(X, 3)


def test_inf_in_x_dense():
    X = np.zeros((3, 2), dtype=np.float32)
    X[2, 1] = -np.inf
    with pytest.raises(GeneptError, match=r"-inf at cell 2, gene 1"):
        gf.cell_sentences(X, ["a", "b"], 1)


def test_nan_in_embeddings_names_gene(small):
    X, E = small
    E = E.copy()
    E[7, 3] = np.inf
    with pytest.raises(
        GeneptError, match=r"gene_embeddings contains \+inf at gene row 7, dimension 3"
    ):
        gf.weighted_embedding(X, E)


def _raw(indptr, indices, data, n_cols=4):
    return sp.csr_array(
        (np.asarray(data, np.float32), np.asarray(indices, np.int32), np.asarray(indptr, np.int32)),
        shape=(len(indptr) - 1, n_cols),
    )


def test_indptr_not_monotone():
    X = _raw([0, 2, 1, 3], [0, 1, 2], [1, 1, 1])
    with pytest.raises(GeneptError, match="indptr decreases at cell 1"):
        gf.top_genes(X, 2)


def test_index_out_of_range():
    X = _raw([0, 1, 2], [0, 1], [1, 1], n_cols=4)
    X.indices[1] = 9
    with pytest.raises(GeneptError, match=r"cell 1 has gene index 9 outside \[0, 4\)"):
        gf.weighted_embedding(X, np.ones((4, 2), np.float32))
    X.indices[1] = -3
    with pytest.raises(GeneptError, match="gene index -3"):
        gf.top_genes(X, 1)


def test_inconsistent_lengths():
    with pytest.raises(GeneptError, match="indptr\\[-1\\] is 3 but there are 2 stored values"):
        _core.top_genes(
            np.array([0, 1, 3], np.int32), np.array([0, 1], np.int32), np.ones(2, np.float32), 4, 1
        )
    with pytest.raises(GeneptError, match="indices has 3 entries but data has 2"):
        _core.top_genes(
            np.array([0, 2], np.int32), np.array([0, 1, 2], np.int32), np.ones(2, np.float32), 4, 1
        )
    with pytest.raises(GeneptError, match="indptr\\[0\\] is 1"):
        _core.top_genes(np.array([1, 2], np.int64), np.array([0], np.int64), np.ones(1), 4, 1)


def test_bad_n(small):
    X, _ = small
    for n in (0, -1, 2.5, True):
        with pytest.raises(GeneptError, match="n must be"):
            gf.top_genes(X, n)  # type: ignore[arg-type]
    with pytest.raises(GeneptError, match="n must be"):
        gf.cell_sentences(X, [str(i) for i in range(30)], 0)


def test_gene_names_wrong_length(small):
    X, _ = small
    with pytest.raises(GeneptError, match="gene_names has 29 entries but X has 30 genes"):
        gf.cell_sentences(X, [str(i) for i in range(29)], 3)


def test_unsupported_dtype(small):
    X, E = small
    with pytest.raises(GeneptError, match="unsupported dtype complex128"):
        gf.weighted_embedding(X.astype(np.complex128), E)
    with pytest.raises(GeneptError, match="gene_embeddings has unsupported dtype"):
        gf.weighted_embedding(X, E.astype("U3"))
    with pytest.raises(GeneptError, match="unsupported CSR dtypes"):
        _core.top_genes(
            np.array([0, 1], np.int32), np.array([0], np.int64), np.ones(1, np.float32), 4, 1
        )
    with pytest.raises(GeneptError, match="unsupported CSR dtypes"):
        _core.top_genes(
            np.array([0, 1], np.int32), np.array([0], np.int32), np.ones(1, np.int8), 4, 1
        )


def test_bad_gene_index(small):
    X, E = small
    with pytest.raises(GeneptError, match="gene_index has 3 entries but X has 30 genes"):
        gf.weighted_embedding(X, E, gene_index=[0, 1, 2])
    with pytest.raises(GeneptError, match=r"gene_index\[2\] = 30 is outside \[-1, 30\)"):
        gf.weighted_embedding(X, E, gene_index=[0, 1, 30, *range(27)])
    with pytest.raises(GeneptError, match="1-D integer"):
        gf.weighted_embedding(X, E, gene_index=np.zeros(30))


def test_float32_overflow_is_an_error():
    X = sp.csr_array(np.array([[3e38]], dtype=np.float32))
    with pytest.raises(GeneptError, match="cell 0 exceeds the float32 range"):
        gf.weighted_embedding(X, np.array([[10.0]], dtype=np.float32))


def test_non_contiguous_inputs_are_handled(small):
    X, E = small
    Ef = np.asfortranarray(E)
    np.testing.assert_array_equal(gf.weighted_embedding(X, Ef), gf.weighted_embedding(X, E))
    with pytest.raises(GeneptError, match="C-contiguous"):
        _core.weighted_embedding(X.indptr, X.indices, X.data, 30, Ef)
    with pytest.raises(GeneptError, match="C-contiguous"):
        _core.weighted_embedding(
            X.indptr, X.indices, X.data, 30, E, out=np.zeros((16, 40), np.float32).T
        )
    with pytest.raises(GeneptError, match="C-contiguous"):
        _core.l2_normalize(np.zeros((3, 4), np.float32).T)


def test_anndata_style_int64_indptr_with_int32_indices(small):
    """indptr is narrowed (cheap) rather than indices widened (a copy of nnz values)."""
    from genept_fast.kernels import as_csr

    X, E = small
    Y = X.copy()
    Y.indptr = X.indptr.astype(np.int64)  # as anndata writes it
    Y.indices = X.indices.astype(np.int32)
    parts = as_csr(Y)
    assert parts.indices is Y.indices and parts.indptr.dtype == np.int32
    np.testing.assert_array_equal(gf.weighted_embedding(Y, E), gf.weighted_embedding(X, E))


def test_unaligned_buffers_are_accepted(small):
    X, E = small
    buf = np.zeros(E.size * 4 + 1, dtype=np.uint8)
    Eu = np.frombuffer(buf.data, dtype=np.float32, count=E.size, offset=1).reshape(E.shape)
    assert not Eu.flags.aligned
    buf[1:] = np.frombuffer(E.tobytes(), dtype=np.uint8)
    np.testing.assert_array_equal(gf.weighted_embedding(X, Eu), gf.weighted_embedding(X, E))


def test_sentences_from_top_joins_the_ranking_of_top_genes(small):
    from genept_fast.kernels import sentences_from_top

    X, _ = small
    names = [f"g{i}" for i in range(30)]
    top = gf.top_genes(X, 4)
    assert sentences_from_top(top, names, prefix="P: ", sep=",") == gf.cell_sentences(
        X, names, 4, prefix="P: ", sep=","
    )
    # a row ends at its first -1; an empty ranking gives the prefix alone
    assert sentences_from_top(np.array([[2, 0, -1, 5], [-1, 1, 1, 1]]), names) == [
        f"{gf.kernels.DEFAULT_PREFIX}g2 g0",
        gf.kernels.DEFAULT_PREFIX,
    ]
    assert sentences_from_top(np.zeros((3, 0), dtype=np.int32), names, prefix="") == [""] * 3


def test_sentences_from_top_refuses_positions_outside_the_names():
    from genept_fast.kernels import sentences_from_top

    with pytest.raises(GeneptError, match=r"gene position 3, outside -1\.\.2"):
        sentences_from_top(np.array([[0, 3]]), ["a", "b", "c"])
    with pytest.raises(GeneptError, match="gene position -2"):
        sentences_from_top(np.array([[-2]]), ["a"])
    with pytest.raises(GeneptError, match="2-D"):
        sentences_from_top(np.array([0, 1]), ["a", "b"])
    # the compiled function checks too (no Python layer in front): an error, never a panic
    with pytest.raises(GeneptError, match="gene position 7"):
        _core.sentences_from_top(np.array([[0, 7]], dtype=np.int32), ["a"], "", " ")
