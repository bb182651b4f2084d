"""The one entry point: :func:`gene_texts` builds a source from its arguments and calls it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from genept_fast.errors import InputError
from genept_fast.text.sources import (
    DEFAULT_LLM_MODEL,
    DEFAULT_PROMPT,
    DEFAULT_TEMPLATE,
    SOURCE_TYPES,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable

    import polars as pl

    from genept_fast.text.base import Source

__all__ = ["SOURCES", "gene_texts", "text_source"]

SOURCES = tuple(SOURCE_TYPES)


def text_source(source: str, **options: Any) -> Source:
    """The source named ``source``, built from the options it takes.

    Options that only other sources take are left alone, so that one set of options (those
    of :func:`gene_texts`, or of the command line) can build any source.

    Parameters
    ----------
    source
        One of :data:`SOURCES`.
    **options
        Options of the sources (see :func:`gene_texts`).

    Raises
    ------
    InputError
        An unknown source, an option no source takes, or a bad option value.
    """
    kind = SOURCE_TYPES.get(source)
    if kind is None:
        msg = f"source must be one of {SOURCES}, got {source!r}"
        raise InputError(msg)
    known = frozenset().union(*(k.option_names() for k in SOURCE_TYPES.values()))
    unknown = sorted(set(options) - known)
    if unknown:
        msg = f"no gene text source takes the option(s) {', '.join(unknown)}"
        raise InputError(msg)
    return kind.from_options(options)


def gene_texts(
    genes: Iterable[object],
    *,
    source: str = "symbol",
    species: str = "human",
    to_human: bool = False,
    cache_dir: str | os.PathLike[str] | bool | None = None,
    refresh: bool = False,
    progress: bool = False,
    # ncbi
    backend: str = "eutils",
    api_key: str | None = None,
    ncbi_url: str | None = None,
    mygene_url: str | None = None,
    batch_size: int = 200,
    template: str = DEFAULT_TEMPLATE,
    fallback: str | None = "hgnc",
    # llm
    model: str = DEFAULT_LLM_MODEL,
    base_url: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    max_workers: int = 4,
    # file
    path: str | os.PathLike[str] | None = None,
    gene_column: str | None = None,
    text_column: str | None = None,
    # network
    timeout: float = 20.0,
    max_retries: int = 4,
    backoff: float = 0.5,
) -> pl.DataFrame:
    """A text for every gene, from one source.

    The same as ``text_source(source, **options).texts(genes)``: each source is a small class
    in :mod:`genept_fast.text.sources` that holds its own options (the ones below that name
    it) and ignores the others.

    Parameters
    ----------
    genes
        Gene symbols, Ensembl IDs, Entrez IDs (any mix), resolved offline first by the gene
        identity layer (see :func:`genept_fast.genes.map_genes` and :mod:`genept_fast.text`).
    source
        ``"symbol"``, ``"hgnc"``, ``"ncbi"``, ``"llm"`` or ``"file"`` (see
        :mod:`genept_fast.text`).
    species, to_human
        The species of the genes; with ``to_human`` mouse genes are looked up by their human
        ortholog.
    cache_dir
        The cache folder (texts land in its database, beside the embeddings); None: see
        :func:`genept_fast.cache.default_cache_dir`; False: no cache. Used by ``ncbi`` and
        ``llm``.
    refresh
        Ignore cached answers (new answers are still cached).
    progress
        Show a tqdm progress bar for network work.
    backend
        ``ncbi`` only: ``"eutils"`` (NCBI E-utilities) or ``"mygene"`` (MyGene.info).
    api_key
        ``ncbi``: an NCBI API key (else ``$NCBI_API_KEY``; raises the rate limit from 3 to 10
        requests/s). ``llm``: the API key (else ``$OPENAI_API_KEY``). Never cached or logged.
    ncbi_url, mygene_url
        Base URLs of the E-utilities and MyGene.info services (for mirrors and tests).
    batch_size
        Genes per network batch for ``ncbi`` (≤ 1000 for MyGene); each finished batch is cached.
    template
        ``ncbi`` text when a summary exists; fields ``{symbol}``, ``{full_name}``, ``{summary}``.
        A gene without a summary gets its full name alone.
    fallback
        ``ncbi`` only: when NCBI (or MyGene.info) cannot be reached at all, the genes without
        an answer get their ``"hgnc"`` text, with a :class:`UserWarning` that says so; None
        raises :class:`~genept_fast.errors.ServiceUnavailableError` instead.
    model, base_url, prompt, system, temperature, max_tokens, max_workers
        ``llm``: chat model, OpenAI-compatible base URL (None: OpenAI), user prompt with a
        ``{gene}`` field, optional system message, sampling options, and concurrent requests.
    path, gene_column, text_column
        ``file``: the table and its columns (guessed when not given).
    timeout, max_retries, backoff
        Per-request timeout in seconds, retries on 429/5xx/timeouts, first backoff in seconds
        (``backoff``: ``ncbi`` only; the ``openai`` client paces ``llm`` retries itself).

    Returns
    -------
    polars.DataFrame
        One row per input gene, in input order: ``gene`` (the input), ``text`` (null when none),
        ``source`` (``symbol``, ``hgnc_name``, ``ncbi_summary``, ``ncbi_full_name``,
        ``llm:<model>``, ``file`` or ``missing``) and ``fetched_at`` (UTC; when the text was
        obtained, cached or not).

    Raises
    ------
    InputError
        Bad arguments.
    genept_fast.errors.ServiceUnavailableError
        The service cannot be reached (offline): raised at once, without retries (for
        ``ncbi`` only with ``fallback=None``).
    genept_fast.errors.ServiceError
        The service kept failing after the retries, or answered an error (the base class of
        the two above and of :class:`~genept_fast.errors.MalformedResponseError`).
    """
    options = {
        "species": species,
        "to_human": to_human,
        "cache_dir": cache_dir,
        "refresh": refresh,
        "progress": progress,
        "backend": backend,
        "api_key": api_key,
        "ncbi_url": ncbi_url,
        "mygene_url": mygene_url,
        "batch_size": batch_size,
        "template": template,
        "fallback": fallback,
        "model": model,
        "base_url": base_url,
        "prompt": prompt,
        "system": system,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "max_workers": max_workers,
        "path": path,
        "gene_column": gene_column,
        "text_column": text_column,
        "timeout": timeout,
        "max_retries": max_retries,
        "backoff": backoff,
    }
    return text_source(source, **options).texts(genes)
