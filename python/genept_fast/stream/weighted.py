"""Streamed GenePT-w: a started GenePT-w job (:func:`genept_fast.encode.start_weighted`)
whose chunks go to a file (:func:`genept_fast.stream.encode_cells`)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from genept_fast.encode import merge_uns, start_weighted
from genept_fast.errors import InputError
from genept_fast.stream.pipeline import StreamReport, check_output_args, encode_cells

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

    from genept_fast.cells import ChunkSource
    from genept_fast.table import GeneEmbeddings

__all__ = ["encode_weighted"]


def encode_weighted(
    input: str | os.PathLike[str] | ChunkSource,
    output: str | os.PathLike[str],
    gene_embeddings: npt.ArrayLike | GeneEmbeddings | str | Path,
    *,
    gene_index: npt.ArrayLike | None = None,
    normalize: bool = True,
    n_threads: int | None = None,
    gene_key: str | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    preprocess: str = "auto",
    chunk_size: int = 10_000,
    output_dtype: str = "float32",
    key: str = "X_genept_w",
    uns: dict[str, Any] | None = None,
    overwrite: bool = False,
    gene_key_flag: str = "gene_key=",
    **kw: Any,
) -> StreamReport:
    """GenePT-w embeddings of every cell of a large AnnData file, streamed to ``output``.

    The job starts as every GenePT-w job does (:func:`genept_fast.encode.start_weighted`: the
    cells opened once, scaled first cells refused, ``preprocess`` resolved, the genes matched)
    and its :class:`~genept_fast.encode.WeightedEncoder` encodes each chunk as
    :func:`genept_fast.tl.genept_w` does, to the same bits.

    Parameters
    ----------
    input, output
        As for :func:`encode_file`.
    gene_embeddings
        A :class:`~genept_fast.table.GeneEmbeddings` table or a path to one (our parquet, or
        GenePT's pickle), matched to the file's genes through the gene identity layer
        (:func:`genept_fast.encode.match_table`: ``var_names``, then a symbol column of ``var``;
        only the rows in use are kept; the coverage goes into the output's provenance), or a
        genes × D matrix (float32; float64 is cast once).
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
        (as :func:`genept_fast.tl.genept_w`). ``gene_key_flag``: how messages name it.
    layer, use_raw, preprocess, chunk_size, output_dtype, key, uns, overwrite
        As for :func:`encode_file` (the matrix by :func:`genept_fast.cells.choose_matrix`:
        ``raw/X`` when the file has it and no layer is given).
    **kw
        Passed to :func:`encode_file` (``progress``, ``resume``).

    Returns
    -------
    :class:`StreamReport`; the embeddings are in ``output``, its ``summary`` names the matrix
    and the genes matched.
    """
    if "encoder" in kw or "dim" in kw:
        msg = "encode_weighted builds the encoder itself; do not pass encoder= or dim="
        raise InputError(msg)
    t0 = time.perf_counter()
    out = check_output_args(
        input,
        output,
        key=key,
        output_dtype=output_dtype,
        overwrite=overwrite,
        inputs=[gene_embeddings] if isinstance(gene_embeddings, (str, os.PathLike)) else [],
    )
    with start_weighted(
        input,
        gene_embeddings,
        gene_index=gene_index,
        gene_key=gene_key,
        layer=layer,
        use_raw=use_raw,
        preprocess=preprocess,
        chunk_size=chunk_size,
        normalize=normalize,
        n_threads=n_threads,
        gene_key_flag=gene_key_flag,
    ) as job:
        summary = job.summary
        # The encoder holds the rows it reads; the match also holds the whole table it was
        # matched against and its own copy of the rows in use. Let them go before the chunks
        # come: 20,000 genes × D = 1536 is 117 MiB each (issue 21 goal 3: the stream's peak).
        job.match = None
        report = encode_cells(
            job.cells,
            out,
            encoder=job.encoder,
            dim=job.encoder.dim,
            fused=True,
            uns=merge_uns(job.record, uns),
            t0=t0,
            **kw,
        )
    report.summary = summary
    return report
