"""A small JSON-over-HTTP client on the standard library, for the gene text sources.

It does what the public gene services need and nothing more:

- a per-request timeout, and retries with exponential backoff (plus jitter) on HTTP 429, on
  5xx answers, on timeouts and on dropped connections; a ``Retry-After`` header (seconds or
  an HTTP date) is honoured on 429 and 503;
- a client-side rate limit in requests per second, shared by all threads using the client
  (NCBI allows 3 requests/s without an API key and 10 with one);
- fail fast when the host cannot be reached at all (connection refused, DNS failure, no
  route): :class:`ServiceUnavailableError`, a :class:`ConnectionError`, so an offline run
  can fall back at once instead of hanging;
- clear errors for malformed JSON (:class:`MalformedResponseError`).

Secrets (API keys) handed to the client in ``secrets`` are sent only in request bodies or
headers and are masked in every error message, including echoed server bodies.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "HttpError",
    "JsonClient",
    "MalformedResponseError",
    "RateLimiter",
    "ServiceUnavailableError",
]

log = logging.getLogger("genept_fast.http")

#: HTTP statuses that are worth another try.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_BODY_SNIPPET = 300


class HttpError(RuntimeError):
    """A request failed for good (after any retries). ``status`` is None when no answer came."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ServiceUnavailableError(HttpError, ConnectionError):
    """The host cannot be reached at all (offline, DNS failure, connection refused)."""


class MalformedResponseError(HttpError):
    """The server answered 2xx but the body is not the JSON that was expected."""


class RateLimiter:
    """Spaces calls at least ``1 / rate`` seconds apart, across threads.

    Parameters
    ----------
    rate
        Requests per second; ``None`` or ``<= 0`` disables the limit.
    """

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        if self.interval <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        delay = start - now
        if delay > 0:
            time.sleep(delay)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _unreachable(reason: object) -> bool:
    """True when a URLError reason means the host cannot be reached at all."""
    if isinstance(reason, socket.gaierror):
        return True
    if isinstance(reason, ConnectionRefusedError):
        return True
    return isinstance(reason, OSError) and reason.errno in {101, 113}  # ENETUNREACH, EHOSTUNREACH


