"""The embedder interface and the caching/deduplication logic every embedder shares.

An :class:`Embedder` turns texts into a float32 matrix, one row per text. Subclasses only
implement how a list of distinct, non-empty, uncached texts is embedded (in batches, each
handed back as soon as it is done); :meth:`Embedder.embed` does the rest:

- identical texts are embedded once;
- empty or whitespace-only texts get a zero vector and are never sent (GenePT's convention
  for a gene without text);
- texts already in the :class:`~genept_fast.embed.cache.EmbeddingCache` are read from it,
  and every finished batch is written to it at once, so an interrupted job resumes where it
  stopped and never sends a text twice;
- inputs longer than the model's limit are truncated, counted and reported with a warning.
"""

from __future__ import annotations

import abc
import sys
import warnings
from typing import TYPE_CHECKING

import numpy as np

from genept_fast.embed.cache import text_key
from genept_fast.embed.cost import CostEstimate
from genept_fast.kernels import GeneptError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from genept_fast.embed.cache import EmbeddingCache

__all__ = ["Embedder", "TruncationWarning"]


class TruncationWarning(UserWarning):
    """Some inputs exceeded the model's input limit and were truncated."""


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
        Texts truncated so far by this embedder (cumulative over calls).
    """

    model_id: str
    dimension: int | None
    max_input_tokens: int
    is_paid: bool = False

    def __init__(self, *, cache: EmbeddingCache | None = None) -> None:
        self.cache = cache
        self.n_truncated = 0
        self._call_truncated = 0

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
    ) -> None:
        """Embed distinct non-empty texts, calling ``sink(positions, vectors)`` per batch."""

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

    # -- shared behaviour ----------------------------------------------------------------------
    def _note_truncated(self, n: int) -> None:
        self._call_truncated += n
        self.n_truncated += n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, dimension={self.dimension})"

    def _distinct(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            msg = "texts must be a sequence of strings, not one string"
            raise GeneptError(msg)
        out: dict[str, None] = {}
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                msg = f"texts[{i}] is {type(t).__name__}, expected str"
                raise GeneptError(msg)
            if t.strip():
                out[t] = None
        return list(out)

    def _uncached(self, distinct: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
        if self.cache is None or not distinct:
            return distinct, {}
        keys = [text_key(t) for t in distinct]
        found = self.cache.get(self.cache_namespace, keys)
        hits = {t: found[k] for t, k in zip(distinct, keys, strict=False) if k in found}
        return [t for t in distinct if t not in hits], hits

    def _check_dimension(self, d: int, where: str) -> None:
        if self.dimension is None:
            self.dimension = d
        elif d != self.dimension:
            msg = f"{self.model_id}: {where} vectors of dimension {d}, expected {self.dimension}"
            raise GeneptError(msg)

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embed ``texts``.

        Parameters
        ----------
        texts
            The texts. Duplicates are embedded once; empty ones get a zero vector.
        progress
            Show a progress bar (on stderr) over the texts that must be computed.

        Returns
        -------
        numpy.ndarray
            float32 array of shape ``(len(texts), dimension)``, row ``i`` for ``texts[i]``.
        """
        texts = list(texts) if not isinstance(texts, str) else texts
        distinct = self._distinct(texts)
        todo, vectors = self._uncached(distinct)
        for v in vectors.values():
            self._check_dimension(int(v.shape[0]), "the cache holds")
        self._call_truncated = 0
        if todo:
            self._run(todo, vectors, progress=progress)
        if self._call_truncated:
            msg = (
                f"{self.model_id}: {self._call_truncated} of {len(todo)} texts exceeded the"
                f" {self.max_input_tokens}-token input limit and were truncated"
            )
            warnings.warn(msg, TruncationWarning, stacklevel=2)
        dim = self.dimension or 0
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, t in enumerate(texts):
            row = vectors.get(t)
            if row is not None:
                out[i] = row
        return out

    def _run(self, todo: list[str], vectors: dict[str, np.ndarray], *, progress: bool) -> None:
        from tqdm.auto import tqdm

        cache = self.cache
        namespace = self.cache_namespace if cache is not None else ""
        with tqdm(
            total=len(todo),
            disable=not progress,
            desc=f"embedding ({self.model_id})",
            unit="text",
            file=sys.stderr,
        ) as bar:

            def sink(positions: Sequence[int], batch: np.ndarray) -> None:
                batch = np.asarray(batch, dtype=np.float32)
                if batch.ndim != 2 or batch.shape[0] != len(positions):
                    msg = f"{self.model_id}: got {batch.shape} vectors for {len(positions)} texts"
                    raise GeneptError(msg)
                self._check_dimension(int(batch.shape[1]), "got")
                if cache is not None:
                    cache.put(namespace, [text_key(todo[p]) for p in positions], batch)
                for p, row in zip(positions, batch, strict=False):
                    vectors[todo[p]] = row
                bar.update(len(positions))

            self._embed_uncached(todo, sink)

    def estimate(self, texts: Sequence[str]) -> CostEstimate:
        """What embedding ``texts`` would cost, counting only texts not in the cache.

        Nothing is sent; the cache is only read.
        """
        distinct = self._distinct(texts)
        todo, _ = self._uncached(distinct)
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
