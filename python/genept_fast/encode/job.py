"""The one start of every encoding job: the cells opened, the arguments checked, the first cells
looked at, the genes matched; once, in one place, for ``tl``, the stream, Dask and the CLI.

- :func:`open_job` opens the cells with the reading layer (:func:`genept_fast.cells.open_cells`:
  an AnnData, an ``.h5ad``/``.zarr`` path or a :class:`~genept_fast.cells.ChunkSource`; the
  matrix by :func:`genept_fast.cells.choose_matrix`), checks ``chunk_size`` and ``preprocess``,
  reads the first :data:`~genept_fast.preprocess.AUTO_SAMPLE_CELLS` cells once, refuses a
  matrix whose first cells have negative values (scaled data: never embedded silently) and
  resolves ``preprocess="auto"`` from the same cells.
- :func:`start_weighted` adds the GenePT-w table, matched to the cells' genes
  (:func:`~genept_fast.encode.match_table`), its :class:`~genept_fast.encode.WeightedEncoder`
  and provenance record; :func:`start_sentences` the GenePT-s gene symbols
  (:func:`~genept_fast.encode.resolve_gene_symbols`) and
  :class:`~genept_fast.encode.SentenceEncoder`, or for a static text model (``"wordllama"``)
  :class:`~genept_fast.encode.static.StaticSentenceEncoder`, which sums the same sentences'
  token vectors with the kernel instead of embedding each sentence.

What each path does next differs only in where the chunks go: ``tl`` into ``adata.obsm``, the
stream into a file, Dask into a lazy array.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from genept_fast.cells import (
    AnnDataSource,
    check_chunk_size,
    open_cells,
    source_matrix,
    source_var,
)
from genept_fast.encode.genes import load_table, match_table, resolve_gene_symbols
from genept_fast.encode.provenance import sentence_record, weighted_record
from genept_fast.encode.sentences import SentenceEncoder, as_embedder
from genept_fast.encode.static import StaticSentenceEncoder, is_static
from genept_fast.encode.weighted import WeightedEncoder
from genept_fast.errors import InputError
from genept_fast.kernels import DEFAULT_PREFIX
from genept_fast.preprocess import (
    AUTO_SAMPLE_CELLS,
    check_preprocess,
    has_negative,
    resolve_preprocess,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import numpy.typing as npt
    import pandas as pd
    import scipy.sparse as sp

    from genept_fast.cells import ChunkSource
    from genept_fast.embed import Embedder
    from genept_fast.encode.genes import TableMatch
    from genept_fast.encode.sentences import SentenceBuilder
    from genept_fast.table import GeneEmbeddings

__all__ = [
    "Cells",
    "SentenceJob",
    "WeightedJob",
    "open_job",
    "sentence_encoder",
    "start_sentences",
    "start_weighted",
]

log = logging.getLogger("genept_fast.encode")

#: Cells per chunk unless a caller says otherwise (bounds the temporary memory).
CHUNK_CELLS = 10_000


@dataclass
class Cells:
    """The cells of a job, opened once, and what was decided from the first ones."""

    #: The rows, read by chunks (``read(a, b)``).
    source: ChunkSource
    #: What is read: ``"X"``, ``"raw/X"``, ``"layers/<name>"`` (or a source's own name).
    matrix: str
    #: ``"log1p"`` or ``"none"``, decided once for every chunk.
    preprocess: str
    chunk_size: int
    #: Whether the job opened the source (and closes it).
    own: bool

    @property
    def name(self) -> str:
        return self.source.name

    def chunks(self) -> Iterator[tuple[int, int, sp.csr_array]]:
        """``(a, b, rows a:b)`` over every cell, ``chunk_size`` at a time."""
        n = int(self.source.n_cells)
        for a in range(0, n, self.chunk_size):
            b = min(a + self.chunk_size, n)
            yield a, b, self.source.read(a, b)

    def close(self) -> None:
        if self.own:
            self.source.close()

    def __enter__(self) -> Cells:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gene_var(source: ChunkSource) -> pd.DataFrame | None:
    """The var table the genes are matched with. Of a file: its columns, each read when the
    matching asks for it, without pandas (:meth:`~genept_fast.cells.AnnDataSource.var_columns`:
    names only, then ``var[gene_key]`` or a symbol column, ~0.35 s of start-up saved); of any
    other source its var frame (:func:`~genept_fast.cells.source_var`)."""
    if isinstance(source, AnnDataSource):
        # the part of a DataFrame the matching reads: ``columns``, ``in``, ``var[name]``
        # (tests/test_frames.py holds the two equal for what the matching computes)
        return cast("pd.DataFrame", source.var_columns())
    return source_var(source)


def _refuse_scaled(source: ChunkSource, matrix: str, first: Any, method: str) -> None:
    if not has_negative(first):
        return
    where = "" if source.name.startswith("<") else f"{source.name}: "  # "<AnnData>": no file
    verb = "ranks" if method == "GenePT-s" else "weighs"
    msg = (
        f"{where}{matrix} has negative values in its first cells: scaled data, not"
        f" expression. {method} {verb} genes by expression, so embed the log-normalised or"
        " count matrix: use_raw=True or layer='...' (command line: --use-raw or --layer)"
    )
    raise InputError(msg)


def open_job(
    data: Any,
    *,
    layer: str | None = None,
    use_raw: bool | None = None,
    preprocess: str = "auto",
    chunk_size: int = CHUNK_CELLS,
    method: str = "GenePT-w",
) -> Cells:
    """Open the cells of ``data`` for a job, check the arguments and look at the first cells.

    Parameters
    ----------
    data
        An AnnData (in memory, a view, backed), an ``.h5ad`` file or AnnData ``.zarr`` store,
        or a :class:`~genept_fast.cells.ChunkSource` (used as is, left open).
    layer, use_raw
        The matrix, by :func:`genept_fast.cells.choose_matrix`: ``layers/<layer>``; ``raw/X``
        with ``use_raw=True``; by default ``raw/X`` when the data has raw, else ``X``.
    preprocess
        ``"auto"`` (log-normalise when the first cells hold raw counts), ``"log1p"`` or
        ``"none"``; resolved here, once. GenePT-s applies none (``"none"``).
    chunk_size
        Cells per chunk.
    method
        Named in messages.

    Raises
    ------
    InputError
        A bad argument, a missing matrix or file, a corrupt file, or first cells with negative
        values (scaled data), named with the fix.
    """
    chunk_size = check_chunk_size(chunk_size)
    check_preprocess(preprocess)
    source = open_cells(data, layer=layer, use_raw=use_raw)
    own = source is not data
    try:
        matrix = source_matrix(source)
        first = source.read(0, min(int(source.n_cells), AUTO_SAMPLE_CELLS))
        _refuse_scaled(source, matrix, first, method)
        how = resolve_preprocess(preprocess, lambda: first)
    except BaseException:
        if own:
            source.close()
        raise
    return Cells(source, matrix, how, chunk_size, own)


@dataclass
class WeightedJob:
    """A started GenePT-w job: its cells, encoder and provenance."""

    cells: Cells
    encoder: WeightedEncoder
    #: The provenance record (:func:`~genept_fast.encode.weighted_record`).
    record: dict[str, Any]
    #: The table matched to the cells' genes (``None`` for a plain matrix).
    match: TableMatch | None

    @property
    def summary(self) -> str:
        """One line for people: the matrix, how genes were identified, the coverage."""
        if self.match is None:
            return f"{self.cells.matrix}: {self.encoder.shape[0]:,} table rows"
        return f"{self.cells.matrix}, genes by {self.match.gene_symbols}: {self.match.coverage}"

    def close(self) -> None:
        self.cells.close()

    def __enter__(self) -> WeightedJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_weighted(
    data: Any,
    gene_embeddings: GeneEmbeddings | str | Path | npt.ArrayLike,
    *,
    gene_index: npt.ArrayLike | None = None,
    gene_key: str | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    preprocess: str = "auto",
    chunk_size: int = CHUNK_CELLS,
    normalize: bool = True,
    n_threads: int | None = None,
    gene_key_flag: str = "gene_key=",
) -> WeightedJob:
    """Start a GenePT-w job (:func:`open_job`) with its encoder and provenance record.

    ``gene_embeddings`` is a :class:`~genept_fast.table.GeneEmbeddings` table or a path to one
    (our parquet, or GenePT's pickle), matched to the cells' genes through the gene identity
    layer (:func:`~genept_fast.encode.match_table`: ``var[gene_key]`` or ``var_names`` first;
    only the rows in use are kept), or a plain genes × D matrix mapped by ``gene_index``
    (default: row ``j`` embeds column ``j``). ``gene_key_flag``: how messages name the
    ``gene_key`` option (the command line passes ``"--gene-key "``).
    """
    from genept_fast.table import GeneEmbeddings

    is_table = isinstance(gene_embeddings, (GeneEmbeddings, str, Path))
    if is_table and gene_index is not None:
        msg = "gene_index= is for a plain matrix; a GeneEmbeddings table is matched by gene name"
        raise InputError(msg)
    if not is_table and gene_key is not None:
        msg = "gene_key= is for a GeneEmbeddings table; a matrix is mapped by gene_index="
        raise InputError(msg)
    table = load_table(gene_embeddings) if is_table else None  # type: ignore[arg-type]
    cells = open_job(
        data, layer=layer, use_raw=use_raw, preprocess=preprocess, chunk_size=chunk_size
    )
    try:
        source = cells.source
        match = None
        rows: Any = gene_embeddings
        if table is not None:
            name = str(gene_embeddings) if isinstance(gene_embeddings, (str, Path)) else None
            match = match_table(
                table,
                source.var_names,
                _gene_var(source),
                gene_key=gene_key,
                what=source.name,
                option=gene_key_flag,
                table_name=name,
            )
            log.info("GenePT-w on %s: %s", source.name, match.coverage)
            rows, gene_index = match.rows, match.index
        enc = WeightedEncoder(
            rows,
            gene_index=gene_index,
            normalize=normalize,
            n_threads=n_threads,
            preprocess=cells.preprocess,
        )
        enc.check_genes(int(source.n_genes), source.name)
        record = weighted_record(
            match,
            matrix=cells.matrix,
            preprocess=cells.preprocess,
            dimension=enc.dim,
            normalize=normalize,
        )
    except BaseException:
        cells.close()
        raise
    return WeightedJob(cells, enc, record, match)


@dataclass
class SentenceJob:
    """A started GenePT-s job: its cells, encoder and how the gene symbols were found."""

    cells: Cells
    #: A static model's encoder sums the sentences with the kernel (same interface).
    encoder: SentenceEncoder | StaticSentenceEncoder
    gene_symbols: str

    def record(self, dimension: int) -> dict[str, Any]:
        """The provenance record (:func:`~genept_fast.encode.sentence_record`)."""
        # sentence_record reads the sentence options (prefix, sep, effective_top_n,
        # max_input_tokens), which a static encoder's StaticSentences holds as a builder does
        return sentence_record(
            cast("SentenceBuilder", self.encoder.builder),
            self.encoder.embedder,
            dimension=dimension,
            matrix=self.cells.matrix,
            gene_symbols=self.gene_symbols,
        )

    def build_all(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Every cell's sentence, genes kept, whether cut, and tokens
        (:meth:`~genept_fast.encode.SentenceBuilder.build_counted`, chunk by chunk)."""
        n = int(self.cells.source.n_cells)
        sentences: list[str] = []
        kept = np.zeros(n, dtype=np.int64)
        cut = np.zeros(n, dtype=bool)
        tokens = np.zeros(n, dtype=np.int64)
        for a, b, chunk in self.cells.chunks():
            s, kept[a:b], cut[a:b], tokens[a:b] = self.encoder.builder.build_counted(
                chunk, row_offset=a
            )
            sentences.extend(s)
        return sentences, kept, cut, tokens

    def close(self) -> None:
        self.cells.close()

    def __enter__(self) -> SentenceJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sentence_encoder(
    embedder: Embedder, symbols: Sequence[str], **options: Any
) -> SentenceEncoder | StaticSentenceEncoder:
    """The GenePT-s encoder for ``embedder``: the kernel's sums for a static model
    (:func:`~genept_fast.encode.static.is_static`), else sentences embedded by the model; every
    path (the job start here, Dask's row blocks) chooses through this one function."""
    kind = StaticSentenceEncoder if is_static(embedder) else SentenceEncoder
    return kind(embedder, symbols, **options)


def start_sentences(
    data: Any,
    embedder: Embedder | str = "local",
    *,
    gene_key: str | None = None,
    top_n: int | None = None,
    prefix: str = DEFAULT_PREFIX,
    sep: str = " ",
    max_input_tokens: int | None = None,
    n_threads: int | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    chunk_size: int = CHUNK_CELLS,
    progress: bool = False,
    gene_key_flag: str = "gene_key=",
) -> SentenceJob:
    """Start a GenePT-s job (:func:`open_job`, no preprocessing) with its encoder
    (``gene_key_flag``: as for :func:`start_weighted`): a
    :class:`~genept_fast.encode.static.StaticSentenceEncoder` for a static model
    (:func:`~genept_fast.encode.static.is_static`: ``"wordllama"``), else a
    :class:`~genept_fast.encode.SentenceEncoder`.

    Raises
    ------
    InputError
        As :func:`open_job`; a bad option (``top_n``, ``prefix``, ``sep``,
        ``max_input_tokens``); no gene of the cells has a symbol.
    """
    emb = as_embedder(embedder)
    cells = open_job(
        data,
        layer=layer,
        use_raw=use_raw,
        preprocess="none",
        chunk_size=chunk_size,
        method="GenePT-s",
    )
    try:
        source = cells.source
        symbols, how = resolve_gene_symbols(
            source.var_names,
            _gene_var(source),
            gene_key=gene_key,
            what=source.name,
            option=gene_key_flag,
        )
        enc = sentence_encoder(
            emb,
            symbols,
            top_n=top_n,
            prefix=prefix,
            sep=sep,
            max_input_tokens=max_input_tokens,
            n_threads=n_threads,
            progress=progress,
        )
        if not enc.builder.usable.any():
            msg = (
                f"no gene of {source.name} has a symbol ({how}); name a var column of gene"
                " symbols with gene_key= (command line: --gene-key)"
            )
            raise InputError(msg)
    except BaseException:
        cells.close()
        raise
    return SentenceJob(cells, enc, how)
