"""A dataset's genes against a gene-embedding table: identifiers, rows in use, coverage.

Every GenePT path (``tl``, the streaming pipeline, Dask, the CLI) matches its genes here,
through the gene identity layer (:mod:`genept_fast.genes.match`): GenePT-w by
:func:`match_table`, GenePT-s by :func:`resolve_gene_symbols` (the words of its sentences).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genept_fast.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from genept_fast.genes.match import Coverage
    from genept_fast.table import GeneEmbeddings

__all__ = ["TableMatch", "compact_table", "load_table", "match_table", "resolve_gene_symbols"]


def load_table(gene_embeddings: GeneEmbeddings | str | Path) -> GeneEmbeddings:
    """A :class:`~genept_fast.table.GeneEmbeddings` table, or one read from a path."""
    # Imported here: the table module loads polars and the identity layer (see match_table).
    from genept_fast.table import GeneEmbeddings

    if isinstance(gene_embeddings, GeneEmbeddings):
        return gene_embeddings
    if isinstance(gene_embeddings, (str, Path)):
        return GeneEmbeddings.read(gene_embeddings)
    msg = (
        "gene_embeddings must be a GeneEmbeddings table or a path to one (parquet or GenePT "
        f"pickle), got {type(gene_embeddings).__name__}"
    )
    raise InputError(msg)


def compact_table(matrix: np.ndarray, gene_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The table rows a dataset uses, in the dataset's gene order, and the map to them.

    ``gene_index`` maps each dataset gene to a row of ``matrix`` (``-1``: none). Returns
    ``(rows, index)``: ``rows[k]`` is the embedding of the ``k``-th embedded dataset gene and
    ``index`` maps each dataset gene to its row of ``rows`` (ascending, ``-1``: none). The
    kernel then sums each cell's genes in the dataset's column order, exactly as
    :func:`genept_fast.weighted_embedding` with the table aligned to the dataset
    (:meth:`GeneEmbeddings.align`), while holding only the rows in use.
    """
    gene_index = np.asarray(gene_index, dtype=np.int64)
    hit = gene_index >= 0
    used = gene_index[hit]
    index = np.full(gene_index.shape, -1, dtype=np.int64)
    index[hit] = np.arange(used.size, dtype=np.int64)
    if used.size == len(matrix) and np.array_equal(used, index[hit]):
        # every table row, in table order (a dataset laid out like its table): the table
        # itself, without a copy of it (123 MB for 20,000 genes at D = 1536)
        return np.ascontiguousarray(matrix, dtype=np.float32), index
    return np.ascontiguousarray(matrix[used], dtype=np.float32), index


@dataclass
class TableMatch:
    """A dataset's genes matched to a gene-embedding table (:func:`match_table`)."""

    table: GeneEmbeddings
    #: The table row of each dataset gene (``-1``: no embedding).
    table_index: np.ndarray
    #: The rows in use (``rows[k]``: the ``k``-th embedded dataset gene), float32.
    rows: np.ndarray
    #: Each dataset gene's row of ``rows`` (``-1``: none), the kernel's ``gene_index``.
    index: np.ndarray
    coverage: Coverage
    #: How the genes were identified (``"var_names"``, ``"var_names, then var['...']"``).
    gene_symbols: str

    @property
    def embedded(self) -> np.ndarray:
        """Whether each dataset gene has an embedding (bool)."""
        return self.table_index >= 0


