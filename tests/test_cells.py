"""The one reading layer (genept_fast.cells): the matrix rule, and the same rows from every kind of
input (AnnData in memory, a view, backed; .h5ad and .zarr files; the legacy layout is in
test_legacy_layout.py), dtypes upcast or refused by name."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from genept_fast import stream
from genept_fast.cells import (
    AnnDataObjectSource,
    AnnDataSource,
    ArraySource,
    choose_matrix,
    has_raw,
    open_cells,
    read_var,
    read_var_names,
    source_matrix,
)
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

N_CELLS, N_GENES, N_RAW = 57, 23, 31
MATRICES = ("X", "raw/X", "layers/counts")


def _adata() -> ad.AnnData:
    """X scaled (negative values, dense), raw log-normalised (CSR, more genes), integer counts."""
    rng = np.random.default_rng(3)
    counts = sp.random(N_CELLS, N_RAW, density=0.3, random_state=4, format="csr")
    counts.data = np.ceil(counts.data * 20).astype(np.float32)
    counts = counts.astype(np.int32)
    lognorm = counts.astype(np.float32)
    lognorm.data = np.log1p(lognorm.data)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(["B", "T", "NK"], N_CELLS))},
        index=[f"c{i}" for i in range(N_CELLS)],
    )
    raw = ad.AnnData(X=lognorm, obs=obs, var=pd.DataFrame(index=[f"R{j}" for j in range(N_RAW)]))
    adata = ad.AnnData(
        X=rng.standard_normal((N_CELLS, N_GENES)).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=[f"R{j}" for j in range(N_GENES)]),
    )
    adata.raw = raw
    adata.layers["counts"] = counts[:, :N_GENES].tocsr()
    return adata


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    return _adata()


@pytest.fixture(scope="module")
def files(adata: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cells")
    adata.write_h5ad(d / "a.h5ad")
    adata.write_zarr(d / "a.zarr")
    return {"h5ad": d / "a.h5ad", "zarr": d / "a.zarr"}


def _expected(adata: ad.AnnData, matrix: str) -> np.ndarray:
    M = {"X": adata.X, "raw/X": adata.raw.X, "layers/counts": adata.layers["counts"]}[matrix]
    return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float32)


def _rows(src: stream.ChunkSource, chunk: int = 10) -> np.ndarray:
    parts = [src.read(a, min(a + chunk, src.n_cells)) for a in range(0, src.n_cells, chunk)]
    for p in parts:
        assert isinstance(p, sp.csr_array)
        assert p.dtype in (np.float32, np.float64)
    return sp.vstack(parts, format="csr").toarray()


# -- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("has_raw_", "layer", "use_raw", "expected"),
    [
        (True, None, None, "raw/X"),
        (False, None, None, "X"),
        (True, None, False, "X"),
        (False, None, False, "X"),
        (True, None, True, "raw/X"),
        (False, None, True, InputError),
        (True, "counts", None, "layers/counts"),
        (False, "counts", None, "layers/counts"),
        (True, "counts", False, "layers/counts"),
        (False, "counts", False, "layers/counts"),
        (True, "counts", True, InputError),
        (False, "counts", True, InputError),
    ],
)
def test_the_matrix_rule(
    has_raw_: bool, layer: str | None, use_raw: bool | None, expected: str | type
) -> None:
    if expected is InputError:
        with pytest.raises(InputError, match="raw") as exc:
            choose_matrix(has_raw=has_raw_, layer=layer, use_raw=use_raw)
        # the message names the fix
        assert "layer" in str(exc.value) or "use_raw" in str(exc.value)
    else:
        assert choose_matrix(has_raw=has_raw_, layer=layer, use_raw=use_raw) == expected


def test_the_rule_refuses_odd_arguments() -> None:
    with pytest.raises(InputError, match="use_raw must be"):
        choose_matrix(has_raw=True, layer=None, use_raw="yes")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="layer must be a non-empty string"):
        choose_matrix(has_raw=True, layer="", use_raw=None)


# -- every input gives the same rows -------------------------------------------------------------


def _sources(adata: ad.AnnData, files: dict[str, Path], layer: str | None, use_raw: bool | None):
    yield "memory", open_cells(adata, layer=layer, use_raw=use_raw)
    yield "h5ad", open_cells(files["h5ad"], layer=layer, use_raw=use_raw)
    yield "zarr", open_cells(str(files["zarr"]), layer=layer, use_raw=use_raw)
    backed = ad.read_h5ad(files["h5ad"], backed="r")
    yield "backed", open_cells(backed, layer=layer, use_raw=use_raw)


@pytest.mark.parametrize(
    ("layer", "use_raw", "matrix"),
    [
        (None, None, "raw/X"),
        (None, False, "X"),
        (None, True, "raw/X"),
        ("counts", None, "layers/counts"),
    ],
)
def test_every_input_gives_the_same_rows(
    adata: ad.AnnData, files: dict[str, Path], layer: str | None, use_raw: bool | None, matrix: str
) -> None:
    expected = _expected(adata, matrix)
    var = list(adata.raw.var_names if matrix == "raw/X" else adata.var_names)
    for kind, src in _sources(adata, files, layer, use_raw):
        with src:
            assert src.matrix == matrix, kind
            assert source_matrix(src) == matrix
            assert (src.n_cells, src.n_genes) == expected.shape, kind
            np.testing.assert_array_equal(_rows(src), expected, err_msg=kind)
            assert src.read(0, 5).dtype == np.float32, kind  # int32 counts upcast too
            assert src.var_names == var, kind
            assert list(src.var.index) == var, kind
            assert src.obs_names() == list(adata.obs_names), kind
            assert src.obs_names(3, 6) == list(adata.obs_names[3:6]), kind
            assert list(src.obs_frame()["cell_type"]) == list(adata.obs["cell_type"]), kind
            assert src.read(4, 4).shape == (0, src.n_genes)
            with pytest.raises(InputError, match="out of range"):
                src.read(0, src.n_cells + 1)


@pytest.mark.parametrize("matrix", MATRICES)
def test_views_read_only_their_rows(adata: ad.AnnData, files: dict[str, Path], matrix: str) -> None:
    layer = matrix.removeprefix("layers/") if matrix.startswith("layers/") else None
    use_raw = matrix == "raw/X"
    mask = np.arange(N_CELLS) % 3 != 1
    expected = _expected(adata, matrix)[mask]
    backed = ad.read_h5ad(files["h5ad"], backed="r")
    for kind, data in [("view", adata[mask]), ("backed view", backed[mask])]:
        assert data.is_view
        with open_cells(data, layer=layer, use_raw=use_raw) as src:
            assert isinstance(src, AnnDataObjectSource)
            assert src.matrix == matrix
            np.testing.assert_array_equal(_rows(src, 7), expected, err_msg=kind)
            assert src.obs_names() == list(adata.obs_names[mask])
    # a view of genes keeps raw's genes for raw/X (raw is never subset by genes)
    with open_cells(adata[:, :5], use_raw=use_raw, layer=layer) as src:
        assert src.n_genes == (N_RAW if use_raw else 5)


def test_in_memory_does_not_copy_the_matrix(adata: ad.AnnData) -> None:
    with open_cells(adata, use_raw=False) as src:
        assert src._M is adata.X  # type: ignore[union-attr]


def test_fingerprints_are_deterministic_and_see_changes(
    adata: ad.AnnData, files: dict[str, Path]
) -> None:
    a = open_cells(adata).fingerprint()
    assert a == open_cells(adata.copy()).fingerprint()
    assert a != open_cells(adata, use_raw=False).fingerprint()
    changed = adata.copy()
    changed.raw.X.data[0] += 1
    assert a != open_cells(changed).fingerprint()
    backed = ad.read_h5ad(files["h5ad"], backed="r")
    b = open_cells(backed).fingerprint()
    assert b == open_cells(ad.read_h5ad(files["h5ad"], backed="r")).fingerprint()
    assert b != open_cells(backed[:10]).fingerprint()
    with open_cells(files["h5ad"]) as src:
        assert src.fingerprint()["element"] == "raw/X"


def test_file_helpers_follow_the_rule(adata: ad.AnnData, files: dict[str, Path]) -> None:
    for path in files.values():
        assert has_raw(path)
        assert read_var_names(path) == list(adata.raw.var_names)
        assert read_var_names(path, use_raw=False) == list(adata.var_names)
        assert list(read_var(path).index) == list(adata.raw.var_names)
        assert list(read_var(path, layer="counts").index) == list(adata.var_names)
        with pytest.raises(InputError, match=r"no layer 'nope' \(layers: counts\)"):
            open_cells(path, layer="nope")


def test_no_raw_means_x_and_use_raw_names_the_fix(tmp_path: Path) -> None:
    a = ad.AnnData(X=np.ones((3, 2), np.float32))
    path = tmp_path / "noraw.h5ad"
    a.write_h5ad(path)
    for data in (a, path):
        with open_cells(data) as src:
            assert src.matrix == "X"
        with pytest.raises(InputError, match=r"no raw.*use_raw=False"):
            open_cells(data, use_raw=True)
    with pytest.raises(InputError, match=r"no layer 'counts' \(layers: none\)"):
        open_cells(a, layer="counts")


# -- dtypes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.uint8, np.float64])
def test_dtypes_are_upcast_per_chunk(dtype: type, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = (rng.random((40, 6)) * 10).astype(dtype)
    X[X < 3] = 0
    out_dtype = np.float64 if dtype is np.float64 else np.float32
    a = ad.AnnData(X=X)
    a.write_h5ad(tmp_path / "d.h5ad")
    a.write_zarr(tmp_path / "d.zarr")
    # scipy.sparse has no float16: a sparse file with float16 data is made by rewriting data
    ad.AnnData(X=sp.csr_matrix(X.astype(np.float64))).write_h5ad(tmp_path / "s.h5ad")
    with h5py.File(tmp_path / "s.h5ad", "r+") as f:
        data = f["X/data"][()].astype(dtype)
        del f["X/data"]
        f["X/data"] = data
    inputs: list[object] = [a, tmp_path / "d.h5ad", tmp_path / "d.zarr", tmp_path / "s.h5ad"]
    if dtype is not np.float16:
        inputs.append(ad.AnnData(X=sp.csr_matrix(X)))
    for data in inputs:
        with open_cells(data) as src:
            rows = src.read(0, 40)
            assert rows.dtype == out_dtype, data
            np.testing.assert_array_equal(rows.toarray(), X.astype(out_dtype))


def test_float16_dense_x_is_read_not_called_corrupt(tmp_path: Path) -> None:
    """issue 20: a float16 dense X was reported as "truncated or corrupt file?"."""
    X = np.array([[0, 1.5, 2], [0.25, 0, 65504]], dtype=np.float16)
    path = tmp_path / "half.h5ad"
    ad.AnnData(X=X).write_h5ad(path)
    with h5py.File(path) as f:
        assert f["X"].dtype == np.float16  # stored as written
    with stream.open_source(path) as src:
        np.testing.assert_array_equal(src.read(0, 2).toarray(), X.astype(np.float32))


@pytest.mark.parametrize(
    ("X", "name"),
    [
        (np.ones((4, 3), dtype=bool), "bool"),
        (np.ones((4, 3), dtype=np.complex64), "complex64"),
        (np.array([["a", "b"], ["c", "d"]], dtype=object), "object"),
    ],
)
def test_non_numeric_matrices_are_refused_by_name(X: np.ndarray, name: str, tmp_path: Path) -> None:
    a = ad.AnnData(X=X)
    with pytest.raises(InputError, match=rf"X has dtype {name}.*not an expression matrix"):
        open_cells(a)
    if X.dtype != object:  # anndata cannot write an object matrix
        path = tmp_path / "bad.h5ad"
        a.write_h5ad(path)
        with pytest.raises(InputError, match=rf"bad.h5ad: X has dtype {name}"):
            open_cells(path)
        sparse = ad.AnnData(X=sp.csr_matrix(X))
        sparse.write_h5ad(path)
        with pytest.raises(InputError, match=rf"X has dtype {name}"):
            open_cells(path)
    with pytest.raises(InputError, match=rf"X has dtype {name}"):
        ArraySource(X)


# -- what open_cells takes -----------------------------------------------------------------------


def test_a_chunk_source_is_returned_as_is() -> None:
    src = ArraySource(np.eye(3, dtype=np.float32))
    assert open_cells(src) is src
    assert open_cells(src, use_raw=False) is src
    assert source_matrix(src) == "X"
    with pytest.raises(InputError, match="reads its own matrix"):
        open_cells(src, layer="counts")
    with pytest.raises(InputError, match="reads its own matrix"):
        open_cells(src, use_raw=True)


def test_other_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"expected an AnnData, a path.*got ndarray"):
        open_cells(np.eye(3))
    with pytest.raises(InputError, match="input not found"):
        open_cells(tmp_path / "missing.h5ad")
    text = tmp_path / "x.txt"
    text.write_text("not anndata")
    with pytest.raises(InputError, match=r"not an \.h5ad"):
        open_cells(text)


def test_anndata_source_pickles_to_the_same_matrix(files: dict[str, Path]) -> None:
    import pickle

    with AnnDataSource(files["h5ad"], layer="counts") as src:
        again = pickle.loads(pickle.dumps(src))
        assert again.matrix == "layers/counts"
        np.testing.assert_array_equal(again.read(0, 9).toarray(), src.read(0, 9).toarray())
        again.close()
    with AnnDataSource(files["zarr"]) as src:  # the default chosen on open is kept
        assert pickle.loads(pickle.dumps(src)).matrix == "raw/X"


def test_every_combination_of_rule_and_input_agrees(
    adata: ad.AnnData, files: dict[str, Path]
) -> None:
    """open_cells picks, for every (layer, use_raw), what choose_matrix says."""
    for layer, use_raw in itertools.product((None, "counts"), (None, False, True)):
        try:
            expected = choose_matrix(has_raw=True, layer=layer, use_raw=use_raw)
        except InputError:
            expected = None
        for data in (adata, files["h5ad"], files["zarr"]):
            if expected is None:
                with pytest.raises(InputError, match="not both"):
                    open_cells(data, layer=layer, use_raw=use_raw)
            else:
                with open_cells(data, layer=layer, use_raw=use_raw) as src:
                    assert src.matrix == expected


def test_reading_a_files_rows_does_not_import_anndata(files: dict[str, Path]) -> None:
    """Reading a file keeps anndata (130 MB resident, see stream/sources.py) out of the job."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from genept_fast.cells import open_cells\n"
        "for path in sys.argv[1:]:\n"
        "    with open_cells(path) as src:\n"
        "        src.read(0, src.n_cells); src.obs_names(); src.var_names; src.fingerprint()\n"
        "print(sorted(m for m in ('anndata', 'pandas') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(files["h5ad"]), str(files["zarr"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert proc.stdout.strip() == "[]"


