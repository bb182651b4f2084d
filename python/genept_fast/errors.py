"""The exceptions of genept-fast: one family, whose branches say whose problem it is.

::

    GeneptError                                   every error genept-fast raises
    ├── InputError (ValueError)                   bad input: fix the call, the data or a file
    │   ├── ShapeError                            dimensions disagree (X × table, out=, ndim)
    │   ├── MalformedMatrixError                  CSR arrays that describe no valid matrix
    │   ├── NonFiniteError                        NaN or ±inf in an input, with its position
    │   ├── InvalidArgumentError                  an option out of range or of the wrong kind
    │   └── NumericOverflowError (OverflowError)  a result past the float32 range
    ├── ServiceError (ConnectionError)            a remote call failed (NCBI, MyGene, an LLM,
    │   │                                         OpenAI or a compatible server, the Batch
    │   │                                         API, Zenodo): ``service``, ``url``, ``status``
    │   ├── ServiceUnavailableError               it cannot be reached at all (offline)
    │   ├── MalformedResponseError                it answered, but not what its API promises
    │   └── BatchJobError                         a Batch API job failed, expired or was cancelled
    ├── MissingDependencyError (ImportError)      an optional extra is not installed
    ├── ResourceError (RuntimeError)              the machine refused threads the work needs
    └── InternalError (RuntimeError)              a bug in genept-fast (please report it)

Where the edge cases go:

- a corrupt or unreadable file (an input, the cache database, a resume manifest) is an
  :class:`InputError` naming the file: the user replaces or deletes it;
- a result larger than this machine's memory is an :class:`InvalidArgumentError` saying how
  much it would need (ask for fewer cells or genes at once);
- a float32 overflow in a weighted sum is a :class:`NumericOverflowError` (scale the input);
- a thread pool the operating system will not start is a :class:`ResourceError`;
- a server that answered 4xx (a refused key, an unknown model, a request it rejected) is a
  :class:`ServiceError` too: the remote call failed, whatever its cause; ``status`` says why.

Every :class:`InputError` is a :class:`ValueError`, as every ``GeneptError`` was before, so
``except ValueError`` keeps catching bad input. Service errors are no longer ``ValueError``
(they are :class:`ConnectionError`, an :class:`OSError`): catch :class:`ServiceError`.

The command line maps the branches to exit statuses: 2 for :class:`InputError` and
:class:`MissingDependencyError`, 3 for :class:`ServiceError`, 1 for the rest (see
:mod:`genept_fast.cli`). The Rust kernels' error variants arrive as the classes above, mapped
in one conversion in ``rust/genept-py/src/lib.rs``, with the cell and gene at fault as the
attributes :attr:`InputError.cell` and :attr:`InputError.gene` (whole-matrix positions).
"""

from __future__ import annotations

__all__ = [
    "BatchJobError",
    "GeneptError",
    "InputError",
    "InternalError",
    "InvalidArgumentError",
    "MalformedMatrixError",
    "MalformedResponseError",
    "MissingDependencyError",
    "NonFiniteError",
    "NumericOverflowError",
    "ResourceError",
    "ServiceError",
    "ServiceUnavailableError",
    "ShapeError",
]


class GeneptError(Exception):
    """The base of every exception genept-fast raises."""


class InputError(GeneptError, ValueError):
    """Bad input: an argument, a matrix, a table or a file; the message names what to fix.

    Attributes
    ----------
    cell
        The cell (row of ``X``) at fault, counted in the whole matrix: a kernel called on a
        chunk with ``row_offset=a`` names chunk row ``i`` as cell ``a + i``. For
        :func:`~genept_fast.kernels.l2_normalize`, the row of the matrix. ``None`` when the
        error concerns no one cell.
    gene
        The gene at fault: a column of ``X`` (as stored, so possibly the out-of-range index
        itself for a :class:`MalformedMatrixError`), a column whose ``gene_index`` entry is
        bad, or a row of the gene-embedding table for a NaN or infinity in the table.
        ``None`` when the error concerns no one gene.

    The kernels (:mod:`genept_fast.kernels`) set both from the Rust error's fields; read them
    instead of parsing the message. Errors raised elsewhere leave them ``None``.
    """

    cell: int | None
    gene: int | None
    #: The message with ``{cell}`` where the cell number stands, set by the Rust binding on an
    #: error that names a cell, so that :func:`genept_fast.kernels.offset_cells` can move the
    #: cell without parsing the text.
    _cell_message: str | None = None

    def __init__(
        self, message: str = "", *, cell: int | None = None, gene: int | None = None
    ) -> None:
        super().__init__(message)
        self.cell = cell
        self.gene = gene

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[object, ...]:
        # cell and gene travel in the state, so that they survive pickling (Dask).
        return (type(self), (str(self),), self.__dict__)


class ShapeError(InputError):
    """Two inputs disagree on a dimension, or an array has the wrong number of dimensions."""


class MalformedMatrixError(InputError):
    """CSR arrays that do not describe a valid matrix (indptr, indices, lengths)."""


class NonFiniteError(InputError):
    """A NaN or an infinity in an input; the message gives its cell and gene."""


class InvalidArgumentError(InputError):
    """An option out of its range or of the wrong kind (``n < 1``, a dtype, a layout)."""


class NumericOverflowError(InputError, OverflowError):
    """A result past the float32 range (a weighted sum of huge values)."""


class ServiceError(GeneptError, ConnectionError):
    """A remote call failed for good, after any retries.

    Attributes
    ----------
    service
        Who was called (``"NCBI E-utilities"``, ``"OpenAI"``, a server's host, ...).
    url
        The address called, without query string or credentials (or ``None``).
    status
        The HTTP status of the last answer, ``None`` when none came.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        url: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.url = url
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[object, ...]:
        # The keyword attributes travel in the state, so that the error survives pickling
        # (Dask sends a worker's exception back to the client).
        return (type(self), (str(self),), self.__dict__)


class ServiceUnavailableError(ServiceError):
    """The service cannot be reached at all (offline, DNS failure, connection refused)."""


class MalformedResponseError(ServiceError):
    """The service answered 2xx with a body that is not what its API describes."""


class BatchJobError(ServiceError):
    """A Batch API job ended failed, expired or cancelled (the message names it and why)."""


class MissingDependencyError(GeneptError, ImportError):
    """An optional part of genept-fast is not installed; the message names the extra."""


class ResourceError(GeneptError, RuntimeError):
    """The machine could not provide what the work needs (a thread pool)."""


class InternalError(GeneptError, RuntimeError):
    """A bug in genept-fast (a Rust panic, a broken invariant): please report it."""