def match_table(
    table: GeneEmbeddings,
    var_names: Sequence[str],
    var: pd.DataFrame | None = None,
    *,
    gene_key: str | None = None,
    what: str = "the dataset",
    option: str = "gene_key=",
    table_name: str | None = None,
) -> TableMatch:
    """Match a dataset's genes to ``table`` through the gene identity layer.

    The identifiers are those of :func:`genept_fast.genes.match.dataset_identifiers`:
    ``var[gene_key]`` then ``var_names``, or ``var_names`` then a symbol column of ``var``.
    The first ones must name each gene once: two columns named ``HES4`` would both get
    HES4's embedding, so repeated names are refused, named with their columns. Different
    identifiers of one gene (``CD3E`` and its Ensembl ID, an alias next to the symbol) are
    not repeated names: the identity layer's rule for shared table genes applies (the direct
    matches keep the gene, the others are left out as shadowed; the coverage lists both).

    Raises
    ------
    DuplicateGeneNamesError
        The first identifiers give one name to several genes (an :class:`InputError`;
        ``exc.names`` maps each name to its columns).
    InputError
        ``gene_key`` is not a column of ``var``; no gene matches (the message says why and
        which ``var`` column would, naming the option ``option`` the user sets it with).
    """
    # Imported here: the identity layer loads polars and the HGNC tables, which a stream
    # over a plain embedding matrix never needs (39 MB and ~0.3 s off `import genept_fast.stream`).
    from genept_fast.genes.match import dataset_identifiers, explain_no_match, var_columns

    ids = dataset_identifiers(var_names, var, gene_key=gene_key, what=what, option=option)
    table_index, coverage = table.index_for(ids.primary, alternatives=ids.alternatives)
    if coverage.n_embedded == 0:
        why = explain_no_match(
            ids.primary, table.key_index, columns=var_columns(var), option=option, what=what
        )
        where = f"{table_name}, model" if table_name else "table model"
        msg = f"{why} ({where} {table.model_id})"
        raise InputError(msg)
    rows, index = compact_table(table.matrix, table_index)
    return TableMatch(table, table_index, rows, index, coverage, ids.description)


def resolve_gene_symbols(
    var_names: Sequence[str],
    var: pd.DataFrame | None = None,
    *,
    gene_key: str | None = None,
    what: str = "the dataset",
    option: str = "gene_key=",
) -> tuple[list[str], str]:
    """Gene symbols for a dataset's genes, and how they were found.

    ``gene_key`` names a ``var`` column of symbols. Otherwise, when ``var_names`` look like
    Ensembl IDs, a symbol column of ``var`` (``gene_symbols``, ``feature_name``, ...) is used,
    or the IDs are resolved offline by the gene identity layer (:func:`genept_fast.genes.map_genes`;
    unmapped genes keep an empty string). Otherwise ``var_names`` are the symbols. These are the
    words of GenePT-s sentences; GenePT-w matches its table by :func:`match_table`.

    As for GenePT-w, the names a dataset gives its genes first (``var[gene_key]``, else
    ``var_names``) must name each gene once: a repeated name would write one word twice in a
    sentence for two columns, and is refused. Symbols found for distinct Ensembl IDs (a
    ``var`` column, or the offline mapping) may repeat: two genes that share a symbol each
    write it. A missing value (None, NaN) is an empty string: that gene has no symbol.

    Raises
    ------
    DuplicateGeneNamesError
        The first names give one name to several genes (an :class:`InputError`).
    InputError
        ``gene_key`` is not a column of ``var``.
    """
    # Imported here for the reason given in match_table.
    from genept_fast.genes import looks_like_ensembl, map_genes
    from genept_fast.genes.match import SYMBOL_COLUMNS, dataset_identifiers

    # the same first names as GenePT-w's, refused on the same terms
    ids = dataset_identifiers(var_names, var, gene_key=gene_key, what=what, option=option)
    if gene_key is not None:
        return ids.primary, f"var[{gene_key!r}]"
    names = ids.primary
    if not names or not looks_like_ensembl(names):
        return names, "var_names"
    if var is not None and ids.alternatives is not None:
        col = next(c for c in SYMBOL_COLUMNS if c in var.columns)
        return ids.alternatives, f"var[{col!r}]"
    mapped = map_genes(names)
    symbols = [s if s is not None else "" for s in mapped["symbol"].to_list()]
    return symbols, "Ensembl IDs mapped offline"
