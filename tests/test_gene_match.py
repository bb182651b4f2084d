"""Tables keyed by any ID form match datasets that use any other (symbols, Ensembl IDs with and
without version, Entrez IDs, mouse genes), in both directions, on real HGNC identifiers; every
path (table, tl, encode, stream, Dask) goes through the same layer."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from genept_fast import tl, weighted_embedding
from genept_fast.cli import main
from genept_fast.genes.hgnc import hgnc
from genept_fast.genes.orthologs import human_names
from genept_fast.kernels import GeneptError
from genept_fast.table import GeneEmbeddings

T = hgnc()
# 400 real genes that have one Ensembl ID and an Entrez ID each (every 100th of the table)
ROWS = [
    i
    for i in range(0, len(T), 100)
    if T.ensembl[i] and len(T.by_ensembl[T.ensembl[i]]) == 1 and T.entrez[i]
][:400]
SYMBOLS = [T.symbol[i] for i in ROWS]
ENSEMBL = [T.ensembl[i] for i in ROWS]
VERSIONED = [f"{e}.{i % 17 + 1}" for i, e in enumerate(ENSEMBL)]
ENTREZ = [T.entrez[i] for i in ROWS]
# Ensembl IDs HGNC does not list (novel genes), which only match up to their version
OUTSIDE = sorted(e for e in human_names() if e.startswith("ENSG") and e not in T.by_ensembl)[:50]


def table_of(keys: list[str], seed: int = 0) -> GeneEmbeddings:
    rng = np.random.default_rng(seed)
    return GeneEmbeddings(keys, rng.standard_normal((len(keys), 6)), {"model_id": "m"})


@pytest.mark.parametrize(
    ("table_keys", "dataset", "method"),
    [
        (SYMBOLS, VERSIONED, "ensembl"),  # symbol table × versioned-Ensembl file
        (VERSIONED, SYMBOLS, "ensembl"),  # and the reverse
        (ENSEMBL, VERSIONED, "ensembl"),  # unversioned table × versioned file
        (VERSIONED, ENSEMBL, "ensembl"),  # versioned table × unversioned file
        (ENTREZ, SYMBOLS, "entrez"),
        (SYMBOLS, ENTREZ, "entrez"),
        (ENTREZ, VERSIONED, "entrez"),
        ([s.lower() for s in SYMBOLS], SYMBOLS, "case"),
    ],
)
def test_cross_form_matching(table_keys, dataset, method):
    table = table_of(table_keys)
    order = np.random.default_rng(1).permutation(len(dataset))
    query = [dataset[i] for i in order]
    idx, cov = table.index_for(query)
    assert idx.tolist() == order.tolist()  # each gene finds the row of the same gene
    assert cov.n_matched == cov.n_embedded == len(query)
    assert cov.by_method == {method: len(query)}
    assert cov.unmatched == [] and cov.ambiguous == {} and cov.shared == {}
    m, _ = table.align(query)
    np.testing.assert_array_equal(m, table.matrix[order])


def test_ensembl_ids_outside_hgnc_match_up_to_their_version():
    assert len(OUTSIDE) == 50
    table = table_of(OUTSIDE)
    idx, cov = table.index_for([f"{e}.3" for e in OUTSIDE])
    assert idx.tolist() == list(range(50)) and cov.by_method == {"ensembl": 50}
    unknown = ["ENSG00000000001.2", "ENSG00000000002"]
    table2 = table_of(["ENSG00000000001", "ENSG00000000002.7"])
    assert table2.index_for(unknown)[0].tolist() == [0, 1]  # unknown to all, same ID


def test_previous_and_alias_symbols_both_ways():
    # a GenePT-style table with old symbols, a dataset with current ones, and the reverse
    old, new = ["FAM172A", "ATPIF1", "CD3epsilon"], ["ARB2A", "ATP5IF1", "CD3E"]
    idx, cov = table_of(old).index_for(new)
    assert idx.tolist() == [0, 1, 2]
    assert cov.by_method == {"previous": 2, "alias": 1}
    idx, cov = table_of(new).index_for(old)
    assert idx.tolist() == [0, 1, 2] and cov.methods == ["previous", "previous", "alias"]


def test_ambiguous_aliases_are_reported_not_guessed():
    shared = next(
        a
        for a, rows in sorted(T.by_alias_upper.items())
        if len(rows) == 2 and a not in T.by_symbol_upper and a not in T.by_previous_upper
    )
    genes = sorted(T.symbol[r] for r in T.by_alias_upper[shared])
    table = table_of(genes)
    idx, cov = table.index_for([shared, genes[0]])
    assert idx.tolist() == [-1, 0]
    assert cov.ambiguous == {shared: genes}
    assert cov.unmatched == [] and cov.n_matched == 1
    assert "1 ambiguous, not matched" in str(cov) and shared in str(cov)
    assert cov.as_dict()["ambiguous"] == {shared: ";".join(genes)}


def test_duplicates_a_direct_match_shadows_an_indirect_one():
    table = table_of(["ARB2A", "CD3E"])
    idx, cov = table.index_for(["FAM172A", "ARB2A", "ENSG00000198851", "CD3E", "cd3e"])
    # ARB2A itself wins over its previous symbol; the Ensembl ID and the symbol of CD3E are both
    # direct (the same gene twice) and keep it; the lower-case name is left out
    assert idx.tolist() == [-1, 0, 1, 1, -1]
    assert cov.shadowed == {"FAM172A": "ARB2A", "cd3e": "CD3E"}
    assert cov.shared == {
        "ARB2A": ["FAM172A", "ARB2A"],
        "CD3E": ["ENSG00000198851", "CD3E", "cd3e"],
    }
    assert cov.n_matched == 3 and cov.unmatched == []
    assert "2 left out as duplicates" in str(cov)
    # two indirect names of one gene (no direct one): both keep it, and the pair is reported
    both = table.index_for(["FAM172A", "ENSG00000113391.4"])  # previous symbol, Ensembl ID
    assert both[0].tolist() == [-1, 0]  # the Ensembl ID is direct
    idx, cov = table_of(["ATP5IF1"]).index_for(["ATPIF1", "atpif1"])
    assert idx.tolist() == [0, 0] and cov.shared == {"ATP5IF1": ["ATPIF1", "atpif1"]}


def test_mouse_genes_match_human_tables_by_ortholog_and_mouse_tables_directly():
    human = table_of(["CD4", "BEX1", "BEX2", "GAPDH", "LIMS1", "HLA-A"])
    mouse_genes = ["Cd4", "Bex2", "Bex1", "Gapdh", "Lims1", "H2-K1", "Actb", "Foo1"]
    idx, cov = human.index_for(mouse_genes)
    assert cov.species == "mouse"
    assert idx.tolist() == [0, 2, 1, 3, 4, -1, -1, -1]
    assert cov.by_method == {"ortholog": 5}
    assert cov.one_to_many == ["Bex2", "Bex1", "Lims1"]
    assert "H2-K1" in cov.ambiguous and "HLA-A" in cov.ambiguous["H2-K1"]
    assert cov.unmatched == ["Actb", "Foo1"]  # ACTB is not in this table; Foo1 is no gene
    # a table keyed by mouse Ensembl IDs: the same mouse genes, not their human orthologs
    mm = table_of(["ENSMUSG00000023274", "ENSMUSG00000042750", "ENSMUSG00000050071"])
    idx, cov = mm.index_for(["Cd4", "Bex1", "Bex2", "Ifitm2"])
    assert idx.tolist() == [0, 2, 1, -1]
    assert cov.by_method == {"ensembl": 3}
    # a human dataset against a mouse-keyed table goes through the orthologs
    idx, cov = mm.index_for(["CD4", "BEX2", "TP53"])
    assert idx.tolist() == [0, 1, -1] and cov.by_method == {"ortholog": 2}


def test_coverage_goes_into_h5ad(tmp_path):
    table = table_of(["ARB2A", "CD3E"])
    adata = ad.AnnData(np.ones((3, 4), dtype=np.float32))
    adata.var_names = ["FAM172A", "ARB2A", "CD3E", "NOTAGENE"]
    tl.genept_w(adata, table)
    adata.write_h5ad(tmp_path / "a.h5ad")
    cov = ad.read_h5ad(tmp_path / "a.h5ad").uns["X_genept_w"]["coverage"]
    assert cov["by_method"] == {"exact": 2}
    assert cov["shadowed"] == {"FAM172A": "ARB2A"}
    assert (cov["n_shadowed"], cov["n_unmatched"], cov["n_ambiguous"]) == (1, 1, 0)


def _dataset(tmp_path, var_names, **var):
    rng = np.random.default_rng(3)
    X = sp.random(30, len(var_names), density=0.4, format="csr", random_state=rng)
    adata = ad.AnnData(X.astype(np.float32), var=pd.DataFrame(var, index=var_names))
    path = tmp_path / "d.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_stream_and_dask_match_through_the_layer(tmp_path):
    from genept_fast import stream
    from genept_fast.dask import encode_h5ad_dask

    table = table_of(SYMBOLS)
    adata, path = _dataset(tmp_path, VERSIONED[::-1])
    want = weighted_embedding(adata.X, table.align(VERSIONED[::-1])[0])
    report = stream.encode_weighted(
        path, tmp_path / "w.npy", table, preprocess="none", progress=False
    )
    assert report.cells_encoded == 30
    np.testing.assert_allclose(np.load(tmp_path / "w.npy"), want, atol=1e-6)
    lazy = encode_h5ad_dask(path, table, preprocess="none")
    np.testing.assert_allclose(lazy.compute(), want, atol=1e-6)
    stream.encode_weighted(path, tmp_path / "w.h5ad", table, preprocess="none", progress=False)
    cov = ad.read_h5ad(tmp_path / "w.h5ad").uns["X_genept_w"]["coverage"]
    assert cov["by_method"] == {"ensembl": len(SYMBOLS)}
    with pytest.raises(GeneptError, match="gene_index= is for a plain matrix"):
        stream.encode_weighted(path, tmp_path / "x.npy", table, gene_index=np.arange(400))


def test_no_match_says_what_would_help(tmp_path, capsys):
    table = table_of(SYMBOLS[:50])
    # the IDs are unknown, but a var column holds the symbols: the error names it
    ids = [f"PROBE_{i}" for i in range(50)]
    adata, path = _dataset(tmp_path, ids, hgnc_symbol=SYMBOLS[:50], other=["x"] * 50)
    with pytest.raises(GeneptError, match=r"Column 'hgnc_symbol' matches 50 .* gene_key=hgnc_"):
        tl.genept_w(adata, table)
    table.write(tmp_path / "g.parquet")
    rc = main(
        [
            "encode",
            str(path),
            "--genes",
            str(tmp_path / "g.parquet"),
            "-o",
            str(tmp_path / "o.npy"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "pass --gene-key hgnc_symbol" in err and "Traceback" not in err
    assert (
        main(
            [
                "encode",
                str(path),
                "--genes",
                str(tmp_path / "g.parquet"),
                "--gene-key",
                "hgnc_symbol",
                "-o",
                str(tmp_path / "o.npy"),
                "--no-progress",
            ]
        )
        == 0
    )
    # real genes on both sides, but different ones: build a table for these genes
    other = table_of(SYMBOLS[100:150])
    adata2 = ad.AnnData(np.ones((2, 50), dtype=np.float32))
    adata2.var_names = SYMBOLS[:50]
    with pytest.raises(GeneptError, match=r"built for other genes.*gene-text"):
        tl.genept_w(adata2, other)
    # nothing in the dataset is a gene at all
    adata3 = ad.AnnData(np.ones((2, 3), dtype=np.float32))
    adata3.var_names = ["p1", "p2", "p3"]
    with pytest.raises(GeneptError, match=r"No identifier of .* is a gene"):
        tl.genept_w(adata3, table)


# -- the exact-first fast path gives what resolving every name gives --------------------------

# identifiers of every form the matcher meets: symbols (approved, another case, padded),
# previous and alias symbols (ambiguous ones too), Ensembl (versioned), Entrez, mouse genes,
# names of no gene and empty names
_SHARED_ALIAS = next(
    a
    for a, rows in sorted(T.by_alias_upper.items())
    if len(rows) == 2 and a not in T.by_symbol_upper and a not in T.by_previous_upper
)
POOL = sorted(
    {
        *SYMBOLS[:60],
        *(s.lower() for s in SYMBOLS[60:80]),
        *(f" {s}" for s in SYMBOLS[80:90]),
        *VERSIONED[90:110],
        *ENSEMBL[110:120],
        *ENTREZ[120:130],
        "FAM172A",
        "ARB2A",
        "ATPIF1",
        "CD3epsilon",
        "CD3E",
        "cd3e",
        _SHARED_ALIAS,
        *OUTSIDE[:5],
        "Cd4",
        "Bex1",
        "Bex2",
        "Gapdh",
        "H2-K1",
        "Actb",
        "Foo1",
        "ENSMUSG00000023274",
        "NOT_A_GENE",
        "",
    }
)


def _both_paths(names, keys, nonzero, alternatives, species):
    from genept_fast.genes.match import _match, index_keys

    fast = _match(
        names,
        index_keys(keys),
        nonzero=nonzero,
        alternatives=alternatives,
        species=species,
        exact_first=True,
    )
    full = _match(
        names,
        index_keys(keys),
        nonzero=nonzero,
        alternatives=alternatives,
        species=species,
        exact_first=False,
    )
    return fast, full


MOUSE_POOL = [
    "Cd4",
    "Bex1",
    "Bex2",
    "Gapdh",
    "Lims1",
    "H2-K1",
    "Actb",
    "Cd3e",
    "Ifitm2",
    "Trp53",
    "mt-Co1",
    "Foo1",
    "ENSMUSG00000023274",
    "ENSMUSG00000042750",
    "ENSMUSG00000050071",
    "CD4",
    "BEX2",
    "GAPDH",
    "LIMS1",
    "",
]


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    pool=st.sampled_from([POOL, MOUSE_POOL]),
    species=st.sampled_from(["auto", "human", "mouse"]),
    use_alt=st.booleans(),
    only_keys=st.booleans(),
)
def test_exact_first_matching_equals_resolving_every_name(data, pool, species, use_alt, only_keys):
    # names drawn from the table's keys (exact), from the pool (keys in another case, padded,
    # other identifiers of a key's gene, mouse genes, no gene): the exact ones skip the
    # identity layer, the others do not; a mouse pool makes a mouse dataset
    named = [k for k in pool if k.strip()]
    keys = data.draw(st.lists(st.sampled_from(named), min_size=1, max_size=30, unique=True))
    drawn = st.sampled_from(keys) if only_keys else st.sampled_from(keys) | st.sampled_from(pool)
    names = data.draw(st.lists(drawn, max_size=40, unique=only_keys and data.draw(st.booleans())))
    zero_rows = data.draw(st.sets(st.integers(0, len(keys) - 1)))
    nonzero = np.array([i not in zero_rows for i in range(len(keys))])
    alternatives = None
    if use_alt:
        alt = st.sampled_from([*keys, *pool, None])
        alternatives = data.draw(st.lists(alt, min_size=len(names), max_size=len(names)))
    (idx_fast, cov_fast), (idx_full, cov_full) = _both_paths(
        names, keys, nonzero, alternatives, species
    )
    np.testing.assert_array_equal(idx_fast, idx_full)
    assert cov_fast == cov_full  # methods, unmatched, ambiguous, shared, shadowed, species
    assert str(cov_fast) == str(cov_full) and cov_fast.as_dict() == cov_full.as_dict()


def test_names_that_are_all_table_keys_build_no_token_index():
    from genept_fast.genes.match import index_keys, match_genes

    keys = [*(s for s in SYMBOLS if s not in ("CD3E", "C1orf112")), "CD3E", "C1orf112"]
    index = index_keys(keys)
    names = list(reversed(keys))
    idx, cov = match_genes(names, index)
    assert idx.tolist() == list(reversed(range(len(keys))))
    assert cov.by_method == {"exact": len(keys)} and cov.species == "human"
    assert "tokens" not in vars(index)  # the table's keys were never resolved
    # a name that is not a key as written goes through the whole layer (and builds them)
    idx, cov = match_genes([*names, "ENSG00000198851.4"], index)
    assert idx[-1] == keys.index("CD3E") and cov.methods[-1] == "ensembl"
    assert cov.shared == {"CD3E": ["CD3E", "ENSG00000198851.4"]} and "tokens" in vars(index)
    idx, cov = match_genes([*names, "cd3e"], index)
    assert idx[-1] == -1 and cov.shadowed == {"cd3e": "CD3E"}  # the exact name keeps CD3E
