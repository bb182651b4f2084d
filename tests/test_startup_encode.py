"""What `genept-fast encode` pays before it encodes (issue 21 goal 1), held to the same results.

- The genes of an ``.h5ad``/``.zarr`` file are matched from its var columns read one at a time
  without pandas (``genept_fast._frames.Columns``); a fresh interpreter running the command
  imports neither pandas nor anndata, and writes the bits of ``gf.tl.genept_w`` on the AnnData.
- The table's resume fingerprint is XXH3-128 (``kernels.table_fingerprint``); a partial state
  written under the former BLAKE2b fingerprint is discarded with a warning, never resumed into.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from genept_fast import stream, tl
from genept_fast.kernels import table_fingerprint
from genept_fast.table import GeneEmbeddings
from test_stream import _FailAfter

if TYPE_CHECKING:
    from pathlib import Path

N_CELLS, N_GENES, DIM, CHUNK = 300, 40, 8, 64


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    rng = np.random.default_rng(3)
    X = sp.random(N_CELLS, N_GENES, density=0.3, format="csr", random_state=4, dtype=np.float32)
    X.data = np.round(X.data * 20) + 1  # counts
    symbols = [f"SYM{j}" for j in range(N_GENES)]
    var = pd.DataFrame(
        {
            "gene_ids": np.array([f"ENSG{j:011d}" for j in range(N_GENES)], dtype=object),
            "feature_types": pd.Categorical(["Gene Expression"] * N_GENES),
            # a symbol column the matching finds by its name (categorical, one gene missing)
            "gene_symbols": pd.Categorical([None, *symbols[1:]]),
            "mean": rng.random(N_GENES),
        },
        index=[f"name{j}" for j in range(N_GENES)],
    )
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(N_CELLS)])
    return ad.AnnData(X=X, obs=obs, var=var)


@pytest.fixture(scope="module")
def files(adata: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("startup")
    adata.write_h5ad(d / "in.h5ad")
    adata.write_zarr(d / "in.zarr")
    genes = [f"SYM{j}" for j in range(N_GENES)][::-1][: N_GENES - 5]  # 35 genes, another order
    emb = np.random.default_rng(5).standard_normal((len(genes), DIM)).astype(np.float32)
    table = GeneEmbeddings(genes, emb, {"model_id": "test:startup"})
    table.write(d / "genes.parquet")
    table.write(d / "genes.arrow")
    return {
        "h5ad": d / "in.h5ad",
        "zarr": d / "in.zarr",
        "table": d / "genes.parquet",
        "arrow": d / "genes.arrow",
    }


@pytest.mark.parametrize(
    ("fmt", "table"), [("h5ad", "table"), ("zarr", "table"), ("h5ad", "arrow")]
)
@pytest.mark.parametrize("gene_key", [None, "gene_symbols"])
def test_encode_matches_genes_without_pandas_and_writes_the_same_bits(
    adata: ad.AnnData,
    files: dict[str, Path],
    tmp_path: Path,
    fmt: str,
    table: str,
    gene_key: str | None,
) -> None:
    """Also from an Arrow table (mapped): the same bits as from the parquet one."""
    out = tmp_path / "out.npy"
    args = ["encode", str(files[fmt]), "-m", "w", "--genes", str(files[table]), "-o", str(out)]
    args += ["--no-progress", *(["--gene-key", gene_key] if gene_key else [])]
    code = (
        "import sys\n"
        "from genept_fast.cli import main\n"
        f"rc = main({args!r})\n"
        "print(rc, 'pandas' in sys.modules, 'anndata' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "False", "False"], run.stderr
    # names of var_names match no table row: the symbols come from var['gene_symbols']
    assert "gene_symbols" in run.stderr
    ref = tl.genept_w(adata, files["table"], gene_key=gene_key, copy=True)
    assert ref is not None
    np.testing.assert_array_equal(np.load(out), ref.obsm["X_genept_w"])


def test_a_missing_gene_key_names_the_columns_without_reading_them(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.npy"
    args = ["encode", str(files["h5ad"]), "-m", "w", "--genes", str(files["table"]), "-o", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "genept_fast", *args, "--gene-key", "symbol"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "--gene-key 'symbol' is not a column of var" in run.stderr
    assert "gene_ids, feature_types, gene_symbols, mean" in run.stderr
    assert not out.exists()


def test_table_fingerprint_sees_every_part() -> None:
    rng = np.random.default_rng(0)
    E = rng.standard_normal((6, 4)).astype(np.float32)
    gi = np.array([0, -1, 2, 1, 5, 4, 3], dtype=np.int64)
    fp = table_fingerprint(E, gi, True)
    assert fp.startswith("xxh3-128:") and len(fp) == len("xxh3-128:") + 32
    assert fp == table_fingerprint(E.copy(), gi.copy(), True)
    changed = E.copy()
    changed.view(np.uint32)[3, 2] ^= 1  # one bit of one value
    others = {
        table_fingerprint(changed, gi, True),
        table_fingerprint(E, gi[::-1].copy(), True),
        table_fingerprint(E, None, True),
        table_fingerprint(E, gi, False),
        table_fingerprint(E.reshape(4, 6), gi, True),  # the same bytes, another shape
        table_fingerprint(np.asfortranarray(E), gi, True),  # the same table: equal
    }
    assert fp in others and len(others) == 6


def _blake2b_fingerprint(E: np.ndarray, normalize: bool = True) -> str:
    """The encoder id written by genept-fast before XXH3 (kernels.table_fingerprint at
    eef55da: BLAKE2b-128 of the shape, the table's bytes and the options)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(E.shape).encode())
    h.update(np.ascontiguousarray(E).data.cast("B"))
    h.update(b"normalize" if normalize else b"raw")
    return f"genept-w:{h.hexdigest()}"


def _crash(path: Path, out: Path, E: np.ndarray) -> Path:
    enc = _FailAfter(stream.WeightedEncoder(E), 3)
    with pytest.raises(RuntimeError, match="boom"):
        stream.encode_file(path, out, encoder=enc, dim=DIM, chunk_size=CHUNK, progress=False)
    manifest = out.with_name(out.name + ".partial") / "manifest.json"
    assert json.loads(manifest.read_text())["done"] == [0, 1]
    return manifest


def test_a_state_written_with_the_old_fingerprint_is_discarded_not_mixed(
    adata: ad.AnnData, files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="genept_fast.stream")
    plain = tmp_path / "plain.h5ad"
    ad.AnnData(X=adata.X, obs=adata.obs).write_h5ad(plain)
    E = np.random.default_rng(6).standard_normal((N_GENES, DIM)).astype(np.float32)
    whole = tmp_path / "whole.npy"
    stream.encode_weighted(plain, whole, E, chunk_size=CHUNK, progress=False)
    # the new code's own state resumes
    out = tmp_path / "new.npy"
    _crash(plain, out, E)
    rep = stream.encode_weighted(plain, out, E, chunk_size=CHUNK, progress=False)
    assert (rep.chunks_resumed, rep.discarded) == (2, None)
    np.testing.assert_array_equal(np.load(out), np.load(whole))
    # a state whose manifest holds the table's BLAKE2b id (as the old code wrote it) does not
    old = tmp_path / "old.npy"
    manifest = _crash(plain, old, E)
    state = json.loads(manifest.read_text())
    assert state["header"]["params"]["encoder"] == f"genept-w:{table_fingerprint(E, None, True)}"
    state["header"]["params"]["encoder"] = _blake2b_fingerprint(E)
    manifest.write_text(json.dumps(state))
    rep = stream.encode_weighted(plain, old, E, chunk_size=CHUNK, progress=False)
    assert rep.chunks_resumed == 0
    assert "encoder" in (rep.discarded or "") and "discarding partial state" in caplog.text
    assert _blake2b_fingerprint(E) in (rep.discarded or "")
    np.testing.assert_array_equal(np.load(old), np.load(whole))


def test_a_bad_table_is_said_before_a_bad_input(files: dict[str, Path], tmp_path: Path) -> None:
    """The table is read before the cells are opened: a bad table is said first, a bad input
    with a good table is said, and a good job starts."""
    from genept_fast.encode import start_weighted
    from genept_fast.errors import InputError

    bad_table = tmp_path / "no_table.parquet"
    bad_table.write_bytes(b"not parquet")
    missing = tmp_path / "missing.h5ad"
    with pytest.raises(InputError, match="not a readable parquet"):
        start_weighted(missing, bad_table)
    with pytest.raises(InputError, match=r"missing\.h5ad"):
        start_weighted(missing, files["table"])
    with start_weighted(files["h5ad"], files["table"]) as job:
        assert job.match is not None and job.match.coverage.n_embedded == N_GENES - 5
