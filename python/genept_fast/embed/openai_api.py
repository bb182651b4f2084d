"""Embeddings through the OpenAI API or any OpenAI-compatible server (vLLM, Ollama, TEI, ...).

Requests go through the official ``openai`` client to ``POST {base_url}/embeddings``:

- texts are packed into requests of at most ``batch_size`` inputs (2048 for OpenAI) and at
  most ``max_tokens_per_request`` tokens (300k for OpenAI), counted with tiktoken's
  ``cl100k_base`` (see :mod:`genept_fast.embed.tokens` for how it is found offline), each text
  once, in parallel threads, or not at all when the caller passes its counts (GenePT-s);
- inputs over ``max_input_tokens`` (8192) are truncated, counted and reported;
- up to ``max_concurrency`` requests run at once, in threads; each finished request is
  written to the cache before the next is sent in its place;
- the client retries 408/409/429/5xx answers, connection errors and timeouts with
  exponential backoff (0.5 s doubling, at most 8 s, with jitter), and honours ``Retry-After``
  (up to 2 minutes) — at most ``max_retries`` times; a 200 whose body is not valid JSON is
  retried the same number of times by this module;
- ``encoding_format`` is always sent: ``"base64"`` unless told otherwise, to every server, as
  the ``openai`` client itself does (a quarter of the bytes of a ``float`` body, and ~35% less
  client CPU per vector); a server that refuses it (a 400 or 422 whose message names
  ``encoding_format`` or base64) is asked again in ``float``, which this embedder then
  keeps. Both forms are decoded whatever was asked; every returned vector's length is
  checked against the expected dimension (vectors of no dimension, or of different lengths
  in one answer, are a :class:`~genept_fast.errors.MalformedResponseError` at once), and a
  vector that is all zeros or holds NaN or infinity makes the answer malformed: retried like
  a body that is not JSON, then a :class:`~genept_fast.errors.MalformedResponseError`; such a
  vector is never stored (a zero vector is GenePT's "no text").
  Bodies are parsed with ``orjson`` (a 1536-float ``float`` body parses about ten times
  faster than with the standard library's ``json``); a well-formed ``base64`` answer is
  decoded in one call (``pybase64`` where installed) and read in place as one float32 array.
- request bodies are made with ``orjson`` and handed to the client as bytes: the same JSON
  the client would make, without its per-request type transform and ``json`` encoding
  (5.4 -> 2.4 ms of client CPU per request of 32 GenePT-s sentences).

The API key comes from the ``api_key`` argument or ``OPENAI_API_KEY``; it is never logged,
cached, or put into an error message (server messages that quote it are scrubbed).

With ``use_batch=True`` the uncached texts go through OpenAI's Batch API instead (half the
price, results within 24 hours, resumable after a crash): see :mod:`genept_fast.embed.batch`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from genept_fast._http import is_openai_error, openai_error
from genept_fast._secrets import check_url, scrub
from genept_fast.cache import default_cache_dir
from genept_fast.embed.base import Embedder
from genept_fast.embed.batch import run_batch_job
from genept_fast.embed.cost import (
    BATCH_COMPLETION_WINDOW_S,
    BATCH_PRICE_FACTOR,
    REQUEST_LATENCY_S,
    TOKENS_PER_MINUTE,
    price_per_million,
)
from genept_fast.embed.tokens import get_token_counter
from genept_fast.errors import InputError, MalformedResponseError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from genept_fast.embed.cache import EmbeddingCache
    from genept_fast.embed.cost import CostEstimate

__all__ = ["NATIVE_DIMENSIONS", "OpenAIEmbedder"]

_pybase64: Any
try:  # optional: a SIMD base64 decoder (the standard library's is ~60x slower)
    import pybase64 as _pybase64
except ImportError:  # pragma: no cover - depends on the environment
    _pybase64 = None

_log = logging.getLogger(__name__)

#: Output dimension of OpenAI's embedding models (without ``dimensions``).
NATIVE_DIMENSIONS = {
    "text-embedding-ada-002": 1536,
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
}
#: Models that accept the ``dimensions`` parameter (and their maximum).
_SHORTENABLE = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
_OPENAI_HOST = "api.openai.com"
#: OpenAI's input limit of its embedding models, in tokens.
MAX_INPUT_TOKENS = 8192
#: Placeholder key for servers that need none (the client insists on a non-empty string).
_NO_KEY = "no-key"


def _is_official(base_url: str | None) -> bool:
    return base_url is None or urlsplit(base_url).hostname == _OPENAI_HOST


def _server_label(base_url: str) -> str:
    """Host, port and path of ``base_url`` without credentials or query (for ids and messages)."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path.rstrip('/')}"


