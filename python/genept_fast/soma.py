"""TileDB-SOMA experiments (CELLxGENE Census) as a source of cells, and embeddings written back.

:class:`SomaSource` is a :class:`~genept_fast.cells.ChunkSource` over one ``X`` layer of one
measurement of a SOMA experiment, restricted to the cells an obs value filter selects. Its rows
are the selected cells in ``soma_joinid`` order; ``read(a, b)`` reads only those cells' entries
from the sparse ``X`` (in blocks of whole tiles of rows, each one TileDB read of a joinid range
or of the joinids, rows put in place by their joinid, columns by the var joinid), so memory is
bounded by the chunk, whatever the experiment's size; a source opened from a URI reads with
:data:`DEFAULT_TILEDB_CONFIG` unless given a context. Gene names
come from a var column (``var_key``: Census's ``feature_name``; ``var_id`` as
``tiledbsoma.io.from_anndata`` writes it), and the whole var table goes with them, so the gene
identity layer sees the Ensembl ids of ``feature_id`` too.

Every output of a job on a SOMA source is keyed by ``soma_joinid`` (:meth:`SomaSource.soma_joinids`:
a column of a ``.parquet`` output and of a ``.h5ad`` output's obs, an array of a ``.zarr``
output, a ``<output>.soma_joinid.npy`` beside a ``.npy`` output), next to the obs id column.

:func:`write_into` writes embeddings back into an experiment as Census hosts its embeddings: a
``SparseNDArray`` of float32 in ``ms[measurement].obsm[key]``, dimension 0 the cell's
``soma_joinid`` (its shape the obs domain), dimension 1 the embedding feature, every embedded
cell stored explicitly (also its zeros: a cell with no entry was not embedded), with the
provenance as a JSON string in the array's metadata under ``CxG_embedding_info`` (the Census
fields ``data_type``, ``experiment_name``, ``measurement_name``, ``n_embeddings``,
``n_features``, and genept-fast's record).

tiledbsoma is the ``soma`` extra (``pip install 'genept-fast[soma]'``); it is imported when a
source is opened, never at import time.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from genept_fast._extras import missing_extra
from genept_fast.errors import InputError, MalformedMatrixError
from genept_fast.kernels import coo_into_csr

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import pandas as pd
    from typing_extensions import Self

__all__ = [
    "DEFAULT_TILEDB_CONFIG",
    "EMBEDDING_INFO_KEY",
    "SomaSource",
    "check_into",
    "default_context",
    "is_soma_uri",
    "read_embedding",
    "write_into",
]

#: The metadata key under which Census stores an embedding's description (a JSON string).
EMBEDDING_INFO_KEY = "CxG_embedding_info"

#: Stored values read from TileDB at a time (a chunk's cells are read in blocks of about this
#: many: 4 Mi values are ~80 MB of coordinates and data).
READ_ENTRIES = 4 * 1024 * 1024

#: Cells of the first block read, before the values per cell are known.
FIRST_BLOCK_CELLS = 1024

#: A filtered selection is read as one joinid range (the cells between dropped) when the range
#: is at most this many times its cells; a sparser one is read by its joinids.
SPAN_READ = 4

#: The TileDB configuration of the context a :class:`SomaSource` opens a URI with when it is
#: given none (a context given is used as it is, and an open experiment keeps its own):
#:
#: - ``soma.init_buffer_bytes`` bounds each column's result buffer of a read at 8 MiB (1 Mi
#:   values of a soma_dim), so a block (:data:`READ_ENTRIES` values) comes back in a few
#:   batches instead of in buffers sized for far more than the block. Measured on GenePT-w of
#:   20,000 cells: peak RSS 945-949 MiB against 1,032-1,046 with 64 MiB buffers (and 16 MiB:
#:   963-983), the same CPU. It costs no extra transfer from a remote experiment (Census):
#:   TileDB keeps the tiles it has fetched between batches.
#: - ``sm.mem.malloc_trim`` off: TileDB otherwise calls glibc's ``malloc_trim`` after every
#:   query (every block), handing the memory it has just freed back to the OS, so that the next
#:   block faults every page of its tiles and buffers in again; the source trims once per chunk
#:   instead (:meth:`SomaSource.read`, whenever its context turns TileDB's trim off), which
#:   keeps the peak within the 1 GiB goal. Measured on GenePT-w of 150,000 cells: page faults
#:   2.1 M -> 1.1 M, 1.5-1.8 CPU s less, peak RSS 958-961 -> 978-988 MiB (TileDB's trim left
#:   off and never done: 1,073 MiB).
#:
#: TileDB's memory budget and thread counts stay at TileDB's defaults (a small budget fails on
#: an experiment whose tile offsets do not fit it).
DEFAULT_TILEDB_CONFIG: dict[str, str] = {
    "soma.init_buffer_bytes": str(8 * 1024 * 1024),
    "sm.mem.malloc_trim": "false",
}

#: var columns that name genes, in the order tried when ``var_key`` is not given.
VAR_KEYS = ("feature_name", "var_id")
#: obs columns that name cells, in the order tried when ``obs_key`` is not given.
OBS_KEYS = ("obs_id", "observation_joinid")

_EXTRA = "soma"
_REMOTE = ("tiledb://", "s3://", "gs://", "gcs://", "az://", "azure://", "http://", "https://")


def _tiledbsoma(what: str = "reading a SOMA experiment") -> Any:
    try:
        import tiledbsoma  # the 'soma' extra: imported only when a SOMA source is used
    except ImportError as e:
        raise missing_extra(_EXTRA, what) from e
    return tiledbsoma


def default_context() -> Any:
    """A new ``tiledbsoma.SOMATileDBContext`` with :data:`DEFAULT_TILEDB_CONFIG`: what a
    :class:`SomaSource` opens a URI with when given no context."""
    soma = _tiledbsoma()
    return soma.SOMATileDBContext(tiledb_config=dict(DEFAULT_TILEDB_CONFIG))


def _chunk_trim(context: Any) -> Callable[[], None] | None:
    """glibc's ``malloc_trim(0)`` when ``context`` turns TileDB's own trim after every query off
    (``sm.mem.malloc_trim``, as :data:`DEFAULT_TILEDB_CONFIG` does), for the source to call once
    per chunk; ``None`` when TileDB trims itself, or where the C library has no such call."""
    config = getattr(context, "tiledb_config", None) or {}
    if str(config.get("sm.mem.malloc_trim", "true")).strip().lower() not in ("false", "0"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

    def given_back() -> None:
        trim(0)

    return given_back


def is_soma_uri(data: Any) -> bool:
    """Whether ``data`` names a TileDB-SOMA object: a ``tiledb://`` / cloud URI, or a local
    directory that is a TileDB group (``__tiledb_group.tdb`` inside). Imports nothing."""
    if not isinstance(data, (str, os.PathLike)):
        return False
    text = os.fspath(data)
    if text.startswith(_REMOTE):
        return True
    path = Path(text.removeprefix("file://"))
    return path.is_dir() and (path / "__tiledb_group.tdb").exists()


def _numpy_dtype(arrow_type: Any, where: str) -> np.dtype[Any]:
    """The dtype rows are read as: float32/float64 kept, float16 and integers as float32."""
    try:
        dt = np.dtype(arrow_type.to_pandas_dtype())
    except (NotImplementedError, TypeError) as e:
        msg = f"{where} holds {arrow_type}, which is not an expression matrix (numbers)"
        raise InputError(msg) from e
    if dt in (np.float32, np.float64):
        return dt
    if dt == np.float16 or dt.kind in "iu":
        return np.dtype(np.float32)
    msg = (
        f"{where} holds {arrow_type}, which is not an expression matrix (numbers); "
        "expected float32, float64, float16 or integers"
    )
    raise InputError(msg)


def _pick(have: list[str], wanted: str | None, defaults: tuple[str, ...], what: str) -> str | None:
    if wanted is not None:
        if wanted not in have:
            msg = f"{what} has no column {wanted!r}; available: {have}"
            raise InputError(msg)
        return wanted
    return next((k for k in defaults if k in have), None)


def _measurement(exp: Any, name: str, uri: str) -> Any:
    if name not in exp.ms:
        msg = f"{uri}: has no measurement {name!r} (measurements: {sorted(exp.ms.keys())})"
        raise InputError(msg)
    return exp.ms[name]


class _Rows:
    """A chunk's CSR, filled block by block in place: its arrays are sized from an estimate of
    the chunk's stored values (pages are touched only as they are filled, so an estimate too
    high costs no memory) and grown if it was too low; each block is let go once copied, so the
    chunk is never held twice."""

    def __init__(self, n: int, n_genes: int, dtype: np.dtype[Any], estimate: int) -> None:
        self.n, self.n_genes = n, n_genes
        self.index: np.dtype[Any] = np.dtype(
            np.int32 if max(estimate, n_genes) < 2**31 else np.int64
        )
        self.data = np.empty(max(estimate, 1), dtype=dtype)
        self.indices = np.empty(max(estimate, 1), dtype=self.index)
        self.indptr = np.zeros(n + 1, dtype=self.index)
        self.row = self.at = 0

    def _grow(self, need: int) -> None:
        size = max(2 * self.data.size, need)
        if size >= 2**31 and self.index == np.int32:
            self.index = np.dtype(np.int64)
            self.indptr = self.indptr.astype(np.int64)
        for name in ("data", "indices"):
            old = getattr(self, name)
            new = np.empty(size, dtype=self.index if name == "indices" else old.dtype)
            new[: self.at] = old[: self.at]
            setattr(self, name, new)

    def add(
        self, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]], m: int, **maps: Any
    ) -> int:
        """The next ``m`` rows from a block's batches of entries (row joinids, column joinids,
        values, as TileDB gave them), sorted into CSR straight into the chunk's arrays by the
        core's stable counting sort by row (a row's entries keep their order: TileDB gives
        each row's columns sorted), rows and columns mapped by ``maps``
        (:func:`~genept_fast.kernels.coo_into_csr`'s ``first``, ``row_of``, ``row_ids``,
        ``col_of``). Returns the entries kept."""
        size = sum(b[0].size for b in batches)
        if self.at + size > self.data.size:
            # grown to what the rows so far project for the whole chunk (and a quarter, as the
            # estimate has), when that is more
            done = self.row + m
            self._grow(max(self.at + size, (self.at + size) * self.n * 5 // (4 * max(done, 1))))
        kept = coo_into_csr(
            batches,
            self.n_genes,
            base=self.at,
            indptr=self.indptr[self.row : self.row + m + 1],
            indices=self.indices[self.at :],
            data=self.data[self.at :],
            **maps,
        )
        self.row, self.at = self.row + m, self.at + kept
        return kept

    def csr(self) -> sp.csr_array:
        """The chunk, in canonical form (columns sorted within rows, no duplicates), as
        scipy's COO -> CSR gives it: one pass checks it, and a read that came otherwise is
        sorted and summed."""
        data, indices = self.data[: self.at], self.indices[: self.at]
        X = sp.csr_array((data, indices, self.indptr), shape=(self.n, self.n_genes))
        if not X.has_canonical_format:
            X.sum_duplicates()
        return X


def _row_tile(X: Any) -> int | None:
    """The tile extent of ``X``'s first dimension (``soma_dim_0``), from its schema."""
    try:
        dims = json.loads(X.schema_config_options().dims)
        tile = int(dims["soma_dim_0"]["tile"])
    except (AttributeError, KeyError, TypeError, ValueError):  # not told: blocks cut by cells
        return None
    return tile if tile > 0 else None


