"""genept_fast.dask on a real multi-process LocalCluster, compared with the in-process kernel."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import genept_fast as gf
from genept_fast import GeneptError
from genept_fast.preprocess import normalize_log1p

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
gdask = pytest.importorskip("genept_fast.dask")

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

N_CELLS, N_GENES, DIM = 900, 250, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("dask")
    rng = np.random.default_rng(0)
    counts = sp.random_array((N_CELLS, N_GENES), density=0.1, format="csr", rng=rng)
    counts.data = np.ceil(counts.data * 30).astype(np.float32)
    counts = sp.csr_array(counts, dtype=np.float32)
    lognorm = normalize_log1p(counts)
    adata = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]),
        layers={"lognorm": lognorm},
    )
    h5ad = d / "x.h5ad"
    adata.write_h5ad(h5ad)
    zarr_path = d / "x.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        adata.write_zarr(zarr_path)
    E = rng.standard_normal((N_GENES, DIM)).astype(np.float32)
    return {
        "h5ad": h5ad,
        "zarr": zarr_path,
        "counts": counts,
        "lognorm": lognorm,
        "E": E,
        "ref": gf.weighted_embedding(lognorm, E),
        # raw counts, log-normalised by the kernel (equal to "ref" to float32 rounding)
        "ref_counts": gf.weighted_embedding(counts, E, preprocess="log1p"),
    }


def test_local_scheduler_without_client(data: dict) -> None:
    # Runs before the cluster fixture exists: the table is passed in memory, not scattered.
    x = da.from_array(data["lognorm"].toarray(), chunks=(200, 100))  # dense, genes split
    got = gdask.weighted_embedding(x, data["E"]).compute(scheduler="threads")
    np.testing.assert_array_equal(got, data["ref"])
    y = gdask.encode_h5ad_dask(data["h5ad"], data["E"], chunk_size=256)
    assert y.chunks == ((256, 256, 256, 132), (DIM,))
    np.testing.assert_array_equal(y.compute(scheduler="sync"), data["ref_counts"])
    np.testing.assert_allclose(data["ref_counts"], data["ref"], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def genept_s(data: dict) -> ad.AnnData:
    """gf.tl.genept_s with the static model on the same cells (the reference of every path)."""
    pytest.importorskip("wordllama")
    adata = ad.read_h5ad(data["h5ad"])
    gf.tl.genept_s(adata, embedder="wordllama", top_n=20)
    return adata


def test_genept_s_local_scheduler(data: dict, genept_s: ad.AnnData) -> None:
    want = genept_s.obsm["X_genept_s"]
    x = da.from_array(data["counts"].toarray(), chunks=(200, 100))  # dense, genes split
    symbols = [f"g{j}" for j in range(N_GENES)]
    got = gdask.sentence_embedding(x, symbols, "wordllama", top_n=20)
    np.testing.assert_array_equal(got.compute(scheduler="threads"), want)
    y, record = gdask.encode_h5ad_sentences_dask(data["h5ad"], "wordllama", top_n=20)
    assert y.chunks == ((N_CELLS,), (256,))
    np.testing.assert_array_equal(y.compute(scheduler="sync"), want)
    assert record["params"]["model"] == "wordllama:l2_supercat_256"
    assert record["params"]["top_n"] == 20 and record["params"]["matrix"] == "X"
    with pytest.raises(GeneptError, match="3 gene symbols were given but x has 250 genes"):
        gdask.sentence_embedding(x, symbols[:3], "wordllama")


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    # The Active Memory Manager's ReduceReplicas policy (on by default, every 2 s) drops the
    # broadcast table's extra replica once no task waits for it; on a loaded machine that
    # happens before the test looks. Switched off so the broadcast itself is what is tested.
    with dask.config.set({"distributed.scheduler.active-memory-manager.start": False}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    c = distributed.Client(cluster)
    c.wait_for_workers(2)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def test_anndata_lazy_reader_on_cluster(data: dict, client: distributed.Client) -> None:
    from anndata.experimental import read_elem_lazy

    with h5py.File(data["h5ad"], "r") as f:
        x = read_elem_lazy(f["layers/lognorm"], chunks=(200, -1))
        y = gdask.weighted_embedding(x, data["E"], n_threads=1)
        assert y.dtype == np.float32 and y.shape == (N_CELLS, DIM)
        got = y.compute()
    np.testing.assert_array_equal(got, data["ref"])
    # The encoder (table rows and options) was broadcast: both workers hold it (the
    # scheduler's view can lag a moment behind the replication under load, so poll it briefly).
    deadline = time.monotonic() + 10
    while True:
        held = client.has_what()
        on_all = len(held) == 2 and all(
            any(str(k).startswith("WeightedEncoder-") for k in keys) for keys in held.values()
        )
        if on_all or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert on_all, f"the table is not on every worker: {held}"


def test_encode_h5ad_dask_on_cluster(data: dict, client: distributed.Client) -> None:
    # Raw counts: "auto" log-normalises, per block, exactly as the single-process path.
    got = gdask.encode_h5ad_dask(data["h5ad"], data["E"], chunk_size=128).compute()
    np.testing.assert_array_equal(got, data["ref_counts"])
    got = gdask.encode_h5ad_dask(
        data["zarr"], data["E"], layer="lognorm", chunk_size=300, preprocess="none"
    ).compute()
    np.testing.assert_array_equal(got, data["ref"])
    # gene_index: columns mapped into a bigger shuffled table, some genes without embedding.
    rng = np.random.default_rng(1)
    rows = rng.permutation(N_GENES + 30)[:N_GENES]
    big = rng.standard_normal((N_GENES + 30, DIM)).astype(np.float32)
    gi = rows.astype(np.int64)
    gi[::7] = -1
    got = gdask.encode_h5ad_dask(data["h5ad"], big, gene_index=gi, chunk_size=400).compute()
    want = gf.weighted_embedding(data["counts"], big, gene_index=gi, preprocess="log1p")
    np.testing.assert_array_equal(got, want)


def test_genept_s_on_cluster(data: dict, genept_s: ad.AnnData, client: distributed.Client) -> None:
    y, _ = gdask.encode_h5ad_sentences_dask(data["zarr"], "wordllama", top_n=20, chunk_size=256)
    assert y.numblocks == (4, 1)
    np.testing.assert_array_equal(y.compute(), genept_s.obsm["X_genept_s"])


def test_read_csr_blocks_are_csr(data: dict, client: distributed.Client) -> None:
    x = gdask.read_csr(data["h5ad"], layer="lognorm", chunk_size=250)
    assert x.shape == (N_CELLS, N_GENES) and x.numblocks == (4, 1)
    block = x.blocks[1].compute()
    assert sp.issparse(block) and block.format == "csr"
    assert (block != data["lognorm"][250:500]).nnz == 0


def test_errors(data: dict, tmp_path: Path) -> None:
    with pytest.raises(GeneptError, match=r"dask\.array\.Array"):
        gdask.weighted_embedding(data["lognorm"], data["E"])
    x = gdask.read_csr(data["h5ad"])
    with pytest.raises(GeneptError, match="gene_index has 2 entries"):
        gdask.weighted_embedding(x, data["E"], gene_index=[0, 1])
    with pytest.raises(GeneptError, match="n_threads"):
        gdask.weighted_embedding(x, data["E"], n_threads=0)
    with pytest.raises(GeneptError, match="input not found"):
        gdask.read_csr(tmp_path / "missing.h5ad")


def test_the_encoder_travels_before_use_and_names_whole_matrix_cells(data: dict) -> None:
    """What Dask ships: the plain rows, gene index and options (laid out once per process)."""
    import pickle

    from genept_fast.encode import WeightedEncoder

    enc = WeightedEncoder(data["E"], preprocess="log1p", n_threads=1)
    clone = pickle.loads(pickle.dumps(enc))
    assert clone.fingerprint == enc.fingerprint and clone.preprocess == "log1p"
    np.testing.assert_array_equal(clone(data["counts"]), data["ref_counts"])
    enc(data["counts"][:10])  # lays the table out here and drops the plain rows
    with pytest.raises(GeneptError, match="build a new one"):
        pickle.dumps(enc)
    bad = data["counts"][:20].copy()
    bad.data[bad.indptr[7]] = np.nan  # cell 7 of this block
    with pytest.raises(GeneptError, match="NaN") as info:
        clone(bad, row_offset=300)
    assert info.value.cell == 307  # type: ignore[attr-defined]
