"""``genept-fast build-reference``: index a labelled reference once, for ``annotate``.

REF is an ``.h5ad`` / ``.zarr`` with the labels in ``obs`` and the embedding(s) in ``obsm``, read
by chunks. The index (exact search up to 10,000 cells, a faiss IVF index over float16 codes
above; HNSW on request) is written atomically to one checksummed file; ``annotate --reference
ref.index`` reuses it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from genept_fast._core import GeneptError

if TYPE_CHECKING:
    import argparse

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from genept_fast.annotate import HNSW_DEFAULTS, IVF_DEFAULTS

    p = sub.add_parser(
        "build-reference",
        help="index a labelled reference (.h5ad / .zarr) once for annotate",
        description=__doc__,
    )
    p.add_argument("reference", type=Path, help="reference .h5ad / .zarr")
    p.add_argument("--label", required=True, help="obs column with the labels")
    p.add_argument(
        "--obsm",
        nargs="+",
        default=["X_genept_w"],
        metavar="KEY",
        help="embedding(s); several are concatenated (default X_genept_w)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="index file (e.g. ref.index)")
    p.add_argument(
        "--backend",
        choices=["auto", "exact", "ivf", "hnsw"],
        default="auto",
        help="auto: exact up to 10,000 cells, ivf above",
    )
    p.add_argument("--logreg", action="store_true", help="also fit logistic regression")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 √n)")
    p.add_argument(
        "--nprobe", type=int, default=IVF_DEFAULTS["nprobe"], help="IVF lists scanned per query"
    )
    p.add_argument("--M", type=int, default=HNSW_DEFAULTS["M"], help="HNSW graph degree")
    p.add_argument("--ef-construction", type=int, default=HNSW_DEFAULTS["ef_construction"])
    p.add_argument("--ef-search", type=int, default=HNSW_DEFAULTS["ef_search"])
    p.add_argument("--chunk-size", type=int, default=10_000, help="cells read at a time")
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def _ann_params(args: argparse.Namespace) -> dict[str, int]:
    if args.backend == "hnsw":
        return {"M": args.M, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
    params = {"nprobe": args.nprobe}
    if args.nlist is not None:
        params["nlist"] = args.nlist
    return params


def run(args: argparse.Namespace) -> int:
    from genept_fast.annotate import build_reference
    from genept_fast.commands.annotate import check_output

    if not args.reference.exists():
        msg = f"reference not found: {args.reference}"
        raise FileNotFoundError(msg)
    if args.chunk_size < 1:
        msg = f"--chunk-size must be at least 1, got {args.chunk_size}"
        raise GeneptError(msg)
    check_output(args.output, [args.reference], overwrite=args.overwrite)
    t = time.perf_counter()
    index = build_reference(
        args.reference,
        label_key=args.label,
        obsm_key=args.obsm,
        backend=args.backend,
        logreg=args.logreg,
        ann_params=_ann_params(args),
        chunk_size=args.chunk_size,
        n_threads=args.threads,
    )
    built = time.perf_counter() - t
    index.save(args.output, overwrite=args.overwrite)
    size = args.output.stat().st_size
    print(
        f"{index}: built in {built:.1f} s; wrote {args.output} ({size / 1e6:,.1f} MB)",
        file=sys.stderr,
    )
    return 0
