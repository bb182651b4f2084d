"""The embedder interface and the caching/deduplication logic every embedder shares.

An :class:`Embedder` turns texts into a float32 matrix, one row per text. Subclasses only
implement how a list of distinct, non-empty, uncached texts is embedded (in batches, each
handed back as soon as it is done); :meth:`Embedder.embed` does the rest:

- identical texts are embedded once;
- empty or whitespace-only texts get a zero vector and are never sent (GenePT's convention
  for a gene without text); so a zero vector is never taken for a text: a batch in which the
  model gives one (or a NaN or an infinity, or vectors of no dimension) is refused, nothing of
  it stored or cached (:meth:`Embedder._vectors_error` says with which exception);
- texts already in the :class:`~genept_fast.embed.cache.EmbeddingCache` are read from it,
  and every finished batch is written to it as it arrives (by a writer thread, while the next
  requests go on; at most two batches wait, and all are stored before :meth:`Embedder.embed`
  returns or raises), so an interrupted job resumes where it stopped and never sends a text
  twice;
- inputs longer than the model's limit are truncated, counted and reported with a warning
  (cached ones too, so a rerun reports what the first run did);
- each text is hashed once and counted once (or not at all, when the caller passes the counts
  it already knows).
"""

from __future__ import annotations

import abc
import queue
import threading
import warnings
from typing import TYPE_CHECKING

import numpy as np

from genept_fast.embed.cache import text_key
from genept_fast.embed.cost import CostEstimate
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from genept_fast.embed.cache import EmbeddingCache
    from genept_fast.errors import GeneptError

__all__ = ["Embedder", "TruncationWarning"]


class TruncationWarning(UserWarning):
    """Some inputs exceeded the model's input limit and were truncated."""


