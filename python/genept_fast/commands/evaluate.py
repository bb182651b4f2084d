"""``genept-fast evaluate`` (cell level) and ``genept-fast evaluate-genes`` (gene level)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from genept_fast._core import GeneptError
from genept_fast.eval._genes import GENE_MODELS

if TYPE_CHECKING:
    import argparse

__all__ = ["register", "run", "run_genes", "run_transfer"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` and ``evaluate-genes`` subcommands."""
    p = subparsers.add_parser(
        "evaluate",
        help="score cell embeddings (clustering, annotation, batch effect) side by side",
        description=(
            "Score the embeddings in an .h5ad's obsm with the GenePT paper's protocols: k-means "
            "and Leiden clustering (AMI/ARI), kNN and logistic-regression annotation on a "
            "stratified 80/20 split, batch-effect ARI and silhouettes. Cells labelled 'Unknown' "
            "are left out. Writes report.md, report.json and UMAP PNGs. With --reference, "
            "scores label transfer instead: the labels of REF (an .h5ad / .zarr or a "
            "build-reference index) are transferred to INPUT and compared with INPUT's own "
            "(accuracy, macro-F1, a confusion-matrix PNG per embedding and method)."
        ),
    )
    p.add_argument("input", type=Path, help="input .h5ad")
    p.add_argument("--label", required=True, help="obs column with the cell-type labels")
    p.add_argument("--batch", default=None, help="obs column with the batch/patient")
    p.add_argument(
        "--obsm",
        nargs="+",
        default=None,
        metavar="KEY",
        help="obsm embeddings to score (default: every obsm entry with > 2 columns but layouts)",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="report folder")
    p.add_argument("--seed", type=int, default=2023, help="seed of every random step (2023)")
    p.add_argument(
        "--exclude-label",
        action="append",
        default=None,
        metavar="LABEL",
        help="label to leave out (repeatable; default: Unknown)",
    )
    p.add_argument(
        "--knn-k",
        type=int,
        default=None,
        help="neighbours of the kNN vote (10; 15 with --reference)",
    )
    p.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (0.2)")
    p.add_argument("--n-neighbors", type=int, default=15, help="kNN graph size for Leiden (15)")
    p.add_argument("--resolution", type=float, default=1.0, help="Leiden resolution (1.0)")
    p.add_argument("--no-leiden", action="store_true", help="skip Leiden clustering")
    p.add_argument("--no-logreg", action="store_true", help="skip logistic-regression annotation")
    p.add_argument("--no-plots", action="store_true", help="skip the UMAP plots (faster)")
    t = p.add_argument_group("reference → query mode")
    t.add_argument(
        "--reference", type=Path, default=None, help="labelled reference .h5ad / .zarr / .index"
    )
    t.add_argument(
        "--query-label", default=None, help="INPUT's obs column with the true labels (--label)"
    )
    t.add_argument(
        "--ensemble", action="store_true", help="also score all --obsm keys concatenated"
    )
    t.add_argument("--methods", nargs="+", choices=["knn", "logreg"], default=["knn", "logreg"])
    t.add_argument("--weights", choices=["distance", "uniform"], default="distance")
    t.add_argument("--min-confidence", type=float, default=None)
    t.add_argument("--backend", choices=["auto", "exact", "ivf", "hnsw"], default="auto")
    p.set_defaults(func=run)

    g = subparsers.add_parser(
        "evaluate-genes",
        help="score gene embeddings on a binary gene classification task",
        description=(
            "5-fold stratified cross-validation of logistic regression and random forest on gene "
            "embeddings, ROC AUC mean ± sd, with a random embedding of the same dimension as "
            "control. Labels: a CSV/TSV/parquet table of gene id + class, or flag columns "
            "('Yes') such as Geneformer's dosage-sensitivity file. Writes report.md, report.json "
            "and roc.png."
        ),
    )
    g.add_argument("genes", type=Path, help="gene embeddings (.parquet, from embed-genes)")
    g.add_argument("--labels", type=Path, required=True, help="gene label table")
    g.add_argument("-o", "--out", type=Path, required=True, help="report folder")
    g.add_argument("--seed", type=int, default=2023, help="seed of folds, models, control")
    g.add_argument("--n-splits", type=int, default=5, help="cross-validation folds (5)")
    g.add_argument("--positive", default=None, help="positive class (default: sorts last)")
    g.add_argument(
        "--models",
        nargs="+",
        choices=GENE_MODELS,
        default=list(GENE_MODELS),
        help="classifiers to cross-validate (default: both)",
    )
    g.add_argument("--n-jobs", type=int, default=None, help="random-forest jobs (default 1)")
    g.add_argument("--no-control", action="store_true", help="skip the random control")
    g.add_argument("--no-plots", action="store_true", help="skip roc.png")
    g.set_defaults(func=run_genes)


