"""No zero or non-finite vector is ever stored, and cached rows are verified (issue 20, item 4).

Every server case runs against the real loopback OpenAI-compatible server
(:mod:`servers.openai_api`), whose vector faults answer 200 with well-formed JSON.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from genept_fast.cache import row_checksum
from genept_fast.embed import EmbeddingCache
from genept_fast.embed.base import Embedder
from genept_fast.embed.cache import text_key
from genept_fast.embed.openai_api import OpenAIEmbedder
from genept_fast.errors import InputError, MalformedResponseError
from servers.openai_api import OpenAIEmbeddingServer, vector_for

ROOT = Path(__file__).resolve().parents[1]
SMALL = "text-embedding-3-small"
POLL = 0.02
SECRET_TEXT = "unpublished finding: GENE7 drives relapse"


@pytest.fixture
def server():
    with OpenAIEmbeddingServer(batch_polls=2) as s:
        yield s


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def make(server, tmp_path, **kw):
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout", 5.0)
    cache = EmbeddingCache(kw.pop("cache_dir", tmp_path / "cache"))
    return OpenAIEmbedder(kw.pop("model", SMALL), base_url=server.url, cache=cache, **kw)


def rows(cache_dir: Path) -> int:
    with sqlite3.connect(cache_dir / "embeddings.sqlite") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])


# -- vectors from a server ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["float", "base64"])
@pytest.mark.parametrize("kind", ["zero", "nan", "inf", "overflow"])
def test_a_spoilt_vector_is_retried_and_never_stored(server, tmp_path, kind, fmt):
    texts = ["BRCA1 repairs DNA", "insulin", "CD4 molecule"]
    server.add_fault(kind, rows=1)  # one answer whose first vector is spoilt, then good ones
    emb = make(server, tmp_path, encoding_format=fmt, dimensions=16)
    out = emb.embed(texts)
    for t, row in zip(texts, out, strict=True):
        np.testing.assert_array_equal(row, vector_for(t, SMALL, 16))
    assert [r.status for r in server.requests] == [200, 200]  # the spoilt answer was retried
    server.add_fault(kind, times=10)
    with pytest.raises(MalformedResponseError, match="malformed response") as info:
        emb1 = make(server, tmp_path, encoding_format=fmt, dimensions=16, max_retries=1)
        emb1.embed(["TP53", "MYC"])
    assert len(server.requests) == 2 + 2  # max_retries=1: two answers, both spoilt
    why = "all zeros" if kind == "zero" else ("not JSON" if fmt == "float" else "NaN or infinity")
    if kind == "overflow" and fmt == "float":
        why = "NaN or infinity"  # 1e+39 is valid JSON, past float32's range
    assert why in str(info.value)
    cache = EmbeddingCache(tmp_path / "cache")
    assert cache.count() == 3  # only the first call's good vectors
    assert cache.contains(emb.cache_namespace, ["TP53", "MYC"]) == [False, False]


def test_all_zero_vectors_make_the_cli_exit_3_with_nothing_written(server, tmp_path, capsys):
    from genept_fast.cli import main

    texts = pl.DataFrame({"gene": ["TP53", "CD4", "G0"], "text": ["tumor p53", "CD4 mol", ""]})
    texts.write_parquet(tmp_path / "t.parquet")
    server.add_fault("zero", times=100)
    argv = ["embed-genes", str(tmp_path / "t.parquet"), "--embedder", f"openai:{SMALL}"]
    argv += ["--base-url", server.url, "--max-retries", "1", "--cache-dir", str(tmp_path / "c")]
    argv += ["--no-progress", "-o", str(tmp_path / "out.parquet")]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "malformed response" in err and "2 of 2 embeddings are all zeros" in err
    assert "0 without text" not in err and "Traceback" not in err
    assert not (tmp_path / "out.parquet").exists()
    assert rows(tmp_path / "c") == 0


def test_zero_dimensional_vectors_are_a_malformed_response(tmp_path, capsys):
    from genept_fast.cli import main

    with OpenAIEmbeddingServer(default_dimension=0) as server:
        emb = make(server, tmp_path, model="nomic-embed-text")  # dimension unknown until asked
        with pytest.raises(MalformedResponseError, match="dimension 0"):
            emb.embed(["a", "b"])
        assert emb.dimension is None
        server.add_fault("zero_dim", times=10)  # a known model, base64 and float alike
        for fmt in ("base64", "float"):
            with pytest.raises(MalformedResponseError, match="dimension 0, expected 1536"):
                make(server, tmp_path, encoding_format=fmt).embed(["c"])
        texts = pl.DataFrame({"gene": ["TP53", "CD4"], "text": ["tumor p53", "CD4 mol"]})
        texts.write_parquet(tmp_path / "t.parquet")
        argv = ["embed-genes", str(tmp_path / "t.parquet"), "--embedder"]
        argv += ["openai:nomic-embed-text", "--base-url", server.url, "--no-progress"]
        argv += ["--cache-dir", str(tmp_path / "c"), "-o", str(tmp_path / "out.parquet")]
        assert main(argv) == 3  # was exit 2, "no gene has a text"
    err = capsys.readouterr().err
    assert "dimension 0" in err and "no gene has a text" not in err
    assert rows(tmp_path / "c") == 0 and rows(tmp_path / "cache") == 0


@pytest.mark.parametrize("kind", ["strings", "bools"])
def test_numbers_sent_as_strings_or_booleans_are_a_malformed_response(server, tmp_path, kind):
    # numpy would read "0.1" and true as numbers; the JSON must hold numbers
    server.add_fault(kind, times=10)
    emb = make(server, tmp_path, model="nomic-embed-text", encoding_format="float")
    with pytest.raises(MalformedResponseError, match="not a flat list of numbers"):
        emb.embed(["a", "b"])
    assert EmbeddingCache(tmp_path / "cache").count() == 0


def test_dimensions_that_differ_in_one_answer_or_from_the_request(server, tmp_path):
    server.add_fault("ragged", rows=1)
    with pytest.raises(MalformedResponseError, match="dimension 64, 65"):
        make(server, tmp_path, model="nomic-embed-text").embed(["a", "b"])
    server.add_fault("wrong_dim")
    with pytest.raises(MalformedResponseError, match=r"dimension 17, expected 16"):
        make(server, tmp_path, model="nomic-embed-text", dimensions=16).embed(["c"])
    # dimension unknown: the first answer sets it, a later one that differs is the server's fault
    emb = make(server, tmp_path, model="nomic-embed-text", batch_size=1, max_concurrency=1)
    server.add_fault("500")  # (consumed by the first request, retried)
    emb.embed(["d"])
    server.add_fault("wrong_dim")
    with pytest.raises(MalformedResponseError, match="dimension 65, expected 64"):
        emb.embed(["e"])
    assert EmbeddingCache(tmp_path / "cache").count() == 1  # "d" only


def test_batch_api_results_with_zero_vectors_are_retried_then_refused(server, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="genept_fast.embed.batch")
    texts = [f"gene {i} regulates the cell cycle" for i in range(6)]
    kw = {"use_batch": True, "batch_poll_interval": POLL, "batch_max_wait": 30.0}
    server.corrupt_batch_requests("zero", 1, rows=1)  # one request of the batch: one zero vector
    out = make(server, tmp_path, batch_size=2, **kw).embed(texts)
    for t, row in zip(texts, out, strict=True):
        np.testing.assert_array_equal(row, vector_for(t, SMALL, 1536))
    assert [r.inputs for r in server.requests] == [texts[:2]]  # retried synchronously, once
    assert "all zeros" in caplog.text
    # a batch result and every synchronous retry spoilt: an error, and nothing spoilt stored
    server.corrupt_batch_requests("nan", 1)
    server.add_fault("nan", times=10)
    emb = make(server, tmp_path, batch_size=2, encoding_format="base64", **kw)
    with pytest.raises(MalformedResponseError, match="NaN or infinity"):
        emb.embed(["TP53 guards the genome", "MYC drives growth"])
    cache = EmbeddingCache(tmp_path / "cache")
    assert cache.count() == 6
    assert cache.contains(emb.cache_namespace, ["TP53 guards the genome"]) == [False]


# -- every embedder: the base class refuses such vectors ---------------------------------------


class _FixedEmbedder(Embedder):
    """An embedder (as a plug-in would write one) that answers the vectors it was given."""

    model_id = "fixed:test"
    dimension = None
    max_input_tokens = 100

    def __init__(self, vectors: np.ndarray, cache: EmbeddingCache | None) -> None:
        super().__init__(cache=cache)
        self.vectors = vectors

    @property
    def cache_namespace(self) -> str:
        return "fixed|test"

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    def _plan(self, token_counts):
        return 1, 0.0

    def _embed_uncached(self, texts, sink, *, token_counts):
        sink(range(len(texts)), self.vectors[: len(texts)])


@pytest.mark.parametrize(
    ("vectors", "why"),
    [
        (np.array([[1.0, 2.0], [0.0, -0.0]]), "1 are all zeros"),
        (np.array([[1.0, np.nan], [np.inf, 1.0]]), "2 hold NaN or infinity"),
        (np.array([[1.0, 2.0], [1e39, 1.0]]), "1 hold NaN or infinity"),  # float32 overflow
        (np.zeros((2, 0)), "dimension 0"),
    ],
)
def test_the_base_class_refuses_zero_and_non_finite_vectors(tmp_path, vectors, why):
    cache = EmbeddingCache(tmp_path)
    emb = _FixedEmbedder(vectors, cache)
    with pytest.raises(InputError, match=why):
        emb.embed(["a", "b", ""])
    assert cache.count() == 0
    assert emb.embed([""]).shape == (1, 0)  # an empty text still gets its zero vector


def test_the_cache_never_stores_a_zero_or_non_finite_vector(tmp_path):
    cache = EmbeddingCache(tmp_path)
    keys = [text_key("a"), text_key("b")]
    for bad in ([[1, 2], [0, 0]], [[1, np.nan], [1, 2]], [[np.inf, 1], [1, 2]]):
        with pytest.raises(InputError, match="1 of 2 vectors are all zeros or hold NaN"):
            cache.put("ns", keys, np.array(bad, dtype=np.float32))
    with pytest.raises(InputError, match="dimension 0"):
        cache.put("ns", keys, np.zeros((2, 0), dtype=np.float32))
    assert cache.count() == 0
    cache.put("ns", [], np.zeros((0, 3), dtype=np.float32))  # an empty batch is no error


# -- cached rows are verified ------------------------------------------------------------------


def _spoil_row(path: Path, text: str, sql: str, *args: object) -> None:
    with sqlite3.connect(path) as conn:
        n = conn.execute(sql, (*args, text_key(text))).rowcount
    assert n == 1


@pytest.mark.parametrize(
    "spoil",
    ["zeroed", "bit flip", "another row's vector", "short", "not a multiple of 4", "text"],
)
def test_a_bad_cached_row_is_fetched_again_and_said(server, tmp_path, caplog, spoil):
    texts = [SECRET_TEXT, "insulin", "CD4 molecule"]
    emb = make(server, tmp_path)
    first = emb.embed(texts)
    ns = emb.cache_namespace
    db = tmp_path / "cache" / "embeddings.sqlite"
    vec = vector_for(SECRET_TEXT, SMALL, 1536).astype("<f4").tobytes()
    update = "UPDATE embeddings SET {} WHERE key = ?"
    if spoil == "zeroed":
        _spoil_row(db, SECRET_TEXT, update.format("vec = ?"), bytes(len(vec)))
    elif spoil == "bit flip":
        flipped = bytearray(vec)
        flipped[100] ^= 0x10
        _spoil_row(db, SECRET_TEXT, update.format("vec = ?"), bytes(flipped))
    elif spoil == "another row's vector":
        _spoil_row(
            db,
            SECRET_TEXT,
            update.format("vec = (SELECT vec FROM embeddings WHERE key = ?)"),
            text_key("insulin"),
        )
    elif spoil == "short":
        _spoil_row(db, SECRET_TEXT, update.format("dim = 1535"))
    elif spoil == "not a multiple of 4":
        _spoil_row(db, SECRET_TEXT, update.format("vec = ?"), vec[:-1])
    else:
        _spoil_row(db, SECRET_TEXT, update.format("vec = ?"), "not a vector")
    n_sent = len(server.requests)
    with caplog.at_level(logging.WARNING, logger="genept_fast.cache"):
        again = make(server, tmp_path).embed(texts)
    np.testing.assert_array_equal(again, first)
    assert [r.inputs for r in server.requests[n_sent:]] == [[SECRET_TEXT]]  # only the bad row
    (record,) = [r for r in caplog.records if r.name == "genept_fast.cache"]
    message = record.getMessage()
    assert "1 cached vector(s)" in message and ns in message and "embedded again" in message
    assert SECRET_TEXT not in caplog.text and "GENE7" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genept_fast.cache"):
        make(server, tmp_path).embed(texts)  # the row was replaced: nothing sent, nothing said
    assert len(server.requests) == n_sent + 1
    assert not caplog.records


def test_a_row_copied_into_another_namespace_is_not_served(tmp_path, caplog):
    cache = EmbeddingCache(tmp_path)
    cache.put("model-a", [text_key("x")], np.ones((1, 3), dtype=np.float32))
    with sqlite3.connect(cache.path) as conn:
        conn.execute("INSERT INTO embeddings SELECT 'model-b', key, dim, vec, crc FROM embeddings")
    assert cache.count("model-b") == 1
    with caplog.at_level(logging.WARNING, logger="genept_fast.cache"):
        assert cache.get("model-b", [text_key("x")]) == {}
    assert "1 with a wrong checksum" in caplog.text and "'model-b'" in caplog.text
    assert list(cache.get("model-a", [text_key("x")])) == [text_key("x")]


def test_a_bad_row_is_said_once_per_cache_even_when_estimated_first(server, tmp_path, caplog):
    emb = make(server, tmp_path)
    emb.embed(["a", "b"])
    db = tmp_path / "cache" / "embeddings.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE embeddings SET vec = zeroblob(length(vec))")
    emb = make(server, tmp_path)
    with caplog.at_level(logging.WARNING, logger="genept_fast.cache"):
        assert emb.estimate(["a", "b"]).n_uncached == 2
        emb.embed(["a", "b"])
    (record,) = caplog.records
    assert "2 cached vector(s)" in record.getMessage()
    assert "2 with a wrong checksum" in record.getMessage()


def test_rows_of_caches_without_checksums_are_verified_as_far_as_possible(tmp_path, caplog):
    """A database of the first layout (no ``crc`` column): its good rows are served, its zero,
    non-finite and short rows are not; it gains the column, and new rows carry a checksum."""
    folder = tmp_path / "old"
    folder.mkdir()
    good, zero, nan = np.arange(1, 5, dtype="<f4"), np.zeros(4, "<f4"), np.full(4, np.nan, "<f4")
    with sqlite3.connect(folder / "embeddings.sqlite") as conn:
        conn.execute(
            "CREATE TABLE embeddings (ns TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER NOT NULL,"
            " vec BLOB NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID"
        )
        conn.executemany(
            "INSERT INTO embeddings VALUES ('ns', ?, 4, ?)",
            [
                (text_key("good"), good.tobytes()),
                (text_key("zero"), zero.tobytes()),
                (text_key("nan"), nan.tobytes()),
                (text_key("short"), good[:3].tobytes()),
            ],
        )
    cache = EmbeddingCache(folder)
    keys = [text_key(t) for t in ("good", "zero", "nan", "short")]
    with caplog.at_level(logging.WARNING, logger="genept_fast.cache"):
        got = cache.get("ns", keys)
    assert list(got) == [text_key("good")]
    np.testing.assert_array_equal(got[text_key("good")], good)
    message = caplog.records[0].getMessage()
    assert "3 cached vector(s)" in message
    assert (
        "2 zero or non-finite without a checksum" in message and "1 of the wrong length" in message
    )
    cache.put("ns", keys[1:2], np.ones((1, 4), dtype=np.float32))
    with sqlite3.connect(folder / "embeddings.sqlite") as conn:
        (crc,) = conn.execute("SELECT crc FROM embeddings WHERE key = ?", keys[1:2]).fetchone()
        (old_crc,) = conn.execute("SELECT crc FROM embeddings WHERE key = ?", keys[:1]).fetchone()
    assert crc == row_checksum("ns", keys[1], np.ones(4, "<f4").tobytes())
    assert old_crc is None  # reads never write: a legacy row stays as it was
    assert set(cache.get("ns", keys)) == set(keys[:2])


_OPEN_AND_WRITE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from genept_fast.embed import EmbeddingCache
    from genept_fast.embed.cache import text_key
    cache = EmbeddingCache(sys.argv[1])
    i = int(sys.argv[2])
    keys = [text_key(f"{i}-{j}") for j in range(50)]
    for j in range(0, 50, 5):
        cache.put("ns", keys[j : j + 5], np.full((5, 8), i + 1.0, dtype=np.float32))
    got = cache.get("ns", keys + [text_key("old")])
    assert len(got) == 51, len(got)
    """
)


