"""Text embedders: one interface over OpenAI-compatible servers and an offline local model.

Use :func:`get_embedder` to build one from a spec string:

- ``"local"`` (the default): all-MiniLM-L6-v2, int8 ONNX, 384 dimensions, offline, free;
- ``"openai:<model>"``: OpenAI's text-embedding-3-small / -3-large (``dimensions`` allowed) or
  text-embedding-ada-002, or any model of an OpenAI-compatible server given by ``base_url``;
  with ``use_batch=True`` through OpenAI's Batch API (half price, resumable;
  :mod:`genept_fast.embed.batch`);
- ``"sentence-transformers:<name-or-path>"``: only when that library is installed.

Every embedder deduplicates texts, gives empty texts a zero vector, and keeps results in a
content-addressed on-disk cache (:mod:`genept_fast.embed.cache`), so reruns are free.
"""

from __future__ import annotations

from genept_fast.embed.base import Embedder, TruncationWarning
from genept_fast.embed.cache import EmbeddingCache, default_cache_dir
from genept_fast.embed.cost import PRICE_PER_MILLION_TOKENS, CostEstimate
from genept_fast.embed.factory import get_embedder
from genept_fast.errors import BatchJobError

__all__ = [
    "PRICE_PER_MILLION_TOKENS",
    "BatchJobError",
    "CostEstimate",
    "Embedder",
    "EmbeddingCache",
    "TruncationWarning",
    "default_cache_dir",
    "get_embedder",
]
