"""scanpy-shaped tools: GenePT-w and GenePT-s cell embeddings of an AnnData.

Both tools take the AnnData first and keyword-only options, write the embedding to
``adata.obsm[key_added]`` and the parameters and provenance (model, text source, genes matched,
matrix used) to ``adata.uns[key_added]``, and return ``None`` — or a modified copy with
``copy=True``. The user's expression matrix is never modified: raw counts are log-normalised
by the kernel as it reads them. Both start their job in :mod:`genept_fast.encode` and encode
with its encoders, as the stream, Dask and the command line do: the same cells give the same
embedding and the same ``uns`` record on every path.

Also here: ``transfer_labels`` and ``build_reference`` (cell-type annotation from a labelled
reference), defined in :mod:`genept_fast.annotate`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from genept_fast import kernels
from genept_fast._outputs import check_key
from genept_fast.annotate import build_reference, transfer_labels
from genept_fast.encode import (
    SentenceBuilder,
    compact_table,
    load_table,
    merge_uns,
    resolve_gene_symbols,
    start_sentences,
    start_weighted,
)
from genept_fast.encode.job import CHUNK_CELLS
from genept_fast.encode.static import StaticSentenceEncoder
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    import anndata as ad

    from genept_fast.embed import CostEstimate, Embedder
    from genept_fast.encode import SentenceJob, WeightedJob
    from genept_fast.preprocess import Preprocess
    from genept_fast.table import GeneEmbeddings

__all__ = [
    "CHUNK_CELLS",
    "SentenceBuilder",
    "build_reference",
    "compact_table",
    "genept_s",
    "genept_w",
    "resolve_gene_symbols",
    "transfer_labels",
]

log = logging.getLogger(__name__)


def _start(adata: ad.AnnData, key_added: str, copy: bool) -> ad.AnnData:
    check_key(key_added)
    if copy:
        if adata.isbacked:
            msg = "copy=True is not supported for backed AnnData; use adata.to_memory() first"
            raise InputError(msg)
        return adata.copy()
    return adata


def _embedded_column(adata: ad.AnnData, job: WeightedJob, key: str) -> None:
    """``var[f"{key}_embedded"]``: whether each gene of ``adata.var`` has an embedding."""
    assert job.match is not None  # tl always matches a table
    col = f"{key}_embedded"
    names, embedded = job.cells.source.var_names, job.match.embedded
    if names == list(map(str, adata.var_names)):
        adata.var[col] = embedded
    else:  # .raw has other genes: report those that are also in var
        lookup = dict(zip(names, embedded, strict=True))
        adata.var[col] = np.array([bool(lookup.get(str(g), False)) for g in adata.var_names])


def genept_w(
    adata: ad.AnnData,
    gene_embeddings: GeneEmbeddings | str | Path,
    *,
    layer: str | None = None,
    use_raw: bool | None = None,
    gene_key: str | None = None,
    preprocess: Preprocess = "auto",
    key_added: str = "X_genept_w",
    chunk_size: int = CHUNK_CELLS,
    n_threads: int | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """GenePT-w: each cell's expression-weighted sum of gene embeddings, L2-normalised.

    Parameters
    ----------
    adata
        Cells × genes. In-memory or backed (``read_h5ad(..., backed="r")``: rows are read one
        chunk at a time).
    gene_embeddings
        A :class:`~genept_fast.table.GeneEmbeddings` table, or a path to one (our parquet, or
        GenePT's published pickle).
    layer, use_raw
        The matrix to read (:func:`genept_fast.cells.choose_matrix`, the rule of every path):
        ``adata.layers[layer]``, ``adata.raw.X`` (``use_raw=True``; the default when
        ``adata.raw`` exists and no layer is given), else ``adata.X``. A matrix whose first
        cells have negative values (scaled data) is refused.
    gene_key
        A ``var`` column of gene identifiers to match first, ``var_names`` second. Default:
        ``var_names`` first, then a symbol column of ``var`` (``gene_symbols``,
        ``feature_name``, ...) if there is one. Any form matches a table keyed by any other
        (symbols, previous/alias symbols, Ensembl IDs with or without version, Entrez IDs,
        mouse genes): see :meth:`GeneEmbeddings.index_for`.
    preprocess
        ``"auto"``: raw counts are normalised to 10,000 per cell and ``log1p``-transformed (by
        the kernel as it reads them, no copy); ``"log1p"``: always; ``"none"``: use the values
        as they are.
    key_added
        Where the result goes (a plain, non-empty name).
    chunk_size
        Cells per chunk (bounds temporary memory).
    n_threads
        Kernel threads (default all cores, capped by ``GENEPT_FAST_NUM_THREADS``).
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    anndata.AnnData or None
        ``None``, or the copy with ``copy=True``.

    Notes
    -----
    Sets:

    - ``adata.obsm[key_added]``: float32 ``(n_obs, D)``; a cell with no embedded gene
      expressed is all zeros;
    - ``adata.uns[key_added]``: ``{"params": {...}, "coverage": {...}}`` (model,
      dimension, text source, ``matrix`` — ``"X"``, ``"raw/X"`` or ``"layers/<name>"`` —,
      ``preprocess`` — ``"log1p"`` or ``"none"`` —, genes matched), the record every path
      writes (:func:`genept_fast.encode.weighted_record`);
    - ``adata.var[f"{key_added}_embedded"]``: whether each gene has an embedding.
    """
    adata = _start(adata, key_added, copy)
    with start_weighted(
        adata,
        load_table(gene_embeddings),
        gene_key=gene_key,
        layer=layer,
        use_raw=use_raw,
        preprocess=preprocess,
        chunk_size=chunk_size,
        n_threads=n_threads,
    ) as job:
        log.info("GenePT-w: %s", job.summary)
        out = np.zeros((adata.n_obs, job.encoder.dim), dtype=np.float32)
        for a, b, chunk in job.cells.chunks():
            job.encoder(chunk, row_offset=a, out=out[a:b])
    adata.obsm[key_added] = out
    adata.uns[key_added] = job.record
    _embedded_column(adata, job, key_added)
    return adata if copy else None


def genept_s(
    adata: ad.AnnData,
    embedder: Embedder | str = "local",
    *,
    layer: str | None = None,
    use_raw: bool | None = None,
    gene_key: str | None = None,
    top_n: int | None = None,
    prefix: str = kernels.DEFAULT_PREFIX,
    sep: str = " ",
    max_input_tokens: int | None = None,
    key_added: str = "X_genept_s",
    chunk_size: int = CHUNK_CELLS,
    dry_run: bool = False,
    progress: bool = False,
    n_threads: int | None = None,
    copy: bool = False,
) -> ad.AnnData | CostEstimate | None:
    """GenePT-s: each cell written as a sentence of its top genes, embedded by a text model.

    A cell's expressed genes, ranked by expression (ties by gene order), are written after
    ``prefix`` ("A cell with genes ranked by expression: CD74 HLA-DRA ..."), up to ``top_n``
    genes and never past the model's input limit: the sentence is cut at a gene boundary.
    Identical sentences are embedded once, and every embedding is cached by content (by the
    embedder's cache). A cell with no expressed gene that has a symbol gets a zero vector.
    With a static model (``embedder="wordllama"``) the sentences are not written: their mean
    token vectors are summed gene by gene by the kernel (:mod:`genept_fast.encode.static`),
    equal to the model's embedding of each full sentence, thousands of cells a second, with no
    token limit (``top_n`` may reach every expressed gene).

    Parameters
    ----------
    adata
        Cells × genes (in memory or backed).
    embedder
        An :class:`~genept_fast.embed.Embedder` or a spec for
        :func:`~genept_fast.embed.get_embedder` (``"local"``, ``"wordllama"``,
        ``"openai:text-embedding-3-small"``).
    layer, use_raw, gene_key
        As in :func:`genept_w`. Ranking is the same on counts and on log-normalised values
        within a cell, so no preprocessing is applied (scaled values, with negatives, are
        refused).
    top_n
        Most genes per sentence (default: as many as fit the model's input limit; with a static
        model, which has no limit, 25: :data:`genept_fast.encode.static.DEFAULT_TOP_N`, the
        best range measured on PBMCs; any number up to every expressed gene may be asked).
    prefix, sep
        Sentence prefix and gene separator.
    max_input_tokens
        Cut sentences at this many tokens (default and maximum: the model's input limit).
    key_added
        Where the result goes (a plain, non-empty name).
    chunk_size
        Cells read and ranked at a time.
    dry_run
        Build the sentences, log the token count, price and expected time, embed nothing and
        return the :class:`~genept_fast.embed.CostEstimate` (``adata`` is left untouched).
    progress
        Show a progress bar while embedding.
    n_threads
        Threads for the ranking kernel.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    anndata.AnnData or genept_fast.embed.CostEstimate or None
        ``None`` (or the copy, or the estimate with ``dry_run``).

    Notes
    -----
    Sets:

    - ``adata.obsm[key_added]``: float32 ``(n_obs, D)``;
    - ``adata.obs[f"{key_added}_n_genes"]``: genes in each cell's sentence;
    - ``adata.uns[key_added]["params"]``: model, dimension, prefix, top_n (as it acts: at
      most the number of genes), token limit, genes per sentence, cells cut at the token
      limit, distinct sentences.
    """
    target = _start(adata, key_added, copy and not dry_run)
    with start_sentences(
        target,
        embedder,
        gene_key=gene_key,
        top_n=top_n,
        prefix=prefix,
        sep=sep,
        max_input_tokens=max_input_tokens,
        n_threads=n_threads,
        layer=layer,
        use_raw=use_raw,
        chunk_size=chunk_size,
    ) as job:
        enc = job.encoder
        if isinstance(enc, StaticSentenceEncoder) and not dry_run:
            vectors, kept_all, cut_all, n_distinct = _encode_static(job, enc)
            _write_s(target, key_added, job, vectors, kept_all, cut_all, n_distinct)
            return target if copy else None
        sentences, kept_all, cut_all, tokens = job.build_all()
    counts = tokens.tolist()
    if dry_run or enc.embedder.is_paid:
        estimate = enc.embedder.estimate(sentences, token_counts=counts)
        log.warning("GenePT-s (%s): %s", enc.embedder.model_id, estimate)
        if dry_run:
            return estimate
    vectors = enc.embed(sentences, counts, progress=progress)
    n_distinct = len({t for t in sentences if t})
    _write_s(target, key_added, job, vectors, kept_all, cut_all, n_distinct)
    return target if copy else None


def _encode_static(
    job: SentenceJob, enc: StaticSentenceEncoder
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A static model's GenePT-s, chunk by chunk through the kernel: vectors, genes per
    sentence, cells cut, distinct non-empty sentences."""
    n = int(job.cells.source.n_cells)
    vectors = np.zeros((n, int(enc.gene_sums.shape[1])), dtype=np.float32)
    kept = np.zeros(n, dtype=np.int64)
    cut = np.zeros(n, dtype=bool)
    digests = np.zeros((n, 2), dtype=np.uint64)
    for a, b, chunk in job.cells.chunks():
        done = enc.encode(chunk, row_offset=a, distinct=True)
        vectors[a:b], kept[a:b], cut[a:b] = done.vectors, done.kept, done.cut
        digests[a:b] = done.digests
    n_distinct = int(np.unique(digests[kept > 0], axis=0).shape[0])
    return vectors, kept, cut, n_distinct


def _write_s(
    target: ad.AnnData,
    key_added: str,
    job: SentenceJob,
    vectors: np.ndarray,
    kept_all: np.ndarray,
    cut_all: np.ndarray,
    n_distinct: int,
) -> None:
    target.obsm[key_added] = np.ascontiguousarray(vectors, dtype=np.float32)
    target.obs[f"{key_added}_n_genes"] = kept_all
    stats = {
        "genes_per_sentence_mean": float(kept_all.mean()) if len(kept_all) else 0.0,
        "genes_per_sentence_max": int(kept_all.max()) if len(kept_all) else 0,
        "cells_cut_at_token_limit": int(cut_all.sum()),
        "cells_without_genes": int((kept_all == 0).sum()),
        "distinct_sentences": n_distinct,
    }
    target.uns[key_added] = merge_uns(job.record(int(vectors.shape[1])), {"params": stats})
