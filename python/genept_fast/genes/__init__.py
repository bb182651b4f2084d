"""Genes: one identity layer (symbols, aliases, previous symbols, Ensembl and Entrez IDs, mouse
orthologs). The text that describes each gene is the next layer up, :mod:`genept_fast.text`."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genept_fast.genes.ids import STATUSES, looks_like_ensembl, map_genes
from genept_fast.genes.match import Coverage, match_genes
from genept_fast.genes.resolve import Resolution, resolve

if TYPE_CHECKING:  # for type checkers only: at run time __getattr__ below finds them
    from genept_fast.text import SOURCES as SOURCES
    from genept_fast.text import gene_texts as gene_texts
    from genept_fast.text import read_texts as read_texts
    from genept_fast.text import write_texts as write_texts

__all__ = [
    "STATUSES",
    "Coverage",
    "Resolution",
    "looks_like_ensembl",
    "map_genes",
    "match_genes",
    "resolve",
]

#: Names of the text layer that the README imports from here (``from genept_fast.genes import
#: gene_texts``). The text layer sits above this one and imports it, so they are looked up on
#: first use rather than imported at load time (which would run an import up the layers).
_TEXT_NAMES = frozenset({"SOURCES", "gene_texts", "read_texts", "write_texts"})


def __getattr__(name: str) -> Any:
    if name in _TEXT_NAMES:
        return getattr(importlib.import_module("genept_fast.text"), name)
    msg = f"module 'genept_fast.genes' has no attribute {name!r}"
    raise AttributeError(msg)
