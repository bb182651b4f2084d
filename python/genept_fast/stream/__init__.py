"""Out-of-core, resumable cell encoding of AnnData files larger than memory.

:func:`encode_file` reads an ``.h5ad`` / ``.zarr`` AnnData (or any :class:`ChunkSource`) one
chunk of cells at a time, preprocesses each chunk (or lets the encoder do it as it reads the
chunk, as GenePT-w does), hands it to an ``encoder`` and writes the
result to ``.npy``, ``.zarr``, ``.parquet`` or ``.h5ad`` as it goes. Memory stays bounded by
about two chunks plus the encoder's own tables, whatever the number of cells. A reader thread
reads (and preprocesses) the next chunk while the encoder runs on the current one, and a writer
thread writes the previous result.

Killed at any moment, the same call run again computes only the chunks that are missing; the
result equals that of an uninterrupted run. Work happens in ``<output>.partial/``; the output
name only ever receives a finished file (``os.replace``).

:func:`encode_weighted` is the GenePT-w case: the encoder is the Rust kernel
:func:`genept_fast.weighted_embedding` with a fixed gene-embedding table.
:func:`encode_sentences` is the GenePT-s case: each chunk's cell sentences embedded by a text
model (:func:`estimate_sentences` prices it first). Both start their job as ``gf.tl`` and Dask
do (:mod:`genept_fast.encode`: the matrix by :func:`genept_fast.cells.choose_matrix`, ``raw/X``
when the file has it; scaled first cells refused; the same encoder, the same provenance).

Modules: :mod:`~genept_fast.stream.pipeline` (:func:`encode_file`, the threads, resume),
:mod:`~genept_fast.stream.weighted`, :mod:`~genept_fast.stream.sentences`,
:mod:`~genept_fast.stream.sources` (what is read), :mod:`~genept_fast.stream.sinks` (what is
written), :mod:`~genept_fast.stream.state` (the resumable work folder).
"""

from __future__ import annotations

from genept_fast.encode.weighted import WeightedEncoder
from genept_fast.stream.pipeline import (
    StreamReport,
    check_key,
    check_output_args,
    check_output_paths,
    encode_cells,
    encode_file,
    report_dict,
    work_dir,
)
from genept_fast.stream.sentences import encode_sentences, estimate_sentences
from genept_fast.stream.sinks import FORMATS, output_format
from genept_fast.stream.sources import (
    AnnDataSource,
    ArraySource,
    ChunkSource,
    has_raw,
    open_source,
    read_obs_names,
    read_var,
    read_var_names,
)
from genept_fast.stream.weighted import encode_weighted

__all__ = [
    "FORMATS",
    "AnnDataSource",
    "ArraySource",
    "ChunkSource",
    "StreamReport",
    "WeightedEncoder",
    "check_key",
    "check_output_args",
    "check_output_paths",
    "encode_cells",
    "encode_file",
    "encode_sentences",
    "encode_weighted",
    "estimate_sentences",
    "has_raw",
    "open_source",
    "output_format",
    "read_obs_names",
    "read_var",
    "read_var_names",
    "report_dict",
    "work_dir",
]
