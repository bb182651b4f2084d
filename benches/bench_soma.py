"""GenePT-w streamed from a TileDB-SOMA experiment beside the same cells in an ``.h5ad`` (issue 23).

    python benches/bench_soma.py --cells 20000                 # quick check
    python benches/bench_soma.py --cells 150000                # the issue's benchmark

Generates, if missing, ``benches/data/atlas_*_counts.h5ad`` (``make_atlas.py``: raw counts, as
Census stores them) and ``benches/data/soma_*_census`` holding the same cells: obs (``obs_id``),
var (``var_id``) and ``ms["RNA"].X["raw"]`` laid out as Census lays out its X
(:data:`CENSUS_X_PLATFORM_CONFIG`), read from the ``.h5ad``'s CSR in blocks of 10,240 cells,
each written in the layout's global order (one fragment a block; 386-743 cells/s measured on
the 2-core machine under load, 150,000 cells in 6.5 minutes). Then encodes both with
:func:`genept_fast.stream.encode_weighted` to ``.npy`` (end to end: import, open, read,
normalise in the kernel, encode, write; the SOMA source with its default TileDB context), each
in its own subprocess, alternating ``--repeat`` rounds; each child reports its peak RSS
(``VmHWM``) and its CPU time (all threads). Prints cells/s, peak RSS, CPU seconds, the SOMA
path's throughput as a share of the ``.h5ad`` path's (goal: at least 80%; peak RSS under 1 GiB
at 150,000 cells) and its cells per CPU-second as a share (what a busy machine sees), and
checks that the two outputs are the same bits. JSON in ``benches/out/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


#: Census's X layout (cellxgene-census builder, ``build_soma/globals.py``,
#: ``CENSUS_DEFAULT_X_LAYERS_PLATFORM_CONFIG``, Census schema 2.4.0): space tiles of 2,048 x
#: 2,048, 65,536 cells per data tile, row-major tiles and cells, zstd 9 (byte-shuffled on
#: soma_dim_1 and soma_data), duplicates allowed. The benchmark's data is laid out as Census's is.
CENSUS_X_PLATFORM_CONFIG = {
    "tiledb": {
        "create": {
            "capacity": 2**16,
            "dims": {
                "soma_dim_0": {"tile": 2048, "filters": [{"_type": "ZstdFilter", "level": 9}]},
                "soma_dim_1": {
                    "tile": 2048,
                    "filters": ["ByteShuffleFilter", {"_type": "ZstdFilter", "level": 9}],
                },
            },
            "attrs": {
                "soma_data": {"filters": ["ByteShuffleFilter", {"_type": "ZstdFilter", "level": 9}]}
            },
            "cell_order": "row-major",
            "tile_order": "row-major",
            "allows_duplicates": True,
        }
    }
}
#: The space tile's extent on both dimensions (from the layout above).
TILE = 2048
#: Cells per write (a multiple of the tile's rows: one TileDB fragment each, ~20 M values).
WRITE_CELLS = 5 * TILE


def global_order(rows: np.ndarray, cols: np.ndarray, n_genes: int) -> np.ndarray:
    """The permutation that puts CSR-ordered ``(rows, cols)`` in the layout's global order (tiles
    row-major, cells row-major inside a tile): a stable sort by tile, which keeps the CSR order
    (row, then column) inside each tile. Written so, TileDB sorts nothing (its unordered write
    sorted 20 M values in ~60 s here; this permutation takes ~1 s)."""
    col_tiles = -(-n_genes // TILE)
    tile = (rows // TILE - rows[0] // TILE) * col_tiles + cols // TILE
    narrow = np.int16 if int(tile.max(initial=0)) < 2**15 else np.int64
    return np.argsort(tile.astype(narrow), kind="stable")  # a radix sort on int16


def write_soma(path: Path, h5ad: Path) -> Path:
    """The cells of ``h5ad`` (its CSR ``X``, read in row blocks) as a SOMA experiment laid out as
    Census is: obs (``obs_id``), var (``var_id``) and ``ms["RNA"].X["raw"]``
    (:data:`CENSUS_X_PLATFORM_CONFIG`), each block written in the layout's global order."""
    import h5py
    import pyarrow as pa
    import tiledbsoma as soma

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    with h5py.File(h5ad, "r") as f, soma.Experiment.create(str(tmp)) as exp:
        n_cells, n_genes = (int(s) for s in f["X"].attrs["shape"])
        indptr = f["X"]["indptr"][:]
        obs_schema = pa.schema([("soma_joinid", pa.int64()), ("obs_id", pa.large_string())])
        obs = exp.add_new_dataframe("obs", schema=obs_schema, domain=[[0, max(n_cells - 1, 0)]])
        for a in range(0, n_cells, 100_000):
            ids = np.arange(a, min(a + 100_000, n_cells), dtype=np.int64)
            obs.write(pa.table({"soma_joinid": ids, "obs_id": [f"cell_{i}" for i in ids]}))
        ms = exp.add_new_collection("ms")
        rna = ms.add_new_collection("RNA", soma.Measurement)
        var_schema = pa.schema([("soma_joinid", pa.int64()), ("var_id", pa.large_string())])
        var = rna.add_new_dataframe("var", schema=var_schema, domain=[[0, n_genes - 1]])
        genes = np.arange(n_genes, dtype=np.int64)
        var.write(pa.table({"soma_joinid": genes, "var_id": [f"gene_{j}" for j in genes]}))
        X = rna.add_new_collection("X").add_new_sparse_ndarray(
            "raw",
            type=pa.float32(),
            shape=(n_cells, n_genes),
            platform_config=CENSUS_X_PLATFORM_CONFIG,
        )
        in_order = {"tiledb": {"write": {"sort_coords": False}}}
        for a in range(0, n_cells, WRITE_CELLS):
            b = min(a + WRITE_CELLS, n_cells)
            lo, hi = int(indptr[a]), int(indptr[b])
            rows = np.repeat(np.arange(a, b, dtype=np.int64), np.diff(indptr[a : b + 1]))
            cols = f["X"]["indices"][lo:hi].astype(np.int64)
            order = global_order(rows, cols, n_genes)
            values = f["X"]["data"][lo:hi].astype(np.float32, copy=False)
            table = pa.table(
                {"soma_dim_0": rows[order], "soma_dim_1": cols[order], "soma_data": values[order]}
            )
            del rows, cols, values, order
            X.write(table, platform_config=in_order)
            del table
            rate = b / (time.perf_counter() - t0)
            print(f"  soma: {b:,}/{n_cells:,} cells, {rate:,.0f} cells/s", file=sys.stderr)
    tmp.replace(path)
    return path


