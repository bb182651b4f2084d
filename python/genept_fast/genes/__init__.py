"""Genes: identifiers (symbols, Ensembl IDs, orthologs) and the text that describes each gene."""

from __future__ import annotations

from genept_fast.genes.ids import STATUSES, looks_like_ensembl, map_genes
from genept_fast.genes.text import SOURCES, gene_texts, read_texts, write_texts

__all__ = [
    "SOURCES",
    "STATUSES",
    "gene_texts",
    "looks_like_ensembl",
    "map_genes",
    "read_texts",
    "write_texts",
]
