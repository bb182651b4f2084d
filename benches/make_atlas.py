"""Write a synthetic atlas-sized ``.h5ad`` chunk by chunk, never holding the matrix in memory.

    python benches/make_atlas.py --cells 1000000 --out benches/data/atlas_1000000.h5ad

The matrix comes from :func:`synthetic.iter_chunks` (30k genes, ~2,000 nonzeros per cell,
log1p-normalised values, or with ``--values counts`` the same cells' raw counts) and is
appended to resizable HDF5 datasets laid out the way anndata writes CSR (``X/data``,
``X/indices``, ``X/indptr`` + encoding attributes), with ``obs``/``var`` name indices. 1M cells
× 2,000 nonzeros is about 16 GB uncompressed. The file appears under its final name only when
complete (temp file + ``os.replace``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic

GEN_CHUNK = 2_000  # cells per generated block (iter_chunks draws a dense random mask per block)


def _dict_group(f: h5py.File, name: str) -> None:
    g = f.create_group(name)
    g.attrs["encoding-type"] = "dict"
    g.attrs["encoding-version"] = "0.1.0"


def _index_frame(f: h5py.File, name: str, n: int, prefix: str, chunk: int) -> None:
    g = f.create_group(name)
    g.attrs["encoding-type"] = "dataframe"
    g.attrs["encoding-version"] = "0.2.0"
    g.attrs["_index"] = "_index"
    g.attrs["column-order"] = np.array([], dtype="S")  # empty list of columns
    ds = g.create_dataset(
        "_index", shape=(n,), dtype=h5py.string_dtype(), chunks=(max(1, min(n, 65_536)),)
    )
    ds.attrs["encoding-type"] = "string-array"
    ds.attrs["encoding-version"] = "0.2.0"
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        ds[a:b] = np.array([f"{prefix}{i}" for i in range(a, b)], dtype=object)


def write_atlas(
    path: Path,
    n_cells: int,
    n_genes: int = 30_000,
    nnz_per_cell: int = 2_000,
    *,
    seed: int = 0,
    compression: str | None = None,
    progress: bool = True,
    values: str = "log1p",
) -> Path:
    """Write ``n_cells`` synthetic cells to ``path`` (an .h5ad); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    t0 = time.perf_counter()
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            X = f.create_group("X")
            X.attrs["encoding-type"] = "csr_matrix"
            X.attrs["encoding-version"] = "0.1.0"
            X.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
            opts = {"compression": compression} if compression else {}
            data = X.create_dataset(
                "data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(262_144,), **opts
            )
            indices = X.create_dataset(
                "indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(262_144,), **opts
            )
            indptr = X.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
            indptr[0] = 0
            nnz = 0
            done = 0
            chunks = synthetic.iter_chunks(
                n_cells, n_genes, nnz_per_cell, seed=seed, chunk=GEN_CHUNK, values=values
            )
            for block in chunks:
                c, k = block.shape[0], block.nnz
                data.resize((nnz + k,))
                indices.resize((nnz + k,))
                data[nnz : nnz + k] = block.data
                indices[nnz : nnz + k] = block.indices
                indptr[done + 1 : done + c + 1] = block.indptr[1:].astype(np.int64) + nnz
                nnz += k
                done += c
                if progress and (done % 50_000 < GEN_CHUNK or done == n_cells):
                    rate = done / (time.perf_counter() - t0)
                    print(
                        f"  make_atlas: {done:,}/{n_cells:,} cells, {nnz * 8 / 1e9:.2f} GB, "
                        f"{rate:,.0f} cells/s",
                        file=sys.stderr,
                        flush=True,
                    )
            _index_frame(f, "obs", n_cells, "cell_", 100_000)
            _index_frame(f, "var", n_genes, "gene_", 100_000)
            for name in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
                _dict_group(f, name)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def default_path(
    n_cells: int, n_genes: int, nnz: int, seed: int = 0, values: str = "log1p"
) -> Path:
    """Where the benchmarks keep the atlas of these dimensions (``benches/data/``, gitignored)."""
    data = Path(__file__).resolve().parent / "data"
    tag = "" if values == "log1p" else f"_{values}"
    return data / f"atlas_{n_cells}x{n_genes}_nnz{nnz}_s{seed}{tag}.h5ad"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, required=True)
    p.add_argument("--genes", type=int, default=30_000)
    p.add_argument("--nnz", type=int, default=2_000, help="nonzeros per cell (about)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compression", choices=["gzip", "lzf"], default=None)
    p.add_argument("--values", choices=["log1p", "counts"], default="log1p")
    p.add_argument("--out", type=Path, default=None, help="default: benches/data/atlas_*.h5ad")
    args = p.parse_args(argv)
    out = args.out or default_path(args.cells, args.genes, args.nnz, args.seed, args.values)
    t0 = time.perf_counter()
    write_atlas(
        out,
        args.cells,
        args.genes,
        args.nnz,
        seed=args.seed,
        compression=args.compression,
        values=args.values,
    )
    size = out.stat().st_size / 1e9
    print(f"wrote {out} ({size:.2f} GB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
