"""Label transfer (gf.tl.transfer_labels / build_reference) against scikit-learn and numpy.

Small synthetic references (clustered, a few thousand cells) and scanpy's pbmc68k_reduced; every
prediction is checked against a plain reference computation (scikit-learn's kNN classifier or
logistic regression, numpy's argsort), never against itself.
"""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import genept_fast as gf
from genept_fast import GeneptError
from genept_fast.annotate import (
    HnswIndex,
    IvfIndex,
    ReferenceIndex,
    _index,
    build_reference,
    combine,
    exact_search,
    ivf_nlist,
    transfer_labels,
    vote,
)


def unit(X: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(n > 0, n, 1)


def clustered(n: int, dim: int, n_types: int, seed: int, spread: float = 0.9):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((n_types, dim))
    t = rng.integers(0, n_types, n)
    X = centres[t] + spread * rng.standard_normal((n, dim))
    return X.astype(np.float32), np.array([f"type{i}" for i in t], dtype=object)


def make_adata(X, labels=None, key="X_genept_w", prefix="c") -> ad.AnnData:
    obs = pd.DataFrame(index=[f"{prefix}{i}" for i in range(len(X))])
    if labels is not None:
        obs["cell_type"] = pd.Categorical(labels)
    a = ad.AnnData(obs=obs)
    a.obsm[key] = X
    return a


@pytest.fixture(scope="module")
def ref_query():
    Xr, yr = clustered(3000, 24, 6, seed=1)
    Xq, yq = clustered(800, 24, 6, seed=2)
    return make_adata(Xr, yr), make_adata(Xq, yq, prefix="q"), yq


def sklearn_knn(ref: ad.AnnData, query: ad.AnnData, k: int, weights: str, key="X_genept_w"):
    """scikit-learn's cosine kNN on the reference's float16-rounded unit vectors (as stored)."""
    R = unit(ref.obsm[key]).astype(np.float16).astype(np.float32)
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights=weights, algorithm="brute")
    clf.fit(R, ref.obs["cell_type"].astype(str).to_numpy())
    Q = unit(query.obsm[key])
    return clf.predict(Q), clf.predict_proba(Q).max(axis=1)


# -- search ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n_ref=st.integers(1, 60),
    n_q=st.integers(0, 12),
    dim=st.integers(1, 6),
    k_frac=st.floats(0.0, 1.0),
    block=st.integers(1, 70),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_exact_search_equals_a_full_sort(n_ref, n_q, dim, k_frac, block, ties, seed):
    rng = np.random.default_rng(seed)
    R = rng.standard_normal((n_ref, dim)).astype(np.float32)
    if ties:  # repeated reference rows: equal similarities, ties go to the lower row
        R = np.round(R) if dim > 1 else np.sign(R)
    Q = rng.standard_normal((n_q, dim)).astype(np.float32)
    k = max(1, round(k_frac * n_ref))
    sim, idx = exact_search(Q, R, k, block_rows=block)
    S = Q @ R.T
    order = np.lexsort((np.broadcast_to(np.arange(n_ref), S.shape), -S), axis=1)[:, :k]
    np.testing.assert_allclose(sim, np.take_along_axis(S, order, 1), rtol=1e-5, atol=1e-5)
    if not ties:
        np.testing.assert_array_equal(idx, order)
    assert idx.dtype == np.int64 and sim.dtype == np.float32


def test_exact_search_rejects_k_larger_than_the_reference():
    with pytest.raises(GeneptError, match="k = 5 neighbours asked from a reference of 3"):
        exact_search(np.ones((1, 2), np.float32), np.ones((3, 2), np.float32), 5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_recall_against_exact(kind):
    X, _ = clustered(4000, 32, 10, seed=3)
    X = unit(X).astype(np.float32)
    if kind == "hnsw":
        h: HnswIndex | IvfIndex = HnswIndex(32)
    else:
        h = IvfIndex(32, nlist=ivf_nlist(len(X)))
        h.train(X)
    h.add(X)
    np.testing.assert_allclose(h.vectors(10, 20), X[10:20], atol=1e-3)  # float16 storage
    Q = unit(clustered(300, 32, 10, seed=4)[0]).astype(np.float32)
    approx = h.search(Q, 15)[1]
    exact = exact_search(Q, X.astype(np.float16), 15)[1]
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(approx, exact, strict=True))
    assert hits / exact.size >= 0.95


