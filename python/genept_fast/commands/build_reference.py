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

from genept_fast._outputs import add_overwrite_argument, check_output
from genept_fast.commands._args import check_distinct, int_range

if TYPE_CHECKING:
    import argparse

__all__ = ["HNSW_DEFAULTS", "IVF_DEFAULTS", "register", "run"]

#: The faiss defaults of :mod:`genept_fast.annotate` (``HNSW_DEFAULTS``, ``IVF_DEFAULTS``) written
#: out so that building the parser imports no part of genept_fast.annotate; a test checks that
#: they are equal.
HNSW_DEFAULTS: dict[str, int] = {"M": 32, "ef_construction": 80, "ef_search": 96}
IVF_DEFAULTS: dict[str, int] = {"nprobe": 32}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build-reference",
        help="index a labelled reference (.h5ad / .zarr) once for annotate",
        description=(
            "Index REF (an .h5ad / .zarr with the labels in obs and the embedding(s) in obsm, "
            "read by chunks) once: exact search up to 10,000 cells, a faiss IVF index over "
            "float16 codes above, HNSW on request. The index is written atomically to one "
            "checksummed file that annotate --reference reuses. An existing output is refused "
            "unless --overwrite."
        ),
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
    count = int_range(1, 1 << 20)
    p.add_argument("--nlist", type=count, default=None, help="IVF lists (default: 4 √n)")
    p.add_argument(
        "--nprobe", type=count, default=IVF_DEFAULTS["nprobe"], help="IVF lists scanned per query"
    )
    p.add_argument(
        "--M", type=int_range(2, 512), default=HNSW_DEFAULTS["M"], help="HNSW graph degree"
    )
    p.add_argument(
        "--ef-construction",
        type=count,
        default=HNSW_DEFAULTS["ef_construction"],
        help="HNSW candidates kept while building",
    )
    p.add_argument(
        "--ef-search",
        type=count,
        default=HNSW_DEFAULTS["ef_search"],
        help="HNSW candidates kept while searching",
    )
    p.add_argument("--chunk-size", type=int_range(), default=10_000, help="cells read at a time")
    p.add_argument("--threads", type=int_range(), help="threads (default: all cores)")
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def _ann_params(args: argparse.Namespace) -> dict[str, int]:
    if args.backend == "hnsw":
        return {"M": args.M, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
    params = {"nprobe": args.nprobe}
    if args.nlist is not None:
        params["nlist"] = args.nlist
    return params


def run(args: argparse.Namespace) -> int:
    from genept_fast._inputs import require_anndata
    from genept_fast.annotate import build_reference

    require_anndata(args.reference, role="reference")
    check_distinct("--obsm", args.obsm)
    check_output(args.output, overwrite=args.overwrite, inputs=[args.reference])
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
