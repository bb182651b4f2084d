"""Results into the user's own AnnData (:mod:`genept_fast._into`, ``encode --into``).

Real stores as anndata writes them (zarr v2 and v3, consolidated), real PBMCs; every file of a
store is hashed before and after, so "nothing else changed" is checked byte for byte.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from genept_fast._into import check_into, read_obs_names, write_into
from genept_fast.cli import main
from genept_fast.errors import InputError
from genept_fast.table import GeneEmbeddings

if TYPE_CHECKING:
    from pathlib import Path

N_CELLS = 60
DIM = 8
#: The file that holds a store's consolidated metadata, per zarr format.
CONSOLIDATED = {2: ".zmetadata", 3: "zarr.json"}


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    return sc.datasets.pbmc68k_reduced()[:N_CELLS].copy()


def write_store(adata: ad.AnnData, path: Path, zarr_format: int) -> Path:
    before = ad.settings.zarr_write_format
    ad.settings.zarr_write_format = zarr_format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            adata.write_zarr(path)
    finally:
        ad.settings.zarr_write_format = before
    return path


def hashes(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def beside(path: Path) -> list[str]:
    """What else lies in the store's folder (temporary work left behind would show here)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def embedding(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N_CELLS, DIM)).astype(np.float32)


UNS = {"params": {"method": "GenePT-w", "dimension": DIM, "layer": None}, "note": "x"}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_store_gains_the_keys_and_nothing_else_changes(
    cells: ad.AnnData, tmp_path: Path, zarr_format: int
) -> None:
    inp = tmp_path / "in.h5ad"
    cells.write_h5ad(inp)
    store = write_store(cells, tmp_path / "pbmc.zarr", zarr_format)
    before = hashes(store)
    emb = embedding()

    plan = check_into(store, input=inp, key="X_genept_w")
    assert plan.mode == "zarr-in-place"
    write_into(plan, emb, UNS)

    after = hashes(store)
    new = {k for k in after if k.startswith(("obsm/X_genept_w/", "uns/X_genept_w/"))}
    assert new  # the keys are there, as files of the store
    assert set(after) - new == set(before)
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == [CONSOLIDATED[zarr_format]]  # only the consolidated metadata
    assert beside(store) == ["in.h5ad"]

    back = ad.read_zarr(store)  # reads through the consolidated metadata
    np.testing.assert_array_equal(back.obsm["X_genept_w"], emb)
    assert back.uns["X_genept_w"]["params"]["method"] == "GenePT-w"
    assert back.uns["X_genept_w"]["note"] == "x"
    np.testing.assert_array_equal(back.obsm["X_pca"], cells.obsm["X_pca"])
    np.testing.assert_array_equal(back.raw.X.toarray(), cells.raw.X.toarray())


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_existing_key_is_refused_then_replaced_with_overwrite(
    cells: ad.AnnData, tmp_path: Path, zarr_format: int
) -> None:
    store = write_store(cells, tmp_path / "pbmc.zarr", zarr_format)
    write_into(check_into(store, input=store, key="X_e"), embedding(1), UNS)
    before = hashes(store)
    with pytest.raises(InputError, match=r"already has obsm/X_e and uns/X_e; use --overwrite"):
        check_into(store, input=store, key="X_e")
    assert hashes(store) == before

    write_into(check_into(store, input=store, key="X_e", overwrite=True), embedding(2), UNS)
    np.testing.assert_array_equal(ad.read_zarr(store).obsm["X_e"], embedding(2))
    assert beside(store) == []


def test_a_failed_write_leaves_no_key_and_no_work_behind(cells: ad.AnnData, tmp_path: Path) -> None:
    store = write_store(cells, tmp_path / "pbmc.zarr", 2)
    before = hashes(store)
    plan = check_into(store, input=store, key="X_bad")
    with pytest.raises(Exception, match="object"):  # anndata cannot write an arbitrary object
        write_into(plan, embedding(), {"params": {"what": object()}})
    assert hashes(store) == before
    assert beside(store) == []
    assert "X_bad" not in ad.read_zarr(store).obsm


