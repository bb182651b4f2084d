"""The OpenAI Batch API path against a real loopback server speaking the Batch wire format."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from genept_fast import GeneptError
from genept_fast.embed import batch as batch_mod
from genept_fast.embed import get_embedder
from genept_fast.embed.batch import BatchJobError, pending_jobs
from servers.openai_api import OpenAIEmbeddingServer, count_tokens, vector_for

SMALL = "text-embedding-3-small"
KEY = "sk-test-Zq81TOPSECRETkeyValue42"
POLL = 0.02


@pytest.fixture
def server():
    with OpenAIEmbeddingServer(batch_polls=3) as s:
        yield s


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def make(server, tmp_path, **kw):
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("use_batch", True)
    kw.setdefault("batch_poll_interval", POLL)
    kw.setdefault("batch_max_wait", 30.0)
    model = kw.pop("model", SMALL)
    return get_embedder(f"openai:{model}", base_url=server.url, **kw)


def uploaded_lines(server):
    """The JSONL request lines of every uploaded batch input file, per file."""
    return [
        [json.loads(ln) for ln in server.file_bytes(f["id"]).splitlines()] for f in server.uploads
    ]


def job_files(tmp_path):
    d = tmp_path / "cache" / "batches"
    return sorted(d.glob("job-*.json")) if d.is_dir() else []


TEXTS = [f"gene {i} regulates the cell cycle" for i in range(9)]


@pytest.mark.parametrize(("fmt", "dims"), [("float", None), ("base64", 24)])
def test_batch_matches_the_synchronous_path(server, tmp_path, fmt, dims):
    sync = make(server, tmp_path, use_batch=False, use_cache=False, dimensions=dims)
    expected = sync.embed([*TEXTS, "", TEXTS[0]])
    n_sync = len(server.requests)
    emb = make(server, tmp_path, dimensions=dims, batch_size=4)
    emb.encoding_format = fmt
    out = emb.embed([*TEXTS, "", TEXTS[0]])
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (11, dims or 1536)
    assert not out[9].any()
    assert len(server.requests) == n_sync  # nothing went through /v1/embeddings
    (created,) = server.batches
    assert created["status"] == "completed"
    assert created["endpoint"] == "/v1/embeddings"
    assert created["completion_window"] == "24h"
    assert server.batch_polls_made >= 4  # validating -> in_progress (x2) -> completed
    (upload,) = server.uploads
    assert upload["purpose"] == "batch"
    (lines,) = uploaded_lines(server)
    assert len(lines) == 3  # 9 texts, 4 per request
    assert len({ln["custom_id"] for ln in lines}) == 3
    for ln in lines:
        assert ln["method"] == "POST"
        assert ln["url"] == "/v1/embeddings"
        body = ln["body"]
        assert body["model"] == SMALL
        assert body["encoding_format"] == fmt
        assert body.get("dimensions") == dims
        assert ("dimensions" in body) == (dims is not None)
    assert [t for ln in lines for t in ln["body"]["input"]] == TEXTS
    assert job_files(tmp_path) == []  # the job is done: its state file is gone
    # everything is cached now: a rerun contacts nobody
    again = make(server, tmp_path, dimensions=dims).embed(TEXTS)
    np.testing.assert_array_equal(again, expected[:9])
    assert len(server.batches) == 1


def test_cached_texts_are_never_resubmitted(server, tmp_path):
    make(server, tmp_path, use_batch=False).embed(TEXTS[:3])  # cached by the sync path
    make(server, tmp_path).embed(TEXTS[:6])
    make(server, tmp_path).embed(TEXTS)
    first, second = uploaded_lines(server)
    assert [t for ln in first for t in ln["body"]["input"]] == TEXTS[3:6]
    assert [t for ln in second for t in ln["body"]["input"]] == TEXTS[6:]
    assert set(server.batch_sent_counts().values()) == {1}
    assert len(server.batches) == 2


def test_split_into_several_batches(tmp_path, monkeypatch):
    # The server refuses files over 3 requests or 700 bytes: each batch must respect both.
    with OpenAIEmbeddingServer(
        batch_polls=2, max_batch_requests=3, max_batch_file_bytes=700
    ) as server:
        monkeypatch.setattr(batch_mod, "MAX_REQUESTS_PER_BATCH", 3)
        emb = make(server, tmp_path, batch_size=1)
        out = emb.embed(TEXTS[:7])
        assert [len(x) for x in uploaded_lines(server)] == [3, 3, 1]
        assert all(b["status"] == "completed" for b in server.batches)
        for i, t in enumerate(TEXTS[:7]):
            np.testing.assert_array_equal(out[i], vector_for(t, SMALL, 1536))
        monkeypatch.setattr(batch_mod, "MAX_BATCH_FILE_BYTES", 700)
        more = [f"another longer text about gene number {i} " * 2 for i in range(6)]
        out = make(server, tmp_path, batch_size=1).embed(more)
        sizes = [f["bytes"] for f in server.uploads[3:]]
        assert len(sizes) > 1 and max(sizes) <= 700
        assert sum(len(x) for x in uploaded_lines(server)[3:]) == 6
        np.testing.assert_array_equal(out[5], vector_for(more[5], SMALL, 1536))


_CHILD = """
import sys
from genept_fast.embed import get_embedder
url, cache, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
emb = get_embedder("openai:text-embedding-3-small", base_url=url, cache_dir=cache,
                   use_batch=True, batch_poll_interval=0.02)