class JsonClient:
    """JSON requests to one base URL, with timeouts, retries and a rate limit.

    Parameters
    ----------
    base_url
        Scheme, host and path prefix, e.g. ``"https://mygene.info/v3"``.
    timeout
        Seconds to wait for the connection and for each read.
    max_retries
        Further tries after the first on 429, 5xx, timeouts and dropped connections.
    backoff
        First backoff in seconds; doubles with every retry (with up to 25% jitter).
    max_backoff
        Cap on any single wait, including a server's ``Retry-After``.
    rate_limit
        Requests per second (None: no limit).
    secrets
        Strings (API keys) to mask in any error message or log line.
    headers
        Extra headers sent with every request.
    name
        A service name used in error messages (defaults to the host).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 20.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        rate_limit: float | None = None,
        secrets: Iterable[str | None] = (),
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.limiter = RateLimiter(rate_limit)
        self._secrets = tuple(s for s in secrets if s)
        self.headers = {"User-Agent": "genept-fast", "Accept": "application/json"}
        self.headers.update(headers or {})
        self.name = name or urllib.parse.urlsplit(self.base_url).netloc or self.base_url
        #: Number of HTTP requests sent (tries included), for reports and tests.
        self.n_requests = 0
        self._count_lock = threading.Lock()

    # -- public -----------------------------------------------------------------------------

    def get_json(self, path: str, params: Mapping[str, object] | None = None) -> Any:
        """GET ``base_url/path?params`` and decode the JSON answer.

        Do not put secrets in ``params``: they would be part of the URL.
        """
        url = self._url(path)
        if params:
            url = f"{url}?{urllib.parse.urlencode(params, doseq=True)}"
        return self._request("GET", url, None, {})

    def post_form(self, path: str, data: Mapping[str, object]) -> Any:
        """POST form fields (``application/x-www-form-urlencoded``) and decode the JSON answer."""
        body = urllib.parse.urlencode(data, doseq=True).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self._request("POST", self._url(path), body, headers)

    def post_json(self, path: str, payload: object) -> Any:
        """POST a JSON body and decode the JSON answer."""
        body = json.dumps(payload).encode()
        return self._request("POST", self._url(path), body, {"Content-Type": "application/json"})

    # -- internals --------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    def mask(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
            quoted = urllib.parse.quote(secret, safe="")
            if quoted != secret:
                text = text.replace(quoted, "***")
        return text

    def _public_url(self, url: str) -> str:
        return self.mask(url.split("?", 1)[0])

    def _sleep_before_retry(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            delay = retry_after
        else:
            delay = self.backoff * (2**attempt)
            delay *= 1.0 + 0.25 * random.random()
        time.sleep(min(delay, self.max_backoff))

    def _request(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Any:
        public = self._public_url(url)
        last_problem = ""
        last_status: int | None = None
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            request = urllib.request.Request(
                url, data=body, method=method, headers={**self.headers, **headers}
            )
            self.limiter.wait()
            with self._count_lock:
                self.n_requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                    status = response.status
            except urllib.error.HTTPError as exc:
                last_status = exc.code
                detail = self._error_detail(exc)
                last_problem = f"HTTP {exc.code}{detail}"
                if exc.code not in RETRY_STATUSES:
                    msg = f"{self.name}: {method} {public} failed: {last_problem}"
                    raise HttpError(msg, url=public, status=exc.code) from None
                if exc.code in (429, 503):
                    retry_after = parse_retry_after(exc.headers.get("Retry-After"))
            except urllib.error.URLError as exc:
                reason = exc.reason
                if _unreachable(reason):
                    msg = (
                        f"{self.name}: cannot reach {public} ({self.mask(str(reason))}); "
                        "is the machine offline?"
                    )
                    raise ServiceUnavailableError(msg, url=public) from None
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last_problem = f"no answer within {self.timeout:g} s"
                else:
                    last_problem = f"connection error ({self.mask(str(reason))})"
                last_status = None
            except TimeoutError:
                last_problem = f"no answer within {self.timeout:g} s"
                last_status = None
            except (ConnectionError, http.client.HTTPException) as exc:
                if isinstance(exc, ConnectionRefusedError):
                    msg = f"{self.name}: cannot reach {public} (connection refused)"
                    raise ServiceUnavailableError(msg, url=public) from None
                last_problem = f"connection dropped ({type(exc).__name__})"
                last_status = None
            else:
                return self._decode(raw, status, method, public)
            if attempt < self.max_retries:
                log.info(
                    "%s: %s %s: %s; retry %d/%d",
                    self.name,
                    method,
                    public,
                    last_problem,
                    attempt + 1,
                    self.max_retries,
                )
                self._sleep_before_retry(attempt, retry_after)
        tries = self.max_retries + 1
        msg = (
            f"{self.name}: {method} {public} failed after {tries} "
            f"{'try' if tries == 1 else 'tries'}: {last_problem}"
        )
        raise HttpError(msg, url=public, status=last_status)

    def _error_detail(self, exc: urllib.error.HTTPError) -> str:
        try:
            raw = exc.read()
        except OSError:
            raw = b""
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return f" {exc.reason}" if exc.reason else ""
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "error" in parsed:
            err = parsed["error"]
            if isinstance(err, dict):
                err = err.get("message", err)
            text = str(err)
        text = " ".join(text.split())[:_BODY_SNIPPET]
        return f": {self.mask(text)}"

    def _decode(self, raw: bytes, status: int, method: str, public: str) -> Any:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            snippet = " ".join(raw[:120].decode("utf-8", "replace").split())
            msg = (
                f"{self.name}: {method} {public} answered HTTP {status} with a body that is not "
                f"valid JSON ({exc}); it starts with {self.mask(snippet)!r}"
            )
            raise MalformedResponseError(msg, url=public, status=status) from None
