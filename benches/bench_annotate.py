"""Annotation benchmarks: label transfer on real PBMCs, and reference indexes at atlas scale.

Modes (``--mode``):

- ``pbmc``: scanpy's pbmc68k_reduced split 50/50 (stratified, seed 2023) into reference and
  query; GenePT-w and GenePT-s from the offline local model with gene symbols as text (as the
  demo does), their ensemble, and the dataset's PCA; kNN (distance-weighted k = 15 and the
  paper's unweighted k = 10) and logistic regression; accuracy and macro-F1 on the query, and
  approximate (HNSW) vs exact kNN agreement.
- ``scale``: synthetic clustered embeddings (``--cells`` reference cells, ``--dim``), generated
  chunk by chunk so the data never sits in memory as float32: ``build_reference`` time, index
  size on disk, peak RSS, load time, query throughput for ``--queries`` cells, recall@k against
  exact search on ``--recall-sample`` queries.
- ``libraries``: the ANN libraries side by side on the same synthetic data (faiss-cpu HNSW and
  IVF with float16 storage, hnswlib and pynndescent when installed): build time, recall@15,
  query throughput, size, with wall and CPU seconds; ``--ef-search`` / ``--nprobe`` sweep.
- ``threshold``: exact search vs the IVF index by reference size (where exact stops being
  cheaper).

Every run prints ``uptime`` first (the machine's load). Examples::

    python benches/bench_annotate.py --mode pbmc
    python benches/bench_annotate.py --mode scale --cells 1000000 --dim 384
    python benches/bench_annotate.py --mode libraries --cells 100000 --dim 384
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def cpu_s() -> float:
    """CPU seconds used by this process so far (all threads): the load-independent cost."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Synthetic:
    """Clustered, L2-normalised cell embeddings, reproducible chunk by chunk.

    ``n_types`` cell types with Zipf-like frequencies; a cell is a shared offset (every cell
    looks alike, as GenePT embeddings do: mean cosine ≈ 0.5), its type's centre, a point on a
    ``rank``-dimensional subspace of its type (within-type structure), and isotropic noise.
    Rows ``a:b`` are the same whatever the chunking: each block of ``BLOCK`` rows has its own seed.
    """

    BLOCK = 10_000

    def __init__(self, dim: int, *, n_types: int = 200, rank: int = 16, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.n_types, self.rank, self.seed = dim, n_types, rank, seed
        self.common = rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
        self.centres = rng.standard_normal((n_types, dim)).astype(np.float32) / np.sqrt(dim)
        self.bases = rng.standard_normal((n_types, rank, dim)).astype(np.float32) / np.sqrt(dim)
        p = 1.0 / (np.arange(n_types) + 5.0)
        self.p = p / p.sum()

    def _types(self, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(self.n_types, size=self.BLOCK, p=self.p)

    def _block(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, i])
        n, dim = self.BLOCK, self.dim
        t = self._types(rng)
        z = rng.standard_normal((n, self.rank), dtype=np.float32) * 0.35
        x = 1.3 * self.common + self.centres[t]
        for j in np.unique(t):  # within-type structure: a point on the type's subspace
            rows = np.flatnonzero(t == j)
            x[rows] += z[rows] @ self.bases[j]
        x += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.25 / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, t

    def _span(self, a: int, b: int) -> Iterator[tuple[int, slice]]:
        for i in range(a // self.BLOCK, (b - 1) // self.BLOCK + 1):
            lo, hi = max(a - i * self.BLOCK, 0), min(b - i * self.BLOCK, self.BLOCK)
            yield i, slice(lo, hi)

    def rows(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (float32, unit rows) and cell types of rows ``a:b``."""
        parts = [(x[s], t[s]) for i, s in self._span(a, b) for x, t in [self._block(i)]]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def types(self, a: int, b: int) -> np.ndarray:
        """Cell types of rows ``a:b`` alone (the same draws as :meth:`rows`, no vectors)."""
        return np.concatenate(
            [self._types(np.random.default_rng([self.seed, i]))[s] for i, s in self._span(a, b)]
        )


def exact_topk(syn: Synthetic, n_ref: int, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k reference rows of ``queries``, regenerating the reference block by block."""
    from genept_fast.annotate import exact_search

    return exact_search(queries, lambda a, b: syn.rows(a, b)[0], k, n_reference=n_ref)[1]


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a, e)) for a, e in zip(approx, exact, strict=True))
    return hits / exact.size


