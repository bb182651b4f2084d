"""The wordllama embedder against wordllama's own inference code, offline."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genept_fast.embed import get_embedder
from genept_fast.embed.wordllama import WordLlamaEmbedder
from genept_fast.errors import InputError

wordllama = pytest.importorskip("wordllama")


@pytest.fixture(scope="module")
def reference():
    """wordllama's own model, loaded from its wheel only (its tokenizer lies under tokenizers/,
    where ``cache_dir`` points it; ``disable_download`` forbids the hub)."""
    from wordllama import WordLlama

    return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


@pytest.fixture(scope="module")
def emb():
    return WordLlamaEmbedder()


TEXTS = [
    "A cell with genes ranked by expression: CD74 HLA-DRA MALAT1 B2M",
    "CD3E",
    "Zinc finger protein 24; this gene encodes a transcription factor. " * 40,
    "émigré ünïcode 基因 \u200b tabs\tand\nnewlines",
]


def test_equals_wordllama_embed(emb, reference):
    got = emb.embed(TEXTS)
    want = reference.embed(TEXTS, norm=True)
    assert got.shape == (len(TEXTS), 256)
    assert np.abs(got - want).max() <= 1e-6
    # no truncation: the long text counts every token, as wordllama does
    assert emb.count_tokens(TEXTS[2:3])[0] == len(reference.tokenize(TEXTS[2])[0].ids) > 256
    assert emb.n_truncated == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=60).filter(str.strip), min_size=1, max_size=8))
def test_equals_wordllama_embed_on_any_text(emb, reference, texts):
    got = emb.embed(texts)
    want = reference.embed(texts, norm=True)
    assert np.abs(got - want).max() <= 1e-5


def test_spec_cache_and_empty_texts(tmp_path):
    e = get_embedder("wordllama", cache_dir=tmp_path)
    assert e.model_id == "wordllama:l2_supercat_256" and e.dimension == 256
    out = e.embed(["CD74", "", "  ", "CD74"])
    assert np.all(out[1:3] == 0)
    np.testing.assert_array_equal(out[0], out[3])
    np.testing.assert_allclose(np.linalg.norm(out[0]), 1.0, rtol=1e-6)
    again = get_embedder("wordllama:l2_supercat_256", cache_dir=tmp_path)
    np.testing.assert_array_equal(again.embed(["CD74"])[0], out[0])


def test_bad_specs():
    with pytest.raises(InputError, match="unknown wordllama model"):
        get_embedder("wordllama:l3_supercat")
    with pytest.raises(InputError, match="base_url and dimensions"):
        get_embedder("wordllama", dimensions=64)


def test_pickles_without_its_tables(emb):
    emb.load()
    clone = pickle.loads(pickle.dumps(emb))
    assert clone._vectors is None
    np.testing.assert_array_equal(clone.embed(["B2M"]), emb.embed(["B2M"]))


def test_additive_words(emb):
    words = ["CD74", "HLA-DRA", "MT-CO1", "a  b", " B2M", "C1orf12 ", "X▁", "<s>", "", " "]
    got = emb.additive(words).tolist()
    assert got == [True, True, True, True, True, False, False, False, False, False]
    # where it says so, the words' tokens add up in a sentence
    ok = [w for w, a in zip(words, got, strict=True) if a]
    sentence = emb.token_ids(["lead: " + " ".join(ok)])[0]
    parts = emb.token_ids(["lead:", *ok])
    assert sentence == [t for p in parts for t in p]


def test_token_table_equals_each_word_tokenized_alone(emb):
    """On every HGNC symbol and some odd words: the block tokenization gives each word its own
    tokens, sums and counts, and says additive exactly where additive() does."""
    from genept_fast.genes.hgnc import hgnc

    words = [*hgnc().symbol, "B2M ", "x<s>", "", "  ", "émigré 基因", "a  b", "▁X", "Y▁"]
    sums, counts, ok = emb.token_table(words)
    alone = emb.token_ids(words)
    assert counts.tolist() == [len(i) for i in alone]
    want, _ = emb.token_sums(words)
    np.testing.assert_array_equal(sums, want)
    np.testing.assert_array_equal(ok, emb.additive(words))
    assert ok[:-8].all() and ok[-8:].tolist() == [
        False,
        False,
        False,
        False,
        True,
        True,
        True,
        False,
    ]