def test_a_store_of_other_cells_is_refused(cells: ad.AnnData, tmp_path: Path) -> None:
    inp = tmp_path / "in.h5ad"
    cells.write_h5ad(inp)
    shuffled = write_store(cells[::-1].copy(), tmp_path / "rev.zarr", 2)
    with pytest.raises(InputError, match="other cells than the input"):
        check_into(shuffled, input=inp, key="X_genept_w")
    fewer = write_store(cells[:10].copy(), tmp_path / "few.zarr", 2)
    with pytest.raises(InputError, match=r"10 vs 60 cells"):
        check_into(fewer, input=inp, key="X_genept_w")


def test_an_embedding_of_the_wrong_length_is_refused(cells: ad.AnnData, tmp_path: Path) -> None:
    store = write_store(cells, tmp_path / "pbmc.zarr", 2)
    plan = check_into(store, input=store, key="X_e")
    with pytest.raises(InputError, match="the input has 60 cells"):
        write_into(plan, embedding()[:5], UNS)


@pytest.mark.parametrize("name", ["new.h5ad", "new.zarr"])
@pytest.mark.parametrize("source", ["h5ad", "zarr"])
def test_a_new_store_is_the_input_plus_the_keys(
    cells: ad.AnnData, tmp_path: Path, name: str, source: str
) -> None:
    inp = tmp_path / f"in.{source}"
    if source == "h5ad":
        cells.write_h5ad(inp)
    else:
        write_store(cells, inp, 3)
    out = tmp_path / name
    plan = check_into(out, input=inp, key="X_genept_s")
    assert plan.mode == "new"
    write_into(plan, embedding(), UNS)
    back = ad.read_zarr(out) if name.endswith(".zarr") else ad.read_h5ad(out)
    np.testing.assert_array_equal(back.obsm["X_genept_s"], embedding())
    np.testing.assert_array_equal(back.obsm["X_pca"], cells.obsm["X_pca"])
    np.testing.assert_array_equal(back.X, cells.X)
    assert list(back.obs_names) == list(cells.obs_names)
    assert back.uns["X_genept_s"]["params"]["dimension"] == DIM
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([inp.name, name])


