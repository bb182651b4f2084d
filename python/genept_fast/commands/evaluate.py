"""``genept-fast evaluate`` (cell level) and ``genept-fast evaluate-genes`` (gene level)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from genept_fast._inputs import (
    GENE_TABLE_EXPECT,
    GENE_TABLE_KINDS,
    require_anndata,
    require_table,
)
from genept_fast._outputs import add_overwrite_argument, check_output
from genept_fast.commands._args import (
    check_distinct,
    int_range,
    old_spelling,
    open_fraction,
    probability,
)
from genept_fast.errors import InputError

if TYPE_CHECKING:
    import argparse

    from anndata import AnnData

__all__ = ["GENE_MODELS", "register", "run", "run_genes", "run_transfer"]

#: evaluate-genes' classifiers, :data:`genept_fast.eval.GENE_MODELS` written out so that building
#: the parser imports no part of genept_fast.eval (scikit-learn, matplotlib); a test checks that
#: the two are equal.
GENE_MODELS = ("logistic_regression", "random_forest")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` and ``evaluate-genes`` subcommands."""
    p = subparsers.add_parser(
        "evaluate",
        help="score cell embeddings (clustering, annotation, batch effect) side by side",
        description=(
            "Score the embeddings in the obsm of an .h5ad / .zarr AnnData (e.g. X_genept_w and"
            " X_genept_s written there by encode --into, beside X_pca; --ensemble adds them"
            " together) with the GenePT paper's protocols: k-means "
            "and Leiden clustering (AMI/ARI), kNN and logistic-regression annotation on a "
            "stratified 80/20 split, batch-effect ARI and silhouettes. Cells labelled 'Unknown' "
            "are left out, and so are cells without a label (empty, 'nan', 'None'). Writes "
            "report.md, report.json and UMAP PNGs; an existing report is refused unless "
            "--overwrite. With --reference, scores label transfer instead: the labels of REF "
            "(an .h5ad / .zarr or a build-reference index) are transferred to INPUT and compared "
            "with INPUT's own (accuracy, macro-F1, a confusion-matrix PNG per embedding and "
            "method)."
        ),
    )
    p.add_argument("input", type=Path, help="input AnnData (.h5ad or .zarr)")
    p.add_argument("--label", required=True, help="obs column with the cell-type labels")
    p.add_argument(
        "--batch-key",
        default=None,
        metavar="COLUMN",
        help="obs column with the batch/patient (adds the batch-effect metrics)",
    )
    old_spelling(p, "--batch", "--batch-key", deprecated=True)
    p.add_argument(
        "--obsm",
        nargs="+",
        default=None,
        metavar="KEY",
        help="obsm embeddings to score (default: every obsm entry with > 2 columns but layouts)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    old_spelling(p, "--out", "--output")
    p.add_argument(
        "--seed", type=int_range(0, 2**32 - 1), default=2023, help="seed of every random step"
    )
    p.add_argument(
        "--exclude-label",
        action="append",
        default=None,
        metavar="LABEL",
        help="label to leave out (repeatable; default: Unknown)",
    )
    p.add_argument(
        "--k",
        type=int_range(1, 10_000),
        default=None,
        help="neighbours of the kNN vote (default: 10; 15 with --reference)",
    )
    old_spelling(p, "--knn-k", "--k")
    p.add_argument("--test-size", type=open_fraction, default=0.2, help="held-out fraction")
    p.add_argument("--n-neighbors", type=int_range(2), default=15, help="kNN graph size for Leiden")
    p.add_argument("--resolution", type=float, default=1.0, help="Leiden resolution")
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
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="also score the --obsm keys together (each L2-normalised, concatenated: the"
        " paper's ensemble)",
    )
    t.add_argument(
        "--methods",
        nargs="+",
        choices=["knn", "logreg"],
        default=["knn", "logreg"],
        help="how labels are transferred",
    )
    t.add_argument(
        "--weights", choices=["distance", "uniform"], default="distance", help="kNN vote weights"
    )
    t.add_argument(
        "--min-confidence",
        type=probability,
        default=None,
        help="below this confidence a cell is left unannotated (default: none)",
    )
    t.add_argument(
        "--backend",
        choices=["auto", "exact", "ivf", "hnsw"],
        default="auto",
        help="nearest-neighbour search",
    )
    t.add_argument(
        "--unknown-label",
        default="Unknown",
        help="label of the cells left unannotated; a reference label that reads like it is refused",
    )
    t.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="score even when the query's embedding was made differently from the "
        "reference's (method, model, dimension or text source); the report's notes say so",
    )
    add_overwrite_argument(p)
    p.set_defaults(func=run)

    g = subparsers.add_parser(
        "evaluate-genes",
        help="score gene embeddings on a binary gene classification task",
        description=(
            "5-fold stratified cross-validation of logistic regression and random forest on gene "
            "embeddings, ROC AUC mean ± sd, with a random embedding of the same dimension as "
            "control. Labels: a CSV/TSV/parquet table of gene id + class, or flag columns "
            "('Yes') such as Geneformer's dosage-sensitivity file. Writes report.md, report.json "
            "and roc.png; an existing report is refused unless --overwrite."
        ),
    )
    g.add_argument("genes", type=Path, help="gene embeddings (.parquet, from embed-genes)")
    g.add_argument("--labels", type=Path, required=True, help="gene label table")
    g.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    old_spelling(g, "--out", "--output")
    g.add_argument(
        "--seed", type=int_range(0, 2**32 - 1), default=2023, help="seed of folds, models, control"
    )
    g.add_argument("--n-splits", type=int_range(2), default=5, help="cross-validation folds")
    g.add_argument("--positive", default=None, help="positive class (default: sorts last)")
    g.add_argument(
        "--models",
        nargs="+",
        choices=GENE_MODELS,
        default=list(GENE_MODELS),
        metavar="MODEL",
        help=f"classifiers to cross-validate: {', '.join(GENE_MODELS)} (default: both)",
    )
    g.add_argument(
        "--n-jobs", type=int_range(-1, 4096), default=None, help="random-forest jobs (default 1)"
    )
    g.add_argument("--no-control", action="store_true", help="skip the random control")
    g.add_argument("--no-plots", action="store_true", help="skip roc.png")
    add_overwrite_argument(g)
    g.set_defaults(func=run_genes)


