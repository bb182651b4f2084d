"""The streaming pipeline: chunks of cells read, encoded and written, resumably.

:func:`encode_file` reads a :class:`~genept_fast.stream.sources.ChunkSource` one chunk of cells
at a time, hands each chunk to an ``encoder`` and writes the result as it goes (see
:mod:`genept_fast.stream` for the guarantees). A reader thread reads (and preprocesses) the next
chunk while the encoder runs on the current one, and a writer thread writes the previous result.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast._outputs import check_output, disk_usage, format_bytes
from genept_fast.errors import InputError
from genept_fast.preprocess import AUTO_SAMPLE_CELLS, apply_preprocess, resolve_preprocess
from genept_fast.stream.sinks import make_work_store, output_format
from genept_fast.stream.sources import AnnDataSource, ChunkSource, check_chunk_size, open_source
from genept_fast.stream.state import PartialState, check_work_dir

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping, Sequence

    from genept_fast.preprocess import Preprocess

__all__ = [
    "StreamReport",
    "check_key",
    "check_output_paths",
    "encode_file",
    "report_dict",
    "work_dir",
]

log = logging.getLogger("genept_fast.stream")


@dataclass
class StreamReport:
    """What :func:`encode_file` did."""

    output: Path
    format: str
    n_cells: int
    n_genes: int
    dim: int
    dtype: str
    chunk_size: int
    n_chunks: int
    #: Chunks encoded by this call.
    chunks_encoded: int
    #: Chunks found complete in ``<output>.partial/`` and not recomputed.
    chunks_resumed: int
    #: Cells encoded by this call.
    cells_encoded: int
    #: Whether the values were log-normalised (``normalize_total(1e4)`` + ``log1p``).
    log1p: bool
    seconds: float
    #: Why stored partial state was thrown away, if it was.
    discarded: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: What the encoder counted, where it does (GenePT-s, :func:`encode_sentences`: cells
    #: encoded by this call, sentences cut at the token limit, cells without genes).
    encoder_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def cells_per_s(self) -> float:
        """Cells encoded by this call per second of wall time."""
        return self.cells_encoded / self.seconds if self.seconds > 0 else float("nan")


# -- the pipeline ---------------------------------------------------------------------------


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Blame:
    """Set by the pipeline when a failure is the input's fault (bad values, a corrupt file)."""

    input = False


def _after_failure(
    state: PartialState, exc: BaseException, *, input_at_fault: bool, n_chunks: int
) -> None:
    """Remove ``<output>.partial/`` when it cannot be resumed; else say where it is kept."""
    if input_at_fault or not state.done:
        state.remove()
        return
    state.release()
    note = (
        f"partial work kept in {state.dir} ({len(state.done)} of {n_chunks} chunks done,"
        f" {format_bytes(disk_usage(state.dir))} on disk): run the same command again to"
        " resume, or delete it"
    )
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        log.warning("%s", note)


_END = object()


def _names_a_cell(exc: BaseException) -> bool:
    """Whether a kernel rejected a cell of the chunk (its error carries ``exc.cell``)."""
    return getattr(exc, "cell", None) is not None


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        log.error("%s", note)


def _takes_row_offset(encoder: Callable[..., Any]) -> bool:
    """Whether ``encoder`` is called as ``encoder(chunk, row_offset=a)`` (its errors then name
    cells by their position in the whole matrix)."""
    import inspect

    try:
        params = inspect.signature(encoder).parameters
    except (TypeError, ValueError):
        return False
    return "row_offset" in params


def _encoder_id(encoder: Callable[..., Any], fingerprint: str | None) -> str:
    if fingerprint is not None:
        return str(fingerprint)
    fp = getattr(encoder, "fingerprint", None)
    if isinstance(fp, str):
        return fp
    mod = getattr(encoder, "__module__", None) or type(encoder).__module__
    name = getattr(encoder, "__qualname__", None) or type(encoder).__qualname__
    return f"{mod}.{name}"


