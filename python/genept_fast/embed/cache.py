"""The embedding cache: the embeddings side of the one cache database.

:class:`EmbeddingCache` is :class:`genept_fast.cache.Cache` (gene texts and embeddings share
one SQLite file in one cache folder); see :mod:`genept_fast.cache` for where it lives, how it
is keyed and how caches of earlier versions are read.
"""

from __future__ import annotations

from genept_fast.cache import Cache, default_cache_dir, text_key

__all__ = ["EmbeddingCache", "default_cache_dir", "text_key"]

#: The cache, named for what the embedders use it for.
EmbeddingCache = Cache