def _vm_hwm_mib() -> float:
    """This process's peak resident memory since exec (``VmHWM``). Not ``ru_maxrss``: Linux
    carries the parent's peak across fork + exec into it, and the parent here generated the
    data (measured: both paths' children then reported the parent's 2,292 MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(a: argparse.Namespace) -> None:
    from genept_fast import stream

    E = np.load(a.table)
    out = Path(a.output)
    t0 = time.perf_counter()
    rep = stream.encode_weighted(a.input, out, E, chunk_size=a.chunk, progress=False)
    seconds = time.perf_counter() - t0
    result = {"cells": rep.n_cells, "seconds": seconds, "cells_per_s": rep.n_cells / seconds}
    print(json.dumps({**result, "peak_rss_mib": _vm_hwm_mib()}))


def run_worker(path: Path, a: argparse.Namespace, output: Path) -> dict:
    for p in (output, output.with_name(f"{output.stem}.soma_joinid.npy")):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", "--input", str(path), "--table", str(a.table),
           "--chunk", str(a.chunk), "--output", str(output)]  # fmt: skip
    stdout, usage = run_measured(cmd, what=f"worker on {path}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["ru_maxrss_mib"] = usage.ru_maxrss / 1024  # the parent's peak too: see _vm_hwm_mib
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # the child's, all its threads
    return result


def same_bits(a: Path, b: Path, rows: int = 20_000) -> bool:
    x, y = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    if x.shape != y.shape:
        return False
    return all(
        np.array_equal(
            np.asarray(x[i : i + rows]).view(np.uint32), np.asarray(y[i : i + rows]).view(np.uint32)
        )
        for i in range(0, x.shape[0], rows)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--nnz", type=int, default=2_000, help="nonzeros per cell (about)")
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--chunk", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=2, help="alternating rounds per path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    h5ad = make_atlas.default_path(a.cells, a.genes, a.nnz, values="counts")
    if not h5ad.exists():
        make_atlas.write_atlas(h5ad, a.cells, a.genes, a.nnz, values="counts")
    uri = h5ad.with_name(f"soma_{a.cells}x{a.genes}_nnz{a.nnz}_s0_counts_census")
    if not uri.exists():
        write_soma(uri, h5ad)
    a.table = HERE / "data" / f"E_{a.genes}x{a.dim}.npy"
    if not a.table.exists():
        np.save(a.table, synthetic.make_embeddings(a.genes, a.dim))
    OUT.mkdir(exist_ok=True)
    outs = {"h5ad": OUT / "soma_bench_h5ad.npy", "soma": OUT / "soma_bench_soma.npy"}
    runs: dict[str, list[dict]] = {"h5ad": [], "soma": []}
    for _ in range(a.repeat):
        runs["h5ad"].append(run_worker(h5ad, a, outs["h5ad"]))
        runs["soma"].append(run_worker(uri, a, outs["soma"]))
    best = {k: max(r["cells_per_s"] for r in v) for k, v in runs.items()}
    cpu = {k: min(r["cpu_s"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["peak_rss_mib"] for r in v) for k, v in runs.items()}
    same = same_bits(outs["h5ad"], outs["soma"])
    ratio = best["soma"] / best["h5ad"]
    shape = f"{a.cells:,} cells x {a.genes:,} genes, ~{a.nnz:,} nonzeros/cell (raw counts)"
    print(f"{shape}, D = {a.dim}, chunk {a.chunk:,}")
    print(f"{'path':<6} {'best cells/s':>13} {'peak RSS MiB':>13} {'CPU s':>7}   runs (cells/s)")
    for k in ("h5ad", "soma"):
        each = ", ".join(f"{r['cells_per_s']:,.0f}" for r in runs[k])
        print(f"{k:<6} {best[k]:>13,.0f} {rss[k]:>13,.0f} {cpu[k]:>7.1f}   {each}")
    print(f"SOMA / .h5ad throughput: {ratio:.1%} (goal >= 80%)")
    share = cpu["h5ad"] / cpu["soma"]
    print(f"SOMA / .h5ad cells per CPU-second: {share:.1%} (the runs' least CPU)")
    print(f"SOMA peak RSS {rss['soma']:,.0f} MiB (goal < 1024 at 150,000 cells)")
    print(f"outputs the same bits: {same}")
    record = {"args": {k: str(v) for k, v in vars(a).items()}, "runs": runs, "best": best,
              "peak_rss_mib": rss, "cpu_s": cpu, "ratio": ratio, "same_bits": same}  # fmt: skip
    (OUT / f"bench_soma_{a.cells}.json").write_text(json.dumps(record, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
