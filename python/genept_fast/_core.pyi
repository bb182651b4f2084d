"""Type stubs for the compiled module ``genept_fast._core`` (Rust, PyO3).

Call these through :mod:`genept_fast.kernels`, which normalises inputs first; the functions here
accept exactly one layout: CSR arrays whose ``indptr`` and ``indices`` are both int32 or both
int64, ``data`` float32 or float64, everything C-contiguous.

Errors are raised as the classes of :mod:`genept_fast.errors` (imported from there, not defined
here), one conversion from the core's ``GeneptError``: shape mismatches as
:class:`~genept_fast.errors.ShapeError`, malformed CSR arrays as
:class:`~genept_fast.errors.MalformedMatrixError`, NaN or infinities as
:class:`~genept_fast.errors.NonFiniteError`, bad options, negative counts and ``gene_index``
entries as :class:`~genept_fast.errors.InvalidArgumentError`, a float32 overflow as
:class:`~genept_fast.errors.NumericOverflowError`, a thread pool that cannot start as
:class:`~genept_fast.errors.ResourceError`;
a panic becomes :class:`~genept_fast.errors.InternalError`. Input errors carry the cell and
gene at fault as ``cell`` and ``gene`` (``None`` when none); ``row_offset`` (the call's first row
in a larger matrix) is added to the cell, in the attribute and the message.
"""

from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "PreparedEmbeddings",
    "__version__",
    "cell_sentences",
    "coo_into_csr",
    "l2_normalize",
    "resolved_threads",
    "sentences_from_top",
    "simd_level",
    "thread_limit",
    "top_genes",
    "weighted_embedding",
]

__version__: str

@final
class PreparedEmbeddings:
    """A gene-embedding table checked and laid out tile-major, reusable across calls."""

    def __new__(
        cls, embeddings: npt.NDArray[np.float32], n_threads: int | None = None
    ) -> PreparedEmbeddings: ...
    @property
    def n_genes(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int]: ...

def weighted_embedding(
    indptr: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    data: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    n_cols: int,
    embeddings: npt.NDArray[np.float32] | PreparedEmbeddings,
    gene_index: npt.NDArray[np.int64] | None = None,
    normalize: bool = True,
    n_threads: int | None = None,
    out: npt.NDArray[np.float32] | None = None,
    block_rows: int = 512,
    preprocess: str = "none",
    target_sum: float = 10000.0,
    row_offset: int = 0,
) -> npt.NDArray[np.float32]: ...
def top_genes(
    indptr: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    data: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    n_cols: int,
    n: int,
    n_threads: int | None = None,
    row_offset: int = 0,
) -> npt.NDArray[np.int32]: ...
def cell_sentences(
    indptr: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    data: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    n_cols: int,
    gene_names: list[str],
    n: int,
    prefix: str,
    sep: str,
    n_threads: int | None = None,
    row_offset: int = 0,
) -> list[str]: ...
def sentences_from_top(
    top: npt.NDArray[np.int32],
    gene_names: list[str],
    prefix: str,
    sep: str,
    n_threads: int | None = None,
) -> list[str]: ...
def l2_normalize(matrix: npt.NDArray[np.float32], n_threads: int | None = None) -> None: ...
def coo_into_csr(
    batches: list[
        tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.floating[Any]]]
    ],
    n_cols: int,
    base: int,
    indptr: npt.NDArray[np.signedinteger[Any]],
    indices: npt.NDArray[np.signedinteger[Any]],
    data: npt.NDArray[np.floating[Any]],
    *,
    first: int = 0,
    row_of: npt.NDArray[np.int32] | None = None,
    row_ids: npt.NDArray[np.int64] | None = None,
    col_of: npt.NDArray[np.int32] | None = None,
) -> int: ...
def simd_level() -> str: ...
def resolved_threads(n_threads: int | None = None) -> int: ...
def thread_limit() -> int: ...
