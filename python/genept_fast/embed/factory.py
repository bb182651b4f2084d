"""Embedders from spec strings: ``"local"``, ``"wordllama"``, ``"openai:<model>"``,
``"sentence-transformers:<name-or-path>"`` (:func:`get_embedder`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from genept_fast._secrets import check_url
from genept_fast.embed.cache import EmbeddingCache, default_cache_dir
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from genept_fast.embed.base import Embedder

__all__ = ["get_embedder"]


def get_embedder(
    spec: str = "local",
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    dimensions: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int | None = None,
    max_concurrency: int = 4,
    timeout: float = 60.0,
    max_retries: int = 6,
    n_threads: int | None = None,
    use_batch: bool = False,
    batch_poll_interval: float = 30.0,
    batch_max_wait: float | None = None,
) -> Embedder:
    """Build an embedder from a spec string.

    Parameters
    ----------
    spec
        ``"local"``, ``"wordllama"`` (a static model: GenePT-s at kernel speed, see
        :mod:`genept_fast.encode.static`; the ``wordllama`` extra), ``"openai:<model>"`` or
        ``"sentence-transformers:<name-or-path>"``.
    base_url
        OpenAI-compatible server root (``http://host:port/v1``); ``openai:`` only. A
        malformed URL (bad port, bad IPv6 literal, no scheme) is refused here, as is one in
        ``$OPENAI_BASE_URL``; credentials in it never reach a message or the cache.
    api_key
        API key (default ``$OPENAI_API_KEY``); never logged or stored.
    dimensions
        Output dimension for models that support shortening (text-embedding-3-*).
    cache_dir
        Cache folder (default: :func:`genept_fast.cache.default_cache_dir`,
        ``$GENEPT_FAST_CACHE_DIR`` or ``~/.cache/genept-fast``).
    use_cache
        Read and write the on-disk cache.
    batch_size
        Inputs per request / forward pass (provider default when ``None``).
    max_concurrency, timeout, max_retries
        Requests in flight, seconds per request, retries per request (``openai:`` only).
    n_threads
        onnxruntime threads (``local`` only; ``wordllama`` tokenizes on one thread, and its
        GenePT-s sums take the kernel's ``n_threads``).
    use_batch
        Embed uncached texts through OpenAI's Batch API: half price, results within 24 hours;
        a run killed while it waits resumes the same batches (job files in ``batches/`` of the
        cache directory). ``openai:`` only.
    batch_poll_interval, batch_max_wait
        Seconds between polls of a batch; give up waiting after this many seconds (``None``:
        wait until the batches end; a rerun resumes).

    Returns
    -------
    Embedder
        Nothing is loaded from the network when it is built; a remote server is first
        contacted by :meth:`Embedder.embed`.

    Raises
    ------
    InputError
        An unknown spec, options that do not apply to it, a malformed ``base_url``
        (:class:`~genept_fast.errors.InvalidArgumentError`).
    """
    if not isinstance(spec, str) or not spec.strip():
        msg = (
            "embedder spec must be 'local', 'wordllama', 'openai:<model>' or"
            " 'sentence-transformers:<model>'"
        )
        raise InputError(msg)
    provider, _, name = spec.strip().partition(":")
    provider = provider.lower()
    cache = EmbeddingCache(cache_dir) if use_cache else None
    if provider != "openai" and (base_url is not None or dimensions is not None):
        msg = f"base_url and dimensions apply to 'openai:' embedders, not {spec!r}"
        raise InputError(msg)
    if provider != "openai" and use_batch:
        msg = f"the Batch API (use_batch) applies to 'openai:' embedders, not {spec!r}"
        raise InputError(msg)
    if provider == "local":
        from genept_fast.embed.local import LOCAL_MODEL_NAME, LocalEmbedder

        if name and name != LOCAL_MODEL_NAME:
            msg = f"unknown local model {name!r}; the local embedder is {LOCAL_MODEL_NAME!r}"
            raise InputError(msg)
        return LocalEmbedder(cache=cache, batch_size=batch_size, n_threads=n_threads)
    if provider == "wordllama":
        from genept_fast.embed.wordllama import WORDLLAMA_MODEL_NAME, WordLlamaEmbedder

        if name and name != WORDLLAMA_MODEL_NAME:
            msg = f"unknown wordllama model {name!r}; the one shipped is {WORDLLAMA_MODEL_NAME!r}"
            raise InputError(msg)
        return WordLlamaEmbedder(cache=cache, batch_size=batch_size)
    if provider == "openai":
        from genept_fast.embed.openai_api import OpenAIEmbedder

        if base_url is not None:
            check_url(base_url, option="base_url")
        elif os.environ.get("OPENAI_BASE_URL"):
            check_url(os.environ["OPENAI_BASE_URL"], option="OPENAI_BASE_URL")
        if not name:
            msg = "name the model: 'openai:text-embedding-3-small' (or -3-large, ada-002)"
            raise InputError(msg)
        return OpenAIEmbedder(
            name,
            base_url=base_url,
            api_key=api_key,
            dimensions=dimensions,
            cache=cache,
            batch_size=batch_size,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            use_batch=use_batch,
            batch_state_dir=default_cache_dir(cache_dir) / "batches",
            batch_poll_interval=batch_poll_interval,
            batch_max_wait=batch_max_wait,
        )
    if provider in ("sentence-transformers", "st"):
        from genept_fast.embed.sentence_transformers import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(name, cache=cache, batch_size=batch_size)
    msg = (
        f"unknown embedder {spec!r}: use 'local', 'wordllama', 'openai:<model>' or"
        " 'sentence-transformers:<name-or-path>'"
    )
    raise InputError(msg)
