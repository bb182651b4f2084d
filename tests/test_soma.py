"""TileDB-SOMA experiments as a source (``genept_fast.soma``), against the ``.h5ad`` path.

Two local experiments written by ``tiledbsoma.io.from_anndata``: scanpy's PBMC (its ``raw``,
log-normalised, as ``X``) and a synthetic one of raw counts (normalised inside the kernel), each
also written as an ``.h5ad`` of the same cells and genes. The SOMA path must give the same bits.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

import genept_fast as gf
from genept_fast import stream
from genept_fast.cells import open_cells
from genept_fast.errors import InputError

tiledbsoma = pytest.importorskip("tiledbsoma")
tiledbsoma_io = pytest.importorskip("tiledbsoma.io")

from genept_fast import soma  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIM = 16
N_SYN, G_SYN = 600, 200
MONO = "bulk_labels == 'CD14+ Monocyte'"


def _write_both(adata: ad.AnnData, d: Path, name: str) -> tuple[Path, Path]:
    h5ad = d / f"{name}.h5ad"
    adata.write_h5ad(h5ad)
    uri = d / f"{name}.soma"
    tiledbsoma_io.from_anndata(str(uri), adata, measurement_name="RNA")
    return h5ad, uri


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import scanpy as sc

    d = tmp_path_factory.mktemp("soma_pbmc")
    full = sc.datasets.pbmc68k_reduced()
    adata = ad.AnnData(X=full.raw.X.copy(), obs=full.obs.copy(), var=full.raw.var.copy())
    h5ad, uri = _write_both(adata, d, "pbmc")
    E = np.random.default_rng(0).standard_normal((adata.n_vars, DIM)).astype(np.float32)
    return {"dir": d, "adata": adata, "h5ad": h5ad, "uri": uri, "E": E}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("soma_syn")
    rng = np.random.default_rng(1)
    X = sp.random_array((N_SYN, G_SYN), density=0.1, format="csr", dtype=np.float32, rng=rng)
    X.data = np.ceil(X.data * 30).astype(np.float32)  # raw counts
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T cell", "B cell", "NK cell"], N_SYN)),
            "donor": rng.integers(0, 4, N_SYN),
        },
        index=[f"c{i}" for i in range(N_SYN)],
    )
    var = pd.DataFrame(
        {
            "feature_name": [f"GENE{j}" for j in range(G_SYN)],
            "feature_id": [f"ENSG{j:011d}" for j in range(G_SYN)],
        },
        index=[f"GENE{j}" for j in range(G_SYN)],
    )
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)
    h5ad, uri = _write_both(adata, d, "syn")
    E = rng.standard_normal((G_SYN, DIM)).astype(np.float32)
    return {"dir": d, "adata": adata, "h5ad": h5ad, "uri": uri, "E": E}


def _load(path: Path) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """(embeddings, obs names, soma_joinids or None) of an output in any format."""
    if path.suffix == ".npy":
        side = path.with_name(f"{path.stem}.soma_joinid.npy")
        return np.load(path), [], np.load(side) if side.exists() else None
    if path.suffix == ".parquet":
        t = pq.read_table(path)
        emb = t.column("embedding").combine_chunks().flatten().to_numpy()
        ids = t.column("soma_joinid").to_numpy() if "soma_joinid" in t.schema.names else None
        return emb.reshape(t.num_rows, -1), t.column("obs_name").to_pylist(), ids
    if path.suffix == ".zarr":
        import zarr

        g = zarr.open_group(str(path), mode="r")
        ids = g["soma_joinid"][:] if "soma_joinid" in g else None
        return g["X_genept_w"][:], [str(s) for s in g["obs_names"][:]], ids
    a = ad.read_h5ad(path)
    ids = a.obs["soma_joinid"].to_numpy() if "soma_joinid" in a.obs else None
    return a.obsm["X_genept_w"], list(a.obs_names), ids


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# -- the source ------------------------------------------------------------------------------


def test_the_source_reads_the_same_rows_as_the_h5ad(pbmc: dict) -> None:
    with soma.SomaSource(pbmc["uri"]) as src, open_cells(pbmc["h5ad"]) as ref:
        assert src.matrix == "ms/RNA/X/data" and src.var_key == "var_id"
        assert (src.n_cells, src.n_genes) == (ref.n_cells, ref.n_genes)
        assert src.var_names == ref.var_names
        assert src.obs_names(10, 15) == ref.obs_names(10, 15)
        for a, b in [(0, 1), (3, 250), (650, 700), (5, 5)]:
            got, want = src.read(a, b), ref.read(a, b)
            assert got.shape == want.shape and got.dtype == want.dtype
            assert (got != want).nnz == 0
            assert got.has_sorted_indices
        np.testing.assert_array_equal(src.soma_joinids(), np.arange(700))
    with pytest.raises(InputError, match="out of range"):
        soma.SomaSource(pbmc["uri"]).read(0, 701)


def test_a_chunk_read_in_many_blocks_is_the_same_csr(
    pbmc: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    with soma.SomaSource(pbmc["uri"], obs_filter="louvain != '2'") as src:
        whole = src.read(0, src.n_cells)
        monkeypatch.setattr(soma, "READ_ENTRIES", 1000)  # then ~4 cells a block
        reads: list[int] = []
        read_block = src._read_block
        monkeypatch.setattr(
            src,
            "_read_block",
            lambda ids, first, out: reads.append(ids.size) or read_block(ids, first, out),
        )
        blocks = src.read(0, src.n_cells)
    assert max(reads) <= 8 and sum(reads) == whole.shape[0]  # ~4 cells a block, all read
    assert blocks.has_sorted_indices and blocks.indices.dtype == whole.indices.dtype
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(blocks, name), getattr(whole, name))


def _spy_reads(src: soma.SomaSource, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The coordinates of every TileDB read of ``src``'s X from now on."""
    seen: list[object] = []

    class Spy:
        def __init__(self, X: object) -> None:
            self.X = X

        def read(self, *, coords: tuple) -> object:
            seen.append(coords[0])
            return self.X.read(coords=coords)  # type: ignore[attr-defined]

    monkeypatch.setattr(src, "_X", Spy(src._X))
    return seen


