"""One engine (issue 19): the same cells give the same bits and the same provenance through
``gf.tl``, the stream, Dask and ``genept-fast encode``.

The data: scanpy's bundled ``10x_pbmc68k_reduced.h5ad`` exactly as shipped (the legacy on-disk
layout: structured-array ``var``, ``raw.X`` / ``raw.var`` at the top level; X scaled, raw
log-normalised), the same data re-saved by anndata as ``.h5ad`` and ``.zarr`` with two layers
(the log-normalised values and integer counts), and a file whose X holds the counts.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from genept_fast import stream, tl
from genept_fast.cli import main
from genept_fast.embed import get_embedder
from genept_fast.errors import InputError
from genept_fast.table import GeneEmbeddings

if TYPE_CHECKING:
    from collections.abc import Callable

gdask = pytest.importorskip("genept_fast.dask")

SHIPPED = Path(pytest.importorskip("scanpy").__file__).parent / "datasets"
SHIPPED = SHIPPED / "10x_pbmc68k_reduced.h5ad"
N_CELLS, N_GENES, DIM = 700, 765, 16
CHUNK = 256  # 3 chunks, the last one short: chunking must not change a bit


def _read(path: Path, **kw: Any) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata on the legacy layout, zarr v2
        return ad.read_zarr(path) if path.suffix == ".zarr" else ad.read_h5ad(path, **kw)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("parity")
    adata = _read(SHIPPED)
    assert adata.raw is not None and adata.X.min() < 0  # what the cases below rely on
    lognorm = sp.csr_matrix(adata.raw.X, dtype=np.float32)
    counts = lognorm.copy()
    counts.data = np.rint(np.expm1(counts.data) * 3.0)
    counts.eliminate_zeros()
    rich = adata.copy()
    rich.layers["lognorm"] = lognorm
    rich.layers["counts"] = counts.astype(np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rich.write_h5ad(d / "resaved.h5ad")
        rich.write_zarr(d / "resaved.zarr")
    plain = ad.AnnData(X=counts.astype(np.float32), obs=adata.obs[[]], var=adata.raw.var[[]])
    plain.write_h5ad(d / "counts_in_x.h5ad")
    rng = np.random.default_rng(0)
    genes = list(adata.raw.var_names)
    keep = sorted(rng.choice(N_GENES, 700, replace=False))  # 65 genes without an embedding
    table = GeneEmbeddings(
        [genes[i] for i in keep],
        rng.standard_normal((700, DIM)).astype(np.float32),
        {"model_id": "test:parity", "text_source": "symbol"},
    )
    table.write(d / "genes.parquet")
    return {
        "shipped": SHIPPED,
        "h5ad": d / "resaved.h5ad",
        "zarr": d / "resaved.zarr",
        "counts_in_x": d / "counts_in_x.h5ad",
        "genes": d / "genes.parquet",
        "dir": d,
    }


def _plain(value: Any) -> Any:
    """uns as plain Python (what a file gives back: arrays for lists, numpy scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _flags(layer: str | None, use_raw: bool | None) -> list[str]:
    flags = [] if layer is None else ["--layer", layer]
    if use_raw is not None:
        flags.append("--use-raw" if use_raw else "--no-use-raw")
    return flags


# (file, layer, use_raw, matrix read, preprocessing): (a) the legacy file as shipped, (b) the
# same data re-saved as .h5ad and .zarr, (c) X, raw and a layer, (d) raw counts.
CASES = [
    ("shipped", None, None, "raw/X", "none"),
    ("shipped", None, True, "raw/X", "none"),
    ("h5ad", None, None, "raw/X", "none"),
    ("h5ad", "lognorm", None, "layers/lognorm", "none"),
    ("h5ad", "counts", None, "layers/counts", "log1p"),
    ("zarr", None, None, "raw/X", "none"),
    ("zarr", "counts", None, "layers/counts", "log1p"),
    ("counts_in_x", None, None, "X", "log1p"),
    ("counts_in_x", None, False, "X", "log1p"),
]


@pytest.mark.parametrize(("name", "layer", "use_raw", "matrix", "how"), CASES)
def test_genept_w_same_bits_and_provenance_on_every_path(
    files: dict[str, Path],
    tmp_path: Path,
    name: str,
    layer: str | None,
    use_raw: bool | None,
    matrix: str,
    how: str,
) -> None:
    path, table = files[name], GeneEmbeddings.read(files["genes"])
    kw: dict[str, Any] = {"layer": layer, "use_raw": use_raw}
    adata = _read(path)
    tl.genept_w(adata, table, chunk_size=CHUNK, **kw)
    ref, ref_uns = adata.obsm["X_genept_w"], _plain(adata.uns["X_genept_w"])
    assert ref.shape == (N_CELLS, DIM) and np.abs(ref).sum() > 0
    assert ref_uns["params"]["matrix"] == matrix and ref_uns["params"]["preprocess"] == how
    assert ref_uns["coverage"]["n_embedded"] == 700

    got: dict[str, np.ndarray] = {}
    if path.suffix == ".h5ad":
        backed = _read(path, backed="r")
        try:
            tl.genept_w(backed, table, chunk_size=100, **kw)
            got["tl backed"] = backed.obsm["X_genept_w"]
        finally:
            backed.file.close()
    out = tmp_path / "stream.h5ad"
    rep = stream.encode_weighted(path, out, table, chunk_size=CHUNK, progress=False, **kw)
    assert rep.log1p == (how == "log1p")
    streamed = _read(out)
    got["stream"] = streamed.obsm["X_genept_w"]
    got["dask"] = gdask.encode_h5ad_dask(path, table, chunk_size=CHUNK, **kw).compute(
        scheduler="sync"
    )
    cli_out = tmp_path / "cli.h5ad"
    args = ["encode", str(path), "--genes", str(files["genes"]), "-o", str(cli_out)]
    assert main([*args, "--chunk-size", "300", "--no-progress", *_flags(layer, use_raw)]) == 0
    from_cli = _read(cli_out)
    got["cli"] = from_cli.obsm["X_genept_w"]
    for where, emb in got.items():
        assert emb.dtype == np.float32, where
        assert np.array_equal(emb, ref), where
    # one record: the same params and coverage in uns from tl, the stream and the command
    for where, uns in (("stream", streamed.uns), ("cli", from_cli.uns)):
        mine = _plain(uns["X_genept_w"])
        assert mine["params"] == ref_uns["params"], where
        assert mine["coverage"] == ref_uns["coverage"], where
        assert mine["stream"]["matrix"] == matrix, where


@pytest.mark.parametrize("name", ["shipped", "h5ad", "zarr"])
def test_scaled_x_is_refused_on_every_path(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path, table = files[name], GeneEmbeddings.read(files["genes"])
    calls: list[tuple[str, Callable[[], object]]] = [
        ("tl", lambda: tl.genept_w(_read(path), table, use_raw=False)),
        ("stream", lambda: stream.encode_weighted(path, tmp_path / "o.npy", table, use_raw=False)),
        ("dask", lambda: gdask.encode_h5ad_dask(path, table, use_raw=False)),
        (
            "stream GenePT-s",
            lambda: stream.estimate_sentences(path, "local", use_raw=False, top_n=3),
        ),
    ]
    for where, call in calls:
        with pytest.raises(InputError, match=r"X has negative values.*use_raw=True") as info:
            call()
        assert where == "tl" or str(path) in str(info.value), where  # the file is named
    args = ["encode", str(path), "--genes", str(files["genes"]), "-o", str(tmp_path / "c.npy")]
    assert main([*args, "--no-use-raw"]) == 2
    err = capsys.readouterr().err
    assert "X has negative values" in err and "--use-raw or --layer" in err
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def few_cells(files: dict[str, Path]) -> dict[str, Path]:
    """20 cells of the re-saved data (the local model is slow on a loaded machine)."""
    sub = _read(files["h5ad"])[:20].copy()
    out = {"h5ad": files["dir"] / "few.h5ad", "zarr": files["dir"] / "few.zarr"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sub.write_h5ad(out["h5ad"])
        sub.write_zarr(out["zarr"])
    return out


@pytest.mark.parametrize(
    ("name", "layer", "matrix"),
    [("h5ad", None, "raw/X"), ("h5ad", "counts", "layers/counts"), ("zarr", None, "raw/X")],
)
def test_genept_s_local_model_same_bits_and_provenance(
    few_cells: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    layer: str | None,
    matrix: str,
) -> None:
    path = few_cells[name]
    local = get_embedder("local", use_cache=False, n_threads=1)  # nothing served by a cache
    adata = _read(path)
    tl.genept_s(adata, local, top_n=6, layer=layer)
    ref, ref_uns = adata.obsm["X_genept_s"], _plain(adata.uns["X_genept_s"])
    assert ref.shape == (20, 384) and ref_uns["params"]["matrix"] == matrix
    out = tmp_path / "stream.h5ad"
    rep = stream.encode_sentences(path, out, local, top_n=6, layer=layer, progress=False)
    assert rep.encoder_stats["n_cells"] == 20
    streamed = _read(out)
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "cache"))  # an empty cache
    cli_out = tmp_path / "cli.h5ad"
    args = ["encode", str(path), "--method", "s", "--top-n", "6", "-o", str(cli_out)]
    assert main([*args, "--no-progress", *_flags(layer, None)]) == 0
    from_cli = _read(cli_out)
    for where, got in (("stream", streamed), ("cli", from_cli)):
        assert np.array_equal(got.obsm["X_genept_s"], ref), where
        mine = _plain(got.uns["X_genept_s"])["params"]
        # tl also counts its sentences (genes per sentence, distinct ones...): the stream can
        # resume, so it reports those per call (StreamReport.encoder_stats) instead
        assert mine == {k: v for k, v in ref_uns["params"].items() if k in mine}, where
        assert set(ref_uns["params"]) - set(mine) == {
            "genes_per_sentence_mean",
            "genes_per_sentence_max",
            "cells_cut_at_token_limit",
            "cells_without_genes",
            "distinct_sentences",
        }
    assert pd.Index(streamed.obs_names).equals(adata.obs_names)


@pytest.mark.parametrize("name", ["shipped", "zarr"])
def test_genept_s_on_the_legacy_file_with_a_loopback_server(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """All 700 cells of the file as shipped (legacy layout) and re-saved, through tl, the
    stream and the command, with the loopback OpenAI-compatible server (deterministic)."""
    from servers.openai_api import OpenAIEmbeddingServer

    path = files[name]
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    with OpenAIEmbeddingServer(api_key="test") as server:
        spec = "openai:text-embedding-3-small"
        emb = get_embedder(spec, base_url=server.url, dimensions=DIM, use_cache=False)
        adata = _read(path)
        tl.genept_s(adata, emb, top_n=10)
        ref, ref_uns = adata.obsm["X_genept_s"], _plain(adata.uns["X_genept_s"])
        assert ref.shape == (N_CELLS, DIM) and ref_uns["params"]["matrix"] == "raw/X"
        out = tmp_path / "stream.h5ad"
        stream.encode_sentences(path, out, emb, top_n=10, chunk_size=CHUNK, progress=False)
        cli_out = tmp_path / "cli.h5ad"
        args = ["encode", str(path), "--method", "s", "--embedder", spec, "--base-url"]
        args += [server.url, "--dimensions", str(DIM), "--top-n", "10", "-o", str(cli_out)]
        assert main([*args, "--no-progress"]) == 0
    for where, got in (("stream", _read(out)), ("cli", _read(cli_out))):
        assert np.array_equal(got.obsm["X_genept_s"], ref), where
        mine = _plain(got.uns["X_genept_s"])["params"]
        assert mine == {k: v for k, v in ref_uns["params"].items() if k in mine}, where
