"""Every remote call's plumbing: JSON requests and file downloads on ``httpx``, and the one
translation of ``httpx`` and ``openai`` exceptions into :class:`~genept_fast.errors.ServiceError`.

The HTTP library is ``httpx2``, the maintained continuation of ``httpx`` (same API) that the
``openai`` client itself is built on, so no second HTTP stack is installed. On top of it this
module adds what the public gene services need:

- a per-request timeout, and retries with exponential backoff (plus jitter) on HTTP 429, on
  5xx answers, on timeouts and on dropped connections; a ``Retry-After`` header (seconds or
  an HTTP date) is honoured on 429 and 503;
- a client-side rate limit in requests per second, shared by all threads using the client
  (NCBI allows 3 requests/s without an API key and 10 with one);
- fail fast when the host cannot be reached at all (connection refused, DNS failure, no
  route): :class:`~genept_fast.errors.ServiceUnavailableError`, so an offline run can fall
  back at once instead of hanging;
- clear errors for malformed JSON (:class:`~genept_fast.errors.MalformedResponseError`).

The retry loop is written here (about 30 lines, shared by JSON requests and downloads) rather
than taken from a retry library: what it must do — tell an unreachable host (no retry) from a
dropped connection (retry), wait what the server's ``Retry-After`` says, count tries for the
message — is the part a library leaves to callbacks, and ``httpx``'s own transport retries only
failed connects. The ``openai`` client retries its own calls (with ``Retry-After``).

Secrets (API keys) handed to the client in ``secrets`` are sent only in request bodies or
headers. Every message passes through the one scrubber, :func:`genept_fast._secrets.scrub`:
those keys, ``OPENAI_API_KEY``, URL passwords and ``Authorization`` values (a ``Basic``
credential ``httpx`` built from a URL's user-info included) are masked, also in echoed server
bodies; URLs named in messages and in :class:`~genept_fast.errors.ServiceError` carry no
user-info. A malformed base URL is an :class:`~genept_fast.errors.InvalidArgumentError` when
the client is made (:func:`genept_fast._secrets.check_url`).

:func:`download` fetches one large file the same way, resuming a dropped transfer with an
HTTP ``Range`` request instead of starting over.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from genept_fast._secrets import check_url, public_url, remember_url, scrub
from genept_fast.errors import (
    InvalidArgumentError,
    MalformedResponseError,
    ServiceError,
    ServiceUnavailableError,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Mapping

    import httpx2 as httpx

__all__ = ["JsonClient", "RateLimiter", "download", "is_openai_error", "openai_error"]

log = logging.getLogger("genept_fast.http")

#: HTTP statuses that are worth another try.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_BODY_SNIPPET = 300


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


def _unreachable(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it wraps) means the host cannot be reached at all."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (socket.gaierror, ConnectionRefusedError)):
            return True
        if isinstance(exc, OSError) and exc.errno in {101, 113}:  # ENETUNREACH, EHOSTUNREACH
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class _Retry(Exception):
    """One failed try that is worth another (internal to the retry loop)."""

    def __init__(self, problem: str, status: int | None = None, wait: float | None = None):
        super().__init__(problem)
        self.problem = problem
        self.status = status
        self.wait = wait


def _httpx() -> Any:
    """The ``httpx2`` module, imported on first use (it costs ~25 ms; offline work needs none)."""
    import httpx2

    return httpx2


def _transport_problem(
    exc: httpx.HTTPError, *, who: str, public: str, timeout: float, mask: Callable[[str], str]
) -> _Retry:
    """The retry for a transport failure, or raise at once when retrying cannot help."""
    hx = _httpx()
    if isinstance(exc, hx.TimeoutException):
        return _Retry(f"no answer within {timeout:g} s")
    if isinstance(exc, hx.ConnectError) and _unreachable(exc):
        msg = f"{who}: cannot reach {public} ({mask(str(exc))}); is the machine offline?"
        raise ServiceUnavailableError(msg, service=who, url=public) from None
    if isinstance(exc, (hx.InvalidURL, hx.UnsupportedProtocol)):
        msg = f"{who}: {public} is not an http(s) address httpx can call ({mask(str(exc))})"
        raise InvalidArgumentError(msg) from None
    if isinstance(exc, hx.ConnectError):
        return _Retry(f"connection error ({mask(str(exc))})")
    if isinstance(exc, hx.TransportError):
        return _Retry(f"connection dropped ({type(exc).__name__}: {mask(str(exc))})")
    msg = f"{who}: {public} failed: {type(exc).__name__}: {mask(str(exc))}"
    raise ServiceError(msg, service=who, url=public) from None


def _with_retries(
    try_once: Callable[[], Any],
    *,
    who: str,
    what: str,
    public: str,
    max_retries: int,
    backoff: float,
    max_backoff: float,
) -> Any:
    """``try_once()`` until it returns, raises anything but :class:`_Retry`, or tries run out.

    Waits ``backoff · 2^attempt`` (plus up to 25% jitter) between tries, or what the server's
    ``Retry-After`` said, never more than ``max_backoff``.
    """
    last = _Retry("no try was made")
    for attempt in range(max_retries + 1):
        try:
            return try_once()
        except _Retry as retry:
            last = retry
        if attempt < max_retries:
            problem = scrub(last.problem)
            log.info("%s: %s: %s; retry %d/%d", who, what, problem, attempt + 1, max_retries)
            delay = last.wait
            if delay is None:
                delay = backoff * (2**attempt) * (1.0 + 0.25 * random.random())
            time.sleep(min(delay, max_backoff))
    tries = max_retries + 1
    msg = f"{who}: {what} failed after {tries} {'try' if tries == 1 else 'tries'}: {last.problem}"
    raise ServiceError(scrub(msg), service=who, url=public, status=last.status)


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
        Strings (API keys) to mask in any error message or log line (with everything
        :func:`genept_fast._secrets.scrub` masks anyway).
    headers
        Extra headers sent with every request.
    name
        A service name used in error messages (defaults to the host).

    Raises
    ------
    InvalidArgumentError
        When made: ``base_url`` is not an http(s) URL (bad port, bad IPv6 literal, no scheme).

    Raises (from every request)
    ---------------------------
    ServiceUnavailableError
        The host cannot be reached (no retries).
    MalformedResponseError
        A 2xx answer whose body is not JSON (no retries).
    ServiceError
        A refusal (4xx other than 429), or every try failed.
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
        self.base_url = check_url(base_url, option="base_url").rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.limiter = RateLimiter(rate_limit)
        self._secrets = tuple(s for s in secrets if s)
        self.headers = {"User-Agent": "genept-fast", "Accept": "application/json"}
        self.headers.update(headers or {})
        self.name = name or public_url(self.base_url).partition("://")[2].split("/", 1)[0]
        #: Number of HTTP requests sent (tries included), for reports and tests.
        self.n_requests = 0
        self._count_lock = threading.Lock()
        self._http = _httpx().Client(
            headers=self.headers, timeout=self.timeout, follow_redirects=True
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> JsonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def mask(self, text: str) -> str:
        """``text`` with every secret replaced by ``***`` (this client's keys, and all that
        :func:`genept_fast._secrets.scrub` masks)."""
        return scrub(text, self._secrets)

    # -- internals --------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    def _request(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Any:
        public = self.mask(public_url(url))

        def try_once() -> Any:
            self.limiter.wait()
            with self._count_lock:
                self.n_requests += 1
            try:
                response = self._http.request(method, url, content=body, headers=headers)
            except _httpx().HTTPError as exc:
                raise _transport_problem(
                    exc, who=self.name, public=public, timeout=self.timeout, mask=self.mask
                ) from None
            status = response.status_code
            if status >= 400:
                problem = f"HTTP {status}{self._error_detail(response)}"
                if status not in RETRY_STATUSES:
                    msg = f"{self.name}: {method} {public} failed: {problem}"
                    raise ServiceError(msg, service=self.name, url=public, status=status)
                wait = None
                if status in (429, 503):
                    wait = parse_retry_after(response.headers.get("Retry-After"))
                raise _Retry(problem, status, wait)
            return self._decode(response.content, status, method, public)

        return _with_retries(
            try_once,
            who=self.name,
            what=f"{method} {public}",
            public=public,
            max_retries=self.max_retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
        )

    def _error_detail(self, response: httpx.Response) -> str:
        text = response.content.decode("utf-8", "replace").strip()
        if not text:
            return f" {response.reason_phrase}" if response.reason_phrase else ""
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
            raise MalformedResponseError(
                msg, service=self.name, url=public, status=status
            ) from None


# -- file downloads ------------------------------------------------------------------------------


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
    InvalidArgumentError
        ``url`` is not an http(s) URL (bad port, bad IPv6 literal, no scheme).
    ServiceUnavailableError
        The host cannot be reached.
    ServiceError
        A refusal (4xx other than 429) or too many failed tries.
    """
    check_url(url, option="url")
    hx = _httpx()
    path = Path(part)
    path.parent.mkdir(parents=True, exist_ok=True)
    public = public_url(url)
    job = _Download(
        url=url,
        path=path,
        size=size,
        timeout=timeout,
        progress=progress,
        who=name or public.partition("://")[2].split("/", 1)[0],
        public=public,
    )
    headers = {"User-Agent": "genept-fast", "Accept-Encoding": "identity"}
    with hx.Client(headers=headers, timeout=timeout, follow_redirects=True) as client:
        return int(
            _with_retries(
                lambda: job.try_once(client),
                who=job.who,
                what=f"GET {public}",
                public=public,
                max_retries=max_retries,
                backoff=backoff,
                max_backoff=30.0,
            )
        )