@pytest.mark.parametrize("where", ["louvain != '2'", "n_genes > 1200", MONO])
def test_a_range_read_equals_the_coordinate_read_on_a_filtered_selection(
    pbmc: dict, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with soma.SomaSource(pbmc["uri"], obs_filter=where) as src:
        ids = src.soma_joinids()
        assert ids[-1] - ids[0] + 1 > ids.size  # not a run of joinids
        monkeypatch.setattr(soma, "SPAN_READ", 0)  # every block read by its joinids
        points = _spy_reads(src, monkeypatch)
        by_points = src.read(0, src.n_cells)
        assert all(isinstance(c, np.ndarray) for c in points)
        monkeypatch.setattr(soma, "SPAN_READ", 10**9)  # every block read as one range
        ranges = _spy_reads(src, monkeypatch)
        by_range = src.read(0, src.n_cells)
        assert ranges and all(isinstance(c, slice) for c in ranges)
        part = src.read(3, src.n_cells - 2)  # a range that starts and ends inside the selection
    want = open_cells(pbmc["h5ad"]).read(0, 700)[ids]
    for got in (by_points, by_range):
        assert got.has_sorted_indices and (got != want).nnz == 0
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(by_range, name), getattr(by_points, name))
    assert (part != want[3 : ids.size - 2]).nnz == 0