# -- the vote --------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "weights"), [(15, "distance"), (10, "uniform"), (1, "distance")])
def test_knn_equals_scikit_learn(ref_query, k, weights):
    ref, query, _ = ref_query
    out = transfer_labels(
        query, ref, label_key="cell_type", k=k, weights=weights, copy=True, key_added="p"
    )
    assert out is not None
    expected, proba = sklearn_knn(ref, query, k, weights)
    got = out.obs["p"].astype(str).to_numpy()
    assert (got == expected).mean() >= 0.995  # float rounding may swap a neighbour at a near-tie
    same = got == expected
    np.testing.assert_allclose(out.obs["p_confidence"][same], proba[same], atol=2e-3)


def test_vote_gives_exact_duplicates_all_the_weight():
    sim = np.array([[1.0, 0.9, 0.9, 0.9]], dtype=np.float32)
    nb = np.array([[0, 1, 2, 3]])
    labels = np.array([0, 1, 1, 1], dtype=np.int32)
    code, conf = vote(sim, nb, labels, 2, "distance")
    assert code.tolist() == [0] and conf.tolist() == [1.0]
    code, conf = vote(sim, nb, labels, 2, "uniform")
    assert code.tolist() == [1] and conf[0] == pytest.approx(0.75)


def test_ties_go_to_the_label_that_sorts_first():
    sim = np.full((1, 2), 0.5, dtype=np.float32)
    code, conf = vote(sim, np.array([[0, 1]]), np.array([1, 0], dtype=np.int32), 2, "uniform")
    assert code.tolist() == [0] and conf[0] == pytest.approx(0.5)


# -- transfer_labels: what it writes ---------------------------------------------------------


def test_writes_obs_confidence_and_uns_like_scanpy(ref_query):
    ref, query, truth = ref_query
    q = query.copy()
    assert transfer_labels(q, ref, label_key="cell_type") is None
    pred = q.obs["cell_type_pred"]
    assert isinstance(pred.dtype, pd.CategoricalDtype)
    assert list(pred.cat.categories) == sorted(set(ref.obs["cell_type"]))
    conf = q.obs["cell_type_pred_confidence"].to_numpy()
    assert conf.dtype == np.float32 and (conf >= 0).all() and (conf <= 1).all()
    assert (pred.astype(str).to_numpy() == truth).mean() > 0.95
    u = q.uns["cell_type_pred"]
    assert u["params"]["k"] == 15 and u["params"]["weights"] == "distance"
    assert u["params"]["obsm_keys"] == ["X_genept_w"]
    assert u["reference"]["n_cells"] == ref.n_obs
    counts = u["reference"]["label_counts"]
    assert dict(zip(counts["label"], counts["n_cells"], strict=True)) == (
        ref.obs["cell_type"].value_counts().to_dict()
    )
    assert u["prediction_counts"]["n_cells"].sum() == q.n_obs
    assert "cell_type_pred" not in query.obs  # the fixture's copy was not touched


def test_copy_leaves_the_input_alone(ref_query):
    ref, query, _ = ref_query
    before = query.obs.copy()
    out = transfer_labels(query, ref, label_key="cell_type", key_added="ct", copy=True)
    assert out is not None and out is not query
    assert "ct" in out.obs and "ct_confidence" in out.obs and "ct" in out.uns
    pd.testing.assert_frame_equal(query.obs, before)
    assert "ct" not in query.uns


def test_min_confidence_and_zero_cells_become_unknown(ref_query):
    ref, query, _ = ref_query
    q = query.copy()
    q.obsm["X_genept_w"] = q.obsm["X_genept_w"].copy()
    q.obsm["X_genept_w"][:5] = 0.0
    transfer_labels(q, ref, label_key="cell_type", min_confidence=0.999, key_added="p")
    pred = q.obs["p"].astype(str).to_numpy()
    conf = q.obs["p_confidence"].to_numpy()
    assert "Unknown" in q.obs["p"].cat.categories
    assert (pred[:5] == "Unknown").all() and (conf[:5] == 0).all()
    assert ((conf < 0.999) == (pred == "Unknown")).all()
    assert q.uns["p"]["n_zero_embedding"] == 5
    assert q.uns["p"]["n_unknown"] == int((pred == "Unknown").sum())
    plain = transfer_labels(query, ref, label_key="cell_type", copy=True)
    assert plain is not None and "Unknown" not in plain.obs["cell_type_pred"].cat.categories


