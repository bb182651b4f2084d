"""Gene text sources as objects: the protocol, the options each holds, provenance without
secrets, the network clients on their own, and the layer they live in (issue 19, item 8)."""

from __future__ import annotations

import ast
import dataclasses
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import polars as pl
import pytest

import genept_fast
from genept_fast.errors import InputError
from genept_fast.text import (
    SOURCE_TYPES,
    SOURCES,
    TEXT_SCHEMA,
    FileSource,
    HgncSource,
    LlmSource,
    MyGeneSource,
    NcbiSource,
    Source,
    SymbolSource,
    TextSource,
    gene_texts,
    text_source,
)
from genept_fast.text.chat import ChatClient
from genept_fast.text.mygene import MyGeneClient
from genept_fast.text.ncbi import EutilsClient, GeneSummary
from servers.chat import ChatServer
from servers.mygene import MyGeneServer
from servers.ncbi import NcbiServer, load_genes
from test_import_graph import import_graph

if TYPE_CHECKING:
    from genept_fast.text.base import Query, Row

PACKAGE = Path(genept_fast.__file__).parent
FAST = {"backoff": 0.01, "timeout": 5.0}


@pytest.fixture(scope="module")
def genes(shared_data) -> pl.DataFrame:
    return load_genes(shared_data)


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_every_source_is_a_text_source_named_as_registered():
    assert tuple(SOURCE_TYPES) == SOURCES == ("symbol", "hgnc", "ncbi", "llm", "file")
    for name, kind in SOURCE_TYPES.items():
        assert kind.name == name
        assert issubclass(kind, Source)
    sources = [SymbolSource(), HgncSource(), NcbiSource(), MyGeneSource(), LlmSource()]
    sources.append(FileSource(path="texts.csv"))
    for source in sources:
        assert isinstance(source, TextSource)
        assert source.describe()["source"] == source.name


def test_objects_and_gene_texts_give_the_same_table(tmp_path):
    queries = ["CD3E", "ENSG00000010610.10", "cd8a", "NOTAGENE", ""]
    table = tmp_path / "t.csv"
    pl.DataFrame({"gene": ["CD3E", "CD4"], "text": ["T cell", "helper"]}).write_csv(table)
    pairs = [
        (SymbolSource(), {"source": "symbol"}),
        (HgncSource(), {"source": "hgnc"}),
        (FileSource(path=table), {"source": "file", "path": table}),
    ]
    for source, options in pairs:
        got = source.texts(queries)
        assert dict(got.schema) == TEXT_SCHEMA
        assert got.drop("fetched_at").equals(gene_texts(queries, **options).drop("fetched_at"))
    assert FileSource(path=table).texts(queries)["text"].to_list() == [
        "T cell",
        "helper",
        None,
        None,
        None,
    ]


def test_a_new_source_is_a_new_class():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Shout(Source):
        name: ClassVar[str] = "shout"
        suffix: str = "!"

        def rows(self, query: Query) -> list[Row]:
            return [
                (g, f"{k}{self.suffix}" if k else None, self.name if k else "missing", query.when)
                for g, k in zip(query.raw, query.keys, strict=True)
            ]

        def describe(self) -> dict[str, object]:
            return {**super().describe(), "suffix": self.suffix}

    source = Shout.from_options({"suffix": "?", "species": "mouse", "model": "ignored"})
    df = source.texts(["Cd4", "ENSMUSG00000000000", None])
    assert df["text"].to_list() == ["Cd4?", None, None]
    assert df["source"].to_list() == ["shout", "missing", "missing"]
    assert source.describe() == {
        "source": "shout",
        "species": "mouse",
        "to_human": False,
        "suffix": "?",
    }


def test_options_are_checked_where_they_belong():
    with pytest.raises(InputError, match="source must be one of"):
        text_source("wiki")
    with pytest.raises(InputError, match=r"no gene text source takes the option.*colour"):
        text_source("symbol", colour="red")
    with pytest.raises(InputError, match="backend must be 'eutils' or 'mygene', got 'x'"):
        text_source("ncbi", backend="x")
    with pytest.raises(InputError, match="species must be one of"):
        HgncSource(species="fly")
    with pytest.raises(InputError, match="fallback must be"):
        NcbiSource(fallback="symbol")
    with pytest.raises(InputError, match="needs path"):
        FileSource()
    with pytest.raises(InputError, match=r"only field is \{gene\}, got 'Tell me about \{symbol\}'"):
        LlmSource(prompt="Tell me about {symbol}")
    # options of other sources are left alone, as gene_texts and the command line need
    assert text_source("symbol", model="m", path=None) == SymbolSource()


