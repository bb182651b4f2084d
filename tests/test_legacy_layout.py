"""scanpy's bundled ``10x_pbmc68k_reduced.h5ad``, exactly as its wheel ships it, uses the legacy
on-disk layout (anndata < 0.7: structured-array obs/var/raw.var/obsm, ``raw.X`` and ``raw.var``
at the top level, categories in ``uns``). The reading layer (genept_fast.cells) reads it like the
same data re-saved by anndata (.h5ad, .zarr v2 and v3), and every command that reads an AnnData
runs on it (issue 19)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy

from genept_fast.annotate import EmbeddingSource
from genept_fast.cells import AnnDataStore, has_raw, open_cells, read_obs_names, read_var
from genept_fast.errors import InputError
from genept_fast.table import GeneEmbeddings

SHIPPED = Path(scanpy.__file__).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"


def _read(path: Path, **kw: object) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata: OldFormatWarning
        return ad.read_h5ad(path, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def memory() -> ad.AnnData:
    return _read(SHIPPED)


@pytest.fixture(scope="module")
def resaved(memory: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("resaved")
    memory.write_h5ad(d / "pbmc.h5ad")
    with warnings.catch_warnings():
        # anndata: the zarr v2 default will change; zarr: uns's structured arrays have no v3 spec
        warnings.simplefilter("ignore", UserWarning)
        memory.write_zarr(d / "pbmc.zarr")
        with ad.settings.override(zarr_write_format=3):
            memory.write_zarr(d / "pbmc_v3.zarr")
    return {"h5ad": d / "pbmc.h5ad", "zarr": d / "pbmc.zarr", "zarr_v3": d / "pbmc_v3.zarr"}


def test_the_shipped_file_is_the_legacy_layout() -> None:
    with h5py.File(SHIPPED, "r") as f:
        assert isinstance(f["obs"], h5py.Dataset) and f["obs"].dtype.names[0] == "index"
        assert isinstance(f["var"], h5py.Dataset)
        assert isinstance(f["obsm"], h5py.Dataset)
        assert "raw.X" in f and "raw.var" in f and "raw" not in f
        assert f["raw.X"].attrs["h5sparse_format"] in ("csr", b"csr")
        assert "bulk_labels_categories" in f["uns"]


@pytest.mark.parametrize(("use_raw", "matrix"), [(None, "raw/X"), (True, "raw/X"), (False, "X")])
def test_same_rows_names_and_tables_as_resaved(
    memory: ad.AnnData, resaved: dict[str, Path], use_raw: bool | None, matrix: str
) -> None:
    raw = matrix == "raw/X"
    expected = (memory.raw.X if raw else memory.X).astype(np.float32)
    expected = np.asarray(expected.toarray() if hasattr(expected, "toarray") else expected)
    genes = list(memory.raw.var_names if raw else memory.var_names)
    inputs: dict[str, object] = {"shipped": SHIPPED, **resaved, "memory": memory}
    inputs["backed"] = _read(SHIPPED, backed="r")
    inputs["view"] = memory[::2]
    for kind, data in inputs.items():
        with open_cells(data, use_raw=use_raw) as src:
            assert src.matrix == matrix, kind
            rows = np.vstack(
                [
                    src.read(a, min(a + 256, src.n_cells)).toarray()
                    for a in range(0, src.n_cells, 256)
                ]
            )
            want = expected[::2] if kind == "view" else expected
            np.testing.assert_array_equal(rows, want, err_msg=kind)
            assert src.var_names == genes, kind
            assert list(src.var.index) == genes, kind
            names = list(memory.obs_names[::2] if kind == "view" else memory.obs_names)
            assert src.obs_names() == names, kind
            obs = src.obs_frame()
            assert list(obs["bulk_labels"].astype(str)) == list(
                memory.obs["bulk_labels"].astype(str)[:: 2 if kind == "view" else 1]
            ), kind
    assert has_raw(SHIPPED)


def test_tables_equal_anndatas_reading(memory: ad.AnnData, resaved: dict[str, Path]) -> None:
    with AnnDataStore(SHIPPED) as store:
        assert store.legacy
        obs, var, raw_var = store.frame("obs"), store.frame("var"), store.frame("raw/var")
        obsm = store.obsm_dict()
        assert store.obsm_keys() == ["X_pca", "X_umap"]
    pd.testing.assert_frame_equal(obs, memory.obs, check_names=False)
    pd.testing.assert_frame_equal(var, memory.var, check_names=False)
    assert list(raw_var.index) == list(memory.raw.var_names)
    assert obs["bulk_labels"].dtype == "category"  # codes + uns/bulk_labels_categories
    for key in ("X_pca", "X_umap"):
        np.testing.assert_array_equal(obsm[key], memory.obsm[key])
    for path in (SHIPPED, *resaved.values()):
        assert read_obs_names(path) == list(memory.obs_names)
        assert list(read_var(path).index) == list(memory.raw.var_names)
        assert list(read_var(path, use_raw=False).index) == list(memory.var_names)


def test_embedding_source_reads_legacy_obsm(memory: ad.AnnData, resaved: dict[str, Path]) -> None:
    for path in (SHIPPED, resaved["h5ad"], resaved["zarr"]):
        with EmbeddingSource(path, ["X_pca", "X_umap"]) as src:
            assert src.n_cells == memory.n_obs and src.dims == [50, 2]
            pca, umap = src.read(10, 20)
            np.testing.assert_array_equal(pca, memory.obsm["X_pca"][10:20])
            np.testing.assert_array_equal(umap, memory.obsm["X_umap"][10:20])
            assert src.obs_names() == list(memory.obs_names)
            labels = src.obs_column("bulk_labels")
            assert list(labels.astype(str)) == list(memory.obs["bulk_labels"].astype(str))
            assert list(src.obs_frame().columns) == list(memory.obs.columns)


def _legacy_zarr(dst: Path) -> Path:
    """The shipped file copied element by element into a zarr v2 store: the legacy layout as
    anndata < 0.7 wrote it to zarr (fixed-length unicode instead of bytes). obsm, varm and
    uns/rank_genes_groups are left out: zarr-python 3 cannot store structured arrays with
    sub-array fields (its default fill value fails)."""
    import zarr

    root = zarr.open_group(dst, mode="w", zarr_format=2)

    def unicode(dt: np.dtype) -> np.dtype:
        if dt.names:
            return np.dtype([(n, unicode(dt[n])) for n in dt.names])
        return np.dtype(f"U{dt.itemsize}") if dt.kind == "S" else dt

    def copy(name: str, obj: object) -> None:
        if name.split("/")[0] in ("obsm", "varm") or name.startswith("uns/rank_genes_groups"):
            return
        if isinstance(obj, h5py.Group):
            node = root.require_group(name)
        else:
            assert isinstance(obj, h5py.Dataset)
            data = obj[()]
            node = root.create_array(name, data=data.astype(unicode(data.dtype)))
        for k, v in obj.attrs.items():  # type: ignore[attr-defined]
            node.attrs[k] = v.tolist() if hasattr(v, "tolist") else v

    with h5py.File(SHIPPED, "r") as f:
        names: list[str] = []
        f.visit(names.append)  # (zarr inside h5py's visit callback deadlocks)
        for name in names:
            copy(name, f[name])
    return dst


def test_legacy_zarr_reads_like_the_shipped_file(memory: ad.AnnData, tmp_path: Path) -> None:
    path = _legacy_zarr(tmp_path / "legacy.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ad.read_zarr(path)  # anndata reads this layout too
    with AnnDataStore(path) as store:
        assert store.legacy and store.has_raw
        pd.testing.assert_frame_equal(store.frame("obs"), theirs.obs, check_names=False)
        pd.testing.assert_frame_equal(store.frame("obs"), memory.obs, check_names=False)
    for use_raw in (None, False):
        with open_cells(path, use_raw=use_raw) as a, open_cells(SHIPPED, use_raw=use_raw) as b:
            assert a.matrix == b.matrix
            np.testing.assert_array_equal(a.read(0, 700).toarray(), b.read(0, 700).toarray())
            assert a.var_names == b.var_names and a.obs_names() == b.obs_names()


# -- every command on the file as shipped --------------------------------------------------------


def _cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "genept_fast", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
        env={**os.environ, "GENEPT_FAST_CACHE_DIR": str(cwd / "cache")},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def genes(memory: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small made-up table for 600 of raw's 765 genes, in another order."""
    names = list(memory.raw.var_names)[::-1][:600]
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("genes") / "genes.parquet"
    GeneEmbeddings(names, rng.standard_normal((600, 8)), {"model_id": "test:genes"}).write(path)
    return path