def test_logreg_equals_the_scikit_learn_pipeline(ref_query):
    ref, query, _ = ref_query
    out = transfer_labels(query, ref, label_key="cell_type", method="logreg", copy=True)
    assert out is not None
    R = unit(ref.obsm["X_genept_w"]).astype(np.float16).astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    model.fit(R, ref.obs["cell_type"].astype(str))
    Q = unit(query.obsm["X_genept_w"]).astype(np.float32)
    np.testing.assert_array_equal(out.obs["cell_type_pred"].astype(str), model.predict(Q))
    np.testing.assert_allclose(
        out.obs["cell_type_pred_confidence"], model.predict_proba(Q).max(axis=1), atol=1e-4
    )
    assert out.uns["cell_type_pred"]["params"]["method"] == "logreg"


def test_logreg_with_two_labels_uses_the_sigmoid():
    X, y = clustered(400, 8, 2, seed=5, spread=2.0)
    ref = make_adata(X, y)
    query = make_adata(clustered(100, 8, 2, seed=6, spread=2.0)[0])
    out = transfer_labels(query, ref, label_key="cell_type", method="logreg", copy=True)
    assert out is not None
    R = unit(X).astype(np.float16).astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    model.fit(R, y.astype(str))
    proba = model.predict_proba(unit(query.obsm["X_genept_w"]))
    np.testing.assert_allclose(out.obs["cell_type_pred_confidence"], proba.max(1), atol=1e-4)


def test_ensemble_normalises_each_embedding_then_concatenates(ref_query):
    ref, query, _ = ref_query
    rng = np.random.default_rng(7)
    ref2, q2 = ref.copy(), query.copy()
    ref2.obsm["X_genept_s"] = 50.0 * rng.standard_normal((ref.n_obs, 5)).astype(np.float32)
    q2.obsm["X_genept_s"] = 50.0 * rng.standard_normal((query.n_obs, 5)).astype(np.float32)
    both = ["X_genept_w", "X_genept_s"]
    got = combine([q2.obsm[k] for k in both], both)
    manual = unit(np.concatenate([unit(q2.obsm[k]) for k in both], axis=1))
    np.testing.assert_allclose(got, manual, atol=1e-6)
    transfer_labels(q2, ref2, label_key="cell_type", obsm_key=both, weights="uniform", k=10)
    for a in (ref2, q2):
        a.obsm["manual"] = unit(np.concatenate([unit(a.obsm[k]) for k in both], axis=1))
    ref2.obsm["manual"] = ref2.obsm["manual"].astype(np.float32)
    expected, _ = sklearn_knn(ref2, q2, 10, "uniform", key="manual")
    assert (q2.obs["cell_type_pred"].astype(str).to_numpy() == expected).mean() >= 0.995
    assert q2.uns["cell_type_pred"]["params"]["obsm_keys"] == both


# -- the saved index -------------------------------------------------------------------------


def test_save_load_round_trip_and_fingerprint(ref_query, tmp_path):
    ref, query, _ = ref_query
    exact = build_reference(ref, label_key="cell_type", backend="exact", logreg=True)
    ivf = build_reference(ref, label_key="cell_type", backend="ivf")
    hnsw = build_reference(ref, label_key="cell_type", backend="hnsw")
    assert (exact.backend, ivf.backend, hnsw.backend) == ("exact", "ivf", "hnsw")
    assert exact.fingerprint == ivf.fingerprint == hnsw.fingerprint  # content, not backend
    assert ivf.params() == {"nlist": ivf_nlist(ref.n_obs), "nprobe": 32}
    other = ref.copy()
    other.obs["cell_type"] = other.obs["cell_type"].cat.rename_categories(lambda c: c + "x")
    assert build_reference(other, label_key="cell_type").fingerprint != exact.fingerprint
    for index, name in ((exact, "e.index"), (ivf, "i.index"), (hnsw, "h.index")):
        path = index.save(tmp_path / name)
        loaded = ReferenceIndex.load(path)
        assert loaded.fingerprint == index.fingerprint
        assert loaded.classes == index.classes and loaded.obs_names == list(ref.obs_names)
        np.testing.assert_array_equal(loaded.labels, index.labels)
        a = transfer_labels(query, index, copy=True)
        b = transfer_labels(query, path, copy=True)
        assert a is not None and b is not None
        pd.testing.assert_series_equal(a.obs["cell_type_pred"], b.obs["cell_type_pred"])
        assert b.uns["cell_type_pred"]["reference"]["path"] == str(path)
    loaded = ReferenceIndex.load(tmp_path / "e.index")
    assert loaded.logreg is not None
    np.testing.assert_allclose(loaded.logreg.coef, exact.logreg.coef)  # type: ignore[union-attr]
    assert loaded.provenance["source"] == "AnnData in memory"
    assert loaded.provenance["versions"]["genept-fast"]