def test_blocks_end_on_the_tile_extent_and_read_the_same_csr(
    synthetic: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    with soma.SomaSource(synthetic["uri"], obs_filter="donor != 3") as src:
        assert src._tile == 2048  # tiledbsoma's default extent, as from_anndata writes X
        whole = src.read(0, src.n_cells)
        ids = src.soma_joinids()
        monkeypatch.setattr(src, "_tile", 64)
        monkeypatch.setattr(soma, "READ_ENTRIES", 64 * 20 * 2)  # ~20 values a joinid: 2 tiles
        blocks = list(src._blocks(ids[5:]))
        reads = _spy_reads(src, monkeypatch)
        again = src.read(5, src.n_cells)
    ends = [int(ids[5:][b]) for _, b in blocks[:-1]]  # the first joinid after each block
    assert len(blocks) > 3 and all(e % 64 == 0 for e in ends)
    assert all(64 <= e2 - e1 <= 3 * 64 for e1, e2 in itertools.pairwise(ends))  # 2-3 tiles
    assert len(reads) == len(blocks)
    for c, end in zip(reads, [*ends, int(ids[-1]) + 1], strict=True):  # each read one range
        assert isinstance(c, slice) and c.stop < end
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(again, name), getattr(whole[5:], name))


def test_an_x_layer_wider_than_var_reads_the_same_and_refuses_a_stray_column(
    tmp_path: Path,
) -> None:
    """An X whose shape (domain) is far wider than var (2**31 columns here) reads as the layer
    of var's width, without a map of its whole width; a value in a column no var row names is
    refused, never clipped onto a gene."""
    import pyarrow as pa

    X = sp.random_array((30, 12), density=0.4, format="csr", dtype=np.float32, rng=3)
    adata = ad.AnnData(X=X)
    adata.obs_names = [f"c{i}" for i in range(30)]
    adata.var_names = [f"g{j}" for j in range(12)]
    uri = str(tmp_path / "wide.soma")
    tiledbsoma_io.from_anndata(uri, adata, measurement_name="RNA")
    coo = X.tocoo()
    table = pa.table(
        {
            "soma_dim_0": coo.row.astype(np.int64),
            "soma_dim_1": coo.col.astype(np.int64),
            "soma_data": coo.data,
        }
    )
    with tiledbsoma.open(uri, mode="w") as exp:
        wide = exp.ms["RNA"].X.add_new_sparse_ndarray("wide", type=pa.float32(), shape=(30, 2**31))
        wide.write(table)
    with soma.SomaSource(uri, layer="data") as src:
        want = src.read(0, 30)
    with soma.SomaSource(uri, layer="wide") as src:
        assert src._col_of.size == 12  # var's joinids, not X's 2**31 columns
        got = src.read(0, 30)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    stray = pa.table(
        {
            "soma_dim_0": np.array([4], dtype=np.int64),
            "soma_dim_1": np.array([2**31 - 1], dtype=np.int64),
            "soma_data": np.array([1.0], dtype=np.float32),
        }
    )
    with tiledbsoma.open(uri, mode="w") as exp:
        exp.ms["RNA"].X["wide"].write(stray)
    with (
        soma.SomaSource(uri, layer="wide") as src,
        pytest.raises(InputError, match=r"columns that no var row names \(cells 0:30\)"),
    ):
        src.read(0, 30)


@pytest.mark.parametrize(
    ("stored", "read_as"),
    [(np.int32, np.float32), (np.float64, np.float64), (np.uint16, np.float32)],
)
def test_integer_and_float64_layers_read_as_the_matrix(
    synthetic: dict, tmp_path: Path, stored: type, read_as: type
) -> None:
    """Integer counts come back as float32 (each batch's values cast once) and float64 stays
    float64 (the core's float64 path), with the same entries as the matrix written."""
    adata = synthetic["adata"].copy()
    adata.X = sp.csr_matrix(adata.X.astype(stored))
    uri = tmp_path / f"{np.dtype(stored).name}.soma"
    tiledbsoma_io.from_anndata(str(uri), adata, measurement_name="RNA")
    with soma.SomaSource(uri) as src:
        assert src.dtype == read_as
        got = src.read(0, src.n_cells)
    assert got.dtype == read_as and got.has_canonical_format
    want = sp.csr_array(adata.X, dtype=read_as)
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


