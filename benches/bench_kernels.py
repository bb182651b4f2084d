"""Kernel benchmark: genept-fast against the plain scipy/numpy reference, in one run.

Prints cells/s for ``weighted_embedding`` (GenePT-w) and ``top_genes`` (GenePT-s ranking), the
ratio to scipy ``X @ E`` + numpy row normalisation and to a numpy per-row argpartition +
lexsort top-N, the achieved GFLOP/s (2 · nnz · D) against this machine's measured float32 GEMM
peak, and whether the results agree with the reference (max abs difference / exact match).

The reference paths are slow (~600 cells/s), so they run on the first ``--ref-cells`` cells of
the same matrix and are reported per cell. Data is synthetic and atlas-like (see synthetic.py).

    python benches/bench_kernels.py                      # 20k cells, 30k genes, D = 1536 and 3072
    python benches/bench_kernels.py --cells 5000 --dims 1536 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import genept_fast as gf
import synthetic
from genept_fast import _core


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def gemm_peak(threads: int) -> float:
    """Measured float32 GEMM GFLOP/s of numpy's BLAS on this machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        threadpool_limits = None
    n = 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ctx = threadpool_limits(threads) if threadpool_limits else None
    try:
        a @ b
        t, _ = best_time(lambda: a @ b, 5)
    finally:
        if ctx is not None:
            ctx.unregister()
    return 2 * n**3 / t / 1e9


def reference_weighted(X, E):
    out = np.asarray(X @ E)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def reference_top(X, n: int) -> np.ndarray:
    out = np.full((X.shape[0], n), -1, dtype=np.int32)
    for r in range(X.shape[0]):
        a, b = X.indptr[r], X.indptr[r + 1]
        genes, vals = X.indices[a:b], X.data[a:b]
        pos = vals > 0
        genes, vals = genes[pos], vals[pos]
        if len(vals) > n:
            keep = np.argpartition(-vals, n - 1)[:n]
            # argpartition may cut through a tie: take every gene tied with the n-th value.
            cut = -np.partition(-vals, n - 1)[n - 1]
            keep = np.flatnonzero(vals >= cut)
            genes, vals = genes[keep], vals[keep]
        order = np.lexsort((genes, -vals))[:n]
        out[r, : len(order)] = genes[order]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--genes", type=int, default=30_000)
    ap.add_argument("--nnz", type=int, default=2_000, help="nonzeros per cell (mean)")
    ap.add_argument("--dims", type=int, nargs="+", default=[1536, 3072])
    ap.add_argument("--top-n", type=int, default=1000)
    ap.add_argument("--ref-cells", type=int, default=2_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    threads = _core.resolved_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"kernel threads: {threads}; SIMD: {_core.simd_level()}"
    )
    t = time.perf_counter()
    X = synthetic.make_csr(args.cells, args.genes, args.nnz, seed=0)
    nnz_cell = X.nnz / max(X.shape[0], 1)
    print(
        f"data: {X.shape[0]:,} cells × {X.shape[1]:,} genes, {nnz_cell:.0f} nonzeros/cell "
        f"(generated in {time.perf_counter() - t:.1f} s)"
    )
    Xref = X[: args.ref_cells]
    peak = gemm_peak(threads)
    print(f"float32 GEMM peak (numpy BLAS, {threads} threads): {peak:.0f} GFLOP/s\n")

    rows = []
    for d in args.dims:
        E = synthetic.make_embeddings(args.genes, d)
        tk, out = best_time(
            lambda E=E: gf.weighted_embedding(X, E, n_threads=args.threads), args.repeat
        )
        tr, ref = best_time(lambda E=E: reference_weighted(Xref, E), 1)
        err = float(np.abs(out[: args.ref_cells] - ref).max())
        cps, cps_ref = X.shape[0] / tk, Xref.shape[0] / tr
        gflops = 2 * X.nnz * d / tk / 1e9
        rows.append((f"weighted_embedding D={d}", cps, cps_ref, gflops, f"max |Δ| = {err:.1e}"))
        print(
            f"  weighted_embedding D={d}: {cps:,.0f} cells/s vs scipy {cps_ref:,.0f} "
            f"({cps / cps_ref:.1f}×), {gflops:.0f} GFLOP/s = "
            f"{100 * gflops / peak:.0f}% of GEMM peak"
        )

    n = args.top_n
    tk, top = best_time(lambda: gf.top_genes(X, n, n_threads=args.threads), args.repeat)
    tr, ref = best_time(lambda: reference_top(Xref, n), 1)
    same = bool(np.array_equal(top[: args.ref_cells], ref))
    rows.append(
        (
            f"top_genes n={n}",
            X.shape[0] / tk,
            Xref.shape[0] / tr,
            None,
            "identical" if same else "DIFFERENT",
        )
    )
    print(f"  top_genes n={n}: {X.shape[0] / tk:,.0f} cells/s vs numpy {Xref.shape[0] / tr:,.0f}")

    names = [f"GENE{j}" for j in range(args.genes)]
    ts, _ = best_time(lambda: gf.cell_sentences(X, names, n, n_threads=args.threads), 1)
    rows.append((f"cell_sentences n={n}", X.shape[0] / ts, None, None, ""))

    print(
        "\n| kernel | genept-fast cells/s | reference cells/s | speed-up "
        "| GFLOP/s (% of GEMM peak) | agreement |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for name, cps, ref_cps, gfl, note in rows:
        ref_s = f"{ref_cps:,.0f}" if ref_cps else "–"
        speed = f"{cps / ref_cps:.1f}×" if ref_cps else "–"
        gfl_s = f"{gfl:.0f} ({100 * gfl / peak:.0f}%)" if gfl else "–"
        print(f"| {name} | {cps:,.0f} | {ref_s} | {speed} | {gfl_s} | {note} |")


if __name__ == "__main__":
    main()
