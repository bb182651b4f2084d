"""A labelled reference, indexed once for search, saved to one file and loaded again.

:func:`build_reference` turns the labelled cells of a reference (an AnnData, or an ``.h5ad`` /
``.zarr`` file streamed by chunks) into a :class:`ReferenceIndex`: the searched vectors (each
embedding L2-normalised, concatenated), the labels, an exact, IVF or HNSW search structure and,
optionally, a fitted logistic-regression model. Reference cells whose embedding is all zero (a
GenePT-w cell without an embedded gene) are left out, with a warning that counts them.

The saved file (format version 2) is an HDF5 file behind a 512-byte header that HDF5 keeps as its
"user block":

======================  =====================================================================
header (bytes 0-511)    ``genept-fast reference index\n``, one JSON line (``format_version``,
                        ``payload_bytes``, ``sha256`` of every byte after the header), zero
                        padding, and the SHA-256 of the header's first 480 bytes in its last 32
``attrs``               ``format``, ``format_version``, ``meta`` (JSON: keys, dimensions,
                        labels, backend and its parameters, fingerprint, provenance, the number
                        of all-zero reference cells left out)
``labels``              int32 label code of each reference cell
``classes``             the label names, sorted (codes index them)
``obs_names``           the reference cells' names
``vectors``             float16 ``(n_cells, D)`` (exact backend)
``faiss``               uint8: faiss's serialisation of the IVF or HNSW index (the float16
                        vectors live inside it, so they are not stored twice)
``logreg/*``            coefficients, intercepts, standardisation (when fitted)
======================  =====================================================================

:meth:`ReferenceIndex.load` reads the header with plain file reads, checks it, the file's size
and the SHA-256 of everything after it **before HDF5 parses a byte**: a flipped bit or a
truncated file is an :class:`~genept_fast.InputError` ("corrupted ... rebuild it"), never a hang
in HDF5's metadata parser or a crash in faiss's reader. Loading is bounded: one pass over the
file's bytes, then HDF5 and faiss read exactly the bytes that were written. A file of format
version 1 (an HDF5 file with no header, whose checksum could only be checked after HDF5 had parsed
it) is refused with the command that rebuilds it.

The **fingerprint** (BLAKE2b-128) identifies the content (obsm keys, dimensions, label key,
labels, float16 vectors), so the same reference gives the same fingerprint whatever the backend.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from genept_fast._atomic import atomic_path
from genept_fast._extras import missing_extra
from genept_fast._outputs import check_output
from genept_fast._version import __version__ as _version
from genept_fast._version import versions
from genept_fast.annotate._io import (
    AnnDataEmbeddings,
    EmbeddingSource,
    combine,
    label_codes,
    obsm_keys_arg,
    positive_int,
)
from genept_fast.annotate._search import (
    HNSW_DEFAULTS,
    IVF_DEFAULTS,
    FaissIndex,
    HnswIndex,
    IvfIndex,
    exact_search,
    ivf_nlist,
    threads,
)
from genept_fast.errors import InputError, InternalError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anndata import AnnData

__all__ = [
    "EXACT_MAX_CELLS",
    "FORMAT",
    "FORMAT_VERSION",
    "LogregModel",
    "ReferenceIndex",
    "build_reference",
]

log = logging.getLogger(__name__)

FORMAT = "genept-fast reference index"
#: Bumped whenever the file layout changes; a file of another version is refused. Version 2
#: put the checked header in front of the HDF5 data (version 1 had none).
FORMAT_VERSION = 2

#: The header in front of the HDF5 data (HDF5's user block: a power of two, at least 512).
HEADER_BYTES = 512
MAGIC = FORMAT.encode() + b"\n"
#: The header's own SHA-256 sits in its last bytes and covers the bytes before them.
_HEADER_HASHED = HEADER_BYTES - 32
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: ``backend="auto"`` searches exactly up to this many reference cells, with IVF above
#: (benches/bench_annotate.py --mode threshold, D = 384, 2 threads: at 10,000 cells exact search
#: answers 2,181 queries/s against IVF's 9,853, and needs no build; at 25,000, 806 against 4,614).
EXACT_MAX_CELLS = 10_000

#: Cells read, normalised and added at a time.
CHUNK_CELLS = 10_000

#: IVF k-means trains on this many sampled cells per list (faiss asks for at least 39), read
#: in blocks of SAMPLE_BLOCK cells from random places of the reference.
TRAIN_PER_LIST = 40
SAMPLE_BLOCK = 1_000

_READ_BYTES = 1 << 22
#: HDF5 chunk of the faiss serialisation: a chunk is stored whole, so a 4 MiB chunk made a
#: 120-cell HNSW index a 4.2 MB file; 256 KiB bounds that waste, and a 1M-cell index is still
#: only ~3,000 chunks.
_BLOB_CHUNK = 1 << 18
#: Bytes hashed at a time when a file is checked.
_HASH_BYTES = 1 << 22

Backend = Literal["auto", "exact", "ivf", "hnsw"]
BACKENDS = ("auto", "exact", "ivf", "hnsw")


@dataclass
class LogregModel:
    """A multinomial logistic regression on standardised vectors, as plain arrays.

    ``predict_proba`` equals scikit-learn's ``StandardScaler`` + ``LogisticRegression`` pipeline
    it was fitted with (softmax of the decision function; a sigmoid for two classes).
    """

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, X: np.ndarray, y: np.ndarray, *, C: float = 1.0, max_iter: int = 1000, seed: int = 0
    ) -> LogregModel:
        try:
            from sklearn.linear_model import LogisticRegression
            from sklearn.preprocessing import StandardScaler
        except ImportError as exc:
            err = missing_extra("annotate", "annotation by logistic regression", ("sklearn",))
            raise err from exc

        scaler = StandardScaler().fit(X)
        model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        model.fit(scaler.transform(X), y)
        if list(model.classes_) != list(range(int(y.max()) + 1)):
            msg = "logistic regression needs every label code present in the reference"
            raise InputError(msg)
        return cls(
            coef=np.asarray(model.coef_, dtype=np.float64),
            intercept=np.asarray(model.intercept_, dtype=np.float64),
            mean=np.asarray(scaler.mean_, dtype=np.float64),
            scale=np.asarray(scaler.scale_, dtype=np.float64),
            params={"C": float(C), "max_iter": int(max_iter), "random_state": int(seed)},
        )

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale) @ self.coef.T
        z += self.intercept
        if z.shape[1] == 1:  # two classes: scikit-learn's sigmoid
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z


class ReferenceIndex:
    """Labelled reference cells, ready to search: built by :func:`build_reference`.

    Attributes
    ----------
    label_key
        The ``obs`` column the labels came from.
    obsm_keys, dims
        The embeddings (in order) and their dimensions; queries must have the same.
    classes
        Label names, sorted; ``labels`` holds int32 codes into them.
    backend
        ``"exact"`` (BLAS), ``"ivf"`` or ``"hnsw"`` (faiss).
    fingerprint
        BLAKE2b-128 of the content (see the module docstring).
    provenance
        Where the reference came from, when it was built, with which versions, and what made
        each embedding (method, model, dimension, text source) when the reference recorded it.
    n_zero_excluded
        Reference cells left out because their embedding is all zero (they would vote for
        every query with the same similarity, 0).
    """

    def __init__(
        self,
        *,
        label_key: str,
        obsm_keys: list[str],
        dims: list[int],
        classes: list[str],
        labels: np.ndarray,
        obs_names: list[str],
        backend: str,
        fingerprint: str,
        provenance: dict[str, Any],
        vectors: np.ndarray | None = None,
        ann: FaissIndex | None = None,
        logreg: LogregModel | None = None,
        n_zero_excluded: int = 0,
    ) -> None:
        self.label_key = label_key
        self.obsm_keys = obsm_keys
        self.dims = dims
        self.classes = classes
        self.labels = labels
        self.obs_names = obs_names
        self.backend = backend
        self.fingerprint = fingerprint
        self.provenance = provenance
        self._vectors = vectors
        self._ann = ann
        self.logreg = logreg
        self.n_zero_excluded = int(n_zero_excluded)
        self.path: Path | None = None

    def __repr__(self) -> str:
        return (
            f"ReferenceIndex({self.n_cells:,} cells, {len(self.classes)} labels from "
            f"obs[{self.label_key!r}], obsm {self.obsm_keys} (D = {self.dim}), "
            f"backend {self.backend!r}, fingerprint {self.fingerprint[:12]})"
        )

    @property
    def n_cells(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(sum(self.dims))

    def label_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}

    def params(self) -> dict[str, Any]:
        """Backend parameters (IVF's nlist, nprobe; HNSW's M, ef_construction, ef_search)."""
        return self._ann.params() if self._ann is not None else {}

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Stored vectors ``start:stop`` (float16 precision) as float32."""
        stop = self.n_cells if stop is None else stop
        if self._vectors is not None:
            return np.asarray(self._vectors[start:stop], dtype=np.float32)
        assert self._ann is not None
        return self._ann.vectors(start, stop)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exact: bool = False,
        n_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest reference cells of each query vector (combined like the reference).

        Returns cosine similarities (float32, decreasing) and reference rows (int64), both
        ``(n_queries, k)``. ``exact=True`` searches exactly whatever the backend.
        """
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            msg = f"queries have shape {queries.shape}; this reference has D = {self.dim}"
            raise InputError(msg)
        if not 1 <= k <= self.n_cells:
            msg = f"k = {k} neighbours asked from a reference of {self.n_cells} cells"
            raise InputError(msg)
        with threads(n_threads):
            if self._ann is not None and not exact:
                return self._ann.search(queries, k)
            ref = self._vectors if self._vectors is not None else self.vectors
            return exact_search(queries, ref, k, n_reference=self.n_cells, n_threads=n_threads)

    def fit_logreg(self, *, C: float = 1.0, max_iter: int = 1000, seed: int = 0) -> LogregModel:
        """Fit (and keep) the logistic-regression model on the stored vectors."""
        log.info("fitting logistic regression on %s reference cells", f"{self.n_cells:,}")
        self.logreg = LogregModel.fit(
            self.vectors(), self.labels, C=C, max_iter=max_iter, seed=seed
        )
        return self.logreg

    # -- files -----------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "label_key": self.label_key,
            "obsm_keys": self.obsm_keys,
            "dims": self.dims,
            "n_cells": self.n_cells,
            "n_labels": len(self.classes),
            "n_zero_excluded": self.n_zero_excluded,
            "backend": self.backend,
            "backend_params": self.params(),
            "fingerprint": self.fingerprint,
            "logreg": None if self.logreg is None else self.logreg.params,
            "provenance": self.provenance,
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the index to one file, atomically (see the module docstring).

        An existing ``path`` is refused unless ``overwrite=True``.
        """
        import h5py

        dest = check_output(path, overwrite=overwrite)
        with atomic_path(dest) as tmp:
            with h5py.File(tmp, "w", userblock_size=HEADER_BYTES) as f:
                self._write_hdf5(f)
            _write_header(tmp)
        self.path = dest
        return dest

    def _write_hdf5(self, f: Any) -> None:
        import h5py

        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        _dataset(f, "labels", self.labels.astype(np.int32))
        for name in ("classes", "obs_names"):
            data = np.array(getattr(self, name), dtype=object)
            f.create_dataset(name, data=data, dtype=h5py.string_dtype())
        if self._vectors is not None:
            _dataset(f, "vectors", self._vectors.astype(np.float16, copy=False))
        else:
            assert self._ann is not None
            ds = f.create_dataset(
                "faiss",
                shape=(0,),
                maxshape=(None,),
                dtype=np.uint8,
                chunks=(_BLOB_CHUNK,),
                fletcher32=True,
            )

            def append(data: bytes) -> None:
                n = ds.shape[0]
                ds.resize((n + len(data),))
                ds[n:] = np.frombuffer(data, dtype=np.uint8)

            self._ann.write(append)
        if self.logreg is not None:
            g = f.create_group("logreg")
            for name in ("coef", "intercept", "mean", "scale"):
                _dataset(g, name, getattr(self.logreg, name))
        f.attrs["meta"] = json.dumps(self._meta())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceIndex:
        """Read an index written by :meth:`save`, after checking its header and SHA-256.

        The whole file is checked before HDF5 or faiss parses any of it (see the module
        docstring).

        Raises
        ------
        InputError
            Not an index file, another format version, or corrupted (header, size or SHA-256
            mismatch), or changed while it was read.
        """
        import h5py

        src = Path(path)
        if not src.is_file():
            msg = f"reference index not found: {src}"
            raise FileNotFoundError(msg)
        before = _identity(src)
        verify_file(src)
        try:
            f = h5py.File(src, "r")
        except OSError as exc:  # the bytes were checked: only a file replaced meanwhile
            msg = f"{src}: reference index cannot be opened ({exc}); was it replaced?"
            raise InputError(msg) from exc
        try:
            index = cls._read(f, src)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, InputError):
                raise
            msg = f"{src}: reference index is corrupted ({type(exc).__name__}: {exc})"
            raise InputError(msg) from exc
        finally:
            f.close()
        if _identity(src) != before:
            msg = f"{src}: the reference index changed while it was read; load it again"
            raise InputError(msg)
        return index

    @classmethod
    def _read(cls, f: Any, src: Path) -> ReferenceIndex:
        fmt = f.attrs.get("format")
        version = int(f.attrs.get("format_version", -1))
        if fmt != FORMAT or version != FORMAT_VERSION:
            msg = f"{src}: the header says format {FORMAT_VERSION}, the HDF5 data {fmt!r} {version}"
            raise InputError(msg)
        meta = json.loads(f.attrs["meta"])
        labels = np.asarray(f["labels"][()]).astype(np.int32)
        classes = _strings(f["classes"])
        obs_names = _strings(f["obs_names"])
        vectors = np.asarray(f["vectors"][()]) if "vectors" in f else None
        logreg = None
        if "logreg" in f:
            g = f["logreg"]
            arrays = {n: np.asarray(g[n][()]) for n in ("coef", "intercept", "mean", "scale")}
            logreg = LogregModel(**arrays, params=dict(meta.get("logreg") or {}))
        ann = _read_ann(f["faiss"], meta, src) if "faiss" in f else None
        n = int(meta["n_cells"])
        if len(labels) != n or len(obs_names) != n or (ann is not None and ann.n_cells != n):
            msg = f"{src}: reference index is corrupted (holds a different number of cells)"
            raise InputError(msg)
        index = cls(
            label_key=meta["label_key"],
            obsm_keys=list(meta["obsm_keys"]),
            dims=[int(d) for d in meta["dims"]],
            classes=classes,
            labels=labels,
            obs_names=obs_names,
            backend=meta["backend"],
            fingerprint=meta["fingerprint"],
            provenance=meta["provenance"],
            vectors=vectors,
            ann=ann,
            logreg=logreg,
            n_zero_excluded=int(meta.get("n_zero_excluded", 0)),
        )
        index.path = src
        return index


