"""``genept-fast build-reference``, ``annotate`` and ``evaluate --reference`` on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from genept_fast.annotate import ReferenceIndex, transfer_labels
from genept_fast.cli import main
from genept_fast.stream.sinks import ZarrWork
from genept_fast.stream.sources import ArraySource

if TYPE_CHECKING:
    from pathlib import Path


def clustered(n: int, seed: int, dim: int = 16, n_types: int = 4):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(42).standard_normal((n_types, dim))
    t = rng.integers(0, n_types, n)
    X = (centres[t] + 0.8 * rng.standard_normal((n, dim))).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"T{i}+/CD25" for i in t]), "donor": "d1"},
        index=[f"{'rq'[seed % 2]}{i}" for i in range(n)],
    )
    a = ad.AnnData(obs=obs)
    a.obsm["X_genept_w"] = X
    a.obsm["X_pca"] = X[:, :8] * 3.0
    return a


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("annot")
    ref, query = clustered(1200, seed=2), clustered(300, seed=1)
    ref.write_h5ad(d / "ref.h5ad")
    query.write_h5ad(d / "query.h5ad")
    query.write_zarr(d / "query.zarr")
    return d, ref, query


def expected(ref, query, **kw):
    out = transfer_labels(query, ref, label_key="cell_type", copy=True, **kw)
    assert out is not None
    return out.obs


def test_build_reference_then_annotate_to_h5ad(files, tmp_path, capsys):
    d, ref, query = files
    index = tmp_path / "ref.index"
    assert (
        main(
            [
                "build-reference",
                str(d / "ref.h5ad"),
                "--label",
                "cell_type",
                "--obsm",
                "X_genept_w",
                "-o",
                str(index),
                "--chunk-size",
                "100",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().err
    loaded = ReferenceIndex.load(index)
    assert loaded.n_cells == ref.n_obs and loaded.provenance["source"] == "file"
    assert loaded.provenance["path"] == str((d / "ref.h5ad").resolve())
    out = tmp_path / "pred.h5ad"
    assert (
        main(
            [
                "annotate",
                str(d / "query.h5ad"),
                "--reference",
                str(index),
                "-o",
                str(out),
                "--chunk-size",
                "37",
            ]
        )
        == 0
    )
    got = ad.read_h5ad(out)
    want = expected(ref, query)
    assert list(got.obs_names) == list(query.obs_names)
    assert got.obs["donor"].tolist() == query.obs["donor"].tolist()  # the query's obs is kept
    np.testing.assert_array_equal(got.obs["cell_type_pred"], want["cell_type_pred"])
    np.testing.assert_allclose(
        got.obs["cell_type_pred_confidence"], want["cell_type_pred_confidence"], rtol=1e-6
    )
    assert got.uns["cell_type_pred"]["reference"]["fingerprint"] == loaded.fingerprint
    counts = got.uns["cell_type_pred"]["reference"]["label_counts"]
    assert dict(zip(counts["label"], counts["n_cells"], strict=True)) == loaded.label_counts()
    assert got.n_vars == 0 and not got.obsm


def test_annotate_from_an_h5ad_reference_to_parquet_with_logreg(files, tmp_path):
    d, ref, query = files
    out = tmp_path / "pred.parquet"
    assert (
        main(
            [
                "annotate",
                str(d / "query.zarr"),
                "--reference",
                str(d / "ref.h5ad"),
                "--label",
                "cell_type",
                "--obsm",
                "X_genept_w",
                "X_pca",
                "--method",
                "logreg",
                "--min-confidence",
                "0.9",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    table = pq.read_table(out)
    frame = table.to_pandas()
    want = expected(
        ref, query, obsm_key=["X_genept_w", "X_pca"], method="logreg", min_confidence=0.9
    )
    assert frame["obs_name"].tolist() == list(query.obs_names)
    assert (
        frame["cell_type_pred"].astype(str).tolist() == want["cell_type_pred"].astype(str).tolist()
    )
    meta = json.loads(table.schema.metadata[b"genept_fast"])
    assert meta["cell_type_pred"]["params"]["method"] == "logreg"
    assert meta["cell_type_pred"]["params"]["obsm_keys"] == ["X_genept_w", "X_pca"]
    assert sum(meta["cell_type_pred"]["prediction_counts"].values()) == query.n_obs


def test_annotate_reads_the_zarr_store_of_encode(files, tmp_path):
    d, ref, query = files
    X = query.obsm["X_genept_w"]
    work = ZarrWork(
        tmp_path, X.shape[0], X.shape[1], np.dtype(np.float32), chunk_size=64, key="X_genept_w"
    )
    work.create()
    names = list(query.obs_names)
    for a in range(0, X.shape[0], 64):
        work.write(a, min(a + 64, X.shape[0]), X[a : a + 64], names[a : a + 64])
    store = tmp_path / "query_w.zarr"
    src = ArraySource(np.zeros((X.shape[0], 1)), obs_names=names)
    work.finalize(
        store, source=src, chunk_size=64, key="X_genept_w", uns={"params": {"method": "GenePT-w"}}
    )
    out = tmp_path / "p.h5ad"
    assert (
        main(
            [
                "annotate",
                str(store),
                "--reference",
                str(d / "ref.h5ad"),
                "--label",
                "cell_type",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    got = ad.read_h5ad(out)
    assert list(got.obs_names) == names
    np.testing.assert_array_equal(got.obs["cell_type_pred"], expected(ref, query)["cell_type_pred"])


def test_outputs_are_never_clobbered(files, tmp_path, capsys):
    d, _, _ = files
    out = tmp_path / "p.h5ad"
    out.write_bytes(b"precious")
    args = [
        "annotate",
        str(d / "query.h5ad"),
        "--reference",
        str(d / "ref.h5ad"),
        "--label",
        "cell_type",
        "-o",
        str(out),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    assert main([*args, "--overwrite"]) == 0
    assert ad.read_h5ad(out).n_obs == 300
    before = (d / "query.h5ad").read_bytes()
    assert main([*args[:-1], str(d / "query.h5ad"), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert (d / "query.h5ad").read_bytes() == before
    index = tmp_path / "r.index"
    index.write_bytes(b"x")
    assert (
        main(["build-reference", str(d / "ref.h5ad"), "--label", "cell_type", "-o", str(index)])
        == 2
    )
    assert index.read_bytes() == b"x"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--label", "nope"], "obs has no column 'nope'"),
        (["--label", "cell_type", "--obsm", "X_umap"], "has no embedding 'X_umap'"),
        (["--label", "donor"], "has 1 label ('d1')"),
        (["--label", "cell_type", "--k", "0"], "--k: 0 is out of range"),
        (["--label", "cell_type", "-o", "x.csv"], "use one of .h5ad, .parquet"),
    ],
)
def test_user_errors_exit_2_with_one_line(files, tmp_path, capsys, extra, match):
    d, _, _ = files
    args = [
        "annotate",
        str(d / "query.h5ad"),
        "--reference",
        str(d / "ref.h5ad"),
        "-o",
        str(tmp_path / "p.h5ad"),
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and err.startswith("genept-fast annotate")


def test_dimension_mismatch_from_the_shell(files, tmp_path):
    d = files[0]
    q = clustered(20, seed=5, dim=12)
    q.write_h5ad(tmp_path / "q12.h5ad")
    index = tmp_path / "ref.index"
    assert (
        main(["build-reference", str(d / "ref.h5ad"), "--label", "cell_type", "-o", str(index)])
        == 0
    )
    proc = shell(
        "annotate",
        str(tmp_path / "q12.h5ad"),
        "--reference",
        str(index),
        "-o",
        str(tmp_path / "o.h5ad"),
    )
    assert proc.returncode == 2, proc.stderr
    assert "has 12 dimensions but the reference's has 16" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupted_index_from_the_shell(files, tmp_path):
    d, _, _ = files
    index = tmp_path / "ref.index"
    assert (
        main(
            [
                "build-reference",
                str(d / "ref.h5ad"),
                "--label",
                "cell_type",
                "--backend",
                "hnsw",
                "-o",
                str(index),
            ]
        )
        == 0
    )
    data = bytearray(index.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0x5A
    bad = tmp_path / "bad.index"
    bad.write_bytes(bytes(data))
    for path in (bad, _truncated(index, tmp_path)):
        proc = shell(
            "annotate",
            str(d / "query.h5ad"),
            "--reference",
            str(path),
            "-o",
            str(tmp_path / "o.h5ad"),
        )
        assert proc.returncode == 2, proc.stderr
        assert "corrupted" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "o.h5ad").exists()


def shell(*args: str) -> subprocess.CompletedProcess[str]:
    """``genept-fast ARGS`` in a child process (an abort fails the test, not pytest)."""
    return subprocess.run(
        [sys.executable, "-m", "genept_fast", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _truncated(index: Path, tmp: Path) -> Path:
    out = tmp / "short.index"
    out.write_bytes(index.read_bytes()[:4096])
    return out


def test_evaluate_reference_mode(files, tmp_path, capsys):
    d, _, _ = files
    out = tmp_path / "rep"
    assert (
        main(
            [
                "evaluate",
                str(d / "query.h5ad"),
                "--reference",
                str(d / "ref.h5ad"),
                "--label",
                "cell_type",
                "--obsm",
                "X_genept_w",
                "X_pca",
                "--ensemble",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Reference → query" in printed and "macro F1" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"X_genept_w", "X_pca", "X_genept_w+X_pca"}
    assert set(report["results"]["X_pca"]) == {"knn", "logreg"}
    assert (out / "confusion_X_genept_w_X_pca_logreg.png").is_file()
    assert report["results"]["X_genept_w"]["knn"]["accuracy"] > 0.9