@pytest.mark.parametrize("flag", [[], ["--use-raw"]])
def test_encode_w_on_the_shipped_file(
    genes: Path, resaved: dict[str, Path], memory: ad.AnnData, tmp_path: Path, flag: list[str]
) -> None:
    proc = _cli(
        "encode", SHIPPED, "--method", "w", "--genes", genes, *flag, "-o", "a.h5ad", cwd=tmp_path
    )
    assert "raw/X" in proc.stderr + proc.stdout
    _cli(
        "encode",
        resaved["h5ad"],
        "--method",
        "w",
        "--genes",
        genes,
        *flag,
        "-o",
        "b.h5ad",
        cwd=tmp_path,
    )
    a, b = _read(tmp_path / "a.h5ad"), _read(tmp_path / "b.h5ad")
    np.testing.assert_array_equal(a.obsm["X_genept_w"], b.obsm["X_genept_w"])
    assert np.abs(a.obsm["X_genept_w"]).sum() > 0
    # the cells' table survives as a table, its categories included
    assert list(a.obs["bulk_labels"].astype(str)) == list(memory.obs["bulk_labels"].astype(str))
    assert list(a.obs_names) == list(memory.obs_names)


def test_gene_text_on_the_shipped_file(memory: ad.AnnData, tmp_path: Path) -> None:
    _cli("gene-text", SHIPPED, "--source", "symbol", "-o", "t.parquet", cwd=tmp_path)
    texts = pd.read_parquet(tmp_path / "t.parquet")
    # the genes of the matrix the rule picks (raw/X here), as encode reads them
    assert list(texts["gene"]) == list(memory.raw.var_names)


