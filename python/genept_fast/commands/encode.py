"""``genept-fast encode``: GenePT-w or GenePT-s cell embeddings of an .h5ad / .zarr file.

The file is streamed (bounded memory, resumable; see :mod:`genept_fast.stream`): GenePT-w runs
the Rust kernel on each chunk; GenePT-s writes each chunk's cell sentences and embeds them with
the chosen text model. The output suffix picks the format: ``.h5ad`` (the input's ``obs`` and the
embedding in ``obsm``; ``X`` is not copied), ``.parquet`` (``obs_name`` + ``embedding``), ``.zarr``
or ``.npy``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast._inputs import require_anndata, require_table
from genept_fast._outputs import add_overwrite_argument
from genept_fast.commands import int_range
from genept_fast.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp

    from genept_fast.embed import CostEstimate, Embedder

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


def read_var(path: str | Path, *, use_raw: bool = False) -> pd.DataFrame:
    """The ``var`` table (or ``raw/var``) of an .h5ad / .zarr AnnData, without its matrix."""
    import anndata as ad

    p = Path(path)
    key = "raw/var" if use_raw else "var"
    try:
        if p.suffix == ".zarr" or p.is_dir():
            import zarr

            root: Any = zarr.open_group(str(p), mode="r")
            return ad.io.read_elem(root[key])
        import h5py

        with h5py.File(p, "r") as f:
            return ad.io.read_elem(f[key])
    except KeyError as exc:
        msg = f"{p}: no {key} group (is it an AnnData file?)"
        raise InputError(msg) from exc
    except OSError as exc:
        msg = f"{p}: cannot read ({exc})"
        raise InputError(msg) from exc


def has_raw(path: str | Path) -> bool:
    """Whether an .h5ad / .zarr AnnData stores ``raw/X``."""
    p = Path(path)
    try:
        if p.suffix == ".zarr" or p.is_dir():
            import zarr

            root: Any = zarr.open_group(str(p), mode="r")
            return "raw" in root and "X" in root["raw"]
        import h5py

        with h5py.File(p, "r") as f:
            return "raw/X" in f
    except (OSError, KeyError) as exc:
        msg = f"{p}: cannot read ({exc})"
        raise InputError(msg) from exc


def _gene_symbols(args: argparse.Namespace) -> tuple[list[str], str]:
    from genept_fast.tl import resolve_gene_symbols

    var = read_var(args.input, use_raw=args.use_raw)
    return resolve_gene_symbols(list(map(str, var.index)), var, gene_key=args.gene_key)


class SentenceEncoder:
    """GenePT-s as a streaming encoder: a chunk's sentences, embedded by a text model.

    The sentences are those of :func:`genept_fast.tl.genept_s` (a
    :class:`~genept_fast.tl.SentenceBuilder`), counted gene by gene and handed to the embedder
    with their token counts, so no sentence is tokenized again; ``n_cells``, ``n_cut`` and
    ``n_empty`` count, over the chunks encoded by this object, the cells, the sentences cut at
    the token limit and the cells without a usable expressed gene (zero vectors). With
    ``progress``, a bar under the stream's shows each chunk's sentences as every request
    (or, locally, every forward pass) finishes.
    """

    def __init__(
        self,
        embedder: Embedder,
        symbols: list[str],
        *,
        top_n: int | None,
        prefix: str,
        sep: str = " ",
        max_input_tokens: int | None = None,
        n_threads: int | None = None,
        progress: bool = False,
    ) -> None:
        from genept_fast.tl import SentenceBuilder

        self.embedder = embedder
        self.builder = SentenceBuilder(
            embedder,
            symbols,
            top_n=top_n,
            prefix=prefix,
            sep=sep,
            max_input_tokens=max_input_tokens,
            n_threads=n_threads,
        )
        self.progress = progress
        self.n_cells = self.n_cut = self.n_empty = 0
        self.fingerprint = json.dumps(
            [
                "genept-s",
                embedder.model_id,
                embedder.cache_namespace,
                top_n,
                prefix,
                sep,
                self.builder.max_input_tokens,
                hashlib.blake2b("\n".join(symbols).encode(), digest_size=16).hexdigest(),
            ],
            separators=(",", ":"),
        )

    def sentences(self, X: sp.csr_array) -> list[str]:
        return self.counted_sentences(X)[0]

    def counted_sentences(self, X: sp.csr_array) -> tuple[list[str], list[int]]:
        """The chunk's sentences and their token counts (and the counters updated)."""
        out, kept, cut, tokens = self.builder.build_counted(X)
        self.n_cells += len(out)
        self.n_cut += int(cut.sum())
        self.n_empty += int((kept == 0).sum())
        return out, tokens.tolist()

    def __call__(self, X: sp.csr_array) -> np.ndarray:
        sentences, tokens = self.counted_sentences(X)
        if not self.progress:
            vectors = self.embedder.embed(sentences, token_counts=tokens)
            return np.asarray(vectors, dtype=np.float32)
        from tqdm.auto import tqdm

        bars: list[Any] = []

        def advance(done: int, total: int) -> None:
            if not bars:
                bars.append(
                    tqdm(
                        total=total,
                        desc="  sentences of this chunk",
                        unit="sentence",
                        leave=False,
                        file=sys.stderr,
                    )
                )
            bars[0].update(done - bars[0].n)

        try:
            vectors = self.embedder.embed(sentences, token_counts=tokens, on_progress=advance)
        finally:
            for bar in bars:
                bar.close()
        return np.asarray(vectors, dtype=np.float32)


