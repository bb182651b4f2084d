"""Genes: one identity layer (symbols, aliases, previous symbols, Ensembl and Entrez IDs, mouse
orthologs). The text that describes each gene is the next layer up, :mod:`genept_fast.text`."""

from __future__ import annotations

from genept_fast.genes.ids import STATUSES, looks_like_ensembl, map_genes
from genept_fast.genes.match import Coverage, match_genes
from genept_fast.genes.resolve import Resolution, resolve

__all__ = [
    "STATUSES",
    "Coverage",
    "Resolution",
    "looks_like_ensembl",
    "map_genes",
    "match_genes",
    "resolve",
]