def test_an_existing_h5ad_is_replaced_only_with_overwrite_and_never_the_input(
    cells: ad.AnnData, tmp_path: Path
) -> None:
    inp = tmp_path / "in.h5ad"
    cells.write_h5ad(inp)
    out = tmp_path / "both.h5ad"
    write_into(check_into(out, input=inp, key="X_genept_w"), embedding(1), UNS)
    with pytest.raises(InputError, match="already exists; use --overwrite"):
        check_into(out, input=inp, key="X_genept_s")
    for overwrite in (False, True):
        with pytest.raises(InputError, match=r"is the input; a \.h5ad file is never rewritten"):
            check_into(inp, input=inp, key="X_genept_s", overwrite=overwrite)
    plan = check_into(out, input=inp, key="X_genept_s", overwrite=True)
    assert plan.mode == "h5ad-replace"
    write_into(plan, embedding(2), UNS)
    back = ad.read_h5ad(out)
    np.testing.assert_array_equal(back.obsm["X_genept_w"], embedding(1))  # kept
    np.testing.assert_array_equal(back.obsm["X_genept_s"], embedding(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both.h5ad", "in.h5ad"]


def test_what_is_not_an_anndata_store_is_refused(cells: ad.AnnData, tmp_path: Path) -> None:
    inp = tmp_path / "in.h5ad"
    cells.write_h5ad(inp)
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="not a zarr store"):
        check_into(tmp_path / "folder", input=inp, key="X")
    with pytest.raises(InputError, match=r"takes an AnnData \.zarr store or a \.h5ad file"):
        check_into(tmp_path / "out.parquet", input=inp, key="X")
    with pytest.raises(InputError, match="not a plain name"):
        check_into(tmp_path / "out.h5ad", input=inp, key="../X")
    (tmp_path / "junk.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="cells can be read"):
        check_into(tmp_path / "junk.h5ad", input=inp, key="X", overwrite=True)
    assert list(read_obs_names(inp)) == list(cells.obs_names)


# -- from the command line ---------------------------------------------------------------------


@pytest.fixture
def genes_parquet(cells: ad.AnnData, tmp_path: Path) -> Path:
    genes = list(cells.raw.var_names)[:700]
    table = GeneEmbeddings(genes, np.random.default_rng(3).standard_normal((700, DIM)), {})
    return table.write(tmp_path / "genes.parquet")


def test_encode_into_a_zarr_store_from_the_command_line(
    cells: ad.AnnData, tmp_path: Path, genes_parquet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = write_store(cells, tmp_path / "pbmc.zarr", 2)
    before = hashes(store)
    args = ["encode", str(store), "--genes", str(genes_parquet), "--into", str(store)]
    assert main(args) == 0
    assert "into" in capsys.readouterr().err
    back = ad.read_zarr(store)
    assert back.obsm["X_genept_w"].shape == (N_CELLS, DIM)
    assert back.uns["X_genept_w"]["params"]["method"] == "GenePT-w"
    after = hashes(store)
    assert [k for k in before if before[k] != after[k]] == [".zmetadata"]
    assert beside(store) == ["genes.parquet"]  # the work file is gone

    assert main(args) == 2  # the key exists now
    assert "already has obsm/X_genept_w" in capsys.readouterr().err
    assert main([*args, "--key-added", "X_w2"]) == 0
    assert main([*args, "--key", "X_w3"]) == 0  # the old spelling
    assert {"X_w2", "X_w3"} <= set(ad.read_zarr(store).obsm)
    rc = main(["encode", str(store), "--genes", str(genes_parquet), "--into", "x.zarr", "-o", "y"])
    assert rc == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_encode_s_into_the_same_store_with_the_embedder_options(
    cells: ad.AnnData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from servers.openai_api import OpenAIEmbeddingServer

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    store = write_store(cells, tmp_path / "pbmc.zarr", 3)
    cache = tmp_path / "my-cache"
    with OpenAIEmbeddingServer(api_key="test") as srv:
        args = [
            "encode",
            str(store),
            "--method",
            "s",
            "--into",
            str(store),
            "--embedder",
            "openai:text-embedding-3-small",
            "--base-url",
            srv.url,
            "--dimensions",
            str(DIM),
            "--cache-dir",
            str(cache),
            "--max-retries",
            "0",
            "--timeout",
            "5",
            "--max-concurrency",
            "1",
            "--batch-size",
            "16",
            "--top-n",
            "10",
            "--no-progress",
        ]
        assert main(args) == 0
        n_requests = len(srv.requests)
        assert n_requests >= -(-N_CELLS // 16)  # --batch-size reached the client
        assert all(len(r.inputs) <= 16 for r in srv.requests)
        assert srv.max_inflight == 1  # --max-concurrency
    assert any(cache.rglob("*"))  # --cache-dir reached the embedder
    back = ad.read_zarr(store)
    assert back.obsm["X_genept_s"].shape == (N_CELLS, DIM)
    assert back.uns["X_genept_s"]["params"]["method"] == "GenePT-s"
    assert beside(store) == ["my-cache"]


def test_w_s_and_pca_compared_and_ensembled_from_one_store(
    cells: ad.AnnData,
    tmp_path: Path,
    genes_parquet: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The paper's comparison from the command line: GenePT-w and GenePT-s encoded into the
    user's store, then scored beside its PCA, and the three together (--ensemble)."""
    import json

    from servers.openai_api import OpenAIEmbeddingServer

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    inp = tmp_path / "pbmc.h5ad"
    cells.write_h5ad(inp)
    store = tmp_path / "pbmc.zarr"  # does not exist: the first encode makes it
    w = ["encode", str(inp), "--method", "w", "--genes", str(genes_parquet), "--into", str(store)]
    assert main(w) == 0
    with OpenAIEmbeddingServer(api_key="test") as srv:
        s = ["encode", str(store), "--method", "s", "--into", str(store), "--top-n", "20"]
        s += ["--embedder", "openai:text-embedding-3-small", "--base-url", srv.url]
        assert main([*s, "--dimensions", str(DIM)]) == 0
    report = tmp_path / "report"
    keys = ["X_genept_w", "X_genept_s", "X_pca"]
    ev = ["evaluate", str(store), "--label", "bulk_labels", "--obsm", *keys, "--ensemble"]
    capsys.readouterr()
    assert main([*ev, "--no-plots", "--no-leiden", "-o", str(report)]) == 0
    out = capsys.readouterr().out
    results = json.loads((report / "report.json").read_text())["results"]
    ensemble = "X_genept_w+X_genept_s+X_pca"
    assert list(results) == [*keys, ensemble]
    assert ensemble in out
    assert results[ensemble]["dim"] == DIM + DIM + cells.obsm["X_pca"].shape[1]
    assert results["X_pca"]["dim"] == cells.obsm["X_pca"].shape[1]

    # the ensemble is the L2-normalised concatenation: the same scores as scoring it by hand
    from genept_fast.annotate._io import combine
    from genept_fast.eval import evaluate

    back = ad.read_zarr(store)
    assert back.n_obs == N_CELLS
    back.obsm["both"] = combine([np.asarray(back.obsm[k], np.float32) for k in keys], keys)
    by_hand = evaluate(
        back, label_key="bulk_labels", obsm_keys=["both"], leiden=False, plots=False
    ).results["both"]
    assert by_hand == pytest.approx(results[ensemble])


def test_hostile_stores_are_refused_before_any_work(
    cells: ad.AnnData, tmp_path: Path, genes_parquet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = tmp_path / "in.h5ad"
    cells.write_h5ad(inp)
    link = tmp_path / "link.h5ad"
    link.symlink_to(inp)
    store = write_store(cells, tmp_path / "pbmc.zarr", 2)
    before = hashes(store)
    base = ["encode", str(inp), "--genes", str(genes_parquet), "--overwrite", "--into"]
    cases = {
        str(link): "is the input; a .h5ad file is never rewritten",  # a link to the input
        str(inp): "is the input",
        str(store / "obsm"): "not an AnnData file or store",  # a group inside a store
        str(genes_parquet): "takes an AnnData .zarr store or a .h5ad file",
    }
    for target, expected in cases.items():
        assert main([*base, target]) == 2, target
        err = capsys.readouterr().err
        assert expected in err, err
        assert "Traceback" not in err
    assert hashes(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.h5ad", "link.h5ad", "pbmc.zarr", "genes.parquet"]
    )


def test_a_failed_into_job_leaves_the_store_alone_and_resumes(
    cells: ad.AnnData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from servers.openai_api import OpenAIEmbeddingServer

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    store = write_store(cells, tmp_path / "pbmc.zarr", 2)
    before = hashes(store)
    args = ["encode", str(store), "--method", "s", "--into", str(store), "--chunk-size", "20"]
    args += ["--top-n", "10", "--embedder", "openai:text-embedding-3-small"]
    with OpenAIEmbeddingServer(api_key="test") as srv:
        args += ["--base-url", srv.url, "--dimensions", str(DIM), "--batch-size", "20"]
        srv.add_fault("delay", times=1, delay=0.0)  # the first chunk passes
        srv.add_fault("error", times=1, status=400, message="injected failure")
        assert main(args) == 3
        assert "injected failure" in capsys.readouterr().err
        assert hashes(store) == before  # no half key, nothing else touched
        assert [p for p in beside(store) if p.endswith(".partial")]  # the done chunk is kept

        assert main(args) == 0
        assert "1 of 3 chunks resumed" in capsys.readouterr().err
    assert ad.read_zarr(store).obsm["X_genept_s"].shape == (N_CELLS, DIM)
    assert beside(store) == ["cache"]
