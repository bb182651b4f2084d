"""Where streamed embeddings are written: a work store in ``<output>.partial/``, then the output.

Two work stores, both written chunk by chunk at fixed positions, so a chunk can be (re)written in
any order and a resumed job fills in exactly the missing rows:

- :class:`NpyWork`: one ``.npy`` file of the final shape, written with ``os.pwrite`` (no memory
  map, so written pages do not count towards the process's resident memory). It becomes the
  ``.npy`` output by a rename, and is converted chunk by chunk into ``.parquet`` and ``.h5ad``.
- :class:`ZarrWork`: a zarr group whose chunks are the job's chunks (``obs_names`` + the
  embedding array); it becomes the ``.zarr`` output by a rename.

Cells are named as the source names them (``obs_names``); a source that keys its cells by a
``soma_joinid`` (:class:`genept_fast.soma.SomaSource`) has them written beside the names in every
format: a ``soma_joinid`` column of a ``.parquet`` output and of a ``.h5ad`` output's ``obs``, a
``soma_joinid`` array of a ``.zarr`` output, and ``<stem>.soma_joinid.npy`` beside a ``.npy``
output (:func:`joinid_sidecar`; written first, so the output's appearance means both are there).

Every final file is first written under a temporary name in the output's directory and moved into
place with ``os.replace`` (see :func:`genept_fast._outputs.install`). A ``.zarr`` output carries
:data:`genept_fast._outputs.STORE_MARKER` in its attributes, so that a later ``overwrite=True``
can recognise it as genept-fast's own (any other directory is never removed).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast._outputs import install, store_attrs
from genept_fast.cells import AnnDataSource
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    from genept_fast.stream.sources import ChunkSource

__all__ = [
    "FORMATS",
    "NpyWork",
    "WorkStore",
    "ZarrWork",
    "joinid_sidecar",
    "make_work_store",
    "output_format",
    "soma_joinids",
]

FORMATS = (".npy", ".zarr", ".parquet", ".h5ad")


def output_format(output: Path) -> str:
    """The output format from the suffix: ``.npy``, ``.zarr``, ``.parquet`` or ``.h5ad``."""
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        msg = f"output {output}: unknown format {suffix!r}; use one of {', '.join(FORMATS)}"
        raise InputError(msg)
    return suffix


def joinid_sidecar(output: Path) -> Path:
    """Where the ``soma_joinid`` of each row of a ``.npy`` output is written:
    ``<stem>.soma_joinid.npy`` beside it."""
    return output.with_name(f"{output.stem}.soma_joinid.npy")


def soma_joinids(source: ChunkSource, start: int = 0, stop: int | None = None) -> Any:
    """The ``soma_joinid`` of cells ``start:stop`` of a source that has them, else ``None``."""
    get = getattr(source, "soma_joinids", None)
    return np.asarray(get(start, stop), dtype=np.int64) if callable(get) else None


def _write_sidecar(output: Path, ids: np.ndarray) -> None:
    """``ids`` as :func:`joinid_sidecar` of ``output``, atomically. An existing sidecar is
    replaced only together with its output (which the job was allowed to replace); one without
    its output is somebody else's file and is refused."""
    side = joinid_sidecar(output)
    if side.exists() and not output.exists():
        msg = (
            f"{side} exists (the soma_joinid file a .npy output of a SOMA source writes beside "
            f"it) but {output} does not; move it away, or choose another output name. The "
            "finished embeddings stay in the work folder: run again to finish"
        )
        raise InputError(msg)
    tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            np.save(fh, ids)
            fh.flush()
            os.fsync(fh.fileno())
        install(tmp, side)
    finally:
        if tmp.exists():
            tmp.unlink()


def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
    view = buf.cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _pread_into(fd: int, out: np.ndarray, offset: int) -> None:
    view = out.data.cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            msg = "unexpected end of the work file (was it truncated?)"
            raise InputError(msg)
        done += n


