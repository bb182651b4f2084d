"""Moved to :mod:`genept_fast.text` (gene text is the step above gene identity).

These names are re-exported for the callers that still import them from here
(``commands/fetch_genept.py``, ``tests/test_cache.py``); the module goes once they import from
:mod:`genept_fast.text`.
"""

from __future__ import annotations

from genept_fast.text import (
    DEFAULT_PROMPT,
    HGNC_SOURCE,
    NCBI_EUTILS_URL,
    SOURCES,
    TEXT_SCHEMA,
    clean_summary,
    default_cache_dir,
    gene_texts,
    hgnc_text,
    read_texts,
    write_texts,
)

__all__ = [
    "DEFAULT_PROMPT",
    "HGNC_SOURCE",
    "NCBI_EUTILS_URL",
    "SOURCES",
    "TEXT_SCHEMA",
    "clean_summary",
    "default_cache_dir",
    "gene_texts",
    "hgnc_text",
    "read_texts",
    "write_texts",
]
