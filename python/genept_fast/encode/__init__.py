"""From a cells × genes matrix to cell embeddings: the one place every path goes through.

``tl`` (AnnData in memory or backed), the streaming pipeline (:mod:`genept_fast.stream`), Dask
(:mod:`genept_fast.dask`) and the ``genept-fast encode`` command all

- start a job here (:func:`open_job`, :func:`start_weighted`, :func:`start_sentences`): the
  cells opened by the reading layer, the arguments checked, the first cells looked at (scaled
  data refused, ``preprocess="auto"`` resolved), the genes matched to a gene-embedding table
  (:func:`match_table`) or their symbols found (:func:`resolve_gene_symbols`);
- encode chunks of cells with :class:`WeightedEncoder` (GenePT-w) or :class:`SentenceEncoder`
  (GenePT-s, writing sentences with :class:`SentenceBuilder`), the only code that does;
- record what they did in one provenance record (:func:`weighted_record`,
  :func:`sentence_record`, merged with a caller's entries by :func:`merge_uns`).
"""

from __future__ import annotations

from genept_fast.encode.genes import (
    TableMatch,
    compact_table,
    load_table,
    match_table,
    resolve_gene_symbols,
)
from genept_fast.encode.job import (
    Cells,
    SentenceJob,
    WeightedJob,
    open_job,
    start_sentences,
    start_weighted,
)
from genept_fast.encode.provenance import (
    matrix_params,
    merge_uns,
    sentence_record,
    weighted_record,
)
from genept_fast.encode.sentences import SentenceBuilder, SentenceEncoder, as_embedder
from genept_fast.encode.weighted import WeightedEncoder

__all__ = [
    "Cells",
    "SentenceBuilder",
    "SentenceEncoder",
    "SentenceJob",
    "TableMatch",
    "WeightedEncoder",
    "WeightedJob",
    "as_embedder",
    "compact_table",
    "load_table",
    "match_table",
    "matrix_params",
    "merge_uns",
    "open_job",
    "resolve_gene_symbols",
    "sentence_record",
    "start_sentences",
    "start_weighted",
    "weighted_record",
]