class WorkStore:
    """Base: rows ``start:stop`` of an ``(n_cells, dim)`` result, written in any order."""

    needs_obs_names = False

    def __init__(self, workdir: Path, n_cells: int, dim: int, dtype: np.dtype[Any]) -> None:
        self.workdir = workdir
        self.n_cells = n_cells
        self.dim = dim
        self.dtype = np.dtype(dtype)

    def usable(self) -> bool:
        """True when the stored data exists with the expected shape (resume is possible)."""
        raise NotImplementedError

    def create(self) -> None:
        raise NotImplementedError

    def write(self, start: int, stop: int, emb: np.ndarray, obs_names: list[str] | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def finalize(
        self, output: Path, *, source: ChunkSource, chunk_size: int, key: str, uns: dict[str, Any]
    ) -> None:
        raise NotImplementedError


class NpyWork(WorkStore):
    """A ``.npy`` work file written with ``pwrite`` (see the module docstring)."""

    def __init__(self, workdir: Path, n_cells: int, dim: int, dtype: np.dtype[Any]) -> None:
        super().__init__(workdir, n_cells, dim, dtype)
        self.path = workdir / "data.npy"
        self._fd: int | None = None
        self._offset = 0

    @property
    def nbytes(self) -> int:
        return self.n_cells * self.dim * self.dtype.itemsize

    def _read_header(self) -> tuple[tuple[int, ...], np.dtype[Any], int]:
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            return tuple(shape), np.dtype(dtype), f.tell()

    def usable(self) -> bool:
        if not self.path.is_file():
            return False
        try:
            shape, dtype, offset = self._read_header()
        except (OSError, ValueError):
            return False
        return (
            shape == (self.n_cells, self.dim)
            and dtype == self.dtype
            and self.path.stat().st_size == offset + self.nbytes
        )

    def create(self) -> None:
        arr = np.lib.format.open_memmap(
            self.path, mode="w+", dtype=self.dtype, shape=(self.n_cells, self.dim)
        )
        del arr

    def _open(self) -> int:
        if self._fd is None:
            _shape, _dtype, self._offset = self._read_header()
            self._fd = os.open(self.path, os.O_RDWR)
        return self._fd

    def write(self, start: int, stop: int, emb: np.ndarray, obs_names: list[str] | None) -> None:
        fd = self._open()
        row = self.dim * self.dtype.itemsize
        _pwrite_all(fd, np.ascontiguousarray(emb).data, self._offset + start * row)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new array (explicit reads, no memory map)."""
        fd = self._open()
        out = np.empty((stop - start, self.dim), dtype=self.dtype)
        _pread_into(fd, out, self._offset + start * self.dim * self.dtype.itemsize)
        return out

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def finalize(
        self, output: Path, *, source: ChunkSource, chunk_size: int, key: str, uns: dict[str, Any]
    ) -> None:
        fmt = output.suffix.lower()
        if fmt == ".npy":
            ids = soma_joinids(source)
            if ids is not None:
                _write_sidecar(output, ids)
            fd = self._open()
            os.fsync(fd)
            self.close()
            install(self.path, output)
            return
        tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
        try:
            if fmt == ".parquet":
                self._write_parquet(tmp, source=source, chunk_size=chunk_size, uns=uns)
            elif fmt == ".h5ad":
                self._write_h5ad(tmp, source=source, chunk_size=chunk_size, key=key, uns=uns)
            else:  # pragma: no cover - output_format() rejects it first
                msg = f"NpyWork cannot produce {fmt}"
                raise InputError(msg)
            install(tmp, output)
        finally:
            if tmp.exists():
                tmp.unlink()
            self.close()

    def _write_parquet(
        self, tmp: Path, *, source: ChunkSource, chunk_size: int, uns: dict[str, Any]
    ) -> None:
        import json

        import pyarrow as pa
        import pyarrow.parquet as pq

        value_type = pa.float16() if self.dtype == np.float16 else pa.float32()
        keyed = soma_joinids(source, 0, 0) is not None
        fields = [pa.field("obs_name", pa.string())]
        if keyed:
            fields.append(pa.field("soma_joinid", pa.int64()))
        schema = pa.schema(
            [*fields, pa.field("embedding", pa.list_(value_type, self.dim))],
            metadata={"genept_fast": json.dumps(uns, default=str)},
        )
        with pq.ParquetWriter(tmp, schema) as writer:
            for a in range(0, self.n_cells, chunk_size):
                b = min(a + chunk_size, self.n_cells)
                emb = self.read(a, b)
                values = pa.array(emb.reshape(-1), type=value_type)
                columns = [pa.array(source.obs_names(a, b), type=pa.string())]
                if keyed:
                    columns.append(pa.array(soma_joinids(source, a, b), type=pa.int64()))
                columns.append(pa.FixedSizeListArray.from_arrays(values, self.dim))
                table = pa.Table.from_arrays(columns, schema=schema)
                writer.write_table(table, row_group_size=b - a)
            if self.n_cells == 0:
                writer.write_table(schema.empty_table())
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())

    def _write_h5ad(
        self,
        tmp: Path,
        *,
        source: ChunkSource,
        chunk_size: int,
        key: str,
        uns: dict[str, Any],
    ) -> None:
        import h5py
        import pandas as pd
        from anndata.io import write_elem

        with h5py.File(tmp, "w") as f:
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            if isinstance(source, AnnDataSource) and source.copy_obs(f):
                pass  # HDF5 copied the obs group inside the library, column by column
            elif hasattr(source, "obs_frame"):
                write_elem(f, "obs", source.obs_frame())
            else:
                write_elem(f, "obs", pd.DataFrame(index=pd.Index(source.obs_names(), dtype=str)))
            write_elem(f, "var", pd.DataFrame(index=pd.Index([], dtype=str)))
            for name in ("layers", "obsp", "varm", "varp"):
                write_elem(f, name, {})
            write_elem(f, "uns", uns)
            write_elem(f, "obsm", {})
            chunks = (min(chunk_size, self.n_cells), self.dim) if self.n_cells else None
            ds = f["obsm"].create_dataset(
                key, shape=(self.n_cells, self.dim), dtype=self.dtype, chunks=chunks
            )
            ds.attrs["encoding-type"] = "array"
            ds.attrs["encoding-version"] = "0.2.0"
            for a in range(0, self.n_cells, chunk_size):
                b = min(a + chunk_size, self.n_cells)
                ds[a:b] = self.read(a, b)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())


class ZarrWork(WorkStore):
    """A zarr group ``{obs_names, <key>}`` whose chunks are the job's chunks."""

    needs_obs_names = True

    def __init__(
        self,
        workdir: Path,
        n_cells: int,
        dim: int,
        dtype: np.dtype[Any],
        *,
        chunk_size: int,
        key: str,
    ) -> None:
        super().__init__(workdir, n_cells, dim, dtype)
        self.path = workdir / "out.zarr"
        self.chunk_size = chunk_size
        self.key = key
        self._group: Any = None

    def usable(self) -> bool:
        import zarr

        if not self.path.is_dir():
            return False
        try:
            g: Any = zarr.open_group(str(self.path), mode="r")
            arr, names = g[self.key], g["obs_names"]
        except Exception:
            return False
        return (
            tuple(arr.shape) == (self.n_cells, self.dim)
            and np.dtype(arr.dtype) == self.dtype
            and tuple(names.shape) == (self.n_cells,)
        )

    def create(self) -> None:
        import zarr

        g = zarr.open_group(str(self.path), mode="w")
        rows = max(1, min(self.chunk_size, self.n_cells))
        g.create_array("obs_names", shape=(self.n_cells,), dtype=str, chunks=(rows,))
        g.create_array(
            self.key,
            shape=(self.n_cells, self.dim),
            dtype=self.dtype,
            chunks=(rows, self.dim),
            compressors=None,
        )
        self._group = g

    def _g(self) -> Any:
        if self._group is None:
            import zarr

            self._group = zarr.open_group(str(self.path), mode="r+")
        return self._group

    def write(self, start: int, stop: int, emb: np.ndarray, obs_names: list[str] | None) -> None:
        g = self._g()
        g[self.key][start:stop] = emb
        g["obs_names"][start:stop] = np.asarray(obs_names, dtype=str)

    def finalize(
        self, output: Path, *, source: ChunkSource, chunk_size: int, key: str, uns: dict[str, Any]
    ) -> None:
        import json

        g = self._g()
        ids = soma_joinids(source)
        if ids is not None and self.key == "soma_joinid":
            msg = "key 'soma_joinid' is taken by the cells' joinids in a .zarr output; use another"
            raise InputError(msg)
        if ids is not None:
            rows = max(1, min(chunk_size, self.n_cells))
            g.create_array(
                "soma_joinid", shape=ids.shape, dtype=np.int64, chunks=(rows,), overwrite=True
            )
            g["soma_joinid"][:] = ids
        g.attrs.update({**json.loads(json.dumps(uns, default=str)), **store_attrs()})
        self._group = None
        install(self.path, output)


def make_work_store(
    fmt: str,
    workdir: Path,
    *,
    n_cells: int,
    dim: int,
    dtype: np.dtype[Any],
    chunk_size: int,
    key: str,
) -> WorkStore:
    """The work store for output format ``fmt`` (a suffix from :data:`FORMATS`)."""
    if fmt == ".zarr":
        return ZarrWork(workdir, n_cells, dim, dtype, chunk_size=chunk_size, key=key)
    return NpyWork(workdir, n_cells, dim, dtype)