def test_processes_sharing_an_old_cache_add_the_checksum_column_at_once(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    with sqlite3.connect(folder / "embeddings.sqlite") as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE embeddings (ns TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER NOT NULL,"
            " vec BLOB NOT NULL, UNIQUE (ns, key))"
        )
        conn.execute(
            "INSERT INTO embeddings VALUES ('ns', ?, 8, ?)",
            (text_key("old"), np.ones(8, "<f4").tobytes()),
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AND_WRITE, str(folder), str(i)],
            env=env,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    cache = EmbeddingCache(folder)
    assert cache.count("ns") == 201
    got = cache.get("ns", [text_key(f"{i}-{j}") for i in range(4) for j in range(50)])
    assert len(got) == 200


def test_the_cli_says_when_it_embeds_a_bad_cached_row_again(server, tmp_path):
    from genept_fast.cli import main

    texts = pl.DataFrame({"gene": ["G7", "CD4"], "text": [SECRET_TEXT, "CD4 molecule"]})
    texts.write_parquet(tmp_path / "t.parquet")
    argv = ["embed-genes", str(tmp_path / "t.parquet"), "--embedder", f"openai:{SMALL}"]
    argv += ["--base-url", server.url, "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert main([*argv, "-o", str(tmp_path / "first.parquet")]) == 0
    _spoil_row(
        tmp_path / "c" / "embeddings.sqlite",
        SECRET_TEXT,
        "UPDATE embeddings SET vec = zeroblob(length(vec)) WHERE key = ?",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    done = subprocess.run(
        [sys.executable, "-m", "genept_fast", *argv, "-o", str(tmp_path / "again.parquet")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 cached vector(s)" in done.stderr and "embedded again" in done.stderr
    assert SECRET_TEXT not in done.stderr + done.stdout
    assert server.sent_counts()[SECRET_TEXT] == 2 and server.sent_counts()["CD4 molecule"] == 1
    first = pl.read_parquet(tmp_path / "first.parquet")
    assert first.equals(pl.read_parquet(tmp_path / "again.parquet").select(first.columns))