def test_a_default_context_and_a_users_context(pbmc: dict) -> None:
    with soma.SomaSource(pbmc["uri"]) as src:
        config = src.context.tiledb_config
        assert (
            config["soma.init_buffer_bytes"] == soma.DEFAULT_TILEDB_CONFIG["soma.init_buffer_bytes"]
        )
        mine = tiledbsoma.SOMATileDBContext(tiledb_config={"soma.init_buffer_bytes": "1048576"})
        with soma.SomaSource(pbmc["uri"], context=mine) as users:
            assert users.context is mine  # the user's context wins, untouched
            assert users.context.tiledb_config["soma.init_buffer_bytes"] == "1048576"
            small = users.read(0, 700)  # 1 MiB buffers: each block comes in several batches
        assert (small != src.read(0, 700)).nnz == 0
    with tiledbsoma.Experiment.open(str(pbmc["uri"]), context=mine) as exp:
        assert soma.SomaSource(exp).context is exp.context  # an open experiment keeps its own


def test_tiledbs_trim_after_every_query_becomes_one_per_chunk(pbmc: dict) -> None:
    """The default context turns TileDB's ``malloc_trim`` after every query off and the source
    trims once per chunk read; a context that leaves TileDB's on is not trimmed again."""
    calls: list[int] = []
    with soma.SomaSource(pbmc["uri"]) as src:
        assert src.context.tiledb_config["sm.mem.malloc_trim"] == "false"
        assert src._trim is not None  # glibc (Linux): malloc_trim exists
        trim, src._trim = src._trim, lambda: calls.append(1)
        trim()  # the real one runs
        first = src.read(0, 700)
        assert calls == [1]
    trimming = tiledbsoma.SOMATileDBContext(tiledb_config={"sm.mem.malloc_trim": "true"})
    for ctx in (trimming, tiledbsoma.SOMATileDBContext()):
        with soma.SomaSource(pbmc["uri"], context=ctx) as src:
            assert src._trim is None
            assert (src.read(0, 700) != first).nnz == 0
    off = tiledbsoma.SOMATileDBContext(tiledb_config={"sm.mem.malloc_trim": False})
    with soma.SomaSource(pbmc["uri"], context=off) as src:
        assert src._trim is not None


def test_open_cells_detects_an_experiment_and_takes_the_source(pbmc: dict) -> None:
    src = open_cells(pbmc["uri"])
    assert isinstance(src, soma.SomaSource)
    assert open_cells(src) is src
    with tiledbsoma.Experiment.open(str(pbmc["uri"])) as exp:
        opened = open_cells(exp, soma_options={"obs_filter": MONO})
        assert isinstance(opened, soma.SomaSource) and opened.n_cells == 129
        opened.close()
        assert not exp.closed  # an experiment handed in is the caller's to close
    with pytest.raises(InputError, match="use_raw"):
        open_cells(pbmc["uri"], use_raw=True)
    with pytest.raises(InputError, match="soma_options"):
        open_cells(pbmc["h5ad"], soma_options={"obs_filter": MONO})


# -- same bits as the .h5ad path -----------------------------------------------------------


@pytest.mark.parametrize("fmt", [".npy", ".parquet", ".h5ad", ".zarr"])
def test_every_format_has_the_h5ad_paths_bits_and_the_joinids(
    pbmc: dict, tmp_path: Path, fmt: str
) -> None:
    got, want = tmp_path / f"soma{fmt}", tmp_path / f"h5ad{fmt}"
    rep = stream.encode_weighted(pbmc["uri"], got, pbmc["E"], chunk_size=128, progress=False)
    stream.encode_weighted(pbmc["h5ad"], want, pbmc["E"], chunk_size=128, progress=False)
    emb, names, ids = _load(got)
    assert _load(want)[2] is None  # an AnnData source has no joinids
    np.testing.assert_array_equal(_bits(emb), _bits(_load(want)[0]))
    np.testing.assert_array_equal(ids, np.arange(700))
    if names:
        assert names == list(pbmc["adata"].obs_names)
    assert rep.uns["params"]["matrix"] == "ms/RNA/X/data"


