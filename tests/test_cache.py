"""One cache folder and one SQLite database for gene texts and embeddings; the caches of earlier
versions are read, never deleted."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

from genept_fast.cache import DB_NAME, Cache, default_cache_dir, text_key, text_namespace
from genept_fast.embed import get_embedder
from genept_fast.text import default_cache_dir as text_cache_dir


def test_one_folder_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("GENEPT_FAST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "genept-fast"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path("~/.cache/genept-fast").expanduser()
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == text_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    emb = get_embedder("openai:text-embedding-3-small", api_key="k")
    assert emb.cache is not None and emb.cache.path == tmp_path / "env" / DB_NAME
    assert emb.batch_state_dir == tmp_path / "env" / "batches"  # type: ignore[attr-defined]


def test_texts_and_embeddings_share_one_database(tmp_path):
    cache = Cache(tmp_path)
    ns = text_namespace({"source": "ncbi", "url": "u"})
    when = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    cache.put_texts(ns, [("TP53", "tumor protein p53", "ncbi_summary"), ("X1", None, "missing")])
    cache.put_texts(ns, [("CD4", "CD4 molecule", "ncbi_full_name")], when=when)
    cache.put("emb", [text_key("a")], np.ones((1, 3), dtype=np.float32))
    cache.close()
    again = Cache(tmp_path)
    got = again.get_texts(ns)
    assert set(got) == {"TP53", "X1", "CD4"}
    assert got["X1"][:2] == (None, "missing")  # "no answer" is remembered too
    assert got["CD4"] == ("CD4 molecule", "ncbi_full_name", when)
    assert again.get_texts(text_namespace({"source": "llm"})) == {}
    assert again.count("emb") == 1
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"embeddings", "texts"} <= tables
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(DB_NAME)) == []


def test_legacy_text_file_is_read_once_and_kept(tmp_path):
    """A JSON-lines file of earlier versions (gene_texts reads it on first use; the torn-line
    case runs against the NCBI server in test_gene_text.py)."""
    cache = Cache(tmp_path)
    ns = text_namespace({"source": "llm", "model": "m"})
    old, new = "2024-01-02T03:04:05+00:00", "2025-06-07T08:09:10+00:00"
    cache.put_texts(ns, [("TP53", "newer TP53", "llm:m")], when=dt.datetime.fromisoformat(new))
    path = tmp_path / "text" / "llm-0123.jsonl"
    path.parent.mkdir()
    records = [
        {"key": "TP53", "text": "older TP53", "source": "llm:m", "fetched_at": old},
        {"key": "CD4", "text": "CD4 text", "source": "llm:m", "fetched_at": old},
        {"key": "NOPE1", "text": None, "source": "missing", "fetched_at": old},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"read 3 cached gene texts from .*may be deleted"):
        assert cache.import_text_file(ns, path) == 3
    got = cache.get_texts(ns)
    assert got["TP53"][0] == "newer TP53"  # the later answer wins
    assert got["CD4"] == ("CD4 text", "llm:m", dt.datetime.fromisoformat(old))
    assert got["NOPE1"][:2] == (None, "missing")
    assert path.exists()  # never deleted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.import_text_file(ns, path) == 0  # read once
    with path.open("a") as fh:  # an earlier version appended more: read again
        fh.write(json.dumps({**records[1], "key": "CD8A"}) + "\n")
    with pytest.warns(UserWarning, match="read 4 cached"):
        assert cache.import_text_file(ns, path) == 4
    assert "CD8A" in cache.get_texts(ns)


def test_legacy_default_embedding_cache_is_copied_and_kept(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GENEPT_FAST_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    legacy = home / ".cache" / "genept-fast" / "embeddings"
    legacy.mkdir(parents=True)
    with sqlite3.connect(legacy / DB_NAME) as conn:  # the first layout
        conn.execute(
            "CREATE TABLE embeddings (ns TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER NOT NULL,"
            " vec BLOB NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO embeddings VALUES (?, ?, ?, ?)",
            ("openai|m|dim=native", text_key("paid for"), 3, np.arange(3, dtype="<f4").tobytes()),
        )
    (legacy / "batches").mkdir()
    (legacy / "batches" / "job-abc.json").write_text('{"version": 1}')
    with pytest.warns(UserWarning, match=r"copied 1 cached embeddings and 1 Batch API job"):
        cache = Cache()
    assert cache.directory == home / ".cache" / "genept-fast"
    got = cache.get("openai|m|dim=native", [text_key("paid for")])
    np.testing.assert_array_equal(got[text_key("paid for")], np.arange(3, dtype=np.float32))
    assert (cache.directory / "batches" / "job-abc.json").exists()
    assert (legacy / DB_NAME).exists() and (legacy / "batches" / "job-abc.json").exists()
    cache.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Cache().count() == 1  # copied once