def _read_for_evaluation(path: Path) -> AnnData:
    """``obs``, ``obsm`` and each embedding's provenance (``uns[key]["params"]``) of an
    .h5ad/.zarr AnnData, either on-disk layout (``X`` is not read)."""
    import anndata as ad

    from genept_fast.cells import AnnDataStore

    require_anndata(path)
    with AnnDataStore(path) as store:
        obs = store.frame("obs")
        obsm = store.obsm_dict()
        uns = {k: {"params": p} for k in obsm if (p := store.params(k)) is not None}
    return ad.AnnData(obs=obs, obsm=obsm, uns=uns)


def ensemble_key(keys: list[str]) -> str:
    """The obsm key under which ``--ensemble`` scores ``keys`` together."""
    return "+".join(keys)


def _check_obsm_arg(args: argparse.Namespace) -> None:
    """``--obsm`` and ``--ensemble`` as given, checked before any file is read."""
    check_distinct("--obsm", args.obsm)
    if args.ensemble and (args.obsm is None or len(args.obsm) < 2):
        msg = "--ensemble needs two or more --obsm keys"
        raise InputError(msg)


def _check_columns(args: argparse.Namespace, adata: AnnData, path: Path) -> None:
    """``--label`` and ``--batch-key`` name columns of the input's ``obs``."""
    for flag, column in (("--label", args.label), ("--batch-key", args.batch_key)):
        if column is not None and column not in adata.obs:
            msg = f"{flag} {column}: {path} has no such obs column; it has {list(adata.obs)}"
            raise InputError(msg)


def _obsm_keys(args: argparse.Namespace, adata: AnnData) -> list[str]:
    """The embeddings to score: ``--obsm`` (each in ``adata.obsm``) or the default keys, and
    with ``--ensemble`` their combination, added to ``adata.obsm`` (each L2-normalised,
    concatenated and normalised again, as ``annotate`` and ``--reference`` combine them)."""
    import numpy as np

    from genept_fast.annotate._io import combine
    from genept_fast.eval._cells import _default_obsm_keys

    keys = list(args.obsm) if args.obsm is not None else _default_obsm_keys(adata)
    if not keys:
        msg = f"no embeddings to evaluate: obsm holds {sorted(adata.obsm)}; name them with --obsm"
        raise InputError(msg)
    for key in keys:
        if key not in adata.obsm:
            msg = f"--obsm {key}: the input's obsm has no such key; it holds {sorted(adata.obsm)}"
            raise InputError(msg)
    if args.ensemble:
        name = ensemble_key(keys)
        parts = [np.asarray(adata.obsm[k], dtype=np.float32) for k in keys]
        adata.obsm[name] = combine(parts, keys)
        keys.append(name)
    return keys


