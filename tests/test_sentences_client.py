"""The GenePT-s client: token counts handed to the embedder, progress within a chunk, and
truncation provenance that does not depend on the cache.

Everything runs against the loopback OpenAI-compatible server of ``tests/servers``.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pytest
import scanpy as sc
import scipy.sparse as sp

from genept_fast import GeneptError
from genept_fast.cli import main
from genept_fast.embed import TruncationWarning, get_embedder
from genept_fast.encode import SentenceEncoder
from genept_fast.table import GeneEmbeddings
from servers.openai_api import OpenAIEmbeddingServer, vector_for

if TYPE_CHECKING:
    import anndata as ad

MODEL = "text-embedding-3-small"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    return sc.datasets.pbmc68k_reduced()[:60].copy()


def test_sentences_go_out_with_their_counts(pbmc: ad.AnnData) -> None:
    with OpenAIEmbeddingServer() as server:
        emb = get_embedder(f"openai:{MODEL}", base_url=server.url, dimensions=8, use_cache=False)
        enc = SentenceEncoder(emb, list(pbmc.raw.var_names), top_n=20, prefix="Genes: ")
        X = sp.csr_array(pbmc.raw.X)
        sentences, tokens = enc.counted_sentences(X)
        # the counts made gene by gene are the tokenizer's, and the estimate agrees
        assert tokens == emb.count_tokens(sentences)
        assert emb.estimate(sentences, token_counts=tokens) == emb.estimate(sentences)
        out = enc(X)
        assert np.array_equal(out[5], vector_for(sentences[5], MODEL, 8))
        sent = {t for r in server.requests for t in r.inputs}
        assert sent == set(sentences)
    with pytest.raises(GeneptError, match="token_counts has 1 entries for 2 texts"):
        emb.embed(["a", "b"], token_counts=[1])


def test_embed_reports_progress_after_every_batch() -> None:
    with OpenAIEmbeddingServer() as server:
        emb = get_embedder(f"openai:{MODEL}", base_url=server.url, batch_size=2, use_cache=False)
        calls: list[tuple[int, int]] = []
        emb.embed(
            [f"text {i}" for i in range(7)] + ["text 0", ""], on_progress=lambda *a: calls.append(a)
        )
    assert calls[0] == (0, 7)
    assert [total for _, total in calls] == [7] * 5  # before the first batch, then 4 batches
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == 7


def test_genept_s_bar_moves_within_a_chunk(
    pbmc: ad.AnnData, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One chunk, four requests: the bar shows each request's sentences as it finishes (stderr
    is captured, not a terminal: a progress line at every update)."""
    monkeypatch.setenv("GENEPT_FAST_PROGRESS_INTERVAL", "0")
    with OpenAIEmbeddingServer(latency=0.2) as server:
        emb = get_embedder(
            f"openai:{MODEL}",
            base_url=server.url,
            dimensions=8,
            batch_size=3,
            max_concurrency=1,
            use_cache=False,
        )
        enc = SentenceEncoder(emb, list(pbmc.raw.var_names), top_n=5, prefix="", progress=True)
        enc(sp.csr_array(pbmc.raw.X[:12]))
    err = capsys.readouterr().err
    assert "sentences of this chunk" in err
    frames = re.findall(r"\b(\d+)/12\b", err)
    assert {"3", "6", "9"} & set(frames), err  # seen between the first and the last request