def run(args: argparse.Namespace) -> int:
    """Run ``genept-fast evaluate``."""
    import anndata as ad

    from genept_fast.eval import DEFAULT_EXCLUDE_LABELS, evaluate

    path: Path = args.input
    if not path.is_file():
        msg = f"input file not found: {str(path)!r}"
        raise FileNotFoundError(msg)
    if args.reference is not None:
        return run_transfer(args)
    try:
        adata = ad.read_h5ad(path, backed="r")
    except OSError as exc:
        msg = f"cannot read {str(path)!r} as .h5ad: {exc}"
        raise GeneptError(msg) from exc
    try:
        report = evaluate(
            adata,
            label_key=args.label,
            batch_key=args.batch,
            obsm_keys=args.obsm,
            seed=args.seed,
            exclude_labels=args.exclude_label or DEFAULT_EXCLUDE_LABELS,
            knn_k=10 if args.knn_k is None else args.knn_k,
            test_size=args.test_size,
            leiden=not args.no_leiden,
            leiden_resolution=args.resolution,
            n_neighbors=args.n_neighbors,
            logreg=not args.no_logreg,
            plots=not args.no_plots,
        )
    finally:
        if adata.isbacked:
            adata.file.close()
    written = report.write(args.out)
    print(report.to_markdown().split("\n## ", 1)[0].rstrip())
    print(f"\nwrote {', '.join(sorted(written))} to {args.out}", file=sys.stderr)
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    """``genept-fast evaluate QUERY --reference REF``: score labels transferred from REF."""
    import anndata as ad

    from genept_fast.eval import DEFAULT_EXCLUDE_LABELS, evaluate_transfer

    if not args.reference.exists():
        msg = f"reference not found: {args.reference}"
        raise FileNotFoundError(msg)
    if args.batch is not None:
        msg = "--batch does not apply with --reference"
        raise GeneptError(msg)
    entries: list[str | list[str]] | None = None
    if args.obsm:
        entries = list(args.obsm)
        if args.ensemble and len(args.obsm) > 1:
            entries.append(list(args.obsm))
    elif args.ensemble:
        msg = "--ensemble needs two or more --obsm keys"
        raise GeneptError(msg)
    try:
        query = ad.read_h5ad(args.input, backed="r")
    except OSError as exc:
        msg = f"cannot read {str(args.input)!r} as .h5ad: {exc}"
        raise GeneptError(msg) from exc
    try:
        report = evaluate_transfer(
            query,
            args.reference,
            label_key=None if _is_index(args.reference) else args.label,
            query_label_key=args.query_label or args.label,
            obsm_keys=entries,
            methods=args.methods,
            k=15 if args.knn_k is None else args.knn_k,
            weights=args.weights,
            min_confidence=args.min_confidence,
            backend=args.backend,
            exclude_labels=args.exclude_label or DEFAULT_EXCLUDE_LABELS,
        )
    finally:
        if query.isbacked:
            query.file.close()
    written = report.write(args.out)
    print(report.to_markdown().split("\n## ", 1)[0].rstrip())
    print(f"\nwrote {', '.join(sorted(written))} to {args.out}", file=sys.stderr)
    return 0


def _is_index(path: Path) -> bool:
    from genept_fast.annotate._transfer import is_index_file

    return is_index_file(path)


def run_genes(args: argparse.Namespace) -> int:
    """Run ``genept-fast evaluate-genes``."""
    from genept_fast.eval import evaluate_genes
    from genept_fast.table import GeneEmbeddings

    path: Path = args.genes
    if not path.is_file():
        msg = f"gene embedding file not found: {str(path)!r}"
        raise FileNotFoundError(msg)
    table = GeneEmbeddings.read(path)
    report = evaluate_genes(
        table.genes,
        table.matrix,
        args.labels,
        seed=args.seed,
        n_splits=args.n_splits,
        positive=args.positive,
        models=args.models,
        random_control=not args.no_control,
        name=path.stem,
        plots=not args.no_plots,
        n_jobs=args.n_jobs,
        provenance={
            "path": str(path),
            "model_id": table.metadata.get("model_id", "unknown"),
            "text_source": table.metadata.get("text_source", "unknown"),
        },
    )
    written = report.write(args.out)
    print(report.to_markdown().split("\n## ", 1)[0].rstrip())
    print(f"\nwrote {', '.join(sorted(written))} to {args.out}", file=sys.stderr)
    return 0