def test_ncbi_backend_picks_the_class_and_its_url():
    eutils = text_source("ncbi", ncbi_url="http://e", mygene_url="http://m")
    mygene = text_source("ncbi", backend="mygene", ncbi_url="http://e", mygene_url="http://m")
    assert type(eutils) is NcbiSource and eutils.describe()["url"] == "http://e"
    assert type(mygene) is MyGeneSource and mygene.describe()["url"] == "http://m"
    assert mygene.describe()["backend"] == "mygene"
    assert NcbiSource().describe() == {
        "source": "ncbi",
        "backend": "eutils",
        "url": "https://eutils.ncbi.nlm.nih.gov/entrez/eutils",
        "species": "human",
        "template": "{full_name}. {summary}",
    }
    assert NcbiSource(species="mouse", to_human=True).describe()["species"] == "human"


def test_llm_cache_namespace_is_that_of_earlier_versions():
    # describe() is the cache namespace: the same keys as before the sources became objects,
    # so texts cached by earlier versions are still found
    source = text_source("llm", model="m", base_url="http://h/v1", temperature=0.0, path="x")
    assert source.describe() == {
        "source": "llm",
        "model": "m",
        "base_url": "http://h/v1",
        "prompt": "Tell me about gene {gene}",
        "system": None,
        "temperature": 0.0,
        "max_tokens": None,
    }


@pytest.mark.parametrize("kind", [NcbiSource, LlmSource])
def test_keys_are_kept_out_of_provenance_and_repr(kind):
    secret = "sk-secret-value-123456"
    source = kind(api_key=secret)
    assert secret not in repr(source)
    assert secret not in str(source.describe())


def test_fallback_warning_names_the_callers_line(genes, tmp_path):
    source = NcbiSource(url=closed_url(), cache_dir=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = source.texts(["TP53"])
        gene_texts(["TP53"], source="ncbi", ncbi_url=closed_url(), cache_dir=False)
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name] * 2
    assert "NCBI cannot be reached" in str(caught[0].message)
    assert df["source"].to_list() == ["hgnc_name"]


# -- the network clients, on their own ------------------------------------------------------------


def test_eutils_client(genes):
    with NcbiServer(genes) as server, EutilsClient(server.url, **FAST) as client:
        got = client.summaries(["TP53", "7157", "BCC7", "NOT_A_GENE_X"], species="human")
    assert set(got) == {"TP53", "7157", "BCC7"}
    assert got["TP53"] == got["7157"] == got["BCC7"]
    assert isinstance(got["TP53"], GeneSummary)
    assert got["TP53"].symbol == "TP53"
    assert got["TP53"].full_name == "tumor protein p53"
    assert "[provided by RefSeq" in got["TP53"].summary  # as NCBI wrote it; sources clean it


def test_mygene_client(genes):
    with MyGeneServer(genes) as server, MyGeneClient(server.url, **FAST) as client:
        got = client.summaries(["TP53", "A2MP1", "NOT_A_GENE_X"], species="human")
    assert set(got) == {"TP53", "A2MP1"}
    assert got["A2MP1"] == GeneSummary("A2MP1", "alpha-2-macroglobulin pseudogene 1", None)
    assert MyGeneClient.max_batch == 1000


def test_chat_client(genes):
    key = "sk-test-secret-0123456789"
    with ChatServer(genes, api_key=key) as server:
        client = ChatClient("gene-chat", api_key=key, base_url=server.url, system="Be brief.")
        try:
            answer = client.ask("Tell me about gene CD4")
        finally:
            client.close()
        assert server.prompts() == ["Tell me about gene CD4"]
    assert answer is not None and "CD4" in answer


def test_chat_client_needs_a_key_or_a_server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        ChatClient("m")


# -- the layers ------------------------------------------------------------------------------------


def test_gene_identity_does_not_import_the_text_layer():
    # gene identity is the layer below gene text: it never imports it
    graph = import_graph()
    for mod, targets in sorted(graph.items()):
        if mod.split(".")[:2] == ["genept_fast", "genes"]:
            bad = {t for t in targets if t.split(".")[:2] == ["genept_fast", "text"]}
            assert not bad, f"{mod} imports {bad}"


def test_clients_use_only_the_public_http_names():
    import genept_fast._http as http

    for path in sorted((PACKAGE / "text").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "genept_fast._http":
                names = {a.name for a in node.names}
                assert names <= set(http.__all__), f"{path.name}: {names - set(http.__all__)}"


def test_the_text_layer_is_a_lazy_attribute_and_genes_holds_no_text():
    import genept_fast.genes
    import genept_fast.text

    assert genept_fast.text is genept_fast.__getattr__("text")
    assert not hasattr(genept_fast.genes, "gene_texts")
    assert genept_fast.text.TEXT_SCHEMA is TEXT_SCHEMA