def _read_ann(blob: Any, meta: dict[str, Any], src: Path) -> FaissIndex:
    """The faiss index serialised in ``blob``, read by faiss's own reader."""
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        data = blob[pos : pos + n].tobytes()
        pos += len(data)
        return data

    kinds: dict[str, Any] = {"hnsw": HnswIndex, "ivf": IvfIndex}
    if meta["backend"] not in kinds:
        msg = f"{src}: unknown backend {meta['backend']!r} (corrupted?)"
        raise InputError(msg)
    return kinds[meta["backend"]].read(read, meta["backend_params"])


def _dataset(group: Any, name: str, data: np.ndarray) -> None:
    data = np.ascontiguousarray(data)
    group.create_dataset(
        name, data=data, chunks=True if data.size else None, fletcher32=bool(data.size)
    )


def _strings(ds: Any) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[:]]


# -- the checked header --------------------------------------------------------------------------


def _write_header(path: Path) -> None:
    """Fill the user block of the HDF5 file at ``path`` with the header (module docstring)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("r+b") as fh:
        fh.seek(HEADER_BYTES)
        while block := fh.read(_HASH_BYTES):
            digest.update(block)
            size += len(block)
        fields = {"format_version": FORMAT_VERSION, "payload_bytes": size}
        line = json.dumps({**fields, "sha256": digest.hexdigest()}).encode() + b"\n"
        head = (MAGIC + line).ljust(_HEADER_HASHED, b"\0")
        if len(head) != _HEADER_HASHED:  # pragma: no cover - the line is under 150 bytes
            msg = "reference index header too long"
            raise InternalError(msg)
        fh.seek(0)
        fh.write(head + hashlib.sha256(head).digest())


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _rebuild(src: Path, what: str) -> InputError:
    return InputError(f"{src}: {what}. Rebuild it with `genept-fast build-reference`")


def read_header(src: Path, head: bytes) -> dict[str, Any]:
    """The fields of an index header, checked: ``head`` is the file's first
    :data:`HEADER_BYTES` bytes and the 8 after them (where HDF5's signature follows a header
    whose first bytes were damaged).

    Raises
    ------
    InputError
        Not an index, an index of another format version, or a damaged header.
    """
    if not head.startswith(MAGIC):
        if head.startswith(_HDF5_SIGNATURE):
            msg = (
                f"{src}: not a genept-fast reference index of format version {FORMAT_VERSION} "
                "(an HDF5 file without the index header: an AnnData, or an index of format "
                "version 1, whose checksum could only be checked after HDF5 had parsed the "
                f"file, which this genept-fast, {_version}, does not do). Rebuild such an index "
                "with `genept-fast build-reference`"
            )
            raise InputError(msg)
        if head[HEADER_BYTES:] == _HDF5_SIGNATURE:
            raise _rebuild(src, "reference index is corrupted (its header is damaged)")
        msg = f"{src}: not a genept-fast reference index (no index header)"
        raise InputError(msg)
    if len(head) < HEADER_BYTES:
        raise _rebuild(src, "reference index is corrupted (truncated inside its header)")
    if hashlib.sha256(head[:_HEADER_HASHED]).digest() != head[_HEADER_HASHED:HEADER_BYTES]:
        raise _rebuild(src, "reference index is corrupted (its header fails its checksum)")
    try:
        line = head[len(MAGIC) : _HEADER_HASHED].split(b"\n", 1)[0]
        fields = json.loads(line)
        version = int(fields["format_version"])
        size, sha = int(fields["payload_bytes"]), str(fields["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _rebuild(src, f"reference index header is unreadable ({exc})") from exc
    if version != FORMAT_VERSION:
        what = (
            f"reference index format version {version}; this genept-fast ({_version}) reads "
            f"version {FORMAT_VERSION}"
        )
        raise _rebuild(src, what)
    return {"format_version": version, "payload_bytes": size, "sha256": sha}


def verify_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check an index file's header, size and SHA-256 with plain reads (no HDF5).

    Returns the header's fields.

    Raises
    ------
    InputError
        Not an index, another format version, or corrupted.
    """
    src = Path(path)
    with src.open("rb") as fh:
        header = read_header(src, fh.read(HEADER_BYTES + len(_HDF5_SIGNATURE)))
        fh.seek(HEADER_BYTES)
        size = os.fstat(fh.fileno()).st_size - HEADER_BYTES
        if size != header["payload_bytes"]:
            what = (
                f"reference index is corrupted ({size:,} bytes after the header where "
                f"{header['payload_bytes']:,} were written: truncated or appended to)"
            )
            raise _rebuild(src, what)
        digest = hashlib.sha256()
        left = size
        while left > 0 and (block := fh.read(min(_HASH_BYTES, left))):
            digest.update(block)
            left -= len(block)
    if left or digest.hexdigest() != header["sha256"]:
        what = (
            f"reference index is corrupted (SHA-256 {digest.hexdigest()[:16]}... of its "
            f"contents, {header['sha256'][:16]}... when it was saved)"
        )
        raise _rebuild(src, what)
    return header