@dataclass(frozen=True)
class _Download:
    """One :func:`download` job: the file, what is expected, and who to name in messages."""

    url: str
    path: Path
    size: int | None
    timeout: float
    progress: Any
    who: str
    public: str

    def try_once(self, client: httpx.Client) -> int:
        """One try: ask for the missing bytes and append them; the bytes in ``path`` after it.

        Raises :class:`_Retry` when the transfer stopped short or the server asks to retry.
        """
        have = self._resume_point()
        if self.size is not None and have == self.size:
            return have
        self._restart_progress(have)
        extra = {"Range": f"bytes={have}-"} if have else {}
        try:
            with client.stream("GET", self.url, headers=extra) as response:
                if response.status_code == 416 and self.size is not None and have == self.size:
                    return have
                self._check_status(response, have)
                self._write_body(response, append=response.status_code == 206)
        except _httpx().HTTPError as exc:
            raise _transport_problem(
                exc, who=self.who, public=self.public, timeout=self.timeout, mask=scrub
            ) from None
        got = self.path.stat().st_size
        if self.size is None or got == self.size:
            return got
        problem = f"the connection closed after {got:,} of {self.size:,} bytes"
        raise _Retry(problem)

    def _resume_point(self) -> int:
        """Bytes already in ``path``; a file longer than ``size`` is deleted (start over)."""
        have = self.path.stat().st_size if self.path.exists() else 0
        if self.size is not None and have > self.size:
            self.path.unlink()
            have = 0
        return have

    def _restart_progress(self, n: int) -> None:
        if self.progress is not None:
            self.progress.n = n
            self.progress.refresh()

    def _check_status(self, response: httpx.Response, have: int) -> None:
        """Refuse a 4xx or a range that starts elsewhere; :class:`_Retry` on a status worth it."""
        status = response.status_code
        if status >= 400:
            problem = f"HTTP {status} {response.reason_phrase}".rstrip()
            if status not in RETRY_STATUSES:
                self._refuse(f"{self.who}: GET {self.public} failed: {problem}", status)
            raise _Retry(problem, status)
        start = _content_range_start(response.headers.get("Content-Range"))
        if status == 206 and start != have:
            self._refuse(
                f"{self.who}: GET {self.public} answered bytes from {start}, asked from {have}",
                206,
            )

    def _refuse(self, msg: str, status: int) -> NoReturn:
        raise ServiceError(scrub(msg), service=self.who, url=self.public, status=status)

    def _write_body(self, response: httpx.Response, *, append: bool) -> None:
        """Append the body (206) or replace the file with it (200: the whole file again)."""
        with self.path.open("ab" if append else "wb") as fh:
            if not append:
                self._restart_progress(0)
            for chunk in response.iter_raw():  # as received: a drop keeps it all
                fh.write(chunk)
                if self.progress is not None:
                    self.progress.update(len(chunk))