# -- option checks of OpenAIEmbedder (each raises InputError naming the option) ------------------


def _resolve_base_url(base_url: str | None) -> str | None:
    """``base_url`` checked, else ``$OPENAI_BASE_URL`` checked, else ``None`` (OpenAI)."""
    if base_url is not None:
        return check_url(base_url, option="base_url")
    if os.environ.get("OPENAI_BASE_URL"):
        return check_url(os.environ["OPENAI_BASE_URL"], option="OPENAI_BASE_URL")
    return None


def _check_dimensions(model: str, dimensions: int | None, *, official: bool) -> int | None:
    """``dimensions`` as an int: positive, and within what an OpenAI model can shorten to."""
    if dimensions is None:
        return None
    if int(dimensions) < 1:
        msg = f"dimensions must be positive, got {dimensions}"
        raise InputError(msg)
    if official and model == "text-embedding-ada-002":
        msg = "text-embedding-ada-002 does not support 'dimensions'"
        raise InputError(msg)
    top = _SHORTENABLE.get(model)
    if official and top is not None and dimensions > top:
        msg = f"{model} supports at most {top} dimensions, got {dimensions}"
        raise InputError(msg)
    return int(dimensions)


def _check_encoding_format(encoding_format: str | None) -> str:
    """``"float"`` or ``"base64"`` (the default)."""
    if encoding_format is None:
        return "base64"
    if encoding_format not in ("float", "base64"):
        msg = f"encoding_format must be 'float' or 'base64', got {encoding_format!r}"
        raise InputError(msg)
    return encoding_format


def _check_batch_size(batch_size: int | None, *, official: bool) -> int:
    """Inputs per request: 1 to 2048 (default 2048 for OpenAI, 32 for other servers)."""
    default_batch = 2048 if official else 32
    size = int(batch_size or default_batch)
    if not 1 <= size <= 2048:
        msg = f"batch_size must be between 1 and 2048, got {size}"
        raise InputError(msg)
    return size


def _check_token_limits(max_tokens_per_request: int, max_input_tokens: int) -> tuple[int, int]:
    """Both limits positive; the input limit no larger than the request limit."""
    per_request = int(max_tokens_per_request)
    if min(max_tokens_per_request, max_input_tokens) < 1:
        msg = "max_tokens_per_request and max_input_tokens must be positive"
        raise InputError(msg)
    return per_request, min(int(max_input_tokens), per_request)


def _check_concurrency(max_concurrency: int) -> int:
    if max_concurrency < 1:
        msg = f"max_concurrency must be at least 1, got {max_concurrency}"
        raise InputError(msg)
    return int(max_concurrency)


def _price(model: str, usd_per_million_tokens: float | None, *, official: bool) -> float:
    """The price given, else OpenAI's list price of a known model on OpenAI, else 0."""
    if usd_per_million_tokens is None:
        known = price_per_million(model) if official else None
        usd_per_million_tokens = known or 0.0
    return float(usd_per_million_tokens)


def _check_poll_interval(batch_poll_interval: float) -> float:
    if batch_poll_interval < 0:
        msg = f"batch_poll_interval must not be negative, got {batch_poll_interval}"
        raise InputError(msg)
    return float(batch_poll_interval)


def _batch_state_dir(
    batch_state_dir: str | os.PathLike[str] | None, cache: EmbeddingCache | None
) -> Path:
    """Where batch job files go (default: ``batches/`` in the cache directory)."""
    if batch_state_dir is None:
        base = cache.directory if cache is not None else default_cache_dir()
        batch_state_dir = base / "batches"
    return Path(batch_state_dir).expanduser()


