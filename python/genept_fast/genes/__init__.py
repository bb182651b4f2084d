"""Genes: one identity layer (symbols, aliases, previous symbols, Ensembl and Entrez IDs, mouse
orthologs) and the text that describes each gene."""

from __future__ import annotations

from genept_fast.genes.ids import STATUSES, looks_like_ensembl, map_genes
from genept_fast.genes.match import Coverage, match_genes
from genept_fast.genes.resolve import Resolution, resolve
from genept_fast.genes.text import SOURCES, gene_texts, read_texts, write_texts

__all__ = [
    "SOURCES",
    "STATUSES",
    "Coverage",
    "Resolution",
    "gene_texts",
    "looks_like_ensembl",
    "map_genes",
    "match_genes",
    "read_texts",
    "resolve",
    "write_texts",
]
