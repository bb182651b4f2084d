"""Network sources: answers cached as each batch arrives, so a rerun asks only for what is missing.

Texts are stored in the cache database (:mod:`genept_fast.cache`, shared with the embeddings)
under the source's :meth:`~genept_fast.text.base.Source.describe` (never an API key). The
JSON-lines files of earlier versions (``<cache>/text/*.jsonl``) are read on first use and left
in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast._progress import progress as progress_meter
from genept_fast.cache import Cache, TextRecord, text_namespace
from genept_fast.text.base import Query, Row, Source, now

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Mapping, Sequence

__all__ = ["CachedSource", "TextCache"]


class TextCache:
    """The cached texts of one source and its parameters, in the one cache database
    (:class:`genept_fast.cache.Cache`); ``cache=None`` keeps them in memory only.

    ``entries`` holds every cached record by gene key; :meth:`add` commits a batch at once.
    """

    def __init__(self, cache: Cache | None, params: Mapping[str, object]) -> None:
        self.cache = cache
        self.namespace = text_namespace(params)
        self.entries: dict[str, TextRecord] = {}
        self._lock = threading.Lock()
        if cache is not None:
            self.entries = cache.get_texts(self.namespace)

    @classmethod
    def open(
        cls, cache_dir: str | os.PathLike[str] | bool | None, params: Mapping[str, object]
    ) -> TextCache:
        if cache_dir is False:
            return cls(None, params)
        folder = None if cache_dir in (None, True) else Path(cache_dir)  # type: ignore[arg-type]
        cache = Cache(folder)
        # Versions before the database kept each source's texts in a JSON-lines file.
        digest = hashlib.sha256(text_namespace(params).encode()).hexdigest()[:20]
        cache.import_text_file(
            text_namespace(params), cache.directory / "text" / f"{params['source']}-{digest}.jsonl"
        )
        return cls(cache, params)

    def add(self, records: Iterable[tuple[str, str | None, str]]) -> None:
        when = now()
        records = list(records)
        with self._lock:
            for key, text, source in records:
                self.entries[key] = (text, source, when)
        if self.cache is not None and records:
            self.cache.put_texts(self.namespace, records, when)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CachedSource(Source):
    """A source whose answers come from a service and are cached.

    A subclass implements :meth:`fetch` (ask the service for ``todo`` and add each finished
    batch to the cache); :meth:`describe` is the cache namespace, so it must hold every
    parameter that changes an answer.

    Parameters
    ----------
    cache_dir
        The cache folder (texts land in its database, beside the embeddings); None: see
        :func:`genept_fast.cache.default_cache_dir`; False: no cache.
    refresh
        Ignore cached answers (new answers are still cached).
    progress
        Show progress: a bar on a terminal, a line about every 10 s in a log
        (:mod:`genept_fast._progress`).
    timeout, max_retries
        Per-request timeout in seconds and retries on 429/5xx/timeouts.
    """

    cache_dir: str | os.PathLike[str] | bool | None = None
    refresh: bool = False
    progress: bool = False
    timeout: float = 20.0
    max_retries: int = 4

    def rows(self, query: Query) -> list[Row]:
        cache = self.open_cache()
        self.fill(cache, query)
        return self.assemble(query, cache)

    def open_cache(self) -> TextCache:
        return TextCache.open(self.cache_dir, self.describe())

    def fill(self, cache: TextCache, query: Query) -> None:
        """Fetch every key of ``query`` the cache has no answer for (all with ``refresh``)."""
        todo = list(
            dict.fromkeys(k for k in query.keys if k and (self.refresh or k not in cache.entries))
        )
        if not todo:
            return
        with progress_meter(
            len(todo), desc=f"gene text ({self.name})", unit="gene", disable=not self.progress
        ) as bar:
            self.fetch(todo, cache, bar)

    @abstractmethod
    def fetch(self, todo: Sequence[str], cache: TextCache, progress: Any) -> None:
        """Ask the service about ``todo``; add each answer to ``cache`` as it arrives and
        advance ``progress`` (see :func:`genept_fast._progress.progress`) by the genes done."""

    @staticmethod
    def assemble(
        query: Query, cache: TextCache, fallback: Sequence[Row] | None = None
    ) -> list[Row]:
        """The cached answer of each gene, else its ``fallback`` row, else ``missing``."""
        rows: list[Row] = []
        for i, (g, k) in enumerate(zip(query.raw, query.keys, strict=True)):
            if k and k in cache.entries:
                text, src, when = cache.entries[k]
                rows.append((g, text, src, when))
            elif fallback is not None:
                rows.append(fallback[i])
            else:
                rows.append((g, None, "missing", query.when))
        return rows
