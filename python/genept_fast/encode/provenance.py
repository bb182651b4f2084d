"""The one provenance record of a cell embedding, and its one merge.

``tl`` stores it in ``adata.uns[key]``, the streaming pipeline and ``genept-fast encode`` in
their output (``uns[key]`` of an ``.h5ad``, the attributes of a ``.zarr`` group, the metadata of
a ``.parquet`` file), with the same keys and the same words on every path:

- ``params["matrix"]``: ``"X"``, ``"raw/X"`` or ``"layers/<name>"`` (:func:`matrix_params`;
  ``use_raw`` and ``layer`` say the same for readers that look for them);
- ``params["preprocess"]``: ``"log1p"`` (``normalize_total(target_sum=1e4)`` then ``log1p``,
  done by the kernel as it reads each cell) or ``"none"`` (the values as stored);
- ``params["dimension"]``: the width of the embedding, from the table (GenePT-w) or the text
  model (GenePT-s: its description, else the first chunk it embedded).

A caller's own entries go through :func:`merge_uns`: its ``"params"`` are merged over the
record's, other entries are stored beside them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from genept_fast.embed import Embedder
    from genept_fast.encode.genes import TableMatch
    from genept_fast.encode.sentences import SentenceBuilder

__all__ = ["matrix_params", "merge_uns", "sentence_record", "weighted_record"]


def matrix_params(matrix: str) -> dict[str, Any]:
    """``{"matrix": matrix, "layer": name or None, "use_raw": bool}`` for ``"X"``, ``"raw/X"``
    or ``"layers/<name>"`` (another source's name is kept as ``matrix``)."""
    layer = matrix.removeprefix("layers/") if matrix.startswith("layers/") else None
    return {"matrix": matrix, "layer": layer, "use_raw": matrix == "raw/X"}


def weighted_record(
    match: TableMatch | None,
    *,
    matrix: str,
    preprocess: str,
    dimension: int,
    normalize: bool = True,
) -> dict[str, Any]:
    """GenePT-w: ``{"params": {...}}``, with ``"coverage"`` when a table was matched.

    ``params``: the method, then (with a table) the model, text source and how the genes were
    identified, the dimension, the matrix read, the preprocessing and whether each cell was
    L2-normalised.
    """
    params: dict[str, Any] = {"method": "GenePT-w"}
    if match is not None:
        table = match.table
        params |= {"model": table.model_id, "text_source": table.text_source}
        params["gene_symbols"] = match.gene_symbols
    params |= {"dimension": int(dimension), **matrix_params(matrix)}
    params |= {"preprocess": preprocess, "normalize": bool(normalize)}
    record: dict[str, Any] = {"params": params}
    if match is not None:
        record["coverage"] = match.coverage.as_dict()
    return record


def sentence_record(
    builder: SentenceBuilder,
    embedder: Embedder,
    *,
    dimension: int,
    matrix: str,
    gene_symbols: str,
) -> dict[str, Any]:
    """GenePT-s: ``{"params": {...}}`` (model, dimension, matrix, gene symbols, prefix,
    separator, the effective ``top_n`` and token limit). No preprocessing is applied: a cell's
    ranking is the same on counts and on log-normalised values."""
    return {
        "params": {
            "method": "GenePT-s",
            "model": embedder.model_id,
            "dimension": int(dimension),
            **matrix_params(matrix),
            "preprocess": "none",
            "gene_symbols": gene_symbols,
            "prefix": builder.prefix,
            "sep": builder.sep,
            "top_n": builder.effective_top_n,
            "max_input_tokens": int(builder.max_input_tokens),
        }
    }


def merge_uns(record: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """``record`` with a caller's ``extra`` entries: ``extra["params"]`` merged over the
    record's ``params``, its other entries stored beside them (replacing the record's)."""
    out = dict(extra or {})
    params = {**dict(record.get("params") or {}), **dict(out.pop("params", None) or {})}
    return {**dict(record), **out, "params": params}