emb.embed(texts)
print("finished")
"""


def _submit_then_kill(server, tmp_path, texts):
    """Run a child that submits a batch; kill it (SIGKILL) while it waits on the batch."""
    server.hold_batches()
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, server.url, str(tmp_path / "cache"), *texts],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            files = job_files(tmp_path)
            if files and server.batch_polls_made >= 2:
                state = json.loads(files[0].read_text())
                if all(p["batch_id"] for p in state["parts"]):
                    break
            assert child.poll() is None, child.communicate()
            time.sleep(0.02)
        else:
            pytest.fail("the child never recorded its batch")
    finally:
        child.kill()
        out, _ = child.communicate(timeout=10)
    assert b"finished" not in out
    assert child.returncode != 0


@pytest.mark.parametrize("lost_batch_id", [False, True])
def test_killed_while_waiting_resumes_the_same_batch(tmp_path, monkeypatch, lost_batch_id):
    with OpenAIEmbeddingServer(api_key=KEY, batch_polls=2) as server:
        _submit_then_kill(server, tmp_path, TEXTS)
        (path,) = job_files(tmp_path)
        raw = path.read_bytes()
        assert KEY.encode() not in raw  # the key is never in the state file
        state = json.loads(raw)
        (batch_id,) = [p["batch_id"] for p in state["parts"]]
        assert batch_id == server.batches[0]["id"]
        for t in TEXTS:
            assert t.encode() not in raw  # only hashes of texts
        (pending,) = pending_jobs(tmp_path / "cache" / "batches")
        assert pending["batch_ids"] == [batch_id]
        if lost_batch_id:
            # killed between creating the batch and recording its id: found by its input file
            for p in state["parts"]:
                p["batch_id"] = None
            path.write_text(json.dumps(state))
        assert len(server.batches) == 1 and len(server.uploads) == 1
        server.hold_batches(False)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        out = make(server, tmp_path).embed(TEXTS[::-1])
        assert len(server.batches) == 1, "no second batch was created"
        assert len(server.uploads) == 1, "nothing was uploaded again"
        assert server.requests == []
        for i, t in enumerate(TEXTS[::-1]):
            np.testing.assert_array_equal(out[i], vector_for(t, SMALL, 1536))
        assert job_files(tmp_path) == []


def test_resume_with_other_texts_reuses_the_pending_batch(tmp_path, monkeypatch):
    # A rerun asks for part of the old texts plus new ones: the old batch is adopted for its
    # texts (all of them land in the cache) and only the new texts are submitted.
    with OpenAIEmbeddingServer(api_key=KEY, batch_polls=2) as server:
        _submit_then_kill(server, tmp_path, TEXTS[:5])
        server.hold_batches(False)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        emb = make(server, tmp_path)
        out = emb.embed([*TEXTS[3:5], "brand new text"])
        assert len(server.batches) == 2
        (_, second) = uploaded_lines(server)
        assert [t for ln in second for t in ln["body"]["input"]] == ["brand new text"]
        np.testing.assert_array_equal(out[2], vector_for("brand new text", SMALL, 1536))
        assert emb.cache is not None
        assert all(emb.cache.contains(emb.cache_namespace, TEXTS[:5]))
        assert set(server.batch_sent_counts().values()) == {1}


@pytest.mark.parametrize("outcome", ["failed", "expired", "cancelled"])
def test_a_failed_batch_raises_with_its_id_and_messages(server, tmp_path, outcome):
    server.next_batch_outcome(outcome)
    emb = make(server, tmp_path, batch_size=2)
    with pytest.raises(BatchJobError) as info:
        emb.embed(TEXTS[:8])
    (failed,) = server.batches
    message = str(info.value)
    assert failed["id"] in message
    assert outcome in message
    if outcome == "failed":
        assert "token_limit_exceeded" in message and "Enqueued token limit" in message
    if outcome == "expired":
        assert "batch_expired" in message  # from the error file
    assert job_files(tmp_path) == []  # dropped: a rerun does not wait on it again
    assert emb.cache is not None
    kept = sum(emb.cache.contains(emb.cache_namespace, TEXTS[:8]))
    assert kept == (0 if outcome == "failed" else 4)  # partial output is kept
    # a rerun submits only what is missing, and succeeds
    out = make(server, tmp_path, batch_size=2).embed(TEXTS[:8])
    assert len(server.batches) == 2
    np.testing.assert_array_equal(out[7], vector_for(TEXTS[7], SMALL, 1536))
    assert sum(len(ln["body"]["input"]) for ln in uploaded_lines(server)[1]) == 8 - kept


def test_invalid_batch_file_fails_validation(tmp_path, monkeypatch):
    with OpenAIEmbeddingServer(batch_polls=2, max_batch_requests=2) as server:
        emb = make(server, tmp_path, batch_size=1)
        with pytest.raises(BatchJobError, match=r"failed: too_many_requests.*at most 2"):
            emb.embed(TEXTS[:3])


def test_failed_requests_inside_a_batch_are_retried_synchronously(server, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="genept_fast.embed.batch")
    server.fail_batch_requests(1)
    long_text = "kinase " * 9000  # over 8192 tokens: truncated before it is sent, not refused
    texts = [*TEXTS[:6], long_text]
    with pytest.warns(UserWarning, match="truncated"):
        out = make(server, tmp_path, batch_size=2).embed(texts)
    (batch,) = server.batches
    assert batch["request_counts"]["failed"] == 1
    assert [r.inputs for r in server.requests] == [TEXTS[:2]]  # the failed request, once more
    assert server.requests[0].status == 200
    for i, t in enumerate(texts[:6]):
        np.testing.assert_array_equal(out[i], vector_for(t, SMALL, 1536))
    assert count_tokens(server.batch_requests[-1].inputs[-1]) <= 8192
    (record,) = [r for r in caplog.records if "synchronously" in r.getMessage()]
    assert batch["id"] in record.getMessage() and "500" in record.getMessage()


def test_wrong_dimension_in_batch_output_is_an_error(server, tmp_path):
    emb = make(server, tmp_path, model="nomic-embed-text")
    emb.embed(["first"])
    assert emb.dimension == 64
    server.default_dimension = 65  # the server now runs another model
    with pytest.raises(GeneptError, match="dimension 65, expected 64"):
        emb.embed(["second"])


def test_key_never_in_state_logs_or_errors(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with OpenAIEmbeddingServer(api_key=KEY, batch_polls=2) as server:
        emb = make(server, tmp_path, api_key=KEY)
        emb.embed(TEXTS[:3])
        wrong = "sk-wrong-ANOTHERsecret-987654"
        bad = make(server, tmp_path, api_key=wrong)
        with pytest.raises(GeneptError) as info:
            bad.embed(["not sent"])
        assert "401" in str(info.value) and wrong not in str(info.value)
        assert KEY not in repr(emb)
    logs = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "submitted batch" in logs
    assert KEY not in logs and wrong not in logs
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes()


def test_dry_run_price_is_halved():
    texts = ["BRCA1 is a tumor suppressor", "TP53"]
    standard = get_embedder(f"openai:{SMALL}", use_cache=False).estimate(texts)
    batch = get_embedder(f"openai:{SMALL}", use_cache=False, use_batch=True).estimate(texts)
    assert batch.tokens == standard.tokens > 0
    assert batch.usd == pytest.approx(standard.usd / 2)
    assert batch.batch and not standard.batch
    assert batch.seconds == 24 * 3600
    assert "Batch API" in str(batch) and "half the standard" in str(batch)
    large = get_embedder("openai:text-embedding-3-large", use_cache=False, use_batch=True)
    assert large.estimate(["TP53"]).usd == pytest.approx(count_tokens("TP53") * 0.065 / 1e6)
    with pytest.raises(GeneptError, match="Batch API"):
        get_embedder("local", use_batch=True)


def test_cli_batch(server, tmp_path, capsys):
    import polars as pl

    from genept_fast.cli import main
    from genept_fast.table import GeneEmbeddings

    genes = [f"G{i}" for i in range(6)]
    pl.DataFrame({"gene": genes, "text": [*TEXTS[:5], None]}).write_parquet(tmp_path / "t.pq")
    common = [
        "embed-genes",
        str(tmp_path / "t.pq"),
        "--embedder",
        f"openai:{SMALL}",
        "--base-url",
        server.url,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--batch",
        "--batch-poll-interval",
        str(POLL),
        "--no-progress",
    ]
    assert main([*common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Batch API" in out and "nothing sent" in out
    assert server.uploads == []
    assert main([*common, "-o", str(tmp_path / "g.parquet")]) == 0
    table = GeneEmbeddings.read(tmp_path / "g.parquet")
    np.testing.assert_array_equal(table.matrix[4], vector_for(TEXTS[4], SMALL, 1536))
    assert table.metadata["missing"] == ["G5"]
    assert len(server.batches) == 1
