"""GenePT-s streamed (``genept_fast.stream.encode_sentences``) against ``tl.genept_s``.

The text model is the loopback OpenAI-compatible server of ``tests/servers/openai_api.py``; the
cells are 120 real PBMCs written to an ``.h5ad``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from genept_fast import stream, tl
from genept_fast.embed import get_embedder
from genept_fast.errors import InputError, ServiceError
from servers.openai_api import OpenAIEmbeddingServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from genept_fast.embed import Embedder

MODEL = "text-embedding-3-small"
DIM = 16
N_CELLS = 120


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    return sc.datasets.pbmc68k_reduced()[:N_CELLS].copy()


@pytest.fixture
def h5ad(cells: ad.AnnData, tmp_path: Path) -> Path:
    path = tmp_path / "in.h5ad"
    cells.write_h5ad(path)
    return path


@pytest.fixture
def server() -> Iterator[OpenAIEmbeddingServer]:
    with OpenAIEmbeddingServer(api_key="test") as srv:
        yield srv


def embedder(server: OpenAIEmbeddingServer) -> Embedder:
    return get_embedder(
        f"openai:{MODEL}", base_url=server.url, api_key="test", dimensions=DIM, use_cache=False
    )


def test_streamed_sentences_equal_the_tool(
    cells: ad.AnnData, h5ad: Path, server: OpenAIEmbeddingServer, tmp_path: Path
) -> None:
    out = tmp_path / "s.h5ad"
    report = stream.encode_sentences(
        h5ad, out, embedder(server), top_n=12, chunk_size=50, progress=False, use_raw=True
    )
    expected = tl.genept_s(cells, embedder(server), top_n=12, copy=True)
    assert isinstance(expected, ad.AnnData)
    got = ad.read_h5ad(out)
    assert list(got.obs_names) == list(cells.obs_names)
    assert np.array_equal(got.obsm["X_genept_s"], expected.obsm["X_genept_s"])
    assert report.n_chunks == 3 and report.cells_encoded == N_CELLS
    assert report.encoder_stats == {
        "n_cells": N_CELLS,
        "n_cut": 0,
        "n_empty": 0,
        "max_input_tokens": 8192,
    }
    # one provenance record: the tool's keys that describe the method agree
    mine, theirs = got.uns["X_genept_s"]["params"], expected.uns["X_genept_s"]["params"]
    for k in ("method", "model", "dimension", "gene_symbols", "prefix", "sep", "top_n"):
        assert mine[k] == theirs[k], k
    assert mine["matrix"] == theirs["matrix"] == "raw/X"  # one vocabulary on every path


def test_a_failed_job_resumes_and_equals_an_uninterrupted_one(
    cells: ad.AnnData, h5ad: Path, server: OpenAIEmbeddingServer, tmp_path: Path
) -> None:
    out = tmp_path / "s.npy"
    kw = {"top_n": 8, "chunk_size": 40, "progress": False, "use_raw": True}
    server.add_fault("delay", times=2, delay=0.0)  # the first chunk (2 requests of 32) passes
    server.add_fault("error", times=1, status=400, message="injected failure")
    with pytest.raises(ServiceError, match="injected failure"):
        stream.encode_sentences(h5ad, out, embedder(server), **kw)
    assert not out.exists() and (tmp_path / "s.npy.partial").is_dir()
    before = len(server.requests)
    report = stream.encode_sentences(h5ad, out, embedder(server), **kw)
    assert report.chunks_resumed == 1 and report.cells_encoded == N_CELLS - 40
    assert report.encoder_stats["n_cells"] == N_CELLS - 40
    assert sum(len(r.inputs) for r in server.requests[before:]) <= N_CELLS - 40
    expected = tl.genept_s(cells, embedder(server), top_n=8, copy=True)
    assert isinstance(expected, ad.AnnData)
    assert np.array_equal(np.load(out), expected.obsm["X_genept_s"])


def test_estimate_sends_nothing(h5ad: Path, server: OpenAIEmbeddingServer) -> None:
    before = len(server.requests)
    est = stream.estimate_sentences(h5ad, embedder(server), use_raw=True, top_n=30)
    assert est.n_texts == N_CELLS and est.tokens > N_CELLS * 30
    assert len(server.requests) == before


def test_options_it_sets_itself_are_refused(h5ad: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="do not pass dim="):
        stream.encode_sentences(h5ad, tmp_path / "o.npy", "local", dim=3)


def test_huge_top_n_is_stored_as_it_acts_and_the_result_writes(
    cells: ad.AnnData, server: OpenAIEmbeddingServer, tmp_path: Path
) -> None:
    """A top_n beyond any integer HDF5 holds is stored clamped to the number of genes."""
    sub = cells[:10].copy()
    tl.genept_s(sub, embedder(server), top_n=10**30)
    assert sub.uns["X_genept_s"]["params"]["top_n"] == sub.raw.n_vars
    sub.write_h5ad(tmp_path / "s.h5ad")
    back = ad.read_h5ad(tmp_path / "s.h5ad")
    assert back.uns["X_genept_s"]["params"]["top_n"] == sub.raw.n_vars


def test_a_file_without_symbols_is_refused_naming_the_option(tmp_path: Path) -> None:
    import pandas as pd
    import scipy.sparse as sp

    path = tmp_path / "blank.h5ad"
    var = pd.DataFrame({"name": [" ", ""]}, index=["a", "b"])
    ad.AnnData(sp.csr_array(np.ones((3, 2), dtype=np.float32)), var=var).write_h5ad(path)
    with pytest.raises(InputError, match=r"has a symbol \(var\['name'\]\).*--gene-key"):
        stream.encode_sentences(path, tmp_path / "o.npy", "local", gene_key="name")


def test_an_unknown_dimension_comes_from_the_first_chunk_not_a_probe(
    h5ad: Path, server: OpenAIEmbeddingServer, tmp_path: Path
) -> None:
    """A model the client does not know the width of: the first real chunk tells it; no extra
    (possibly paid) request is sent to learn it, and no sentence is embedded twice."""
    from genept_fast.kernels import DEFAULT_PREFIX

    emb = get_embedder("openai:my-model", base_url=server.url, api_key="test", use_cache=False)
    assert emb.dimension is None
    out = tmp_path / "o.npy"
    rep = stream.encode_sentences(
        h5ad, out, emb, top_n=6, chunk_size=50, progress=False, use_raw=True
    )
    sent = [t for r in server.requests for t in r.inputs]
    assert all(t.startswith(DEFAULT_PREFIX) for t in sent)  # cell sentences only
    assert len(sent) <= N_CELLS and rep.encoder_stats["n_cells"] == N_CELLS
    got = np.load(out)
    assert got.shape == (N_CELLS, server.default_dimension) == (N_CELLS, emb.dimension)
    assert rep.dim == emb.dimension and np.abs(got).sum() > 0
