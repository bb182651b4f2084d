"""Moved to :mod:`genept_fast.text` (gene text is the layer above gene identity).

The old names resolve here, on first use, for the callers that still import them from this
module (``commands/fetch_genept.py``, ``tests/test_cache.py``). Looked up rather than imported,
so that loading this module runs no import up the layers; the module goes once those callers
import from :mod:`genept_fast.text`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers only: at run time __getattr__ below finds them
    from genept_fast.text import DEFAULT_PROMPT as DEFAULT_PROMPT
    from genept_fast.text import HGNC_SOURCE as HGNC_SOURCE
    from genept_fast.text import NCBI_EUTILS_URL as NCBI_EUTILS_URL
    from genept_fast.text import SOURCES as SOURCES
    from genept_fast.text import TEXT_SCHEMA as TEXT_SCHEMA
    from genept_fast.text import clean_summary as clean_summary
    from genept_fast.text import default_cache_dir as default_cache_dir
    from genept_fast.text import gene_texts as gene_texts
    from genept_fast.text import hgnc_text as hgnc_text
    from genept_fast.text import read_texts as read_texts
    from genept_fast.text import write_texts as write_texts

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


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("genept_fast.text"), name)
    msg = f"module 'genept_fast.genes.text' has no attribute {name!r}"
    raise AttributeError(msg)
