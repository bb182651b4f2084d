"""scanpy-shaped tools: GenePT-w and GenePT-s cell embeddings of an AnnData.

Both tools take the AnnData first and keyword-only options, write the embedding to
``adata.obsm[key_added]`` and the parameters and provenance (model, text source, genes matched,
matrix used) to ``adata.uns[key_added]``, and return ``None`` — or a modified copy with
``copy=True``. The user's expression matrix is never modified: raw counts are log-normalised
by the kernel as it reads them.

Also here: ``transfer_labels`` and ``build_reference`` (cell-type annotation from a labelled
reference), defined in :mod:`genept_fast.annotate`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast import kernels
from genept_fast.annotate import build_reference, transfer_labels
from genept_fast.encode import (
    SentenceBuilder,
    as_embedder,
    compact_table,
    load_table,
    match_table,
    resolve_gene_symbols,
    sentence_record,
    weighted_record,
)
from genept_fast.errors import InputError
from genept_fast.preprocess import (
    AUTO_SAMPLE_CELLS,
    Preprocess,
    has_negative,
    resolve_preprocess,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import anndata as ad
    import pandas as pd

    from genept_fast.embed import CostEstimate, Embedder
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

#: Cells read, preprocessed and encoded at a time (bounds the temporary memory).
CHUNK_CELLS = 10_000


@dataclass
class _Matrix:
    """The expression matrix a tool reads, and what it is."""

    X: Any
    var_names: list[str]
    var: pd.DataFrame
    description: str
    backed: bool


def _select_matrix(adata: ad.AnnData, layer: str | None, use_raw: bool | None) -> _Matrix:
    if layer is not None and use_raw:
        msg = "give either layer= or use_raw=True, not both"
        raise InputError(msg)
    if use_raw is None:
        use_raw = layer is None and adata.raw is not None
    if use_raw:
        if adata.raw is None:
            msg = "use_raw=True but adata.raw is None"
            raise InputError(msg)
        raw = adata.raw
        return _Matrix(raw.X, list(map(str, raw.var_names)), raw.var, "adata.raw.X", adata.isbacked)
    if layer is not None:
        if layer not in adata.layers:
            msg = f"layer {layer!r} not found; adata.layers has {list(adata.layers.keys())}"
            raise InputError(msg)
        X, desc = adata.layers[layer], f"adata.layers[{layer!r}]"
    else:
        X, desc = adata.X, "adata.X"
    if X is None:
        msg = f"{desc} is empty (None)"
        raise InputError(msg)
    return _Matrix(X, list(map(str, adata.var_names)), adata.var, desc, adata.isbacked)


def _chunks(X: Any, n: int, chunk: int) -> Iterator[tuple[int, int, Any]]:
    """Row chunks as in-memory matrices (reads only those rows of a backed matrix)."""
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        yield a, b, X[a:b]


def _sample(X: Any, n: int, rows: int = AUTO_SAMPLE_CELLS) -> Any:
    return X[: min(n, rows)]


def _decide_preprocess(m: _Matrix, n_obs: int, preprocess: Preprocess) -> tuple[Preprocess, bool]:
    """Resolve ``auto`` once for the whole matrix (so that every chunk is treated alike)."""
    sample = _sample(m.X, n_obs)
    preprocess = resolve_preprocess(preprocess, lambda: sample)
    if preprocess == "none" and has_negative(sample):
        warnings.warn(
            f"{m.description} has negative values (scaled data?). GenePT weighs gene embeddings "
            "by expression; pass the log-normalised matrix (layer=... or use_raw=True).",
            UserWarning,
            stacklevel=3,
        )
    return preprocess, preprocess == "log1p"


def _start(adata: ad.AnnData, copy: bool) -> ad.AnnData:
    if copy:
        if adata.isbacked:
            msg = "copy=True is not supported for backed AnnData; use adata.to_memory() first"
            raise InputError(msg)
        return adata.copy()
    return adata


def _embedded_column(adata: ad.AnnData, m: _Matrix, key: str, embedded: np.ndarray) -> None:
    """``var[f"{key}_embedded"]``: whether each gene of ``adata.var`` has an embedding."""
    col = f"{key}_embedded"
    if m.var_names == list(map(str, adata.var_names)):
        adata.var[col] = embedded
    else:  # .raw has other genes: report those that are also in var
        lookup = dict(zip(m.var_names, embedded, strict=True))
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
        The matrix to read: ``adata.layers[layer]``, ``adata.raw.X`` (``use_raw=True``; the
        default when ``adata.raw`` exists and no layer is given), else ``adata.X``.
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
        Where the result goes.
    chunk_size
        Cells per chunk (bounds temporary memory).
    n_threads
        Kernel threads (default all cores, capped by ``GENEPT_FAST_NUM_THREADS``).
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or the copy with ``copy=True``. Sets

    - ``adata.obsm[key_added]``: float32 ``(n_obs, D)``; a cell with no embedded gene
      expressed is all zeros;
    - ``adata.uns[key_added]``: ``{"params": {...}, "coverage": {...}}`` (model, dimension,
      text source, matrix, preprocessing, genes matched);
    - ``adata.var[f"{key_added}_embedded"]``: whether each gene has an embedding.
    """
    adata = _start(adata, copy) if copy else adata
    table = load_table(gene_embeddings)
    m = _select_matrix(adata, layer, use_raw)
    if m.X.shape[1] != len(m.var_names):
        msg = f"{m.description} has {m.X.shape[1]} columns but {len(m.var_names)} gene names"
        raise InputError(msg)
    match = match_table(table, m.var_names, m.var, gene_key=gene_key, what=m.description)
    log.info("GenePT-w: %s", match.coverage)
    how, lognorm = _decide_preprocess(m, adata.n_obs, preprocess)
    prepared = kernels.prepare_embeddings(match.rows, n_threads=n_threads)
    out = np.zeros((adata.n_obs, table.dimension), dtype=np.float32)
    for a, b, chunk in _chunks(m.X, adata.n_obs, max(int(chunk_size), 1)):
        kernels.weighted_embedding(
            chunk,
            prepared,
            gene_index=match.index,
            n_threads=n_threads,
            out=out[a:b],
            preprocess=how,
            row_offset=a,
        )
    adata.obsm[key_added] = out
    adata.uns[key_added] = weighted_record(
        match,
        matrix=m.description,
        layer=layer,
        use_raw=m.description == "adata.raw.X",
        preprocess="normalize_total(1e4) + log1p" if lognorm else "none",
        normalize=True,
    )
    _embedded_column(adata, m, key_added, match.embedded)
    return adata if copy else None


