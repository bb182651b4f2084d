"""Atlas-scale benchmark: streamed GenePT-w (genept_fast.stream) vs in-memory paths.

    python benches/bench_stream.py --cells 20000              # quick check (a few seconds)
    python benches/bench_stream.py --cells 1000000            # the issue's benchmark (~16 GB input)

Generates ``benches/data/atlas_*.h5ad`` with ``make_atlas.py`` if missing (streamed, with
progress), then runs each path in its own subprocess and reads that child's peak RSS with
``os.wait4``:

- ``stream``: :func:`genept_fast.stream.encode_weighted` to a ``.npy`` (end to end: open, read,
  encode, write, finalise);
- ``cli``: ``genept-fast encode --method w --genes E.parquet`` to a ``.npy``, what a user runs
  (start-up, the parquet table read and matched by name, then the same stream);
- ``in-memory kernel``: ``anndata.read_h5ad`` + :func:`genept_fast.weighted_embedding`, timed
  separately (read, kernel). When the whole matrix would not fit in memory, the kernel runs on
  the first cells that do (its throughput per cell does not depend on N);
- ``naive``: ``anndata.read_h5ad`` + scipy ``X @ E`` + row normalisation (only up to
  ``--naive-max`` cells).

Correctness sits next to the timing: the first rows of the streamed output must equal the
in-memory kernel's bitwise. Results print as a table and are saved as JSON in ``benches/out/``.
Goals (issue 5): stream peak RSS < 1 GiB at D = 1536 and flat in N; stream throughput ≥ 80% of
the in-memory kernel's.

``--raw`` also writes the same cells as raw counts (``make_atlas.py --values counts``) and times
``genept-fast encode`` end to end (a subprocess each: start-up, read, encode, write) on both
files, interleaved, ``--raw-repeat`` rounds; it prints the raw-count run's speed as a share of
the log-normalised one's (goal, issue 13: at least 97%) and checks that the two outputs agree
to float32 rounding.

    python benches/bench_stream.py --cells 100000 --raw      # issue 13's raw-count measurement
    python benches/bench_stream.py --cells 50000 --raw-only --raw-repeat 5   # only that
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_atlas  # noqa: E402
import synthetic  # noqa: E402
from _child import run_measured  # noqa: E402

OUT = HERE / "out"
CHECK_ROWS = 2_000


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _table_path(genes: int, dim: int) -> Path:
    p = HERE / "data" / f"E_{genes}x{dim}.npy"
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}.npy")
        np.save(tmp, synthetic.make_embeddings(genes, dim))
        tmp.replace(p)
    return p


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers (run in a subprocess each) -------------------------------------------------------


def worker_stream(a: argparse.Namespace) -> dict:
    from genept_fast import stream

    E = np.load(a.table)
    base = _peak_rss_mib()
    out = Path(a.output)
    t0 = time.perf_counter()
    rep = stream.encode_weighted(
        a.input, out, E, chunk_size=a.chunk, n_threads=a.threads, progress=True, resume=False
    )
    dt = time.perf_counter() - t0
    return {"seconds": dt, "cells": rep.n_cells, "rss_before_mib": base}


def worker_inmemory(a: argparse.Namespace) -> dict:
    import anndata as ad
    import h5py
    import scipy.sparse as sp

    import genept_fast as gf

    E = np.load(a.table)
    base = _peak_rss_mib()
    t0 = time.perf_counter()
    if a.subset:
        with h5py.File(a.input, "r") as f:
            g = f["X"]
            n = a.subset
            indptr = g["indptr"][: n + 1]
            X = sp.csr_array(
                (g["data"][: indptr[-1]], g["indices"][: indptr[-1]], indptr),
                shape=(n, int(g.attrs["shape"][1])),
            )
    else:
        X = ad.read_h5ad(a.input).X
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    emb = gf.weighted_embedding(X, E, n_threads=a.threads)
    t_kernel = time.perf_counter() - t1
    np.save(a.output, emb[:CHECK_ROWS])
    return {"seconds": t_read + t_kernel, "read_s": t_read, "kernel_s": t_kernel,
            "cells": int(X.shape[0]), "rss_before_mib": base}  # fmt: skip


def worker_naive(a: argparse.Namespace) -> dict:
    import anndata as ad

    E = np.load(a.table)
    base = _peak_rss_mib()
    t0 = time.perf_counter()
    X = ad.read_h5ad(a.input).X
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    emb = np.asarray(X @ E, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    np.divide(emb, norms, out=emb, where=norms > 0)
    t_kernel = time.perf_counter() - t1
    return {"seconds": t_read + t_kernel, "read_s": t_read, "kernel_s": t_kernel,
            "cells": int(X.shape[0]), "rss_before_mib": base}  # fmt: skip


WORKERS = {"stream": worker_stream, "inmemory": worker_inmemory, "naive": worker_naive}


def _gene_table(genes: int, dim: int) -> Path:
    """The benchmark table as a gene-embedding parquet for ``genept-fast encode --genes``."""
    from genept_fast.table import GeneEmbeddings

    p = HERE / "data" / f"E_{genes}x{dim}.parquet"
    if not p.exists():
        E = np.load(_table_path(genes, dim))
        GeneEmbeddings([f"gene_{j}" for j in range(genes)], E, {"model_id": "bench"}).write(p)
    return p


def _atlas(a: argparse.Namespace, values: str) -> Path:
    path = make_atlas.default_path(a.cells, a.genes, a.nnz, values=values)
    if not path.exists():
        print(f"generating {path} ...", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, str(HERE / "make_atlas.py"), "--cells", str(a.cells),
             "--genes", str(a.genes), "--nnz", str(a.nnz), "--values", values,
             "--out", str(path)],
            check=True,
        )  # fmt: skip
    return path


def bench_raw_counts(a: argparse.Namespace) -> dict:
    """``genept-fast encode`` on raw counts vs the same cells log-normalised, interleaved."""
    exe = Path(sys.executable).with_name("genept-fast")
    table = _gene_table(a.genes, a.dim)
    files = {"log-normalised": _atlas(a, "log1p"), "raw counts": _atlas(a, "counts")}
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in files}
    outs = {k: OUT / f"encode_{k.replace(' ', '_')}.npy" for k in files}
    for _ in range(a.raw_repeat):
        for name, path in files.items():
            outs[name].unlink(missing_ok=True)
            cmd = [str(exe), "encode", str(path), "--method", "w", "--genes", str(table),
                   "-o", str(outs[name]), "--no-progress", "--no-resume",
                   "--chunk-size", str(a.chunk)]  # fmt: skip
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
            total = time.perf_counter() - t0
            # The command's own report: "... cells encoded from X in 12.3 s ..."
            found = re.search(r"encoded from .* in ([0-9.]+) s", proc.stderr)
            encode_s = float(found.group(1)) if found else float("nan")
            runs[name].append((encode_s, total, os.getloadavg()[0]))
            print(
                f"  encode {name}: {encode_s:.1f} s reading, encoding and writing "
                f"({total:.1f} s with start-up and table loading; load {runs[name][-1][2]:.1f})"
            )
    lognorm = np.load(outs["log-normalised"], mmap_mode="r")[:CHECK_ROWS]
    raw = np.load(outs["raw counts"], mmap_mode="r")[:CHECK_ROWS]
    err = float(np.abs(np.asarray(lognorm) - np.asarray(raw)).max())
    best = {k: min(r[0] for r in v) for k, v in runs.items()}
    best_total = {k: min(r[1] for r in v) for k, v in runs.items()}
    med = {k: float(np.median([r[0] for r in v])) for k, v in runs.items()}
    tot = {k: sum(r[0] for r in v) for k, v in runs.items()}
    med_ratio = med["log-normalised"] / med["raw counts"]
    tot_ratio = tot["log-normalised"] / tot["raw counts"]
    pairs = zip(runs["log-normalised"], runs["raw counts"], strict=True)
    ratios = [ln[0] / rc[0] for ln, rc in pairs]
    for o in outs.values():
        o.unlink(missing_ok=True)
    print(
        f"\ngenept-fast encode, {a.cells:,} cells, D = {a.dim}: log-normalised "
        f"{a.cells / best['log-normalised']:,.0f} cells/s, raw counts "
        f"{a.cells / best['raw counts']:,.0f} cells/s: raw at "
        f"{best['log-normalised'] / best['raw counts']:.0%} of the log-normalised speed "
        f"(best of {a.raw_repeat}; rounds {min(ratios):.0%}-{max(ratios):.0%}, median "
        f"{float(np.median(ratios)):.0%}; median times {med_ratio:.0%}, total times "
        f"{tot_ratio:.0%}; with start-up "
        f"{best_total['log-normalised'] / best_total['raw counts']:.0%}); outputs agree to "
        f"{err:.1e} on the first {lognorm.shape[0]:,} cells"
    )
    return {"best_s": best, "runs": runs, "ratio": best["log-normalised"] / best["raw counts"],
            "median_round_ratio": float(np.median(ratios)), "median_time_ratio": med_ratio,
            "total_time_ratio": tot_ratio, "max_abs_diff": err}  # fmt: skip


def run_cli(a: argparse.Namespace, output: Path) -> dict:
    """``genept-fast encode`` with the parquet table, timed and its peak RSS read."""
    exe = Path(sys.executable).with_name("genept-fast")
    output.unlink(missing_ok=True)
    cmd = [str(exe), "encode", str(a.input), "--method", "w", "--genes",
           str(_gene_table(a.genes, a.dim)), "-o", str(output), "--no-progress", "--no-resume",
           "--chunk-size", str(a.chunk)]  # fmt: skip
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    t0 = time.perf_counter()
    _, usage = run_measured(cmd, what="genept-fast encode", capture="stderr")
    output.unlink(missing_ok=True)
    return {"seconds": time.perf_counter() - t0, "cells": a.cells, "mode": "cli",
            "peak_rss_mib": usage.ru_maxrss / 1024}  # fmt: skip


def run_worker(mode: str, a: argparse.Namespace, **extra: object) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--input", str(a.input),
           "--table", str(a.table), "--chunk", str(a.chunk)]  # fmt: skip
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    stdout, usage = run_measured(cmd, what=f"{mode} worker")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    result["mode"] = mode
    return result


# -- driver -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=30_000)
    p.add_argument("--nnz", type=int, default=2_000)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--chunk", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    p.add_argument("--naive-max", type=int, default=50_000, help="largest N for the naive path")
    p.add_argument("--keep-output", action="store_true", help="keep the streamed .npy")
    p.add_argument("--raw", action="store_true", help="also: encode on raw counts vs lognorm")
    p.add_argument("--raw-repeat", type=int, default=2, help="rounds of the --raw comparison")
    p.add_argument("--raw-only", action="store_true", help="only the --raw comparison")
    # internal: worker mode
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--subset", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        print(json.dumps(WORKERS[a.worker](a)), flush=True)
        return 0

    a.input = _atlas(a, "log1p")
    a.table = _table_path(a.genes, a.dim)
    OUT.mkdir(parents=True, exist_ok=True)
    tag = f"{a.cells}x{a.genes}_nnz{a.nnz}_d{a.dim}_c{a.chunk}"
    if a.raw_only:
        summary = {
            "cells": a.cells,
            "dim": a.dim,
            "chunk": a.chunk,
            "raw_counts": bench_raw_counts(a),
        }
        (OUT / f"bench_stream_raw_{tag}.json").write_text(json.dumps(summary, indent=2))
        return 0
    stream_out = OUT / f"stream_{tag}.npy"
    check_out = OUT / f"inmemory_{tag}_head.npy"
    input_gb = a.input.stat().st_size / 1e9
    print(f"input {a.input.name}: {input_gb:.2f} GB; D = {a.dim}; chunk = {a.chunk}", flush=True)

    results = []
    results.append(run_worker("stream", a, output=stream_out))
    results.append(run_cli(a, OUT / f"cli_{tag}.npy"))

    # In-memory kernel: whole matrix if it fits (X + output + table, twice over), else a prefix.
    nnz_total = a.cells * a.nnz
    need = nnz_total * 8 + a.cells * a.dim * 4 * 2 + a.genes * a.dim * 4
    avail = int(_mem_available() * 0.6)
    subset = 0
    if need > avail:
        per_cell = a.nnz * 8 + a.dim * 4 * 2
        subset = max(a.chunk, min(a.cells, (avail - a.genes * a.dim * 4) // per_cell, 200_000))
    results.append(run_worker("inmemory", a, output=check_out, subset=subset))
    if subset:
        results[-1]["note"] = f"kernel on the first {subset:,} cells (whole matrix does not fit)"
    if a.cells <= a.naive_max:
        results.append(run_worker("naive", a))

    head = np.load(check_out)
    streamed = np.load(stream_out, mmap_mode="r")[: head.shape[0]]
    equal = bool(np.array_equal(streamed, head))
    if not a.keep_output:
        stream_out.unlink()
    check_out.unlink()

    mem = next(r for r in results if r["mode"] == "inmemory")
    kernel_rate = mem["cells"] / mem["kernel_s"]
    e2e_rate = mem["cells"] / mem["seconds"]
    print()
    print(f"{'path':<30} {'cells':>10} {'seconds':>9} {'cells/s':>10} {'peak RSS':>10} "
          f"{'vs kernel':>9}")  # fmt: skip
    for r in results:
        rate = r["cells"] / r["seconds"]
        r["cells_per_s"] = rate
        r["vs_inmemory_kernel"] = rate / kernel_rate
        label = {"stream": "stream (end to end)", "cli": "CLI encode (parquet table)",
                 "inmemory": "in-memory read+kernel",
                 "naive": "naive read + scipy X @ E"}[r["mode"]]  # fmt: skip
        print(f"{label:<30} {r['cells']:>10,} {r['seconds']:>9.2f} {rate:>10,.0f} "
              f"{r['peak_rss_mib']:>8,.0f} M {rate / kernel_rate:>8.0%}")  # fmt: skip
        if r["mode"] == "inmemory":
            print(f"{'  in-memory kernel only':<30} {r['cells']:>10,} {r['kernel_s']:>9.2f} "
                  f"{kernel_rate:>10,.0f} {'':>10} {1:>8.0%}")  # fmt: skip
        if r.get("note"):
            print(f"  ({r['note']})")
    print(f"\nstreamed output equals the in-memory kernel on the first {head.shape[0]:,} rows: "
          f"{equal}")  # fmt: skip
    summary = {
        "cells": a.cells, "genes": a.genes, "nnz_per_cell": a.nnz, "dim": a.dim,
        "chunk": a.chunk, "threads": a.threads, "input_gb": input_gb, "cpus": os.cpu_count(),
        "inmemory_kernel_cells_per_s": kernel_rate, "inmemory_e2e_cells_per_s": e2e_rate,
        "equal": equal, "results": results,
    }  # fmt: skip
    if a.raw:
        print()
        summary["raw_counts"] = bench_raw_counts(a)
    (OUT / f"bench_stream_{tag}.json").write_text(json.dumps(summary, indent=2))
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
