"""``genept-fast encode``: GenePT-w or GenePT-s cell embeddings of an .h5ad / .zarr file.

The file is streamed (bounded memory, resumable; see :mod:`genept_fast.stream`): GenePT-w runs
the Rust kernel on each chunk; GenePT-s writes each chunk's cell sentences and embeds them with
the chosen text model. The output suffix picks the format: ``.h5ad`` (the input's ``obs`` and the
embedding in ``obsm``; ``X`` is not copied), ``.parquet`` (``obs_name`` + ``embedding``), ``.zarr``
or ``.npy``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast._inputs import require_anndata, require_table
from genept_fast._outputs import add_overwrite_argument
from genept_fast.commands._args import int_range
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from genept_fast.embed import Embedder

log = logging.getLogger("genept_fast.encode")

DESCRIPTION = """\
GenePT-w or GenePT-s cell embeddings of an AnnData .h5ad file or .zarr store.

The file is streamed in chunks of cells (bounded memory) and the job is resumable: killed, the
same command continues where it stopped. GenePT-w weighs the gene embeddings of --genes by each
cell's expression; GenePT-s writes each cell's top genes as a sentence and embeds it with the
text model of --embedder.

The output's suffix picks its format: .h5ad (the input's obs, the embedding in obsm; X is not
copied), .parquet (columns obs_name and embedding), .zarr or .npy. An existing output is
refused unless --overwrite is given. 10x .h5, .mtx folders and .loom files are refused with the
command that converts them to .h5ad."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "encode",
        help="GenePT-w / GenePT-s cell embeddings of an .h5ad or .zarr file (streamed, resumable)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="input AnnData (.h5ad or .zarr)")
    p.add_argument("--method", choices=["w", "s"], default="w", help="GenePT-w or GenePT-s")
    p.add_argument("--genes", help="gene-embedding table for -w: our parquet or GenePT's pickle")
    p.add_argument(
        "--embedder",
        help="text model for -s: local (offline, the default) or openai:MODEL",
    )
    p.add_argument("--base-url", help="OpenAI-compatible server for --embedder openai:MODEL")
    p.add_argument("--dimensions", type=int_range(), help="output dimension (text-embedding-3-*)")
    p.add_argument("-o", "--output", required=True, help=".h5ad, .parquet, .zarr or .npy")
    p.add_argument("--layer", help="read adata.layers[LAYER] instead of X")
    p.add_argument(
        "--use-raw",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read adata.raw.X (default: when the file has raw and no --layer is given)",
    )
    p.add_argument(
        "--gene-key",
        help="var column of gene identifiers: -w matches it first, then var_names (default:"
        " var_names, then a symbol column such as feature_name); -s writes it in sentences",
    )
    p.add_argument(
        "--preprocess",
        choices=["auto", "log1p", "none"],
        default="auto",
        help="-w: log-normalise raw counts (auto: when the values look like counts)",
    )
    p.add_argument(
        "--top-n", type=int_range(), help="-s: most genes per sentence (default: model limit)"
    )
    p.add_argument("--prefix", help="-s: sentence prefix")
    p.add_argument(
        "--max-input-tokens",
        type=int_range(),
        help="-s: cut sentences at this many tokens (default: the model's limit)",
    )
    p.add_argument("--key", help="obsm key / array name (default X_genept_w or X_genept_s)")
    p.add_argument("--chunk-size", type=int_range(), default=10_000, help="cells per chunk")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--threads", type=int_range(), help="kernel threads (default: all cores)")
    p.add_argument("--no-resume", action="store_true", help="discard partial work and restart")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the genes matched (-w) or tokens/price/time (-s); write and embed nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """What only the command line can get wrong: files, and flags of the other method."""
    from genept_fast.stream import check_output_args

    if not Path(args.input).exists():
        msg = f"input not found: {args.input}"
        raise FileNotFoundError(msg)
    if args.layer is not None and args.use_raw:
        msg = "give either --layer or --use-raw, not both"
        raise InputError(msg)
    if args.method == "w":
        if not args.genes:
            msg = "--method w needs --genes TABLE (make one with `genept-fast embed-genes`)"
            raise InputError(msg)
        if not Path(args.genes).exists():
            msg = f"--genes table not found: {args.genes}"
            raise FileNotFoundError(msg)
        unused = [
            flag
            for flag, value in (
                ("--embedder", args.embedder),
                ("--base-url", args.base_url),
                ("--dimensions", args.dimensions),
                ("--top-n", args.top_n),
                ("--prefix", args.prefix),
                ("--max-input-tokens", args.max_input_tokens),
            )
            if value is not None
        ]
    else:
        unused = ["--genes"] if args.genes else []
        if args.preprocess != "auto":
            unused.append("--preprocess")
    if unused:
        msg = f"{', '.join(unused)} do(es) not apply to --method {args.method}"
        raise InputError(msg)
    require_anndata(args.input)
    if args.method == "w":
        require_table(
            args.genes,
            role="--genes table",
            allowed=("parquet", "pickle"),
            expect="a gene-embedding table (parquet from embed-genes, or GenePT's pickle)",
        )
    if not args.dry_run:
        check_output_args(
            args.input,
            args.output,
            key=_key(args),
            output_dtype=args.dtype,
            overwrite=args.overwrite,
            inputs=[args.genes],
        )


