"""Gene texts from a user table (parquet, CSV, TSV, JSON, JSON lines), or a JSON object mapping
symbol → text such as GenePT's ``NCBI_summary_of_genes.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from genept_fast.errors import InputError

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence

__all__ = ["file_lookup"]

_GENE_COLUMNS = ("gene", "symbol", "gene_symbol", "gene_name", "genes", "name")
_TEXT_COLUMNS = ("text", "summary", "description", "gene_text")


def _read_table(path: Path) -> pl.DataFrame:
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pl.read_parquet(path)
    if suffix in (".csv", ".csv.gz"):
        return pl.read_csv(path, infer_schema_length=0)
    if suffix in (".tsv", ".tab", ".txt", ".tsv.gz"):
        return pl.read_csv(path, separator="\t", infer_schema_length=0)
    if suffix in (".jsonl", ".ndjson"):
        return pl.read_ndjson(path)
    if suffix == ".json":
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
        if (
            isinstance(data, dict)
            and data
            and all(isinstance(v, (str, type(None))) for v in data.values())
        ):
            return pl.DataFrame(
                {"gene": list(data), "text": list(data.values())},
                schema={"gene": pl.String, "text": pl.String},
            )
        if isinstance(data, list):
            return pl.DataFrame(data, infer_schema_length=None)
        if isinstance(data, dict):
            return pl.DataFrame(data)
        msg = f"{path}: JSON must be an object gene → text or a list of records"
        raise InputError(msg)
    msg = f"{path}: unknown table format {path.suffix!r} (use parquet, csv, tsv, json or jsonl)"
    raise InputError(msg)


def _pick(
    columns: Sequence[str], wanted: str | None, options: Sequence[str], what: str, path: Path
) -> str:
    if wanted is not None:
        if wanted not in columns:
            msg = f"{path}: no column {wanted!r} (columns: {', '.join(columns)})"
            raise InputError(msg)
        return wanted
    lower = {c.lower(): c for c in columns}
    for option in options:
        if option in lower:
            return lower[option]
    msg = (
        f"{path}: cannot tell which column holds the {what} (columns: {', '.join(columns)}); "
        f"name it with {what}_column="
    )
    raise InputError(msg)


def file_lookup(
    path: str | os.PathLike[str], gene_column: str | None, text_column: str | None
) -> Callable[[str | None, str], str | None]:
    """The table at ``path`` as a function ``(key, gene as given) -> text``: the gene as given,
    then the key, exactly; then either in another case when that is unique.

    Raises
    ------
    FileNotFoundError
        No such file.
    InputError
        An unknown format, or a gene or text column that cannot be told or is not there.
    """
    path = Path(path)
    if not path.exists():
        msg = f"text table not found: {path}"
        raise FileNotFoundError(msg)
    table = _read_table(path)
    gcol = _pick(table.columns, gene_column, _GENE_COLUMNS, "gene", path)
    tcol = _pick([c for c in table.columns if c != gcol], text_column, _TEXT_COLUMNS, "text", path)
    exact: dict[str, str | None] = {}
    upper: dict[str, list[str | None]] = {}
    for gene, text in table.select(
        pl.col(gcol).cast(pl.String), pl.col(tcol).cast(pl.String)
    ).iter_rows():
        if gene is None:
            continue
        gene = gene.strip()
        text = " ".join(text.split()) if text else None
        exact.setdefault(gene, text)
        upper.setdefault(gene.upper(), []).append(text)

    def lookup(key: str | None, raw: str) -> str | None:
        for k in (raw.strip(), key):
            if k and k in exact:
                return exact[k]
        for k in (raw.strip(), key):
            if k and len(upper.get(k.upper(), [])) == 1:
                return upper[k.upper()][0]
        return None

    return lookup