def test_a_string_matrix_in_a_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "strings.h5ad"
    ad.AnnData(X=np.ones((2, 2), np.float32)).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        attrs = dict(f["X"].attrs)
        del f["X"]
        f.create_dataset("X", data=np.array([["a", "b"], ["c", "d"]], dtype=object),
                         dtype=h5py.string_dtype())  # fmt: skip
        f["X"].attrs.update(attrs)
    with pytest.raises(InputError, match=r"strings.h5ad: X has dtype object"):
        open_cells(path)


def test_a_dask_matrix_in_memory_is_read_by_chunks() -> None:
    da = pytest.importorskip("dask.array")
    X = np.random.default_rng(0).random((30, 5)).astype(np.float16)
    a = ad.AnnData(X=da.from_array(X, chunks=(7, 5)))
    for data, rows in ((a, X), (a[::2], X[::2])):
        with open_cells(data) as src:
            np.testing.assert_array_equal(_rows(src, 4), rows.astype(np.float32))


def test_encode_reads_a_float16_file_like_its_float32_copy(tmp_path: Path) -> None:
    """issue 20 through the command: a float16 dense X is encoded, as its upcast copy is."""
    from genept_fast.cli import main
    from genept_fast.table import GeneEmbeddings

    rng = np.random.default_rng(0)
    X = (rng.random((50, 20)) * 3).astype(np.float16)
    X[X < 1.5] = 0
    var = pd.DataFrame(index=[f"G{j}" for j in range(20)])
    ad.AnnData(X=X, var=var).write_h5ad(tmp_path / "half.h5ad")
    ad.AnnData(X=X.astype(np.float32), var=var).write_h5ad(tmp_path / "single.h5ad")
    table = GeneEmbeddings(list(var.index), rng.standard_normal((20, 4)), {"model_id": "t"})
    genes = table.write(tmp_path / "genes.parquet")
    for name in ("half", "single"):
        args = ["encode", str(tmp_path / f"{name}.h5ad"), "--genes", str(genes)]
        assert main([*args, "-o", str(tmp_path / f"{name}.npy")]) == 0
    half, single = np.load(tmp_path / "half.npy"), np.load(tmp_path / "single.npy")
    np.testing.assert_array_equal(half, single)
    assert np.abs(half).sum() > 0
