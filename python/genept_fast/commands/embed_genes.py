"""``genept-fast embed-genes``: embed a gene-text table into a GeneEmbeddings parquet file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from genept_fast._inputs import require_table
from genept_fast._outputs import add_overwrite_argument, check_output
from genept_fast.commands._args import (
    add_embedder_arguments,
    build_embedder,
    old_spelling,
    positive_float,
)
from genept_fast.errors import InputError

if TYPE_CHECKING:
    import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "embed-genes",
        help="embed gene texts (gene, text[, source]) into a gene embedding table",
        description=(
            "Embed one text per gene with a local model or an OpenAI-compatible API and write a"
            " gene embedding table (gene, embedding): .parquet, or .arrow, which encode maps"
            " instead of decoding (the fastest start). Results are cached by content, so"
            " an interrupted run resumes and nothing is sent twice. With openai:* the API key"
            " comes from OPENAI_API_KEY (servers that need none may get none)."
        ),
    )
    p.add_argument("texts", type=Path, help="parquet with columns gene, text[, source]")
    p.add_argument(
        "-o", "--output", type=Path, help=".parquet or .arrow table (required unless --dry-run)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the token count, price and expected time; send nothing",
    )
    g = add_embedder_arguments(p)
    g.add_argument(
        "--batch-api",
        action="store_true",
        help="openai:* only: use OpenAI's Batch API (half price, results within 24 h; a rerun"
        " resumes waiting on batches already submitted)",
    )
    old_spelling(p, "--batch", "--batch-api", deprecated=True)
    g.add_argument(
        "--batch-poll-interval",
        type=positive_float,
        default=30.0,
        help="seconds between polls of a running batch",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none when stderr is not a TTY)"
    )
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from genept_fast.table import GeneEmbeddings

    if not args.dry_run and args.output is None:
        msg = "give an output file with -o/--output (or use --dry-run)"
        raise InputError(msg)
    if not args.texts.is_file() and not args.texts.is_dir():
        msg = f"no such file: {args.texts}"
        raise FileNotFoundError(msg)
    require_table(
        args.texts,
        role="gene text table",
        allowed=("parquet",),
        expect="a parquet gene text table (make one with genept-fast gene-text)",
    )
    if not args.dry_run:
        check_output(args.output, overwrite=args.overwrite, inputs=[args.texts])
    try:
        texts_df = pl.read_parquet(args.texts)
    except Exception as exc:
        msg = f"{args.texts} is not a readable parquet file: {exc}"
        raise InputError(msg) from exc
    if "text" not in texts_df.columns or "gene" not in texts_df.columns:
        msg = f"{args.texts} needs columns 'gene' and 'text', has {texts_df.columns}"
        raise InputError(msg)
    embedder = build_embedder(
        args, use_batch=args.batch_api, batch_poll_interval=args.batch_poll_interval
    )
    texts = [t for t in texts_df["text"].to_list() if isinstance(t, str)]
    if args.dry_run or embedder.is_paid:
        estimate = embedder.estimate(texts)
        print(str(estimate), file=sys.stdout if args.dry_run else sys.stderr)
        if args.dry_run:
            print("dry run: nothing sent", file=sys.stdout)
            return 0
    if args.batch_api:
        _log_batch_progress()
    progress = not args.no_progress
    table = GeneEmbeddings.from_texts(texts_df, embedder, progress=progress)
    out = table.write(args.output, overwrite=args.overwrite)
    n_missing = len(table.metadata.get("missing", []))
    n_trunc = int(table.metadata.get("n_truncated", 0))
    print(
        f"wrote {out}: {len(table):,} genes × {table.dimension} ({table.model_id});"
        f" {n_missing:,} without text (zero vector); {n_trunc:,} texts truncated",
        file=sys.stderr,
    )
    return 0


def _log_batch_progress() -> None:
    """Show the Batch API's progress (submitted, status changes) on stderr."""
    import logging

    log = logging.getLogger("genept_fast.embed.batch")
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("genept-fast: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
