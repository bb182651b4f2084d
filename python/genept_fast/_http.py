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

:func:`download` fetches one large file the same way (fail fast when unreachable, retries with
backoff), resuming a dropped transfer with an HTTP ``Range`` request instead of starting over.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Mapping

__all__ = [
    "HttpError",
    "JsonClient",
    "MalformedResponseError",
    "RateLimiter",
    "ServiceUnavailableError",
    "download",
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


# -- file downloads ------------------------------------------------------------------------------

_CHUNK = 1 << 20


def _content_range_start(value: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header, or None."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def download(
    url: str,
    part: str | os.PathLike[str],
    *,
    size: int | None = None,
    timeout: float = 60.0,
    max_retries: int = 8,
    backoff: float = 1.0,
    progress: Any = None,
    name: str | None = None,
) -> int:
    """Download ``url`` into the file ``part``, resuming from what it already holds.

    Each try asks for the bytes after those already on disk (``Range: bytes=N-``) and appends
    them; a server that answers 200 instead of 206 sends the whole file again, which then
    replaces ``part``. A dropped connection, a timeout, 429 or a 5xx costs a retry (with
    backoff), not the bytes received. A host that cannot be reached at all raises at once.

    Parameters
    ----------
    url
        What to fetch (redirects are followed).
    part
        The partial file (created if missing). Renaming it into place is the caller's job,
        after checking it.
    size
        Expected length in bytes: stops when ``part`` has it; a longer ``part`` starts over.
    timeout
        Seconds for the connection and for each read.
    max_retries
        Further tries after the first.
    backoff
        First wait between tries in seconds; doubles each time (capped at 30 s).
    progress
        A tqdm-like object: ``update(n)`` per chunk received, ``n`` set at each (re)start.
    name
        Service name for messages (default: the host).

    Returns
    -------
    int
        Bytes in ``part`` when done.

    Raises
    ------
    ServiceUnavailableError
        The host cannot be reached.
    HttpError
        A refusal (4xx other than 429) or too many failed tries.
    """
    path = Path(part)
    path.parent.mkdir(parents=True, exist_ok=True)
    public = url.split("?", 1)[0]
    who = name or urllib.parse.urlsplit(url).netloc or url
    problem = ""
    status: int | None = None
    for attempt in range(max_retries + 1):
        have = path.stat().st_size if path.exists() else 0
        if size is not None and have > size:
            path.unlink()
            have = 0
        if size is not None and have == size:
            return have
        if progress is not None:
            progress.n = have
            progress.refresh()
        headers = {"User-Agent": "genept-fast", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = response.status
                start = _content_range_start(response.headers.get("Content-Range"))
                if status == 206 and start != have:
                    msg = f"{who}: GET {public} answered bytes from {start}, asked from {have}"
                    raise HttpError(msg, url=public, status=status)
                mode = "ab" if status == 206 else "wb"  # 200: the whole file again
                with path.open(mode) as fh:
                    if mode == "wb" and progress is not None:
                        progress.n = 0
                        progress.refresh()
                    while chunk := response.read(_CHUNK):
                        fh.write(chunk)
                        if progress is not None:
                            progress.update(len(chunk))
            got = path.stat().st_size
            if size is None or got == size:
                return got
            problem = f"the connection closed after {got:,} of {size:,} bytes"
        except urllib.error.HTTPError as exc:
            status = exc.code
            if exc.code == 416 and size is not None and have == size:
                return have
            if exc.code not in RETRY_STATUSES:
                msg = f"{who}: GET {public} failed: HTTP {exc.code} {exc.reason}"
                raise HttpError(msg, url=public, status=exc.code) from None
            problem = f"HTTP {exc.code}"
        except urllib.error.URLError as exc:
            if _unreachable(exc.reason):
                msg = f"{who}: cannot reach {public} ({exc.reason}); is the machine offline?"
                raise ServiceUnavailableError(msg, url=public) from None
            problem = f"connection error ({exc.reason})"
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            if isinstance(exc, ConnectionRefusedError):
                msg = f"{who}: cannot reach {public} (connection refused)"
                raise ServiceUnavailableError(msg, url=public) from None
            problem = f"connection dropped ({type(exc).__name__}: {exc})"
        if attempt < max_retries:
            log.info(
                "%s: GET %s: %s; resuming (%d/%d)", who, public, problem, attempt + 1, max_retries
            )
            time.sleep(min(backoff * (2**attempt), 30.0))
    tries = max_retries + 1
    msg = f"{who}: GET {public} failed after {tries} tries: {problem}"
    raise HttpError(msg, url=public, status=status)
