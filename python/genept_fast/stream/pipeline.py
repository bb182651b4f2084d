"""The streaming pipeline: chunks of cells read, encoded and written, resumably.

:func:`encode_file` reads a :class:`~genept_fast.stream.sources.ChunkSource` one chunk of cells
at a time, hands each chunk to an ``encoder`` and writes the result as it goes (see
:mod:`genept_fast.stream` for the guarantees). A reader thread reads (and preprocesses) the next
chunk while the encoder runs on the current one, and a writer thread writes the previous result.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast._outputs import check_key, check_output, disk_usage, format_bytes
from genept_fast.encode import matrix_params, merge_uns, open_job
from genept_fast.errors import InputError
from genept_fast.preprocess import apply_preprocess
from genept_fast.stream.sinks import make_work_store, output_format
from genept_fast.stream.state import PartialState, check_work_dir

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from genept_fast.cells import ChunkSource
    from genept_fast.encode import Cells
    from genept_fast.preprocess import Preprocess

__all__ = [
    "Output",
    "StreamReport",
    "check_key",
    "check_output_args",
    "check_output_paths",
    "encode_cells",
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
    #: The provenance stored under ``uns[key]`` of the output.
    uns: dict[str, Any] = field(default_factory=dict)
    #: One line for people on what was matched (GenePT-w with a table: the coverage).
    summary: str = ""
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


@dataclass
class Output:
    """Where a streamed job writes (checked by :func:`check_output_args` before any work)."""

    path: Path
    format: str
    dtype: np.dtype[Any]
    key: str


def _input_path(input: Any) -> Any:
    """The file an input reads, if any (an output may never be it or lie inside it)."""
    if isinstance(input, (str, os.PathLike)):
        return input
    path = getattr(input, "path", None) or getattr(input, "filename", None)
    return path if isinstance(path, (str, os.PathLike)) else None


def check_output_args(
    input: Any,
    output: str | os.PathLike[str],
    *,
    key: str,
    output_dtype: str = "float32",
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str] | None] = (),
) -> Output:
    """Check a streamed job's output arguments before any work: the format (from the suffix),
    ``output_dtype``, ``key`` (:func:`check_key`) and the output rule
    (:func:`check_output_paths`; ``inputs``: other files the job reads)."""
    out = Path(output)
    fmt = output_format(out)
    if output_dtype not in ("float32", "float16"):
        msg = f"output_dtype must be 'float32' or 'float16', got {output_dtype!r}"
        raise InputError(msg)
    check_key(key)
    if fmt == ".zarr" and key == "obs_names":
        msg = "key 'obs_names' is taken by the cell names in a .zarr output; choose another key"
        raise InputError(msg)
    check_output_paths(out, overwrite=overwrite, inputs=[_input_path(input), *inputs])
    return Output(out, fmt, np.dtype(output_dtype), key)


def _check_dim(dim: Any) -> None:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        msg = f"dim must be a positive integer, got {dim!r}"
        raise InputError(msg)


def encode_file(
    input: str | os.PathLike[str] | ChunkSource,
    output: str | os.PathLike[str],
    *,
    encoder: Callable[..., np.ndarray],
    dim: int,
    layer: str | None = None,
    use_raw: bool | None = None,
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
        An ``.h5ad`` file or AnnData ``.zarr`` store (current or legacy layout), an AnnData, or
        any :class:`ChunkSource`; opened by :func:`genept_fast.encode.open_job`, as every path
        opens its cells.
    output
        Where the embeddings land; the suffix picks the format:

        - ``.npy``: an ``(n_cells, dim)`` array (``np.load(output, mmap_mode="r")``);
        - ``.zarr``: a group with ``obs_names`` and the array ``key``;
        - ``.parquet``: one row per cell, columns ``obs_name`` and ``embedding``
          (fixed-size list of ``dim`` floats), one row group per chunk;
        - ``.h5ad``: an AnnData with the input's ``obs``, no ``X``, the embeddings in
          ``obsm[key]`` and the provenance in ``uns[key]``.
    encoder
        Called with each chunk (a CSR array, cells × the file's genes, already preprocessed) and
        returns a ``(cells, dim)`` float array; called as ``encoder(chunk, row_offset=a)`` when
        it takes ``row_offset`` (the chunk's first row in the whole matrix, so that its errors
        name cells there). It must be deterministic for resumed results to equal uninterrupted
        ones. An encoder with a ``begin(preprocess)`` method (like :class:`WeightedEncoder`)
        gets the resolved preprocessing first, then the chunks as stored, and preprocesses them
        itself.
    dim
        Width of the encoder's output.
    layer, use_raw
        The matrix (:func:`genept_fast.cells.choose_matrix`): ``layers[layer]``; ``raw.X``
        with ``use_raw=True``; by default ``raw.X`` when the file has it, else ``X``. First
        cells with negative values (scaled data) are refused.
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
        ``.zarr`` group, the metadata of a ``.parquet`` file), merged with the run's record
        (:func:`genept_fast.encode.merge_uns`: its ``"params"`` over the record's ``matrix``,
        ``preprocess`` and ``dimension``; other entries, e.g. ``"coverage"``, as given). How the
        stream ran (input, chunk size, output format and dtype, encoder) is stored beside them
        under ``uns[key]["stream"]``.
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
        whole matrix); scaled first cells; an encoder returning the wrong shape; another job
        holding ``<output>.partial/``.

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
    out = check_output_args(input, output, key=key, output_dtype=output_dtype, overwrite=overwrite)
    _check_dim(dim)
    if not callable(encoder):
        msg = f"encoder must be callable, got {type(encoder).__name__}"
        raise InputError(msg)
    with open_job(
        input, layer=layer, use_raw=use_raw, preprocess=preprocess, chunk_size=chunk_size
    ) as cells:
        begin = getattr(encoder, "begin", None)
        if callable(begin):
            begin(cells.preprocess)
        record = {"params": {**matrix_params(cells.matrix), "preprocess": cells.preprocess}}
        return encode_cells(
            cells,
            out,
            encoder=encoder,
            dim=int(dim),
            fused=callable(begin),
            uns=merge_uns(record, uns),
            progress=progress,
            resume=resume,
            encoder_id=_encoder_id(encoder, fingerprint),
            t0=t0,
        )


def _first_chunk(cells: Cells, encoder: Callable[..., np.ndarray], apply: str) -> np.ndarray:
    """The first chunk's embeddings, when the encoder's width is only known from them."""
    n = int(cells.source.n_cells)
    if n == 0:
        msg = f"{cells.name} has no cells, and the encoder's output width is not known"
        raise InputError(msg)
    X, _ = apply_preprocess(cells.source.read(0, min(cells.chunk_size, n)), apply)  # type: ignore[arg-type]
    emb = np.asarray(_call(encoder, X, 0, cells.name))
    if emb.ndim != 2 or emb.shape[1] < 1:
        msg = f"encoder returned shape {emb.shape} for the first chunk; expected (cells, dim)"
        raise InputError(msg)
    return emb


def _call(encoder: Callable[..., np.ndarray], X: Any, a: int, name: str) -> np.ndarray:
    """``encoder`` on a chunk starting at row ``a``; a kernel's error names the file."""
    try:
        return encoder(X, row_offset=a) if _takes_row_offset(encoder) else encoder(X)
    except InputError as exc:
        if _names_a_cell(exc):
            _add_note(exc, f"while encoding {name}")
        raise