def _resolve_preprocess(source: ChunkSource, how: str, encoder: Any) -> tuple[str, dict[str, Any]]:
    """The preprocessing decided once for the file, and the encoder's job record: an encoder
    with ``begin(sample, preprocess)`` gets the first cells and does the preprocessing itself."""
    sample: list[Any] = []

    def first_cells() -> Any:
        if not sample:
            sample.append(source.read(0, min(source.n_cells, AUTO_SAMPLE_CELLS)))
        return sample[0]

    resolved = resolve_preprocess(how, first_cells)
    begin = getattr(encoder, "begin", None)
    if not callable(begin):
        return resolved, {}
    record = dict(begin(first_cells(), resolved) or {})
    return resolved, record | {"fused_preprocess": True}


def work_dir(output: str | os.PathLike[str]) -> Path:
    """The resumable work folder of ``output``: ``<output>.partial/`` beside it."""
    out = Path(output)
    return out.with_name(out.name + ".partial")


def check_output_paths(
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str] | None] = (),
) -> Path:
    """The output rule for a streamed ``output`` and its work folder; call before any work.

    See :func:`genept_fast._outputs.check_output` (a ``.zarr`` output is a store, the rest are
    files) and :func:`genept_fast.stream.state.check_work_dir`.
    """
    out = Path(output)
    store = output_format(out) == ".zarr"
    check_output(out, kind="store" if store else "file", overwrite=overwrite, inputs=inputs)
    check_work_dir(work_dir(out))
    return out


def check_key(key: str) -> str:
    """``key`` if it is a plain name for an array or ``obsm`` entry (no path, no dot segments)."""
    if not isinstance(key, str) or not key.strip():
        msg = f"key must be a non-empty name, got {key!r}"
        raise InputError(msg)
    if "/" in key or "\\" in key or key.startswith(".") or any(ord(c) < 32 for c in key):
        msg = (
            f"key {key!r} is not a plain name (no '/', '\\', leading '.' or control characters):"
            " it names an array inside the output, never a path"
        )
        raise InputError(msg)
    return key


def _check_args(chunk_size: int, dim: int, output_dtype: str) -> np.dtype[Any]:
    check_chunk_size(chunk_size)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        msg = f"dim must be a positive integer, got {dim!r}"
        raise InputError(msg)
    if output_dtype not in ("float32", "float16"):
        msg = f"output_dtype must be 'float32' or 'float16', got {output_dtype!r}"
        raise InputError(msg)
    return np.dtype(output_dtype)


