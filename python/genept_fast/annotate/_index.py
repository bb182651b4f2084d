"""A labelled reference, indexed once for search, saved to one file and loaded again.

:func:`build_reference` turns the labelled cells of a reference (an AnnData, or an ``.h5ad`` /
``.zarr`` file streamed by chunks) into a :class:`ReferenceIndex`: the searched vectors (each
embedding L2-normalised, concatenated), the labels, an exact, IVF or HNSW search structure and,
optionally, a fitted logistic-regression model.

The saved file is HDF5 (h5py), every dataset chunked with HDF5's Fletcher-32 checksum:

======================  =====================================================================
``attrs``               ``format``, ``format_version``, ``meta`` (JSON: keys, dimensions,
                        labels, backend and its parameters, fingerprint, provenance, checksum)
``labels``              int32 label code of each reference cell
``classes``             the label names, sorted (codes index them)
``obs_names``           the reference cells' names
``vectors``             float16 ``(n_cells, D)`` (exact backend)
``faiss``               uint8: faiss's serialisation of the IVF or HNSW index (the float16
                        vectors live inside it, so they are not stored twice)
``logreg/*``            coefficients, intercepts, standardisation (when fitted)
======================  =====================================================================

Two hashes (BLAKE2b-128): the **fingerprint** identifies the content (obsm keys, dimensions,
label key, labels, float16 vectors), so the same reference gives the same fingerprint whatever
the backend; the **checksum** covers the stored bytes and is verified on load, before faiss reads
anything, so a corrupted file is refused with a :class:`~genept_fast.InputError`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from genept_fast._atomic import atomic_path
from genept_fast._core import __version__ as _version
from genept_fast._extras import missing_extra
from genept_fast._outputs import check_output
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
from genept_fast.errors import InputError

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
#: Bumped whenever the file layout changes; a file of another version is refused.
FORMAT_VERSION = 1

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
        each embedding (model, text source) when the reference recorded it.
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

    def _meta(self, checksum: str) -> dict[str, Any]:
        return {
            "label_key": self.label_key,
            "obsm_keys": self.obsm_keys,
            "dims": self.dims,
            "n_cells": self.n_cells,
            "n_labels": len(self.classes),
            "backend": self.backend,
            "backend_params": self.params(),
            "fingerprint": self.fingerprint,
            "checksum": checksum,
            "logreg": None if self.logreg is None else self.logreg.params,
            "provenance": self.provenance,
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the index to one HDF5 file, atomically (see the module docstring).

        An existing ``path`` is refused unless ``overwrite=True``.
        """
        import h5py

        dest = check_output(path, overwrite=overwrite)
        with atomic_path(dest) as tmp, h5py.File(tmp, "w") as f:
            check = hashlib.blake2b(digest_size=16)
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            _dataset(f, "labels", self.labels.astype(np.int32), check)
            f.create_dataset(
                "classes", data=np.array(self.classes, dtype=object), dtype=h5py.string_dtype()
            )
            f.create_dataset(
                "obs_names", data=np.array(self.obs_names, dtype=object), dtype=h5py.string_dtype()
            )
            check.update(json.dumps([self.classes, self.obs_names]).encode())
            if self._vectors is not None:
                _dataset(f, "vectors", self._vectors.astype(np.float16, copy=False), check)
            else:
                assert self._ann is not None
                ds = f.create_dataset(
                    "faiss",
                    shape=(0,),
                    maxshape=(None,),
                    dtype=np.uint8,
                    chunks=(_READ_BYTES,),
                    fletcher32=True,
                )

                def append(data: bytes) -> None:
                    n = ds.shape[0]
                    ds.resize((n + len(data),))
                    ds[n:] = np.frombuffer(data, dtype=np.uint8)
                    check.update(data)

                self._ann.write(append)
            if self.logreg is not None:
                g = f.create_group("logreg")
                for name in ("coef", "intercept", "mean", "scale"):
                    _dataset(g, name, getattr(self.logreg, name), check)
            f.attrs["meta"] = json.dumps(self._meta(check.hexdigest()))
        self.path = dest
        return dest

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceIndex:
        """Read an index written by :meth:`save`, checking format version and checksum.

        Raises
        ------
        InputError
            Not an index file, another format version, or corrupted (checksum mismatch,
            unreadable data).
        """
        import h5py

        src = Path(path)
        if not src.is_file():
            msg = f"reference index not found: {src}"
            raise FileNotFoundError(msg)
        try:
            f = h5py.File(src, "r")
        except OSError as exc:
            msg = f"{src}: not a readable reference index (corrupted, or not an HDF5 file): {exc}"
            raise InputError(msg) from exc
        try:
            return cls._read(f, src)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, InputError):
                raise
            msg = f"{src}: reference index is corrupted ({type(exc).__name__}: {exc})"
            raise InputError(msg) from exc
        finally:
            f.close()

    @classmethod
    def _read(cls, f: Any, src: Path) -> ReferenceIndex:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            msg = f"{src}: not a genept-fast reference index (format {fmt!r})"
            raise InputError(msg)
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            msg = (
                f"{src}: reference index format version {version}; this genept-fast "
                f"({_version}) reads version {FORMAT_VERSION}. Rebuild it with "
                "`genept-fast build-reference`"
            )
            raise InputError(msg)
        meta = json.loads(f.attrs["meta"])
        check = hashlib.blake2b(digest_size=16)
        labels = _read_dataset(f["labels"], check).astype(np.int32)
        classes = _strings(f["classes"])
        obs_names = _strings(f["obs_names"])
        check.update(json.dumps([classes, obs_names]).encode())
        vectors = _read_dataset(f["vectors"], check) if "vectors" in f else None
        blob = None
        if "faiss" in f:
            ds = f["faiss"]
            for a in range(0, ds.shape[0], _READ_BYTES):
                check.update(ds[a : a + _READ_BYTES].tobytes())
            blob = ds
        logreg = None
        if "logreg" in f:
            g = f["logreg"]
            arrays = {n: _read_dataset(g[n], check) for n in ("coef", "intercept", "mean", "scale")}
            logreg = LogregModel(**arrays, params=dict(meta.get("logreg") or {}))
        if check.hexdigest() != meta["checksum"]:
            msg = (
                f"{src}: reference index is corrupted (checksum {check.hexdigest()} != "
                f"{meta['checksum']} recorded when it was saved); rebuild it"
            )
            raise InputError(msg)
        ann: FaissIndex | None = None
        if blob is not None:
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
            ann = kinds[meta["backend"]].read(read, meta["backend_params"])
        n = int(meta["n_cells"])
        if len(labels) != n or (ann is not None and ann.n_cells != n):
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
        )
        index.path = src
        return index


