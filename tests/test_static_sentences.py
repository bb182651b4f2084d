"""GenePT-s with a static model summed by the kernel, against the model's own embed() of each
full sentence (written here from a numpy ranking), on real gene symbols."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import genept_fast as gf
from genept_fast.embed import get_embedder
from genept_fast.embed.wordllama import WordLlamaEmbedder
from genept_fast.encode import start_sentences
from genept_fast.encode.static import DEFAULT_TOP_N, StaticSentenceEncoder, is_static
from genept_fast.kernels import DEFAULT_PREFIX

wordllama = pytest.importorskip("wordllama")


@pytest.fixture(scope="module")
def reference():
    from wordllama import WordLlama

    return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


@pytest.fixture(scope="module")
def emb():
    return get_embedder("wordllama", use_cache=False)


@pytest.fixture(scope="module")
def symbols() -> list[str]:
    from genept_fast.genes.hgnc import hgnc

    return list(hgnc().symbol)


def ranked(row: np.ndarray, usable: np.ndarray) -> list[int]:
    """Positive, usable genes by descending value, ties by gene index (the obvious way)."""
    genes = [j for j in range(row.size) if row[j] > 0 and usable[j]]
    return sorted(genes, key=lambda j: (-row[j], j))


def expected(reference, X, names, *, top_n, prefix, sep=" "):
    """The model's own embeddings of every cell's full sentence (zeros for no genes)."""
    dense = X.toarray()
    usable = np.array([bool(g.strip()) for g in names])
    out = np.zeros((dense.shape[0], 256), dtype=np.float32)
    for i, row in enumerate(dense):
        genes = ranked(row, usable)[: DEFAULT_TOP_N if top_n is None else top_n]
        if genes:
            text = prefix + sep.join(names[j] for j in genes)
            out[i] = reference.embed(text, norm=True)[0]
    return out


@st.composite
def cells(draw, symbols):
    n_genes = draw(st.integers(1, 60))
    n_cells = draw(st.integers(0, 8))
    picks = draw(st.lists(st.sampled_from(symbols), min_size=n_genes, max_size=n_genes))
    # a few names that break additivity: trailing space, special-token text, empty
    odd = draw(st.lists(st.sampled_from(["MT-CO1 ", "<s>", "", " ", "A▁"]), max_size=2))
    for k, name in enumerate(odd):
        picks[draw(st.integers(0, n_genes - 1))] = name if k == 0 else picks[0]
    values = draw(
        st.lists(st.sampled_from([0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.5, 7.0]), min_size=0)
        .map(lambda v: v + [0.0] * (n_cells * n_genes))
        .map(lambda v: v[: n_cells * n_genes])
    )
    X = sp.csr_array(np.asarray(values, dtype=np.float32).reshape(n_cells, n_genes))
    return X, picks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    top_n=st.one_of(st.none(), st.integers(1, 70)),
    prefix=st.sampled_from([DEFAULT_PREFIX, "", "Genes: ", "Genes:"]),
    sep=st.sampled_from([" ", " ", ", "]),
)
def test_equals_the_model_on_full_sentences(emb, reference, symbols, data, top_n, prefix, sep):
    X, names = data.draw(cells(symbols))
    enc = StaticSentenceEncoder(emb, names, top_n=top_n, prefix=prefix, sep=sep)
    got = enc(X)
    want = expected(reference, X, names, top_n=top_n, prefix=prefix, sep=sep)
    assert got.shape == want.shape
    assert np.abs(got - want).max(initial=0) <= 1e-5
    assert enc.n_cells == X.shape[0]


def test_long_sentences_have_no_token_cap(emb, reference, symbols):
    rng = np.random.default_rng(0)
    names = list(rng.choice(symbols, 3000, replace=False))
    X = sp.random_array((5, 3000), density=0.7, random_state=rng, dtype=np.float32)
    enc = StaticSentenceEncoder(emb, names, top_n=10**6)
    got = enc(X)
    want = expected(reference, X, names, top_n=10**6, prefix=DEFAULT_PREFIX)
    assert np.abs(got - want).max() <= 1e-5
    assert enc.n_fallback == 0 and enc.n_cut == 0
    # every expressed gene is in the sentence: thousands of tokens, none cut
    assert min(enc.builder.build(X)[1]) > 1500


def test_a_token_limit_cuts_as_the_builder_does(emb, reference, symbols):
    rng = np.random.default_rng(1)
    names = list(rng.choice(symbols, 400, replace=False))
    X = sp.random_array((20, 400), density=0.5, random_state=rng, dtype=np.float32)
    enc = StaticSentenceEncoder(emb, names, max_input_tokens=120, top_n=400)
    chunk = enc.encode(X)
    sentences, kept, cut = enc.builder.build(X)
    np.testing.assert_array_equal(chunk.kept, kept)
    np.testing.assert_array_equal(chunk.cut, cut)
    assert cut.all() and max(emb.count_tokens(sentences)) <= 120
    want = reference.embed(sentences, norm=True)
    assert np.abs(chunk.vectors - want).max() <= 1e-5


def test_non_additive_genes_go_through_the_model(emb, reference, symbols):
    names = ["CD74", "B2M ", "HLA-DRA", "x<s>y"]
    X = sp.csr_array(np.array([[3, 2, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0], [1, 1, 1, 5]], "f4"))
    enc = StaticSentenceEncoder(emb, names)
    got = enc(X)
    assert enc.n_fallback == 2 and enc.n_empty == 1
    want = expected(reference, X, names, top_n=None, prefix=DEFAULT_PREFIX)
    assert np.abs(got - want).max() <= 1e-5


def test_pickles_and_picks_itself(emb, symbols):
    assert is_static(emb) and not is_static(get_embedder("local", use_cache=False))
    names = symbols[:50]
    X = sp.random_array((30, 50), density=0.4, random_state=2, dtype=np.float32)
    enc = StaticSentenceEncoder(emb, names, top_n=10)
    clone = pickle.loads(pickle.dumps(enc))
    np.testing.assert_array_equal(clone(X, row_offset=7), enc(X))
    adata = ad.AnnData(X=sp.csr_matrix(X), var={"x": np.arange(50)})
    adata.var_names = names
    with start_sentences(adata, "wordllama", top_n=10) as job:
        assert isinstance(job.encoder, StaticSentenceEncoder)
        assert job.record(256)["params"]["model"] == "wordllama:l2_supercat_256"


def test_a_nan_names_its_cell(emb, symbols):
    X = sp.csr_array(np.array([[1.0, 2.0], [np.nan, 1.0]], dtype=np.float32))
    with pytest.raises(gf.GeneptError) as info:
        StaticSentenceEncoder(emb, symbols[:2])(X, row_offset=100)
    assert info.value.cell == 101


def _pbmc_like(symbols: list[str], n_cells: int = 60, n_genes: int = 300) -> ad.AnnData:
    rng = np.random.default_rng(3)
    X = sp.random(n_cells, n_genes, density=0.3, random_state=rng, format="csr", dtype="f4")
    X.data = np.ceil(X.data * 20)
    adata = ad.AnnData(X=X)
    adata.var_names = list(rng.choice(symbols, n_genes, replace=False))
    return adata


def test_every_path_gives_the_same_embedding(symbols, tmp_path):
    adata = _pbmc_like(symbols)
    gf.tl.genept_s(adata, embedder="wordllama", top_n=100, chunk_size=25)
    tl = adata.obsm["X_genept_s"]
    params = adata.uns["X_genept_s"]["params"]
    assert params["model"] == "wordllama:l2_supercat_256" and params["top_n"] == 100
    assert params["distinct_sentences"] == 60
    np.testing.assert_array_equal(
        adata.obs["X_genept_s_n_genes"], np.minimum(adata.X.getnnz(1), 100)
    )
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "out.h5ad"
    gf.stream.encode_sentences(path, out, "wordllama", top_n=100, chunk_size=25, progress=False)
    streamed = ad.read_h5ad(out).obsm["X_genept_s"]
    np.testing.assert_array_equal(streamed, tl)
    cli = tmp_path / "cli.h5ad"
    run = subprocess.run(
        [sys.executable, "-m", "genept_fast", "encode", str(path), "--method", "s",
         "--embedder", "wordllama", "--top-n", "100", "-o", str(cli)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(ad.read_h5ad(cli).obsm["X_genept_s"], tl)


class _FailsOnce(WordLlamaEmbedder):
    """The packaged model, whose second batch of written sentences fails (a fault injected as
    the loopback servers inject theirs)."""

    calls = 0

    def _embed_uncached(self, texts, sink, *, token_counts):
        type(self).calls += 1
        if type(self).calls == 2:
            raise RuntimeError("injected failure")
        super()._embed_uncached(texts, sink, token_counts=token_counts)


def test_a_failed_stream_resumes_and_equals_the_tool(symbols, tmp_path):
    adata = _pbmc_like(symbols, n_cells=50)
    names = list(adata.var_names)
    names[0] = "B2M "  # its tokens do not add up: its cells' sentences go through the model
    adata.var_names = names
    X = adata.X.tolil()
    X[:, 0] = 1000.0  # in every sentence
    adata.X = X.tocsr()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "s.npy"
    kw = {"top_n": 30, "chunk_size": 20, "progress": False}
    with pytest.raises(RuntimeError, match="injected failure"):
        gf.stream.encode_sentences(path, out, _FailsOnce(), **kw)
    assert not out.exists()
    report = gf.stream.encode_sentences(path, out, WordLlamaEmbedder(), **kw)
    assert report.chunks_resumed == 1 and report.cells_encoded == 30
    want = gf.tl.genept_s(adata, WordLlamaEmbedder(), top_n=30, copy=True)
    np.testing.assert_array_equal(np.load(out), want.obsm["X_genept_s"])