# -- libraries -----------------------------------------------------------------------------------


class _LibraryBench:
    """Each library on the same data: build once per graph setting, sweep the search setting."""

    def __init__(self, args: argparse.Namespace) -> None:
        from genept_fast.annotate import exact_search

        syn = Synthetic(args.dim)
        self.args, self.n, self.k = args, args.cells, 15
        self.X, _ = syn.rows(0, self.n)
        self.Q, _ = syn.rows(self.n, self.n + args.queries)
        self.sample = self.Q[: args.recall_sample]
        self.truth = exact_search(self.sample, self.X, self.k)[1]
        self.out: dict[str, Any] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_ann_", dir=args.tmp))

    def report(self, name: str, build: tuple[float, float], query_fn: Any, size: int) -> None:
        Q = self.Q
        t, c = time.perf_counter(), cpu_s()
        idx = query_fn(Q)
        wall, cpu = time.perf_counter() - t, cpu_s() - c
        r = recall(idx[: len(self.sample)], self.truth)
        self.out[name] = {
            "build_s": build[0],
            "build_cpu_s": build[1],
            "recall@15": r,
            "queries_per_s": len(Q) / wall,
            "queries_per_cpu_s": len(Q) / cpu,
            "size_mb": size / 1e6,
        }
        print(
            f"{name:44s} build {build[0]:7.1f} s ({build[1]:6.0f} CPU s)  recall@15 {r:.4f}  "
            f"{len(Q) / wall:8,.0f} q/s ({len(Q) / cpu:8,.0f} per CPU s)  {size / 1e6:7.1f} MB",
            flush=True,
        )

    @staticmethod
    def timed(fn: Any) -> tuple[float, float]:
        t, c = time.perf_counter(), cpu_s()
        fn()
        return time.perf_counter() - t, cpu_s() - c

    def faiss_hnsw(self) -> None:
        import faiss

        args, tmp = self.args, self.tmp
        for M in args.hnsw_m:
            ix = faiss.IndexHNSWSQ(
                args.dim, faiss.ScalarQuantizer.QT_fp16, M, faiss.METRIC_INNER_PRODUCT
            )
            ix.hnsw.efConstruction = args.ef_construction
            b = self.timed(lambda ix=ix: ix.add(self.X))
            faiss.write_index(ix, str(tmp / "f.index"))
            for efs in args.ef_search:
                sp = faiss.SearchParametersHNSW(efSearch=efs)
                self.report(
                    f"faiss {faiss.__version__} HNSWSQfp16 M={M} efC={args.ef_construction} "
                    f"efS={efs}",
                    b,
                    lambda q, ix=ix, sp=sp: ix.search(q, self.k, params=sp)[1],
                    (tmp / "f.index").stat().st_size,
                )
            del ix

    def faiss_ivf(self) -> None:
        import faiss

        args, n, tmp = self.args, self.n, self.tmp
        nlist = int(4 * np.sqrt(n))
        quant = faiss.IndexFlatIP(args.dim)
        ivf = faiss.IndexIVFScalarQuantizer(
            quant, args.dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        b = self.timed(lambda: (ivf.train(self.X[: min(n, 50 * nlist)]), ivf.add(self.X)))
        faiss.write_index(ivf, str(tmp / "ivf.index"))
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            self.report(
                f"faiss IVF{nlist},SQfp16 nprobe={nprobe}",
                b,
                lambda q: ivf.search(q, self.k)[1],
                (tmp / "ivf.index").stat().st_size,
            )

    def hnswlib(self) -> None:
        try:
            import hnswlib
        except ImportError:
            print("hnswlib not installed; skipped")
            return
        h = hnswlib.Index(space="ip", dim=self.args.dim)
        h.init_index(max_elements=self.n, M=16, ef_construction=100)
        h.set_num_threads(self.args.threads)
        b = self.timed(lambda: h.add_items(self.X))
        h.save_index(str(self.tmp / "h.bin"))
        h.set_ef(96)
        self.report(
            "hnswlib 0.8.0 M=16 efC=100 ef=96 (float32)",
            b,
            lambda q: h.knn_query(q, k=self.k)[0],
            (self.tmp / "h.bin").stat().st_size,
        )

    def pynndescent(self) -> None:
        import pickle

        import pynndescent

        holder: dict[str, Any] = {}

        def build() -> None:
            holder["nnd"] = pynndescent.NNDescent(
                self.X, metric="dot", n_neighbors=30, n_jobs=self.args.threads, random_state=0
            )
            holder["nnd"].prepare()

        b = self.timed(build)
        nnd = holder["nnd"]
        nnd.query(self.Q[:10], k=self.k)  # JIT compile of the query, not timed
        with (self.tmp / "p.pkl").open("wb") as f:
            pickle.dump(nnd, f)
        self.report(
            f"pynndescent {pynndescent.__version__} n_neighbors=30 (float32, pickle)",
            b,
            lambda q: nnd.query(q, k=self.k)[0],
            (self.tmp / "p.pkl").stat().st_size,
        )

    def close(self) -> None:
        for f in self.tmp.iterdir():
            f.unlink()
        self.tmp.rmdir()


def bench_libraries(args: argparse.Namespace) -> dict[str, Any]:
    """Each library on the same data; build once per graph setting, sweep the search setting."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    bench = _LibraryBench(args)
    runs = {
        "faiss-hnsw": bench.faiss_hnsw,
        "faiss-ivf": bench.faiss_ivf,
        "hnswlib": bench.hnswlib,
        "pynndescent": bench.pynndescent,
    }
    try:
        for name, run in runs.items():
            if name in set(args.libraries):
                run()
    finally:
        bench.close()
    return bench.out


class SyntheticSource:
    """:class:`Synthetic` rows seen through the embedding-source protocol of build_reference."""

    def __init__(self, syn: Synthetic, start: int, n: int, key: str = "X_emb") -> None:
        self.syn, self.start, self.n_cells = syn, start, n
        self.keys, self.dims, self.params, self.where = [key], [syn.dim], {key: {}}, "synthetic: "
        self.read_s = self.read_cpu_s = 0.0

    def read(self, a: int, b: int) -> list[np.ndarray]:
        t, c = time.perf_counter(), cpu_s()
        x = self.syn.rows(self.start + a, self.start + b)[0]
        self.read_s += time.perf_counter() - t
        self.read_cpu_s += cpu_s() - c
        return [x]

    def obs_names(self) -> list[str]:
        return [f"c{i}" for i in range(self.start, self.start + self.n_cells)]

    def obs_column(self, name: str) -> np.ndarray:
        types = self.syn.types(self.start, self.start + self.n_cells)
        return np.array([f"type{t:03d}" for t in types], dtype=object)

    def close(self) -> None:
        pass


def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    from genept_fast.annotate import ReferenceIndex, build_reference, predict

    syn = Synthetic(args.dim)
    n, k = args.cells, args.k
    out: dict[str, Any] = {"cells": n, "dim": args.dim}
    tmp = Path(tempfile.mkdtemp(prefix="bench_ref_", dir=args.tmp))
    path = tmp / "ref.index"
    src = SyntheticSource(syn, 0, n)
    t, c = time.perf_counter(), cpu_s()
    index = build_reference(
        src, label_key="label", obsm_key="X_emb", backend=args.backend, n_threads=args.threads
    )
    total = time.perf_counter() - t
    out["build_cpu_s"] = cpu_s() - c - src.read_cpu_s
    out["build_s"] = total - src.read_s
    out["generate_s"] = src.read_s  # (not counted in build_s; the labels are, ~1 s)
    out["backend"] = index.backend
    out["backend_params"] = index.params()
    t = time.perf_counter()
    index.save(path)
    out["save_s"] = time.perf_counter() - t
    out["index_mb"] = path.stat().st_size / 1e6
    out["peak_rss_build_mb"] = peak_rss_mb()
    out["uptime_after_build"] = uptime()
    print(
        f"built {index} in {out['build_s']:.1f} s ({out['build_cpu_s']:.0f} CPU s; "
        f"+{out['generate_s']:.1f} s generating), "
        f"saved in {out['save_s']:.1f} s: {out['index_mb']:.0f} MB; "
        f"peak RSS {out['peak_rss_build_mb']:.0f} MB; {out['uptime_after_build']}",
        flush=True,
    )
    del index, src
    t = time.perf_counter()
    index = ReferenceIndex.load(path)
    out["load_s"] = time.perf_counter() - t
    Q, _ = syn.rows(n, n + args.queries)

    class Queries:
        keys, dims, params, where, n_cells = ["X_emb"], [args.dim], {"X_emb": {}}, "", len(Q)

        def read(self, a: int, b: int) -> list[np.ndarray]:
            return [Q[a:b]]

    t, c = time.perf_counter(), cpu_s()
    pred = predict(index, Queries(), k=k, n_threads=args.threads)  # type: ignore[arg-type]
    q_s = time.perf_counter() - t
    out["query_cpu_s"] = cpu_s() - c
    out["query_cells_per_s"] = len(Q) / q_s
    out["queries"] = len(Q)
    out["mean_confidence"] = float(pred.confidence.mean())
    sample = Q[: args.recall_sample]
    approx = index.search(sample, k, n_threads=args.threads)[1]
    t = time.perf_counter()
    truth = exact_topk(syn, n, sample, k)
    out["exact_search_s_sample"] = time.perf_counter() - t
    out[f"recall@{k}"] = recall(approx, truth)
    out["peak_rss_mb"] = peak_rss_mb()
    print(
        f"loaded in {out['load_s']:.1f} s; {len(Q):,} queries (k = {k}, vote included) at "
        f"{out['query_cells_per_s']:,.0f} cells/s ({out['query_cpu_s']:.0f} CPU s); "
        f"recall@{k} {out[f'recall@{k}']:.4f} on "
        f"{len(sample)} queries; peak RSS {out['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    path.unlink()
    tmp.rmdir()
    return out


def bench_threshold(args: argparse.Namespace) -> dict[str, Any]:
    """Exact search vs the IVF index that ``backend="auto"`` would build, by reference size."""
    from genept_fast.annotate import IvfIndex, exact_search, ivf_nlist
    from genept_fast.annotate._index import TRAIN_PER_LIST
    from genept_fast.annotate._search import threads

    syn = Synthetic(args.dim)
    k = args.k
    out: dict[str, Any] = {}
    Q, _ = syn.rows(2_000_000, 2_000_000 + min(args.queries, 10_000))
    for n in (2_000, 5_000, 10_000, 25_000, 50_000, 100_000):
        if n > args.cells:
            break
        X, _ = syn.rows(0, n)
        with threads(args.threads):
            t, c = time.perf_counter(), cpu_s()
            exact_search(Q, X.astype(np.float16), k, n_threads=args.threads)
            ex, ex_cpu = len(Q) / (time.perf_counter() - t), len(Q) / (cpu_s() - c)
            t, c = time.perf_counter(), cpu_s()
            ivf = IvfIndex(args.dim, nlist=ivf_nlist(n))
            ivf.train(X[: TRAIN_PER_LIST * ivf.nlist])
            ivf.add(X)
            b, b_cpu = time.perf_counter() - t, cpu_s() - c
            t, c = time.perf_counter(), cpu_s()
            ivf.search(Q, k)
            iq, iq_cpu = len(Q) / (time.perf_counter() - t), len(Q) / (cpu_s() - c)
        out[str(n)] = {
            "exact_q_per_s": ex,
            "exact_q_per_cpu_s": ex_cpu,
            "ivf_build_s": b,
            "ivf_build_cpu_s": b_cpu,
            "ivf_q_per_s": iq,
            "ivf_q_per_cpu_s": iq_cpu,
        }
        print(
            f"n = {n:>7,}: exact {ex:8,.0f} q/s ({ex_cpu:7,.0f} per CPU s) | IVF build "
            f"{b:5.1f} s ({b_cpu:5.1f} CPU s), {iq:8,.0f} q/s ({iq_cpu:7,.0f} per CPU s); "
            f"{uptime()}",
            flush=True,
        )
    return out


def bench_pbmc(args: argparse.Namespace) -> dict[str, Any]:
    import scanpy as sc
    from sklearn.model_selection import train_test_split

    from genept_fast import tl
    from genept_fast.embed import get_embedder
    from genept_fast.eval import evaluate_transfer
    from genept_fast.genes import gene_texts
    from genept_fast.table import GeneEmbeddings

    adata = sc.datasets.pbmc68k_reduced()
    genes = [str(g) for g in adata.raw.var_names]
    emb = get_embedder("local")
    t = time.perf_counter()
    table = GeneEmbeddings.from_texts(gene_texts(genes, source="symbol"), emb)
    tl.genept_w(adata, table)
    tl.genept_s(adata, emb)
    print(f"GenePT-w and -s (local model, symbols as text) in {time.perf_counter() - t:.0f} s")
    idx = np.arange(adata.n_obs)
    ref_i, q_i = train_test_split(
        idx, test_size=0.5, stratify=adata.obs["bulk_labels"], random_state=2023
    )
    ref, query = adata[np.sort(ref_i)].copy(), adata[np.sort(q_i)].copy()
    entries: list[Any] = ["X_genept_w", "X_genept_s", ["X_genept_w", "X_genept_s"], "X_pca"]
    out: dict[str, Any] = {"n_reference": ref.n_obs, "n_query": query.n_obs}
    runs = {
        "kNN k=15 distance-weighted": {
            "methods": ["knn", "logreg"],
            "k": 15,
            "weights": "distance",
        },
        "kNN k=10 uniform (paper)": {"methods": ["knn"], "k": 10, "weights": "uniform"},
        "kNN k=15 distance, HNSW": {
            "methods": ["knn"],
            "k": 15,
            "weights": "distance",
            "backend": "hnsw",
        },
    }
    for name, kw in runs.items():
        rep = evaluate_transfer(query, ref, label_key="bulk_labels", obsm_keys=entries, **kw)
        out[name] = rep.results
        print(f"\n{name}")
        for e, per in rep.results.items():
            for m, r in per.items():
                extra = (
                    f"  ANN vs exact agreement {r['exact_agreement']:.3f}"
                    if "exact_agreement" in r
                    else ""
                )
                print(
                    f"  {e:24s} {m:7s} accuracy {r['accuracy']:.3f}  macro-F1 "
                    f"{r['macro_f1']:.3f}{extra}"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mode", choices=["pbmc", "scale", "libraries", "threshold"], default="pbmc")
    p.add_argument(
        "--cells", type=int, default=1_000_000, help="reference cells (scale, libraries)"
    )
    p.add_argument("--dim", type=int, default=384, help="embedding dimension")
    p.add_argument("--queries", type=int, default=100_000, help="query cells timed")
    p.add_argument("--recall-sample", type=int, default=1000, help="queries checked against exact")
    p.add_argument("--k", type=int, default=15, help="neighbours")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="auto", help="scale: reference backend (auto/exact/hnsw)")
    p.add_argument("--tmp", default=None, help="scale: folder for the index file")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument(
        "--libraries",
        nargs="+",
        default=["faiss-hnsw", "faiss-ivf", "hnswlib", "pynndescent"],
        help="libraries mode: which to run",
    )
    p.add_argument("--hnsw-m", nargs="+", type=int, default=[32, 16], help="libraries: HNSW M")
    p.add_argument("--ef-construction", type=int, default=80, help="libraries: HNSW efC")
    p.add_argument("--ef-search", nargs="+", type=int, default=[96], help="libraries: efSearch")
    p.add_argument("--nprobe", nargs="+", type=int, default=[16, 32], help="libraries: IVF nprobe")
    args = p.parse_args(argv)
    start = uptime()
    print(f"uptime: {start}", flush=True)
    t0 = time.perf_counter()
    modes = {
        "libraries": bench_libraries,
        "scale": bench_scale,
        "threshold": bench_threshold,
        "pbmc": bench_pbmc,
    }
    result = modes[args.mode](args)
    result = {
        "mode": args.mode,
        "args": {k: str(v) for k, v in vars(args).items()},
        "uptime_start": start,
        "uptime_end": uptime(),
        **result,
    }
    total = time.perf_counter() - t0
    print(f"uptime: {uptime()}  total {total:.0f} s, peak RSS {peak_rss_mb():.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
