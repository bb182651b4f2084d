"""``genept-fast encode`` on small real .h5ad files (pbmc68k_reduced cells), end to end.

GenePT-s runs against the loopback OpenAI-compatible server of ``tests/servers/openai_api.py``
(the API key comes from the environment, as for a user); every output is compared with the
in-memory tools of :mod:`genept_fast.tl` on the same data.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import polars as pl
import pytest
import scanpy as sc
import scipy.sparse as sp

from genept_fast import tl
from genept_fast.cli import main
from genept_fast.embed import get_embedder
from genept_fast.errors import InputError
from genept_fast.table import GeneEmbeddings
from servers.openai_api import OpenAIEmbeddingServer, vector_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MODEL = "text-embedding-3-small"
DIM = 16
N_CELLS = 120


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    """120 real PBMCs: X scaled, .raw log-normalised, cell types in obs."""
    return sc.datasets.pbmc68k_reduced()[:N_CELLS].copy()


@pytest.fixture
def h5ad(cells: ad.AnnData, tmp_path: Path) -> Path:
    path = tmp_path / "in.h5ad"
    cells.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def table(cells: ad.AnnData) -> GeneEmbeddings:
    """A deterministic table for 700 of the 765 genes (the rest are missing)."""
    genes = list(cells.raw.var_names)[::-1][:700]  # not in the dataset's order
    rng = np.random.default_rng(7)
    return GeneEmbeddings(genes, rng.standard_normal((700, DIM)), {"model_id": "test:genes"})


@pytest.fixture
def genes_parquet(table: GeneEmbeddings, tmp_path: Path) -> Path:
    return table.write(tmp_path / "genes.parquet")


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIEmbeddingServer]:
    with OpenAIEmbeddingServer(api_key="test") as srv:
        yield srv


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def s_args(server: OpenAIEmbeddingServer, *extra: str) -> list[str]:
    return [
        "--method",
        "s",
        "--embedder",
        f"openai:{MODEL}",
        "--base-url",
        server.url,
        "--dimensions",
        str(DIM),
        *extra,
    ]


def parquet_embeddings(path: Path) -> tuple[list[str], np.ndarray]:
    df = pl.read_parquet(path)
    assert df.columns == ["obs_name", "embedding"]
    return df["obs_name"].to_list(), np.asarray(df["embedding"].to_numpy(), dtype=np.float32)


def leftovers(directory: Path, name: str) -> list[str]:
    """Files other than ``.partial`` work that carry the output's name."""
    return sorted(
        p.name for p in directory.iterdir() if name in p.name and not p.name.endswith(".partial")
    )


# -- GenePT-w ------------------------------------------------------------------------------------


