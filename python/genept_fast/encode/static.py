"""GenePT-s at kernel speed for static text models: a sentence's vector summed gene by gene.

A static model (:class:`~genept_fast.embed.wordllama.WordLlamaEmbedder`) embeds a text as the
mean of its tokens' vectors. A GenePT-s sentence ``prefix + g1 + " " + g2 + ...`` whose tokens
are those of the prefix (without its trailing space) followed by those of each gene name
tokenized alone (the model's :meth:`additive` says for which names that holds) therefore has the
vector ``(prefix sum + Σ gene sums) / (prefix tokens + Σ gene tokens)``, and after the L2
normalisation every embedder applies, the division drops out. So a chunk of cells is encoded as

1. each cell's top genes, ranked by the Rust core (:func:`genept_fast.kernels.top_genes`:
   descending expression, ties by gene order, the same ranking as every GenePT-s path);
2. the sum of their per-gene token-vector sums, by the GenePT-w kernel with 0/1 weights
   (:func:`genept_fast.kernels.weighted_embedding`, the table laid out once);
3. plus the prefix's token-vector sum, L2-normalised (:func:`genept_fast.kernels.l2_normalize`).

There is no token limit (the model truncates nothing): ``top_n`` may reach every expressed
gene; ``max_input_tokens``, when given, cuts each sentence at a gene boundary as
:class:`~genept_fast.encode.SentenceBuilder` does. A cell whose sentence holds a gene whose
tokens do not add up (a name ending with a space, holding ``<s>``; or every cell when the
prefix or separator break the rule) is embedded by the model itself, from its sentence
written by the :class:`~genept_fast.encode.SentenceBuilder`. The result equals the model's own
embedding of each full sentence to float32 rounding (tests: max difference ≤ 1e-5).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from genept_fast import kernels
from genept_fast.encode.sentences import SentenceBuilder

if TYPE_CHECKING:
    from collections.abc import Sequence

    from genept_fast.embed import Embedder
    from genept_fast.kernels import PreparedEmbeddings

__all__ = ["DEFAULT_TOP_N", "StaticChunk", "StaticSentenceEncoder", "StaticSentences", "is_static"]

#: ``top_n`` when none is given: the middle of the best range on scanpy's PBMCs
#: (benches/quality_static.py: the mean of k-means and Leiden AMI/ARI, 10-NN and logistic
#: regression accuracy is 0.58-0.61 for 15 to 40 genes, 0.53 at 10, 0.55-0.56 at 50-100, 0.48
#: with every expressed gene: a long mean dilutes the cell's identity).
DEFAULT_TOP_N = 25
#: Most ``cells × ranked genes`` entries ranked at once (bounds memory, as SentenceBuilder).
_RANK_BLOCK = 1 << 22


@runtime_checkable
class _StaticModel(Protocol):
    """What a static model offers beside the Embedder interface."""

    def token_table(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def is_static(embedder: Embedder) -> bool:
    """Whether ``embedder`` is a static model whose GenePT-s sentences the kernel can sum."""
    return isinstance(embedder, _StaticModel)


class StaticSentences:
    """The sentences of a :class:`StaticSentenceEncoder`: the options and gene symbols of a
    :class:`~genept_fast.encode.SentenceBuilder` (checked as it checks them), which is made only
    when sentences must be written (cells embedded by the model, :meth:`build`): its token
    tables tokenize every symbol twice more, which the kernel's path never needs."""

    def __init__(
        self,
        embedder: Embedder,
        symbols: Sequence[str],
        *,
        top_n: int | None,
        prefix: str,
        sep: str,
        max_input_tokens: int | None,
        n_threads: int | None,
    ) -> None:
        self._options: dict[str, Any] = {
            "top_n": top_n,
            "prefix": prefix,
            "sep": sep,
            "max_input_tokens": max_input_tokens,
            "n_threads": n_threads,
        }
        # the builder's own checks, on no gene (it counts only the prefix's tokens then)
        empty = SentenceBuilder(embedder, [], **self._options)
        self.embedder = embedder
        self.symbols = [str(g) for g in symbols]
        self.usable = np.array([bool(g.strip()) for g in self.symbols], dtype=bool)
        self.top_n, self.prefix, self.sep = empty.top_n, prefix, sep
        self.max_input_tokens = empty.max_input_tokens
        #: ``top_n`` as it acts (as :attr:`SentenceBuilder.effective_top_n`)
        self.effective_top_n = None if top_n is None else min(int(top_n), len(self.symbols))
        self._builder: SentenceBuilder | None = None

    def writer(self) -> SentenceBuilder:
        """The :class:`~genept_fast.encode.SentenceBuilder` of these sentences, made once."""
        if self._builder is None:
            self._builder = SentenceBuilder(self.embedder, self.symbols, **self._options)
        return self._builder

    def build(self, X: Any, *, row_offset: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
        """:meth:`SentenceBuilder.build <genept_fast.encode.SentenceBuilder.build>`."""
        return self.writer().build(X, row_offset=row_offset)

    def build_counted(
        self, X: Any, *, row_offset: int = 0
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`SentenceBuilder.build_counted
        <genept_fast.encode.SentenceBuilder.build_counted>`."""
        return self.writer().build_counted(X, row_offset=row_offset)


class StaticChunk:
    """What :meth:`StaticSentenceEncoder.encode` gives for a chunk of cells."""

    def __init__(
        self, vectors: np.ndarray, kept: np.ndarray, cut: np.ndarray, digests: np.ndarray
    ) -> None:
        #: float32 ``(cells, D)``.
        self.vectors = vectors
        #: int64, genes in each cell's sentence.
        self.kept = kept
        #: bool, whether ``max_input_tokens`` ended the sentence.
        self.cut = cut
        #: uint64 ``(cells, 2)``, a digest per cell of its sentence's genes (with
        #: ``distinct=True``; else no rows).
        self.digests = digests


class StaticSentenceEncoder:
    """GenePT-s with a static model, summed by the kernel: the interface of
    :class:`~genept_fast.encode.SentenceEncoder` (``embedder``, ``builder``, ``fingerprint``,
    the counters, :meth:`sentences`, :meth:`counted_sentences`, ``__call__``, :meth:`embed`),
    so ``tl``, the stream, Dask and the command line take either.

    Parameters are those of :class:`~genept_fast.encode.SentenceEncoder`; ``embedder`` must be
    static (:func:`is_static`); ``top_n`` defaults to :data:`DEFAULT_TOP_N` (25, chosen by
    measurement; any number up to every gene is allowed: no token limit applies).
    ``progress`` is accepted and ignored (a chunk takes well under a second).
    """

    def __init__(
        self,
        embedder: Embedder,
        symbols: Sequence[str],
        *,
        top_n: int | None = None,
        prefix: str = kernels.DEFAULT_PREFIX,
        sep: str = " ",
        max_input_tokens: int | None = None,
        n_threads: int | None = None,
        progress: bool = False,
    ) -> None:
        if not is_static(embedder):
            msg = f"{embedder.model_id} is not a static model (no token_table)"
            raise TypeError(msg)
        if top_n is None:
            top_n = DEFAULT_TOP_N
        self.embedder = embedder
        self.builder = StaticSentences(
            embedder,
            symbols,
            top_n=top_n,
            prefix=prefix,
            sep=sep,
            max_input_tokens=max_input_tokens,
            n_threads=n_threads,
        )
        self.progress = progress
        self.n_threads = n_threads
        self.n_cells = self.n_cut = self.n_empty = 0
        #: cells embedded by the model itself (a gene whose tokens do not add up)
        self.n_fallback = 0
        self._setup_tables()
        self._table: PreparedEmbeddings | None = None
        b = self.builder
        self.fingerprint = json.dumps(
            [
                "genept-s-static",
                embedder.model_id,
                embedder.cache_namespace,
                top_n,
                prefix,
                sep,
                b.max_input_tokens,
                hashlib.blake2b("\n".join(b.symbols).encode(), digest_size=16).hexdigest(),
            ],
            separators=(",", ":"),
        )

    # -- tables --------------------------------------------------------------------------------
    def _setup_tables(self) -> None:
        """Per gene: token-vector sums, token counts, whether they add up; the prefix's."""
        model: Any = self.embedder
        b = self.builder
        names = [g if u else "" for g, u in zip(b.symbols, b.usable, strict=True)]
        sums, counts, additive = model.token_table(names)
        self.gene_sums = np.ascontiguousarray(sums, dtype=np.float32)
        self.gene_tokens = np.asarray(counts, dtype=np.int64)
        self.additive = np.asarray(additive, dtype=bool) & b.usable
        # the sentence is head + " " + g1 + " " + g2 ...: head's tokens must be its own too
        head = b.prefix[:-1] if b.prefix.endswith(" ") else b.prefix
        psum, pcount, pok = model.token_table([head])
        if not (b.sep == " " and (b.prefix == "" or (b.prefix.endswith(" ") and pok[0]))):
            self.additive[:] = False
        self.prefix_sum = np.asarray(psum[0], dtype=np.float32)
        self.prefix_tokens = int(pcount[0])
        n_usable = int(b.usable.sum())
        want = n_usable if b.top_n is None else min(b.top_n, n_usable)
        limited = b.max_input_tokens < int(self.embedder.max_input_tokens)
        budget = b.max_input_tokens - self.prefix_tokens
        #: genes ranked per cell (every gene takes a token at least)
        self.n_rank = max(1, min(want, budget + 1) if limited else want)
        self._budget = budget if limited else None
        # the tables indexed by ranked genes, with an entry for the padding (-1) last
        self._cost = np.append(self.gene_tokens, 0).astype(np.int32)
        self._breaks = np.append(~self.additive, False)
        self._all_additive = bool(self.additive[b.usable].all()) if b.usable.any() else True
        self._weights = np.zeros((2, 0), dtype=np.uint64)
        self._ones = np.zeros(0, dtype=np.float32)

    def table(self) -> PreparedEmbeddings:
        """The per-gene sums laid out for the kernel, once."""
        if self._table is None:
            self._table = kernels.prepare_embeddings(self.gene_sums, n_threads=self.n_threads)
        return self._table

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_table"] = None  # laid out again where it is unpickled
        state["_ones"] = np.zeros(0, dtype=np.float32)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __dask_tokenize__(self) -> str:
        return self.fingerprint

    # -- encoding ------------------------------------------------------------------------------
    def _rankable(self, X: Any) -> kernels.CsrParts:
        """``X`` as the core borrows it (no copy unless a gene has no symbol: then a copy
        whose entries for those genes are 0, never ranked)."""
        if self.builder.usable.all():
            return kernels.as_csr(X)
        csr = sp.csr_array(X, copy=True)  # never modify the caller's matrix
        csr.sum_duplicates()
        csr.data[~self.builder.usable[csr.indices]] = 0
        return kernels.as_csr(csr)

    def _kept(self, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Genes in each cell's sentence, and whether the token limit ended it."""
        n_valid = (top >= 0).sum(axis=1)
        if self._budget is None:
            return n_valid.astype(np.int64), np.zeros(top.shape[0], dtype=bool)
        total = np.cumsum(self._cost[top], axis=1, dtype=np.int64)
        k = np.minimum((total <= self._budget).sum(axis=1), n_valid)
        return k.astype(np.int64), k < n_valid

    def _sum(self, top: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """Σ of the kept genes' token sums plus the prefix's, per cell, L2-normalised."""
        n_cells, width = top.shape
        if bool((kept == width).all()):
            indices = top.reshape(-1)  # no padding, nothing cut: the ranking as it is
        else:
            indices = top[np.arange(width)[None, :] < kept[:, None]]
        # int32 like the ranking: a block holds at most _RANK_BLOCK entries
        indptr = np.zeros(n_cells + 1, dtype=np.int32)
        np.cumsum(kept, out=indptr[1:])
        if self._ones.size < indices.size:
            self._ones = np.ones(indices.size, dtype=np.float32)
        n_genes = self.gene_sums.shape[0]
        picks = kernels.CsrParts(indptr, indices, self._ones[: indices.size], (n_cells, n_genes))
        sums = kernels.weighted_embedding(
            picks, self.table(), normalize=False, n_threads=self.n_threads
        )
        sums[kept > 0] += self.prefix_sum
        return kernels.l2_normalize(sums, n_threads=self.n_threads)

    def _fallback(
        self, block: kernels.CsrParts, rows: np.ndarray, out: np.ndarray, row_offset: int
    ) -> None:
        """Cells ``rows`` of ``block`` embedded by the model from their written sentences."""
        csr = sp.csr_array((block.data, block.indices, block.indptr), shape=block.shape)
        sub = csr[rows]
        sentences, _, _, tokens = self.builder.build_counted(sub, row_offset=row_offset)
        out[rows] = self.embedder.embed(sentences, token_counts=tokens.tolist())
        self.n_fallback += len(rows)

    def encode(self, X: Any, *, row_offset: int = 0, distinct: bool = False) -> StaticChunk:
        """Embed the cells (rows) of ``X`` (rows ``row_offset:`` of a larger matrix, named so in
        errors); with ``distinct``, also a 128-bit digest of each cell's sentence."""
        csr = self._rankable(X)
        n_cells, n_genes = csr.shape
        indptr = csr.indptr
        vectors = np.zeros((n_cells, self.gene_sums.shape[1]), dtype=np.float32)
        kept = np.zeros(n_cells, dtype=np.int64)
        cut = np.zeros(n_cells, dtype=bool)
        digests = np.zeros((n_cells if distinct else 0, 2), dtype=np.uint64)
        block = max(1, _RANK_BLOCK // self.n_rank)
        for a in range(0, n_cells, block):
            b = min(a + block, n_cells)
            s, e = indptr[a], indptr[b]
            rows = kernels.CsrParts(  # a view of the block's rows
                indptr[a : b + 1] - s, csr.indices[s:e], csr.data[s:e], (b - a, n_genes)
            )
            top = kernels.top_genes(
                rows, self.n_rank, n_threads=self.n_threads, row_offset=row_offset + a
            )
            k, c = self._kept(top)
            kept[a:b], cut[a:b] = k, c
            vectors[a:b] = self._sum(top, k)
            in_sentence = np.arange(top.shape[1])[None, :] < k[:, None]
            if not self._all_additive:
                broken = np.flatnonzero((self._breaks[top] & in_sentence).any(axis=1))
                if broken.size:
                    self._fallback(rows, broken, vectors[a:b], row_offset + a)
            if distinct:
                digests[a:b] = self._digests(np.where(in_sentence, top, -1))
        self.n_cells += n_cells
        self.n_cut += int(cut.sum())
        self.n_empty += int((kept == 0).sum())
        return StaticChunk(vectors, kept, cut, digests)

    def _digests(self, genes: np.ndarray) -> np.ndarray:
        """Two random linear 64-bit hashes of each row of gene indices (``-1`` past the end):
        equal rows, equal digests; distinct rows collide with odds of about 2^-98."""
        width = genes.shape[1]
        if self._weights.shape[1] != width:
            rng = np.random.default_rng(20_240_624)
            self._weights = rng.integers(0, 2**63, size=(2, width), dtype=np.uint64) * 2 + 1
        g = genes.astype(np.int64).view(np.uint64)  # -1 becomes 2^64 - 1
        return g @ self._weights.T  # wraps modulo 2^64

    def __call__(self, X: Any, *, row_offset: int = 0) -> np.ndarray:
        """The embeddings of the sentences of ``X``'s cells, float32 ``(cells, D)``."""
        return self.encode(X, row_offset=row_offset).vectors

    # -- the SentenceEncoder interface for sentences ---------------------------------------
    def sentences(self, X: sp.csr_array, *, row_offset: int = 0) -> list[str]:
        return self.counted_sentences(X, row_offset=row_offset)[0]

    def counted_sentences(
        self, X: sp.csr_array, *, row_offset: int = 0
    ) -> tuple[list[str], list[int]]:
        """The chunk's sentences and their token counts, written by the builder (as
        :meth:`SentenceEncoder.counted_sentences`)."""
        out, kept, cut, tokens = self.builder.build_counted(X, row_offset=row_offset)
        self.n_cells += len(out)
        self.n_cut += int(cut.sum())
        self.n_empty += int((kept == 0).sum())
        return out, tokens.tolist()

    def embed(self, sentences: list[str], tokens: list[int], **options: Any) -> np.ndarray:
        """Embed written sentences with the model itself (float32)."""
        vectors = self.embedder.embed(sentences, token_counts=tokens, **options)
        return np.asarray(vectors, dtype=np.float32)
