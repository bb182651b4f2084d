"""A real HTTP file server in the manner of Zenodo's record downloads, for tests.

``GET /records/<id>/files/<name>?download=1`` answers 302 to ``/api/records/<id>/files/<name>/
content``, which serves the file's bytes: 200 with ``Content-Length``, or 206 with
``Content-Range`` for a ``Range: bytes=N-`` request (416 past the end), ``Accept-Ranges:
bytes`` either way. Faults: ``drop_after`` closes the connection after that many bytes of the
file have been sent (once per listed offset), ``ignore_range`` answers every request with the
whole file (200), as a server without range support does. Every request is logged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from servers.base import LoopbackServer


@dataclass
class Hit:
    path: str
    range: str | None
    status: int


@dataclass
class ZenodoServer(LoopbackServer):
    """Serves ``files`` (name → bytes) of one record."""

    files: dict[str, bytes]
    record: str = "10833191"
    drop_after: list[int] = field(default_factory=list)
    ignore_range: bool = False
    requests: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"{self.root}/records/{self.record}/files/{name}?download=1"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(_ZenodoHandler):
            zenodo = server

        return Handler


class _ZenodoHandler(BaseHTTPRequestHandler):
    """The record's redirect and its files' content (with ranges and injected drops)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
    # client's delayed ACK hold each keep-alive answer for ~40 ms.
    disable_nagle_algorithm = True
    zenodo: ZenodoServer

    def log_message(self, *args: object) -> None:
        pass

    def _log(self, status: int) -> None:
        with self.zenodo._lock:
            self.zenodo.requests.append(Hit(self.path, self.headers.get("Range"), status))

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self._log(status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        record = self.zenodo.record
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) == 4 and parts[:3] == ["records", record, "files"]:
            target = f"/api/records/{record}/files/{parts[3]}/content"
            return self._empty(302, {"Location": target})
        ok = len(parts) == 6 and parts[:3] == ["api", "records", record]
        if not ok or parts[5] != "content" or parts[4] not in self.zenodo.files:
            return self._empty(404)
        data = self.zenodo.files[parts[4]]
        start = 0
        wanted = self.headers.get("Range")
        if wanted and not self.zenodo.ignore_range:
            if not wanted.startswith("bytes=") or not wanted[6:].endswith("-"):
                return self._empty(400)
            start = int(wanted[6:-1])
            if start >= len(data):
                return self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
        return self._send_file(data, start)

    def _send_file(self, data: bytes, start: int) -> None:
        """``data`` from ``start`` (206, or 200 from 0), cut at the next drop point listed."""
        status = 206 if start else 200
        self._log(status)
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        stop = self._drop_point(start, len(data))
        self.wfile.write(data[start:stop])
        self.wfile.flush()
        if stop < len(data):  # the connection dies mid-body
            self.close_connection = True

    def _drop_point(self, start: int, size: int) -> int:
        """Where this answer stops: the first listed drop after ``start`` (used up), or ``size``."""
        with self.zenodo._lock:
            drops = [d for d in self.zenodo.drop_after if start < d < size]
            if not drops:
                return size
            stop = min(drops)
            self.zenodo.drop_after.remove(stop)
            return stop