def _key(args: argparse.Namespace) -> str:
    return args.key or ("X_genept_w" if args.method == "w" else "X_genept_s")


def run(args: argparse.Namespace) -> int:
    from genept_fast import stream

    _check_args(args)
    common: dict[str, Any] = {
        "layer": args.layer,
        "use_raw": args.use_raw,
        "chunk_size": args.chunk_size,
        "gene_key": args.gene_key,
        "gene_key_flag": "--gene-key ",
    }
    written: dict[str, Any] = {
        "output_dtype": args.dtype,
        "key": _key(args),
        "progress": not args.no_progress and sys.stderr.isatty(),
        "resume": not args.no_resume,
        "overwrite": args.overwrite,
    }
    if args.method == "w":
        if args.dry_run:
            from genept_fast.encode import start_weighted

            with start_weighted(
                args.input, args.genes, preprocess=args.preprocess, **common
            ) as job:
                print(job.summary, file=sys.stderr)
            return 0
        report = stream.encode_weighted(
            args.input,
            args.output,
            args.genes,
            n_threads=args.threads,
            preprocess=args.preprocess,
            **common,
            **written,
        )
        print(report.summary, file=sys.stderr)
    else:
        emb = _embedder(args)
        options: dict[str, Any] = {
            "top_n": args.top_n,
            "max_input_tokens": args.max_input_tokens,
            "n_threads": args.threads,
            **({} if args.prefix is None else {"prefix": args.prefix}),
        }
        if args.dry_run or emb.is_paid:
            est = stream.estimate_sentences(args.input, emb, **common, **options)
            print(f"GenePT-s with {emb.model_id}: {est}", file=sys.stderr)
            if args.dry_run:
                return 0
        report = stream.encode_sentences(
            args.input, args.output, emb, **common, **options, **written
        )
    print(
        f"wrote {report.output}: {report.cells_encoded:,} cells encoded from"
        f" {report.uns['params']['matrix']} in {report.seconds:.2f} s"
        f" ({report.chunks_resumed} of {report.n_chunks} chunks resumed from earlier work)",
        file=sys.stderr,
    )
    stats = report.encoder_stats
    if stats.get("n_cells"):
        print(
            f"sentences: {stats['n_cut']:,} of {stats['n_cells']:,} cut at the"
            f" {stats['max_input_tokens']}-token limit; {stats['n_empty']:,} without genes"
            " (zero vectors)",
            file=sys.stderr,
        )
    return 0


def _embedder(args: argparse.Namespace) -> Embedder:
    from genept_fast.embed import get_embedder

    return get_embedder(
        args.embedder or "local", base_url=args.base_url, dimensions=args.dimensions
    )