# -- building ------------------------------------------------------------------------------------


def _training_sample(src: Any, n_sample: int, n_threads: int | None) -> np.ndarray:
    """About ``n_sample`` rows from random places of the reference (whole blocks of
    :data:`SAMPLE_BLOCK` rows, seed 0), so that a file sorted by cell type or batch is
    sampled evenly."""
    n = src.n_cells
    if n_sample >= n:
        starts = list(range(0, n, SAMPLE_BLOCK))
    else:
        n_blocks = -(-n // SAMPLE_BLOCK)
        pick = -(-n_sample // SAMPLE_BLOCK)
        rng = np.random.default_rng(0)
        starts = sorted(int(b) * SAMPLE_BLOCK for b in rng.choice(n_blocks, pick, replace=False))
    parts = [
        combine(
            src.read(a, min(a + SAMPLE_BLOCK, n)),
            src.keys,
            start=a,
            where=src.where,
            n_threads=n_threads,
        )
        for a in starts
    ]
    sample = np.concatenate(parts)
    return sample[sample.any(axis=1)]  # all-zero cells are left out of the index


def _iter_blocks(src: Any, chunk: int, n_threads: int | None) -> Iterator[tuple[int, np.ndarray]]:
    for a in range(0, src.n_cells, chunk):
        b = min(a + chunk, src.n_cells)
        yield a, combine(src.read(a, b), src.keys, start=a, where=src.where, n_threads=n_threads)


def _add_cells(
    src: Any, chunk: int, n_threads: int | None, vectors: np.ndarray | None, ann: Any
) -> tuple[np.ndarray, bytes]:
    """Put the reference's cells, in order, into ``vectors`` (from its first row) or ``ann``,
    leaving out those whose searched vector is all zero.

    Returns which cells were kept and the BLAKE2b-128 of the kept float16 vectors.
    """
    kept = np.zeros(src.n_cells, dtype=bool)
    digest = hashlib.blake2b(digest_size=16)
    m = 0
    for a, block in _iter_blocks(src, chunk, n_threads):
        nonzero = block.any(axis=1)
        kept[a : a + len(block)] = nonzero
        if not nonzero.all():
            block = block[nonzero]
        half = block.astype(np.float16)
        digest.update(half.tobytes())
        if vectors is not None:
            vectors[m : m + len(block)] = half
        elif len(block):
            ann.add(block)
        m += len(block)
    return kept, digest.digest()


def _without_zero_cells(
    kept: np.ndarray,
    codes: np.ndarray,
    classes: list[str],
    names: list[str],
    label_key: str,
    keys: list[str],
) -> tuple[np.ndarray, list[str], list[str]]:
    """Labels, label names and cell names of the ``kept`` cells, with a warning that counts the
    others (cells whose embedding is all zero: no similarity to anything, yet they would vote).
    """
    n, m = len(kept), int(kept.sum())
    what = (
        f"{n - m:,} of {n:,} reference cells have an all-zero embedding in obsm {keys} (for "
        "GenePT-w: none of their genes has an embedding)"
    )
    if m == 0:
        msg = f"{what}: there is nothing to search"
        raise InputError(msg)
    codes = codes[kept]
    present = np.unique(codes)
    if len(present) < 2:
        msg = (
            f"{what}; the other cells carry {len(present)} label of obs[{label_key!r}] "
            f"({classes[int(present[0])]!r}); transferring labels needs at least 2"
        )
        raise InputError(msg)
    lost = [c for i, c in enumerate(classes) if i not in set(present.tolist())]
    if lost:
        remap = np.full(len(classes), -1, dtype=np.int32)
        remap[present] = np.arange(len(present), dtype=np.int32)
        codes = remap[codes]
        classes = [classes[int(i)] for i in present]
    warnings.warn(
        f"{what}: they are left out of the index"
        + (f"; labels left without a cell, so never predicted: {lost}" if lost else ""),
        stacklevel=3,
    )
    return codes, classes, [name for name, k in zip(names, kept.tolist(), strict=True) if k]


def build_reference(
    reference: AnnData | str | os.PathLike[str] | Any,
    *,
    label_key: str,
    obsm_key: str | Sequence[str] = "X_genept_w",
    backend: Backend = "auto",
    logreg: bool = False,
    ann_params: dict[str, int] | None = None,
    chunk_size: int = CHUNK_CELLS,
    n_threads: int | None = None,
) -> ReferenceIndex:
    """Index labelled reference cells for :func:`transfer_labels`; save it with ``.save(path)``.

    Parameters
    ----------
    reference
        An AnnData with ``obs[label_key]`` and ``obsm[obsm_key]``, or the path of an ``.h5ad`` /
        ``.zarr`` holding them (read by chunks, so the reference never sits in memory as float32),
        or an object with the embedding-source protocol of
        :class:`~genept_fast.annotate.AnnDataEmbeddings`.
    label_key
        ``obs`` column with the labels. A missing label (NaN, empty) is an error; so is a single
        label.
    obsm_key
        The embedding, or several (the "ensemble": each L2-normalised, then concatenated).
    backend
        ``"exact"`` (BLAS matrix products, no build step), ``"ivf"`` (faiss inverted file over
        float16 codes: k-means on a random sample of the reference, then one pass), ``"hnsw"``
        (faiss HNSW graph over float16 vectors), or ``"auto"``: exact up to
        :data:`EXACT_MAX_CELLS` cells, IVF above.
    logreg
        Also fit the logistic-regression model (saved with the index).
    ann_params
        IVF: ``nlist`` (default :func:`~genept_fast.annotate.ivf_nlist`), ``nprobe`` (default
        :data:`IVF_DEFAULTS`); HNSW: ``M``, ``ef_construction``, ``ef_search`` (default
        :data:`HNSW_DEFAULTS`).
    chunk_size
        Cells read and added at a time.
    n_threads
        Threads (BLAS and faiss); default all cores, capped by ``GENEPT_FAST_NUM_THREADS``.

    Returns
    -------
    A :class:`ReferenceIndex`.
    """

    keys = obsm_keys_arg(obsm_key, ["X_genept_w"])
    if backend not in BACKENDS:
        msg = f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        raise InputError(msg)
    chunk_size = positive_int(chunk_size, "chunk_size")
    src: Any
    if isinstance(reference, (str, os.PathLike)):
        src = EmbeddingSource(reference, keys)
        source: dict[str, Any] = {"source": "file", **src.fingerprint()}
    elif hasattr(reference, "obsm"):
        src = AnnDataEmbeddings(reference, keys, what="reference ")
        source = {"source": "AnnData in memory"}
    else:  # any object with the embedding-source protocol (see AnnDataEmbeddings)
        src = reference
        source = {"source": str(getattr(src, "where", "") or type(src).__name__).strip(": ")}
        if list(src.keys) != keys:
            msg = f"the embedding source holds {list(src.keys)}, not {keys}"
            raise InputError(msg)
    try:
        names = src.obs_names()
        codes, classes = label_codes(src.obs_column(label_key), label_key, names)
        n, dim = src.n_cells, int(sum(src.dims))
        if n == 0:
            msg = "the reference has no cells"
            raise InputError(msg)
        chosen = backend if backend != "auto" else ("exact" if n <= EXACT_MAX_CELLS else "ivf")
        vectors: np.ndarray | None = None
        ann: FaissIndex | None = None
        with threads(n_threads):
            if chosen == "exact":
                vectors = np.empty((n, dim), dtype=np.float16)
            elif chosen == "hnsw":
                ann = HnswIndex(dim, **{**HNSW_DEFAULTS, **(ann_params or {})})
            else:
                params = {"nlist": ivf_nlist(n), **IVF_DEFAULTS, **(ann_params or {})}
                ivf = IvfIndex(dim, **params)
                sample = _training_sample(src, TRAIN_PER_LIST * ivf.nlist, n_threads)
                if len(sample) < ivf.nlist:
                    msg = (
                        f"an IVF index of {ivf.nlist} lists needs at least {ivf.nlist} cells"
                        f" with a nonzero embedding to train on; the reference's sample has"
                        f" {len(sample)} (all-zero cells are left out): use backend='exact'"
                        " (--backend exact), or fewer lists (ann_params={'nlist': ...}, --nlist)"
                    )
                    raise InputError(msg)
                ivf.train(sample)
                ann = ivf
            kept, digest = _add_cells(src, int(chunk_size), n_threads, vectors, ann)
        provenance = {
            **source,
            "embeddings": src.params,
            "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions("genept-fast", "faiss-cpu", "numpy", "scikit-learn"),
        }
    finally:
        src.close()
    n_zero = n - int(kept.sum())
    if n_zero:
        codes, classes, names = _without_zero_cells(kept, codes, classes, names, label_key, keys)
        if vectors is not None:
            vectors.resize((n - n_zero, dim), refcheck=False)  # in place: no second copy
    fp = hashlib.blake2b(digest_size=16)
    fp.update(json.dumps([FORMAT_VERSION, keys, src.dims, label_key, classes]).encode())
    fp.update(codes.tobytes())
    fp.update(digest)
    index = ReferenceIndex(
        label_key=label_key,
        obsm_keys=keys,
        dims=list(src.dims),
        classes=classes,
        labels=codes,
        obs_names=names,
        backend=chosen,
        fingerprint=fp.hexdigest(),
        provenance=provenance,
        vectors=vectors,
        ann=ann,
        n_zero_excluded=n_zero,
    )
    if logreg:
        with threads(n_threads):
            index.fit_logreg()
    return index
