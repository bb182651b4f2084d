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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from genept_fast import kernels
from genept_fast.annotate import build_reference, transfer_labels
from genept_fast.errors import InputError
from genept_fast.genes.match import (
    SYMBOL_COLUMNS,
    dataset_identifiers,
    explain_no_match,
    var_columns,
)
from genept_fast.preprocess import (
    AUTO_SAMPLE_CELLS,
    Preprocess,
    has_negative,
    resolve_preprocess,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

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


def resolve_gene_symbols(
    var_names: Sequence[str], var: pd.DataFrame | None = None, *, gene_key: str | None = None
) -> tuple[list[str], str]:
    """Gene symbols for a dataset's genes, and how they were found.

    ``gene_key`` names a ``var`` column of symbols. Otherwise, when ``var_names`` look like
    Ensembl IDs, a symbol column of ``var`` (``gene_symbols``, ``feature_name``, ...) is used,
    or the IDs are resolved offline by the gene identity layer (:func:`genept_fast.genes.map_genes`;
    unmapped genes keep an empty string). Otherwise ``var_names`` are the symbols. These are the
    words of GenePT-s sentences; GenePT-w matches its table by :meth:`GeneEmbeddings.index_for`.
    """
    names = [str(v) for v in var_names]
    if gene_key is not None:
        if var is None or gene_key not in var.columns:
            msg = f"gene_key {gene_key!r} is not a column of var"
            raise InputError(msg)
        return [str(s) for s in var[gene_key].astype(str)], f"var[{gene_key!r}]"
    from genept_fast.genes import looks_like_ensembl, map_genes

    if not names or not looks_like_ensembl(names):
        return names, "var_names"
    if var is not None:
        for col in SYMBOL_COLUMNS:
            if col in var.columns:
                return [str(s) for s in var[col].astype(str)], f"var[{col!r}]"
    mapped = map_genes(names)
    symbols = [s if s is not None else "" for s in mapped["symbol"].to_list()]
    return symbols, "Ensembl IDs mapped offline"


def _load_table(gene_embeddings: GeneEmbeddings | str | Path) -> GeneEmbeddings:
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
    index = np.full(gene_index.shape, -1, dtype=np.int64)
    index[hit] = np.arange(int(hit.sum()), dtype=np.int64)
    return np.ascontiguousarray(matrix[gene_index[hit]], dtype=np.float32), index


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
    table = _load_table(gene_embeddings)
    m = _select_matrix(adata, layer, use_raw)
    if m.X.shape[1] != len(m.var_names):
        msg = f"{m.description} has {m.X.shape[1]} columns but {len(m.var_names)} gene names"
        raise InputError(msg)
    ids = dataset_identifiers(m.var_names, m.var, gene_key=gene_key)
    gene_index, coverage = table.index_for(ids.primary, alternatives=ids.alternatives)
    symbol_source = ids.description
    log.info("GenePT-w: %s", coverage)
    if coverage.n_embedded == 0:
        why = explain_no_match(
            ids.primary, table.key_index, columns=var_columns(m.var), what=m.description
        )
        msg = f"{why} (table model {table.model_id})"
        raise InputError(msg)
    how, lognorm = _decide_preprocess(m, adata.n_obs, preprocess)
    rows, compact_index = compact_table(table.matrix, gene_index)
    prepared = kernels.prepare_embeddings(rows, n_threads=n_threads)
    # One dense-gene set for every chunk (the summation order; see genept_fast.kernels).
    dense = kernels.dense_genes(
        _sample(m.X, adata.n_obs), prepared.n_genes, gene_index=compact_index, n_threads=n_threads
    )
    out = np.zeros((adata.n_obs, table.dimension), dtype=np.float32)
    for a, b, chunk in _chunks(m.X, adata.n_obs, max(int(chunk_size), 1)):
        kernels.weighted_embedding(
            chunk,
            prepared,
            gene_index=compact_index,
            n_threads=n_threads,
            out=out[a:b],
            preprocess=how,
            dense_genes=dense,
            row_offset=a,
        )
    adata.obsm[key_added] = out
    adata.uns[key_added] = {
        "params": {
            "method": "GenePT-w",
            "model": table.model_id,
            "dimension": int(table.dimension),
            "text_source": table.text_source,
            "matrix": m.description,
            "layer": layer,
            "use_raw": m.description == "adata.raw.X",
            "preprocess": "normalize_total(1e4) + log1p" if lognorm else "none",
            "gene_symbols": symbol_source,
            "normalize": True,
        },
        "coverage": coverage.as_dict(),
    }
    _embedded_column(adata, m, key_added, gene_index >= 0)
    return adata if copy else None


#: Most ``cells × ranked genes`` entries ranked at once while building sentences (bounds memory).
_RANK_BLOCK = 1 << 22


class SentenceBuilder:
    """GenePT-s sentences of cells, each cut at a gene boundary to fit a token limit.

    A cell's expressed genes (strictly positive values, ranked by :func:`genept_fast.top_genes`:
    descending value, ties by gene order) are written after ``prefix`` and joined by ``sep``,
    up to ``top_n`` genes and as many as fit ``max_input_tokens`` as the embedder counts them.

    Token counts are exact. Where the embedder's tokenizer ends its tokens at ``sep`` after a
    gene (:meth:`~genept_fast.embed.Embedder.splits_after`: OpenAI's ``cl100k_base`` for
    whitespace-free symbols and a space, the local WordPiece model for any symbol and
    whitespace), a sentence costs the tokens of ``prefix + first gene`` plus, for each further
    gene, those of ``sep + name``: every symbol is tokenized once, never a sentence. A cell
    whose sentence would hold another gene (a symbol with a space in it, another separator, a
    tokenizer that claims nothing) is counted on whole sentences instead, searching for the
    most genes that fit (assuming a longer sentence never has fewer tokens). A cell with no
    usable expressed gene gets the empty sentence, which every embedder maps to a zero vector.

    Parameters
    ----------
    embedder
        Counts the tokens (its :meth:`~genept_fast.embed.Embedder.count_tokens`).
    symbols
        One gene symbol per column of the matrices to encode; an empty symbol is never used.
    top_n
        Most genes per sentence (default: as many as fit).
    prefix, sep
        Sentence prefix and gene separator.
    max_input_tokens
        Token limit of a sentence (default and maximum: ``embedder.max_input_tokens``).
    n_threads
        Threads for the ranking kernel.
    """

    def __init__(
        self,
        embedder: Embedder,
        symbols: Sequence[str],
        *,
        top_n: int | None = None,
        prefix: str = kernels.DEFAULT_PREFIX,
        sep: str = " ",
        max_input_tokens: int | None = None,
        n_threads: int | None = None,
    ) -> None:
        if top_n is not None and (
            isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1
        ):
            msg = f"top_n must be a positive integer or None, got {top_n!r}"
            raise InputError(msg)
        limit = int(embedder.max_input_tokens)
        if max_input_tokens is not None:
            if isinstance(max_input_tokens, bool) or int(max_input_tokens) < 1:
                msg = f"max_input_tokens must be a positive integer, got {max_input_tokens!r}"
                raise InputError(msg)
            limit = min(limit, int(max_input_tokens))
        if not isinstance(prefix, str) or not isinstance(sep, str):
            msg = "prefix and sep must be strings"
            raise InputError(msg)
        if not sep:
            msg = "sep must not be empty (gene names would run together)"
            raise InputError(msg)
        self.embedder = embedder
        self.symbols = [str(g) for g in symbols]
        self.usable = np.array([bool(g.strip()) for g in self.symbols], dtype=bool)
        self.top_n = None if top_n is None else int(top_n)
        self.prefix, self.sep, self.n_threads = prefix, sep, n_threads
        self.max_input_tokens = limit
        base, self.prefix_tokens = (int(c) for c in embedder.count_tokens(["", prefix]))
        if self.prefix_tokens >= limit:
            msg = (
                f"the prefix alone takes {self.prefix_tokens} of the {limit} tokens allowed;"
                " shorten it or raise max_input_tokens"
            )
            raise InputError(msg)
        names = [g if u else "" for g, u in zip(self.symbols, self.usable, strict=True)]
        counts = embedder.count_tokens([f"{sep}{g}" for g in names] + [prefix + g for g in names])
        n = len(names)
        #: tokens gene j adds after another gene, and as the first gene after the prefix
        self.gene_tokens = np.asarray(counts[:n], dtype=np.int64) - base
        self.first_tokens = np.asarray(counts[n:], dtype=np.int64) - self.prefix_tokens
        #: genes whose tokens end at the separator after them (counts add up over them)
        self.splits = np.asarray(embedder.splits_after(names, sep), dtype=bool).reshape(n)
        self.splits &= self.gene_tokens >= 0
        # The same as tables indexed by ranked genes, with an entry for the padding (-1) last.
        self._cost = np.append(self.gene_tokens, 0).astype(np.int32)
        self._first_cost = np.append(self.first_tokens, 0).astype(np.int32)
        self._breaks = np.append(~self.splits, False)
        budget = limit - self.prefix_tokens
        n_usable = int(self.usable.sum())
        cap = budget + 1  # every gene but possibly the first costs at least one token
        want = self.top_n if self.top_n is not None else cap
        #: genes ranked per cell
        self.n_rank = max(1, min(want, cap, n_usable))
        self._budget = budget

    def build(self, X: Any, *, row_offset: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Sentences of the cells (rows) of ``X`` (rows ``row_offset:`` of a larger matrix).

        Returns
        -------
        sentences : list of str
            One per cell (``""`` for a cell without usable expressed genes).
        n_genes : numpy.ndarray
            int64, genes in each sentence.
        cut : numpy.ndarray
            bool, whether the token limit (not ``top_n`` or the cell's expressed genes) ended
            the sentence.
        """
        sentences, kept, cut, _ = self.build_counted(X, row_offset=row_offset)
        return sentences, kept, cut

    def build_counted(
        self, X: Any, *, row_offset: int = 0
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`build`, and the tokens of each sentence.

        Returns
        -------
        sentences, n_genes, cut
            As for :meth:`build`.
        tokens : numpy.ndarray
            int64, :meth:`~genept_fast.embed.Embedder.count_tokens` of each sentence (0 for
            ``""``), to hand to :meth:`~genept_fast.embed.Embedder.embed` as ``token_counts``.
        """
        csr = sp.csr_array(X)
        if not (self.usable.all() and csr.has_canonical_format):
            csr = csr.copy()  # never modify the caller's matrix
            csr.sum_duplicates()
            csr.data[~self.usable[csr.indices]] = 0  # never ranked: top_genes needs value > 0
        n_cells, n_genes = csr.shape
        indptr = csr.indptr.astype(np.int64)
        # rankable genes per cell: the stored values less those that are not positive (few)
        unranked = np.flatnonzero(~(csr.data > 0))
        positive = np.diff(indptr) - np.bincount(
            np.searchsorted(indptr, unranked, side="right") - 1, minlength=n_cells
        )
        kept = np.zeros(n_cells, dtype=np.int64)
        tokens = np.zeros(n_cells, dtype=np.int64)
        sentences: list[str] = []
        block = max(1, _RANK_BLOCK // self.n_rank)
        for a in range(0, n_cells, block):
            b = min(a + block, n_cells)
            s, e = int(indptr[a]), int(indptr[b])
            rows = sp.csr_array(  # a view of the block's rows (csr[a:b] would copy them)
                (csr.data[s:e], csr.indices[s:e], indptr[a : b + 1] - s), shape=(b - a, n_genes)
            )
            top = kernels.top_genes(
                rows, self.n_rank, n_threads=self.n_threads, row_offset=row_offset + a
            )
            k, t = self._fit(top)
            kept[a:b], tokens[a:b] = k, t
            sentences.extend(self._join(top, k))
        wanted = positive if self.top_n is None else np.minimum(positive, min(self.top_n, n_genes))
        return sentences, kept, kept < wanted, tokens

    def _fit(self, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Genes that fit in each cell's sentence, and the sentence's tokens.

        ``top`` holds each cell's ranked genes, padded with -1 after them (``top_genes``).
        """
        n_valid = (top >= 0).sum(axis=1)
        cost = self._cost[top]  # index -1 (padding) reads the 0 appended to the table
        cost[:, 0] = self._first_cost[top[:, 0]]
        total = np.cumsum(cost, axis=1, dtype=np.int32)  # int32: 5x faster than int64
        over = total > self._budget
        k = np.minimum(np.where(over.any(axis=1), over.argmax(axis=1), top.shape[1]), n_valid)
        last = np.take_along_axis(total, np.maximum(k - 1, 0)[:, None], axis=1)[:, 0]
        tokens = np.where(k > 0, self.prefix_tokens + last.astype(np.int64), 0)
        # The counts of the sentences with k and k + 1 genes add up when each of the first k
        # genes that another gene follows ends its tokens at the separator.
        breaks = self._breaks[top]
        first_break = np.where(breaks.any(axis=1), breaks.argmax(axis=1), top.shape[1])
        whole = np.flatnonzero(first_break < np.minimum(k, n_valid - 1))
        if whole.size:
            top = top.astype(np.int64)
            k[whole], tokens[whole] = self._fit_whole(top[whole], n_valid[whole], k[whole])
        return k, tokens

    def _fit_whole(
        self, top: np.ndarray, n_valid: np.ndarray, guess: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Most genes of each row of ``top`` whose whole sentence fits, by exact counts.

        A search per cell between a known fit (``lo``, at first no gene) and a known miss
        (``hi``, at first one past the ranked genes), every round counting one or two
        sentences of each unsettled cell in one :meth:`count_tokens` call; the first round
        tries the additive guess and one gene more, which settles most cells.
        """
        n = top.shape[0]
        lo = np.zeros(n, dtype=np.int64)
        lo_tokens = np.zeros(n, dtype=np.int64)
        hi = n_valid.astype(np.int64) + 1
        guess = np.clip(guess, 1, np.maximum(n_valid, 1))
        probes = [guess, guess + 1]
        while True:
            asks: list[tuple[int, int]] = []
            for probe in probes:
                asks.extend((int(i), int(j)) for i, j in enumerate(probe) if lo[i] < j < hi[i])
            asks = list(dict.fromkeys(asks))
            if not asks:
                break
            texts = [
                self.prefix + self.sep.join(self.symbols[g] for g in top[i, :j]) for i, j in asks
            ]
            for (i, j), c in zip(asks, self.embedder.count_tokens(texts), strict=True):
                if c <= self.max_input_tokens:
                    if j > lo[i]:
                        lo[i], lo_tokens[i] = j, c
                elif j < hi[i]:
                    hi[i] = j
            probes = [(lo + hi) // 2]
        return lo, lo_tokens

    def _join(self, top: np.ndarray, kept: np.ndarray) -> list[str]:
        """``prefix`` + the first ``kept[i]`` genes of ``top[i]``, by the Rust sentence kernel."""
        n_cells = top.shape[0]
        width = int(kept.max()) if n_cells else 0
        if width == 0:
            return [""] * n_cells
        cols = np.arange(top.shape[1])
        mask = cols[None, :] < kept[:, None]
        indptr = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        # ranks as strictly decreasing values, so the kernel keeps exactly this order
        ranked = sp.csr_array(
            (
                np.broadcast_to(top.shape[1] - cols, top.shape)[mask].astype(np.float32),
                top[mask],
                indptr,
            ),
            shape=(n_cells, len(self.symbols)),
        )
        out = kernels.cell_sentences(
            ranked, self.symbols, width, prefix=self.prefix, sep=self.sep, n_threads=self.n_threads
        )
        return [s if k else "" for s, k in zip(out, kept.tolist(), strict=True)]


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
    - ``adata.uns[key_added]["params"]``: model, dimension, prefix, top_n, token limit, genes
      per sentence, cells cut at the token limit, distinct sentences.
    """
    from genept_fast.embed import Embedder, get_embedder

    emb = get_embedder(embedder) if isinstance(embedder, str) else embedder
    if not isinstance(emb, Embedder):
        msg = f"embedder must be an Embedder or a spec string, got {type(embedder).__name__}"
        raise InputError(msg)
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
    target.uns[key_added] = {
        "params": {
            "method": "GenePT-s",
            "model": emb.model_id,
            "dimension": int(vectors.shape[1]),
            "matrix": m.description,
            "layer": layer,
            "use_raw": m.description == "adata.raw.X",
            "gene_symbols": symbol_source,
            "prefix": prefix,
            "sep": sep,
            "top_n": top_n,
            "max_input_tokens": builder.max_input_tokens,
            "genes_per_sentence_mean": float(kept_all.mean()) if len(kept_all) else 0.0,
            "genes_per_sentence_max": int(kept_all.max()) if len(kept_all) else 0,
            "cells_cut_at_token_limit": int(cut_all.sum()),
            "cells_without_genes": int((kept_all == 0).sum()),
            "distinct_sentences": len({t for t in sentences if t}),
        },
    }
    return target if copy else None