def run(args: argparse.Namespace) -> int:
    """Run ``genept-fast evaluate``."""
    from genept_fast._extras import require_extra

    require_extra("eval", "evaluation")  # before any check of the input says something else
    from genept_fast.eval import DEFAULT_EXCLUDE_LABELS, evaluate
    from genept_fast.eval._io import REPORT_FILES, safe_name

    path: Path = args.input
    if not path.exists():
        msg = f"input file not found: {str(path)!r}"
        raise FileNotFoundError(msg)
    require_anndata(path)
    if args.reference is not None:
        return run_transfer(args)
    _check_obsm_arg(args)
    keys = list(args.obsm or ())
    if args.ensemble and keys:
        keys.append(ensemble_key(keys))
    figures = [] if args.no_plots else [f"umap_{safe_name(k)}.png" for k in keys]
    check_output(
        args.output,
        kind="folder",
        overwrite=args.overwrite,
        inputs=[path],
        names=[*REPORT_FILES, *figures],
    )
    adata = _read_for_evaluation(path)
    if adata.n_obs == 0:
        msg = f"{path} has no cells to evaluate"
        raise InputError(msg)
    _check_columns(args, adata, path)
    keys = _obsm_keys(args, adata)
    if not args.no_plots and args.obsm is None:  # now the default keys (and figures) are known
        check_output(
            args.output,
            kind="folder",
            overwrite=args.overwrite,
            names=[f"umap_{safe_name(k)}.png" for k in keys],
        )
    report = evaluate(
        adata,
        label_key=args.label,
        batch_key=args.batch_key,
        obsm_keys=keys,
        seed=args.seed,
        exclude_labels=args.exclude_label or DEFAULT_EXCLUDE_LABELS,
        knn_k=10 if args.k is None else args.k,
        test_size=args.test_size,
        leiden=not args.no_leiden,
        leiden_resolution=args.resolution,
        n_neighbors=args.n_neighbors,
        logreg=not args.no_logreg,
        plots=not args.no_plots,
    )
    written = report.write(args.output, overwrite=args.overwrite)
    print(report.to_markdown().split("\n## ", 1)[0].rstrip())
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"\nwrote {', '.join(sorted(written))} to {args.output}", file=sys.stderr)
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    """``genept-fast evaluate QUERY --reference REF``: score labels transferred from REF."""
    from genept_fast.annotate._transfer import is_index_file
    from genept_fast.eval import DEFAULT_EXCLUDE_LABELS, evaluate_transfer
    from genept_fast.eval._io import REPORT_FILES

    ref: Path = args.reference
    if not ref.exists():
        msg = f"reference not found: {str(ref)!r}"
        raise FileNotFoundError(msg)
    index = is_index_file(ref)
    if not index:
        require_anndata(ref)
    if args.batch_key is not None:
        msg = "--batch-key does not apply with --reference"
        raise InputError(msg)
    _check_obsm_arg(args)
    entries: list[str | list[str]] | None = None
    if args.obsm:
        entries = list(args.obsm)
        if args.ensemble:
            entries.append(list(args.obsm))
    # The figures' names depend on what is scored; the report files are checked now, and
    # write_report_files checks every name again before it writes.
    check_output(
        args.output,
        kind="folder",
        overwrite=args.overwrite,
        inputs=[args.input, ref],
        names=list(REPORT_FILES),
    )
    query = _read_for_evaluation(args.input)
    report = evaluate_transfer(
        query,
        ref,
        label_key=None if index else args.label,
        query_label_key=args.query_label or args.label,
        obsm_keys=entries,
        methods=args.methods,
        k=15 if args.k is None else args.k,
        weights=args.weights,
        min_confidence=args.min_confidence,
        backend=args.backend,
        exclude_labels=args.exclude_label or DEFAULT_EXCLUDE_LABELS,
        unknown_label=args.unknown_label,
        allow_mismatch=args.allow_mismatch,
    )
    written = report.write(args.output, overwrite=args.overwrite)
    print(report.to_markdown().split("\n## ", 1)[0].rstrip())
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"\nwrote {', '.join(sorted(written))} to {args.output}", file=sys.stderr)
    return 0


def run_genes(args: argparse.Namespace) -> int:
    """Run ``genept-fast evaluate-genes``."""
    from genept_fast.eval import evaluate_genes
    from genept_fast.eval._io import REPORT_FILES
    from genept_fast.table import GeneEmbeddings

    path: Path = args.genes
    if not path.exists():
        msg = f"gene embedding file not found: {str(path)!r}"
        raise FileNotFoundError(msg)
    require_table(
        path,
        role="gene embedding table",
        allowed=GENE_TABLE_KINDS,
        expect=GENE_TABLE_EXPECT,
    )
    require_table(args.labels, role="--labels", allowed=("parquet", "text", "gzip-text"))
    check_output(
        args.output,
        kind="folder",
        overwrite=args.overwrite,
        inputs=[path, args.labels],
        names=[*REPORT_FILES, *(() if args.no_plots else ("roc.png",))],
    )
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
    written = report.write(args.output, overwrite=args.overwrite)
    print(report.to_markdown().split("\n## ", 1)[0].rstrip())
    print(f"\nwrote {', '.join(sorted(written))} to {args.output}", file=sys.stderr)
    return 0