def _check_args(args: argparse.Namespace) -> None:
    from genept_fast.stream import check_key, check_output_paths

    if not Path(args.input).exists():
        msg = f"input not found: {args.input}"
        raise FileNotFoundError(msg)
    if args.chunk_size < 1:
        msg = f"--chunk-size must be at least 1, got {args.chunk_size}"
        raise InputError(msg)
    if args.top_n is not None and args.top_n < 1:
        msg = f"--top-n must be at least 1, got {args.top_n}"
        raise InputError(msg)
    if args.max_input_tokens is not None and args.max_input_tokens < 1:
        msg = f"--max-input-tokens must be at least 1, got {args.max_input_tokens}"
        raise InputError(msg)
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
    if args.key is not None:
        check_key(args.key)
    require_anndata(args.input)
    if args.method == "w":
        require_table(
            args.genes,
            role="--genes table",
            allowed=("parquet", "pickle"),
            expect="a gene-embedding table (parquet from embed-genes, or GenePT's pickle)",
        )
    if not args.dry_run:
        check_output_paths(args.output, overwrite=args.overwrite, inputs=[args.input, args.genes])


def run(args: argparse.Namespace) -> int:
    from genept_fast import stream
    from genept_fast.kernels import DEFAULT_PREFIX

    _check_args(args)
    if args.use_raw is None:
        args.use_raw = args.layer is None and has_raw(args.input)
    matrix = "raw/X" if args.use_raw else (f"layers/{args.layer}" if args.layer else "X")
    progress = not args.no_progress and sys.stderr.isatty()
    common: dict[str, Any] = {
        "layer": args.layer,
        "use_raw": args.use_raw,
        "chunk_size": args.chunk_size,
        "output_dtype": args.dtype,
        "progress": progress,
        "resume": not args.no_resume,
        "overwrite": args.overwrite,
    }
    symbols, symbol_source = _gene_symbols(args)
    _warn_negative(args, matrix)
    if args.method == "w":
        from genept_fast.genes.match import dataset_identifiers, explain_no_match, var_columns
        from genept_fast.table import GeneEmbeddings
        from genept_fast.tl import compact_table

        table = GeneEmbeddings.read(args.genes)
        var = read_var(args.input, use_raw=args.use_raw)
        ids = dataset_identifiers(list(map(str, var.index)), var, gene_key=args.gene_key)
        gene_index, coverage = table.index_for(ids.primary, alternatives=ids.alternatives)
        symbol_source = ids.description
        print(f"{matrix}, genes by {symbol_source}: {coverage}", file=sys.stderr)
        if coverage.n_embedded == 0:
            why = explain_no_match(
                ids.primary,
                table.key_index,
                columns=var_columns(var),
                option="--gene-key ",
                what=str(args.input),
            )
            msg = f"{why} ({args.genes}, model {table.model_id})"
            raise InputError(msg)
        if args.dry_run:
            return 0
        rows, compact_index = compact_table(table.matrix, gene_index)
        report = stream.encode_weighted(
            args.input,
            args.output,
            rows,
            gene_index=compact_index,
            n_threads=args.threads,
            preprocess=args.preprocess,
            key=args.key or "X_genept_w",
            uns={
                "params": {
                    "method": "GenePT-w",
                    "model": table.model_id,
                    "dimension": int(table.dimension),
                    "text_source": table.text_source,
                    "matrix": matrix,
                    "gene_symbols": symbol_source,
                },
                "coverage": coverage.as_dict(),
            },
            **common,
        )
        enc: SentenceEncoder | None = None
    else:
        emb = _embedder(args)
        enc = SentenceEncoder(
            emb,
            symbols,
            top_n=args.top_n,
            prefix=DEFAULT_PREFIX if args.prefix is None else args.prefix,
            max_input_tokens=args.max_input_tokens,
            n_threads=args.threads,
            progress=progress,
        )
        if not enc.builder.usable.any():
            msg = f"no gene of {args.input} has a symbol ({symbol_source}); check --gene-key"
            raise InputError(msg)
        if args.dry_run or emb.is_paid:
            est = _estimate(args, enc)
            print(f"GenePT-s with {emb.model_id} on {matrix}: {est}", file=sys.stderr)
            if args.dry_run:
                return 0
        if emb.dimension is None:
            emb.dimension = int(emb.embed(["A cell"]).shape[1])
        report = stream.encode_file(
            args.input,
            args.output,
            encoder=enc,
            dim=int(emb.dimension),
            preprocess="none",
            key=args.key or "X_genept_s",
            fingerprint=enc.fingerprint,
            uns={
                "params": {
                    "method": "GenePT-s",
                    "model": emb.model_id,
                    "dimension": int(emb.dimension),
                    "matrix": matrix,
                    "gene_symbols": symbol_source,
                    "prefix": enc.builder.prefix,
                    "top_n": "model limit" if enc.builder.top_n is None else enc.builder.top_n,
                    "max_input_tokens": int(enc.builder.max_input_tokens),
                }
            },
            **common,
        )
    print(
        f"wrote {report.output}: {report.cells_encoded:,} cells encoded from {matrix} in"
        f" {report.seconds:.1f} s ({report.chunks_resumed} of {report.n_chunks} chunks resumed"
        " from earlier work)",
        file=sys.stderr,
    )
    if enc is not None and enc.n_cells:
        print(
            f"sentences: {enc.n_cut:,} of {enc.n_cells:,} cut at the"
            f" {enc.builder.max_input_tokens}-token limit; {enc.n_empty:,} without genes"
            " (zero vectors)",
            file=sys.stderr,
        )
    return 0