@pytest.mark.parametrize("backend", ["ivf", "hnsw"])
def test_ann_and_exact_agree(ref_query, backend):
    ref, query, _ = ref_query
    index = build_reference(ref, label_key="cell_type", backend=backend)
    a = transfer_labels(query, index, copy=True)
    b = transfer_labels(query, index, exact=True, copy=True)
    assert a is not None and b is not None
    agree = (a.obs["cell_type_pred"] == b.obs["cell_type_pred"]).mean()
    assert agree >= 0.99
    assert b.uns["cell_type_pred"]["params"]["search"] == "exact"
    assert a.uns["cell_type_pred"]["params"]["search"] == backend


def test_save_refuses_an_existing_file(ref_query, tmp_path):
    index = build_reference(ref_query[0], label_key="cell_type")
    path = tmp_path / "r.index"
    path.write_bytes(b"mine")
    with pytest.raises(GeneptError, match="already exists; use --overwrite"):
        index.save(path)
    assert path.read_bytes() == b"mine"
    index.save(path, overwrite=True)
    assert ReferenceIndex.load(path).fingerprint == index.fingerprint


@pytest.mark.parametrize("backend", ["exact", "ivf", "hnsw"])
def test_corrupted_index_is_refused(ref_query, tmp_path, backend):
    index = build_reference(ref_query[0], label_key="cell_type", backend=backend)
    path = index.save(tmp_path / "r.index")
    data = bytearray(path.read_bytes())
    with h5py.File(path, "r") as f:
        ds = f["vectors" if backend == "exact" else "faiss"]
        offset = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(0).byte_offset
    flipped = tmp_path / "flipped.index"
    data[offset + 100] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(GeneptError, match="corrupted"):
        ReferenceIndex.load(flipped)
    truncated = tmp_path / "truncated.index"
    truncated.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(GeneptError, match=r"corrupted|not a readable reference index"):
        ReferenceIndex.load(truncated)


def test_index_of_another_format_version_is_refused(ref_query, tmp_path, monkeypatch):
    path = build_reference(ref_query[0], label_key="cell_type").save(tmp_path / "r.index")
    with h5py.File(path, "r+") as f:  # an edit behind the header's back is corruption
        f.attrs["format_version"] = 99
    with pytest.raises(GeneptError, match=r"corrupted.*Rebuild it"):
        ReferenceIndex.load(path)
    monkeypatch.setattr(_index, "FORMAT_VERSION", 99)
    _index._write_header(path)  # a header that says version 99, checksums in order
    monkeypatch.undo()
    with pytest.raises(GeneptError, match=r"format version 99.*Rebuild"):
        ReferenceIndex.load(path)
    with pytest.raises(GeneptError, match="format version 99"):
        transfer_labels(ref_query[1], path, copy=True)


def test_an_anndata_file_is_not_an_index(ref_query, tmp_path):
    path = tmp_path / "a.h5ad"
    ref_query[0].write_h5ad(path)
    with pytest.raises(GeneptError, match="not a genept-fast reference index"):
        ReferenceIndex.load(path)


# -- bad input -------------------------------------------------------------------------------


def test_dimension_mismatch(ref_query):
    ref = ref_query[0]
    q = make_adata(np.ones((3, 10), np.float32))
    with pytest.raises(GeneptError, match=r"obsm\['X_genept_w'\] has 10 dimensions but the ref"):
        transfer_labels(q, ref, label_key="cell_type")


def test_nan_labels_name_the_cell(ref_query):
    ref = ref_query[0].copy()
    labels = ref.obs["cell_type"].astype(object).to_numpy()
    labels[[7, 9]] = np.nan
    ref.obs["cell_type"] = labels
    with pytest.raises(GeneptError, match=r"2 missing labels.*first at cell 7 \('c7'\)"):
        build_reference(ref, label_key="cell_type")


def test_one_class_reference():
    ref = make_adata(np.ones((5, 3), np.float32), np.array(["T"] * 5, dtype=object))
    with pytest.raises(GeneptError, match=r"has 1 label \('T'\).*at least 2"):
        build_reference(ref, label_key="cell_type")


