"""Embedding large jobs through OpenAI's Batch API (half price, results within 24 hours).

:meth:`OpenAIEmbedder.embed <genept_fast.embed.openai_api.OpenAIEmbedder.embed>` with
``use_batch=True`` hands the texts that are not cached to :func:`run_batch_job`, which

1. packs them into ``POST /v1/embeddings`` requests exactly as the synchronous path does
   (at most ``batch_size`` inputs and ``max_tokens_per_request`` tokens each, inputs truncated
   to the model's limit) and writes them as JSONL lines ``{"custom_id", "method": "POST",
   "url": "/v1/embeddings", "body": {"model", "input", "encoding_format"[, "dimensions"]}}``,
   split into files of at most :data:`MAX_REQUESTS_PER_BATCH` lines and
   :data:`MAX_BATCH_FILE_BYTES` bytes;
2. uploads each file (``client.files.create(purpose="batch")``) and creates one batch per file
   (``client.batches.create(endpoint="/v1/embeddings", completion_window="24h")``);
3. polls ``client.batches.retrieve`` every ``poll_interval`` seconds (logging each change of
   status on the ``genept_fast.embed.batch`` logger), and as soon as a batch completes,
   streams its output file (``client.files.content``), parses each line by ``custom_id``,
   checks every vector's dimension and writes it to the embedding cache at once.

**Resuming.** Before anything is uploaded, a job file ``<cache dir>/batches/<job>.json`` is
written (atomically) that lists, for every batch, the hashes of its texts; the uploaded file
id and the batch id are added the moment they are known. ``<job>`` is a hash of the cache
namespace (provider, server, model, dimensions) and of the texts. A process killed while it
waits leaves the job file behind, and the next run with the same model and dimensions adopts
every unfinished batch that holds a text it needs — it polls the same batch instead of
submitting (and paying for) the texts again, and only texts in no pending batch are submitted
anew. A batch whose file was uploaded but whose id was not yet recorded is looked up among the
server's batches by its input file. A job file is deleted once all its batches are stored.

**Failures.** A batch that ends ``failed``, ``expired`` or ``cancelled`` raises a
:class:`~genept_fast.errors.BatchJobError` naming the batch id and the messages of its errors
and error file — after the other batches were collected and any partial output (an expired
batch keeps what it finished) was cached; it is dropped from the job file, so a rerun submits
only what is still missing. Requests that failed *inside* a completed batch (or have no result
line) are retried synchronously through ``POST /v1/embeddings`` at the standard price, with a
warning in the log saying how many and why.

Nothing written here (job files, JSONL files, logs, errors) holds the API key.

The runner knows the embedder only through :class:`BatchEmbedder`, the small public surface
of :class:`~genept_fast.embed.openai_api.OpenAIEmbedder` it uses (its client, request
packing, one synchronous request, response parsing, error translation); this module does not
import the embedder's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from genept_fast._atomic import atomic_write_bytes
from genept_fast.embed.cache import text_key
from genept_fast.errors import (
    BatchJobError,
    InputError,
    MalformedResponseError,
    ServiceError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import numpy as np

    from genept_fast.embed.cache import EmbeddingCache

__all__ = [
    "BATCH_ENDPOINT",
    "MAX_BATCH_FILE_BYTES",
    "MAX_REQUESTS_PER_BATCH",
    "BatchEmbedder",
    "BatchJobError",
    "pending_jobs",
    "run_batch_job",
]

logger = logging.getLogger(__name__)

#: The Batch API's limit on requests in one input file.
MAX_REQUESTS_PER_BATCH = 50_000
#: The Batch API's limit on the size of one input file (200 MB).
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024
#: The endpoint every request of an embeddings batch goes to.
BATCH_ENDPOINT = "/v1/embeddings"
_STATE_VERSION = 1
_TERMINAL_FAILURES = ("failed", "expired", "cancelled")
_MESSAGES_SHOWN = 5


class BatchEmbedder(Protocol):
    """What the runner uses of an embedder (:class:`~genept_fast.embed.openai_api.OpenAIEmbedder`
    provides it)."""

    model: str
    model_id: str
    dimensions: int | None
    dimension: int | None
    encoding_format: str
    timeout: float
    cache: EmbeddingCache | None

    @property
    def cache_namespace(self) -> str: ...
    @property
    def where(self) -> str: ...
    def client(self) -> Any: ...
    def pack(self, bounds: Sequence[int]) -> list[list[int]]: ...
    def request(self, batch: list[str]) -> np.ndarray: ...
    def parse_vectors(self, payload: Any, n: int) -> np.ndarray: ...
    def scrub(self, text: str) -> str: ...
    def service_error(self, exc: BaseException, action: str | None = None) -> BaseException: ...


@dataclass
class _Part:
    """One batch of a job: its requests (text-hash lists) and where it stands."""

    job: _JobFile
    index: int
    requests: list[list[str]]
    input_file_id: str | None = None
    batch_id: str | None = None
    done: bool = False
    status: str = ""

    def text_keys(self) -> set[str]:
        return {k for req in self.requests for k in req}

    def custom_id(self, j: int) -> str:
        return f"{self.job.job_id}-{self.index}-{j}"

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "input_file_id": self.input_file_id,
            "batch_id": self.batch_id,
            "done": self.done,
            "requests": self.requests,
        }


@dataclass
class _JobFile:
    """A job's state file (JSON, written atomically; no texts, no credentials)."""

    path: Path
    job_id: str
    namespace: str
    created: float
    parts: list[_Part] = field(default_factory=list)

    def save(self) -> None:
        live = [p for p in self.parts if not p.done]
        if not live:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        payload = {
            "version": _STATE_VERSION,
            "job": self.job_id,
            "namespace": self.namespace,
            "endpoint": BATCH_ENDPOINT,
            "created": self.created,
            "parts": [p.to_json() for p in live],
        }
        atomic_write_bytes(self.path, json.dumps(payload).encode())

    @classmethod
    def load(cls, path: Path) -> _JobFile | None:
        try:
            payload = json.loads(path.read_bytes())
            if payload.get("version") != _STATE_VERSION:
                return None
            job = cls(
                path=path,
                job_id=str(payload["job"]),
                namespace=str(payload["namespace"]),
                created=float(payload.get("created", 0.0)),
            )
            for p in payload["parts"]:
                job.parts.append(
                    _Part(
                        job=job,
                        index=int(p["index"]),
                        requests=[[str(k) for k in req] for req in p["requests"]],
                        input_file_id=p.get("input_file_id"),
                        batch_id=p.get("batch_id"),
                        done=bool(p.get("done", False)),
                    )
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable batch job file %s: %s", path, exc)
            return None
        return job


def _job_files(state_dir: Path) -> list[Path]:
    if not state_dir.is_dir():
        return []
    return sorted(state_dir.glob("job-*.json"))


def pending_jobs(state_dir: str | os.PathLike[str], namespace: str | None = None) -> list[dict]:
    """The unfinished batch jobs recorded in ``state_dir`` (optionally for one namespace).

    Returns
    -------
    list of dict
        ``{"job", "namespace", "path", "batch_ids", "n_texts"}`` per job file.
    """
    out: list[dict] = []
    for path in _job_files(Path(state_dir)):
        job = _JobFile.load(path)
        if job is None or (namespace is not None and job.namespace != namespace):
            continue
        live = [p for p in job.parts if not p.done]
        out.append(
            {
                "job": job.job_id,
                "namespace": job.namespace,
                "path": str(path),
                "batch_ids": [p.batch_id for p in live if p.batch_id],
                "n_texts": len({k for p in live for k in p.text_keys()}),
            }
        )
    return out


def _job_id(namespace: str, keys: Sequence[str]) -> str:
    h = hashlib.sha256(namespace.encode())
    for k in sorted(keys):
        h.update(b"\0" + k.encode())
    return h.hexdigest()[:24]


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


class _Runner:
    """One call of :func:`run_batch_job`."""

    def __init__(
        self,
        embedder: BatchEmbedder,
        todo: list[str],
        sent: list[str],
        sink: Callable[[Sequence[int], np.ndarray], None],
        *,
        bounds: list[int],
        state_dir: Path,
        poll_interval: float,
        max_wait: float | None,
        max_requests: int,
        max_bytes: int,
    ) -> None:
        self.emb = embedder
        self.todo = todo
        self.sent = sent
        self.bounds = bounds
        self.sink = sink
        self.state_dir = state_dir
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.namespace = embedder.cache_namespace
        self.keys = [text_key(t).hex() for t in todo]
        self.position = {k: i for i, k in enumerate(self.keys)}
        self.received: set[int] = set()
        self.retry: list[int] = []
        self.retry_reasons: list[str] = []
        self.failures: list[str] = []
        self.client = embedder.client()

    # -- calls through the client, with errors that never carry the key ------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise self.emb.service_error(exc, f"Batch API, {what}") from None

    # -- planning ------------------------------------------------------------------------------
    def adopt(self) -> tuple[list[_Part], set[str]]:
        """Unfinished batches of earlier runs that hold texts of this one."""
        adopted: list[_Part] = []
        covered: set[str] = set()
        for path in _job_files(self.state_dir):
            job = _JobFile.load(path)
            if job is None or job.namespace != self.namespace:
                continue
            changed = False
            for part in job.parts:
                if part.done:
                    continue
                keys = part.text_keys()
                if not any(k in self.position for k in keys):
                    continue
                if part.batch_id is None and part.input_file_id is not None:
                    part.batch_id = self._find_batch(part.input_file_id)
                    changed = changed or part.batch_id is not None
                if part.batch_id is None and part.input_file_id is None:
                    # Never uploaded: nothing was paid; its texts are planned again.
                    part.done = True
                    changed = True
                    continue
                adopted.append(part)
                covered |= keys
            if changed:
                job.save()
        if adopted:
            ids = ", ".join(p.batch_id or f"(file {p.input_file_id})" for p in adopted)
            logger.info("resuming %d batch(es) submitted earlier: %s", len(adopted), ids)
        return adopted, covered

    def _find_batch(self, input_file_id: str) -> str | None:
        """The batch already created from ``input_file_id`` (a run killed just after it)."""
        page = self._call("listing batches", self.client.batches.list, limit=100)
        for b in _field(page, "data") or []:
            if _field(b, "input_file_id") == input_file_id:
                return str(_field(b, "id"))
        return None

    def plan(self, positions: list[int]) -> list[_Part]:
        """New batches for ``positions`` of ``todo``, recorded in a new job file."""
        keys = [self.keys[p] for p in positions]
        job_id = _job_id(self.namespace, keys)
        if (self.state_dir / f"job-{job_id}.json").exists():
            # Same texts as a job whose batches were all dropped above: never overwrite state.
            job_id = f"{job_id}{os.getpid():x}{time.time_ns() & 0xFFFFFF:x}"
        job = _JobFile(
            path=self.state_dir / f"job-{job_id}.json",
            job_id=job_id,
            namespace=self.namespace,
            created=time.time(),
        )
        bounds = [self.bounds[p] for p in positions]
        requests = [[positions[i] for i in req] for req in self.emb.pack(bounds)]
        cur: list[list[int]] = []
        cur_bytes = 0
        groups: list[list[list[int]]] = []
        for req in requests:
            size = len(self._line("x" * 64, req)) + 1
            if size > self.max_bytes:
                msg = (
                    f"one batch request is {size} bytes, over the {self.max_bytes}-byte file limit"
                )
                raise InputError(msg)
            if cur and (len(cur) >= self.max_requests or cur_bytes + size > self.max_bytes):
                groups.append(cur)
                cur, cur_bytes = [], 0
            cur.append(req)
            cur_bytes += size
        if cur:
            groups.append(cur)
        for i, group in enumerate(groups):
            reqs = [[self.keys[p] for p in req] for req in group]
            job.parts.append(_Part(job=job, index=i, requests=reqs))
        job.save()
        return job.parts

    def _body(self, positions: Sequence[int]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.emb.model,
            "input": [self.sent[p] for p in positions],
            "encoding_format": self.emb.encoding_format,
        }
        if self.emb.dimensions is not None:
            body["dimensions"] = self.emb.dimensions
        return body

    def _line(self, custom_id: str, positions: Sequence[int]) -> bytes:
        obj = {
            "custom_id": custom_id,
            "method": "POST",
            "url": BATCH_ENDPOINT,
            "body": self._body(positions),
        }
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    def create_batch(self, part: _Part) -> None:
        """Create the batch of a part whose input file is uploaded, and record its id."""
        batch = self._call(
            "creating the batch",
            self.client.batches.create,
            input_file_id=part.input_file_id,
            endpoint=BATCH_ENDPOINT,
            completion_window="24h",
            metadata={"genept_fast_job": f"{part.job.job_id}-{part.index}"},
        )
        part.batch_id = str(batch.id)
        part.status = str(batch.status)
        part.job.save()

    def submit(self, part: _Part) -> None:
        """Upload the part's JSONL file and create its batch, recording both ids at once."""
        tmp = self.state_dir / f".upload-{part.job.job_id}-{part.index}.jsonl"
        try:
            with tmp.open("wb") as fh:
                for j, req in enumerate(part.requests):
                    fh.write(self._line(part.custom_id(j), [self.position[k] for k in req]))
                    fh.write(b"\n")
            with tmp.open("rb") as fh:
                name = f"genept-fast-{part.job.job_id}-{part.index}.jsonl"
                obj = self._call(
                    "uploading the input file",
                    self.client.files.create,
                    file=(name, fh, "application/jsonl"),
                    purpose="batch",
                    timeout=max(self.emb.timeout, 600.0),
                )
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        part.input_file_id = str(obj.id)
        part.job.save()
        self.create_batch(part)
        n_texts = sum(len(r) for r in part.requests)
        logger.info(
            "submitted batch %s: %d requests, %d texts (%s)",
            part.batch_id,
            len(part.requests),
            n_texts,
            self.emb.model_id,
        )

    # -- results -------------------------------------------------------------------------------
    def _lines(self, file_id: str) -> Iterator[bytes]:
        try:
            with self.client.files.with_streaming_response.content(file_id) as resp:
                for line in resp.iter_lines():
                    if line.strip():
                        yield line.encode() if isinstance(line, str) else line
        except Exception as exc:
            raise self.emb.service_error(exc, f"Batch API, downloading {file_id}") from None

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        positions: list[int] = []
        rows: list[int] = []
        others: list[int] = []
        for r, k in enumerate(keys):
            p = self.position.get(k)
            if p is None:
                others.append(r)
            elif p not in self.received:
                positions.append(p)
                rows.append(r)
        if positions:
            self.sink(positions, vectors[rows])
            self.received.update(positions)
        cache = self.emb.cache
        if others and cache is not None:
            # Texts of an adopted batch that this call did not ask for: paid for, so kept.
            dim = self.emb.dimension
            if dim is not None and vectors.shape[1] != dim:
                msg = f"{self.emb.where}: a batch returned vectors of dimension"
                msg += f" {vectors.shape[1]}, expected {dim}"
                raise MalformedResponseError(msg, service=self.emb.where)
            cache.put(self.namespace, [bytes.fromhex(keys[r]) for r in others], vectors[others])

    def collect(self, part: _Part, batch: Any) -> tuple[list[str], list[int]]:
        """Store a finished batch's results.

        Returns the messages of its failed requests and the positions (in ``todo``) of the
        texts they held.
        """
        by_id = {part.custom_id(j): req for j, req in enumerate(part.requests)}
        seen: set[str] = set()
        messages: list[str] = []
        failed: list[list[str]] = []
        output_id = _field(batch, "output_file_id")
        error_id = _field(batch, "error_file_id")
        for file_id in (output_id, error_id):
            if not file_id:
                continue
            for raw in self._lines(str(file_id)):
                try:
                    line = orjson.loads(raw)
                    cid = line.get("custom_id")
                except (ValueError, AttributeError):
                    messages.append("an unreadable line in a result file")
                    continue
                keys = by_id.get(cid) if isinstance(cid, str) else None
                if keys is None or cid in seen:
                    continue
                seen.add(cid)
                response = line.get("response") or {}
                status = response.get("status_code")
                body = response.get("body")
                if status == 200 and isinstance(body, dict) and not line.get("error"):
                    try:
                        vectors = self.emb.parse_vectors(body, len(keys))
                    except MalformedResponseError as exc:
                        messages.append(f"{cid}: malformed result ({exc})")
                        failed.append(keys)
                        continue
                    self._store(keys, vectors)
                    continue
                messages.append(f"{cid}: {self._line_error(line)}")
                failed.append(keys)
        missing = [cid for cid in by_id if cid not in seen]
        if missing:
            messages.append(f"{len(missing)} request(s) without a result line")
            failed.extend(by_id[cid] for cid in missing)
        positions = [
            self.position[k]
            for keys in failed
            for k in keys
            if k in self.position and self.position[k] not in self.received
        ]
        return messages, positions

    def _line_error(self, line: dict[str, Any]) -> str:
        err = line.get("error")
        response = line.get("response") or {}
        body = response.get("body")
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
        status = response.get("status_code")
        if isinstance(err, dict):
            code = err.get("code") or err.get("type") or ""
            text = str(err.get("message") or code or "error")
            head = f"{status} " if status else ""
            return self.emb.scrub(f"{head}{code}: {text}" if code else f"{head}{text}")
        return f"status {status}" if status else "no response"

    def _batch_errors(self, batch: Any) -> list[str]:
        errors = _field(batch, "errors")
        data = _field(errors, "data") if errors is not None else None
        out = []
        for e in data or []:
            code = _field(e, "code") or ""
            text = _field(e, "message") or ""
            where = _field(e, "line")
            loc = f" (line {where})" if where else ""
            out.append(self.emb.scrub(f"{code}: {text}{loc}" if code else f"{text}{loc}"))
        return out

    # -- the loop ------------------------------------------------------------------------------
    def wait(self, parts: list[_Part]) -> None:
        pending = [p for p in parts if p.batch_id is not None]
        start = time.monotonic()
        while pending:
            for part in list(pending):
                try:
                    batch = self._call(
                        f"polling batch {part.batch_id}",
                        self.client.batches.retrieve,
                        part.batch_id,
                    )
                except ServiceError as exc:
                    msg = f"{exc} (the batch keeps running: rerun to resume waiting on it)"
                    raise type(exc)(
                        msg, service=exc.service, url=exc.url, status=exc.status
                    ) from None
                status = str(_field(batch, "status"))
                if status != part.status:
                    counts = _field(batch, "request_counts")
                    done = _field(counts, "completed") if counts is not None else None
                    total = _field(counts, "total") if counts is not None else None
                    extra = f" ({done}/{total} requests)" if total else ""
                    logger.info("batch %s: %s%s", part.batch_id, status, extra)
                    part.status = status
                if status == "completed":
                    messages, failed = self.collect(part, batch)
                    self.retry.extend(failed)
                    if messages:
                        self.retry_reasons.append(
                            f"batch {part.batch_id}: {len(messages)} failed request(s): "
                            + "; ".join(messages[:_MESSAGES_SHOWN])
                        )
                    part.done = True
                    part.job.save()
                    pending.remove(part)
                elif status in _TERMINAL_FAILURES:
                    self._fail(part, batch, status)
                    pending.remove(part)
            if not pending:
                break
            if self.max_wait is not None and time.monotonic() - start > self.max_wait:
                ids = ", ".join(str(p.batch_id) for p in pending)
                msg = (
                    f"batch(es) {ids} still running after {self.max_wait:g} s; run the same"
                    " command again to resume waiting (nothing is submitted twice)"
                )
                raise ServiceError(msg, service=self.emb.where)
            time.sleep(self.poll_interval)

    def _fail(self, part: _Part, batch: Any, status: str) -> None:
        # Keep whatever finished (an expired batch bills and returns its completed requests).
        messages = self._batch_errors(batch)
        messages += self.collect(part, batch)[0]  # failed requests: reported, not retried
        part.done = True
        part.job.save()
        shown = "; ".join(messages[:_MESSAGES_SHOWN]) or "no error messages"
        more = len(messages) - _MESSAGES_SHOWN
        tail = f" (and {more} more)" if more > 0 else ""
        self.failures.append(f"batch {part.batch_id} {status}: {shown}{tail}")

    def retry_failed(self) -> None:
        positions = sorted(set(self.retry) - self.received)
        if not positions:
            return
        logger.warning(
            "%d text(s) failed inside completed batches; retrying them synchronously at the"
            " standard price. %s",
            len(positions),
            " | ".join(self.retry_reasons),
        )
        bounds = [self.bounds[p] for p in positions]
        for req in self.emb.pack(bounds):
            chosen = [positions[i] for i in req]
            vectors = self.emb.request([self.sent[p] for p in chosen])
            self.sink(chosen, vectors)
            self.received.update(chosen)


def run_batch_job(
    embedder: BatchEmbedder,
    todo: list[str],
    sent: list[str],
    sink: Callable[[Sequence[int], np.ndarray], None],
    *,
    bounds: list[int],
    state_dir: str | os.PathLike[str],
    poll_interval: float = 30.0,
    max_wait: float | None = None,
    max_requests: int | None = None,
    max_bytes: int | None = None,
) -> None:
    """Embed ``todo`` through the Batch API, resuming batches that earlier runs submitted.

    Parameters
    ----------
    embedder
        The embedder whose model, dimensions, server, key and cache are used.
    todo
        Distinct, non-empty texts that are not cached.
    sent
        The same texts as they are sent (truncated to the model's input limit).
    sink
        Called as ``sink(positions, vectors)`` for each request's results as they are parsed
        (the embedder's sink writes them to the cache).
    bounds
        Tokens of each text of ``sent`` (an upper bound), to pack requests.
    state_dir
        Directory of the job files (see the module docstring).
    poll_interval
        Seconds between two polls of the unfinished batches.
    max_wait
        Give up waiting after this many seconds (the job stays resumable); ``None``: wait.
    max_requests, max_bytes
        Limits of one batch input file (default :data:`MAX_REQUESTS_PER_BATCH` and
        :data:`MAX_BATCH_FILE_BYTES`, the API's).

    Raises
    ------
    BatchJobError
        A batch failed, expired or was cancelled.
    ServiceError
        The server refused a call, or a retried request failed, or ``max_wait`` passed.
    InputError
        Bad arguments, or one request larger than a batch file may be.
    """
    if poll_interval < 0:
        msg = f"poll_interval must not be negative, got {poll_interval}"
        raise InputError(msg)
    max_requests = MAX_REQUESTS_PER_BATCH if max_requests is None else max_requests
    max_bytes = MAX_BATCH_FILE_BYTES if max_bytes is None else max_bytes
    if max_requests < 1 or max_bytes < 1:
        msg = "max_requests and max_bytes must be positive"
        raise InputError(msg)
    runner = _Runner(
        embedder,
        todo,
        sent,
        sink,
        bounds=bounds,
        state_dir=Path(state_dir),
        poll_interval=float(poll_interval),
        max_wait=max_wait,
        max_requests=int(max_requests),
        max_bytes=int(max_bytes),
    )
    parts, covered = runner.adopt()
    rest = [i for i, k in enumerate(runner.keys) if k not in covered]
    # Adopted batches whose id was never recorded: create them from the uploaded file.
    for part in parts:
        if part.batch_id is None:
            runner.create_batch(part)
    if rest:
        new = runner.plan(rest)
        for part in new:
            runner.submit(part)
        parts = parts + new
    runner.wait(parts)
    if runner.failures:
        runner.retry_failed()  # requests of completed batches still get their vectors
        msg = (
            "; ".join(runner.failures)
            + ". Texts stored so far are cached; a rerun submits only the missing ones."
        )
        raise BatchJobError(msg)
    runner.retry_failed()
    unfinished = set(range(len(todo))) - runner.received
    if unfinished:
        msg = f"{len(unfinished)} text(s) got no vector from the Batch API"
        raise ServiceError(msg, service=embedder.where)