class SomaSource:
    """The cells of a TileDB-SOMA experiment (a local one, or CELLxGENE Census) by row chunks.

    Parameters
    ----------
    experiment
        A URI (a local path, ``tiledb://``, ``s3://``...) or an open ``tiledbsoma.Experiment``
        (e.g. ``census["census_data"]["homo_sapiens"]``; left open by :meth:`close`).
    measurement
        The measurement (``ms``) whose ``X`` is read; Census and ``from_anndata``: ``"RNA"``.
    layer
        The ``X`` layer: ``"raw"`` (Census's counts), ``"data"`` (``from_anndata``'s ``X``)...
        By default ``"raw"`` when there is one, else the only layer.
    obs_filter
        A SOMA value filter on obs (``"cell_type == 'T cell' and is_primary_data == True"``);
        ``None``: every cell.
    var_key
        The var column of gene names (``feature_name``, ``feature_id``, ``var_id``...); by
        default ``feature_name`` (Census) or ``var_id`` (``from_anndata``).
    obs_key
        The obs column of cell names; by default ``obs_id`` (``from_anndata``) or
        ``observation_joinid`` (Census), else the ``soma_joinid`` as text.
    context
        A ``tiledbsoma.SOMATileDBContext`` (credentials, region, buffer sizes), used as given;
        by default one with :data:`DEFAULT_TILEDB_CONFIG` (an open ``experiment`` keeps its
        own context).

    Raises
    ------
    InputError
        Nothing at the URI, not an experiment, a missing measurement, layer or column, a bad
        filter, a dense or non-numeric ``X``; each named with what there is.
    MissingDependencyError
        tiledbsoma is not installed (the ``soma`` extra).
    """

    def __init__(
        self,
        experiment: Any,
        *,
        measurement: str = "RNA",
        layer: str | None = None,
        obs_filter: str | None = None,
        var_key: str | None = None,
        obs_key: str | None = None,
        context: Any = None,
    ) -> None:
        soma = _tiledbsoma()
        self._own = isinstance(experiment, (str, os.PathLike))
        if not self._own and not isinstance(experiment, soma.Experiment):
            msg = (
                "experiment must be a SOMA experiment URI or a tiledbsoma.Experiment, got "
                f"{type(experiment).__name__}"
            )
            raise InputError(msg)
        if self._own and context is None:
            context = default_context()
        self._exp: Any = self._open(soma, experiment, context) if self._own else experiment
        #: The ``SOMATileDBContext`` the experiment is read with.
        self.context: Any = self._exp.context
        self._trim = _chunk_trim(self.context)
        try:
            self.uri = str(self._exp.uri)
            self.measurement = measurement
            self.obs_filter = obs_filter
            self._setup(soma, layer, var_key, obs_key)
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------------

    @staticmethod
    def _open(soma: Any, uri: Any, context: Any) -> Any:
        text = os.fspath(uri)
        if not text.startswith(_REMOTE):  # a local path: named the same from any folder
            text = str(Path(text.removeprefix("file://")).absolute())
        try:
            obj = soma.open(text, mode="r", context=context)
        except soma.DoesNotExistError as e:
            msg = f"{text}: no SOMA experiment there (nothing found at that URI)"
            raise InputError(msg) from e
        except (soma.SOMAError, OSError, ValueError, TypeError) as e:
            msg = f"{text}: cannot open as a SOMA experiment: {e}"
            raise InputError(msg) from e
        if not isinstance(obj, soma.Experiment):
            kind = getattr(obj, "soma_type", type(obj).__name__)
            obj.close()
            msg = (
                f"{text}: is a {kind}, not a SOMAExperiment (for Census, open "
                "census['census_data']['homo_sapiens'])"
            )
            raise InputError(msg)
        return obj

    def _setup(
        self, soma: Any, layer: str | None, var_key: str | None, obs_key: str | None
    ) -> None:
        self._ms = _measurement(self._exp, self.measurement, self.uri)
        self.layer = self._choose_layer(layer)
        X = self._ms.X[self.layer]
        where = f"{self.uri}: ms[{self.measurement!r}].X[{self.layer!r}]"
        if not isinstance(X, soma.SparseNDArray):
            msg = f"{where} is a {X.soma_type}; genept-fast reads sparse X layers (SparseNDArray)"
            raise InputError(msg)
        self._X = X
        #: stored values and cells read so far, to size the blocks read (not ``X.nnz``: on a
        #: layer of many fragments tiledbsoma counts it by reading, measured at 670 MB)
        self._seen = (0, 0)
        #: X's tile extent along the cells (blocks read end on its multiples), if known
        self._tile = _row_tile(X)
        self._data_type = X.schema.field("soma_data").type
        self.dtype = _numpy_dtype(self._data_type, where)
        #: ``ms/<measurement>/X/<layer>``: what is read, for provenance.
        self.matrix = f"ms/{self.measurement}/X/{self.layer}"
        self._setup_var(var_key)
        self._setup_obs(obs_key)

    def _choose_layer(self, layer: str | None) -> str:
        have = sorted(self._ms.X.keys()) if "X" in self._ms else []
        if layer is None:
            if "raw" in have or len(have) == 1:
                return "raw" if "raw" in have else have[0]
            msg = (
                f"{self.uri}: ms[{self.measurement!r}] has X layers {have}; choose one with layer="
            )
            raise InputError(msg)
        if layer not in have:
            msg = f"{self.uri}: ms[{self.measurement!r}] has no X layer {layer!r} (layers: {have})"
            raise InputError(msg)
        return layer

    def _setup_var(self, var_key: str | None) -> None:
        var = self._ms.var.read().concat().to_pandas()
        have = [c for c in var.columns if c != "soma_joinid"]
        key = _pick(have, var_key, VAR_KEYS, f"{self.uri}: ms[{self.measurement!r}].var")
        if key is None:
            msg = (
                f"{self.uri}: var has none of {list(VAR_KEYS)}; name the gene column with "
                f"var_key= (columns: {have})"
            )
            raise InputError(msg)
        self.var_key = key
        joinids = var["soma_joinid"].to_numpy(dtype=np.int64)
        order = np.argsort(joinids, kind="stable")
        var = var.iloc[order]
        joinids = joinids[order]
        n_cols = int(self._X.shape[1])
        if joinids.size and (joinids[0] < 0 or joinids[-1] >= n_cols):
            msg = f"{self.uri}: var soma_joinid {int(joinids[-1])} is outside X's {n_cols} columns"
            raise InputError(msg)
        # X's columns are var joinids; each becomes the position of its gene in var (-1: none).
        # Sized by var's joinids, not by X's shape, which may be a domain far wider than var.
        self._col_of = np.full(int(joinids[-1]) + 1 if joinids.size else 0, -1, dtype=np.int32)
        self._col_of[joinids] = np.arange(joinids.size, dtype=np.int32)
        self._identity_cols = bool(
            joinids.size == n_cols and np.array_equal(joinids, np.arange(n_cols))
        )
        names = var[key].astype(str).to_numpy()
        frame = var.drop(columns=["soma_joinid"])
        frame.index = names
        self._var = frame
        self._var_names = [str(n) for n in names]

    def _setup_obs(self, obs_key: str | None) -> None:
        obs = self._exp.obs
        have = [f.name for f in obs.schema if f.name != "soma_joinid"]
        self.obs_key = _pick(have, obs_key, OBS_KEYS, f"{self.uri}: obs")
        try:
            table = obs.read(value_filter=self.obs_filter, column_names=["soma_joinid"]).concat()
        except (
            Exception
        ) as e:  # tiledbsoma raises SOMAError / ValueError / TileDBError on a bad filter
            msg = f"{self.uri}: bad obs filter {self.obs_filter!r}: {e}"
            raise InputError(msg) from e
        self._ids = np.sort(table["soma_joinid"].to_numpy().astype(np.int64, copy=False))

    # -- the protocol ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        what = f"{self.uri} ms[{self.measurement!r}].X[{self.layer!r}]"
        return f"{what} where {self.obs_filter}" if self.obs_filter else what

    @property
    def path(self) -> Path | None:
        """The experiment's folder when it is local (an output may not be it or inside it)."""
        return None if self.uri.startswith(_REMOTE) else Path(self.uri.removeprefix("file://"))

    @property
    def n_cells(self) -> int:
        return int(self._ids.size)

    @property
    def n_genes(self) -> int:
        return len(self._var_names)

    @property
    def var_names(self) -> list[str]:
        return list(self._var_names)

    @property
    def var(self) -> pd.DataFrame:
        """The measurement's var table, indexed by ``var_key`` (every column kept)."""
        return self._var

    def var_frame(self) -> pd.DataFrame:
        return self._var

    def soma_joinids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The ``soma_joinid`` of cells ``start:stop`` (int64, increasing)."""
        return self._ids[start:stop].copy()

    def _coords(self, ids: np.ndarray) -> Any:
        if ids.size and int(ids[-1]) - int(ids[0]) + 1 == ids.size:
            return slice(int(ids[0]), int(ids[-1]))  # a run of joinids: SOMA slices are closed
        return ids

    def obs_names(self, start: int = 0, stop: int | None = None) -> list[str]:
        ids = self._ids[start:stop]
        if self.obs_key is None:
            return [str(i) for i in ids]
        if not ids.size:
            return []
        table = self._exp.obs.read(
            coords=(self._coords(ids),), column_names=["soma_joinid", self.obs_key]
        ).concat()
        got = table["soma_joinid"].to_numpy()
        names = np.asarray(table[self.obs_key].to_pylist(), dtype=object)
        return [str(n) for n in names[np.argsort(got, kind="stable")]]

    def obs_frame(self) -> pd.DataFrame:
        """The obs table of the selected cells (``soma_joinid`` a column, the obs names the
        index), in memory."""
        ids = self._ids
        obs = self._exp.obs
        if ids.size:
            df = obs.read(coords=(self._coords(ids),)).concat().to_pandas()
        else:
            df = obs.schema.empty_table().to_pandas()
        df = df.sort_values("soma_joinid", kind="stable")
        index = df[self.obs_key].astype(str) if self.obs_key else df["soma_joinid"].astype(str)
        df.index = index.to_numpy()
        return df

    def read(self, start: int, stop: int) -> sp.csr_array:
        """Rows ``start:stop`` as CSR (float32/float64, column indices sorted within rows).

        Read in blocks (:meth:`_blocks`) of whole tiles of ``X``'s rows holding about
        :data:`READ_ENTRIES` stored values, each one TileDB read of a joinid range
        (:meth:`_block_coords`) in TileDB's unordered result order (asking it for row-major
        order was measured ten times slower), whose batches are held as they come (views of
        TileDB's buffers) and then sorted by row straight into the chunk's CSR by the core
        (:meth:`_Rows.add`): memory is about the chunk's CSR plus one block, whatever the
        experiment's size.
        """
        if not (0 <= start <= stop <= self.n_cells):
            msg = f"rows {start}:{stop} out of range for {self.n_cells} cells"
            raise InputError(msg)
        ids = self._ids[start:stop]
        values, cells = self._seen
        per_cell = values / cells if cells else 0.0
        out = _Rows(ids.size, self.n_genes, self.dtype, int(per_cell * ids.size * 1.25))
        for a, b in self._blocks(ids):
            kept = self._read_block(ids[a:b], start + a, out)
            values, cells = self._seen
            self._seen = (values + kept, cells + b - a)
        if self._trim is not None:  # what TileDB freed while reading the chunk, given back
            self._trim()
        return out.csr()

    def _blocks(self, ids: np.ndarray) -> Iterator[tuple[int, int]]:
        """``(a, b)``: the cells ``ids[a:b]`` of each block read. A block ends on a multiple of
        X's tile extent along the cells (:attr:`_tile`: Census's and tiledbsoma's 2,048) and
        spans as many tiles of rows as hold about :data:`READ_ENTRIES` values (measured: reads
        of whole tiles of rows took a quarter less CPU than reads cut inside them); the first
        block ever read, before the values per cell are known, is :data:`FIRST_BLOCK_CELLS`
        cells, and so is every block where one tile of rows holds over twice that many values
        (then cut by cells)."""
        a = 0
        while a < ids.size:
            values, cells = self._seen
            per_id = values / cells * ids.size / (int(ids[-1]) - int(ids[0]) + 1) if cells else 0
            step = int(READ_ENTRIES / max(values / cells, 1)) if cells else FIRST_BLOCK_CELLS
            b = min(a + max(step, 1), ids.size)
            tile = self._tile
            if cells and tile and tile * per_id <= 2 * READ_ENTRIES:
                tiles = max(1, round(READ_ENTRIES / max(tile * per_id, 1)))
                end = (int(ids[a]) // tile + tiles) * tile  # the first joinid after the block
                b = int(np.searchsorted(ids, end, side="left"))
            yield a, b
            a = b

    def _block_coords(self, ids: np.ndarray) -> tuple[Any, np.ndarray | None]:
        """What one block's TileDB read asks for, and the block row of each joinid in the range
        read (``None``: the range is the block's cells). A run of joinids is one slice; so is a
        selection whose joinids span at most :data:`SPAN_READ` times its cells (the cells
        between are read and dropped: TileDB reads one range much faster than thousands of
        points); a sparser one is read by its joinids."""
        lo, hi = int(ids[0]), int(ids[-1])
        span = hi - lo + 1
        if span == ids.size:
            return slice(lo, hi), None
        if span <= SPAN_READ * ids.size:
            row_of = np.full(span, -1, dtype=np.int32)
            row_of[ids - lo] = np.arange(ids.size, dtype=np.int32)
            return slice(lo, hi), row_of
        return ids, None

    def _read_block(self, ids: np.ndarray, first: int, out: _Rows) -> int:
        """Cells ``ids`` (rows ``first:`` of the source) read and added to ``out``; returns the
        values kept. The block's batches are held as TileDB gave them (numpy views of its arrow
        buffers) and sorted into the chunk by the core in one call."""
        n = int(ids.size)
        coords, row_of = self._block_coords(ids)
        try:
            batches = [self._batch(t) for t in self._X.read(coords=(coords,)).tables()]
        except InputError:
            raise
        except Exception as e:  # TileDB raises its own errors on a missing or corrupt fragment
            msg = f"{self.name}: cannot read cells {first}:{first + n}: {e}"
            raise InputError(msg) from e
        # A span read's cells not selected have row -1 and are skipped. TileDB returns each
        # tile's cells in row-major order and a row's tiles in column order, so a stable sort
        # by row leaves every row's columns sorted; the chunk's CSR is checked for that (and
        # sorted if a read came otherwise) in ``_Rows.csr``.
        maps: dict[str, Any] = {"col_of": None if self._identity_cols else self._col_of}
        if row_of is not None:
            maps.update(first=int(ids[0]), row_of=row_of)
        elif isinstance(coords, slice):
            maps.update(first=int(ids[0]))
        else:  # read by points
            maps.update(row_ids=ids)
        try:
            return out.add(batches, n, **maps)
        except MalformedMatrixError as e:
            if e.gene is not None:  # a column joinid past var's last one, or none of var's
                self._no_var_row(first, n)
            msg = f"{self.name}: cannot read cells {first}:{first + n}: {e}"
            raise InputError(msg) from e

    def _batch(self, table: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A TileDB batch's row and column joinids (int64) and values (the source's dtype):
        views of its arrow buffers, copied only where a type differs."""
        rows = np.asarray(table["soma_dim_0"].to_numpy(), dtype=np.int64)
        cols = np.asarray(table["soma_dim_1"].to_numpy(), dtype=np.int64)
        values = np.asarray(table["soma_data"].to_numpy(), dtype=self.dtype)
        return rows, cols, values

    def _no_var_row(self, first: int, n: int) -> None:
        where = f"cells {first}:{first + n}"
        msg = f"{self.name}: X has values in columns that no var row names ({where})"
        raise InputError(msg)

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.blake2b(digest_size=16)
        h.update(np.ascontiguousarray(self._ids).tobytes())
        out: dict[str, Any] = {
            "uri": self.uri,
            "matrix": self.matrix,
            "obs_filter": self.obs_filter,
            "var_key": self.var_key,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "soma_joinids_blake2b": h.hexdigest(),
        }
        local = Path(str(self._X.uri).removeprefix("file://"))
        if local.is_dir():  # the layer's fragments: a write to X changes them
            files = [p for p in local.rglob("*") if p.is_file()]
            out["x_files"] = len(files)
            out["x_mtime_ns"] = max((p.stat().st_mtime_ns for p in files), default=0)
        return out

    def close(self) -> None:
        exp, self._exp = getattr(self, "_exp", None), None
        if exp is not None and getattr(self, "_own", False):
            exp.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- embeddings back into the experiment -------------------------------------------------------


def _obs_domain(exp: Any) -> int:
    """How many soma_joinids obs can hold (its domain's end + 1)."""
    try:
        return int(exp.obs.domain[0][1]) + 1
    except (AttributeError, IndexError, TypeError):
        return int(exp.obs.count)


def check_into(
    experiment: str | os.PathLike[str],
    *,
    key: str,
    measurement: str = "RNA",
    overwrite: bool = False,
    context: Any = None,
) -> int:
    """Refuse, before any work, what :func:`write_into` would refuse about the experiment: not
    one, no ``measurement``, an existing ``obsm[key]`` without ``overwrite``. Returns how many
    ``soma_joinid`` its obs can hold. Writes nothing."""
    from genept_fast._outputs import check_key

    check_key(key)
    soma = _tiledbsoma("writing into a SOMA experiment")
    uri = os.fspath(experiment)
    exp = SomaSource._open(soma, uri, context)
    try:
        ms = _measurement(exp, measurement, uri)
        if "obsm" in ms and key in ms["obsm"] and not overwrite:
            msg = (
                f"{uri}: ms[{measurement!r}].obsm already has {key!r}; use --overwrite "
                "(overwrite=True in Python) to replace it, or another --key-added"
            )
            raise InputError(msg)
        return _obs_domain(exp)
    finally:
        exp.close()


def write_into(
    experiment: str | os.PathLike[str],
    embeddings: Any,
    soma_joinids: Any,
    *,
    key: str,
    measurement: str = "RNA",
    info: dict[str, Any] | None = None,
    overwrite: bool = False,
    chunk_size: int = 10_000,
    context: Any = None,
) -> str:
    """Write ``embeddings`` (rows aligned with ``soma_joinids``) into
    ``ms[measurement].obsm[key]`` of a SOMA experiment, as Census stores embeddings.

    The array is a float32 ``SparseNDArray`` of shape ``(obs domain, dim)``: each embedded cell's
    row stored whole (zeros too), at its ``soma_joinid``. Its metadata ``CxG_embedding_info`` is a
    JSON string: ``data_type`` ``"obs_embedding"``, ``experiment_name``, ``measurement_name``,
    ``n_embeddings``, ``n_features``, ``submission_date`` and ``info`` (genept-fast's provenance).
    The array is written whole under a fresh name first, then made the member ``key``: the key
    never names a half-written array. Nothing else in the experiment changes.

    Parameters
    ----------
    embeddings
        A ``(cells, dim)`` array, or anything sliced by rows into one (``np.load(path,
        mmap_mode="r")``: read ``chunk_size`` rows at a time).
    soma_joinids
        One int per row, unique, inside the obs domain.
    overwrite
        Replace an existing ``obsm[key]`` (without it: an :class:`InputError`).

    Returns
    -------
    str
        The URI of the array written.
    """
    from genept_fast._outputs import check_key

    soma = _tiledbsoma("writing into a SOMA experiment")
    import pyarrow as pa

    check_key(key)
    ids = np.asarray(soma_joinids, dtype=np.int64).reshape(-1)
    shape = tuple(int(s) for s in getattr(embeddings, "shape", ()))
    if len(shape) != 2 or shape[0] != ids.size or shape[1] < 1:
        msg = (
            f"embeddings of shape {shape} do not match {ids.size} soma_joinids (want (cells, dim))"
        )
        raise InputError(msg)
    if ids.size and np.unique(ids).size != ids.size:
        msg = "soma_joinids repeat a cell; each embedded cell appears once"
        raise InputError(msg)
    uri = os.fspath(experiment)
    n_obs = check_into(uri, key=key, measurement=measurement, overwrite=overwrite, context=context)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_obs):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        msg = f"{uri}: soma_joinid {bad} is outside obs (joinids 0..{n_obs - 1})"
        raise InputError(msg)
    with soma.open(uri, mode="r", context=context) as exp:
        has_obsm = "obsm" in exp.ms[measurement]
    if not has_obsm:  # the measurement's obsm collection, as from_anndata and Census have it
        with soma.open(uri, mode="w", context=context) as exp:
            exp.ms[measurement].add_new_collection("obsm")
    with soma.open(uri, mode="r", context=context) as exp:
        obsm_uri = str(exp.ms[measurement]["obsm"].uri)
    dim = shape[1]
    record = {
        "id": f"genept-fast:{key}",
        "title": f"genept-fast {key}",
        "description": "GenePT cell embeddings computed by genept-fast",
        "data_type": "obs_embedding",
        "experiment_name": Path(uri.rstrip("/")).name,
        "measurement_name": measurement,
        "n_embeddings": int(ids.size),
        "n_features": int(dim),
        "submission_date": _dt.date.today().isoformat(),
        "genept_fast": info or {},
    }
    child = f"{obsm_uri.rstrip('/')}/.{key}-{uuid.uuid4().hex[:12]}"
    arr = soma.SparseNDArray.create(child, type=pa.float32(), shape=(n_obs, dim), context=context)
    try:
        with arr:
            cols = np.tile(np.arange(dim, dtype=np.int64), chunk_size)
            for a in range(0, ids.size, chunk_size):
                b = min(a + chunk_size, ids.size)
                block = np.asarray(embeddings[a:b], dtype=np.float32).reshape(-1)
                table = pa.table(
                    {
                        "soma_dim_0": np.repeat(ids[a:b], dim),
                        "soma_dim_1": cols[: (b - a) * dim],
                        "soma_data": block,
                    }
                )
                arr.write(table)
            arr.metadata[EMBEDDING_INFO_KEY] = json.dumps(record, default=str)
        _swap_member(soma, uri, measurement, key, child, context)
    except BaseException:
        _remove_local(child)
        raise
    return child