# -- the openai client's exceptions --------------------------------------------------------------


def is_openai_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an exception of the ``openai`` client (without importing it)."""
    openai = sys.modules.get("openai")
    return openai is not None and isinstance(exc, openai.OpenAIError)


def _status_message(exc: Any) -> str:
    message = ""
    try:
        payload = exc.response.json()
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
        elif isinstance(err, str):
            message = err
    except Exception:  # a body that is not JSON: the reason phrase says enough
        message = ""
    return message or exc.response.reason_phrase or "error"


def openai_error(
    exc: BaseException,
    *,
    where: str,
    action: str | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    secrets: Iterable[str | None] = (),
) -> ServiceError:
    """The :class:`~genept_fast.errors.ServiceError` for an exception of the ``openai`` client.

    The one place where ``openai`` exceptions are translated (the embedders, the Batch API
    runner and the ``llm`` gene text source all come here). ``where`` names the server
    (``"OpenAI"``, ``"LLM at http://host/v1"``), ``action`` what was being done (``"Batch API,
    creating the batch"``), ``timeout`` and ``retries`` the client's settings, for the message.
    The message, ``where`` included, passes through :func:`genept_fast._secrets.scrub` with
    ``secrets`` and the password of the URL the request went to (the ``Basic`` credential
    ``httpx`` builds from it, should the server echo it, included).
    """
    keys = [s for s in secrets if s]
    request = getattr(exc, "request", None)  # httpx.Request of status and connection errors
    if request is not None:
        remember_url(str(getattr(request, "url", "")))
    error = _openai_error(exc, where=where, action=action, timeout=timeout, retries=retries)
    return type(error)(
        scrub(str(error), keys),
        service=scrub(where, keys),
        url=public_url(str(request.url)) if request is not None else None,
        status=error.status,
    )


def _openai_error(
    exc: BaseException,
    *,
    where: str,
    action: str | None,
    timeout: float | None,
    retries: int | None,
) -> ServiceError:
    """:func:`openai_error` before its message is scrubbed."""
    import openai

    head = f"{action}: " if action else ""
    tried = f" ({retries} retries)" if retries is not None else ""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        hint = ""
        if status == 401:
            hint = " (check OPENAI_API_KEY)"
        elif (status == 429 or status >= 500) and retries is not None:
            hint = f" after {retries} retries"
        msg = f"{head}{where} answered {status}{hint}: {_status_message(exc)}"
        return ServiceError(msg, service=where, status=status)
    if isinstance(exc, openai.APITimeoutError):
        within = f"within {timeout:g} s" if timeout is not None else "in time"
        return ServiceError(f"{head}{where} did not answer {within}{tried}", service=where)
    if isinstance(exc, openai.APIConnectionError):
        reason = str(exc.__cause__ or exc)
        if _unreachable(exc):
            msg = f"{head}cannot reach {where}: {reason}"
            return ServiceUnavailableError(msg, service=where)
        return ServiceError(
            f"{head}the connection to {where} failed{tried}: {reason}", service=where
        )
    detail = str(getattr(exc, "message", None) or exc)
    msg = f"{head}{where} sent a malformed response: {type(exc).__name__}: {detail}"
    return MalformedResponseError(msg, service=where)
