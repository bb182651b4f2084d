"""The one scrubber: no secret reaches a message, a log line, a crash log or a stored file.

Secrets are API keys (``OPENAI_API_KEY`` and any key handed to a client) and the user-info of
URLs (``http://user:password@host/...``). What can carry them, and what this module does:

- **URLs** given by the user: :func:`check_url` refuses a malformed one (bad port, bad IPv6
  literal, no host, a scheme other than http(s)) with an
  :class:`~genept_fast.errors.InvalidArgumentError` naming it, password masked, and remembers
  its password; :func:`strip_userinfo` and :func:`public_url` give the URL without
  credentials (and without the query) for everything stored: provenance, cache keys, the
  ``url`` of a :class:`~genept_fast.errors.ServiceError`.
- **Text** (error messages, echoed server bodies, warnings, crash logs): :func:`scrub` masks
  as ``***``

  - the user-info of every URL in it (``scheme://***@host``);
  - every ``Authorization`` value, whatever its scheme (``Authorization: ***``), and every
    ``Basic``/``Bearer`` credential (``Basic ***``: the base64 of ``user:password`` that
    ``httpx`` builds from a URL's user-info, a Bearer token);
  - every remembered secret, ``OPENAI_API_KEY`` and the password of ``OPENAI_BASE_URL``, in
    each form a message can quote it: as is, percent-encoded, JSON- or repr-escaped, and a
    password also as the base64 of ``user:password``.

Secrets are remembered for the life of the process (in memory only; never written), so a
message built far from the call that saw the URL is still scrubbed. A secret shorter than
:data:`MIN_SECRET_LENGTH` characters (a placeholder key such as ``test``) is masked only where
its place says what it is (user-info, an ``Authorization`` value, the ``Basic`` credential
built from it, which is longer): masking every ``test`` in a message would mangle file names
and protect nothing that a guess would not find.

URLs are parsed with :mod:`urllib.parse` (its port and IPv6 checks) and ``httpx.URL`` (the
client that will call them); the patterns below only find where a URL or a header value sits
in free text.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import urllib.parse
from typing import TYPE_CHECKING

from genept_fast.errors import InvalidArgumentError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "check_url",
    "public_url",
    "remember",
    "remember_url",
    "scrub",
    "strip_userinfo",
]

MASK = "***"
#: Remembered secrets shorter than this are masked only by their place (see the module doc).
MIN_SECRET_LENGTH = 6
#: Schemes a URL option may name (every client here speaks HTTP).
URL_SCHEMES = ("http", "https")

_lock = threading.Lock()
_remembered: set[str] = set()

# ``scheme://`` then the authority up to its last ``@`` (as urllib.parse splits user-info).
_USERINFO = re.compile(r"(?i)((?:\b[a-z][a-z0-9+.\-]*)?://)[^\s/?#\"'<>]*@")
# An Authorization header value, as a header line, a JSON or Python mapping entry, a repr.
_AUTH_VALUE = re.compile(
    r"(?i)(\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*(?:b?[\"'])?)"
    r"([^\"',;\r\n}\]]*)"
)
# A credential after its scheme, wherever it stands (an echoed header, a debug line).
_SCHEME_CREDENTIAL = re.compile(r"(?i)\b(basic|bearer)(\s+)([A-Za-z0-9+/=._~\-]{8,})")
# OpenAI-style keys that were never handed to us (a key pasted into a URL or a file name).
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")


def _forms(secret: str) -> set[str]:
    """``secret`` as each message can quote it."""
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
    }
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def _basic(user: str, password: str) -> str:
    """The ``Basic`` credential ``httpx`` sends for a URL's user-info."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def remember(*secrets: str | None) -> None:
    """Mask ``secrets`` (API keys, passwords) in every later :func:`scrub`."""
    found: set[str] = set()
    for secret in secrets:
        if secret:
            found |= _forms(secret)
    if found:
        with _lock:
            _remembered.update(found)