def test_raw_counts_are_normalised_in_the_kernel_as_for_h5ad(synthetic: dict, tmp_path: Path):
    got = stream.encode_weighted(
        synthetic["uri"], tmp_path / "s.npy", synthetic["E"], chunk_size=100, progress=False
    )
    stream.encode_weighted(
        synthetic["h5ad"], tmp_path / "h.npy", synthetic["E"], chunk_size=100, progress=False
    )
    assert got.log1p and got.uns["params"]["preprocess"] == "log1p"
    np.testing.assert_array_equal(
        _bits(np.load(tmp_path / "s.npy")), _bits(np.load(tmp_path / "h.npy"))
    )
    ref = gf.weighted_embedding(synthetic["adata"].X, synthetic["E"], preprocess="log1p")
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), ref)


def test_a_gene_table_is_matched_through_the_var_column(synthetic: dict, tmp_path: Path):
    from genept_fast.table import GeneEmbeddings

    genes = [f"GENE{j}" for j in range(0, G_SYN, 2)]  # every other gene, by symbol
    table = GeneEmbeddings(genes, synthetic["E"][::2])
    src = soma.SomaSource(synthetic["uri"], var_key="feature_name")
    rep = stream.encode_weighted(src, tmp_path / "t.npy", table, chunk_size=100, progress=False)
    E = np.zeros_like(synthetic["E"])
    E[::2] = synthetic["E"][::2]
    ref = gf.weighted_embedding(synthetic["adata"].X, E, preprocess="log1p")
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), ref, rtol=1e-5, atol=1e-6)
    assert "100" in rep.summary


def test_sentences_from_soma_equal_those_from_h5ad(pbmc: dict, tmp_path: Path) -> None:
    from genept_fast.embed import get_embedder
    from servers.openai_api import OpenAIEmbeddingServer

    with OpenAIEmbeddingServer(api_key="test") as server:
        emb = get_embedder(
            "openai:text-embedding-3-small",
            base_url=server.url,
            api_key="test",
            dimensions=DIM,
            use_cache=False,
        )
        src = soma.SomaSource(pbmc["uri"], obs_filter="louvain == '1'")
        ids = src.soma_joinids()
        sub = pbmc["adata"][ids].copy()
        sub.write_h5ad(tmp_path / "sub.h5ad")
        kw = {"top_n": 10, "chunk_size": 40, "progress": False}
        stream.encode_sentences(src, tmp_path / "s.parquet", emb, **kw)
        stream.encode_sentences(tmp_path / "sub.h5ad", tmp_path / "h.parquet", emb, **kw)
    got, names, got_ids = _load(tmp_path / "s.parquet")
    want, want_names = _load(tmp_path / "h.parquet")[:2]
    np.testing.assert_array_equal(_bits(got), _bits(want))
    assert names == want_names and np.array_equal(got_ids, ids)


# -- obs filters ---------------------------------------------------------------------------


FILTERS = {
    MONO: lambda obs: obs["bulk_labels"] == "CD14+ Monocyte",
    "n_genes > 1000 and phase == 'G1'": lambda obs: (
        (obs["n_genes"] > 1000) & (obs["phase"] == "G1")
    ),
    "louvain in ['0', '3']": lambda obs: obs["louvain"].isin(["0", "3"]),
}


