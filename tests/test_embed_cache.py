"""The content-addressed embedding cache, and a kill-and-resume run of a real job."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from genept_fast import GeneptError
from genept_fast.embed import EmbeddingCache, default_cache_dir, get_embedder
from genept_fast.embed.cache import text_key
from genept_fast.table import GeneEmbeddings
from servers.openai_api import OpenAIEmbeddingServer, vector_for

ROOT = Path(__file__).resolve().parents[1]
SMALL = "text-embedding-3-small"
KEY = "sk-resume-SECRET-0123456789abcdef"


def test_put_get_roundtrip_and_namespaces(tmp_path):
    cache = EmbeddingCache(tmp_path)
    keys = [text_key(t) for t in ("a", "b", "c")]
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put("ns1", keys, vecs)
    got = cache.get("ns1", [*keys, text_key("zz")])
    assert set(got) == set(keys)
    for k, v in zip(keys, vecs, strict=True):
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == np.float32
    assert cache.get("ns2", keys) == {}
    assert cache.count() == 3
    assert cache.count("ns1") == 3
    assert cache.namespaces() == ["ns1"]
    assert cache.contains("ns1", ["b", "q"]) == [True, False]
    cache.close()
    # persisted: a new instance (another process would do the same) sees it
    again = EmbeddingCache(tmp_path)
    assert again.count("ns1") == 3
    with pytest.raises(GeneptError, match="3 keys but vectors"):
        again.put("ns1", keys, vecs[:2])


def test_key_is_sha256_of_text():
    assert text_key("BRCA1") == hashlib.sha256(b"BRCA1").digest()
    assert text_key("naïve") == hashlib.sha256("naïve".encode()).digest()


def test_many_keys_span_query_chunks(tmp_path):
    cache = EmbeddingCache(tmp_path)
    texts = [f"t{i}" for i in range(1234)]
    vecs = np.random.default_rng(0).standard_normal((1234, 3)).astype(np.float32)
    cache.put("ns", [text_key(t) for t in texts], vecs)
    got = cache.get("ns", [text_key(t) for t in texts])
    assert len(got) == 1234
    np.testing.assert_array_equal(got[text_key("t1000")], vecs[1000])


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("GENEPT_FAST_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    # one folder for texts and embeddings now (it was .../genept-fast/embeddings here)
    assert default_cache_dir() == Path("~/.cache/genept-fast").expanduser()
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "env2"))
    emb = get_embedder("local")
    assert emb.cache is not None
    assert emb.cache.path.parent == tmp_path / "env2"
    assert get_embedder("local", use_cache=False).cache is None


def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GeneptError, match="cannot create the cache directory"):
        EmbeddingCache(blocker / "sub")


_DRIVER = textwrap.dedent(
    """
    import argparse, sys
    from genept_fast.commands import embed_genes
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    embed_genes.register(sub)
    args = parser.parse_args(sys.argv[1:])
    sys.exit(args.func(args))
    """
)


def _run_job(texts_path, out, cache_dir, url, **popen):
    argv = [
        sys.executable,
        "-c",
        _DRIVER,
        "embed-genes",
        str(texts_path),
        "--embedder",
        f"openai:{SMALL}",
        "--base-url",
        url,
        "--cache-dir",
        str(cache_dir),
        "--batch-size",
        "4",
        "--max-concurrency",
        "1",
        "--max-retries",
        "0",
        "--no-progress",
        "-o",
        str(out),
    ]
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT / "python")}
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, **popen
    )


def _wait_for(cond, timeout=30.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


def test_kill_and_resume_loses_nothing_and_sends_nothing_twice(tmp_path):
    n = 22
    genes = [f"GENE{i}" for i in range(n)]
    texts = [f"summary of gene number {i}, a kinase" for i in range(n)]
    texts_path = tmp_path / "texts.parquet"
    pl.DataFrame({"gene": genes, "text": texts}).write_parquet(texts_path)
    cache_dir = tmp_path / "cache"
    out = tmp_path / "genes.parquet"
    namespace = f"openai-compatible@{{}}|{SMALL}|dim=native"

    with OpenAIEmbeddingServer(api_key=KEY) as server:
        ns = namespace.format(server.url.removeprefix("http://"))
        server.block_after(3)  # answer 3 requests (12 texts), then hang
        proc = _run_job(texts_path, out, cache_dir, server.url)
        try:
            assert _wait_for(lambda: len(server.requests) >= 4), "job never reached request 4"
            cache = EmbeddingCache(cache_dir)
            assert _wait_for(lambda: cache.count(ns) == 12), cache.count(ns)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert not out.exists()
        first = server.requests
        answered_first = [t for r in first if r.answered for t in r.inputs]
        assert sorted(answered_first) == sorted(texts[:12])
        assert cache.count(ns) == 12  # every answered batch survived the kill

        server.block_after(10**9)
        server.release()  # let the hung handler finish (its client is gone)
        proc2 = _run_job(texts_path, out, cache_dir, server.url)
        stdout, stderr = proc2.communicate(timeout=60)
        assert proc2.returncode == 0, stderr.decode()
        second = server.requests[len(first) :]
        sent_again = [t for r in second for t in r.inputs]
        assert not set(sent_again) & set(answered_first), "a cached text was sent again"
        assert sorted(sent_again) == sorted(texts[12:])
        answered = server.sent_counts(answered_only=True)
        assert answered == dict.fromkeys(texts, 1)  # each text billed exactly once
        assert KEY.encode() not in stderr and KEY.encode() not in stdout

    table = GeneEmbeddings.read(out)
    assert table.genes == genes
    for t, row in zip(texts, table.matrix, strict=True):
        np.testing.assert_array_equal(row, vector_for(t, SMALL, 1536))
    for f in cache_dir.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes()


def test_cache_layout_new_and_first(tmp_path):
    new = EmbeddingCache(tmp_path / "new")
    keys = [text_key(t) for t in ("a", "b")]
    new.put("ns", keys, np.ones((2, 4), dtype=np.float32))
    with sqlite3.connect(new.path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 8192
        (ddl,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'embeddings'").fetchone()
    assert "UNIQUE" in ddl and "WITHOUT ROWID" not in ddl
    new.put("ns", keys[:1], np.full((1, 4), 2.0, dtype=np.float32))  # replaced, not duplicated
    assert new.count("ns") == 2
    assert np.array_equal(new.get("ns", keys)[keys[0]], np.full(4, 2.0, dtype=np.float32))
    new.close()

    # a database made by the first layout keeps working as it is
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    with sqlite3.connect(old_dir / "embeddings.sqlite") as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE embeddings (ns TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER NOT NULL,"
            " vec BLOB NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO embeddings VALUES (?, ?, ?, ?)",
            ("ns", keys[0], 4, np.arange(4, dtype="<f4").tobytes()),
        )
    old = EmbeddingCache(old_dir)
    assert np.array_equal(old.get("ns", keys)[keys[0]], np.arange(4, dtype=np.float32))
    old.put("ns", keys, np.full((2, 4), 3.0, dtype=np.float32))  # zeros are never stored now
    assert old.count("ns") == 2
    assert np.array_equal(old.get("ns", keys)[keys[0]], np.full(4, 3.0, dtype=np.float32))
    old.close()


class _FailingCache(EmbeddingCache):
    """A real cache whose ``fail_at``-th write fails as a full disk would."""

    def __init__(self, directory, fail_at):
        super().__init__(directory)
        self.fail_at, self.writes = fail_at, 0

    def put(self, namespace, keys, vectors):
        self.writes += 1
        if self.writes == self.fail_at:
            raise sqlite3.OperationalError("database or disk is full")
        super().put(namespace, keys, vectors)


def test_every_batch_is_stored_before_embed_returns(tmp_path):
    texts = [f"gene {i}" for i in range(40)]
    with OpenAIEmbeddingServer() as server:
        emb = get_embedder(f"openai:{SMALL}", base_url=server.url, cache_dir=tmp_path, batch_size=3)
        out = emb.embed(texts)
        keys = [text_key(t) for t in texts]
        got = emb.cache.get(emb.cache_namespace, keys)
        assert len(got) == len(texts)  # written by the writer thread, all there on return
        for k, row in zip(keys, out, strict=True):
            np.testing.assert_array_equal(got[k], row)
        assert not [t for t in threading.enumerate() if "cache-writer" in t.name]


def test_a_failed_cache_write_is_raised_and_nothing_after_it_is_stored(tmp_path):
    texts = [f"gene {i}" for i in range(30)]
    with OpenAIEmbeddingServer() as server:
        emb = get_embedder(
            f"openai:{SMALL}",
            base_url=server.url,
            use_cache=False,
            batch_size=2,
            max_concurrency=1,
        )
        emb.cache = _FailingCache(tmp_path, fail_at=3)
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            emb.embed(texts)
        stored = emb.cache.get(emb.cache_namespace, [text_key(t) for t in texts])
        assert set(stored) == {text_key(t) for t in texts[:4]}  # the two batches before it
        assert len(server.requests) < len(texts) // 2  # it stopped sending
