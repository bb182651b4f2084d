"""Chunk sources: cells × genes matrices read from disk one block of rows at a time.

A :class:`ChunkSource` is anything with ``n_cells``, ``n_genes``, ``var_names``,
``obs_names(start, stop)``, ``read(start, stop) -> scipy.sparse.csr_array``, ``fingerprint()``
and ``close()``. The streaming encoder (:func:`genept_fast.stream.encode_file`) and the Dask reader
(:func:`genept_fast.dask.read_csr`) only talk to this protocol, so another source (a TileDB-SOMA /
CELLxGENE Census query, a database cursor) plugs in by implementing these few members.

The sources are implemented in :mod:`genept_fast.cells`, the one reading layer for AnnData
(:func:`genept_fast.cells.open_cells` picks the matrix by :func:`genept_fast.cells.choose_matrix`
and opens an AnnData object, a file or a store); they are re-exported here, where the stream
has always found them. They live below the stream package so that the stream, ``tl``, Dask and
the commands can all import them without an import circle.

- :class:`AnnDataSource` reads ``X``, ``layers/<name>`` or ``raw/X`` of an ``.h5ad`` file (h5py)
  or an AnnData ``.zarr`` store (zarr v2 or v3) without loading it: CSR rows are sliced straight
  from ``data``/``indices`` over ``[indptr[a], indptr[b])``; dense datasets are read in blocks and
  sparsified. CSC-encoded matrices cannot be read by rows and raise ``InputError``. Tables
  (``var``, ``obs``: :attr:`AnnDataSource.var`, :func:`read_var`) are read by anndata
  (``anndata.io.read_elem``), or from the structured arrays of the legacy layout.
- :class:`AnnDataObjectSource` reads rows of an AnnData object (in memory, view or backed).
- :class:`ArraySource` wraps an in-memory matrix (handy for tests and small jobs).

Why the CSR rows are not read by anndata's ``anndata.io.sparse_dataset`` (it reads the same
row slices from h5py and zarr, and was tried): the reader runs in every streamed job, importing
anndata adds about 130 MB to that job's resident memory (past the stream's 1 GiB goal), and
reading got no faster. The hand-written slicer reads only ``indptr[a:b+1]`` and the
``data``/``indices`` range it names, and keeps the reading layer's corruption checks (header,
monotone ``indptr``, column indices in range). The measurements are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genept_fast.cells import (
    DENSE_BLOCK_VALUES,
    AnnDataObjectSource,
    AnnDataSource,
    ArraySource,
    ChunkSource,
    check_chunk_size,
    has_raw,
    read_obs_names,
    read_var,
    read_var_names,
    source_matrix,
    source_var,
)

if TYPE_CHECKING:
    import os

__all__ = [
    "DENSE_BLOCK_VALUES",
    "AnnDataObjectSource",
    "AnnDataSource",
    "ArraySource",
    "ChunkSource",
    "check_chunk_size",
    "has_raw",
    "open_source",
    "read_obs_names",
    "read_var",
    "read_var_names",
    "source_matrix",
    "source_var",
]


def open_source(
    path: str | os.PathLike[str], *, layer: str | None = None, use_raw: bool | None = None
) -> AnnDataSource:
    """Open an ``.h5ad`` file or AnnData ``.zarr`` store as a :class:`ChunkSource`.

    The matrix is picked by :func:`genept_fast.cells.choose_matrix` (default: ``raw/X`` when the
    file has it, else ``X``); :func:`genept_fast.cells.open_cells` also takes AnnData objects.
    """
    return AnnDataSource(path, layer=layer, use_raw=use_raw)