def test_w_to_h5ad_equals_the_tool(
    cells: ad.AnnData,
    h5ad: Path,
    genes_parquet: Path,
    table: GeneEmbeddings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.h5ad"
    args = ["encode", str(h5ad), "--method", "w", "--genes", str(genes_parquet), "-o", str(out)]
    rc = main([*args, "--chunk-size", "50"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "raw/X" in err  # the file has raw: it is used, as tl.genept_w does
    assert "of 765 genes embedded" in err

    expected = tl.genept_w(cells, table, copy=True)
    assert expected is not None
    result = ad.read_h5ad(out)
    assert result.n_obs == N_CELLS
    assert list(result.obs_names) == list(cells.obs_names)
    assert result.obs["bulk_labels"].tolist() == cells.obs["bulk_labels"].tolist()
    assert np.array_equal(result.obsm["X_genept_w"], expected.obsm["X_genept_w"])
    assert not (tmp_path / "out.h5ad.partial").exists()


def test_w_to_parquet_one_row_per_cell(
    cells: ad.AnnData, h5ad: Path, genes_parquet: Path, table: GeneEmbeddings, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    assert main(["encode", str(h5ad), "--genes", str(genes_parquet), "-o", str(out)]) == 0
    names, emb = parquet_embeddings(out)
    assert names == list(cells.obs_names)
    expected = tl.genept_w(cells, table, copy=True)
    assert expected is not None
    assert np.array_equal(emb, expected.obsm["X_genept_w"])


@pytest.mark.parametrize("vector", ["list", "ndarray"])
def test_w_reads_genept_published_pickle(
    cells: ad.AnnData, h5ad: Path, table: GeneEmbeddings, tmp_path: Path, vector: str
) -> None:
    as_vector: Any = (lambda v: [float(x) for x in v]) if vector == "list" else np.asarray
    mapping = {g: as_vector(v) for g, v in zip(table.genes, table.matrix, strict=True)}
    path = tmp_path / "GenePT_gene_embedding_ada_text.pickle"
    with path.open("wb") as fh:
        pickle.dump(mapping, fh)
    out = tmp_path / "out.parquet"
    assert main(["encode", str(h5ad), "--genes", str(path), "-o", str(out)]) == 0
    _, emb = parquet_embeddings(out)
    expected = tl.genept_w(cells, GeneEmbeddings(list(mapping), table.matrix), copy=True)
    assert expected is not None
    assert np.array_equal(emb, expected.obsm["X_genept_w"])


def test_w_counts_layer_and_raw_choice(
    cells: ad.AnnData,
    genes_parquet: Path,
    table: GeneEmbeddings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    counts = sp.csr_matrix(cells.raw.X, copy=True)
    counts.data = np.rint(np.expm1(counts.data) * 3.0)
    counts.eliminate_zeros()
    adata = ad.AnnData(X=cells.X.copy(), obs=cells.obs[[]], var=cells.var[[]])
    adata.layers["counts"] = counts.astype(np.int32)
    path = tmp_path / "layers.h5ad"
    adata.write_h5ad(path)

    out = tmp_path / "counts.parquet"
    args = ["encode", str(path), "--genes", str(genes_parquet), "--layer", "counts"]
    assert main([*args, "-o", str(out)]) == 0
    _, emb = parquet_embeddings(out)
    expected = tl.genept_w(adata, table, layer="counts", copy=True)
    assert expected is not None
    assert expected.uns["X_genept_w"]["params"]["preprocess"] != "none"  # counts detected
    assert np.array_equal(emb, expected.obsm["X_genept_w"])

    # no raw, no layer: X, which is scaled -> refused (never embedded silently), as by the tool
    capsys.readouterr()
    out_x = tmp_path / "x.parquet"
    assert main(["encode", str(path), "--genes", str(genes_parquet), "-o", str(out_x)]) == 2
    err = capsys.readouterr().err
    assert "X has negative values" in err and "--use-raw or --layer" in err
    assert not out_x.exists()
    with pytest.raises(InputError, match="negative"):
        tl.genept_w(adata, table, copy=True)


def test_w_dry_run_writes_nothing(
    h5ad: Path, genes_parquet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.h5ad"
    args = ["encode", str(h5ad), "--genes", str(genes_parquet), "-o", str(out), "--dry-run"]
    assert main(args) == 0
    assert "genes embedded" in capsys.readouterr().err
    assert leftovers(tmp_path, "out.h5ad") == []
    assert not (tmp_path / "out.h5ad.partial").exists()


# -- GenePT-s ------------------------------------------------------------------------------------


def test_s_with_an_openai_compatible_server(
    cells: ad.AnnData, h5ad: Path, server: OpenAIEmbeddingServer, tmp_path: Path
) -> None:
    out = tmp_path / "s.h5ad"
    before = len(server.requests)
    rc = main(["encode", str(h5ad), *s_args(server, "--top-n", "15"), "-o", str(out)])
    assert rc == 0
    assert len(server.requests) > before
    assert all(r.authorization == "Bearer test" for r in server.requests[before:])

    emb = get_embedder(
        f"openai:{MODEL}", base_url=server.url, api_key="test", dimensions=DIM, use_cache=False
    )
    expected = tl.genept_s(cells, emb, top_n=15, copy=True)
    assert isinstance(expected, ad.AnnData)
    result = ad.read_h5ad(out)
    assert list(result.obs_names) == list(cells.obs_names)
    got = result.obsm["X_genept_s"]
    assert np.array_equal(got, expected.obsm["X_genept_s"])
    # and the vectors are those of the cells' sentences
    names = list(cells.raw.var_names)
    row = cells.raw.X[3].toarray().ravel()
    idx = np.flatnonzero(row > 0)
    top = idx[np.lexsort((idx, -row[idx]))][:15]
    sentence = "A cell with genes ranked by expression: " + " ".join(names[g] for g in top)
    assert np.array_equal(got[3], vector_for(sentence, MODEL, DIM))


def test_s_dry_run_sends_nothing(
    h5ad: Path, server: OpenAIEmbeddingServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(server.requests)
    out = tmp_path / "s.parquet"
    rc = main(["encode", str(h5ad), *s_args(server, "--top-n", "30"), "-o", str(out), "--dry-run"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "tokens" in err
    assert f"{N_CELLS} of {N_CELLS} distinct texts" in err
    assert len(server.requests) == before
    assert leftovers(tmp_path, "s.parquet") == []


def test_s_token_limit_and_prefix(
    h5ad: Path, server: OpenAIEmbeddingServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from servers.openai_api import count_tokens

    before = len(server.requests)
    out = tmp_path / "s.npy"
    extra = ["--max-input-tokens", "24", "--prefix", "Genes: "]
    assert main(["encode", str(h5ad), *s_args(server, *extra), "-o", str(out)]) == 0
    assert f"{N_CELLS:,} of {N_CELLS:,} cut at the 24-token limit" in capsys.readouterr().err
    sent = [t for r in server.requests[before:] for t in r.inputs]
    assert len(sent) == len(set(sent)) > N_CELLS - 10  # short sentences: a few cells agree
    assert all(t.startswith("Genes: ") and count_tokens(t) <= 24 for t in sent)
    assert np.load(out).shape == (N_CELLS, DIM)


def test_output_is_atomic_and_a_failed_job_resumes(
    cells: ad.AnnData, h5ad: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.parquet"
    args = ["encode", str(h5ad), "-o", str(out), "--chunk-size", "40", "--top-n", "10"]
    with OpenAIEmbeddingServer(api_key="test") as srv:
        srv.add_fault("delay", times=2, delay=0.0)  # the first chunk (2 requests of 32) passes
        srv.add_fault("error", times=1, status=400, message="injected failure")
        assert main([*args, *s_args(srv)]) == 3  # the server refused a request
        err = capsys.readouterr().err
        assert "injected failure" in err
        assert "Traceback" not in err
        assert not out.exists()  # nothing at the output name ...
        assert leftovers(tmp_path, "s.parquet") == []
        assert (tmp_path / "s.parquet.partial").is_dir()  # ... the finished chunk kept aside

        assert main([*args, *s_args(srv)]) == 0
        assert "1 of 3 chunks resumed" in capsys.readouterr().err
        emb = get_embedder(
            f"openai:{MODEL}", base_url=srv.url, api_key="test", dimensions=DIM, use_cache=False
        )
        expected = tl.genept_s(cells, emb, top_n=10, copy=True)
    assert isinstance(expected, ad.AnnData)
    names, got = parquet_embeddings(out)
    assert names == list(cells.obs_names)
    assert np.array_equal(got, expected.obsm["X_genept_s"])
    assert not (tmp_path / "s.parquet.partial").exists()


# -- user errors: exit code 2, a message, no traceback -------------------------------------------


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["nope.h5ad", "--genes", str(d / "genes.parquet")], "input not found"),
        (lambda d: [str(d / "in.h5ad"), "--genes", "missing.parquet"], "--genes table not found"),
        (lambda d: [str(d / "in.h5ad")], "needs --genes"),
        (lambda d: [str(d / "in.h5ad"), "--method", "s", "--genes", "x"], "--genes"),
        (
            lambda d: [str(d / "in.h5ad"), "--genes", str(d / "genes.parquet"), "--top-n", "5"],
            "--top-n do(es) not apply to --method w",
        ),
        (lambda d: [str(d / "in.h5ad"), "--method", "s", "--top-n", "0"], "--top-n"),
        (lambda d: [str(d / "in.h5ad"), "--method", "s", "--chunk-size", "0"], "--chunk-size"),
        (
            lambda d: [str(d / "in.h5ad"), "--genes", str(d / "genes.parquet"), "--layer", "no"],
            "no layer 'no'",
        ),
        (lambda d: [str(d / "genes.parquet"), "--genes", str(d / "genes.parquet")], "cannot read"),
    ],
)
def test_user_errors_exit_2_with_a_message(
    h5ad: Path,
    genes_parquet: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    make_args: Any,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.h5ad"
    rc = main(["encode", *make_args(tmp_path), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("genept-fast encode: error: ")
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_missing_input_from_the_shell(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "genept_fast", "encode", str(tmp_path / "in.h5ad")),
            *("--genes", str(tmp_path / "g.parquet"), "-o", str(tmp_path / "out.h5ad")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "input not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_h5ad_output_carries_the_same_provenance_as_tl(tmp_path):
    """`encode -o out.h5ad` stores uns[key] like tl.genept_w: params and coverage."""
    import pandas as pd

    rng = np.random.default_rng(0)
    genes = [f"GENE{i}" for i in range(40)]
    X = sp.random(60, 40, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    src = tmp_path / "in.h5ad"
    ad.AnnData(X, var=pd.DataFrame(index=genes)).write_h5ad(src)
    table = GeneEmbeddings(
        genes[:30],
        rng.standard_normal((30, 8)).astype(np.float32),
        {"model_id": "test:model", "text_source": "symbol"},
    )
    table.write(tmp_path / "genes.parquet")
    out = tmp_path / "out.h5ad"
    args = ["encode", str(src), "--genes", str(tmp_path / "genes.parquet"), "-o", str(out)]
    assert main([*args, "--no-progress"]) == 0
    uns = ad.read_h5ad(out).uns["X_genept_w"]
    assert uns["params"]["model"] == "test:model"
    assert uns["params"]["method"] == "GenePT-w"
    assert uns["coverage"]["n_embedded"] == 30
