"""``genept-fast annotate``: cell-type labels for a query from a labelled reference.

QUERY is an ``.h5ad`` / ``.zarr`` holding the query embedding (from ``encode``); REF an ``.h5ad``
/ ``.zarr`` with labels and the same embedding, or a reference index from ``build-reference``.
The query is read and annotated by chunks (a query larger than memory works). OUT is an
``.h5ad`` (the query's ``obs`` with the predictions; no matrix) or a ``.parquet`` (one row per
cell: ``obs_name``, the ``obs`` columns, the prediction and its confidence).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast._core import GeneptError

if TYPE_CHECKING:
    import argparse

    import pandas as pd

__all__ = ["check_output", "register", "run"]

OUTPUT_FORMATS = (".h5ad", ".parquet")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "annotate",
        help="label query cells from a labelled reference (kNN or logistic regression)",
        description=__doc__,
    )
    p.add_argument("query", type=Path, help="query .h5ad / .zarr with the embedding")
    p.add_argument(
        "--reference", type=Path, required=True, help="reference .h5ad / .zarr, or a .index"
    )
    p.add_argument("--label", help="reference obs column with the labels (not for an index)")
    p.add_argument(
        "--obsm",
        nargs="+",
        metavar="KEY",
        help="embedding(s); several are concatenated (default: the index's, or X_genept_w)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help=".h5ad or .parquet")
    p.add_argument("--method", choices=["knn", "logreg"], default="knn")
    p.add_argument("--k", type=int, default=15, help="neighbours of the kNN vote (15)")
    p.add_argument(
        "--weights",
        choices=["distance", "uniform"],
        default="distance",
        help="kNN vote weights (distance: 1 / cosine distance; uniform: the paper's)",
    )
    p.add_argument(
        "--min-confidence", type=float, help="predictions below this confidence become Unknown"
    )
    p.add_argument("--key-added", help="obs column of the prediction (default LABEL_pred)")
    p.add_argument("--exact", action="store_true", help="exact search even with an HNSW index")
    p.add_argument("--chunk-size", type=int, default=10_000, help="query cells per chunk")
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def check_output(
    output: Path, inputs: list[Path], *, overwrite: bool, formats: tuple[str, ...] | None = None
) -> None:
    """Refuse an unknown suffix, an input as output, and an existing output without overwrite."""
    if formats is not None and output.suffix.lower() not in formats:
        msg = f"output {output}: use one of {', '.join(formats)}"
        raise GeneptError(msg)
    for path in inputs:
        same = output.resolve() == path.resolve() or (
            output.exists() and path.exists() and output.samefile(path)
        )
        if same:
            msg = f"the output {output} is an input; choose another -o"
            raise GeneptError(msg)
    if output.is_dir():
        msg = f"{output} is a folder; give a file name"
        raise GeneptError(msg)
    if output.exists() and not overwrite:
        msg = f"{output} exists; pass --overwrite to replace it"
        raise GeneptError(msg)


def _check_args(args: argparse.Namespace) -> None:
    for path, what in ((args.query, "query"), (args.reference, "reference")):
        if not path.exists():
            msg = f"{what} not found: {path}"
            raise FileNotFoundError(msg)
    if args.chunk_size < 1:
        msg = f"--chunk-size must be at least 1, got {args.chunk_size}"
        raise GeneptError(msg)
    check_output(
        args.output, [args.query, args.reference], overwrite=args.overwrite, formats=OUTPUT_FORMATS
    )


def run(args: argparse.Namespace) -> int:
    from genept_fast.annotate._io import EmbeddingSource
    from genept_fast.annotate._transfer import (
        _check_method,
        as_index,
        check_compatible,
        jsonable,
        predict,
        summary,
    )

    _check_args(args)
    _check_method(args.method, args.weights, args.k, args.min_confidence)
    index, keys = as_index(
        args.reference,
        label_key=args.label,
        obsm_key=args.obsm,
        method=args.method,
        n_threads=args.threads,
    )
    print(f"reference: {index}", file=sys.stderr)
    with EmbeddingSource(args.query, keys) as src:
        check_compatible(index, src, keys)
        pred = predict(
            index,
            src,
            k=args.k,
            method=args.method,
            weights=args.weights,
            min_confidence=args.min_confidence,
            exact=args.exact,
            chunk_size=args.chunk_size,
            n_threads=args.threads,
        )
        obs = src.obs_frame()
    key = args.key_added or f"{index.label_key}_pred"
    cats = pred.categorical(index.classes, with_unknown=args.min_confidence is not None)
    uns = summary(
        index,
        pred,
        method=args.method,
        k=args.k,
        weights=args.weights,
        min_confidence=args.min_confidence,
        exact=args.exact,
        categories=cats,
    )
    uns["query"] = str(args.query)
    clash = [c for c in (key, f"{key}_confidence") if c in obs.columns]
    if clash:
        msg = f"the query's obs already has {clash}; choose another --key-added"
        raise GeneptError(msg)
    obs[key] = cats
    obs[f"{key}_confidence"] = pred.confidence
    _write(args.output, obs, key, uns, jsonable(uns))
    n_unknown = uns["n_unknown"]
    print(
        f"annotated {len(obs):,} cells ({args.method}, mean confidence "
        f"{uns['mean_confidence']:.3f}, {n_unknown:,} Unknown); wrote {args.output}",
        file=sys.stderr,
    )
    return 0


def _write(
    output: Path, obs: pd.DataFrame, key: str, uns: dict[str, Any], uns_json: dict[str, Any]
) -> None:
    from genept_fast._atomic import atomic_path

    with atomic_path(output) as tmp:
        if output.suffix.lower() == ".h5ad":
            import anndata as ad

            ad.AnnData(obs=obs, uns={key: uns}).write_h5ad(tmp)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            frame = obs.copy()
            frame.insert(0, "obs_name", frame.index.astype(str))
            table = pa.Table.from_pandas(frame, preserve_index=False)
            meta = dict(table.schema.metadata or {})
            meta[b"genept_fast"] = json.dumps({key: uns_json}).encode()
            pq.write_table(table.replace_schema_metadata(meta), tmp)
