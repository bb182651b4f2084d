"""A gene is a gene (issue 20, items 3 and 6): duplicate and empty gene names.

- A name that several of a dataset's genes carry (two ``var_names`` both ``HES4``) is refused,
  naming it with its columns and the fix, by :func:`genept_fast.encode.match_table` (GenePT-w,
  every path) and :func:`genept_fast.encode.resolve_gene_symbols` (GenePT-s).
- Different names of one gene (a symbol and its Ensembl ID, a symbol and its lower-case form)
  are no duplicate names: the identity layer's rule for shared table genes applies, and the
  coverage says so.
- An empty, blank or missing gene name never enters a gene-embedding table: refused from arrays
  and parquet, left out of GenePT's pickle with a warning that counts them.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import warnings
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import polars as pl
import pytest
import scipy.sparse as sp

from genept_fast import tl
from genept_fast.cli import main
from genept_fast.embed import get_embedder
from genept_fast.encode import match_table, resolve_gene_symbols
from genept_fast.errors import InputError
from genept_fast.genes.match import DuplicateGeneNamesError, dataset_identifiers
from genept_fast.table import GeneEmbeddings
from servers.openai_api import OpenAIEmbeddingServer

if TYPE_CHECKING:
    from pathlib import Path

DIM = 8
GENES = ["HES4", "CD3E", "GAPDH", "ACTB"]
ENSEMBL = {"HES4": "ENSG00000188290", "CD3E": "ENSG00000198851", "GAPDH": "ENSG00000111640"}


@pytest.fixture(scope="module")
def table() -> GeneEmbeddings:
    rng = np.random.default_rng(3)
    return GeneEmbeddings(GENES, rng.standard_normal((len(GENES), DIM)), {"model_id": "test:g"})


def cells(var_names: list[str], **columns: list[object]) -> ad.AnnData:
    """Five cells over ``var_names``, each expressing every gene with its own weights."""
    rng = np.random.default_rng(11)
    x = sp.csr_matrix(rng.integers(1, 9, size=(5, len(var_names))).astype(np.float32))
    var = pd.DataFrame(columns, index=pd.Index(var_names))
    with warnings.catch_warnings():  # anndata's own word on repeated names; ours is tested
        warnings.filterwarnings("ignore", "Variable names are not unique", UserWarning)
        return ad.AnnData(x, var=var)


def unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# -- duplicate names in a dataset ----------------------------------------------------------------


def test_two_columns_named_hes4_are_refused_by_genept_w(table: GeneEmbeddings) -> None:
    adata = cells(["HES4", "CD3E", "HES4", "GAPDH"])
    with pytest.raises(DuplicateGeneNamesError) as info:
        tl.genept_w(adata, table)
    exc = info.value
    assert isinstance(exc, InputError) and isinstance(exc, ValueError)
    assert exc.names == {"HES4": [0, 2]} and exc.source == "var_names"
    msg = str(exc)
    assert "'HES4' (columns 0, 2)" in msg
    assert "adata.var_names_make_unique()" in msg and "gene_key=" in msg
    assert "X_genept_w" not in adata.obsm  # nothing written


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_the_fixes_the_message_names_work(table: GeneEmbeddings) -> None:
    # var_names_make_unique: the second HES4 becomes HES4-1, which names no table gene
    adata = cells(["HES4", "CD3E", "HES4", "GAPDH"])
    adata.var_names_make_unique()
    out = tl.genept_w(adata, table, preprocess="none", copy=True)
    assert out is not None
    x = adata.X.toarray()
    expected = unit_rows(x[:, [0, 1, 3]] @ table.matrix[[0, 1, 2]])
    np.testing.assert_allclose(out.obsm["X_genept_w"], expected, rtol=1e-5, atol=1e-6)
    # gene_key: a column of unique identifiers (the Ensembl IDs of two different genes)
    adata = cells(
        ["HES4", "CD3E", "HES4", "GAPDH"],
        gene_id=[ENSEMBL["HES4"], ENSEMBL["CD3E"], "ENSG00000000003", ENSEMBL["GAPDH"]],
    )
    out = tl.genept_w(adata, table, gene_key="gene_id", preprocess="none", copy=True)
    assert out is not None
    np.testing.assert_allclose(out.obsm["X_genept_w"], expected, rtol=1e-5, atol=1e-6)


def test_a_repeated_gene_key_column_is_refused_naming_it(table: GeneEmbeddings) -> None:
    adata = cells(["a", "b", "c", "d"], symbol=["HES4", "CD3E", "CD3E", "GAPDH"])
    with pytest.raises(DuplicateGeneNamesError) as info:
        tl.genept_w(adata, table, gene_key="symbol")
    assert info.value.names == {"CD3E": [1, 2]}
    assert info.value.source == "var['symbol']"
    assert "var['symbol']" in str(info.value) and "leave gene_key= out" in str(info.value)


def test_names_equal_but_for_surrounding_whitespace_are_one_name(table: GeneEmbeddings) -> None:
    # the matcher reads " HES4" as HES4: both columns would get HES4's vector
    idx, _ = table.index_for([" HES4", "HES4"])
    assert idx.tolist() == [0, 0]
    with pytest.raises(DuplicateGeneNamesError, match=r"'HES4' \(columns 0, 1: ' HES4', 'HES4'\)"):
        match_table(table, [" HES4", "HES4", "CD3E"])


def test_many_duplicates_are_listed_in_short(table: GeneEmbeddings) -> None:
    names = [f"G{i}" for i in range(8) for _ in range(6)]
    with pytest.raises(DuplicateGeneNamesError) as info:
        match_table(table, names, what="big.h5ad", option="--gene-key ")
    msg = str(info.value)
    assert len(info.value.names) == 8 and info.value.names["G7"] == list(range(42, 48))
    assert msg.startswith("big.h5ad: one name given to several genes in var_names: 'G0'")
    assert "'G0' (columns 0, 1, 2, 3, ...)" in msg and "and 3 more" in msg
    assert "--gene-key COLUMN" in msg
    assert pickle.loads(pickle.dumps(info.value)).names == info.value.names


def test_empty_and_missing_names_are_not_duplicates(table: GeneEmbeddings) -> None:
    # an empty name names nothing: it matches nothing, however many there are
    m = match_table(table, ["", "HES4", " ", "", "CD3E"])
    assert m.table_index.tolist() == [-1, 0, -1, -1, 1]
    # a missing value in a symbol column is no name, never the word "nan"
    var = pd.DataFrame({"gene_symbols": ["HES4", None, np.nan]}, index=["x", "y", "z"])
    ids = dataset_identifiers(["x", "y", "z"], var, gene_key="gene_symbols")
    assert ids.primary == ["HES4", "", ""]


def test_different_names_of_one_gene_are_not_duplicate_names(table: GeneEmbeddings) -> None:
    # a symbol and its Ensembl ID: both match directly, both keep CD3E (said in the coverage)
    m = match_table(table, ["CD3E", ENSEMBL["CD3E"], "HES4"])
    assert m.table_index.tolist() == [1, 1, 0]
    assert m.coverage.kept_by_several == {"CD3E": ["CD3E", ENSEMBL["CD3E"]]}
    assert "1 table gene kept by several dataset genes (CD3E ← CD3E + ENSG00000198851)" in str(
        m.coverage
    )
    assert m.coverage.as_dict()["n_kept_by_several"] == 1
    # a lower-case form: matched only through case, so left out as shadowed by the symbol
    m = match_table(table, ["CD3E", "cd3e"])
    assert m.table_index.tolist() == [1, -1]
    assert m.coverage.shadowed == {"cd3e": "CD3E"}
    assert m.coverage.shared == {"CD3E": ["CD3E", "cd3e"]}
    assert m.coverage.kept_by_several == {}
    assert "1 left out as duplicates of directly matched genes (cd3e (= CD3E))" in str(m.coverage)


def test_a_repeated_symbol_column_next_to_unique_ids_is_allowed(table: GeneEmbeddings) -> None:
    # Ensembl var_names are the first identifiers; the symbol column is the second and may
    # repeat (two genes that share a symbol); unknown IDs fall back to it
    var = pd.DataFrame({"gene_symbols": ["HES4", "HES4"]}, index=["ENSG00000000001", "ENSG02"])
    m = match_table(table, list(var.index), var)
    assert m.table_index.tolist() == [0, 0]
    assert m.coverage.kept_by_several == {"HES4": list(var.index)}


# -- GenePT-s ------------------------------------------------------------------------------------


def test_genept_s_refuses_a_repeated_name_before_any_request() -> None:
    # two columns named HES4 would write "HES4" twice in one sentence for two genes
    with pytest.raises(DuplicateGeneNamesError, match="'HES4' \\(columns 0, 2\\)"):
        resolve_gene_symbols(["HES4", "CD3E", "HES4"])
    with OpenAIEmbeddingServer(api_key="k") as server:
        emb = get_embedder(
            "openai:text-embedding-3-small",
            base_url=server.url,
            api_key="k",
            dimensions=DIM,
            use_cache=False,
        )
        with pytest.raises(DuplicateGeneNamesError):
            tl.genept_s(cells(["HES4", "CD3E", "HES4", "GAPDH"]), emb)
        assert server.requests == []


def test_genept_s_symbols_of_distinct_ids_may_repeat() -> None:
    ids = ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003"]
    var = pd.DataFrame({"gene_symbols": ["HES4", "HES4", None]}, index=ids)
    symbols, how = resolve_gene_symbols(list(var.index), var)
    assert symbols == ["HES4", "HES4", ""] and how == "var['gene_symbols']"
    var = pd.DataFrame({"sym": ["HES4", "CD3E", "HES4"]}, index=["a", "b", "c"])
    with pytest.raises(DuplicateGeneNamesError, match=r"var\['sym'\]"):
        resolve_gene_symbols(list(var.index), var, gene_key="sym")


# -- the command line ----------------------------------------------------------------------------


def run_encode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "genept_fast", "encode", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_encode_w_refuses_duplicate_var_names_and_takes_the_fix(
    table: GeneEmbeddings, tmp_path: Path
) -> None:
    adata = cells(
        ["HES4", "CD3E", "HES4", "GAPDH"],
        gene_id=[ENSEMBL["HES4"], ENSEMBL["CD3E"], "ENSG00000000003", ENSEMBL["GAPDH"]],
    )
    data = tmp_path / "dup.h5ad"
    adata.write_h5ad(data)
    genes = table.write(tmp_path / "genes.parquet")
    out = tmp_path / "out.h5ad"
    args = [str(data), "--method", "w", "--genes", str(genes), "--preprocess", "none"]

    proc = run_encode(*args, "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "'HES4' (columns 0, 2)" in proc.stderr
    assert "adata.var_names_make_unique()" in proc.stderr and "--gene-key COLUMN" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()

    proc = run_encode(*args, "--gene-key", "gene_id", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    got = ad.read_h5ad(out).obsm["X_genept_w"]
    expected = tl.genept_w(adata, table, gene_key="gene_id", preprocess="none", copy=True)
    assert expected is not None
    np.testing.assert_array_equal(got, expected.obsm["X_genept_w"])


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_encode_s_refuses_duplicate_var_names_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "dup.h5ad"
    cells(["HES4", "CD3E", "HES4", "GAPDH"]).write_h5ad(data)
    out = tmp_path / "s.h5ad"
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    with OpenAIEmbeddingServer(api_key="k") as server:
        rc = main(
            [
                *("encode", str(data), "--method", "s", "--embedder"),
                *("openai:text-embedding-3-small", "--base-url", server.url),
                *("--dimensions", str(DIM), "-o", str(out)),
            ]
        )
        assert server.requests == []
    err = capsys.readouterr().err
    assert rc == 2 and "'HES4' (columns 0, 2)" in err and "--gene-key COLUMN" in err
    assert "Traceback" not in err and not out.exists()


# -- empty and duplicate names in a table --------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "   ", "\t", None, float("nan")])
def test_a_table_refuses_an_empty_or_missing_gene_name(bad: object) -> None:
    with pytest.raises(InputError, match=r"empty or missing gene names in the table \(1\): rows 1"):
        GeneEmbeddings(["HES4", bad, "CD3E"], np.ones((3, 2)))  # type: ignore[list-item]


def test_a_table_refuses_duplicate_names_whitespace_aside() -> None:
    with pytest.raises(InputError, match=r"duplicate genes in the table: 'HES4' \(rows 0, 2\)"):
        GeneEmbeddings(["HES4", "CD3E", "HES4"], np.ones((3, 2)))
    with pytest.raises(InputError, match=r"'HES4' \(rows 0, 1: 'HES4', 'HES4 '\)"):
        GeneEmbeddings(["HES4", "HES4 "], np.ones((2, 2)))


def test_a_parquet_table_with_an_empty_or_null_gene_is_refused(tmp_path: Path) -> None:
    for i, genes in enumerate((["HES4", ""], ["HES4", None], ["HES4", "HES4"])):
        path = tmp_path / f"t{i}.parquet"
        pl.DataFrame(
            {"gene": genes, "embedding": [[1.0, 0.0], [0.0, 1.0]]},
            schema={"gene": pl.String, "embedding": pl.Array(pl.Float32, 2)},
        ).write_parquet(path)
        with pytest.raises(InputError, match=str(path)):
            GeneEmbeddings.read(path)


def genept_pickle(obj: object) -> io.BytesIO:
    return io.BytesIO(pickle.dumps(obj))


def test_genept_pickle_unnamed_vectors_are_left_out_and_counted() -> None:
    obj = {
        "HES4": [1.0, 0.0],
        "": [0.5, 0.5],
        "  ": [0.1, 0.2],
        None: [0.3, 0.3],
        float("nan"): [0.2, 0.2],
        "CD3E": [0.0, 1.0],
    }
    with pytest.warns(UserWarning, match=r"x.pickle: 4 of 6 vectors have an empty or missing"):
        t = GeneEmbeddings.from_genept_pickle(
            genept_pickle(obj), where="x.pickle", metadata={"model_id": "m"}
        )
    assert t.genes == ["HES4", "CD3E"]
    np.testing.assert_array_equal(t.matrix, [[1.0, 0.0], [0.0, 1.0]])
    assert t.metadata["n_unnamed_dropped"] == 4


def test_genept_pickle_without_a_named_vector_or_with_clashing_names_is_refused() -> None:
    with pytest.raises(InputError, match="none of its 2 vectors has a gene name"):
        GeneEmbeddings.from_genept_pickle(
            genept_pickle({"": [1.0], None: [2.0]}), where="x.pickle", metadata={}
        )
    with pytest.raises(InputError, match=r"x.pickle: duplicate genes in the table: 'HES4'"):
        GeneEmbeddings.from_genept_pickle(
            genept_pickle({"HES4": [1.0], " HES4": [2.0]}), where="x.pickle", metadata={}
        )
    with pytest.raises(InputError, match="key 7 is not a gene symbol string"):
        GeneEmbeddings.from_genept_pickle(
            genept_pickle({"HES4": [1.0], 7: [2.0]}), where="x.pickle", metadata={}
        )


def test_a_clean_pickle_reads_without_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "GenePT_gene_embedding_ada_text.pickle"
    path.write_bytes(pickle.dumps({"HES4": [1.0, 0.0], "CD3E": [0.0, 1.0]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = GeneEmbeddings.read(path)
    assert t.genes == ["HES4", "CD3E"] and "n_unnamed_dropped" not in t.metadata


# -- gene lists read by the identity layer -------------------------------------------------------


def test_hgnc_rows_with_a_blank_symbol_or_id_name_no_gene(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genept_fast.genes import hgnc as hgnc_module

    header = (
        "hgnc_id\tsymbol\tname\tlocus_group\talias_symbol\tprev_symbol\tensembl_gene_id\tentrez_id"
    )
    rows = [
        "HGNC:28208\tHES4\thes family bHLH 4\tprotein-coding gene\t\t\tENSG00000188290\t57801",
        "HGNC:1\t  \tblank symbol\tprotein-coding gene\t\t\tENSG00000000001\t1",
        " \tGHOST\tblank id\tprotein-coding gene\t\t\tENSG00000000002\t2",
    ]
    path = tmp_path / "hgnc_complete_set.tsv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    monkeypatch.setattr(hgnc_module, "hgnc_path", lambda: path)
    table = hgnc_module.hgnc.__wrapped__()  # the reader itself, not the cached bundled table
    assert table.symbol == ["HES4"] and table.hgnc_id == ["HGNC:28208"]
    assert set(table.by_ensembl) == {"ENSG00000188290"}


@pytest.mark.parametrize(
    ("cell", "names"), [("Hes4", True), ("-", False), ("", False), ("  ", False), (None, False)]
)
def test_ortholog_table_cells_that_name_no_gene(cell: str | None, names: bool) -> None:
    from genept_fast.genes.orthologs import _valid_name

    assert _valid_name(cell) is names
