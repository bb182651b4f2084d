"""Evaluation of GenePT embeddings: the paper's protocols, reported side by side.

- :func:`evaluate`: cell level, any number of embeddings in ``adata.obsm`` (zero-shot
  clustering, kNN and logistic-regression annotation, batch effect), one
  :class:`CellEvalReport`.
- :func:`evaluate_transfer`: reference → query, labels transferred from one dataset to another
  and scored against the query's own (accuracy, macro-F1, confusion matrices), one
  :class:`TransferEvalReport`.
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
from genept_fast.eval._transfer import TransferEvalReport, evaluate_transfer

__all__ = [
    "CELL_METRICS",
    "DEFAULT_EXCLUDE_LABELS",
    "GENE_MODELS",
    "CellEvalReport",
    "GeneEvalReport",
    "GeneLabels",
    "TransferEvalReport",
    "evaluate",
    "evaluate_genes",
    "evaluate_transfer",
    "read_gene_labels",
]
