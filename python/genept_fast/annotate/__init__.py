"""Cell-type annotation from a labelled reference, from a few hundred cells to atlases.

- :func:`transfer_labels` (also ``gf.tl.transfer_labels``): scanpy-shaped; writes the predicted
  label, its confidence and the parameters into the query AnnData.
- :func:`build_reference` (also ``gf.tl.build_reference``): index a labelled reference once
  (exact search for small references, a faiss IVF index over float16 codes for large ones); the
  :class:`ReferenceIndex` saves to and loads from one file whose SHA-256 is checked before
  HDF5 parses it. Reference cells with an all-zero embedding are left out (with a warning).
- :class:`EmbeddingSource`: embeddings of an ``.h5ad`` / ``.zarr`` read by row chunks (queries
  larger than memory).

A reference label that reads like the reject label (``"Unknown"``) is refused, and so is a query
embedded differently from the reference (:class:`ProvenanceMismatchError`, unless
``allow_mismatch=True``). See docs/annotation.md for the methods, the confidence and the
measurements.
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
from genept_fast.annotate._transfer import (
    UNKNOWN,
    Predictions,
    ProvenanceMismatchError,
    predict,
    transfer_labels,
    vote,
)

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
    "ProvenanceMismatchError",
    "ReferenceIndex",
    "build_reference",
    "combine",
    "exact_search",
    "ivf_nlist",
    "predict",
    "transfer_labels",
    "vote",
]
