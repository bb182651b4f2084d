"""Gene text tables on disk: parquet, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from genept_fast._atomic import atomic_path
from genept_fast._outputs import check_output
from genept_fast.errors import InputError
from genept_fast.text.base import TEXT_SCHEMA

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

__all__ = ["read_texts", "write_texts"]


def _check(df: pl.DataFrame, where: str) -> None:
    missing = [c for c in TEXT_SCHEMA if c not in df.columns]
    if missing:
        msg = f"{where}: not a gene text table, missing column(s) {', '.join(missing)}"
        raise InputError(msg)


def write_texts(
    df: pl.DataFrame,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a :func:`~genept_fast.text.gene_texts` table to parquet atomically (temp file +
    rename).

    Parameters
    ----------
    df
        Columns ``gene``, ``text``, ``source``, ``fetched_at`` (others are kept).
    path
        Destination ``.parquet`` file; its folder is created if needed.
    metadata
        Extra key-value metadata for the parquet footer (never put secrets here).
    overwrite
        Replace an existing file (refused otherwise; a directory is never replaced).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    _check(df, "write_texts")
    out = check_output(path, overwrite=overwrite)
    meta = {"genept_fast.table": "gene_texts", **(metadata or {})}
    with atomic_path(out) as tmp:
        df.write_parquet(tmp, metadata=meta)
    return out


def read_texts(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read a gene text table written by :func:`write_texts` (or any parquet with its columns)."""
    p = Path(path)
    if not p.exists():
        msg = f"gene text table not found: {p}"
        raise FileNotFoundError(msg)
    df = pl.read_parquet(p)
    _check(df, str(p))
    return df
