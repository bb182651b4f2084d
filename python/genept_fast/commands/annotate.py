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

from genept_fast._inputs import require_anndata
from genept_fast._outputs import add_overwrite_argument, check_key, check_output, is_own_store
from genept_fast.commands._args import check_distinct, int_range, probability
from genept_fast.errors import InputError

if TYPE_CHECKING:
    import argparse

    import pandas as pd

__all__ = ["check_inputs", "register", "run"]

OUTPUT_FORMATS = (".h5ad", ".parquet")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "annotate",
        help="label query cells from a labelled reference (kNN or logistic regression)",
        description=(
            "Label the cells of QUERY (an .h5ad / .zarr holding the query embedding, from "
            "encode) from REF (an .h5ad / .zarr with labels and the same embedding, or an index "
            "from build-reference), by cosine kNN or logistic regression. The query is read and "
            "annotated by chunks. OUT is an .h5ad (the query's obs with the predictions and their "
            "confidence; no matrix) or a .parquet (one row per cell). A query embedded differently "
            "from the reference (method, model, dimension, text source) is refused unless "
            "--allow-mismatch; a reference label that reads like the reject label (Unknown) is "
            "refused. An existing OUT is refused unless --overwrite."
        ),
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
    p.add_argument(
        "--method", choices=["knn", "logreg"], default="knn", help="how labels are transferred"
    )
    p.add_argument("--k", type=int_range(1, 10_000), default=15, help="neighbours of the kNN vote")
    p.add_argument(
        "--weights",
        choices=["distance", "uniform"],
        default="distance",
        help="kNN vote weights (distance: 1 / cosine distance; uniform: the paper's)",
    )
    p.add_argument(
        "--min-confidence",
        type=probability,
        help="predictions below this confidence (0..1) become Unknown",
    )
    p.add_argument("--key-added", help="obs column of the prediction (default: LABEL_pred)")
    p.add_argument(
        "--unknown-label",
        default="Unknown",
        help="label of the cells left unannotated (Unknown); a reference label that reads "
        "like it is refused",
    )
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="annotate even when the query's embedding was made differently from the "
        "reference's (method, model, dimension or text source); recorded in the output",
    )
    p.add_argument("--exact", action="store_true", help="exact search even with an HNSW index")
    p.add_argument("--chunk-size", type=int_range(), default=10_000, help="query cells per chunk")
    p.add_argument("--threads", type=int_range(), help="threads (default: all cores)")
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def check_inputs(query: Path | None, reference: Path) -> None:
    """Refuse a query or reference that is missing or not what it claims to be."""
    from genept_fast.annotate._transfer import is_index_file

    if query is not None and not is_own_store(query):  # encode's .zarr store, or AnnData
        require_anndata(query, role="query")
    if not reference.exists():
        msg = f"reference not found: {reference}"
        raise FileNotFoundError(msg)
    if not is_index_file(reference):
        require_anndata(reference, role="--reference")


def _check_args(args: argparse.Namespace) -> None:
    from genept_fast.annotate._transfer import is_index_file

    check_inputs(args.query, args.reference)
    check_distinct("--obsm", args.obsm)
    if args.label is None and not is_index_file(args.reference):
        msg = (
            f"give --label COLUMN: the reference {args.reference} is an AnnData file, whose"
            " labels are in an obs column (only an index from build-reference carries its own)"
        )
        raise InputError(msg)
    check_output(args.output, overwrite=args.overwrite, inputs=[args.query, args.reference])
    if args.output.suffix.lower() not in OUTPUT_FORMATS:
        msg = f"output {args.output}: use one of {', '.join(OUTPUT_FORMATS)}"
        raise InputError(msg)
    if args.key_added is not None:
        check_key(args.key_added)


def run(args: argparse.Namespace) -> int:
    from genept_fast.annotate._io import EmbeddingSource
    from genept_fast.annotate._transfer import (
        _check_method,
        as_index,
        check_compatible,
        check_unknown_label,
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
    check_unknown_label(index, args.unknown_label)
    with EmbeddingSource(args.query, keys) as src:
        mismatches = check_compatible(index, src, keys, allow_mismatch=args.allow_mismatch)
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
    cats = pred.categorical(index.classes, args.min_confidence is not None, args.unknown_label)
    uns = summary(
        index,
        pred,
        method=args.method,
        k=args.k,
        weights=args.weights,
        min_confidence=args.min_confidence,
        exact=args.exact,
        categories=cats,
        unknown_label=args.unknown_label,
        mismatches=mismatches,
    )
    uns["query"] = str(args.query)
    clash = [c for c in (key, f"{key}_confidence") if c in obs.columns]
    if clash:
        msg = f"the query's obs already has {clash}; choose another --key-added"
        raise InputError(msg)
    obs[key] = cats
    obs[f"{key}_confidence"] = pred.confidence
    _write(args.output, obs, key, uns, jsonable(uns))
    n_unknown = uns["n_unknown"]
    print(
        f"annotated {len(obs):,} cells ({args.method}, mean confidence "
        f"{uns['mean_confidence']:.3f}, {n_unknown:,} {args.unknown_label}); wrote {args.output}",
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