def test_evaluate_on_the_shipped_file(tmp_path: Path) -> None:
    _cli(
        "evaluate", SHIPPED, "--label", "bulk_labels", "--obsm", "X_pca",
        "--no-leiden", "--no-plots", "--no-logreg", "-o", "rep", cwd=tmp_path,
    )  # fmt: skip
    assert (tmp_path / "rep" / "report.json").is_file()


def test_build_reference_annotate_and_transfer_on_the_shipped_file(
    memory: ad.AnnData, tmp_path: Path
) -> None:
    _cli(
        "build-reference", SHIPPED, "--label", "bulk_labels", "--obsm", "X_pca",
        "-o", "ref.index", cwd=tmp_path,
    )  # fmt: skip
    _cli("annotate", SHIPPED, "--reference", "ref.index", "-o", "ann.h5ad", cwd=tmp_path)
    out = _read(tmp_path / "ann.h5ad")
    truth = memory.obs["bulk_labels"].astype(str).to_numpy()
    # each cell is in the reference itself: its nearest neighbour votes its own label
    assert (out.obs["bulk_labels_pred"].astype(str).to_numpy() == truth).mean() > 0.9
    _cli(
        "annotate", SHIPPED, "--reference", SHIPPED, "--label", "bulk_labels", "--obsm", "X_pca",
        "-o", "ann.parquet", cwd=tmp_path,
    )  # fmt: skip
    _cli(
        "evaluate", SHIPPED, "--reference", "ref.index", "--label", "bulk_labels",
        "--obsm", "X_pca", "--no-plots", "--methods", "knn", "-o", "rep", cwd=tmp_path,
    )  # fmt: skip


def test_legacy_categories_follow_anndatas_rule_and_bad_codes_are_named(tmp_path: Path) -> None:
    """Codes that do not fit ``uns/<column>_categories`` stay numbers (anndata's rule); a code
    below -1 (-1 is missing) is a corrupt table, named."""
    path = tmp_path / "legacy.h5ad"
    obs = np.array(
        [(b"c0", 0, 5), (b"c1", 1, 0), (b"c2", -1, 1)],
        dtype=[("index", "S2"), ("kind", "i1"), ("big", "i1")],
    )
    with h5py.File(path, "w") as f:
        f["X"] = np.ones((3, 2), np.float32)
        f["obs"] = obs
        f["var"] = np.array([(b"g0",), (b"g1",)], dtype=[("index", "S2")])
        f["uns/kind_categories"] = np.array([b"B", b"T"])
        f["uns/big_categories"] = np.array([b"x", b"y"])
    with open_cells(path) as src:
        frame = src.obs_frame()
        assert frame["kind"].dtype == "category"
        assert list(frame["kind"][:2]) == ["B", "T"] and pd.isna(frame["kind"].iloc[2])
        assert frame["big"].tolist() == [5, 0, 1]  # 5 >= 2 categories: left as numbers
        assert src.var_names == ["g0", "g1"] and src.obs_names() == ["c0", "c1", "c2"]
    with h5py.File(path, "r+") as f:
        bad = obs.copy()
        bad["kind"][0] = -3
        del f["obs"]
        f["obs"] = bad
    with (
        AnnDataStore(path) as store,
        pytest.raises(InputError, match=r"legacy\.h5ad: cannot read obs"),
    ):
        store.frame("obs")