def _warn_negative(m: _Matrix, n_obs: int) -> None:
    if has_negative(_sample(m.X, n_obs)):
        warnings.warn(
            f"{m.description} has negative values (scaled data?). GenePT-s ranks genes by "
            "expression; pass the log-normalised or count matrix (layer=... or use_raw=True).",
            UserWarning,
            stacklevel=3,
        )


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

    Parameters
    ----------
    adata
        Cells × genes (in memory or backed).
    embedder
        An :class:`~genept_fast.embed.Embedder` or a spec for
        :func:`~genept_fast.embed.get_embedder` (``"local"``, ``"openai:text-embedding-3-small"``).
    layer, use_raw, gene_key
        As in :func:`genept_w`. Ranking is the same on counts and on log-normalised values
        within a cell, so no preprocessing is applied (scaled values with negatives warn).
    top_n
        Most genes per sentence (default: as many as fit the model's input limit).
    prefix, sep
        Sentence prefix and gene separator.
    max_input_tokens
        Cut sentences at this many tokens (default and maximum: the model's input limit).
    key_added
        Where the result goes.
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
    ``None`` (or the copy, or the estimate with ``dry_run``). Sets

    - ``adata.obsm[key_added]``: float32 ``(n_obs, D)``;
    - ``adata.obs[f"{key_added}_n_genes"]``: genes in each cell's sentence;
    - ``adata.uns[key_added]["params"]``: model, dimension, prefix, top_n (as it acts: at most
      the number of genes), token limit, genes per sentence, cells cut at the token limit,
      distinct sentences.
    """
    emb = as_embedder(embedder)
    target = adata if dry_run else (_start(adata, copy) if copy else adata)
    m = _select_matrix(target, layer, use_raw)
    if m.X.shape[1] != len(m.var_names):
        msg = f"{m.description} has {m.X.shape[1]} columns but {len(m.var_names)} gene names"
        raise InputError(msg)
    symbols, symbol_source = resolve_gene_symbols(m.var_names, m.var, gene_key=gene_key)
    builder = SentenceBuilder(
        emb,
        symbols,
        top_n=top_n,
        prefix=prefix,
        sep=sep,
        max_input_tokens=max_input_tokens,
        n_threads=n_threads,
    )
    if not builder.usable.any():
        msg = f"no gene of {m.description} has a symbol ({symbol_source}); check gene_key="
        raise InputError(msg)
    _warn_negative(m, target.n_obs)

    sentences: list[str] = []
    kept_all = np.zeros(target.n_obs, dtype=np.int64)
    cut_all = np.zeros(target.n_obs, dtype=bool)
    tokens = np.zeros(target.n_obs, dtype=np.int64)
    for a, b, chunk in _chunks(m.X, target.n_obs, max(int(chunk_size), 1)):
        s, kept_all[a:b], cut_all[a:b], tokens[a:b] = builder.build_counted(chunk, row_offset=a)
        sentences.extend(s)
    counts = tokens.tolist()
    if dry_run or emb.is_paid:
        estimate = emb.estimate(sentences, token_counts=counts)
        log.warning("GenePT-s (%s): %s", emb.model_id, estimate)
        if dry_run:
            return estimate
    vectors = emb.embed(sentences, progress=progress, token_counts=counts)
    target.obsm[key_added] = np.ascontiguousarray(vectors, dtype=np.float32)
    target.obs[f"{key_added}_n_genes"] = kept_all
    target.uns[key_added] = sentence_record(
        builder,
        emb,
        dimension=int(vectors.shape[1]),
        matrix=m.description,
        gene_symbols=symbol_source,
        layer=layer,
        use_raw=m.description == "adata.raw.X",
        genes_per_sentence_mean=float(kept_all.mean()) if len(kept_all) else 0.0,
        genes_per_sentence_max=int(kept_all.max()) if len(kept_all) else 0,
        cells_cut_at_token_limit=int(cut_all.sum()),
        cells_without_genes=int((kept_all == 0).sum()),
        distinct_sentences=len({t for t in sentences if t}),
    )
    return target if copy else None
