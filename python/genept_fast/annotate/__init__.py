"""Cell-type annotation from a labelled reference, from a few hundred cells to atlases.

- :func:`transfer_labels` (also ``gf.tl.transfer_labels``): scanpy-shaped; writes the predicted
  label, its confidence and the parameters into the query AnnData.
- :func:`build_reference` (also ``gf.tl.build_reference``): index a labelled reference once
  (exact search for small references, a faiss IVF index over float16 codes for large ones); the
  :class:`ReferenceIndex` saves to and loads from one checksummed file.
- :class:`EmbeddingSource`: embeddings of an ``.h5ad`` / ``.zarr`` read by row chunks (queries
  larger than memory).

See docs/annotation.md for the methods, the confidence and the measurements.
"""

from __future__ import annotations

from genept_fast.annotate._index import (
    EXACT_MAX_CELLS,
    FORMAT_VERSION,
    LogregModel,
    ReferenceIndex,
    build_reference,
)
from genept_fast.annotate._io import AnnDataEmbeddings, EmbeddingSource, combine
from genept_fast.annotate._search import (
    HNSW_DEFAULTS,
    IVF_DEFAULTS,
    HnswIndex,
    IvfIndex,
    exact_search,
    ivf_nlist,
)
from genept_fast.annotate._transfer import UNKNOWN, Predictions, predict, transfer_labels, vote

__all__ = [
    "EXACT_MAX_CELLS",
    "FORMAT_VERSION",
    "HNSW_DEFAULTS",
    "IVF_DEFAULTS",
    "UNKNOWN",
    "AnnDataEmbeddings",
    "EmbeddingSource",
    "HnswIndex",
    "IvfIndex",
    "LogregModel",
    "Predictions",
    "ReferenceIndex",
    "build_reference",
    "combine",
    "exact_search",
    "ivf_nlist",
    "predict",
    "transfer_labels",
    "vote",
]
