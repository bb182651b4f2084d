"""Gene embedding tables: genes × float32 matrix + provenance, on disk as parquet.

A :class:`GeneEmbeddings` holds one vector per gene and metadata (``model_id``,
``dimension``, ``text_source``, ``created``, the genes that had no text). It is written as
parquet through polars: columns ``gene: str`` and ``embedding: Array(Float32, D)``, the
metadata as JSON under the ``genept_fast`` key of the file's key-value metadata, without
compression (float vectors barely compress, and reading them back takes half the time). It is
read back through pyarrow, the matrix a view of the decoded column. It can also read
GenePT's published pickles (a dict symbol → vector) through a restricted unpickler that loads
nothing but dicts, lists, strings, numbers and numpy arrays, so a malicious pickle cannot run
code.

:meth:`GeneEmbeddings.align` lines the table up with a dataset's genes (``adata.var_names``)
through the gene identity layer (:mod:`genept_fast.genes.match`): the table may be keyed by
symbols, Ensembl IDs (with or without version), Entrez IDs or mouse genes, and the dataset may
use any of these. A gene that is absent, ambiguous, or whose vector is all zeros (no text)
counts as not embedded and gets a zero row. A :class:`Coverage` report says how each gene
matched and lists the others by name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import pickle
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

import numpy as np

from genept_fast._atomic import atomic_path
from genept_fast._inputs import ARROW_MAGIC, ARROW_SUFFIXES
from genept_fast._outputs import check_output
from genept_fast.errors import InputError
from genept_fast.genes.match import (
    Coverage,
    KeyIndex,
    describe_duplicates,
    duplicate_names,
    gene_names,
    index_keys,
    match_genes,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    import polars as pl
    import pyarrow as pa

    from genept_fast.embed.base import Embedder

__all__ = ["Coverage", "GeneEmbeddings"]

_META_KEY = "genept_fast"
_PICKLE_SUFFIXES = {".pkl", ".pickle"}
_SHOWN = 5


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only builtin containers/scalars and numpy arrays; refuses every other global."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 stores bytes
            return _latin1_bytes
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        msg = f"refusing to unpickle {module}.{name}: only dicts, lists, str, numbers, arrays"
        raise pickle.UnpicklingError(msg)


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        msg = "refusing to unpickle _codecs.encode except latin-1 bytes"
        raise pickle.UnpicklingError(msg)
    return text.encode("latin-1")


def _infer_pickle_model(name: str) -> str:
    low = name.lower()
    if "3_large" in low or "3-large" in low:
        return "openai:text-embedding-3-large"
    if "3_small" in low or "3-small" in low:
        return "openai:text-embedding-3-small"
    if "ada" in low:
        return "openai:text-embedding-ada-002"
    return "unknown"


def _check_names(genes: Sequence[str], given: Sequence[object]) -> None:
    """Refuse empty names and names that several rows carry (whitespace aside); ``given``:
    the names as passed (None, NaN), for the message."""
    blank = [i for i, g in enumerate(genes) if not g.strip()]
    if blank:
        rows = ", ".join(f"{i} ({given[i]!r})" for i in blank[:_SHOWN])
        more = ", ..." if len(blank) > _SHOWN else ""
        msg = f"empty or missing gene names in the table ({len(blank):,}): rows {rows}{more}"
        raise InputError(msg)
    dups = duplicate_names(genes)
    if dups:
        msg = f"duplicate genes in the table: {describe_duplicates(genes, dups, unit='rows')}"
        raise InputError(msg)


def _all_finite(m: np.ndarray) -> bool:
    """Whether ``m`` holds no NaN or infinity: its sum is finite only then (NaN and infinity
    carry through a sum), so one pass without a temporary decides the usual case; a sum
    that overflows from finite values is checked element by element."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(m.sum(dtype=np.float32)):
            return True
    return bool(np.isfinite(m).all())