def _swap_member(soma: Any, uri: str, measurement: str, key: str, child: str, context: Any) -> None:
    """Make ``child`` the member ``key`` of ``ms[measurement].obsm``; the array it replaces (if
    any) is unlinked first (TileDB groups cannot replace a member in one write), then removed
    from disk when local."""
    with soma.open(uri, mode="w", context=context) as exp:
        obsm = exp.ms[measurement]["obsm"]
        old = str(obsm[key].uri) if key in obsm else None
        if old is not None:
            del obsm[key]
    with (
        soma.open(uri, mode="w", context=context) as exp,
        soma.open(child, mode="r", context=context) as arr,
    ):
        exp.ms[measurement]["obsm"].set(key, arr, use_relative_uri=True)
    if old is not None and old != child:
        _remove_local(old)


def _remove_local(uri: str) -> None:
    path = Path(uri.removeprefix("file://"))
    if path.is_dir() and not uri.startswith(_REMOTE):
        shutil.rmtree(path, ignore_errors=True)


def read_embedding(
    experiment: str | os.PathLike[str], key: str, *, measurement: str = "RNA", context: Any = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(soma_joinids, embeddings, info)`` of ``ms[measurement].obsm[key]`` (every stored row,
    in joinid order; ``info``: the ``CxG_embedding_info`` metadata), in memory."""
    soma = _tiledbsoma()
    uri = os.fspath(experiment)
    exp = SomaSource._open(soma, uri, context)
    try:
        ms = _measurement(exp, measurement, uri)
        if "obsm" not in ms or key not in ms["obsm"]:
            msg = f"{uri}: has no ms[{measurement!r}].obsm[{key!r}]"
            raise InputError(msg)
        arr = ms["obsm"][key]
        table = arr.read().tables().concat()
        info = json.loads(arr.metadata.get(EMBEDDING_INFO_KEY, "{}"))
        dim = int(arr.shape[1])
    finally:
        exp.close()
    d0 = table["soma_dim_0"].to_numpy()
    d1 = table["soma_dim_1"].to_numpy()
    ids, rows = np.unique(d0, return_inverse=True)
    out = np.zeros((ids.size, dim), dtype=np.float32)
    out[rows, d1] = table["soma_data"].to_numpy()
    return ids, out, info
