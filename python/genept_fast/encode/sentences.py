"""GenePT-s: cells written as sentences of their top genes, and those sentences embedded.

:class:`SentenceBuilder` writes a chunk's sentences, each cut at a gene boundary to fit the
embedder's token limit, with exact token counts; :class:`SentenceEncoder` embeds them, as the
encoder of :func:`genept_fast.stream.encode_file` (:func:`genept_fast.stream.encode_sentences`)
and of :func:`genept_fast.tl.genept_s`.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from genept_fast import kernels
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from genept_fast.embed import Embedder

__all__ = ["SentenceBuilder", "SentenceEncoder", "as_embedder"]


def as_embedder(embedder: Embedder | str) -> Embedder:
    """An :class:`~genept_fast.embed.Embedder`, or the one a spec names
    (:func:`~genept_fast.embed.get_embedder`: ``"local"``, ``"openai:MODEL"``)."""
    # Imported here: the embedders load the cache (sqlite), tokenizers and clients, which a
    # GenePT-w job never needs.
    from genept_fast.embed import Embedder, get_embedder

    emb = get_embedder(embedder) if isinstance(embedder, str) else embedder
    if not isinstance(emb, Embedder):
        msg = f"embedder must be an Embedder or a spec string, got {type(embedder).__name__}"
        raise InputError(msg)
    return emb


#: Most ``cells × ranked genes`` entries ranked at once while building sentences (bounds memory).
_RANK_BLOCK = 1 << 22


class SentenceBuilder:
    """GenePT-s sentences of cells, each cut at a gene boundary to fit a token limit.

    A cell's expressed genes (strictly positive values, ranked by :func:`genept_fast.top_genes`:
    descending value, ties by gene order) are written after ``prefix`` and joined by ``sep``,
    up to ``top_n`` genes and as many as fit ``max_input_tokens`` as the embedder counts them.

    Token counts are exact. Where the embedder's tokenizer ends its tokens at ``sep`` after a
    gene (:meth:`~genept_fast.embed.Embedder.splits_after`: OpenAI's ``cl100k_base`` for
    whitespace-free symbols and a space, the local WordPiece model for any symbol and
    whitespace), a sentence costs the tokens of ``prefix + first gene`` plus, for each further
    gene, those of ``sep + name``: every symbol is tokenized once, never a sentence. A cell
    whose sentence would hold another gene (a symbol with a space in it, another separator, a
    tokenizer that claims nothing) is counted on whole sentences instead, searching for the
    most genes that fit (assuming a longer sentence never has fewer tokens). A cell with no
    usable expressed gene gets the empty sentence, which every embedder maps to a zero vector.

    Parameters
    ----------
    embedder
        Counts the tokens (its :meth:`~genept_fast.embed.Embedder.count_tokens`).
    symbols
        One gene symbol per column of the matrices to encode; an empty symbol is never used.
    top_n
        Most genes per sentence (default: as many as fit).
    prefix, sep
        Sentence prefix and gene separator.
    max_input_tokens
        Token limit of a sentence (default and maximum: ``embedder.max_input_tokens``).
    n_threads
        Threads for the ranking kernel.
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
    ) -> None:
        if top_n is not None and (
            isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1
        ):
            msg = f"top_n must be a positive integer or None, got {top_n!r}"
            raise InputError(msg)
        limit = int(embedder.max_input_tokens)
        if max_input_tokens is not None:
            if isinstance(max_input_tokens, bool) or int(max_input_tokens) < 1:
                msg = f"max_input_tokens must be a positive integer, got {max_input_tokens!r}"
                raise InputError(msg)
            limit = min(limit, int(max_input_tokens))
        if not isinstance(prefix, str) or not isinstance(sep, str):
            msg = "prefix and sep must be strings"
            raise InputError(msg)
        if not sep:
            msg = "sep must not be empty (gene names would run together)"
            raise InputError(msg)
        self.embedder = embedder
        self.symbols = [str(g) for g in symbols]
        self.usable = np.array([bool(g.strip()) for g in self.symbols], dtype=bool)
        self.top_n = None if top_n is None else int(top_n)
        self.prefix, self.sep, self.n_threads = prefix, sep, n_threads
        self.max_input_tokens = limit
        base, self.prefix_tokens = (int(c) for c in embedder.count_tokens(["", prefix]))
        if self.prefix_tokens >= limit:
            msg = (
                f"the prefix alone takes {self.prefix_tokens} of the {limit} tokens allowed;"
                " shorten it or raise max_input_tokens"
            )
            raise InputError(msg)
        names = [g if u else "" for g, u in zip(self.symbols, self.usable, strict=True)]
        counts = embedder.count_tokens([f"{sep}{g}" for g in names] + [prefix + g for g in names])
        n = len(names)
        #: tokens gene j adds after another gene, and as the first gene after the prefix
        self.gene_tokens = np.asarray(counts[:n], dtype=np.int64) - base
        self.first_tokens = np.asarray(counts[n:], dtype=np.int64) - self.prefix_tokens
        #: genes whose tokens end at the separator after them (counts add up over them)
        self.splits = np.asarray(embedder.splits_after(names, sep), dtype=bool).reshape(n)
        self.splits &= self.gene_tokens >= 0
        # The same as tables indexed by ranked genes, with an entry for the padding (-1) last.
        self._cost = np.append(self.gene_tokens, 0).astype(np.int32)
        self._first_cost = np.append(self.first_tokens, 0).astype(np.int32)
        self._breaks = np.append(~self.splits, False)
        self._any_breaks = bool(self._breaks.any())
        #: no gene after the first costs a negative number of tokens: running totals only grow
        self._monotone = bool((self._cost >= 0).all())
        budget = limit - self.prefix_tokens
        n_usable = int(self.usable.sum())
        cap = budget + 1  # every gene but possibly the first costs at least one token
        want = self.top_n if self.top_n is not None else cap
        #: genes ranked per cell
        self.n_rank = max(1, min(want, cap, n_usable))
        #: ``top_n`` as it acts: no sentence holds more genes than there are columns (``None``:
        #: no limit but the tokens). What the provenance records (a huge ``top_n`` would not
        #: fit an HDF5 integer).
        self.effective_top_n = None if self.top_n is None else min(self.top_n, n)
        self._budget = budget

    def build(self, X: Any, *, row_offset: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Sentences of the cells (rows) of ``X`` (rows ``row_offset:`` of a larger matrix).

        Returns
        -------
        sentences : list of str
            One per cell (``""`` for a cell without usable expressed genes).
        n_genes : numpy.ndarray
            int64, genes in each sentence.
        cut : numpy.ndarray
            bool, whether the token limit (not ``top_n`` or the cell's expressed genes) ended
            the sentence.
        """
        sentences, kept, cut, _ = self.build_counted(X, row_offset=row_offset)
        return sentences, kept, cut

    def build_counted(
        self, X: Any, *, row_offset: int = 0
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`build`, and the tokens of each sentence.

        Returns
        -------
        sentences, n_genes, cut
            As for :meth:`build`.
        tokens : numpy.ndarray
            int64, :meth:`~genept_fast.embed.Embedder.count_tokens` of each sentence (0 for
            ``""``), to hand to :meth:`~genept_fast.embed.Embedder.embed` as ``token_counts``.
        """
        csr = sp.csr_array(X)
        if not (self.usable.all() and csr.has_canonical_format):
            csr = csr.copy()  # never modify the caller's matrix
            csr.sum_duplicates()
            csr.data[~self.usable[csr.indices]] = 0  # never ranked: top_genes needs value > 0
        n_cells, n_genes = csr.shape
        indptr = csr.indptr.astype(np.int64)
        # rankable genes per cell: the stored values less those that are not positive (few)
        unranked = np.flatnonzero(~(csr.data > 0))
        positive = np.diff(indptr) - np.bincount(
            np.searchsorted(indptr, unranked, side="right") - 1, minlength=n_cells
        )
        kept = np.zeros(n_cells, dtype=np.int64)
        tokens = np.zeros(n_cells, dtype=np.int64)
        sentences: list[str] = []
        block = max(1, _RANK_BLOCK // self.n_rank)
        for a in range(0, n_cells, block):
            b = min(a + block, n_cells)
            s, e = int(indptr[a]), int(indptr[b])
            rows = sp.csr_array(  # a view of the block's rows (csr[a:b] would copy them)
                (csr.data[s:e], csr.indices[s:e], indptr[a : b + 1] - s), shape=(b - a, n_genes)
            )
            top = kernels.top_genes(
                rows, self.n_rank, n_threads=self.n_threads, row_offset=row_offset + a
            )
            k, t = self._fit(top)
            kept[a:b], tokens[a:b] = k, t
            sentences.extend(self._join(top, k))
        wanted = positive if self.top_n is None else np.minimum(positive, min(self.top_n, n_genes))
        return sentences, kept, kept < wanted, tokens

    def _fit(self, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Genes that fit in each cell's sentence, and the sentence's tokens.

        ``top`` holds each cell's ranked genes, padded with -1 after them (``top_genes``).
        """
        n_valid = (top >= 0).sum(axis=1)
        cost = np.take(self._cost, top)  # index -1 (padding) reads the 0 appended to the table
        cost[:, 0] = np.take(self._first_cost, top[:, 0])
        k = n_valid.copy()
        last = cost.sum(axis=1, dtype=np.int32)  # every gene fits: the tokens of all
        # With no negative cost after the first gene the running total only grows, so a cell
        # whose total is within the budget keeps every gene; the others are cut where their
        # running total first goes over it (each cell, when a cost may be negative).
        over = np.flatnonzero(last > self._budget) if self._monotone else np.arange(len(top))
        if over.size:
            total = np.cumsum(cost[over], axis=1, dtype=np.int32)  # int32: 5x faster than int64
            past = total > self._budget
            cut = np.where(past.any(axis=1), past.argmax(axis=1), top.shape[1])
            k[over] = np.minimum(cut, n_valid[over])
            last[over] = np.take_along_axis(total, np.maximum(k[over] - 1, 0)[:, None], axis=1)[
                :, 0
            ]
        tokens = np.where(k > 0, self.prefix_tokens + last.astype(np.int64), 0)
        # The counts of the sentences with k and k + 1 genes add up when each of the first k
        # genes that another gene follows ends its tokens at the separator.
        if not self._any_breaks:
            return k, tokens
        breaks = np.take(self._breaks, top)
        first_break = np.where(breaks.any(axis=1), breaks.argmax(axis=1), top.shape[1])
        whole = np.flatnonzero(first_break < np.minimum(k, n_valid - 1))
        if whole.size:
            top = top.astype(np.int64)
            k[whole], tokens[whole] = self._fit_whole(top[whole], n_valid[whole], k[whole])
        return k, tokens

    def _fit_whole(
        self, top: np.ndarray, n_valid: np.ndarray, guess: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Most genes of each row of ``top`` whose whole sentence fits, by exact counts.

        A search per cell between a known fit (``lo``, at first no gene) and a known miss
        (``hi``, at first one past the ranked genes), every round counting one or two
        sentences of each unsettled cell in one :meth:`count_tokens` call; the first round
        tries the additive guess and one gene more, which settles most cells.
        """
        n = top.shape[0]
        lo = np.zeros(n, dtype=np.int64)
        lo_tokens = np.zeros(n, dtype=np.int64)
        hi = n_valid.astype(np.int64) + 1
        guess = np.clip(guess, 1, np.maximum(n_valid, 1))
        probes = [guess, guess + 1]
        while True:
            asks: list[tuple[int, int]] = []
            for probe in probes:
                asks.extend((int(i), int(j)) for i, j in enumerate(probe) if lo[i] < j < hi[i])
            asks = list(dict.fromkeys(asks))
            if not asks:
                break
            texts = [
                self.prefix + self.sep.join(self.symbols[g] for g in top[i, :j]) for i, j in asks
            ]
            for (i, j), c in zip(asks, self.embedder.count_tokens(texts), strict=True):
                if c <= self.max_input_tokens:
                    if j > lo[i]:
                        lo[i], lo_tokens[i] = j, c
                elif j < hi[i]:
                    hi[i] = j
            probes = [(lo + hi) // 2]
        return lo, lo_tokens

    def _join(self, top: np.ndarray, kept: np.ndarray) -> list[str]:
        """``prefix`` + the first ``kept[i]`` genes of ``top[i]``, by the Rust sentence kernel."""
        n_cells = top.shape[0]
        width = int(kept.max()) if n_cells else 0
        if width == 0:
            return [""] * n_cells
        cols = np.arange(width)
        ranked = np.where(cols[None, :] < kept[:, None], top[:, :width], -1)
        out = kernels.sentences_from_top(
            ranked, self.symbols, prefix=self.prefix, sep=self.sep, n_threads=self.n_threads
        )
        return [s if k else "" for s, k in zip(out, kept.tolist(), strict=True)]


class SentenceEncoder:
    """GenePT-s as a streaming encoder: a chunk's sentences, embedded by a text model.

    The sentences are those of :func:`genept_fast.tl.genept_s` (a :class:`SentenceBuilder`),
    counted gene by gene and handed to the embedder
    with their token counts, so no sentence is tokenized again; ``n_cells``, ``n_cut`` and
    ``n_empty`` count, over the chunks encoded by this object, the cells, the sentences cut at
    the token limit and the cells without a usable expressed gene (zero vectors). With
    ``progress``, a bar under the stream's shows each chunk's sentences as every request
    (or, locally, every forward pass) finishes.
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
        self.n_cells = self.n_cut = self.n_empty = 0
        self.fingerprint = json.dumps(
            [
                "genept-s",
                embedder.model_id,
                embedder.cache_namespace,
                top_n,
                prefix,
                sep,
                self.builder.max_input_tokens,
                hashlib.blake2b(
                    "\n".join(self.builder.symbols).encode(), digest_size=16
                ).hexdigest(),
            ],
            separators=(",", ":"),
        )

    def sentences(self, X: sp.csr_array, *, row_offset: int = 0) -> list[str]:
        return self.counted_sentences(X, row_offset=row_offset)[0]

    def counted_sentences(
        self, X: sp.csr_array, *, row_offset: int = 0
    ) -> tuple[list[str], list[int]]:
        """The chunk's sentences and their token counts (and the counters updated); ``X`` is
        rows ``row_offset:`` of the whole matrix (errors name cells there)."""
        out, kept, cut, tokens = self.builder.build_counted(X, row_offset=row_offset)
        self.n_cells += len(out)
        self.n_cut += int(cut.sum())
        self.n_empty += int((kept == 0).sum())
        return out, tokens.tolist()

    def __call__(self, X: sp.csr_array, *, row_offset: int = 0) -> np.ndarray:
        """The embeddings of the sentences of ``X``'s cells (rows ``row_offset:`` of the whole
        matrix), float32 ``(cells, D)``."""
        sentences, tokens = self.counted_sentences(X, row_offset=row_offset)
        if not self.progress:
            return self.embed(sentences, tokens)
        from genept_fast._progress import progress as progress_meter

        bars: list[Any] = []

        def advance(done: int, total: int) -> None:
            if not bars:
                bars.append(
                    progress_meter(
                        total, desc="  sentences of this chunk", unit="sentence", leave=False
                    )
                )
            bars[0].update(done - bars[0].n)

        try:
            return self.embed(sentences, tokens, on_progress=advance)
        finally:
            for bar in bars:
                bar.close()

    def embed(self, sentences: list[str], tokens: list[int], **options: Any) -> np.ndarray:
        """Embed ``sentences`` with their token counts (no sentence is tokenized again), as
        float32; ``options`` (``progress``, ``on_progress``) go to the embedder."""
        vectors = self.embedder.embed(sentences, token_counts=tokens, **options)
        return np.asarray(vectors, dtype=np.float32)