def encode_file(
    input: str | os.PathLike[str] | ChunkSource,
    output: str | os.PathLike[str],
    *,
    encoder: Callable[..., np.ndarray],
    dim: int,
    layer: str | None = None,
    use_raw: bool = False,
    preprocess: Preprocess = "auto",
    chunk_size: int = 10_000,
    output_dtype: str = "float32",
    key: str = "X_genept_w",
    progress: bool = True,
    resume: bool = True,
    fingerprint: str | None = None,
    uns: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> StreamReport:
    """Encode every cell of a (possibly larger than memory) AnnData file, chunk by chunk.

    Parameters
    ----------
    input
        An ``.h5ad`` file, an AnnData ``.zarr`` store, or any :class:`ChunkSource`.
    output
        Where the embeddings land; the suffix picks the format:

        - ``.npy``: an ``(n_cells, dim)`` array (``np.load(output, mmap_mode="r")``);
        - ``.zarr``: a group with ``obs_names`` and the array ``key``;
        - ``.parquet``: one row per cell, columns ``obs_name`` and ``embedding``
          (fixed-size list of ``dim`` floats), one row group per chunk;
        - ``.h5ad``: an AnnData with the input's ``obs``, no ``X``, the embeddings in
          ``obsm[key]`` and the parameters in ``uns[key]["params"]``.
    encoder
        Called with each chunk (a CSR array, cells × the file's genes, already preprocessed) and
        returns a ``(cells, dim)`` float array. It must be deterministic for resumed results to
        equal uninterrupted ones. An encoder with a ``begin(sample, preprocess)`` method (like
        :class:`WeightedEncoder`) is first called with the file's first cells and the resolved
        preprocessing, then gets the chunks as stored and preprocesses them itself; what
        ``begin`` returns is recorded in the resume manifest.
    dim
        Width of the encoder's output.
    layer, use_raw
        Encode ``layers[layer]`` or ``raw.X`` instead of ``X``.
    preprocess
        ``"auto"`` (log-normalise when the first cells hold raw counts), ``"log1p"`` or
        ``"none"``; see :func:`genept_fast.preprocess.apply_preprocess`. The choice is made once
        per file, never per chunk.
    chunk_size
        Cells per chunk. Memory is about ``2 × chunk_size × (nonzeros per cell × 8 bytes)`` plus
        ``2 × chunk_size × dim × 4`` bytes of results, plus the encoder's tables.
    output_dtype
        ``"float32"`` or ``"float16"`` (half the size; the encoder still computes in float32).
    key
        Array name in ``.zarr`` and ``obsm`` key in ``.h5ad`` outputs.
    progress
        Show a progress bar on stderr.
    resume
        Continue from ``<output>.partial/`` when it belongs to the same job (same input
        fingerprint and parameters); ``False`` starts over.
    fingerprint
        A string identifying the encoder (model id, table hash) for the resume manifest.
        Defaults to ``encoder.fingerprint`` if it has one, else the encoder's qualified name
        (then changing what the encoder computes without renaming it would resume a stale job).
    uns
        Provenance to store with the result under ``uns[key]`` (``.h5ad``; the attributes of a
        ``.zarr`` group, the metadata of a ``.parquet`` file): its ``"params"`` are merged into
        the run's parameters, other entries (e.g. ``"coverage"``) are stored as given.
    overwrite
        Replace an existing ``output`` (a directory only if it is a store genept-fast wrote).
        Without it an existing output is refused before any work; an output equal to or inside
        the input is always refused (see :mod:`genept_fast._outputs`).

    Returns
    -------
    :class:`StreamReport`; the embeddings are in ``output``.

    Raises
    ------
    InputError
        Bad arguments; an existing output without ``overwrite``; a missing, truncated or corrupt
        input (the message names the file and what is wrong; cell positions are those of the
        whole matrix); an encoder returning the wrong shape; another job holding
        ``<output>.partial/``.

    Notes
    -----
    When the job fails, ``<output>.partial/`` is removed if the input is at fault (bad values,
    a corrupt file: the job could never be resumed with it) or if no chunk was finished;
    otherwise (an interrupt, a network failure, a full disk) it is kept and the exception
    carries a note saying where, how many chunks are done and how much disk it holds. The
    input is at fault when reading or preprocessing a chunk fails, or when a genept-fast kernel
    called by the encoder rejects a cell of the chunk (its error carries ``exc.cell``).
    """
    t0 = time.perf_counter()
    out = Path(output)
    fmt = output_format(out)
    dtype = _check_args(chunk_size, dim, output_dtype)
    check_key(key)
    if fmt == ".zarr" and key == "obs_names":
        msg = "key 'obs_names' is taken by the cell names in a .zarr output; choose another key"
        raise InputError(msg)
    input_path = None if isinstance(input, ChunkSource) else input
    if isinstance(input, AnnDataSource):
        input_path = input.path
    check_output_paths(out, overwrite=overwrite, inputs=[input_path])
    chunk_size, dim = int(chunk_size), int(dim)
    if not callable(encoder):
        msg = f"encoder must be callable, got {type(encoder).__name__}"
        raise InputError(msg)

    own_source = not isinstance(input, ChunkSource)
    source: ChunkSource
    if isinstance(input, ChunkSource):
        if layer is not None or use_raw:
            msg = "layer= and use_raw= apply to file inputs; a ChunkSource selects its own matrix"
            raise InputError(msg)
        source = input
    else:
        source = open_source(input, layer=layer, use_raw=use_raw)
    try:
        return _encode(
            source,
            out,
            fmt=fmt,
            encoder=encoder,
            dim=dim,
            dtype=dtype,
            preprocess=preprocess,
            chunk_size=chunk_size,
            key=key,
            progress=progress,
            resume=resume,
            encoder_id=_encoder_id(encoder, fingerprint),
            t0=t0,
            extra_uns=dict(uns or {}),
        )
    finally:
        if own_source:
            source.close()


def _encode(
    source: ChunkSource,
    out: Path,
    *,
    fmt: str,
    encoder: Callable[..., np.ndarray],
    dim: int,
    dtype: np.dtype[Any],
    preprocess: str,
    chunk_size: int,
    key: str,
    progress: bool,
    resume: bool,
    encoder_id: str,
    t0: float,
    extra_uns: dict[str, Any],
) -> StreamReport:
    n_cells, n_genes = int(source.n_cells), int(source.n_genes)
    how, job = _resolve_preprocess(source, preprocess, encoder)
    n_chunks = math.ceil(n_cells / chunk_size)
    params = {
        "encoder": encoder_id,
        "dim": dim,
        "preprocess": preprocess,
        "preprocess_applied": how,
        "layer": getattr(source, "layer", None),
        "use_raw": bool(getattr(source, "use_raw", False)),
        "chunk_size": chunk_size,
        "output_dtype": dtype.name,
        "format": fmt,
        "key": key if fmt == ".zarr" else None,
    }
    header = {
        "input": source.fingerprint(),
        "params": params,
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_chunks": n_chunks,
        "job": job,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    state = PartialState(work_dir(out), header, resume=resume)
    blame = _Blame()
    try:
        work = make_work_store(
            fmt, state.dir, n_cells=n_cells, dim=dim, dtype=dtype, chunk_size=chunk_size, key=key
        )
        if state.done and not work.usable():
            state.reset("its data file is missing or has the wrong shape")
        if not state.done:
            work.create()
        resumed = len(state.done)
        if resumed:
            log.info("%s: resuming, %d of %d chunks already done", out, resumed, n_chunks)
        todo = [i for i in range(n_chunks) if i not in state.done]
        cells_todo = sum(min(chunk_size, n_cells - i * chunk_size) for i in todo)
        _run_pipeline(
            source,
            todo,
            encoder=encoder,
            how="none" if job.get("fused_preprocess") else how,
            chunk_size=chunk_size,
            dim=dim,
            dtype=dtype,
            work=work,
            state=state,
            progress=progress,
            n_cells=n_cells,
            label=out.name,
            blame=blame,
        )
        uns_params = {
            **{k: v for k, v in params.items() if v is not None},
            "input": source.name,
            "n_cells": n_cells,
            "n_genes": n_genes,
        }
        extra_params = dict(extra_uns.pop("params", None) or {})
        uns = {key: {**extra_uns, "params": {**uns_params, **extra_params}}}
        work.finalize(out, source=source, chunk_size=chunk_size, key=key, uns=uns)
        work.close()
        state.remove()
    except BaseException as exc:
        _after_failure(state, exc, input_at_fault=blame.input, n_chunks=n_chunks)
        raise
    return StreamReport(
        output=out,
        format=fmt,
        n_cells=n_cells,
        n_genes=n_genes,
        dim=dim,
        dtype=dtype.name,
        chunk_size=chunk_size,
        n_chunks=n_chunks,
        chunks_encoded=len(todo),
        chunks_resumed=resumed,
        cells_encoded=cells_todo,
        log1p=how == "log1p",
        seconds=time.perf_counter() - t0,
        discarded=state.discarded,
        params=params,
    )


def _run_pipeline(
    source: ChunkSource,
    todo: list[int],
    *,
    encoder: Callable[..., np.ndarray],
    how: str,
    chunk_size: int,
    dim: int,
    dtype: np.dtype[Any],
    work: Any,
    state: PartialState,
    progress: bool,
    n_cells: int,
    label: str,
    blame: _Blame,
) -> None:
    """Reader thread → encoder (this thread) → writer thread, at most two input chunks alive.

    Errors name cells by their position in the whole matrix; ``blame.input`` is set when the
    input is at fault (a read or preprocessing error, or a kernel rejecting the chunk).
    """
    from tqdm.auto import tqdm

    offsets = _takes_row_offset(encoder)
    stop = threading.Event()
    slots = threading.Semaphore(2)  # chunks alive: one being encoded + one read ahead
    inq: queue.Queue[Any] = queue.Queue()
    outq: queue.Queue[Any] = queue.Queue(maxsize=1)  # results alive: encoding, queued, writing
    writer_error: list[BaseException] = []
    needs_names = work.needs_obs_names
    done_cells = n_cells - sum(min(chunk_size, n_cells - i * chunk_size) for i in todo)
    bar = tqdm(
        total=n_cells,
        initial=done_cells,
        unit="cell",
        unit_scale=True,
        desc=f"encode {label}",
        disable=not progress,
        smoothing=0.1,
    )

    def reader() -> None:
        for i in todo:
            while not slots.acquire(timeout=0.1):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            a, b = i * chunk_size, min((i + 1) * chunk_size, n_cells)
            try:
                X = source.read(a, b)
                if X.shape != (b - a, source.n_genes):
                    msg = f"{source.name}: read({a}, {b}) returned shape {X.shape}"
                    raise InputError(msg)
                X, _ = apply_preprocess(X, how)  # type: ignore[arg-type]
                names = source.obs_names(a, b) if needs_names else None
            except BaseException as e:
                inq.put(_Failure(e))
                return
            inq.put((i, a, b, X, names))
        inq.put(_END)

    def writer() -> None:
        while True:
            item = outq.get()
            if item is None:
                return
            i, a, b, emb, names = item
            try:
                work.write(a, b, emb, names)
                state.mark_done(i)
            except BaseException as e:
                writer_error.append(e)
                stop.set()
                return
            bar.update(b - a)

    rt = threading.Thread(target=reader, name="genept-stream-reader", daemon=True)
    wt = threading.Thread(target=writer, name="genept-stream-writer", daemon=True)
    rt.start()
    wt.start()
    try:
        while True:
            if writer_error:
                raise writer_error[0]
            item = inq.get()
            if item is _END:
                break
            if isinstance(item, _Failure):
                blame.input = isinstance(item.exc, InputError)
                raise item.exc
            i, a, b, X, names = item
            try:
                emb = np.asarray(encoder(X, row_offset=a) if offsets else encoder(X))
            except InputError as exc:
                if _names_a_cell(exc):
                    blame.input = True
                    _add_note(exc, f"while encoding {source.name}")
                raise
            del X, item
            slots.release()
            if emb.shape != (b - a, dim):
                msg = (
                    f"encoder returned shape {emb.shape} for cells {a}:{b}; "
                    f"expected ({b - a}, {dim})"
                )
                raise InputError(msg)
            emb = np.ascontiguousarray(emb, dtype=dtype)
            while True:
                if writer_error:
                    raise writer_error[0]
                try:
                    outq.put((i, a, b, emb, names), timeout=0.1)
                    break
                except queue.Full:
                    continue
            del emb
    finally:
        stop.set()
        # Let the writer finish what is already encoded (saved work survives an interrupt).
        while wt.is_alive():
            try:
                outq.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        wt.join()
        slots.release()
        rt.join(timeout=5)
        bar.close()
    if writer_error:
        raise writer_error[0]


def report_dict(report: StreamReport) -> dict[str, Any]:
    """``report`` as a JSON-able dict (for logs and benchmarks)."""
    d = asdict(report)
    d["output"] = str(report.output)
    d["cells_per_s"] = report.cells_per_s
    return d
