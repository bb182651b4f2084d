"""The one provenance record of a cell embedding, as ``tl`` stores it in ``adata.uns[key]``
and the streaming pipeline in its output (``uns[key]`` of an ``.h5ad``, the attributes of a
``.zarr`` group, the metadata of a ``.parquet`` file)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genept_fast.embed import Embedder
    from genept_fast.encode.genes import TableMatch
    from genept_fast.encode.sentences import SentenceBuilder

__all__ = ["sentence_record", "weighted_record"]


def weighted_record(match: TableMatch, *, matrix: str, **params: Any) -> dict[str, Any]:
    """GenePT-w: ``{"params": {...}, "coverage": {...}}``.

    ``params`` holds the method, model, dimension, text source, the matrix read and how the
    genes were identified, then the caller's ``params`` (layer, preprocessing...).
    """
    table = match.table
    return {
        "params": {
            "method": "GenePT-w",
            "model": table.model_id,
            "dimension": int(table.dimension),
            "text_source": table.text_source,
            "matrix": matrix,
            "gene_symbols": match.gene_symbols,
            **params,
        },
        "coverage": match.coverage.as_dict(),
    }


def sentence_record(
    builder: SentenceBuilder,
    embedder: Embedder,
    *,
    dimension: int,
    matrix: str,
    gene_symbols: str,
    **params: Any,
) -> dict[str, Any]:
    """GenePT-s: ``{"params": {...}}`` (model, dimension, matrix, gene symbols, prefix,
    separator, the effective ``top_n`` and token limit, then the caller's ``params``)."""
    return {
        "params": {
            "method": "GenePT-s",
            "model": embedder.model_id,
            "dimension": int(dimension),
            "matrix": matrix,
            "gene_symbols": gene_symbols,
            "prefix": builder.prefix,
            "sep": builder.sep,
            "top_n": builder.effective_top_n,
            "max_input_tokens": int(builder.max_input_tokens),
            **params,
        }
    }
