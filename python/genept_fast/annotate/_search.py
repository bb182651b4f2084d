"""Nearest neighbours by cosine similarity: exact (BLAS, in blocks) and approximate (faiss HNSW).

Every vector here is L2-normalised, so cosine similarity is the inner product.

- :func:`exact_search` multiplies a chunk of queries with a block of the reference at a time
  (numpy's BLAS) and keeps the running top-k with ``argpartition``: memory stays at one
  ``queries × block`` score matrix whatever the reference size.
- :class:`IvfIndex` wraps a faiss ``IndexIVFScalarQuantizer`` (k-means lists, float16 codes: half
  the memory of the vectors), :class:`HnswIndex` a faiss ``IndexHNSWSQ`` (float16 storage), both
  with the inner-product metric; built once, streamed to and from disk through faiss's own
  serialisation (no pickle).

Neighbours come back sorted by decreasing similarity, ties by increasing reference row; the
exact search is deterministic (which of several rows tied at the k-th similarity make the cut is
the partition's choice, the same on every run).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast import kernels
from genept_fast._extras import missing_extra
from genept_fast.annotate._io import positive_int
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "HNSW_DEFAULTS",
    "IVF_DEFAULTS",
    "FaissIndex",
    "HnswIndex",
    "IvfIndex",
    "exact_search",
    "faiss_version",
    "ivf_nlist",
    "threads",
]

#: Most entries of one ``queries × reference block`` score matrix (64 MB of float32).
SCORE_BLOCK = 16 * 1024 * 1024

#: Queries scored together against a reference block by one thread of the exact search.
QUERY_CHUNK = 1024

#: faiss HNSW settings: graph degree M, build and search beam widths (chosen in
#: benches/bench_annotate.py: recall@15 ≥ 0.95 on clustered data at D = 384 and 1536).
HNSW_DEFAULTS: dict[str, int] = {"M": 32, "ef_construction": 80, "ef_search": 96}

#: faiss IVF setting: lists scanned per query (recall@15 0.993 at 1M cells, D = 384, with
#: ivf_nlist lists; benches/bench_annotate.py --mode libraries).
IVF_DEFAULTS: dict[str, int] = {"nprobe": 32}


@contextlib.contextmanager
def threads(n_threads: int | None) -> Iterator[int]:
    """Cap numpy's BLAS (and faiss's OpenMP, when loaded) at ``n_threads`` for a block of work."""
    threadpool_limits = _threadpool_limits()
    n = kernels.resolved_threads(n_threads)
    faiss = _faiss_if_loaded()
    before = faiss.omp_get_max_threads() if faiss is not None else None
    with threadpool_limits(limits=n):
        if faiss is not None:
            faiss.omp_set_num_threads(n)
        try:
            yield n
        finally:
            if faiss is not None and before is not None:
                faiss.omp_set_num_threads(before)


def _faiss_if_loaded() -> Any:
    import sys

    return sys.modules.get("faiss")


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        err = missing_extra("annotate", "approximate search", ("faiss",))
        raise err from exc
    return faiss


def _threadpool_limits() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        err = missing_extra("annotate", "cell-type annotation", ("threadpoolctl",))
        raise err from exc
    return threadpool_limits


def faiss_version() -> str:
    """The installed faiss version."""
    return str(_import_faiss().__version__)


def _topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column positions and values of the ``k`` largest entries of each row, best first."""
    n_cols = scores.shape[1]
    if k < n_cols:
        part = np.argpartition(scores, n_cols - k, axis=1)[:, n_cols - k :]
    else:
        part = np.broadcast_to(np.arange(n_cols), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    # decreasing score, ties by increasing position: lexsort's last key is the primary one
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def exact_search(
    queries: np.ndarray,
    reference: np.ndarray | Callable[[int, int], np.ndarray],
    k: int,
    *,
    n_reference: int | None = None,
    block_rows: int | None = None,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar reference rows of each query row (inner product), exactly.

    The reference is read one block of rows at a time (each block once); the queries are cut
    into chunks of :data:`QUERY_CHUNK` that threads score against the block in parallel (BLAS
    single-threaded inside each, numpy's ``argpartition`` releases the GIL), each keeping its
    running top ``k``.

    Parameters
    ----------
    queries
        ``(n_queries, D)`` float32, L2-normalised.
    reference
        ``(n_reference, D)`` array (float16 or float32; float16 blocks are widened as they are
        used), or a function ``(start, stop) -> rows`` that reads blocks (then give
        ``n_reference``).
    k
        Neighbours per query (at most ``n_reference``).
    block_rows
        Reference rows per block (default: one query chunk's scores hold ≤ 16M entries).
    n_threads
        Threads (default all cores, capped by ``GENEPT_FAST_NUM_THREADS``).

    Returns
    -------
    similarity : float32 ``(n_queries, k)``, decreasing along each row
    index : int64 ``(n_queries, k)``, reference rows
    """
    from concurrent.futures import ThreadPoolExecutor

    threadpool_limits = _threadpool_limits()

    if callable(reference):
        if n_reference is None:
            msg = "exact_search with a block reader needs n_reference"
            raise InputError(msg)
        read = reference
        n_ref = int(n_reference)
    else:
        ref = reference
        n_ref = int(ref.shape[0])

        def read(a: int, b: int) -> np.ndarray:
            return ref[a:b]

    n_q = int(queries.shape[0])
    k = int(k)
    if not 1 <= k <= max(n_ref, 1) or n_ref == 0:
        msg = f"k = {k} neighbours asked from a reference of {n_ref} cells"
        raise InputError(msg)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    bounds = [(a, min(a + QUERY_CHUNK, n_q)) for a in range(0, n_q, QUERY_CHUNK)]
    if block_rows is None:
        block_rows = max(k, SCORE_BLOCK // min(max(n_q, 1), QUERY_CHUNK))
    best: list[tuple[np.ndarray, np.ndarray]] = [
        (np.zeros((b - a, 0), dtype=np.float32), np.zeros((b - a, 0), dtype=np.int64))
        for a, b in bounds
    ]

    def step(c: int, block: np.ndarray, start: int) -> None:
        a, b = bounds[c]
        pos, vals = _topk_rows(q[a:b] @ block.T, min(k, block.shape[0]))
        sim, idx = best[c]
        cand_sim = np.concatenate([sim, vals], axis=1)
        cand_idx = np.concatenate([idx, pos.astype(np.int64) + start], axis=1)
        pos, sim = _topk_rows(cand_sim, min(k, cand_sim.shape[1]))
        best[c] = (sim, np.take_along_axis(cand_idx, pos, axis=1))

    workers = min(kernels.resolved_threads(n_threads), max(len(bounds), 1))
    with ThreadPoolExecutor(workers) as pool, threadpool_limits(1 if workers > 1 else None):
        for start in range(0, n_ref, block_rows):
            block = np.asarray(read(start, min(start + block_rows, n_ref)), dtype=np.float32)
            list(
                pool.map(
                    lambda c, block=block, start=start: step(c, block, start), range(len(bounds))
                )
            )
    if not bounds:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    sim = np.concatenate([s for s, _ in best])
    idx = np.concatenate([i for _, i in best])
    return sim.astype(np.float32, copy=False), idx


class FaissIndex:
    """What the faiss indexes share: float16-stored unit vectors, inner product, streamed I/O.

    Subclasses set ``_search_params(k)`` and ``params()``; rows the index cannot fill (fewer
    than ``k`` found) are searched exactly.
    """

    kind = ""
    _index: Any

    @property
    def n_cells(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def params(self) -> dict[str, int]:
        raise NotImplementedError

    def _search_params(self, k: int) -> Any:
        raise NotImplementedError

    def add(self, vectors: np.ndarray) -> None:
        """Add rows (float32, L2-normalised)."""
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` by inner product; same layout as :func:`exact_search`."""
        n = self.n_cells
        if not 1 <= k <= n:
            msg = f"k = {k} neighbours asked from a reference of {n} cells"
            raise InputError(msg)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        sim, idx = self._index.search(q, int(k), params=self._search_params(int(k)))
        if (idx < 0).any():
            rows = np.flatnonzero((idx < 0).any(axis=1))
            s2, i2 = exact_search(q[rows], self.vectors, int(k), n_reference=n)
            sim[rows], idx[rows] = s2, i2
        return sim.astype(np.float32, copy=False), idx.astype(np.int64, copy=False)

    def vectors(self, start: int, stop: int) -> np.ndarray:
        """Stored rows ``start:stop`` (float16 precision, as float32)."""
        return np.asarray(self._index.reconstruct_n(int(start), int(stop - start)))

    def write(self, write: Callable[[bytes], None]) -> None:
        """Stream faiss's serialisation of the index to ``write`` (chunks of bytes)."""
        faiss = _import_faiss()

        def cb(buf: Any) -> int:
            data = bytes(buf)
            write(data)
            return len(data)

        faiss.write_index(self._index, faiss.PyCallbackIOWriter(cb))

    @staticmethod
    def _read(read: Callable[[int], bytes], expected: Any) -> Any:
        faiss = _import_faiss()
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(read))
        except RuntimeError as exc:
            msg = f"the faiss index cannot be read (corrupted?): {str(exc).splitlines()[0]}"
            raise InputError(msg) from exc
        if not isinstance(index, expected):
            msg = (
                f"the stored faiss index is a {type(index).__name__}, expected {expected.__name__}"
            )
            raise InputError(msg)
        return index


class IvfIndex(FaissIndex):
    """A faiss inverted-file index (``IndexIVFScalarQuantizer``, float16 codes, inner product).

    k-means (on a sample) puts ``nlist`` centroids on the reference; each vector is stored in
    its nearest centroid's list; a query scans the ``nprobe`` lists nearest to it.

    Parameters
    ----------
    dim
        Vector dimension.
    nlist
        Number of lists (see :func:`ivf_nlist`).
    nprobe
        Lists scanned per query (default :data:`IVF_DEFAULTS`).
    """

    kind = "ivf"

    def __init__(
        self, dim: int, *, nlist: int, nprobe: int = IVF_DEFAULTS["nprobe"], _index: Any = None
    ) -> None:
        faiss = _import_faiss()
        positive_int(nlist, "nlist")
        positive_int(nprobe, "nprobe")
        if _index is None:
            # index_factory gives an index that owns its coarse quantizer (no dangling pointer)
            _index = faiss.index_factory(
                int(dim), f"IVF{int(nlist)},SQfp16", faiss.METRIC_INNER_PRODUCT
            )
        self._index = _index
        self.nlist = int(nlist)
        self.nprobe = int(nprobe)

    def params(self) -> dict[str, int]:
        return {"nlist": self.nlist, "nprobe": self.nprobe}

    def _search_params(self, k: int) -> Any:
        return _import_faiss().SearchParametersIVF(nprobe=min(self.nprobe, self.nlist))

    def train(self, sample: np.ndarray) -> None:
        """k-means on ``sample`` (float32 unit rows; at least ``nlist`` of them)."""
        if len(sample) < self.nlist:
            msg = f"{len(sample)} training vectors for {self.nlist} lists"
            raise InputError(msg)
        self._index.cp.seed = 0
        self._index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def vectors(self, start: int, stop: int) -> np.ndarray:
        if not self._index.direct_map.type:
            self._index.make_direct_map()
        return super().vectors(start, stop)

    @classmethod
    def read(cls, read: Callable[[int], bytes], params: dict[str, int]) -> IvfIndex:
        """Rebuild from faiss's serialisation, pulled through ``read(n_bytes)``."""
        index = cls._read(read, _import_faiss().IndexIVFScalarQuantizer)
        return cls(int(index.d), nlist=int(index.nlist), nprobe=int(params["nprobe"]), _index=index)


def ivf_nlist(n_cells: int) -> int:
    """Lists of an IVF index over ``n_cells``: ``4 √n`` (faiss's guideline), at most ``n / 39``
    (k-means wants ≥ 39 training points per centroid), at least 1."""
    return max(1, min(round(4 * math.sqrt(n_cells)), n_cells // 39))


class HnswIndex(FaissIndex):
    """A faiss HNSW graph over float16-stored, L2-normalised vectors (inner-product metric).

    Build cost and search cost grow with log n (IVF's with √n), but on 1M clustered cells it
    built 3× slower than IVF and needed more time per query for the same recall; offered as
    ``backend="hnsw"``.

    Parameters
    ----------
    dim
        Vector dimension.
    M, ef_construction, ef_search
        Graph degree, build beam width, default search beam width (see :data:`HNSW_DEFAULTS`).
    """

    kind = "hnsw"

    def __init__(
        self,
        dim: int,
        *,
        M: int = HNSW_DEFAULTS["M"],
        ef_construction: int = HNSW_DEFAULTS["ef_construction"],
        ef_search: int = HNSW_DEFAULTS["ef_search"],
        _index: Any = None,
    ) -> None:
        faiss = _import_faiss()
        for name, value in (
            ("M", M),
            ("ef_construction", ef_construction),
            ("ef_search", ef_search),
        ):
            positive_int(value, name)
        if _index is None:
            _index = faiss.IndexHNSWSQ(
                int(dim), faiss.ScalarQuantizer.QT_fp16, int(M), faiss.METRIC_INNER_PRODUCT
            )
            _index.hnsw.efConstruction = int(ef_construction)
        self._index = _index
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)

    def params(self) -> dict[str, int]:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def _search_params(self, k: int) -> Any:
        return _import_faiss().SearchParametersHNSW(efSearch=max(self.ef_search, k))

    @classmethod
    def read(cls, read: Callable[[int], bytes], params: dict[str, int]) -> HnswIndex:
        """Rebuild from faiss's serialisation, pulled through ``read(n_bytes)``."""
        index = cls._read(read, _import_faiss().IndexHNSWSQ)
        return cls(
            int(index.d),
            M=int(params["M"]),
            ef_construction=int(params["ef_construction"]),
            ef_search=int(params["ef_search"]),
            _index=index,
        )