class _CacheWriter:
    """Stores finished batches in the cache from a thread of its own, in arrival order.

    The SQLite commit of a batch (~2 ms for 32 vectors of 1536, more on a busy disk) runs
    while the caller goes on sending requests and parsing answers (SQLite releases the GIL),
    instead of holding up the next request. At most :attr:`MAX_WAITING` batches wait to be
    written, so a ``kill -9`` loses at most those besides the requests in flight; everything
    handed over is stored before :meth:`close` returns. A failed write (a full disk) is
    raised by the next :meth:`put` or by :meth:`close`, and nothing after it is written.
    """

    MAX_WAITING = 2

    def __init__(self, cache: EmbeddingCache, namespace: str) -> None:
        self.cache, self.namespace = cache, namespace
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[list[bytes], np.ndarray] | None] = queue.Queue(
            self.MAX_WAITING
        )
        self._thread = threading.Thread(target=self._run, name="genept-cache-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self.cache.put(self.namespace, *item)
                except BaseException as exc:
                    self.error = exc

    def put(self, keys: list[bytes], vectors: np.ndarray) -> None:
        """Hand over one batch (waits while :attr:`MAX_WAITING` are waiting)."""
        self._raise()
        self._queue.put((keys, vectors))

    def close(self, *, check: bool = True) -> None:
        """Wait until every batch handed over is written; raise a failed write's error."""
        self._queue.put(None)
        self._thread.join()
        if check:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


class Embedder(abc.ABC):
    """Base class of text embedders.

    Attributes
    ----------
    model_id
        ``"<provider>:<model>"``, e.g. ``"local:all-MiniLM-L6-v2-int8"`` or
        ``"openai:text-embedding-3-small"``; recorded in every table made with it.
    dimension
        Length of the vectors, or ``None`` until the first response of a server whose model
        is unknown.
    max_input_tokens
        Inputs longer than this are truncated (with a warning).
    is_paid
        Whether embedding costs money (the CLI prints an estimate before paid work).
    cache
        The content-addressed cache, or ``None`` when caching is off.
    n_truncated
        Distinct texts over the input limit in the calls of :meth:`embed` so far (cumulative
        over calls; counted whether their vectors came from the model or the cache).
    """

    model_id: str
    dimension: int | None
    max_input_tokens: int
    is_paid: bool = False

    def __init__(self, *, cache: EmbeddingCache | None = None) -> None:
        self.cache = cache
        self.n_truncated = 0

    # -- to implement --------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def cache_namespace(self) -> str:
        """Cache namespace: provider, model and dimension (never credentials)."""

    @abc.abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text as the model counts them (before truncation)."""

    @abc.abstractmethod
    def _embed_uncached(
        self,
        texts: list[str],
        sink: Callable[[Sequence[int], np.ndarray], None],
        *,
        token_counts: Sequence[int],
    ) -> None:
        """Embed distinct non-empty texts, calling ``sink(positions, vectors)`` per batch.

        ``token_counts`` holds :meth:`_input_tokens` of each text (texts over
        ``max_input_tokens`` must be truncated; the base class has counted them already).
        """

    @abc.abstractmethod
    def _plan(self, token_counts: list[int]) -> tuple[int, float]:
        """(number of requests, expected seconds) to embed texts of these token counts."""

    def price_usd(self, tokens: int) -> float:
        """Price of ``tokens`` input tokens (0 unless the provider charges)."""
        return 0.0

    @property
    def tokens_exact(self) -> bool:
        """Whether :meth:`count_tokens` uses the model's own tokenizer."""
        return True

    def _input_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes as input: exact, or an upper bound where counts are estimates."""
        return self.count_tokens(texts)

    def splits_after(self, words: Sequence[str], sep: str) -> list[bool]:
        """Whether each word, followed by ``sep`` and more text, ends its tokens there.

        Where it does, :meth:`count_tokens` of ``head + word + sep + tail`` is that of
        ``head + word`` plus that of ``sep + tail`` (less the tokens of ``""``, such as
        ``[CLS]``/``[SEP]``), so GenePT-s sentences can be counted gene by gene
        (:class:`~genept_fast.encode.SentenceBuilder`). The default claims it for no word: texts
        are then counted whole. A subclass that claims it must hold to it exactly.
        """
        return [False] * len(words)

    # -- shared behaviour ----------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, dimension={self.dimension})"

    def _distinct(
        self, texts: Sequence[str], token_counts: Sequence[int] | None = None
    ) -> tuple[list[str], list[int] | None]:
        """Distinct non-empty texts, and their counts from ``token_counts`` when given."""
        if isinstance(texts, str):
            msg = "texts must be a sequence of strings, not one string"
            raise InputError(msg)
        if token_counts is not None and len(token_counts) != len(texts):
            msg = f"token_counts has {len(token_counts)} entries for {len(texts)} texts"
            raise InputError(msg)
        out: dict[str, int] = {}
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                msg = f"texts[{i}] is {type(t).__name__}, expected str"
                raise InputError(msg)
            if t not in out and t.strip():
                out[t] = -1 if token_counts is None else int(token_counts[i])
        return list(out), None if token_counts is None else list(out.values())

    def _uncached(
        self, distinct: list[str], keys: list[bytes] | None
    ) -> tuple[list[int], dict[str, np.ndarray]]:
        """Positions in ``distinct`` of the texts not in the cache, and the cached vectors."""
        if self.cache is None or keys is None or not distinct:
            return list(range(len(distinct))), {}
        found = self.cache.get(self.cache_namespace, keys)
        hits: dict[str, np.ndarray] = {}
        todo: list[int] = []
        for i, (t, k) in enumerate(zip(distinct, keys, strict=True)):
            v = found.get(k)
            if v is None:
                todo.append(i)
            else:
                hits[t] = v
        return todo, hits

    def _vectors_error(self, message: str) -> GeneptError:
        """The exception for vectors the model should never give (``message`` says what).

        An :class:`~genept_fast.errors.InputError` here (the model the user chose gave them);
        an embedder whose vectors come from a server answers a
        :class:`~genept_fast.errors.MalformedResponseError`.
        """
        return InputError(message)

    def _check_dimension(self, d: int, where: str) -> None:
        if self.dimension is None:
            self.dimension = d
        elif d != self.dimension:
            msg = f"{self.model_id}: {where} vectors of dimension {d}, expected {self.dimension}"
            raise InputError(msg)

    def _check_batch(self, batch: np.ndarray, n: int) -> None:
        """Refuse a batch of ``n`` vectors that is not ``n`` finite, non-zero rows of the
        embedder's dimension."""
        if batch.ndim != 2 or batch.shape[0] != n:
            msg = f"{self.model_id}: got {batch.shape} vectors for {n} texts"
            raise InputError(msg)
        if batch.shape[1] == 0:
            msg = f"{self.model_id}: got vectors of dimension 0 for {n} texts"
            raise self._vectors_error(msg)
        zero = int(np.count_nonzero(~batch.any(axis=1)))
        nonfinite = int(np.count_nonzero(~np.isfinite(batch).all(axis=1)))
        if zero or nonfinite:
            parts = [f"{zero} are all zeros"] if zero else []
            parts += [f"{nonfinite} hold NaN or infinity"] if nonfinite else []
            msg = (
                f"{self.model_id}: of {n} vectors, {' and '.join(parts)}; a zero vector marks a"
                " text without embedding, so none of these is stored"
            )
            raise self._vectors_error(msg)
        d = int(batch.shape[1])
        if self.dimension is not None and d != self.dimension:
            msg = f"{self.model_id}: got vectors of dimension {d}, expected {self.dimension}"
            raise self._vectors_error(msg)
        self.dimension = d

    def embed(
        self,
        texts: Sequence[str],
        *,
        progress: bool = False,
        token_counts: Sequence[int] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts``.

        Parameters
        ----------
        texts
            The texts. Duplicates are embedded once; empty ones get a zero vector.
        progress
            Show a progress bar (on stderr) over the texts that must be computed.
        token_counts
            :meth:`count_tokens` of each text, when the caller knows them already (GenePT-s
            sentences are counted gene by gene); then no text is tokenized again to check it
            against the input limit or to pack requests. Used only where counts are exact
            (:attr:`tokens_exact`).
        on_progress
            Called as ``on_progress(done, total)`` with the texts computed so far out of those
            to compute: once before the first batch, then after every finished batch.

        Returns
        -------
        numpy.ndarray
            float32 array of shape ``(len(texts), dimension)``, row ``i`` for ``texts[i]``.

        Notes
        -----
        Texts over :attr:`max_input_tokens` are counted in :attr:`n_truncated` and reported in
        a :class:`TruncationWarning` whether their vectors come from the model or the cache,
        so a rerun records the same provenance as the first run.
        """
        texts = list(texts) if not isinstance(texts, str) else texts
        distinct, counts = self._distinct(texts, token_counts)
        if counts is None or not self.tokens_exact:
            counts = self._input_tokens(distinct) if distinct else []
        limit = self.max_input_tokens
        n_over = sum(c > limit for c in counts)
        self.n_truncated += n_over
        keys = [text_key(t) for t in distinct] if self.cache is not None else None
        todo, vectors = self._uncached(distinct, keys)
        for v in vectors.values():
            self._check_dimension(int(v.shape[0]), "the cache holds")
        if on_progress is not None:
            on_progress(0, len(todo))
        if todo:
            self._run(
                [distinct[i] for i in todo],
                None if keys is None else [keys[i] for i in todo],
                [counts[i] for i in todo],
                vectors,
                progress=progress,
                on_progress=on_progress,
            )
        if n_over:
            msg = (
                f"{self.model_id}: {n_over} of {len(distinct)} texts exceeded the"
                f" {limit}-token input limit and were truncated"
            )
            warnings.warn(msg, TruncationWarning, stacklevel=2)
        dim = self.dimension or 0
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, t in enumerate(texts):
            row = vectors.get(t)
            if row is not None:
                out[i] = row
        return out

    def _run(
        self,
        todo: list[str],
        keys: list[bytes] | None,
        counts: list[int],
        vectors: dict[str, np.ndarray],
        *,
        progress: bool,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        from genept_fast._progress import progress as progress_meter

        writer = (
            _CacheWriter(self.cache, self.cache_namespace)
            if self.cache is not None and keys is not None
            else None
        )
        done = [0]
        try:
            with progress_meter(
                len(todo), disable=not progress, desc=f"embedding ({self.model_id})", unit="text"
            ) as bar:

                def sink(positions: Sequence[int], batch: np.ndarray) -> None:
                    with np.errstate(over="ignore"):  # a float64 past float32 becomes inf
                        batch = np.asarray(batch, dtype=np.float32)
                    self._check_batch(batch, len(positions))
                    if writer is not None and keys is not None:
                        writer.put([keys[p] for p in positions], batch)
                    for p, row in zip(positions, batch, strict=False):
                        vectors[todo[p]] = row
                    bar.update(len(positions))
                    done[0] += len(positions)
                    if on_progress is not None:
                        on_progress(done[0], len(todo))

                self._embed_uncached(todo, sink, token_counts=counts)
        except BaseException:
            if writer is not None:
                writer.close(check=False)  # what arrived is stored; the first error is raised
            raise
        if writer is not None:
            writer.close()

    def estimate(
        self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None
    ) -> CostEstimate:
        """What embedding ``texts`` would cost, counting only texts not in the cache.

        Nothing is sent; the cache is only read. ``token_counts`` as for :meth:`embed`.
        """
        distinct, known = self._distinct(texts, token_counts)
        keys = [text_key(t) for t in distinct] if self.cache is not None else None
        todo_pos, _ = self._uncached(distinct, keys)
        todo = [distinct[i] for i in todo_pos]
        if known is not None and self.tokens_exact:
            counts = [known[i] for i in todo_pos]
        else:
            counts = self.count_tokens(todo)
        limit = self.max_input_tokens
        tokens = sum(min(c, limit) for c in counts)
        n_requests, seconds = self._plan([min(c, limit) for c in counts])
        return CostEstimate(
            model_id=self.model_id,
            n_texts=len(distinct),
            n_uncached=len(todo),
            tokens=tokens,
            usd=self.price_usd(tokens),
            seconds=seconds,
            n_requests=n_requests,
            n_truncated=sum(c > limit for c in counts),
            exact_tokens=self.tokens_exact,
        )