def _dataset(group: Any, name: str, data: np.ndarray, check: Any) -> None:
    data = np.ascontiguousarray(data)
    group.create_dataset(
        name, data=data, chunks=True if data.size else None, fletcher32=bool(data.size)
    )
    check.update(data.tobytes())


def _strings(ds: Any) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[:]]


def _read_dataset(ds: Any, check: Any) -> np.ndarray:
    out = np.asarray(ds[()])
    check.update(np.ascontiguousarray(out).tobytes())
    return out


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
    return np.concatenate(parts)


def _iter_blocks(src: Any, chunk: int, n_threads: int | None) -> Iterator[tuple[int, np.ndarray]]:
    for a in range(0, src.n_cells, chunk):
        b = min(a + chunk, src.n_cells)
        yield a, combine(src.read(a, b), src.keys, start=a, where=src.where, n_threads=n_threads)


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
    from genept_fast.eval._io import versions

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
        fp = hashlib.blake2b(digest_size=16)
        fp.update(json.dumps([FORMAT_VERSION, keys, src.dims, label_key, classes]).encode())
        fp.update(codes.tobytes())
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
                ivf.train(_training_sample(src, TRAIN_PER_LIST * ivf.nlist, n_threads))
                ann = ivf
            for a, block in _iter_blocks(src, int(chunk_size), n_threads):
                half = block.astype(np.float16)
                fp.update(half.tobytes())
                if vectors is not None:
                    vectors[a : a + len(block)] = half
                else:
                    assert ann is not None
                    ann.add(block)
        provenance = {
            **source,
            "embeddings": src.params,
            "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions("genept-fast", "faiss-cpu", "numpy", "scikit-learn"),
        }
    finally:
        src.close()
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
    )
    if logreg:
        with threads(n_threads):
            index.fit_logreg()
    return index