@pytest.mark.parametrize("where", list(FILTERS))
def test_an_obs_filter_selects_exactly_the_right_cells(pbmc: dict, tmp_path: Path, where: str):
    obs = pbmc["adata"].obs
    expected = np.flatnonzero(FILTERS[where](obs).to_numpy())
    assert 0 < expected.size < len(obs)
    src = soma.SomaSource(pbmc["uri"], obs_filter=where)
    np.testing.assert_array_equal(src.soma_joinids(), expected)
    assert src.obs_names() == list(obs.index[expected])
    out = tmp_path / "f.parquet"
    stream.encode_weighted(src, out, pbmc["E"], chunk_size=50, progress=False)
    stream.encode_weighted(pbmc["h5ad"], tmp_path / "all.npy", pbmc["E"], progress=False)
    emb, _names, ids = _load(out)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(_bits(emb), _bits(np.load(tmp_path / "all.npy")[expected]))


def test_an_output_inside_the_experiment_is_refused(pbmc: dict) -> None:
    with pytest.raises(InputError, match="inside"):
        stream.encode_weighted(
            soma.SomaSource(pbmc["uri"]), pbmc["uri"] / "emb.npy", pbmc["E"], progress=False
        )
    assert not (pbmc["uri"] / "emb.npy").exists()