# -- checks of an embeddings answer (each raises _Malformed saying what is wrong) ----------------


def _rows_by_index(data: list[Any], n: int) -> list[np.ndarray]:
    """The vectors of the items of ``data``, placed by their ``index`` (default: position)."""
    rows: list[np.ndarray | None] = [None] * n
    for pos, item in enumerate(data):
        if not isinstance(item, dict):
            msg = "an item of 'data' is not an object"
            raise _Malformed(msg)
        idx = item.get("index", pos)
        if not isinstance(idx, int) or not 0 <= idx < n or rows[idx] is not None:
            msg = f"bad or repeated index {idx!r}"
            raise _Malformed(msg)
        vec = _decode_embedding(item.get("embedding"))
        with np.errstate(over="ignore"):  # past float32's range: inf, refused later
            rows[idx] = vec.astype(np.float32)
    return [r for r in rows if r is not None]


def _numbers(values: list[Any]) -> bool:
    """Whether every value is a JSON number. numpy would also read ``"0.1"`` (a string) and
    ``true`` (a bool) as numbers; checking costs about twice the conversion (256 vectors of
    1536: 26 ms against 12 ms), paid only on the ``float`` format, a fallback to base64."""
    return all(type(x) is float or type(x) is int for x in values)


def _decode_embedding(emb: Any) -> np.ndarray:
    """One ``embedding`` value: base64 little-endian float32, or a flat list of numbers."""
    if isinstance(emb, str):
        try:
            return np.frombuffer(base64.b64decode(emb, validate=True), dtype="<f4")
        except (binascii.Error, ValueError):
            msg = "an embedding is not valid base64 float32"
            raise _Malformed(msg) from None
    if isinstance(emb, list):
        if not _numbers(emb):
            msg = "an embedding is not a flat list of numbers"
            raise _Malformed(msg)
        return np.asarray(emb, dtype=np.float64)
    msg = "an item has no 'embedding'"
    raise _Malformed(msg)


def _b64decode_unpadded(text: str) -> bytes | None:
    """The bytes of ``text``, base64 without padding (a length that is a multiple of 4, only
    the 64 letters of the standard alphabet), else ``None``.

    Such text has one decoding, which ``pybase64`` (SIMD; 262 KB, the 32 vectors of one
    answer, in 0.04 ms against 2.3-3 ms for ``binascii`` on this project's 2-core machine)
    and the standard library both give; the standard library decodes where ``pybase64`` is
    not installed.
    """
    if len(text) % 4 or "=" in text:
        return None
    try:
        if _pybase64 is not None:
            return bytes(_pybase64.b64decode(text, validate=True))
        return base64.b64decode(text, validate=True)
    except ValueError:  # a letter outside the alphabet, or not ASCII (binascii.Error too)
        return None


def _check_values(rows: list[np.ndarray], n: int) -> None:
    """No vector holds NaN or infinity, none is all zeros (GenePT's "no text")."""
    if not all(np.isfinite(r).all() for r in rows):
        msg = "an embedding contains NaN or infinity"
        raise _Malformed(msg)
    zero = sum(not r.any() for r in rows)
    if zero:
        msg = f"{zero} of {n} embeddings are all zeros"
        raise _Malformed(msg)


