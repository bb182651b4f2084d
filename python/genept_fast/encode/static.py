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

__all__ = ["StaticChunk", "StaticSentenceEncoder", "is_static"]

#: Most ``cells × ranked genes`` entries ranked at once (bounds memory, as SentenceBuilder).
_RANK_BLOCK = 1 << 22


@runtime_checkable
class _StaticModel(Protocol):
    """What a static model offers beside the Embedder interface."""

    def token_sums(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...
    def additive(self, words: Sequence[str]) -> np.ndarray: ...


def is_static(embedder: Embedder) -> bool:
    """Whether ``embedder`` is a static model whose GenePT-s sentences the kernel can sum."""
    return isinstance(embedder, _StaticModel)


class StaticChunk:
    """What :meth:`StaticSentenceEncoder.encode` gives for a chunk of cells."""

    def __init__(
        self, vectors: np.ndarray, kept: np.ndarray, cut: np.ndarray, digests: list[bytes]
    ) -> None:
        #: float32 ``(cells, D)``.
        self.vectors = vectors
        #: int64, genes in each cell's sentence.
        self.kept = kept
        #: bool, whether ``max_input_tokens`` ended the sentence.
        self.cut = cut
        #: One digest per cell of its sentence's genes (with ``distinct=True``; else empty).
        self.digests = digests


class StaticSentenceEncoder:
    """GenePT-s with a static model, summed by the kernel: the interface of
    :class:`~genept_fast.encode.SentenceEncoder` (``embedder``, ``builder``, ``fingerprint``,
    the counters, :meth:`sentences`, :meth:`counted_sentences`, ``__call__``, :meth:`embed`),
    so ``tl``, the stream, Dask and the command line take either.

    Parameters are those of :class:`~genept_fast.encode.SentenceEncoder`; ``embedder`` must be
    static (:func:`is_static`). ``progress`` is accepted and ignored (a chunk takes well under a
    second).
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
            msg = f"{embedder.model_id} is not a static model (no token_sums/additive)"
            raise TypeError(msg)
        self.embedder = embedder
        self.builder = SentenceBuilder(
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
        sums, counts = model.token_sums(names)
        self.gene_sums = np.ascontiguousarray(sums, dtype=np.float32)
        self.gene_tokens = counts.astype(np.int64)
        self.additive = np.asarray(model.additive(names), dtype=bool) & b.usable
        head = b.prefix[:-1] if b.prefix.endswith(" ") else b.prefix
        prefix_ok = b.sep == " " and (
            b.prefix == "" or (b.prefix.endswith(" ") and bool(model.additive([head])[0]))
        )
        if not prefix_ok:
            self.additive[:] = False
        psum, pcount = model.token_sums([head]) if head else (np.zeros((1, sums.shape[1])), [0])
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

    def table(self) -> PreparedEmbeddings:
        """The per-gene sums laid out for the kernel, once."""
        if self._table is None:
            self._table = kernels.prepare_embeddings(self.gene_sums, n_threads=self.n_threads)
        return self._table

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_table"] = None  # laid out again where it is unpickled
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __dask_tokenize__(self) -> str:
        return self.fingerprint

    # -- encoding ------------------------------------------------------------------------------
    def _rankable(self, X: Any) -> sp.csr_array:
        csr = sp.csr_array(X)
        if not self.builder.usable.all():
            csr = csr.copy()  # never modify the caller's matrix
            csr.sum_duplicates()
            csr.data[~self.builder.usable[csr.indices]] = 0  # never ranked
        return csr

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
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(kept, out=indptr[1:])
        ones = np.ones(indices.size, dtype=np.float32)
        n_genes = self.gene_sums.shape[0]
        picks = sp.csr_array((ones, indices, indptr), shape=(n_cells, n_genes))
        sums = kernels.weighted_embedding(
            picks, self.table(), normalize=False, n_threads=self.n_threads
        )
        sums[kept > 0] += self.prefix_sum
        return kernels.l2_normalize(sums, n_threads=self.n_threads)

    def _fallback(
        self, csr: sp.csr_array, rows: np.ndarray, out: np.ndarray, row_offset: int
    ) -> None:
        """Cells ``rows`` of ``csr`` embedded by the model from their written sentences."""
        sub = csr[rows]
        sentences, _, _, tokens = self.builder.build_counted(sub, row_offset=row_offset)
        out[rows] = self.embedder.embed(sentences, token_counts=tokens.tolist())
        self.n_fallback += len(rows)

    def encode(self, X: Any, *, row_offset: int = 0, distinct: bool = False) -> StaticChunk:
        """Embed the cells (rows) of ``X`` (rows ``row_offset:`` of a larger matrix, named so in
        errors); with ``distinct``, also a digest of each cell's sentence."""
        csr = self._rankable(X)
        n_cells = csr.shape[0]
        dim = self.gene_sums.shape[1]
        vectors = np.zeros((n_cells, dim), dtype=np.float32)
        kept = np.zeros(n_cells, dtype=np.int64)
        cut = np.zeros(n_cells, dtype=bool)
        digests: list[bytes] = []
        block = max(1, _RANK_BLOCK // self.n_rank)
        for a in range(0, n_cells, block):
            b = min(a + block, n_cells)
            top = kernels.top_genes(
                csr[a:b], self.n_rank, n_threads=self.n_threads, row_offset=row_offset + a
            )
            k, c = self._kept(top)
            kept[a:b], cut[a:b] = k, c
            vectors[a:b] = self._sum(top, k)
            cols = np.arange(top.shape[1])[None, :]
            broken = (self._breaks[top] & (cols < k[:, None])).any(axis=1)
            if broken.any():
                rows = np.flatnonzero(broken)
                sub = vectors[a:b]
                self._fallback(csr[a:b], rows, sub, row_offset + a)
            if distinct:
                digests.extend(
                    hashlib.blake2b(r[:n].tobytes(), digest_size=16).digest()
                    for r, n in zip(top, k.tolist(), strict=True)
                )
        self.n_cells += n_cells
        self.n_cut += int(cut.sum())
        self.n_empty += int((kept == 0).sum())
        return StaticChunk(vectors, kept, cut, digests)

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