def _read_all(fd: int, sink: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return
        if not data:
            return
        sink.append(data)


def test_cli_progress_on_a_terminal_advances_per_request(pbmc: ad.AnnData, tmp_path: Path) -> None:
    """``encode -s`` on a terminal: the chunk's sentence bar moves while the chunk is encoded."""
    path = tmp_path / "in.h5ad"
    pbmc.write_h5ad(path)
    with OpenAIEmbeddingServer(latency=0.2) as server:
        master, slave = pty.openpty()
        # a terminal 120 columns wide (a new pty is 0 x 0, and tqdm draws nothing in 0 columns)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        env = dict(os.environ, GENEPT_FAST_CACHE_DIR=str(tmp_path / "cache"))
        args = [sys.executable, "-m", "genept_fast", "encode", str(path), "--method", "s"]
        args += ["--embedder", f"openai:{MODEL}", "--base-url", server.url, "--dimensions", "8"]
        args += ["--top-n", "5", "--chunk-size", "1000", "-o", str(tmp_path / "out.npy")]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        chunks: list[bytes] = []
        reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
        reader.start()
        assert proc.wait(timeout=120) == 0
        reader.join(timeout=10)
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "sentences of this chunk" in text, text
    frames = re.findall(r"sentences of this chunk: +\d+%\|[^|]*\| (\d+)/(\d+) ", text)
    assert any(0 < int(n) < int(total) for n, total in frames), text  # a request done, not all


def _long_texts(tmp_path: Path) -> Path:
    texts = [
        "phosphorylation " * 9000,
        "kinase " * 9500,
        "a short summary",
        None,
        "another short one",
    ]
    path = tmp_path / "texts.parquet"
    pl.DataFrame(
        {"gene": [f"G{i}" for i in range(5)], "text": texts, "source": ["ncbi"] * 5}
    ).write_parquet(path)
    return path


def test_truncation_provenance_is_the_same_on_a_cached_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = _long_texts(tmp_path)
    with OpenAIEmbeddingServer() as server:
        recorded = []
        for run in range(2):
            out = tmp_path / f"genes{run}.parquet"
            argv = ["embed-genes", str(texts), "--embedder", f"openai:{MODEL}"]
            argv += ["--base-url", server.url, "--dimensions", "8", "--no-progress"]
            argv += ["--cache-dir", str(tmp_path / "cache"), "-o", str(out)]
            with pytest.warns(TruncationWarning, match="2 of 4 texts exceeded"):
                assert main(argv) == 0
            recorded.append(GeneEmbeddings.read(out).metadata["n_truncated"])
            assert "2 texts truncated" in capsys.readouterr().err
        assert len(server.requests) == 1  # the rerun came from the cache
    assert recorded == [2, 2]


def test_local_truncation_provenance_is_the_same_on_a_cached_rerun(tmp_path: Path) -> None:
    df = pl.DataFrame(
        {"gene": ["A", "B", "C"], "text": ["word " * 400, "two words", "gene " * 300]}
    )
    recorded = []
    for _ in range(2):
        emb = get_embedder("local", cache_dir=tmp_path / "cache", n_threads=1)
        with pytest.warns(TruncationWarning, match="2 of 3 texts exceeded the 256-token"):
            table = GeneEmbeddings.from_texts(df, emb)
        recorded.append(table.metadata["n_truncated"])
    assert recorded == [2, 2]


def test_a_chunk_sends_each_sentence_once(pbmc: ad.AnnData) -> None:
    """4,803 cells, 60 distinct sentences and 3 empty cells: 60 texts go out, once each."""
    X = sp.vstack([sp.csr_array(pbmc.raw.X)] * 80 + [sp.csr_array((3, pbmc.raw.shape[1]))])
    with OpenAIEmbeddingServer() as server:
        emb = get_embedder(f"openai:{MODEL}", base_url=server.url, dimensions=8, use_cache=False)
        enc = SentenceEncoder(emb, list(pbmc.raw.var_names), top_n=4, prefix="")
        out = enc(sp.csr_array(X))
        sent = server.sent_counts()
    sentences = enc.builder.build(sp.csr_array(X))[0]
    assert sorted(sent) == sorted(set(sentences) - {""})
    assert set(sent.values()) == {1}
    for i in (0, 59, 2055, X.shape[0] - 4):
        assert np.array_equal(out[i], vector_for(sentences[i], MODEL, 8))
    assert not out[-3:].any()
    assert (enc.n_cells, enc.n_empty) == (X.shape[0], 3)
