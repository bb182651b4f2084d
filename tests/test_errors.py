"""One error family (genept_fast.errors): the hierarchy, the kernels' variants as classes, the
command line's exit statuses and its one-line warnings."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import genept_fast as gf
from genept_fast import _core, cli, errors
from genept_fast.commands import gene_text

PACKAGE = Path(gf.__file__).parent


def test_hierarchy():
    assert gf.GeneptError is errors.GeneptError and gf.InputError is errors.InputError
    assert gf.ServiceError is errors.ServiceError
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.GeneptError), name
    assert issubclass(errors.InputError, ValueError)
    for cls in (
        errors.ShapeError,
        errors.MalformedMatrixError,
        errors.NonFiniteError,
        errors.InvalidArgumentError,
        errors.NumericOverflowError,
    ):
        assert issubclass(cls, errors.InputError)
    assert issubclass(errors.NumericOverflowError, OverflowError)
    for cls in (
        errors.ServiceUnavailableError,
        errors.MalformedResponseError,
        errors.BatchJobError,
    ):
        assert issubclass(cls, errors.ServiceError)
    assert issubclass(errors.ServiceError, ConnectionError)
    assert not issubclass(errors.ServiceError, ValueError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.ResourceError, RuntimeError)
    assert issubclass(errors.InternalError, RuntimeError)


def test_errors_pickle_with_their_attributes():
    e = errors.ServiceUnavailableError("NCBI: cannot reach", service="NCBI", url="http://x")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is errors.ServiceUnavailableError and str(back) == "NCBI: cannot reach"
    assert (back.service, back.url, back.status) == ("NCBI", "http://x", None)
    k = errors.NonFiniteError("X contains NaN at cell 3")
    assert str(pickle.loads(pickle.dumps(k))) == "X contains NaN at cell 3"


def _csr(X):
    return X.indptr.astype(np.int32), X.indices.astype(np.int32), X.data


def test_each_kernel_error_variant_arrives_as_its_class():
    X = sp.random_array((20, 10), density=0.4, format="csr", dtype=np.float32, rng=0)
    E = np.ones((10, 4), dtype=np.float32)
    with pytest.raises(errors.ShapeError, match="shape mismatch"):
        gf.weighted_embedding(X, E[:9])
    p, i, d = _csr(X)
    bad = p.copy()
    bad[3], bad[4] = bad[4], bad[3] - 1  # indptr not monotone
    with pytest.raises(errors.MalformedMatrixError, match="malformed CSR"):
        _core.top_genes(bad, i, d, 10, 3)
    nan = X.copy()
    nan.data[5] = np.nan
    with pytest.raises(errors.NonFiniteError, match="NaN"):
        gf.weighted_embedding(nan, E)
    with pytest.raises(errors.InvalidArgumentError, match="n must be at least 1"):
        _core.top_genes(p, i, d, 10, 0)
    huge = X.copy()
    huge.data[:] = 3e38
    with pytest.raises(errors.NumericOverflowError, match="float32 range") as err:
        gf.weighted_embedding(huge, E * 10)
    assert isinstance(err.value, ValueError) and isinstance(err.value, OverflowError)


def test_cell_offsets_keep_the_class():
    X = sp.random_array((20, 10), density=0.4, format="csr", dtype=np.float32, rng=1)
    X.data[X.indptr[7]] = np.inf
    with pytest.raises(errors.NonFiniteError, match=r"cell 107\b"):
        gf.weighted_embedding(X, np.ones((10, 4), dtype=np.float32), row_offset=100)


def _chunk_with(value, row, gene, n_cells=12, n_genes=8):
    """A CSR chunk whose only stored value of cell ``row`` is ``value`` at ``gene``."""
    X = sp.random_array((n_cells, n_genes), density=0.5, format="csr", dtype=np.float32, rng=2)
    X = X.tolil()
    X[row, :] = 0
    X[row, gene] = value
    return X.tocsr()


@pytest.mark.parametrize("offset", [0, 40])
def test_nan_in_a_chunk_names_its_cell_and_gene_in_the_whole_matrix(offset):
    X = _chunk_with(np.nan, 3, 5)
    E = np.ones((8, 4), dtype=np.float32)
    for call in (
        lambda: gf.weighted_embedding(X, E, row_offset=offset),
        lambda: gf.top_genes(X, 2, row_offset=offset),
        lambda: gf.cell_sentences(X, [f"g{j}" for j in range(8)], 2, row_offset=offset),
    ):
        with pytest.raises(errors.NonFiniteError) as err:
            call()
        assert (err.value.cell, err.value.gene) == (3 + offset, 5)
        assert str(err.value) == f"X contains NaN at cell {3 + offset}, gene 5"
        back = pickle.loads(pickle.dumps(err.value))
        assert (type(back), back.cell, back.gene) == (errors.NonFiniteError, 3 + offset, 5)
        assert str(back) == str(err.value)


def test_positions_of_other_kernel_errors():
    E = np.ones((8, 4), dtype=np.float32)
    # A stored gene index outside the matrix: the cell and the index as stored.
    X = _chunk_with(1.0, 2, 0)
    bad = gf.kernels.CsrParts(X.indptr, X.indices.copy(), X.data, X.shape)
    bad.indices[X.indptr[2]] = 9
    with pytest.raises(errors.MalformedMatrixError, match=r"cell 12 has gene index 9") as err:
        gf.top_genes(bad, 2, row_offset=10)
    assert (err.value.cell, err.value.gene) == (12, 9)
    # A gene_index entry outside the table: the column, no cell.
    gi = np.arange(8)
    gi[6] = 8
    with pytest.raises(errors.InvalidArgumentError, match=r"gene_index\[6\] = 8") as err:
        gf.weighted_embedding(X, E, gene_index=gi, row_offset=10)
    assert (err.value.cell, err.value.gene) == (None, 6)
    # An infinity in the table: its row, no cell.
    bad_E = E.copy()
    bad_E[7, 1] = np.inf
    with pytest.raises(errors.NonFiniteError, match="gene row 7, dimension 1") as err:
        gf.weighted_embedding(X, bad_E, row_offset=10)
    assert (err.value.cell, err.value.gene) == (None, 7)
    # A negative count for log1p, and an overflowing sum: the cell.
    with pytest.raises(errors.InvalidArgumentError, match="first: -2 at cell 105, gene 4") as err:
        gf.weighted_embedding(_chunk_with(-2.0, 5, 4), E, preprocess="log1p", row_offset=100)
    assert (err.value.cell, err.value.gene) == (105, 4)
    with pytest.raises(errors.NumericOverflowError, match="cell 107 exceeds") as err:
        gf.weighted_embedding(_chunk_with(3e38, 7, 1), E * 10, row_offset=100)
    assert (err.value.cell, err.value.gene) == (107, None)
    # No position: shapes and options.
    with pytest.raises(errors.ShapeError) as err:
        gf.weighted_embedding(X, E[:7])
    assert (err.value.cell, err.value.gene) == (None, None)
    assert not gf.kernels.is_kernel_error(err.value)


def test_offset_cells_moves_the_fields_and_composes_the_message():
    X = _chunk_with(np.inf, 4, 2)
    with pytest.raises(errors.NonFiniteError) as err:
        gf.top_genes(X, 2)
    exc = err.value
    assert gf.kernels.is_kernel_error(exc) and exc.cell == 4
    moved = gf.kernels.offset_cells(exc, 40, where="{atlas}.h5ad")
    assert type(moved) is errors.NonFiniteError
    assert (moved.cell, moved.gene) == (44, 2)
    assert str(moved) == "{atlas}.h5ad: X contains +inf at cell 44, gene 2"
    again = gf.kernels.offset_cells(moved, 1000)
    assert again.cell == 1044 and str(again) == "{atlas}.h5ad: X contains +inf at cell 1044, gene 2"
    assert gf.kernels.offset_cells(exc, 0) is exc
    plain = errors.NonFiniteError("not from a kernel")
    assert not gf.kernels.is_kernel_error(plain)
    assert gf.kernels.offset_cells(plain, 5, where="f") is plain


def test_thread_pool_failure_is_a_resource_error():
    # Stacks for new threads cannot be mapped under a tight address-space limit, so the
    # kernel's pool cannot start: a ResourceError, not a crash (a fresh interpreter: the
    # limit stays there). Pools are built per thread count, so ask for a new count.
    code = textwrap.dedent(
        """
        import resource
        import numpy as np, scipy.sparse as sp
        import genept_fast as gf
        from genept_fast import errors
        X = sp.random_array((50, 10), density=0.3, format="csr", dtype=np.float32, rng=0)
        E = np.ones((10, 4), dtype=np.float32)
        gf.top_genes(X, 2, n_threads=1)
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + (8 << 20), resource.RLIM_INFINITY))
        try:
            gf.top_genes(X, 2, n_threads=min(16, gf.kernels.thread_limit()))
        except errors.ResourceError as e:
            print("ResourceError", e)
        except MemoryError:
            print("MemoryError")
        else:
            print("no error")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    if not proc.stdout.startswith("ResourceError"):
        pytest.skip(f"the limit did not stop the pool here ({proc.stdout.strip()})")
    assert "thread pool" in proc.stdout


