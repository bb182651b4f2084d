"""Gene text sources against real loopback servers serving real NCBI Gene records."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import anndata
import numpy as np
import polars as pl
import pytest

from genept_fast.cli import main
from genept_fast.errors import MalformedResponseError, ServiceError, ServiceUnavailableError
from genept_fast.kernels import GeneptError
from genept_fast.text import TEXT_SCHEMA, clean_summary, gene_texts, read_texts, write_texts
from servers.chat import ChatServer
from servers.mygene import MyGeneServer
from servers.ncbi import Fault, NcbiServer, load_genes

FAST = {"backoff": 0.01, "timeout": 5.0}


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genes(shared_data) -> pl.DataFrame:
    return load_genes(shared_data)


@pytest.fixture(scope="module")
def ncbi_server(genes):
    with NcbiServer(genes) as s:
        yield s


@pytest.fixture
def ncbi(ncbi_server):
    ncbi_server.reset()
    return ncbi_server


@pytest.fixture(scope="module")
def mygene_server(genes):
    with MyGeneServer(genes) as s:
        yield s


@pytest.fixture
def mygene(mygene_server):
    mygene_server.reset()
    return mygene_server


@pytest.fixture(scope="module")
def chat_server(genes):
    with ChatServer(genes, api_key="sk-test-secret-0123456789") as s:
        yield s


@pytest.fixture
def chat(chat_server, monkeypatch):
    chat_server.reset()
    monkeypatch.setenv("OPENAI_API_KEY", chat_server.api_key)
    return chat_server


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def record(genes: pl.DataFrame, symbol: str) -> dict:
    return genes.filter(pl.col("symbol") == symbol).row(0, named=True)


def expected_ncbi(genes: pl.DataFrame, symbol: str) -> str:
    r = record(genes, symbol)
    return f"{r['full_name']}. {' '.join(r['summary'].split())}"


def esearch_symbols(server: NcbiServer) -> list[str]:
    out = []
    for r in server.requests:
        if r.path.endswith("esearch.fcgi"):
            term = r.form["term"][0]
            out += [t.split('"')[1] for t in term.split(" OR ") if '"' in t]
    return out


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def check_frame(df: pl.DataFrame, queries: list[str]) -> None:
    assert dict(df.schema) == TEXT_SCHEMA
    assert df["gene"].to_list() == queries


# -- cleaning, symbol, file ----------------------------------------------------------------------


def test_clean_summary():
    raw = "This gene  encodes\n a protein. [provided by RefSeq, Jul 2008]"
    assert clean_summary(raw) == "This gene encodes a protein."
    assert clean_summary("A. [supplied by OMIM, Mar 2008] Publication Note: This RefSeq...") == "A."
    assert clean_summary("  ") is None
    assert clean_summary(None) is None


def test_symbol_source_maps_ensembl_ids():
    queries = ["TP53", "ENSG00000010610.10", "ENSG00000000000", "CD8A"]
    df = gene_texts(queries, source="symbol")
    check_frame(df, queries)
    assert df["text"].to_list() == ["TP53", "CD4", None, "CD8A"]
    assert df["source"].to_list() == ["symbol", "symbol", "missing", "symbol"]


def test_symbol_source_mouse_to_human():
    df = gene_texts(["Cd4", "Foo1"], source="symbol", species="mouse", to_human=True)
    assert df["text"].to_list() == ["CD4", None]


def test_file_source_genept_json(tmp_path, genes):
    subset = genes.filter(pl.col("summary").is_not_null()).head(50)
    data = {r["symbol"]: r["summary"] for r in subset.iter_rows(named=True)}
    path = tmp_path / "NCBI_summary_of_genes.json"
    path.write_text(json.dumps(data))
    first, second = subset["symbol"][0], subset["symbol"][1]
    queries = [first, second.lower(), "NOT_THERE"]
    df = gene_texts(queries, source="file", path=path)
    check_frame(df, queries)
    assert df["text"][0] == " ".join(data[first].split())
    assert df["text"][1] == " ".join(data[second].split())  # case-insensitive fallback
    assert df["source"].to_list() == ["file", "file", "missing"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl", "records.json"])
def test_file_source_tables(tmp_path, genes, fmt):
    subset = (
        genes.filter(pl.col("summary").is_not_null())
        .head(10)
        .select(pl.col("symbol").alias("Gene_Symbol"), pl.col("summary").alias("description"))
    )
    path = tmp_path / f"texts.{fmt}"
    if fmt == "csv":
        subset.write_csv(path)
    elif fmt == "tsv":
        subset.write_csv(path, separator="\t")
    elif fmt == "parquet":
        subset.write_parquet(path)
    elif fmt == "jsonl":
        subset.write_ndjson(path)
    else:
        path.write_text(json.dumps(subset.to_dicts()))
    gene = subset["Gene_Symbol"][3]
    df = gene_texts([gene], source="file", path=path, gene_column="Gene_Symbol")
    assert df["text"][0] == " ".join(subset["description"][3].split())


def test_file_source_errors(tmp_path):
    with pytest.raises(GeneptError, match="needs path"):
        gene_texts(["TP53"], source="file")
    with pytest.raises(FileNotFoundError):
        gene_texts(["TP53"], source="file", path=tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nTP53,x\n")
    with pytest.raises(GeneptError, match="which column holds the gene"):
        gene_texts(["TP53"], source="file", path=bad)
    with pytest.raises(GeneptError, match="source must be one of"):
        gene_texts(["TP53"], source="wiki")


# -- NCBI E-utilities ----------------------------------------------------------------------------


def test_ncbi_eutils_real_records(ncbi, genes, cache):
    queries = ["TP53", "A2MP1", "NOT_A_GENE_X", "BCC7", "7157", "ENSG00000010610.10"]
    df = gene_texts(queries, source="ncbi", ncbi_url=ncbi.url, cache_dir=cache, **FAST)
    check_frame(df, queries)
    got = dict(zip(df["gene"], zip(df["text"], df["source"], strict=True), strict=True))
    tp53 = expected_ncbi(genes, "TP53")
    assert got["TP53"] == (tp53, "ncbi_summary")
    assert "[provided by" not in tp53 and "provided by" not in got["TP53"][0]
    assert got["A2MP1"] == ("alpha-2-macroglobulin pseudogene 1", "ncbi_full_name")
    assert got["NOT_A_GENE_X"] == (None, "missing")
    assert got["BCC7"] == (tp53, "ncbi_summary")  # alias of TP53
    assert got["7157"] == (tp53, "ncbi_summary")  # Entrez ID
    assert got["ENSG00000010610.10"] == (expected_ncbi(genes, "CD4"), "ncbi_summary")
    assert df["fetched_at"].dt.year().min() >= 2024
    # batched: one esearch and one esummary for all six genes
    assert [p.rsplit("/", 1)[1] for p in ncbi.paths()] == ["esearch.fcgi", "esummary.fcgi"]
    # a rerun is served from the cache
    ncbi.reset()
    again = gene_texts(queries, source="ncbi", ncbi_url=ncbi.url, cache_dir=cache, **FAST)
    assert ncbi.requests == []
    assert again.drop("fetched_at").equals(df.drop("fetched_at"))


def test_ncbi_api_key_in_body_not_url(ncbi, cache, monkeypatch):
    key = "ncbi-key-abcdef"
    monkeypatch.setenv("NCBI_API_KEY", key)
    gene_texts(["TP53", "CD4"], source="ncbi", ncbi_url=ncbi.url, cache_dir=cache, **FAST)
    assert ncbi.requests, "no request"
    for r in ncbi.requests:
        assert r.form["api_key"] == [key]
        assert "api_key" not in r.query
    for f in cache.rglob("*"):
        if f.is_file():  # the cache is a SQLite file now: read bytes
            assert key.encode() not in f.read_bytes()


def test_ncbi_rate_limit_respected(ncbi, cache):
    # 4 batches of 1 gene = 8 requests; the server answers 429 above 3/s, the client paces itself
    symbols = ["TP53", "CD4", "CD8A", "ACTB"]
    t0 = time.monotonic()
    df = gene_texts(
        symbols, source="ncbi", ncbi_url=ncbi.url, cache_dir=cache, batch_size=1, **FAST
    )
    assert time.monotonic() - t0 >= 7 / 3.0  # 8 requests at most 3 per second
    assert (df["source"] == "ncbi_summary").all()
    assert len(ncbi.requests) <= 9  # at most one 429 from scheduling jitter on a busy machine


def test_ncbi_429_retry_after_500_timeout(ncbi, genes, cache):
    body = {"error": "API rate limit exceeded", "api-key": "127.0.0.1", "count": "4", "limit": "3"}
    ncbi.inject(
        Fault("status", 429, headers={"Retry-After": "1"}, body=body),
        Fault("status", 500, body=b"<html>Internal Server Error</html>"),
        Fault("delay", delay=1.2),
    )
    t0 = time.monotonic()
    df = gene_texts(
        ["TP53"], source="ncbi", ncbi_url=ncbi.url, cache_dir=cache, backoff=0.01, timeout=0.5
    )
    assert time.monotonic() - t0 >= 1.0  # Retry-After honoured
    assert df["text"][0] == expected_ncbi(genes, "TP53")
    assert len(ncbi.requests) == 5  # 3 failed tries + esearch + esummary


def test_ncbi_malformed_json(ncbi, cache):
    ncbi.inject(Fault("malformed"))
    with pytest.raises(MalformedResponseError, match=r"NCBI E-utilities.*not valid JSON"):
        gene_texts(["TP53"], source="ncbi", ncbi_url=ncbi.url, cache_dir=cache, **FAST)


def test_ncbi_offline_fails_fast(cache):
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="cannot reach"):
        gene_texts(["TP53"], source="ncbi", ncbi_url=closed_url(), cache_dir=cache, fallback=None)
    assert time.monotonic() - t0 < 1.5


def test_ncbi_offline_falls_back_to_hgnc_names(genes, cache):
    # TP53 was fetched while NCBI answered (cached); then NCBI goes away: the rest get HGNC names
    with NcbiServer(genes) as server:
        url = server.url
        gene_texts(["TP53"], source="ncbi", ncbi_url=url, cache_dir=cache, **FAST)
    t0 = time.monotonic()
    with pytest.warns(UserWarning, match=r"NCBI cannot be reached .* 2 genes .* HGNC name"):
        df = gene_texts(
            ["TP53", "CD3E", "ENSG00000010610", "NOT_A_GENE_X"],
            source="ncbi",
            ncbi_url=url,
            cache_dir=cache,
        )
    assert time.monotonic() - t0 < 1.5
    assert df["source"].to_list() == ["ncbi_summary", "hgnc_name", "hgnc_name", "missing"]
    assert df["text"].to_list()[1:] == [
        "CD3E: CD3 epsilon subunit of T-cell receptor complex",
        "CD4: CD4 molecule",
        None,
    ]
    assert df["text"][0] == expected_ncbi(genes, "TP53")
    with pytest.raises(GeneptError, match="fallback must be"):
        gene_texts(["TP53"], source="ncbi", fallback="symbol")


def test_ncbi_kill_and_resume(ncbi, genes, cache):
    symbols = (
        genes.filter(pl.col("summary").is_not_null())["symbol"]
        .unique(maintain_order=True)[:20]
        .to_list()
    )
    opts = {
        "source": "ncbi",
        "ncbi_url": ncbi.url,
        "cache_dir": cache,
        "batch_size": 5,
        "api_key": "k",
        "max_retries": 0,
        "backoff": 0.01,
    }
    # each batch is esearch + esummary; request 5 (batch 3's esearch) and after fail: a crash
    ncbi.fail_from = 5
    with pytest.raises(ServiceError, match="HTTP 500"):
        gene_texts(symbols, **opts)
    assert esearch_symbols(ncbi) == symbols[:15]
    ncbi.reset()
    df = gene_texts(symbols, **opts)
    # only the genes without a cached answer were asked for, each exactly once
    assert esearch_symbols(ncbi) == symbols[10:]
    assert len(ncbi.requests) == 4
    assert df["text"].to_list() == [expected_ncbi(genes, s) for s in symbols]
    # and the result equals an uncached run
    ncbi.reset()
    fresh = gene_texts(symbols, **{**opts, "cache_dir": False})
    assert fresh["text"].to_list() == df["text"].to_list()


def test_ncbi_torn_cache_line_is_ignored(ncbi, cache):
    # Texts are cached in SQLite transactions now; the JSON-lines file of earlier versions is
    # read on first use, and a torn last line in it (a crash mid-write) is skipped.
    fresh = gene_texts(["TP53", "CD4"], source="ncbi", ncbi_url=ncbi.url, cache_dir=False, **FAST)
    params = {
        "source": "ncbi",
        "backend": "eutils",
        "url": ncbi.url,
        "species": "human",
        "template": "{full_name}. {summary}",
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]
    (cache / "text").mkdir(parents=True)
    lines = [
        json.dumps({"key": g, "text": t, "source": s, "fetched_at": w.isoformat()}) + "\n"
        for g, t, s, w in fresh.select("gene", "text", "source", "fetched_at").iter_rows()
    ]
    jsonl = cache / "text" / f"ncbi-{digest}.jsonl"
    jsonl.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # crash mid-write
    ncbi.reset()
    with pytest.warns(UserWarning, match="read 1 cached gene texts"):
        df = gene_texts(["TP53", "CD4"], source="ncbi", ncbi_url=ncbi.url, cache_dir=cache, **FAST)
    assert (df["source"] == "ncbi_summary").all()
    assert len(esearch_symbols(ncbi)) == 1
    assert jsonl.exists()  # read, not deleted


# -- MyGene ---------------------------------------------------------------------------------------


def test_ncbi_via_mygene(mygene, genes, cache):
    queries = ["TP53", "A2MP1", "NOT_A_GENE_X", "7157"]
    df = gene_texts(
        queries, source="ncbi", backend="mygene", mygene_url=mygene.url, cache_dir=cache
    )
    check_frame(df, queries)
    assert df["text"].to_list() == [
        expected_ncbi(genes, "TP53"),
        "alpha-2-macroglobulin pseudogene 1",
        None,
        expected_ncbi(genes, "TP53"),
    ]
    assert df["source"].to_list() == ["ncbi_summary", "ncbi_full_name", "missing", "ncbi_summary"]
    assert len(mygene.requests) == 1
    assert mygene.requests[0].form["fields"] == ["symbol,name,summary"]


# -- LLM ------------------------------------------------------------------------------------------


def test_llm_source(chat, genes, cache):
    queries = ["TP53", "CD4", "TP53"]
    df = gene_texts(queries, source="llm", model="gene-chat", base_url=chat.url, cache_dir=cache)
    check_frame(df, queries)
    assert df["source"].to_list() == ["llm:gene-chat"] * 3
    assert df["text"][0].startswith("TP53 encodes tumor protein p53.")
    assert record(genes, "CD4")["full_name"] in df["text"][1]
    assert sorted(chat.prompts()) == ["Tell me about gene CD4", "Tell me about gene TP53"]
    chat.reset()
    gene_texts(queries, source="llm", model="gene-chat", base_url=chat.url, cache_dir=cache)
    assert chat.requests == []  # cached


def test_llm_custom_prompt_and_retry_after(chat, cache):
    chat.inject(
        Fault(
            "status",
            429,
            headers={"Retry-After": "1"},
            body={
                "error": {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
        ),
        Fault("status", 500, body={"error": {"message": "server error", "type": "server_error"}}),
    )
    t0 = time.monotonic()
    df = gene_texts(
        ["MYC"],
        source="llm",
        model="gene-chat",
        base_url=chat.url,
        cache_dir=cache,
        prompt="Describe the human gene {gene} in one paragraph.",
        max_retries=3,
        max_workers=1,
    )
    assert time.monotonic() - t0 >= 0.9
    assert df["source"][0] == "llm:gene-chat"
    assert chat.prompts()[-1] == "Describe the human gene MYC in one paragraph."
    assert len(chat.requests) == 3


def test_llm_errors_are_clear_and_hide_the_key(chat, cache, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-42")
    with pytest.raises(ServiceError, match="answered 401") as err:
        gene_texts(["TP53"], source="llm", model="gene-chat", base_url=chat.url, cache_dir=cache)
    assert "sk-wrong-key-42" not in str(err.value)
    monkeypatch.setenv("OPENAI_API_KEY", chat.api_key)
    with pytest.raises(ServiceError, match=r"answered 404.*does not exist"):
        gene_texts(["TP53"], source="llm", model="gpt-nope", base_url=chat.url, cache_dir=cache)
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(GeneptError, match="OPENAI_API_KEY"):
        gene_texts(["TP53"], source="llm", cache_dir=cache)


def test_llm_timeout(chat, cache):
    chat.inject(Fault("delay", delay=1.5))
    with pytest.raises(ServiceError, match=r"did not answer within 0\.3 s"):
        gene_texts(
            ["TP53"],
            source="llm",
            model="gene-chat",
            base_url=chat.url,
            cache_dir=cache,
            timeout=0.3,
            max_retries=0,
        )


def test_llm_offline_fails_fast(cache):
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="cannot reach"):
        gene_texts(
            ["TP53"],
            source="llm",
            model="m",
            base_url=closed_url() + "/v1",
            api_key="x",
            cache_dir=cache,
            max_retries=0,
        )
    assert time.monotonic() - t0 < 2.0


# -- parquet I/O and the CLI ----------------------------------------------------------------------


def test_write_read_texts(tmp_path):
    df = gene_texts(["TP53", "NOPE_X"], source="symbol", species="human")
    out = write_texts(df, tmp_path / "sub" / "texts.parquet", metadata={"k": "v"})
    assert [p.name for p in out.parent.iterdir()] == ["texts.parquet"]  # no temp file left
    back = read_texts(out)
    assert back.equals(df)
    with pytest.raises(GeneptError, match="missing column"):
        write_texts(df.drop("source"), tmp_path / "x.parquet")
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "other.parquet")
    with pytest.raises(GeneptError, match="not a gene text table"):
        read_texts(tmp_path / "other.parquet")


def test_cli_gene_text(tmp_path, ncbi, capsys):
    out = tmp_path / "t.parquet"
    rc = main(
        [
            "gene-text",
            "TP53,CD4,NOT_A_GENE_X",
            "--source",
            "ncbi",
            "--ncbi-url",
            ncbi.url,
            "--cache-dir",
            str(tmp_path / "c"),
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    df = read_texts(out)
    assert df["source"].to_list() == ["ncbi_summary", "ncbi_summary", "missing"]
    printed = capsys.readouterr().out
    assert "ncbi_summary" in printed and "missing: NOT_A_GENE_X" in printed
    # genes from a text file and from an .h5ad
    listing = tmp_path / "genes.txt"
    listing.write_text("# genes\nTP53\n\nCD4\n")
    again = ["--source", "symbol", "-q", "-o", str(out), "--overwrite"]  # out exists (issue #9)
    assert main(["gene-text", str(listing), *again]) == 0
    assert read_texts(out)["text"].to_list() == ["TP53", "CD4"]
    adata = anndata.AnnData(np.zeros((2, 3), dtype=np.float32))
    adata.var_names = ["ENSG00000141510.18", "ENSG00000010610", "ENSG00000000000"]
    adata.write_h5ad(tmp_path / "d.h5ad")
    assert main(["gene-text", str(tmp_path / "d.h5ad"), *again]) == 0
    assert read_texts(out)["text"].to_list() == ["TP53", "CD4", None]


def test_cli_offline_falls_back_or_fails(tmp_path, capsys):
    args = ["gene-text", "TP53", "--ncbi-url", closed_url(), "--no-cache", "-q", "-o"]
    assert main([*args, str(tmp_path / "t.parquet")]) == 0
    assert "NCBI cannot be reached" in capsys.readouterr().err
    df = read_texts(tmp_path / "t.parquet")
    assert df["text"].to_list() == ["TP53: tumor protein p53"]
    assert df["source"].to_list() == ["hgnc_name"]
    rc = main([*args[:-1], "--no-fallback", "-o", str(tmp_path / "u.parquet")])
    assert rc == 3  # a service that cannot be reached
    assert "cannot reach" in capsys.readouterr().err
    assert not (tmp_path / "u.parquet").exists()


def test_hgnc_source_offline(tmp_path):
    queries = ["CD3E", "ENSG00000010610.10", "FAM172A", "cd8a", "916", "Cd4", "NOTAGENE", ""]
    df = gene_texts(queries, source="hgnc")
    check_frame(df, queries)
    assert df["text"].to_list() == [
        "CD3E: CD3 epsilon subunit of T-cell receptor complex",
        "CD4: CD4 molecule",
        "ARB2A: ARB2 cotranscriptional regulator A",
        "CD8A: CD8 subunit alpha",
        "CD3E: CD3 epsilon subunit of T-cell receptor complex",  # Entrez ID
        "CD4: CD4 molecule",  # species="human": another case of a human symbol
        None,
        None,
    ]
    assert df["source"].to_list()[:6] == ["hgnc_name"] * 6
    assert df["source"][6] == "missing"
    mouse = gene_texts(["Cd4", "Bex2", "Foo1"], source="hgnc", species="mouse", to_human=True)
    assert mouse["text"].to_list()[:2] == ["CD4: CD4 molecule", "BEX2: brain expressed X-linked 2"]
    assert mouse["text"][2] is None
    out = tmp_path / "h.parquet"
    assert main(["gene-text", "CD3E,TP53", "--source", "hgnc", "-q", "-o", str(out)]) == 0
    assert read_texts(out)["source"].to_list() == ["hgnc_name", "hgnc_name"]
    assert main(["gene-text", "TP53", "--source", "file", "-o", str(tmp_path / "x.parquet")]) == 2