def encode_cells(
    cells: Cells,
    out: Output,
    *,
    encoder: Callable[..., np.ndarray],
    dim: int | None,
    fused: bool,
    uns: dict[str, Any],
    progress: bool = True,
    resume: bool = True,
    encoder_id: str | None = None,
    t0: float | None = None,
) -> StreamReport:
    """Stream the cells of a started job (:func:`genept_fast.encode.open_job`) through
    ``encoder`` into ``out`` (:func:`check_output_args`), resumably.

    ``fused``: the encoder preprocesses the chunks itself (else the reader applies
    ``cells.preprocess``). ``dim=None``: the width is taken from the first chunk's embeddings
    (a real chunk of the job, never a probe). ``uns``: the provenance record, stored under
    ``uns[key]`` with ``params["dimension"]`` set and the run's settings under ``"stream"``.
    """
    t0 = time.perf_counter() if t0 is None else t0
    encoder_id = _encoder_id(encoder, None) if encoder_id is None else encoder_id
    source, chunk_size = cells.source, cells.chunk_size
    n_cells, n_genes = int(source.n_cells), int(source.n_genes)
    apply = "none" if fused else cells.preprocess
    ready: dict[int, np.ndarray] = {}
    if dim is None:
        ready[0] = _first_chunk(cells, encoder, apply)
        dim = int(ready[0].shape[1])
    n_chunks = math.ceil(n_cells / chunk_size)
    params = {
        "encoder": encoder_id,
        "dim": dim,
        "matrix": cells.matrix,
        "preprocess": cells.preprocess,
        "fused_preprocess": fused,
        "chunk_size": chunk_size,
        "output_dtype": out.dtype.name,
        "format": out.format,
        "key": out.key if out.format == ".zarr" else None,
    }
    header = {
        "input": source.fingerprint(),
        "params": params,
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_chunks": n_chunks,
    }
    out.path.parent.mkdir(parents=True, exist_ok=True)
    state = PartialState(work_dir(out.path), header, resume=resume)
    blame = _Blame()
    try:
        work = make_work_store(
            out.format,
            state.dir,
            n_cells=n_cells,
            dim=dim,
            dtype=out.dtype,
            chunk_size=chunk_size,
            key=out.key,
        )
        if state.done and not work.usable():
            state.reset("its data file is missing or has the wrong shape")
        if not state.done:
            work.create()
        resumed = len(state.done)
        if resumed:
            log.info("%s: resuming, %d of %d chunks already done", out.path, resumed, n_chunks)
        todo = [i for i in range(n_chunks) if i not in state.done]
        cells_todo = sum(min(chunk_size, n_cells - i * chunk_size) for i in todo)
        _Pipeline(
            source,
            todo,
            encoder=encoder,
            how=apply,
            chunk_size=chunk_size,
            dim=dim,
            dtype=out.dtype,
            work=work,
            state=state,
            blame=blame,
            ready=ready,
        ).run(progress=progress, label=out.path.name)
        record = dict(uns)
        record["params"] = {**dict(record.get("params") or {}), "dimension": dim}
        record["stream"] = {
            **{k: v for k, v in params.items() if v is not None and k != "dim"},
            "input": source.name,
            "n_cells": n_cells,
            "n_genes": n_genes,
        }
        work.finalize(
            out.path, source=source, chunk_size=chunk_size, key=out.key, uns={out.key: record}
        )
        work.close()
        state.remove()
    except BaseException as exc:
        _after_failure(state, exc, input_at_fault=blame.input, n_chunks=n_chunks)
        raise
    return StreamReport(
        output=out.path,
        format=out.format,
        n_cells=n_cells,
        n_genes=n_genes,
        dim=dim,
        dtype=out.dtype.name,
        chunk_size=chunk_size,
        n_chunks=n_chunks,
        chunks_encoded=len(todo),
        chunks_resumed=resumed,
        cells_encoded=cells_todo,
        log1p=cells.preprocess == "log1p",
        seconds=time.perf_counter() - t0,
        discarded=state.discarded,
        params=params,
        uns=record,
    )