def _userinfo(url: str) -> tuple[str, str] | None:
    """The (user, password) of ``url``, unquoted, or None (no user-info, or not a URL)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and parts.password is None and parts.username is None:
        if not parts.netloc and "://" in url:  # no scheme ("://u:pw@h"): by hand below
            parts = None
        else:
            return None
    if parts is None:  # unparsable (a bad IPv6 literal) or no scheme: the user-info by hand
        netloc = url.partition("://")[2].split("/", 1)[0]
        if "@" not in netloc:
            return None
        info = netloc.rpartition("@")[0]
        user, _, password = info.partition(":")
    else:
        user, password = parts.username or "", parts.password or ""
    return urllib.parse.unquote(user), urllib.parse.unquote(password)


def remember_url(url: str | None) -> None:
    """Remember the password of ``url`` (and the ``Basic`` credential built from it)."""
    if not url or "@" not in url:
        return
    info = _userinfo(url)
    if info is None:
        return
    user, password = info
    if password:
        remember(password, _basic(user, password))
    elif user:  # a token given as the user name (``https://TOKEN@host``)
        remember(user, _basic(user, ""))


def _environment() -> list[str]:
    """Secrets the process holds in its environment."""
    found = []
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        found.append(key)
    base = os.environ.get("OPENAI_BASE_URL")
    if base and "@" in base:
        info = _userinfo(base)
        if info is not None and info[1]:
            found += [info[1], _basic(*info)]
    return found


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every secret masked as ``***`` (see the module doc).

    Parameters
    ----------
    text
        A message, an echoed server body, a log or a traceback.
    secrets
        Further secrets to mask in this text only (API keys a client holds).
    """
    if not text:
        return text
    extra: set[str] = set()
    for secret in [*secrets, *_environment()]:
        if secret:
            extra |= _forms(secret)
    with _lock:
        known = _remembered | extra
    for form in sorted(known, key=len, reverse=True):  # a longer form before its parts
        if form in text:
            text = text.replace(form, MASK)
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _AUTH_VALUE.sub(lambda m: m.group(1) + (MASK if m.group(2).strip() else ""), text)
    text = _SCHEME_CREDENTIAL.sub(rf"\1\2{MASK}", text)
    return _OPENAI_KEY.sub(MASK, text)


def strip_userinfo(url: str) -> str:
    """``url`` without its user-info (``user:password@``); the rest as given.

    A URL that cannot be parsed has its user-info masked by :func:`scrub` instead.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return scrub(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def public_url(url: str) -> str:
    """``url`` as it may be shown and stored: no user-info, no query string, no fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return scrub(url.split("?", 1)[0].split("#", 1)[0])
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host, query="", fragment=""))


def _url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as the address of an HTTP client, or None."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "it holds a space or a control character (percent-encode it)"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError as exc:
        return f"{exc}".replace("Invalid IPv6 URL", "a bad IPv6 literal (brackets)")
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        return "no scheme and host; write it as http://host:port/path"
    if scheme not in URL_SCHEMES:
        return f"the scheme {parts.scheme!r} is not http or https"
    if not parts.hostname:
        return "no host name"
    if port == 0:
        return "port 0 is not a port a server listens on"
    import httpx2

    try:
        httpx2.URL(url)
    except httpx2.InvalidURL as exc:
        return str(exc)
    return None


def check_url(url: object, *, option: str = "url") -> str:
    """``url`` if it is an http(s) address a client can call; remembers its password.

    Parameters
    ----------
    url
        The address to check.
    option
        The option or argument that gave it, for the message (``"--base-url"``).

    Returns
    -------
    str
        ``url`` unchanged.

    Raises
    ------
    InvalidArgumentError
        A malformed URL: not a string, a bad port, a bad IPv6 literal, no scheme or host, a
        scheme other than http(s). The message names it with its password masked.
    """
    if not isinstance(url, str):
        msg = f"{option} must be a URL string, got {type(url).__name__}"
        raise InvalidArgumentError(msg)
    remember_url(url)
    problem = "it is empty" if not url.strip() else _url_problem(url)
    if problem is not None:
        msg = f"{option}: {scrub(url)!r} is not a valid http(s) URL: {problem}"
        raise InvalidArgumentError(msg)
    return url
