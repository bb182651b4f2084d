"""``genept-fast demo``: the whole pipeline offline on scanpy's bundled PBMCs.

See :mod:`genept_fast.demo`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genept_fast._outputs import add_overwrite_argument
from genept_fast.commands._args import int_range

if TYPE_CHECKING:
    import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="offline end-to-end demo: PBMCs → GenePT-w / GenePT-s → metrics and UMAPs vs PCA",
        description="Gene text (NCBI if reachable, else HGNC names) → local text models → GenePT-w "
        "and GenePT-s on scanpy's pbmc68k_reduced → kNN accuracy, AMI/ARI next to PCA, and one "
        "figure (umap.png) with the UMAP of each embedding side by side. "
        "Files already in the output folder from an earlier run are refused unless --overwrite.",
    )
    p.add_argument("-o", "--output", default="genept-demo", help="output folder")
    p.add_argument(
        "--text",
        choices=["auto", "ncbi", "hgnc", "symbol"],
        default="auto",
        help="gene text source (auto: NCBI, else the offline HGNC names)",
    )
    p.add_argument(
        "--embedder", default="local", help="text model for the gene texts (offline MiniLM)"
    )
    p.add_argument(
        "--sentence-embedder",
        default="wordllama",
        help="text model for GenePT-s's cell sentences (the offline static model; 'local' for "
        "MiniLM, whose sentences are cut at 256 tokens and take ~100x longer)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the UMAPs and the figure")
    p.add_argument("--no-progress", action="store_true", help="no progress while embedding")
    p.add_argument("--threads", type=int_range(), help="threads (default: all cores)")
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from genept_fast.demo import run_demo

    run_demo(
        args.output,
        text_source=args.text,
        embedder=args.embedder,
        sentence_embedder=args.sentence_embedder,
        plots=not args.no_plots,
        n_threads=args.threads,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0