def test_missing_obsm_key_and_label_column(ref_query):
    ref, query, _ = ref_query
    with pytest.raises(GeneptError, match="reference obsm has no key 'X_genept_s'"):
        transfer_labels(query, ref, label_key="cell_type", obsm_key="X_genept_s")
    with pytest.raises(GeneptError, match="reference obs has no column 'celltype'"):
        transfer_labels(query, ref, label_key="celltype")
    index = build_reference(ref, label_key="cell_type")
    q = query.copy()
    del q.obsm["X_genept_w"]
    with pytest.raises(GeneptError, match="query obsm has no key 'X_genept_w'"):
        transfer_labels(q, index)
    with pytest.raises(GeneptError, match="built on obsm"):
        transfer_labels(query, index, obsm_key=["X_genept_w", "X_pca"])


def test_nan_in_the_query_names_the_cell(ref_query):
    ref, query, _ = ref_query
    q = query.copy()
    q.obsm["X_genept_w"] = q.obsm["X_genept_w"].copy()
    q.obsm["X_genept_w"][123, 4] = np.nan
    with pytest.raises(GeneptError, match="first at cell 123, dimension 4"):
        transfer_labels(q, ref, label_key="cell_type", chunk_size=50)


def test_different_embedding_models_are_refused(ref_query):
    ref, query, _ = ref_query
    r, q = ref.copy(), query.copy()
    r.uns["X_genept_w"] = {"params": {"model": "text-embedding-3-small"}}
    q.uns["X_genept_w"] = {"params": {"model": "local:all-MiniLM-L6-v2"}}
    with pytest.raises(
        GeneptError, match=r"model 'local:all-MiniLM-L6-v2' \(query\) vs 'text-embedding-3-small'"
    ):
        transfer_labels(q, r, label_key="cell_type")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be a positive integer"),
        ({"k": 5000}, "k = 5000 but the reference has only 3000 cells"),
        ({"method": "svm"}, "method must be 'knn' or 'logreg'"),
        ({"weights": "gauss"}, "weights must be"),
        ({"min_confidence": 1.5}, "min_confidence must be between 0 and 1"),
        ({"label_key": None}, "label_key is required"),
    ],
)
def test_bad_arguments(ref_query, kwargs, match):
    ref, query, _ = ref_query
    kw = {"label_key": "cell_type", **kwargs}
    with pytest.raises(GeneptError, match=match):
        transfer_labels(query, ref, **kw)


# -- real data ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pbmc_split():
    adata = sc.datasets.pbmc68k_reduced()
    ref_i, q_i = train_test_split(
        np.arange(adata.n_obs),
        test_size=0.5,
        stratify=adata.obs["bulk_labels"],
        random_state=2023,
    )
    return adata[np.sort(ref_i)].copy(), adata[np.sort(q_i)].copy()


def test_pbmc_transfer_matches_scikit_learn_and_evaluate_transfer(pbmc_split, tmp_path):
    ref, query = pbmc_split
    out = gf.tl.transfer_labels(
        query, ref, label_key="bulk_labels", obsm_key="X_pca", k=10, weights="uniform", copy=True
    )
    assert out is not None
    R = unit(ref.obsm["X_pca"]).astype(np.float16).astype(np.float32)
    clf = KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute")
    clf.fit(R, ref.obs["bulk_labels"].astype(str))
    expected = clf.predict(unit(query.obsm["X_pca"]))
    pred = out.obs["bulk_labels_pred"].astype(str).to_numpy()
    assert (pred == expected).mean() >= 0.99
    truth = query.obs["bulk_labels"].astype(str).to_numpy()
    accuracy = (pred == truth).mean()
    assert accuracy > 0.7

    report = gf.eval.evaluate_transfer(
        query, ref, label_key="bulk_labels", obsm_keys=["X_pca"], k=10, weights="uniform"
    )
    r = report.results["X_pca"]
    assert r["knn"]["accuracy"] == pytest.approx(accuracy)
    from sklearn.metrics import f1_score

    assert r["knn"]["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    true, predicted, counts = report.confusion[("X_pca", "knn")]
    assert counts.sum() == query.n_obs and true == sorted(set(truth))
    correct = sum(int(counts[i, predicted.index(t)]) for i, t in enumerate(true) if t in predicted)
    assert correct == int((pred == truth).sum())
    written = report.write(tmp_path / "rep")
    assert {"report.md", "report.json", "confusion_X_pca_knn.png"} <= set(written)
    assert written["confusion_X_pca_knn.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro F1" in written["report.md"].read_text()
