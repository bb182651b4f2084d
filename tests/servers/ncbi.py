"""A real HTTP server speaking NCBI E-utilities JSON (``esearch``, ``esummary``), for tests.

It runs on 127.0.0.1 (port 0) in a thread and serves real NCBI Gene records (symbol, full name,
aliases, RefSeq summary) from ``shared/data/ncbi_gene_summaries_2022.parquet``; summaries get
the ``[provided by RefSeq, <date>]`` tail that NCBI's own records carry. Like NCBI it enforces a
rate limit (3 requests per second, 10 with an ``api_key``) and answers 429 with NCBI's error
body when it is exceeded.

:class:`JsonServer` is the shared base of the test servers: a request log, injected faults
(status codes with headers, delays beyond the client's timeout, malformed bodies) and a
``fail_from`` switch that makes every request from the n-th on fail (to kill a job mid-way).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

import polars as pl

from servers.base import LoopbackServer

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class Fault:
    """What the server does to the next request instead of (or before) answering it.

    ``kind``: ``"status"`` (answer ``status`` with ``headers`` and ``body``), ``"delay"`` (sleep
    ``delay`` seconds, then answer normally), ``"malformed"`` (200 with a truncated JSON body).
    """

    kind: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]  # from the URL only
    form: dict[str, list[str]]  # from the URL and a form or JSON body
    headers: dict[str, str]  # names in lower case
    json: Any = None


class JsonServer(LoopbackServer):
    """Base class: subclasses implement :meth:`handle` and return ``(status, headers, body)``."""

    def __init__(self) -> None:
        self.faults: deque[Fault] = deque()
        self.requests: list[Request] = []
        self.fail_from: int | None = None
        self.lock = threading.Lock()
        super().__init__()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    def inject(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def reset(self) -> None:
        """Forget logged requests and pending faults (servers are shared between tests)."""
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.fail_from = None

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def handle(self, req: Request) -> tuple[int, dict[str, str], Any]:  # pragma: no cover
        raise NotImplementedError


def _make_handler(server: JsonServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_JsonHandler):
        json_server = server

    return Handler


class _JsonHandler(BaseHTTPRequestHandler):
    """Reads a request into a :class:`Request`, logs it, applies the next fault, and otherwise
    sends what :meth:`JsonServer.handle` answers."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
    # client's delayed ACK hold each keep-alive answer for ~40 ms.
    disable_nagle_algorithm = True
    json_server: JsonServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        req = self._read_request(method)
        fault = self._next_fault(req)
        if fault is not None and fault.kind == "status":
            self._send(fault.status, fault.headers, fault.body)
            return
        if fault is not None and fault.kind == "malformed":
            self._send(200, {}, b'{"result": {"uids": ["7157"], "7157": {"name": "TP')
            return
        status, headers, body = self.json_server.handle(req)
        self._send(status, headers, body)

    def _read_request(self, method: str) -> Request:
        """The request: URL query, body fields (form) or JSON body, headers in lower case."""
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        form = {k: list(v) for k, v in query.items()}
        body_json = None
        ctype = self.headers.get("Content-Type", "")
        if raw and "json" in ctype:
            try:
                body_json = json.loads(raw)
            except ValueError:
                body_json = None
        elif raw:
            for k, v in urllib.parse.parse_qs(raw.decode(), keep_blank_values=True).items():
                form.setdefault(k, []).extend(v)
        headers = {k.lower(): v for k, v in self.headers.items()}
        return Request(method, parts.path, query, form, headers, body_json)

    def _next_fault(self, req: Request) -> Fault | None:
        """Log ``req`` and take the fault it gets: the next injected one, or a failure from
        ``fail_from`` on; a delay is slept here (then the request is answered normally)."""
        server = self.json_server
        with server.lock:
            server.requests.append(req)
            n = len(server.requests)
            fault = server.faults.popleft() if server.faults else None
        if server.fail_from is not None and n >= server.fail_from:
            fault = Fault("status", 500, body={"error": "injected failure"})
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay)
            fault = None
        return fault

    def _send(self, status: int, headers: dict[str, str], body: Any) -> None:
        if isinstance(body, bytes):
            data = body
        elif body is None:
            data = b""
        else:
            data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout tests)
            pass


# -- NCBI ----------------------------------------------------------------------------------------

_SYM_RE = re.compile(r'"?([^"()\s]+)"?\[sym\]', re.IGNORECASE)
_TXID_RE = re.compile(r"txid(\d+)\[orgn\]", re.IGNORECASE)