def test_a_filter_that_selects_nothing_is_an_empty_source(pbmc: dict) -> None:
    src = soma.SomaSource(pbmc["uri"], obs_filter="n_genes < 0")
    assert src.n_cells == 0 and src.obs_names() == [] and src.read(0, 0).shape == (0, 765)
    assert len(src.obs_frame()) == 0


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"measurement": "ATAC"}, r"no measurement 'ATAC' \(measurements: \['RNA'\]\)"),
        ({"layer": "counts"}, r"no X layer 'counts' \(layers: \['data'\]\)"),
        ({"obs_filter": "no_such_column == 1"}, "bad obs filter"),
        ({"obs_filter": "bulk_labels =="}, "bad obs filter"),
        ({"var_key": "gene"}, r"var has no column 'gene'; available: \['var_id'\]"),
        ({"obs_key": "barcode"}, "obs has no column 'barcode'"),
    ],
)
def test_a_bad_option_names_what_there_is(pbmc: dict, kw: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        soma.SomaSource(pbmc["uri"], **kw)


def test_not_an_experiment(pbmc: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a SOMAExperiment"):
        soma.SomaSource(pbmc["uri"] / "ms")
    with pytest.raises(InputError, match="no SOMA experiment there"):
        soma.SomaSource(tmp_path / "nothing")
    with pytest.raises(InputError, match="got dict"):
        soma.SomaSource({"uri": str(pbmc["uri"])})


# -- resume after kill -9 ------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from genept_fast import soma, stream

    class Slow:
        def __init__(self, inner):
            self.inner, self.fingerprint = inner, inner.fingerprint
        def begin(self, preprocess):
            self.inner.begin(preprocess)
        def __call__(self, chunk):
            time.sleep(0.15)
            return self.inner(chunk)

    E = np.load(sys.argv[3])
    src = soma.SomaSource(sys.argv[1], obs_filter="donor != 0")
    stream.encode_file(src, sys.argv[2], encoder=Slow(stream.WeightedEncoder(E)),
                       dim=E.shape[1], chunk_size=30, progress=False)
    print("finished")
    """
)


def test_kill_9_then_resume_equals_uninterrupted(synthetic: dict, tmp_path: Path) -> None:
    out = tmp_path / "killed.parquet"
    np.save(tmp_path / "E.npy", synthetic["E"])
    (tmp_path / "job.py").write_text(KILL_SCRIPT)
    manifest = tmp_path / "killed.parquet.partial" / "manifest.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    args = [str(synthetic["uri"]), str(out), str(tmp_path / "E.npy")]
    proc = subprocess.Popen([sys.executable, str(tmp_path / "job.py"), *args], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if len(json.loads(manifest.read_text())["done"]) >= 3:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    done = set(json.loads(manifest.read_text())["done"])
    src = soma.SomaSource(synthetic["uri"], obs_filter="donor != 0")
    n_chunks = -(-src.n_cells // 30)
    assert 3 <= len(done) < n_chunks
    rep = stream.encode_weighted(src, out, synthetic["E"], chunk_size=30, progress=False)
    assert (rep.chunks_resumed, rep.chunks_encoded) == (len(done), n_chunks - len(done))
    fresh = tmp_path / "fresh.parquet"
    stream.encode_weighted(src, fresh, synthetic["E"], chunk_size=30, progress=False)
    got, fresh_emb = _load(out), _load(fresh)
    np.testing.assert_array_equal(_bits(got[0]), _bits(fresh_emb[0]))
    np.testing.assert_array_equal(got[2], src.soma_joinids())
    assert got[1] == fresh_emb[1]


def test_another_filter_does_not_resume_a_partial_job(synthetic: dict, tmp_path: Path) -> None:
    a = soma.SomaSource(synthetic["uri"], obs_filter="donor != 0")
    b = soma.SomaSource(synthetic["uri"], obs_filter="donor != 1")
    assert a.fingerprint() != b.fingerprint()
    assert (
        a.fingerprint() == soma.SomaSource(synthetic["uri"], obs_filter="donor != 0").fingerprint()
    )


# -- writing into the experiment -----------------------------------------------------------


def _tree(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def test_write_into_follows_the_census_convention(synthetic: dict, tmp_path: Path) -> None:
    import shutil

    uri = tmp_path / "exp.soma"
    shutil.copytree(synthetic["uri"], uri)
    src = soma.SomaSource(uri, obs_filter="cell_type == 'T cell'")
    ids = src.soma_joinids()
    out = tmp_path / "t.npy"
    rep = stream.encode_weighted(src, out, synthetic["E"], chunk_size=100, progress=False)
    src.close()
    emb = np.load(out, mmap_mode="r")
    before = _tree(uri)
    soma.write_into(uri, emb, ids, key="genept_w", info=rep.uns, chunk_size=37)
    after = _tree(uri)
    changed = {k for k in after if before.get(k) != after[k]}
    assert all(k.startswith("ms/RNA/obsm") or k.startswith("ms/RNA/__") for k in changed), changed
    assert not any(k.startswith(("obs/", "ms/RNA/X/", "ms/RNA/var/")) for k in changed)
    with tiledbsoma.Experiment.open(str(uri)) as exp:
        arr = exp.ms["RNA"].obsm["genept_w"]
        assert isinstance(arr, tiledbsoma.SparseNDArray)
        assert arr.shape == (N_SYN, DIM) and arr.schema.field("soma_data").type == "float"
        assert arr.nnz == ids.size * DIM  # every embedded cell stored whole
        info = json.loads(arr.metadata[soma.EMBEDDING_INFO_KEY])
    assert info["data_type"] == "obs_embedding" and info["measurement_name"] == "RNA"
    assert (info["n_embeddings"], info["n_features"]) == (ids.size, DIM)
    assert info["genept_fast"]["params"]["method"] == "GenePT-w"
    got_ids, got, _ = soma.read_embedding(uri, "genept_w")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, np.load(out))
    with pytest.raises(InputError, match="already has 'genept_w'"):
        soma.write_into(uri, emb, ids, key="genept_w")
    soma.write_into(uri, np.zeros((2, 3), np.float32), [0, 5], key="genept_w", overwrite=True)
    got_ids, got, _ = soma.read_embedding(uri, "genept_w")
    assert got_ids.tolist() == [0, 5] and got.shape == (2, 3) and not got.any()
    arrays = [p for p in (uri / "ms/RNA/obsm").iterdir() if not p.name.startswith("__")]
    assert len(arrays) == 1  # the array replaced is removed


def test_write_into_refuses_bad_joinids_before_writing(synthetic: dict) -> None:
    with pytest.raises(InputError, match="do not match"):
        soma.write_into(synthetic["uri"], np.zeros((3, 2)), [0, 1], key="k")
    with pytest.raises(InputError, match="repeat"):
        soma.write_into(synthetic["uri"], np.zeros((2, 2)), [1, 1], key="k")
    with pytest.raises(InputError, match="outside obs"):
        soma.write_into(synthetic["uri"], np.zeros((1, 2)), [N_SYN], key="k")
    with pytest.raises(InputError, match="no measurement"):
        soma.write_into(synthetic["uri"], np.zeros((1, 2)), [0], key="k", measurement="ATAC")


# -- without the extra ---------------------------------------------------------------------


def test_without_the_extra_the_error_names_it(pbmc: dict) -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules.update(dict.fromkeys(["tiledbsoma", "somacore"]))
        from genept_fast import soma
        from genept_fast.errors import MissingDependencyError
        try:
            soma.SomaSource(sys.argv[1])
        except MissingDependencyError as e:
            print(e)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(pbmc["uri"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "pip install 'genept-fast[soma]'" in proc.stdout, proc.stdout + proc.stderr


# -- the command line ----------------------------------------------------------------------


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    return subprocess.run(
        [sys.executable, "-m", "genept_fast", "encode", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def genes(pbmc: dict) -> Path:
    from genept_fast.table import GeneEmbeddings

    path = pbmc["dir"] / "genes.parquet"
    GeneEmbeddings(list(pbmc["adata"].var_names), pbmc["E"]).write(path)
    return path


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--measurement", "ATAC"], "has no measurement 'ATAC' (measurements: ['RNA'])"),
        (["--layer", "raw"], "has no X layer 'raw' (layers: ['data'])"),
        (["--obs-filter", "bulk_labels =="], "bad obs filter 'bulk_labels =='"),
        (["--obs-filter", "no_column == 'x'"], "bad obs filter"),
        (["--var-key", "feature_name"], "var has no column 'feature_name'"),
        (["--use-raw"], "--use-raw is for an AnnData input"),
    ],
)
def test_cli_bad_option_is_one_line_and_exit_2(
    pbmc: dict, genes: Path, tmp_path: Path, flags: list[str], says: str
) -> None:
    proc = _cli(str(pbmc["uri"]), "--genes", str(genes), "-o", "o.parquet", *flags, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.parquet").exists()


def test_cli_bad_uri_and_soma_flags_on_an_h5ad(pbmc: dict, genes: Path, tmp_path: Path) -> None:
    for argv in (
        ["missing.soma", "--genes", str(genes), "-o", "o.npy"],
        [str(pbmc["h5ad"]), "--genes", str(genes), "-o", "o.npy", "--obs-filter", "x == 1"],
        [str(pbmc["uri"]), "--genes", str(genes), "--into", str(pbmc["h5ad"])],
    ):
        proc = _cli(*argv, cwd=tmp_path)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_cli_encodes_a_filter_and_writes_into_the_experiment(
    pbmc: dict, genes: Path, tmp_path: Path
) -> None:
    import shutil

    uri = tmp_path / "exp.soma"
    shutil.copytree(pbmc["uri"], uri)
    flags = ["--genes", str(genes), "--obs-filter", MONO, "--chunk-size", "50"]
    proc = _cli(str(uri), *flags, "-o", "mono.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    emb, names, ids = _load(tmp_path / "mono.parquet")
    expected = np.flatnonzero(FILTERS[MONO](pbmc["adata"].obs).to_numpy())
    np.testing.assert_array_equal(ids, expected)
    assert names == list(pbmc["adata"].obs_names[expected])
    proc = _cli(str(uri), *flags, "--into", str(uri), "--key-added", "genept", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got_ids, got, info = soma.read_embedding(uri, "genept")
    np.testing.assert_array_equal(got_ids, expected)
    np.testing.assert_array_equal(_bits(got), _bits(emb))
    assert info["genept_fast"]["params"]["method"] == "GenePT-w"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.soma", "mono.parquet"]  # no work
    again = _cli(str(uri), *flags, "--into", str(uri), "--key-added", "genept", cwd=tmp_path)
    assert again.returncode == 2 and "already has 'genept'" in again.stderr
