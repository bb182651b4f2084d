"""Streamed GenePT-w: :func:`encode_file` with the Rust weighted-sum kernel as the encoder."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from genept_fast.encode import WeightedEncoder, match_table, weighted_record
from genept_fast.errors import InputError
from genept_fast.stream.pipeline import StreamReport, encode_file
from genept_fast.stream.sources import ChunkSource, open_source, source_matrix, source_var

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    import numpy as np
    import numpy.typing as npt

    from genept_fast.table import GeneEmbeddings

__all__ = ["encode_weighted"]

log = logging.getLogger("genept_fast.stream")


def _match_source(
    table: GeneEmbeddings,
    source: ChunkSource,
    *,
    gene_index: npt.ArrayLike | None,
    gene_key: str | None,
    uns: Mapping[str, Any] | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The rows of ``table`` a source uses, the map to them, and the provenance to store (the
    caller's ``uns`` merged over the GenePT-w record)."""
    if gene_index is not None:
        msg = "gene_index= is for a plain matrix; a GeneEmbeddings table is matched by gene name"
        raise InputError(msg)
    match = match_table(
        table, source.var_names, source_var(source), gene_key=gene_key, what=source.name
    )
    log.info("GenePT-w on %s: %s", source.name, match.coverage)
    record = weighted_record(match, matrix=source_matrix(source))
    extra = dict(uns or {})
    params = {**record["params"], **dict(extra.pop("params", None) or {})}
    return match.rows, match.index, {**record, **extra, "params": params}


def encode_weighted(
    input: str | os.PathLike[str] | ChunkSource,
    output: str | os.PathLike[str],
    gene_embeddings: npt.ArrayLike | GeneEmbeddings,
    *,
    gene_index: npt.ArrayLike | None = None,
    normalize: bool = True,
    n_threads: int | None = None,
    gene_key: str | None = None,
    **kw: Any,
) -> StreamReport:
    """GenePT-w embeddings of every cell of a large AnnData file, streamed to ``output``.

    :func:`encode_file` with the Rust weighted-sum kernel as the encoder.

    Parameters
    ----------
    input, output
        As for :func:`encode_file`.
    gene_embeddings
        A :class:`~genept_fast.table.GeneEmbeddings` table, matched to the file's genes
        through the gene identity layer (:func:`genept_fast.encode.match_table`: ``var_names``,
        then a symbol column of ``var``; only the rows in use are kept; the coverage goes into
        the output's provenance, :func:`genept_fast.encode.weighted_record`), or a genes × D
        matrix (float32; float64 is cast once).
    gene_index
        For a matrix: length-``n_genes`` integer array mapping the file's gene columns to rows
        of ``gene_embeddings`` (``-1``: no embedding). Default: row ``j`` embeds column ``j``,
        which needs one row per gene of the file.
    normalize
        L2-normalise each cell's embedding.
    n_threads
        Kernel threads (default: all cores, capped by ``GENEPT_FAST_NUM_THREADS``).
    gene_key
        For a table: a ``var`` column of gene identifiers to match first, ``var_names`` second
        (as :func:`genept_fast.tl.genept_w`).
    **kw
        Passed to :func:`encode_file` (``layer``, ``use_raw``, ``preprocess``, ``chunk_size``,
        ``output_dtype``, ``key``, ``progress``, ``resume``).

    Returns
    -------
    :class:`StreamReport`; the embeddings are in ``output``.
    """
    if "encoder" in kw or "dim" in kw:
        msg = "encode_weighted builds the encoder itself; do not pass encoder= or dim="
        raise InputError(msg)
    own = not isinstance(input, ChunkSource)
    source: ChunkSource
    if isinstance(input, ChunkSource):
        source = input
    else:
        source = open_source(input, layer=kw.pop("layer", None), use_raw=kw.pop("use_raw", False))
    try:
        from genept_fast import table

        matrix: npt.ArrayLike
        if isinstance(gene_embeddings, table.GeneEmbeddings):
            matrix, gene_index, kw["uns"] = _match_source(
                gene_embeddings, source, gene_index=gene_index, gene_key=gene_key, uns=kw.get("uns")
            )
        else:
            if gene_key is not None:
                msg = "gene_key= is for a GeneEmbeddings table; a matrix is mapped by gene_index="
                raise InputError(msg)
            matrix = gene_embeddings
        enc = WeightedEncoder(
            matrix, gene_index=gene_index, normalize=normalize, n_threads=n_threads
        )
        expected = source.n_genes
        if enc.gene_index is not None and enc.gene_index.shape[0] != expected:
            msg = (
                f"gene_index has {enc.gene_index.shape[0]} entries but {source.name} has "
                f"{expected} genes"
            )
            raise InputError(msg)
        if enc.gene_index is None and enc.shape[0] != expected:
            msg = (
                f"gene_embeddings has {enc.shape[0]} rows but {source.name} has "
                f"{expected} genes; pass gene_index= to map genes to rows"
            )
            raise InputError(msg)
        return encode_file(source, output, encoder=enc, dim=enc.dim, **kw)
    finally:
        if own:
            source.close()
