"""``genept-fast gene-text``: a text for every gene, saved to parquet.

GENES is a comma-separated list, a text file with one gene per line, or an ``.h5ad`` file
(its ``var_names``). API keys come only from the environment (``NCBI_API_KEY``,
``OPENAI_API_KEY``), never from the command line.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast._inputs import check_claim, conversion_hint, require_table, sniff
from genept_fast._outputs import add_overwrite_argument, check_output
from genept_fast.commands._args import int_range, old_spelling, positive_float, url
from genept_fast.errors import InputError

if TYPE_CHECKING:
    import argparse

    import polars as pl

SUMMARY_MISSING_SHOWN = 20
DESCRIPTION = """\
Gather a text for every gene and save it to parquet (columns gene, text, source, fetched_at).

GENES is a comma-separated list, a text file with one gene per line, or an AnnData .h5ad or
.zarr (its var_names). Network answers are cached (--cache-dir) so a rerun after a crash fetches
only what is missing. API keys come only from the environment (NCBI_API_KEY, OPENAI_API_KEY).
An existing output is refused unless --overwrite is given."""


#: Characters a gene identifier may hold besides letters and digits (symbols such as
#: "HLA-DRA", versioned Ensembl IDs, "Su(H)").
_GENE_PUNCT = frozenset("._-:@()'+/*")
_MAX_GENE_LEN = 64
#: A first line with one of these names is a header, not a gene.
_HEADERS = frozenset({"gene", "genes", "symbol", "gene_symbol", "gene_id", "gene_name", "id"})


def is_gene_like(token: str) -> bool:
    """Whether ``token`` can be a gene identifier (a symbol, an Ensembl or Entrez ID)."""
    return (
        0 < len(token) <= _MAX_GENE_LEN
        and token[0].isalnum()
        and all(c.isalnum() or c in _GENE_PUNCT for c in token)
    )


def _genes_from_text(path: Path, compressed: bool) -> list[str]:
    try:
        if compressed:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        msg = f"{path} is not UTF-8 text (byte {exc.start}); a gene list has one gene per line"
        raise InputError(msg) from None
    genes: list[str] = []
    for number, line in enumerate(lines, start=1):
        gene = line.split("\t")[0].split(",")[0].strip().strip("\"'")
        if not gene or gene.startswith("#"):
            continue
        if not genes and gene.lower() in _HEADERS:
            continue
        if not is_gene_like(gene):
            shown = gene if len(gene) <= 40 else gene[:40] + "…"
            msg = (
                f"{path}, line {number}: {shown!r} is not a gene identifier; a gene list has"
                " one gene per line (the first tab- or comma-separated field)"
            )
            raise InputError(msg)
        genes.append(gene)
    return genes


def read_gene_list(spec: str) -> list[str]:
    """Genes from a comma-separated list, a text file (one per line) or an AnnData's var_names.

    A file is checked for what it is first: an ``.h5ad`` / ``.zarr`` gives its ``var_names``; a
    text file (gzip-compressed too) one gene per line, each of which must look like a gene
    identifier; anything else (a 10x ``.h5``, a ``.loom``, a ``.mtx``, a folder, a binary
    file) is refused with a one-line :class:`~genept_fast.errors.InputError` naming it.
    """
    path = Path(spec)
    if path.exists():
        found = sniff(path)
        if found.kind in ("h5ad", "zarr-anndata", "text", "gzip-text"):
            check_claim(path, found)
        if found.kind in ("h5ad", "zarr-anndata"):
            from genept_fast.stream.sources import read_var

            return [str(g) for g in read_var(path).index]
        if found.kind in ("text", "gzip-text"):
            return _genes_from_text(path, compressed=found.kind == "gzip-text")
        hint = conversion_hint(path, found.kind)
        msg = (
            f"{path} is {found.what}, not a gene list (a text file, one gene per line) nor"
            " AnnData (.h5ad/.zarr)" + (f"; {hint}" if hint else "")
        )
        raise InputError(msg)
    if path.suffix.lower() in (".h5ad", ".zarr"):
        msg = f"no such file: {path}"
        raise FileNotFoundError(msg)
    genes = [g.strip() for g in spec.split(",") if g.strip()]
    if len(genes) == 1 and ("/" in spec or spec.endswith((".txt", ".tsv", ".csv", ".gz"))):
        msg = f"no such gene list file: {spec}"
        raise FileNotFoundError(msg)
    bad = [g for g in genes if not is_gene_like(g)]
    if bad:
        msg = (
            f"{bad[0]!r} is not a gene identifier nor an existing file; GENES is comma-separated"
            " genes, a text file or an .h5ad"
        )
        raise InputError(msg)
    return genes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "gene-text",
        help="gather a text for each gene (symbol, NCBI summary, LLM description or a file)",
        description=DESCRIPTION,
    )
    p.add_argument("genes", metavar="GENES", help="comma-separated genes, a text file or an .h5ad")
    p.add_argument("-o", "--output", required=True, help="output parquet file")
    p.add_argument(
        "--source",
        choices=("ncbi", "hgnc", "symbol", "llm", "file"),
        default="ncbi",
        help="text source (hgnc: 'SYMBOL: approved name', offline)",
    )
    p.add_argument(
        "--species", choices=("human", "mouse"), default="human", help="species of the genes"
    )
    p.add_argument("--to-human", action="store_true", help="look mouse genes up by human ortholog")
    g = p.add_argument_group("ncbi")
    g.add_argument("--mygene", action="store_true", help="use MyGene.info instead of E-utilities")
    g.add_argument("--ncbi-url", type=url, help="E-utilities base URL (default: NCBI)")
    g.add_argument("--mygene-url", type=url, help="MyGene.info base URL (default: mygene.info/v3)")
    g.add_argument("--batch-size", type=int_range(), default=200, help="genes per request batch")
    g.add_argument(
        "--no-fallback",
        action="store_true",
        help="fail when NCBI cannot be reached (default: use the HGNC names, and say so)",
    )
    g = p.add_argument_group("llm")
    g.add_argument("--model", default="gpt-4o-mini", help="chat model")
    g.add_argument("--base-url", type=url, help="OpenAI-compatible base URL (default: OpenAI)")
    g.add_argument("--prompt", default="Tell me about gene {gene}", help="prompt with {gene}")
    g.add_argument("--system", help="system message")
    g.add_argument("--temperature", type=float)
    g.add_argument("--max-tokens", type=int_range())
    g.add_argument(
        "--max-concurrency",
        type=int_range(1, 256),
        default=4,
        help="LLM requests in flight",
    )
    old_spelling(p, "--workers", "--max-concurrency")
    g = p.add_argument_group("file")
    g.add_argument("--file", help="table of gene and text (parquet/CSV/TSV/JSON)")
    g.add_argument("--gene-column")
    g.add_argument("--text-column")
    g = p.add_argument_group("network and cache")
    g.add_argument("--cache-dir", help="cache root (default: $GENEPT_FAST_CACHE_DIR or ~/.cache)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    g.add_argument("--refresh", action="store_true", help="ignore cached answers")
    g.add_argument("--timeout", type=positive_float, default=20.0, help="seconds per request")
    g.add_argument(
        "--max-retries", type=int_range(0, 100), default=4, help="retries on 429/5xx/timeouts"
    )
    old_spelling(p, "--retries", "--max-retries")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def summarize(df: pl.DataFrame) -> str:
    """A short report: how many genes got a text from which source, and which are missing."""
    counts = df.group_by("source").len().sort(["len", "source"], descending=[True, False])
    lines = [f"{df.height} genes"]
    lines += [f"  {src:<16} {n}" for src, n in counts.iter_rows()]
    missing = df.filter(df["source"] == "missing")["gene"].to_list()
    if missing:
        shown = ", ".join(missing[:SUMMARY_MISSING_SHOWN])
        more = (
            f" … (+{len(missing) - SUMMARY_MISSING_SHOWN})"
            if len(missing) > SUMMARY_MISSING_SHOWN
            else ""
        )
        lines.append(f"missing: {shown}{more}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import warnings

    import polars as pl

    from genept_fast.text import gene_texts, write_texts

    genes = read_gene_list(args.genes)
    if not genes:
        msg = f"no genes in {args.genes!r}"
        raise InputError(msg)
    if args.source == "file" and not args.file:
        msg = "--source file needs --file TABLE"
        raise InputError(msg)
    if args.source == "llm" and args.base_url is None and not os.environ.get("OPENAI_API_KEY"):
        msg = (
            "--source llm needs an API key: set OPENAI_API_KEY, or give --base-url of an"
            " OpenAI-compatible server that needs none"
        )
        raise InputError(msg)
    if args.file:
        require_table(
            args.file,
            role="--file",
            allowed=("parquet", "text", "gzip-text"),
            expect="a table of gene and text (parquet, CSV, TSV or JSON)",
        )
    check_output(
        args.output,
        overwrite=args.overwrite,
        inputs=[args.genes if Path(args.genes).exists() else None, args.file],
    )
    cache_dir: str | bool | None = False if args.no_cache else args.cache_dir
    options: dict[str, Any] = {
        "source": args.source,
        "species": args.species,
        "to_human": args.to_human,
        "cache_dir": cache_dir,
        "refresh": args.refresh,
        "progress": not args.quiet,  # a bar on a terminal, a line about every 10 s in a log
        "backend": "mygene" if args.mygene else "eutils",
        "ncbi_url": args.ncbi_url,
        "mygene_url": args.mygene_url,
        "batch_size": args.batch_size,
        "fallback": None if args.no_fallback else "hgnc",
        "model": args.model,
        "base_url": args.base_url,
        "prompt": args.prompt,
        "system": args.system,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "max_workers": args.max_concurrency,
        "path": args.file,
        "gene_column": args.gene_column,
        "text_column": args.text_column,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
    }
    try:  # a service failure goes up to the CLI (exit 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)  # said on every run, not once
            df = gene_texts(genes, **options)
    except (pl.exceptions.PolarsError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        if not args.file:
            raise
        msg = f"--file {args.file}: cannot read it as a table ({' '.join(str(exc).split())})"
        raise InputError(msg) from exc
    for w in caught:  # the NCBI fallback says so, on stderr, in one line
        print(
            f"genept-fast gene-text: warning: {' '.join(str(w.message).split())}", file=sys.stderr
        )
    meta = {"genept_fast.text_source": args.source}
    if args.source == "llm":
        meta["genept_fast.llm_model"] = args.model
    out = write_texts(df, args.output, metadata=meta, overwrite=args.overwrite)
    if not args.quiet:
        print(summarize(df))
        print(f"wrote {out}")
    return 0