class _Pipeline:
    """Reader thread → encoder (the calling thread) → writer thread, at most two input chunks
    and two results alive.

    Errors name cells by their position in the whole matrix; ``blame.input`` is set when the
    input is at fault (a read or preprocessing error, or a kernel rejecting a cell of a chunk).
    ``ready`` holds chunks already encoded (the first one, when it gave the width).
    """

    def __init__(
        self,
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
        blame: _Blame,
        ready: dict[int, np.ndarray],
    ) -> None:
        self.source, self.todo, self.encoder, self.how = source, todo, encoder, how
        self.chunk_size, self.dim, self.dtype = chunk_size, dim, dtype
        self.work, self.state, self.blame, self.ready = work, state, blame, ready
        self.n_cells = int(source.n_cells)
        self.stop = threading.Event()
        self.slots = threading.Semaphore(2)  # chunks alive: one being encoded + one read ahead
        self.inq: queue.Queue[Any] = queue.Queue()
        # Results alive: one being encoded and one handed to the writer (queued or being
        # written). A third would cost a result's memory (10,000 cells × D = 1536: 61 MB) for
        # nothing: writing one takes a fraction of the time encoding the next does.
        self.results = threading.Semaphore(2)
        self.outq: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.writer_error: list[BaseException] = []
        self.bar: Any = None

    def run(self, *, progress: bool, label: str) -> None:
        from genept_fast._progress import progress as progress_meter

        n, size = self.n_cells, self.chunk_size
        self.bar = progress_meter(
            n,
            initial=n - sum(min(size, n - i * size) for i in self.todo),
            unit="cell",
            desc=f"encode {label}",
            disable=not progress,
        )
        rt = threading.Thread(target=self._reader, name="genept-stream-reader", daemon=True)
        wt = threading.Thread(target=self._writer, name="genept-stream-writer", daemon=True)
        rt.start()
        wt.start()
        try:
            self._encode_all()
        finally:
            self._shut_down(rt, wt)
        self._check_writer()

    # -- the reader thread ------------------------------------------------------------------

    def _reader(self) -> None:
        for i in self.todo:
            if not self._take_slot():
                return
            a, b = i * self.chunk_size, min((i + 1) * self.chunk_size, self.n_cells)
            try:
                X, names = self._read(a, b)
            except BaseException as e:
                self.inq.put(_Failure(e))
                return
            self.inq.put((i, a, b, X, names))
        self.inq.put(_END)

    def _take_slot(self) -> bool:
        while not self.slots.acquire(timeout=0.1):
            if self.stop.is_set():
                return False
        return not self.stop.is_set()

    def _read(self, a: int, b: int) -> tuple[Any, list[str] | None]:
        source = self.source
        X = source.read(a, b)
        if X.shape != (b - a, source.n_genes):
            msg = f"{source.name}: read({a}, {b}) returned shape {X.shape}"
            raise InputError(msg)
        X, _ = apply_preprocess(X, self.how)  # type: ignore[arg-type]
        return X, source.obs_names(a, b) if self.work.needs_obs_names else None

    # -- the writer thread ------------------------------------------------------------------

    def _writer(self) -> None:
        while True:
            item = self.outq.get()
            if item is None:
                return
            i, a, b, emb, names = item
            del item
            try:
                self.work.write(a, b, emb, names)
                self.state.mark_done(i)
            except BaseException as e:
                self.writer_error.append(e)
                self.stop.set()
                return
            del emb
            self.results.release()
            self.bar.update(b - a)

    def _check_writer(self) -> None:
        if self.writer_error:
            raise self.writer_error[0]

    # -- the calling thread -----------------------------------------------------------------

    def _encode_all(self) -> None:
        while True:
            self._check_writer()
            item = self.inq.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                self.blame.input = isinstance(item.exc, InputError)
                raise item.exc
            i, a, b, X, names = item
            del item
            self._take_result_slot()
            emb = self._encode(i, a, b, X)
            del X
            self.slots.release()
            self._hand_over((i, a, b, emb, names))
            del emb

    def _encode(self, i: int, a: int, b: int, X: Any) -> np.ndarray:
        try:
            if i in self.ready:
                emb = self.ready.pop(i)
            else:
                emb = np.asarray(_call(self.encoder, X, a, self.source.name))
        except InputError as exc:
            self.blame.input = _names_a_cell(exc)
            raise
        if emb.shape != (b - a, self.dim):
            msg = (
                f"encoder returned shape {emb.shape} for cells {a}:{b}; "
                f"expected ({b - a}, {self.dim})"
            )
            raise InputError(msg)
        return np.ascontiguousarray(emb, dtype=self.dtype)

    def _take_result_slot(self) -> None:
        """Wait until fewer than two results are alive (the writer releases one per write)."""
        while not self.results.acquire(timeout=0.1):
            self._check_writer()

    def _hand_over(self, item: tuple[Any, ...]) -> None:
        while True:
            self._check_writer()
            try:
                self.outq.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _shut_down(self, rt: threading.Thread, wt: threading.Thread) -> None:
        self.stop.set()
        # Let the writer finish what is already encoded (saved work survives an interrupt).
        while wt.is_alive():
            try:
                self.outq.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        wt.join()
        self.slots.release()
        rt.join(timeout=5)
        self.bar.close()


def report_dict(report: StreamReport) -> dict[str, Any]:
    """``report`` as a JSON-able dict (for logs and benchmarks)."""
    d = asdict(report)
    d["output"] = str(report.output)
    d["cells_per_s"] = report.cells_per_s
    return d
