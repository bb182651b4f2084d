"""``genept-fast gene-text``: a text for every gene, saved to parquet.

GENES is a comma-separated list, a text file with one gene per line, or an ``.h5ad`` file
(its ``var_names``). API keys come only from the environment (``NCBI_API_KEY``,
``OPENAI_API_KEY``), never from the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast._core import GeneptError

if TYPE_CHECKING:
    import polars as pl

SUMMARY_MISSING_SHOWN = 20
DESCRIPTION = """\
Gather a text for every gene and save it to parquet (columns gene, text, source, fetched_at).

GENES is a comma-separated list, a text file with one gene per line, or an .h5ad file (its
var_names). Network answers are cached (--cache-dir) so a rerun after a crash fetches only what
is missing. API keys come only from the environment (NCBI_API_KEY, OPENAI_API_KEY)."""


def read_gene_list(spec: str) -> list[str]:
    """Genes from a comma-separated list, a text file (one per line) or an .h5ad's ``var_names``."""
    path = Path(spec)
    if path.suffix.lower() == ".h5ad":
        if not path.exists():
            msg = f"no such file: {path}"
            raise FileNotFoundError(msg)
        import anndata

        adata = anndata.read_h5ad(path, backed="r")
        try:
            genes = [str(g) for g in adata.var_names]
        finally:
            if adata.file is not None:
                adata.file.close()
        return genes
    if path.is_file():
        genes = []
        for line in path.read_text(encoding="utf-8").splitlines():
            gene = line.split("\t")[0].split(",")[0].strip()
            if gene and not gene.startswith("#"):
                genes.append(gene)
        return genes
    genes = [g.strip() for g in spec.split(",") if g.strip()]
    if len(genes) == 1 and ("/" in spec or spec.endswith((".txt", ".tsv", ".csv"))):
        msg = f"no such gene list file: {spec}"
        raise FileNotFoundError(msg)
    return genes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "gene-text",
        help="gather a text for each gene (symbol, NCBI summary, LLM description or a file)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("genes", metavar="GENES", help="comma-separated genes, a text file or an .h5ad")
    p.add_argument("-o", "--output", required=True, help="output parquet file")
    p.add_argument(
        "--source",
        choices=("ncbi", "hgnc", "symbol", "llm", "file"),
        default="ncbi",
        help="text source (hgnc: 'SYMBOL: approved name', offline)",
    )
    p.add_argument("--species", choices=("human", "mouse"), default="human")
    p.add_argument("--to-human", action="store_true", help="look mouse genes up by human ortholog")
    g = p.add_argument_group("ncbi")
    g.add_argument("--mygene", action="store_true", help="use MyGene.info instead of E-utilities")
    g.add_argument("--ncbi-url", help="E-utilities base URL (default: NCBI)")
    g.add_argument("--mygene-url", help="MyGene.info base URL (default: mygene.info/v3)")
    g.add_argument("--batch-size", type=int, default=200, help="genes per request batch")
    g.add_argument(
        "--no-fallback",
        action="store_true",
        help="fail when NCBI cannot be reached (default: use the HGNC names, and say so)",
    )
    g = p.add_argument_group("llm")
    g.add_argument("--model", default="gpt-4o-mini", help="chat model")
    g.add_argument("--base-url", help="OpenAI-compatible base URL (default: OpenAI)")
    g.add_argument("--prompt", default="Tell me about gene {gene}", help="prompt with {gene}")
    g.add_argument("--system", help="system message")
    g.add_argument("--temperature", type=float)
    g.add_argument("--max-tokens", type=int)
    g.add_argument("--workers", type=int, default=4, help="concurrent LLM requests")
    g = p.add_argument_group("file")
    g.add_argument("--file", help="table of gene and text (parquet/CSV/TSV/JSON)")
    g.add_argument("--gene-column")
    g.add_argument("--text-column")
    g = p.add_argument_group("network and cache")
    g.add_argument("--cache-dir", help="cache root (default: $GENEPT_FAST_CACHE_DIR or ~/.cache)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    g.add_argument("--refresh", action="store_true", help="ignore cached answers")
    g.add_argument("--timeout", type=float, default=20.0, help="seconds per request")
    g.add_argument("--retries", type=int, default=4, help="retries on 429/5xx/timeouts")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
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

    from genept_fast._http import HttpError
    from genept_fast.genes.text import gene_texts, write_texts

    genes = read_gene_list(args.genes)
    if not genes:
        msg = f"no genes in {args.genes!r}"
        raise GeneptError(msg)
    if args.source == "file" and not args.file:
        msg = "--source file needs --file TABLE"
        raise GeneptError(msg)
    cache_dir: str | bool | None = False if args.no_cache else args.cache_dir
    options: dict[str, Any] = {
        "source": args.source,
        "species": args.species,
        "to_human": args.to_human,
        "cache_dir": cache_dir,
        "refresh": args.refresh,
        "progress": not args.quiet,
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
        "max_workers": args.workers,
        "path": args.file,
        "gene_column": args.gene_column,
        "text_column": args.text_column,
        "timeout": args.timeout,
        "max_retries": args.retries,
    }
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            df = gene_texts(genes, **options)
    except (HttpError, ConnectionError) as exc:
        print(f"genept-fast gene-text: error: {exc}", file=sys.stderr)
        return 1
    for w in caught:  # the NCBI fallback says so, on stderr, without a traceback
        print(f"genept-fast gene-text: {w.message}", file=sys.stderr)
    meta = {"genept_fast.text_source": args.source}
    if args.source == "llm":
        meta["genept_fast.llm_model"] = args.model
    out = write_texts(df, args.output, metadata=meta)
    if not args.quiet:
        print(summarize(df))
        print(f"wrote {out}")
    return 0
