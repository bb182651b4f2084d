"""Genes: one identity layer (symbols, aliases, previous symbols, Ensembl and Entrez IDs, mouse
orthologs). The text that describes each gene is the next layer up, :mod:`genept_fast.text`.

The names below load on first use: importing a submodule (``genept_fast.genes.match``, which
the command line's parser reaches) runs this file first, and :mod:`genept_fast.genes.ids`
loads polars and an HTTP client that matching a table never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Bound here, not on first use: the function shares its name with its submodule, and the
# import system sets ``genes.resolve`` to the submodule whenever that is first imported (the
# import is light: HGNC and polars load on first use)
from genept_fast.genes.resolve import Resolution, resolve

if TYPE_CHECKING:
    from genept_fast.genes.ids import STATUSES, looks_like_ensembl, map_genes
    from genept_fast.genes.match import Coverage, match_genes

__all__ = [
    "STATUSES",
    "Coverage",
    "Resolution",
    "looks_like_ensembl",
    "map_genes",
    "match_genes",
    "resolve",
]

#: Where each name of :data:`__all__` lives.
_HOME = {
    "STATUSES": "ids",
    "looks_like_ensembl": "ids",
    "map_genes": "ids",
    "Coverage": "match",
    "match_genes": "match",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        msg = f"module 'genept_fast.genes' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(f"genept_fast.genes.{home}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
