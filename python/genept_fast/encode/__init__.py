"""From a cells × genes matrix to cell embeddings: the one place every path goes through.

``tl`` (AnnData in memory or backed), the streaming pipeline (:mod:`genept_fast.stream`), Dask
(:mod:`genept_fast.dask`) and the ``genept-fast encode`` command all

- match the dataset's genes to a gene-embedding table through the gene identity layer
  (:func:`match_table`: table rows in use, the kernel's gene index, coverage) or find the
  symbols GenePT-s writes (:func:`resolve_gene_symbols`);
- encode chunks of cells with :class:`WeightedEncoder` (GenePT-w) or :class:`SentenceBuilder` /
  :class:`SentenceEncoder` (GenePT-s);
- record what they did in one provenance record (:func:`weighted_record`,
  :func:`sentence_record`).
"""

from __future__ import annotations

from genept_fast.encode.genes import (
    TableMatch,
    compact_table,
    load_table,
    match_table,
    resolve_gene_symbols,
)
from genept_fast.encode.provenance import sentence_record, weighted_record
from genept_fast.encode.sentences import SentenceBuilder, SentenceEncoder, as_embedder
from genept_fast.encode.weighted import WeightedEncoder

__all__ = [
    "SentenceBuilder",
    "SentenceEncoder",
    "TableMatch",
    "WeightedEncoder",
    "as_embedder",
    "compact_table",
    "load_table",
    "match_table",
    "resolve_gene_symbols",
    "sentence_record",
    "weighted_record",
]