def test_no_module_raises_the_bare_base_class():
    """Every raise names a branch (input, service, ...), so callers and the CLI can tell."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id == "GeneptError":
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.ShapeError("x"), 2),
        (errors.InputError("x"), 2),
        (FileNotFoundError(2, "No such file", "a.h5ad"), 2),
        (errors.MissingDependencyError("pip install 'genept-fast[eval]'"), 2),
        (errors.ServiceError("OpenAI answered 500"), 3),
        (errors.ServiceUnavailableError("cannot reach"), 3),
        (errors.BatchJobError("batch b1 failed"), 3),
        (TimeoutError("timed out"), 3),
        (errors.ResourceError("thread pool: ..."), 1),
        (errors.InternalError("a panic"), 1),
        (RuntimeError("a bug"), 1),
    ],
)
def test_exit_status_table(exc, status):
    assert cli._exit_status(exc) == status
    assert status in cli.EXIT_CODES


def _run_failing(monkeypatch, exc: BaseException) -> int:
    def run(args):
        raise exc

    monkeypatch.setattr(gene_text, "run", run)
    return cli.main(["gene-text", "TP53", "-o", "t.parquet"])


def test_cli_maps_errors_to_exit_statuses(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert _run_failing(monkeypatch, errors.InvalidArgumentError("bad --top-n")) == 2
    assert capsys.readouterr().err == "genept-fast gene-text: error: bad --top-n\n"
    assert _run_failing(monkeypatch, errors.ServiceError("NCBI: HTTP 503")) == 3
    assert capsys.readouterr().err == "genept-fast gene-text: error: NCBI: HTTP 503\n"
    assert _run_failing(monkeypatch, errors.ResourceError("thread pool: no threads")) == 1
    err = capsys.readouterr().err
    assert "thread pool" in err and "bug" not in err
    assert _run_failing(monkeypatch, KeyError("oops")) == 1
    err = capsys.readouterr().err
    assert "this is a bug" in err and "Traceback" not in err
    log = Path(err.rsplit("the traceback is in ", 1)[1].strip())
    assert "KeyError" in log.read_text()


def test_cli_prints_warnings_in_one_line(tmp_path):
    code = textwrap.dedent(
        """
        import sys, warnings
        from genept_fast import cli
        from genept_fast.commands import gene_text

        def run(args):
            warnings.warn("first line\\n   and the second", UserWarning, stacklevel=1)
            return 0

        gene_text.run = run
        before = warnings.formatwarning
        rc = cli.main(["gene-text", "TP53", "-o", "t.parquet"])
        assert warnings.formatwarning is before  # restored for whoever called main()
        sys.exit(rc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "genept-fast gene-text: warning: first line and the second\n"


def test_cli_warnings_stay_warnings(monkeypatch, tmp_path):
    """Recorders (pytest.warns, catch_warnings(record=True)) still see them."""

    def run(args):
        warnings.warn("a warning", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(gene_text, "run", run)
    with pytest.warns(UserWarning, match="a warning"):
        assert cli.main(["gene-text", "TP53", "-o", str(tmp_path / "t.parquet")]) == 0
