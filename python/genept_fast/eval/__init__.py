"""Evaluation of GenePT embeddings: the paper's protocols, reported side by side.

- :func:`evaluate`: cell level, any number of embeddings in ``adata.obsm`` (zero-shot
  clustering, kNN and logistic-regression annotation, batch effect), one
  :class:`CellEvalReport`.
- :func:`evaluate_genes`: gene level, binary gene classification from gene embeddings with
  cross-validated ROC AUC and a random-embedding control, one :class:`GeneEvalReport`.

Both reports write ``report.md``, ``report.json`` and PNG figures with ``report.write(out_dir)``.
"""

from __future__ import annotations

from genept_fast.eval._cells import (
    CELL_METRICS,
    DEFAULT_EXCLUDE_LABELS,
    CellEvalReport,
    evaluate,
)
from genept_fast.eval._genes import (
    GENE_MODELS,
    GeneEvalReport,
    GeneLabels,
    evaluate_genes,
    read_gene_labels,
)

__all__ = [
    "CELL_METRICS",
    "DEFAULT_EXCLUDE_LABELS",
    "GENE_MODELS",
    "CellEvalReport",
    "GeneEvalReport",
    "GeneLabels",
    "evaluate",
    "evaluate_genes",
    "read_gene_labels",
]