@contextlib.contextmanager
def _readable(path: Path, kind: str) -> Iterator[None]:
    """Turn a reader's failure into ``InputError("PATH is not a readable KIND file: ...")``."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        msg = f"{path} is not a readable {kind} file: {exc}"
        raise InputError(msg) from exc


def _check_columns(names: list[str], path: Path) -> None:
    """Refuse a table file without ``gene`` and ``embedding`` columns, naming those it has."""
    if "gene" not in names or "embedding" not in names:
        msg = f"{path} needs columns 'gene' and 'embedding', has {names}"
        raise InputError(msg)


def _is_arrow(path: Path) -> bool:
    """Whether ``path`` starts like an Arrow IPC file (``ARROW1``)."""
    try:
        with path.open("rb") as fh:
            return fh.read(len(ARROW_MAGIC)) == ARROW_MAGIC
    except OSError:
        return False  # the parquet reader says what is wrong with it


def _unnamed(key: object) -> bool:
    """A pickle key that names no gene: None, NaN, or an empty or blank string."""
    if isinstance(key, str):
        return not key.strip()
    return key is None or (isinstance(key, float) and key != key)


def _gene_column(column: pa.ChunkedArray, path: Path) -> list[str]:
    """The names of a parquet ``gene`` column (strings; numbers and bytes read as text)."""
    import pyarrow as pa

    if column.null_count:
        msg = f"{path} has null genes or embeddings"
        raise InputError(msg)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        try:
            column = column.cast(pa.large_string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            msg = f"{path}: column 'gene' must hold gene names, got {column.type}: {exc}"
            raise InputError(msg) from None
    return [str(name) for name in column.to_pylist()]


def _embedding_matrix(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """``(rows, D)`` float32 from a table file's ``embedding`` column: ``Array(Float32, D)``
    (what :meth:`GeneEmbeddings.write` writes) or lists of one length, of any numeric type.

    A float32 column in one piece (a parquet file of one row group, an Arrow file of one record
    batch) comes back as a view of its buffer (decoded, or mapped), without a copy; several
    pieces are joined (one copy), other types converted.
    """
    import pyarrow as pa

    kind = column.type
    lists = (pa.types.is_fixed_size_list, pa.types.is_list, pa.types.is_large_list)
    if not any(is_list(kind) for is_list in lists):
        msg = f"{path}: column 'embedding' must be Array or List of floats, got {kind}"
        raise InputError(msg)
    value = kind.value_type
    if not (pa.types.is_floating(value) or pa.types.is_integer(value)):
        msg = f"{path}: column 'embedding' must be Array or List of floats, got {kind}"
        raise InputError(msg)
    if column.null_count:
        msg = f"{path} has null genes or embeddings"
        raise InputError(msg)
    if pa.types.is_fixed_size_list(kind):
        dim = kind.list_size
    else:
        import pyarrow.compute as pc

        lengths = pc.unique(pc.list_value_length(column)).to_pylist()
        if len(lengths) != 1:
            msg = f"{path}: embeddings have different lengths {sorted(lengths)[:5]}"
            raise InputError(msg)
        dim = int(lengths[0])
    if pa.types.is_fixed_size_list(kind):  # slices of the values, no copy (nor pyarrow.compute)
        parts = [c.values.slice(c.offset * dim, len(c) * dim) for c in column.chunks]
    else:
        parts = [chunk.flatten() for chunk in column.chunks]
    if any(part.null_count for part in parts):
        msg = f"{path} has null genes or embeddings"
        raise InputError(msg)
    code = "f" if pa.types.is_floating(value) else "i" if pa.types.is_signed_integer(value) else "u"
    dtype = np.dtype(f"<{code}{value.bit_width // 8}")
    # the values buffer as it is (Array.to_numpy would import pandas, ~0.5 s, on first use)
    flat = [
        np.frombuffer(
            part.buffers()[1], dtype, count=len(part), offset=part.offset * dtype.itemsize
        )
        for part in parts
    ]
    values = flat[0] if len(flat) == 1 else np.concatenate(flat or [np.empty(0, dtype)])
    return np.asarray(values, dtype=np.float32).reshape(len(column), dim)


class GeneEmbeddings:
    """A table of gene embeddings.

    Parameters
    ----------
    genes
        Gene names (symbols or any identifier form), one per row: unique (also without
        surrounding whitespace), and none empty, blank or missing (None, NaN).
    matrix
        ``(len(genes), D)`` embeddings; converted to float32 (copying only if needed).
    metadata
        Provenance: ``model_id``, ``text_source``, ``created``, ``missing`` (genes without
        text), and anything else JSON-serialisable. ``dimension`` is set from the matrix.
    """

    def __init__(
        self, genes: Iterable[str], matrix: np.ndarray, metadata: Mapping[str, Any] | None = None
    ) -> None:
        given = list(genes)
        genes = gene_names(given)
        m = np.asarray(matrix)
        if m.ndim != 2:
            msg = f"matrix must be 2-D (genes × dimension), got shape {m.shape}"
            raise InputError(msg)
        if m.shape[0] != len(genes):
            msg = f"{len(genes)} genes but the matrix has {m.shape[0]} rows"
            raise InputError(msg)
        if not np.issubdtype(m.dtype, np.number):
            msg = f"matrix must be numeric, got dtype {m.dtype}"
            raise InputError(msg)
        m = np.ascontiguousarray(m, dtype=np.float32)
        if not _all_finite(m):
            bad = genes[int(np.where(~np.isfinite(m).all(axis=1))[0][0])]
            msg = f"the embedding of {bad!r} contains NaN or infinity"
            raise InputError(msg)
        _check_names(genes, given)
        self.genes = genes
        self.matrix = m
        meta = dict(metadata or {})
        meta["dimension"] = int(m.shape[1])
        meta.setdefault("model_id", "unknown")
        meta.setdefault("text_source", "unknown")
        self.metadata = meta
        self._keys: KeyIndex | None = None

    # -- properties ----------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """Model that made the embeddings, e.g. ``"openai:text-embedding-3-small"``."""
        return str(self.metadata.get("model_id", "unknown"))

    @property
    def dimension(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def text_source(self) -> str:
        """Where the gene texts came from (``"ncbi"``, ``"symbol"``, ``"llm"``, ...)."""
        return str(self.metadata.get("text_source", "unknown"))

    @property
    def missing(self) -> list[str]:
        """Genes whose vector is all zeros (no text)."""
        zero = np.asarray(~self.matrix.any(axis=1), dtype=bool).tolist()
        return [g for g, z in zip(self.genes, zero, strict=False) if z]

    def __len__(self) -> int:
        return len(self.genes)

    def __repr__(self) -> str:
        return (
            f"GeneEmbeddings({len(self.genes):,} genes × {self.dimension},"
            f" model_id={self.model_id!r}, text_source={self.text_source!r})"
        )

    def to_frame(self) -> pl.DataFrame:
        """The table as a polars DataFrame (``gene``, ``embedding: Array(Float32, D)``)."""
        import polars as pl

        return pl.DataFrame(
            {
                "gene": pl.Series("gene", self.genes, dtype=pl.String),
                "embedding": pl.Series(
                    "embedding", self.matrix, dtype=pl.Array(pl.Float32, self.dimension)
                ),
            }
        )

    # -- I/O -----------------------------------------------------------------------------------
    def write(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the table to ``path`` atomically (temp file in the same directory, then rename).

        The suffix picks the format: ``.arrow``, ``.feather`` or ``.ipc`` an uncompressed Arrow
        IPC file, which :meth:`read` maps into memory without decoding or copying it (the
        fastest table to start a job from); any other suffix (``.parquet``) parquet, read by
        any parquet reader. Both hold ``gene`` (string) and ``embedding``
        (``Array(Float32, D)``) with the metadata, and read back to the same table.

        An existing ``path`` is refused unless ``overwrite=True`` (a directory never is
        replaced).

        Returns
        -------
        pathlib.Path
            The path written.
        """
        path = Path(path)
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            msg = f"{path}: tables are written as parquet or Arrow, not pickle"
            raise InputError(msg)
        if self.dimension == 0:
            msg = "cannot write a table with dimension 0"
            raise InputError(msg)
        check_output(path, overwrite=overwrite)
        meta = json.dumps(self.metadata, sort_keys=True, default=str)
        if path.suffix.lower() in ARROW_SUFFIXES:
            self._write_arrow(path, meta)
            return path
        df = self.to_frame()
        with atomic_path(path) as tmp:
            # uncompressed: float embeddings shrink by under a tenth, and decompressing them
            # doubled the time every reader of the table spends (0.27 of 0.54 CPU seconds for
            # 20,000 genes × 1536, benches/bench_startup.py)
            df.write_parquet(tmp, compression="uncompressed", metadata={_META_KEY: meta})
        return path

    def _write_arrow(self, path: Path, meta: str) -> None:
        """An uncompressed Arrow IPC file: what :meth:`to_frame` holds, as polars' ``write_ipc``
        lays it out (``gene`` large string, ``embedding`` fixed-size list of float32), with
        the metadata in the schema."""
        import pyarrow as pa
        import pyarrow.ipc

        genes = pa.array(self.genes, type=pa.large_string())
        values = pa.array(np.ascontiguousarray(self.matrix).reshape(-1))  # a view, no copy
        embedding = pa.FixedSizeListArray.from_arrays(values, self.dimension)
        schema = pa.schema(
            [("gene", genes.type), ("embedding", embedding.type)],
            metadata={_META_KEY: meta},
        )
        batch = pa.record_batch([genes, embedding], schema=schema)
        with (
            atomic_path(path) as tmp,
            pa.OSFile(str(tmp), "wb") as sink,
            pyarrow.ipc.new_file(sink, schema) as writer,
        ):
            writer.write_batch(batch)

    @classmethod
    def read(
        cls,
        path: str | os.PathLike[str],
        *,
        model_id: str | None = None,
        text_source: str | None = None,
    ) -> GeneEmbeddings:
        """Read our parquet or Arrow IPC table, or a GenePT pickle (``.pickle``/``.pkl``: dict
        symbol → vector).

        The format is told by the file's first bytes (an Arrow IPC file starts ``ARROW1``),
        a pickle by its suffix. A table's ``embedding`` column may be ``Array`` or ``List``
        (of one length) of any float or integer type. A float32 ``Array`` in one piece (what
        :meth:`write` writes) is not copied: ``matrix`` is a view of the decoded parquet
        column, or of the Arrow file mapped into memory (read-only; the file must not be
        rewritten in place while the table is in use: :meth:`write` replaces a file by
        renaming a new one over it, which leaves a mapped table intact).

        Parameters
        ----------
        path
            The file.
        model_id, text_source
            Override the metadata (useful for pickles, which carry none: their model is
            guessed from the file name, e.g. ``..._ada_...`` → text-embedding-ada-002).
        """
        path = Path(path)
        if not path.is_file():
            msg = f"no such file: {path}"
            raise FileNotFoundError(msg)
        table = cls._read_pickle(path) if path.suffix.lower() in _PICKLE_SUFFIXES else None
        if table is None:
            table = cls._read_arrow(path) if _is_arrow(path) else cls._read_parquet(path)
        if model_id is not None:
            table.metadata["model_id"] = model_id
        if text_source is not None:
            table.metadata["text_source"] = text_source
        return table

    @classmethod
    def _read_parquet(cls, path: Path) -> GeneEmbeddings:
        # pyarrow, not polars: it hands a fixed-size embedding column over as one float32
        # buffer that numpy views without a copy (_embedding_matrix), and the encode path,
        # which loads pyarrow anyway (pandas does), never imports polars (~0.3 s)
        import pyarrow as pa
        import pyarrow.parquet as pq

        # memory-mapped: the pages are decoded from the map instead of being read into
        # memory first (first read of 20,000 x 1536: 0.30 instead of 0.55 CPU s); the
        # decoded columns do not refer to the map, and write() replaces a file by rename
        # pre_buffer=False: the column chunks are decoded as they are read instead of
        # being buffered whole first (peak of the read 434 instead of 552 MiB over the
        # imports for 20,000 x 1536)
        with (
            _readable(path, "parquet"),
            pq.ParquetFile(path, memory_map=True, pre_buffer=False) as pf,
        ):
            _check_columns(pf.schema_arrow.names, path)
            kv = pf.metadata.metadata or {}
            data = pf.read(columns=["gene", "embedding"])
            # pyarrow's allocator keeps the decoding's freed pages for reuse; a streamed job
            # would carry them to its end (RSS +420 MiB instead of the table's 123 MiB)
            pa.default_memory_pool().release_unused()
        return cls._from_columns(data, kv, path)

    @classmethod
    def _read_arrow(cls, path: Path) -> GeneEmbeddings:
        # mapped, not read: the columns of an uncompressed file are views of the map, so a
        # 20,000 x 1536 table opens in about a millisecond instead of the parquet decode's
        # 0.25-0.5 s (benches/bench_startup.py); a compressed file is decompressed into memory
        import pyarrow as pa
        import pyarrow.ipc

        with _readable(path, "Arrow IPC"), pa.memory_map(str(path), "r") as source:
            reader = pyarrow.ipc.open_file(source)
            _check_columns(reader.schema.names, path)
            kv = reader.schema.metadata or {}
            data = reader.read_all().select(["gene", "embedding"])
        return cls._from_columns(data, kv, path)

    @classmethod
    def _from_columns(cls, data: pa.Table, kv: Mapping[bytes, bytes], path: Path) -> GeneEmbeddings:
        """The table from a file's ``gene`` and ``embedding`` columns and its key-value
        metadata (our provenance under ``genept_fast``; other keys ignored)."""
        genes = _gene_column(data.column("gene"), path)
        matrix = _embedding_matrix(data.column("embedding"), path)
        meta: dict[str, Any] = {}
        raw = kv.get(_META_KEY.encode())
        if raw:
            try:
                meta = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = {}
        try:
            return cls(genes, matrix, meta)
        except InputError as exc:
            msg = f"{path}: {exc}"
            raise InputError(msg) from None

    @classmethod
    def _read_pickle(cls, path: Path) -> GeneEmbeddings:
        with path.open("rb") as fh:
            return cls.from_genept_pickle(
                fh,
                where=str(path),
                metadata={
                    "model_id": _infer_pickle_model(path.name),
                    "text_source": "genept-pickle",
                    "source_file": path.name,
                },
            )

    @classmethod
    def from_genept_pickle(
        cls, stream: IO[bytes], *, where: str, metadata: Mapping[str, Any]
    ) -> GeneEmbeddings:
        """A table from a GenePT pickle (a dict symbol → vector) read from ``stream``.

        The pickle is read by the restricted unpickler (dicts, lists, strings, numbers and
        numpy arrays only; anything else is refused without running code). A vector whose
        key is no name (empty, blank, None or NaN) names no gene: it is left out with a
        warning that counts such vectors, and the count is kept in
        ``metadata["n_unnamed_dropped"]`` (the file is someone else's: the user cannot fix
        it, and one unnamed vector should not make GenePT's table unusable). Other
        non-string keys, and names that differ only in surrounding whitespace, are refused.

        Parameters
        ----------
        stream
            A binary file object positioned at the pickle (a file, or a member of a zip).
        where
            Names the source in error messages.
        metadata
            Provenance for the table (``model_id``, ``text_source``, ...).
        """
        try:
            obj = _RestrictedUnpickler(stream).load()
        except pickle.UnpicklingError as exc:
            msg = f"{where}: {exc}"
            raise InputError(msg) from None
        except Exception as exc:
            msg = f"{where} is not a readable pickle: {exc}"
            raise InputError(msg) from None
        if not isinstance(obj, dict) or not obj:
            msg = f"{where}: expected a non-empty dict gene symbol → vector"
            raise InputError(msg)
        genes: list[str] = []
        rows: list[np.ndarray] = []
        unnamed = 0
        for k, v in obj.items():
            if _unnamed(k):
                unnamed += 1
                continue
            if not isinstance(k, str):
                msg = f"{where}: key {k!r} is not a gene symbol string"
                raise InputError(msg)
            try:
                arr = np.asarray(v, dtype=np.float32)
            except (TypeError, ValueError):
                msg = f"{where}: the vector of {k!r} is not numeric"
                raise InputError(msg) from None
            if arr.ndim != 1:
                msg = f"{where}: the vector of {k!r} has shape {arr.shape}"
                raise InputError(msg)
            genes.append(k)
            rows.append(arr)
        if not genes:
            msg = f"{where}: none of its {unnamed:,} vectors has a gene name"
            raise InputError(msg)
        dims = {r.shape[0] for r in rows}
        if len(dims) != 1:
            msg = f"{where}: vectors have different lengths {sorted(dims)[:5]}"
            raise InputError(msg)
        meta = dict(metadata)
        if unnamed:
            warnings.warn(
                f"{where}: {unnamed:,} of {len(obj):,} vectors have an empty or missing gene "
                "name; left out",
                UserWarning,
                stacklevel=2,
            )
            meta["n_unnamed_dropped"] = unnamed
        try:
            return cls(genes, np.stack(rows), meta)
        except InputError as exc:
            msg = f"{where}: {exc}"
            raise InputError(msg) from None

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_texts(
        cls, texts_df: pl.DataFrame, embedder: Embedder, *, progress: bool = False
    ) -> GeneEmbeddings:
        """Embed one text per gene.

        Parameters
        ----------
        texts_df
            polars DataFrame with columns ``gene`` and ``text`` (and optionally ``source``).
            A null or blank text gives a zero vector, recorded in ``metadata["missing"]``.
        embedder
            See :func:`genept_fast.embed.get_embedder`.
        progress
            Show a progress bar.

        Returns
        -------
        GeneEmbeddings
            Rows in the order of ``texts_df``; metadata records the model, dimension, text
            source(s), creation time and the genes without text.
        """
        import polars as pl

        if not isinstance(texts_df, pl.DataFrame):
            msg = f"texts_df must be a polars DataFrame, got {type(texts_df).__name__}"
            raise InputError(msg)
        for col in ("gene", "text"):
            if col not in texts_df.columns:
                msg = f"the texts table needs columns 'gene' and 'text', has {texts_df.columns}"
                raise InputError(msg)
        if texts_df["gene"].null_count():
            msg = "the texts table has null genes"
            raise InputError(msg)
        genes = texts_df["gene"].cast(pl.String).to_list()
        texts = [t if isinstance(t, str) else "" for t in texts_df["text"].to_list()]
        before = embedder.n_truncated
        matrix = embedder.embed(texts, progress=progress)
        missing = [g for g, t in zip(genes, texts, strict=False) if not t.strip()]
        sources = "unknown"
        if "source" in texts_df.columns:
            vals = sorted({str(s) for s in texts_df["source"].drop_nulls().to_list()})
            sources = "+".join(vals) if vals else "unknown"
        meta = {
            "model_id": embedder.model_id,
            "text_source": sources,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_genes": len(genes),
            "missing": missing,
            "n_truncated": embedder.n_truncated - before,
            "max_input_tokens": embedder.max_input_tokens,
        }
        if matrix.shape[1] == 0:
            msg = "no gene has a text: nothing to embed"
            raise InputError(msg)
        return cls(genes, matrix, meta)

    # -- alignment -----------------------------------------------------------------------------
    @property
    def key_index(self) -> KeyIndex:
        """The table's genes resolved through the identity layer (built once, on first use)."""
        if self._keys is None:
            self._keys = index_keys(self.genes)
        return self._keys

    def index_for(
        self,
        var_names: Iterable[str],
        *,
        alternatives: Sequence[str | None] | None = None,
        species: str = "auto",
    ) -> tuple[np.ndarray, Coverage]:
        """Row of this table for each query gene, matched through the identity layer.

        A table keyed by any identifier form (symbols, Ensembl IDs with or without version,
        Entrez IDs, mouse genes) matches a dataset that uses any other; see
        :func:`genept_fast.genes.match.match_genes` for the order of preference and what
        happens to ambiguous identifiers and duplicates.

        Parameters
        ----------
        var_names
            The dataset's gene identifiers.
        alternatives
            A second identifier per gene (e.g. a symbol column next to Ensembl IDs), tried
            where the first finds nothing.
        species
            Species of the dataset's symbols: ``"auto"`` (from the names), ``"human"`` or
            ``"mouse"``.

        Returns
        -------
        index : numpy.ndarray
            int64, one per query gene: the table row, or -1 where the gene is absent,
            ambiguous, a shadowed duplicate, or its vector is all zeros (not embedded).
        coverage : Coverage
            Counts, how each gene matched, and the unmatched/ambiguous genes by name.
        """
        names = [str(v) for v in var_names]
        nonzero = np.asarray(self.matrix.any(axis=1), dtype=bool)
        return match_genes(
            names, self.key_index, nonzero=nonzero, alternatives=alternatives, species=species
        )

    def align(
        self,
        var_names: Iterable[str],
        *,
        alternatives: Sequence[str | None] | None = None,
        species: str = "auto",
    ) -> tuple[np.ndarray, Coverage]:
        """The embeddings of ``var_names``, zero rows where a gene is not embedded.

        Matching as in :meth:`index_for`.

        Returns
        -------
        matrix : numpy.ndarray
            float32 ``(len(var_names), dimension)``.
        coverage : Coverage
        """
        idx, cov = self.index_for(var_names, alternatives=alternatives, species=species)
        out = np.zeros((idx.shape[0], self.dimension), dtype=np.float32)
        hit = idx >= 0
        out[hit] = self.matrix[idx[hit]]
        return out, cov

    def rows_for(
        self,
        var_names: Iterable[str],
        *,
        alternatives: Sequence[str | None] | None = None,
        species: str = "auto",
    ) -> tuple[np.ndarray, np.ndarray, Coverage]:
        """Only the rows a dataset uses, and the map from its genes to them.

        Returns ``(rows, index, coverage)``: ``rows[k]`` is the embedding of the ``k``-th
        embedded dataset gene (dataset order) and ``index`` maps each dataset gene to its row
        of ``rows`` (``-1``: none), for :func:`genept_fast.weighted_embedding` with
        ``gene_index=index``. Holds ``rows`` only, not the whole table.
        """
        idx, cov = self.index_for(var_names, alternatives=alternatives, species=species)
        hit = idx >= 0
        index = np.full(idx.shape, -1, dtype=np.int64)
        index[hit] = np.arange(int(hit.sum()), dtype=np.int64)
        return np.ascontiguousarray(self.matrix[idx[hit]], dtype=np.float32), index, cov