def load_genes(shared_data: Path) -> pl.DataFrame:
    """The real NCBI gene table the servers serve."""
    return pl.read_parquet(shared_data / "ncbi_gene_summaries_2022.parquet")


class NcbiServer(JsonServer):
    """NCBI E-utilities for ``db=gene``: ``esearch.fcgi`` (``[sym]`` terms) and ``esummary.fcgi``.

    Paths are served under ``/entrez/eutils/`` as at NCBI; :attr:`url` is that base URL.
    """

    def __init__(self, genes: pl.DataFrame, *, enforce_rate: bool = True) -> None:
        super().__init__()
        self.enforce_rate = enforce_rate
        self.records: dict[str, dict[str, Any]] = {}
        self.by_symbol: dict[str, list[str]] = {}
        for row in genes.iter_rows(named=True):
            uid = str(row["entrez_id"])
            self.records.setdefault(uid, row)  # the table repeats a few IDs under an old symbol
            names = [row["symbol"], *(s.strip() for s in (row["synonyms"] or "").split(";"))]
            for name in names:
                if name:
                    self.by_symbol.setdefault(name.upper(), []).append(uid)
        self._stamps: deque[float] = deque()

    @property
    def url(self) -> str:
        return f"{self.root}/entrez/eutils"

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self._stamps.clear()

    def handle(self, req: Request) -> tuple[int, dict[str, str], Any]:
        key = (req.form.get("api_key") or [None])[0]
        if self.enforce_rate:
            limit = 10 if key else 3
            now = time.monotonic()
            with self.lock:
                while self._stamps and now - self._stamps[0] >= 1.0:
                    self._stamps.popleft()
                self._stamps.append(now)
                over = len(self._stamps) > limit
            if over:
                body = {
                    "error": "API rate limit exceeded",
                    "api-key": key or "127.0.0.1",
                    "count": str(len(self._stamps)),
                    "limit": str(limit),
                }
                return 429, {"Retry-After": "1"}, body
        if req.path.endswith("/esearch.fcgi"):
            return self._esearch(req)
        if req.path.endswith("/esummary.fcgi"):
            return self._esummary(req)
        return 404, {}, {"error": f"unknown path {req.path}"}

    def _esearch(self, req: Request) -> tuple[int, dict[str, str], Any]:
        term = (req.form.get("term") or [""])[0]
        if (req.form.get("db") or [""])[0] != "gene":
            return 200, {}, {"error": "Invalid db name specified"}
        taxa = _TXID_RE.findall(term)
        uids: list[str] = []
        if not taxa or taxa == ["9606"]:
            for sym in _SYM_RE.findall(term):
                uids.extend(self.by_symbol.get(sym.upper(), []))
        uids = list(dict.fromkeys(uids))
        retmax = int((req.form.get("retmax") or ["20"])[0])
        result = {
            "count": str(len(uids)),
            "retmax": str(min(retmax, len(uids))),
            "retstart": "0",
            "idlist": uids[:retmax],
            "translationset": [],
            "querytranslation": term,
        }
        return 200, {}, {"header": {"type": "esearch", "version": "0.3"}, "esearchresult": result}

    def _esummary(self, req: Request) -> tuple[int, dict[str, str], Any]:
        ids = [i for i in ",".join(req.form.get("id") or []).split(",") if i]
        result: dict[str, Any] = {"uids": ids}
        for uid in ids:
            row = self.records.get(uid)
            if row is None:
                result[uid] = {"uid": uid, "error": "cannot get document summary"}
                continue
            summary = row["summary"]
            if summary:
                summary = f"{summary} [provided by RefSeq, Jul 2008]"
            aliases = ", ".join(s.strip() for s in (row["synonyms"] or "").split(";") if s.strip())
            result[uid] = {
                "uid": uid,
                "name": row["symbol"],
                "description": row["full_name"],
                "status": "",
                "currentid": "",
                "chromosome": "",
                "geneticsource": "genomic",
                "otheraliases": aliases,
                "otherdesignations": "",
                "nomenclaturesymbol": row["symbol"],
                "nomenclaturename": row["full_name"],
                "nomenclaturestatus": "Official",
                "summary": summary or "",
                "organism": {
                    "scientificname": "Homo sapiens",
                    "commonname": "human",
                    "taxid": 9606,
                },
                "locationhist": [],
            }
        return 200, {}, {"header": {"type": "esummary", "version": "0.3"}, "result": result}