class OpenAIEmbedder(Embedder):
    """Embed texts with an OpenAI (or OpenAI-compatible) embeddings endpoint.

    Parameters
    ----------
    model
        Model name, e.g. ``"text-embedding-3-small"``.
    base_url
        API root of an OpenAI-compatible server (``http://localhost:8000/v1``); default OpenAI
        (or ``$OPENAI_BASE_URL``).
    api_key
        Default ``$OPENAI_API_KEY``; servers that need none may get none.
    dimensions
        Output dimension for models that can shorten their vectors (text-embedding-3-*).
    cache
        Embedding cache, or ``None``.
    batch_size
        Most inputs per request (default 2048 for OpenAI, 32 for other servers).
    max_tokens_per_request, max_input_tokens
        Token limits (defaults: OpenAI's 300,000 and 8192).
    max_concurrency
        Requests in flight at once.
    timeout
        Seconds before a request is abandoned (and retried).
    max_retries
        Retries per request.
    encoding_format
        ``"float"`` or ``"base64"`` (default: base64, falling back to float for a server whose
        400/422 answer names the format; a format given here is never changed).
    usd_per_million_tokens
        Standard price to use in estimates (default: OpenAI's list price for known models on
        OpenAI, 0 for other servers).
    use_batch
        Embed uncached texts through the Batch API (half price, asynchronous, resumable; see
        :mod:`genept_fast.embed.batch`).
    batch_state_dir
        Where batch job files are kept (default: ``batches/`` in the cache directory).
    batch_poll_interval
        Seconds between polls of a running batch.
    batch_max_wait
        Stop waiting for batches after this many seconds (``None``: wait; a rerun resumes).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        dimensions: int | None = None,
        cache: EmbeddingCache | None = None,
        batch_size: int | None = None,
        max_tokens_per_request: int = 300_000,
        max_input_tokens: int = MAX_INPUT_TOKENS,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 6,
        encoding_format: str | None = None,
        usd_per_million_tokens: float | None = None,
        use_batch: bool = False,
        batch_state_dir: str | os.PathLike[str] | None = None,
        batch_poll_interval: float = 30.0,
        batch_max_wait: float | None = None,
    ) -> None:
        super().__init__(cache=cache)
        if not model:
            msg = "an OpenAI embedding model name is required, e.g. 'openai:text-embedding-3-small'"
            raise InputError(msg)
        self.model = model
        self.base_url = _resolve_base_url(base_url)
        self.official = _is_official(self.base_url)
        self._api_key = api_key
        self.dimensions = _check_dimensions(model, dimensions, official=self.official)
        self.dimension = self.dimensions or NATIVE_DIMENSIONS.get(model)
        #: Whether the format was chosen here (and may fall back to float once).
        self._format_chosen = encoding_format is None
        self.encoding_format = _check_encoding_format(encoding_format)
        self.batch_size = _check_batch_size(batch_size, official=self.official)
        self.max_tokens_per_request, self.max_input_tokens = _check_token_limits(
            max_tokens_per_request, max_input_tokens
        )
        self.max_concurrency = _check_concurrency(max_concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.usd_per_million_tokens = _price(model, usd_per_million_tokens, official=self.official)
        self.is_paid = self.usd_per_million_tokens > 0
        self.model_id = f"openai:{model}"
        self.use_batch = bool(use_batch)
        self.batch_poll_interval = _check_poll_interval(batch_poll_interval)
        self.batch_max_wait = None if batch_max_wait is None else float(batch_max_wait)
        self.batch_state_dir = _batch_state_dir(batch_state_dir, cache)
        self._counter = get_token_counter()
        self._client_obj: Any = None
        self._client_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Pickles (e.g. sent to Dask workers) never carry the key or the live client: the
        # receiving process reads OPENAI_API_KEY.
        state = self.__dict__.copy()
        state["_api_key"] = None
        state.pop("_client_obj", None)
        state.pop("_client_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client_obj = None
        self._client_lock = threading.Lock()

    # -- identity ------------------------------------------------------------------------------
    @property
    def cache_namespace(self) -> str:
        provider = (
            "openai" if self.official else f"openai-compatible@{_server_label(self.base_url or '')}"
        )
        dim = f"dim={self.dimensions}" if self.dimensions else "dim=native"
        # A text over the input limit is cut before it is embedded, so the limit is part of
        # what a cached vector means; the default is left out (caches of earlier versions).
        cut = (
            ""
            if self.max_input_tokens == MAX_INPUT_TOKENS
            else f"|max_input_tokens={self.max_input_tokens}"
        )
        return f"{provider}|{self.model}|{dim}{cut}"

    @property
    def tokens_exact(self) -> bool:
        return self._counter.exact

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbedder(model={self.model!r}, server={self.where!r},"
            f" dimension={self.dimension}, batch_size={self.batch_size},"
            f" max_concurrency={self.max_concurrency}"
            + (", use_batch=True)" if self.use_batch else ")")
        )

    # -- tokens, planning, price ---------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._counter.count_many(texts)

    def _input_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._counter.bound_many(texts)

    def splits_after(self, words: Sequence[str], sep: str) -> list[bool]:
        return self._counter.splits_after(words, sep)

    def price_usd(self, tokens: int) -> float:
        factor = BATCH_PRICE_FACTOR if self.use_batch else 1.0
        return tokens / 1e6 * self.usd_per_million_tokens * factor

    def estimate(
        self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None
    ) -> CostEstimate:
        """What embedding ``texts`` would cost (at the Batch price with ``use_batch``).

        Nothing is sent; the cache is only read. ``token_counts`` as for :meth:`embed`.
        """
        est = super().estimate(texts, token_counts=token_counts)
        return dataclasses.replace(est, batch=True) if self.use_batch else est

    def pack(self, bounds: Sequence[int]) -> list[list[int]]:
        """Positions (of texts with these token ``bounds``) grouped into requests within the
        item and token limits."""
        batches: list[list[int]] = []
        cur: list[int] = []
        cur_tokens = 0
        for i, n in enumerate(bounds):
            if cur and (
                len(cur) >= self.batch_size or cur_tokens + n > self.max_tokens_per_request
            ):
                batches.append(cur)
                cur, cur_tokens = [], 0
            cur.append(i)
            cur_tokens += n
        if cur:
            batches.append(cur)
        return batches

    def _plan(self, token_counts: list[int]) -> tuple[int, float]:
        n_requests = len(self.pack(token_counts))
        if self.use_batch:
            # The Batch API promises results within its completion window, not sooner.
            return n_requests, float(BATCH_COMPLETION_WINDOW_S) if n_requests else 0.0
        by_latency = n_requests * REQUEST_LATENCY_S / self.max_concurrency
        by_rate = sum(token_counts) / TOKENS_PER_MINUTE * 60.0 if self.official else 0.0
        return n_requests, max(by_latency, by_rate)

    # -- the client ----------------------------------------------------------------------------
    def client(self) -> Any:
        """The ``openai.OpenAI`` client of this server (made on first use; needs the key)."""
        with self._client_lock:
            if self._client_obj is None:
                import openai

                key = self._api_key or os.environ.get("OPENAI_API_KEY") or None
                if key is None and self.official:
                    msg = (
                        "no OpenAI API key: set OPENAI_API_KEY or pass api_key"
                        " (use --dry-run to estimate the cost without one)"
                    )
                    raise InputError(msg)
                self._api_key = key
                self._client_obj = openai.OpenAI(
                    api_key=key or _NO_KEY,
                    base_url=self.base_url,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                )
            return self._client_obj

    def scrub(self, text: str) -> str:
        """``text`` with every secret masked: the API key, a password of the server URL and
        ``Authorization`` values (:func:`genept_fast._secrets.scrub`)."""
        return scrub(text, [self._api_key])

    @property
    def where(self) -> str:
        """The server, for messages: ``"OpenAI"`` or host, port and path."""
        return "OpenAI" if self.official else _server_label(self.base_url or "")

    def service_error(self, exc: BaseException, action: str | None = None) -> BaseException:
        """The :class:`~genept_fast.errors.ServiceError` for an ``openai`` exception of a call
        to this server (other exceptions are returned as they are)."""
        if not is_openai_error(exc):
            return exc
        key = self._api_key or os.environ.get("OPENAI_API_KEY")
        return openai_error(
            exc,
            where=self.where,
            action=action,
            timeout=self.timeout,
            retries=self.max_retries,
            secrets=[key],
        )

    def _vectors_error(self, message: str) -> MalformedResponseError:
        return MalformedResponseError(f"{message} (from {self.where})", service=self.where)

    # -- requests ------------------------------------------------------------------------------
    def request(self, batch: list[str]) -> np.ndarray:
        """One embeddings request for ``batch`` (retried by the client; malformed 200s retried
        here); its vectors, checked, in input order."""
        client = self.client()
        params: dict[str, Any] = {
            "model": self.model,
            "input": batch,
            "encoding_format": self.encoding_format,
        }
        if self.dimensions is not None:
            params["dimensions"] = self.dimensions
        failure = ""
        for attempt in range(self.max_retries + 1):
            try:
                body = self._post(client, params)
            except Exception as exc:
                raise self.service_error(exc) from None
            try:
                return self._parse(body, len(batch))
            except _Malformed as exc:
                failure = f"{self.where} sent a malformed response: {exc}"
                if attempt < self.max_retries:
                    time.sleep(min(0.5 * 2**attempt, 8.0))
        raise MalformedResponseError(failure, service=self.where)

    def _post(self, client: Any, params: dict[str, Any]) -> bytes:
        """The body of one answered request; a server that refuses the base64 format chosen
        here is asked again in float (and from then on)."""
        try:
            return _send(client, params)
        except Exception as exc:
            refused = getattr(exc, "status_code", None) in (400, 422) and any(
                word in str(exc).lower() for word in ("encoding_format", "base64")
            )
            if not (refused and self._format_chosen and params["encoding_format"] == "base64"):
                raise
        _log.warning("%s refused encoding_format='base64'; asking in 'float'", self.where)
        self.encoding_format = params["encoding_format"] = "float"
        return _send(client, params)

    def _parse(self, body: bytes, n: int) -> np.ndarray:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            msg = f"not JSON ({exc.msg})"
            raise _Malformed(msg) from None
        return self._parse_payload(payload, n)

    def parse_vectors(self, payload: Any, n: int) -> np.ndarray:
        """The ``n`` vectors of a decoded embeddings response body (an ``/embeddings`` answer
        or a Batch API result line's body), checked; a
        :class:`~genept_fast.errors.MalformedResponseError` says what is wrong with it."""
        try:
            return self._parse_payload(payload, n)
        except _Malformed as exc:
            raise MalformedResponseError(str(exc), service=self.where) from None

    def _parse_payload(self, payload: Any, n: int) -> np.ndarray:
        """The ``n`` vectors of a decoded embeddings response body (checked)."""
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != n:
            got = len(data) if isinstance(data, list) else "no"
            msg = f"{got} embeddings for {n} inputs"
            raise _Malformed(msg)
        fast = self._base64_rows(data)
        if fast is None:
            fast = self._float_rows(data)
        if fast is not None:
            return fast
        rows = _rows_by_index(data, n)
        self._check_lengths(rows)
        _check_values(rows, n)
        return np.stack(rows)

    def _check_lengths(self, rows: list[np.ndarray]) -> None:
        """All vectors of one positive length, the expected one where it is known."""
        lengths = {int(r.shape[0]) for r in rows}
        expected = self.dimension
        if len(lengths) != 1 or 0 in lengths or (expected is not None and lengths != {expected}):
            got = ", ".join(str(x) for x in sorted(lengths))
            want = f"{expected}" if expected is not None else "one positive length for all"
            msg = f"{self.where} returned vectors of dimension {got}, expected {want}" + (
                f" (dimensions={self.dimensions} requested)" if self.dimensions else ""
            )
            raise MalformedResponseError(msg, service=self.where)

    def _base64_rows(self, data: list[Any]) -> np.ndarray | None:
        """The common well-formed ``base64`` body in one decode, without copies, else ``None``.

        Items in order, each a base64 string of one length with no padding (every vector of
        ``4 * D`` bytes with ``D`` a multiple of 3, as 1536, 3072, 768 and 384 are): their
        concatenation decodes, strictly, to the vectors one after the other, read in place as
        an ``(n, D)`` float32 array (read-only). Anything else, and a vector that is all zeros
        or not finite, goes the item-by-item way, which says what is wrong.
        """
        strings = []
        for pos, item in enumerate(data):
            if type(item) is not dict or item.get("index", pos) != pos:
                return None
            emb = item.get("embedding")
            if type(emb) is not str:
                return None
            strings.append(emb)
        width = len(strings[0]) if strings else 0
        n_bytes = width // 4 * 3
        if not width or width % 4 or n_bytes % 4 or any(len(s) != width for s in strings):
            return None
        raw = _b64decode_unpadded("".join(strings))
        if raw is None or len(raw) != n_bytes * len(strings):
            return None
        out = np.frombuffer(raw, dtype="<f4").reshape(len(strings), n_bytes // 4)
        expected = self.dimension
        if expected is not None and out.shape[1] != expected:
            return None
        if not (np.isfinite(out).all() and out.any(axis=1).all()):
            return None
        return out

    def _float_rows(self, data: list[Any]) -> np.ndarray | None:
        """The common well-formed ``float`` body in one conversion, else ``None``.

        Items in order, each a list of the expected number of finite numbers: one
        ``np.array`` call converts them all (the item-by-item path, which says what is wrong
        with a bad body, is ~15% slower per vector).
        """
        lists = []
        for pos, item in enumerate(data):
            if not isinstance(item, dict) or item.get("index", pos) != pos:
                return None
            emb = item.get("embedding")
            if not isinstance(emb, list):
                return None
            lists.append(emb)
        if not all(_numbers(emb) for emb in lists):
            return None  # the item-by-item path says what is wrong
        try:
            with np.errstate(over="ignore"):  # past float32's range: inf, refused below
                out = np.array(lists, dtype=np.float32)
        except (TypeError, ValueError, OverflowError):
            return None
        expected = self.dimension
        if (
            out.ndim != 2
            or out.shape[1] == 0
            or (expected is not None and out.shape[1] != expected)
        ):
            return None
        if not (np.isfinite(out).all() and out.any(axis=1).all()):
            return None  # the item-by-item path says what is wrong
        return out

    def _embed_uncached(
        self,
        texts: list[str],
        sink: Callable[[Sequence[int], np.ndarray], None],
        *,
        token_counts: Sequence[int],
    ) -> None:
        limit = self.max_input_tokens
        sent = list(texts)
        bounds = list(token_counts)
        for i, n in enumerate(bounds):
            if n > limit:  # only texts over the limit are tokenized here (to cut them)
                sent[i], _ = self._counter.truncate(texts[i], limit)
                bounds[i] = self._counter.bound(sent[i])
        if self.use_batch:
            run_batch_job(
                self,
                texts,
                sent,
                sink,
                bounds=bounds,
                state_dir=self.batch_state_dir,
                poll_interval=self.batch_poll_interval,
                max_wait=self.batch_max_wait,
            )
            return
        batches = self.pack(bounds)
        self.client()  # fail on a missing key before starting threads
        pool = ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix="genept-embed"
        )
        pending: dict[Future[np.ndarray], list[int]] = {}
        queue = iter(batches)
        error: BaseException | None = None

        def submit_next() -> None:
            positions = next(queue, None)
            if positions is not None:
                fut = pool.submit(self.request, [sent[p] for p in positions])
                pending[fut] = positions

        try:
            for _ in range(self.max_concurrency):
                submit_next()
            # At most max_concurrency requests in flight; each finished batch goes to the
            # sink (the cache) before another request takes its place. After an error, the
            # requests in flight are still awaited and kept, then the error is raised.
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    positions = pending.pop(fut)
                    exc = fut.exception()
                    if exc is not None:
                        error = error or exc
                        continue
                    try:
                        sink(positions, fut.result())
                    except Exception as sink_exc:
                        error = error or sink_exc
                    if error is None:
                        submit_next()
            if error is not None:
                raise error
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _send(client: Any, params: dict[str, Any]) -> bytes:
    """``POST /embeddings`` with ``params`` through the ``openai`` client (its headers, auth,
    retries and errors), returning the raw body.

    The body goes out as JSON bytes made by ``orjson``: what
    ``client.embeddings.with_raw_response.create(**params)`` sends (same keys and values,
    compact), without the client's per-request type transform and ``json`` encoding, which cost
    about 3 of its 5.4 ms of CPU per request of 32 GenePT-s sentences. Text that ``orjson``
    refuses (a lone surrogate) is encoded as the client does it, with the same error.
    """
    try:
        content = orjson.dumps(params)
    except orjson.JSONEncodeError:
        content = json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode()
    response = client.post(
        "/embeddings",
        content=content,
        cast_to=_httpx_response(),
        options={"security": {"bearer_auth": True}},
    )
    return bytes(response.content)


def _httpx_response() -> type:
    """``httpx2.Response``: what the ``openai`` client hands back as is (imported with it)."""
    import httpx2

    return httpx2.Response


class _Malformed(Exception):
    """A 200 response whose body is not a valid embeddings list (retried)."""
