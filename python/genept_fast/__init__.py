"""genept-fast: GenePT single-cell embeddings, fast, offline-capable and atlas-scale.

The pipeline reads top to bottom: gene text → gene embeddings → cell embeddings → evaluation.

- :func:`weighted_embedding`, :func:`top_genes`, :func:`cell_sentences`: the Rust kernels.
- :mod:`genept_fast.tl`: scanpy-shaped tools (``genept_w``, ``genept_s``) on AnnData.
- :class:`GeneptError` and its branches :class:`InputError` (a ``ValueError``) and
  :class:`ServiceError` (a ``ConnectionError``): the whole family is in :mod:`genept_fast.errors`.
- Heavier submodules (``tl``, ``genes``, ``text``, ``embed``, ``table``, ``stream``,
  ``annotate``, ``eval``, ``dask``) load on first use, so ``import genept_fast`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genept_fast._version import __version__ as __version__
from genept_fast.errors import GeneptError, InputError, ServiceError
from genept_fast.kernels import (
    DEFAULT_PREFIX,
    PreparedEmbeddings,
    cell_sentences,
    l2_normalize,
    prepare_embeddings,
    top_genes,
    weighted_embedding,
)

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "DEFAULT_PREFIX",
    "GeneptError",
    "InputError",
    "PreparedEmbeddings",
    "ServiceError",
    "__version__",
    "cell_sentences",
    "l2_normalize",
    "prepare_embeddings",
    "top_genes",
    "weighted_embedding",
]

_LAZY = {
    "tl",
    "soma",
    "cells",
    "genes",
    "text",
    "embed",
    "table",
    "preprocess",
    "stream",
    "annotate",
    "eval",
    "dask",
    "cli",
    "demo",
}


def __getattr__(name: str) -> ModuleType | Any:
    if name in _LAZY:
        return importlib.import_module(f"genept_fast.{name}")
    msg = f"module 'genept_fast' has no attribute {name!r}"
    raise AttributeError(msg)