def _warn_negative(args: argparse.Namespace, matrix: str) -> None:
    """Say so when the first cells have negative values (a scaled matrix, not expression)."""
    from genept_fast.preprocess import has_negative
    from genept_fast.stream import open_source

    with open_source(args.input, layer=args.layer, use_raw=args.use_raw) as src:
        sample = src.read(0, min(src.n_cells, 2000))
    if has_negative(sample):
        print(
            f"warning: {matrix} has negative values (scaled data?); GenePT needs expression"
            " (log-normalised or counts): use --use-raw or --layer",
            file=sys.stderr,
        )


def _embedder(args: argparse.Namespace) -> Embedder:
    from genept_fast.embed import get_embedder

    return get_embedder(
        args.embedder or "local", base_url=args.base_url, dimensions=args.dimensions
    )


def _estimate(args: argparse.Namespace, enc: SentenceEncoder) -> CostEstimate:
    """Token count, price and time of embedding every cell's sentence (nothing is sent)."""
    from genept_fast.stream import open_source

    sentences: list[str] = []
    tokens: list[int] = []
    with open_source(args.input, layer=args.layer, use_raw=args.use_raw) as src:
        for a in range(0, src.n_cells, args.chunk_size):
            b = min(a + args.chunk_size, src.n_cells)
            s, _, _, t = enc.builder.build_counted(src.read(a, b))
            sentences.extend(s)
            tokens.extend(t.tolist())
    return enc.embedder.estimate(sentences, token_counts=tokens)
