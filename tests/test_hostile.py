"""Hostile input: every command against each class of bad input, and the output rule (issue #9).

For each case: exit code 2, exactly one line on stderr naming the problem, no traceback, and no
file changed anywhere in the work folder (its tree is hashed before and after). The files are
built here, small. The CLI runs in-process (nothing in these paths can abort the interpreter:
the kernels' own hostile arguments are in tests/test_hostile_kernels.py, in a subprocess).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import polars as pl
import pytest
import scipy.sparse as sp

from genept_fast import GeneptError, stream
from genept_fast._outputs import check_output, install, is_own_store
from genept_fast.cli import main
from genept_fast.table import GeneEmbeddings

N_CELLS, N_GENES, DIM = 60, 12, 8
GENES = [f"GENE{j}" for j in range(N_GENES)]


# -- files ---------------------------------------------------------------------------------------


def _adata(n_cells: int = N_CELLS, *, nan_at: int | None = None) -> ad.AnnData:
    rng = np.random.default_rng(0)
    X = sp.random_array((n_cells, N_GENES), density=0.5, format="csr", dtype=np.float32, rng=rng)
    X.data = np.ceil(X.data * 5)
    if nan_at is not None:
        X = X.tolil()
        X[nan_at, 3] = np.nan
        X = sp.csr_array(X)
    obs = pd.DataFrame(
        {"ct": pd.Categorical(np.array(["T", "B", "NK"])[np.arange(n_cells) % 3])},
        index=[f"c{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES))


def _tenx_h5(path: Path) -> None:
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array([b"AAAC-1", b"AAAG-1"])
        m["data"] = np.array([1, 2], dtype=np.int32)
        m["indices"] = np.array([0, 1], dtype=np.int64)
        m["indptr"] = np.array([0, 1, 2], dtype=np.int64)
        m["shape"] = np.array([3, 2], dtype=np.int32)
        feats = m.create_group("features")
        feats["name"] = np.array([b"CD3E", b"CD74", b"MS4A1"])
        feats["id"] = np.array([b"ENSG1", b"ENSG2", b"ENSG3"])


def _loom(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["matrix"] = np.zeros((3, 2), dtype=np.float32)
        f.create_group("row_attrs")["Gene"] = np.array([b"CD3E", b"CD74", b"MS4A1"])
        f.create_group("col_attrs")["CellID"] = np.array([b"a", b"b"])


MTX = "%%MatrixMarket matrix coordinate real general\n3 2 2\n1 1 1.0\n2 2 3.0\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good inputs and one file per class of bad input, in one read-only-by-convention folder."""
    d = tmp_path_factory.mktemp("hostile")
    f: dict[str, Path] = {}
    f["h5ad"] = d / "good.h5ad"
    _adata().write_h5ad(f["h5ad"])
    f["zarr"] = d / "good.zarr"
    _adata().write_zarr(f["zarr"])
    f["nan"] = d / "nan.h5ad"
    _adata(nan_at=45).write_h5ad(f["nan"])
    f["empty_cells"] = d / "nocells.h5ad"
    _adata()[:0].copy().write_h5ad(f["empty_cells"])
    f["genes"] = d / "genes.parquet"
    rng = np.random.default_rng(1)
    GeneEmbeddings(GENES, rng.standard_normal((N_GENES, DIM)), {"model_id": "test:m"}).write(
        f["genes"]
    )
    f["texts"] = d / "texts.parquet"
    pl.DataFrame({"gene": GENES, "text": GENES, "source": ["symbol"] * N_GENES}).write_parquet(
        f["texts"]
    )
    f["labels"] = d / "labels.csv"
    f["labels"].write_text("gene,class\n" + "".join(f"{g},{j % 2}\n" for j, g in enumerate(GENES)))
    f["gene_list"] = d / "genes.txt"
    f["gene_list"].write_text("\n".join(GENES) + "\n")
    # bad inputs
    f["empty"] = d / "empty.h5ad"
    f["empty"].write_bytes(b"")
    f["truncated"] = d / "truncated.h5ad"
    f["truncated"].write_bytes(f["h5ad"].read_bytes()[:3000])
    f["tenx"] = d / "filtered.h5"
    _tenx_h5(f["tenx"])
    f["loom"] = d / "cells.loom"
    _loom(f["loom"])
    f["mtx"] = d / "matrix.mtx"
    f["mtx"].write_text(MTX)
    f["tenx_dir"] = d / "filtered_feature_bc_matrix"
    f["tenx_dir"].mkdir()
    (f["tenx_dir"] / "matrix.mtx").write_text(MTX)
    (f["tenx_dir"] / "features.tsv").write_text("E1\tCD3E\nE2\tCD74\nE3\tMS4A1\n")
    (f["tenx_dir"] / "barcodes.tsv").write_text("a\nb\n")
    f["folder"] = d / "folder"
    f["folder"].mkdir()
    (f["folder"] / "notes.txt").write_text("mine\n")
    f["text_h5ad"] = d / "notes.h5ad"
    f["text_h5ad"].write_text("GENE1\nGENE2\n")
    f["binary"] = d / "junk.bin"
    f["binary"].write_bytes(bytes(range(256)) * 8)
    f["missing"] = d / "missing.h5ad"
    return f


def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a hash of its content and mode (directories: "dir")."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = f"dir {stat.S_IMODE(os.stat(p).st_mode):o}"
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(p, root)] = f"{digest} {stat.S_IMODE(os.stat(p).st_mode):o}"
    return out


def refused(argv: list[str], root: Path, capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """Run the CLI; assert exit 2, one stderr line naming the problem, nothing changed.

    "Nothing changed" covers ``root`` (where the inputs are) and the current folder (where the
    outputs would go).
    """
    roots = [root, Path.cwd()]
    before = [_tree(r) for r in roots]
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"genept-fast {argv[0]}: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], err
    assert [_tree(r) for r in roots] == before, "files changed"
    return lines[0]


@pytest.fixture
def work(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder holding a copy-free view of the inputs (symlinks) and room for outputs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / ".." / f"{tmp_path.name}-cache"))
    return tmp_path


# -- every command against each class of bad input ---------------------------------------------

BAD_ANNDATA = {
    "empty": "an empty file",
    "truncated": "truncated or corrupt",
    "tenx": "sc.read_10x_h5(",
    "loom": "ad.io.read_loom(",
    "mtx": "Matrix Market",
    "tenx_dir": "sc.read_10x_mtx(",
    "folder": "a folder",
    "text_h5ad": "a text file",
    "binary": "binary",
    "genes": "a parquet file",
}


def _commands(f: dict[str, Path], bad: Path) -> dict[str, list[str]]:
    """Each command with ``bad`` in the place of its data input."""
    return {
        "encode": ["encode", str(bad), "--genes", str(f["genes"]), "-o", "out.npy"],
        "evaluate": ["evaluate", str(bad), "--label", "ct", "-o", "report"],
        "evaluate-ref": [
            "evaluate",
            str(f["h5ad"]),
            "--reference",
            str(bad),
            "--label",
            "ct",
            "-o",
            "report",
        ],
        "annotate": ["annotate", str(bad), "--reference", str(f["h5ad"]), "-o", "out.parquet"],
        "annotate-ref": ["annotate", str(f["h5ad"]), "--reference", str(bad), "-o", "out.parquet"],
        "build-reference": ["build-reference", str(bad), "--label", "ct", "-o", "ref.index"],
    }


@pytest.mark.parametrize(
    "command",
    ["encode", "evaluate", "evaluate-ref", "annotate", "annotate-ref", "build-reference"],
)
@pytest.mark.parametrize("kind", sorted(BAD_ANNDATA))
def test_anndata_commands_refuse_what_is_not_anndata(
    files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    line = refused(
        _commands(files, files[kind])[command], files[kind].parent, capsys, BAD_ANNDATA[kind]
    )
    assert str(files[kind]) in line  # names the file
    assert not any(work.iterdir())  # no output, no partial state


BAD_GENE_LIST = {
    **BAD_ANNDATA,
    "text_h5ad": "named like an AnnData .h5ad file but is a text file",
    "genes": "a parquet file, not a gene list",
}


@pytest.mark.parametrize("kind", sorted(BAD_GENE_LIST))
def test_gene_text_refuses_what_is_not_a_gene_list(
    files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    argv = ["gene-text", str(files[kind]), "--source", "symbol", "-q", "-o", "t.parquet"]
    line = refused(argv, files[kind].parent, capsys, BAD_GENE_LIST[kind])
    assert str(files[kind]) in line
    assert not (work / "t.parquet").exists()


def test_gene_text_lines_must_be_genes(
    work: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    listing = work / "list.txt"
    listing.write_text("CD3E\nCD74\nthis is a sentence, not a gene\n")
    refused(
        ["gene-text", str(listing), "--source", "symbol", "-o", "t.parquet"],
        work,
        capsys,
        "list.txt, line 3",
        "not a gene identifier",
    )
    refused(
        ["gene-text", "TP53,two words", "--source", "symbol", "-o", "t.parquet"],
        work,
        capsys,
        "'two words' is not a gene identifier",
    )
    # a header line and gzip are fine
    gz = work / "features.tsv.gz"
    import gzip

    with gzip.open(gz, "wt") as fh:
        fh.write("gene_id\tsymbol\nENSG00000141510\tTP53\n")
    assert main(["gene-text", str(gz), "--source", "symbol", "-q", "-o", "t.parquet"]) == 0
    assert pl.read_parquet(work / "t.parquet")["gene"].to_list() == ["ENSG00000141510"]


#: What each bad input is called when a table (parquet, CSV, pickle) was expected.
TABLE_WHAT = {
    "empty": "an empty file",
    "truncated": "truncated or corrupt",
    "tenx": "10x Genomics HDF5",
    "loom": "a .loom file",
    "mtx": "Matrix Market",
    "tenx_dir": "10x Genomics matrix folder",
    "folder": "a folder",
    "text_h5ad": "text file",
    "binary": "binary",
    "h5ad": "AnnData .h5ad",
}


@pytest.mark.parametrize("kind", sorted(TABLE_WHAT))
def test_table_inputs_are_checked(
    files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    bad, what = str(files[kind]), TABLE_WHAT[kind]
    root = files[kind].parent
    f = files
    refused(["embed-genes", bad, "-o", "g.parquet"], root, capsys, bad, what)
    refused(["encode", str(f["h5ad"]), "--genes", bad, "-o", "o.npy"], root, capsys, bad, what)
    refused(
        ["evaluate-genes", bad, "--labels", str(f["labels"]), "-o", "r"], root, capsys, bad, what
    )
    refused(
        ["evaluate-genes", str(f["genes"]), "--labels", bad, "-o", "r"], root, capsys, bad, what
    )
    argv = ["gene-text", "GENE1", "--source", "file", "--file", bad, "-o", "t.parquet"]
    refused(argv, root, capsys, "--file", what)


def test_no_progress_bar_frames_in_logs(
    files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["embed-genes", str(files["texts"]), "-o", "g.parquet"]) == 0
    err = capsys.readouterr().err  # not a terminal
    assert "\r" not in err and "it/s" not in err, err
    assert err.strip().splitlines()[-1].startswith("wrote g.parquet")


def test_missing_inputs(files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]):
    gone = str(files["missing"])
    root = files["missing"].parent
    refused(["encode", gone, "--genes", str(files["genes"]), "-o", "o.npy"], root, capsys, gone)
    refused(["evaluate", gone, "--label", "ct", "-o", "r"], root, capsys, gone)
    refused(["gene-text", gone, "--source", "symbol", "-o", "t.parquet"], root, capsys, gone)
    refused(["embed-genes", gone, "-o", "g.parquet"], root, capsys, gone)
    refused(["evaluate-genes", gone, "--labels", str(files["labels"]), "-o", "r"], root, capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "s", "--top-n", "99999999999999999999"], "--top-n"),
        (["--key", "../../x"], "not a plain name"),
        (["--key", "a/b"], "not a plain name"),
        (["--threads", "0"], "--threads"),
        (["--chunk-size", "-5"], "--chunk-size"),
        (["--dimensions", "1e9"], "--dimensions"),
    ],
)
def test_hostile_encode_arguments(
    files: dict[str, Path],
    work: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    genes = [] if "--method" in extra else ["--genes", str(files["genes"])]
    refused(["encode", str(files["h5ad"]), *genes, *extra, "-o", "x.zarr"], work, capsys, message)


def test_nan_found_mid_job_names_the_global_cell_and_leaves_nothing(
    files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for out in ("n.npy", "n.zarr", "n.h5ad", "n.parquet"):
        argv = ["encode", str(files["nan"]), "--genes", str(files["genes"]), "-o", out]
        before = _tree(work)
        assert main([*argv, "--chunk-size", "20", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if "error" in line]
        # cell 45 of the file (the third chunk starts at 40); the file is named by a note, the
        # kernel's message is never rewritten
        assert errors == [
            f"genept-fast encode: error: X contains NaN at cell 45, gene 3;"
            f" while encoding {files['nan']}"
        ]
        assert "Traceback" not in "\n".join(err)
        assert _tree(work) == before  # the partial state is gone too


def test_zero_cells(files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]):
    for out in ("z.h5ad", "z.npy", "z.zarr", "z.parquet"):
        argv = ["encode", str(files["empty_cells"]), "--genes", str(files["genes"]), "-o", out]
        assert main(argv) == 0, capsys.readouterr().err
    assert ad.read_h5ad(work / "z.h5ad").obsm["X_genept_w"].shape == (0, DIM)
    assert np.load(work / "z.npy").shape == (0, DIM)
    refused(
        ["evaluate", str(files["empty_cells"]), "--label", "ct", "-o", "r"],
        work,
        capsys,
        "no cells",
    )


# -- the output rule ------------------------------------------------------------------------------


def _every_command(f: dict[str, Path], out: str) -> list[list[str]]:
    return [
        ["gene-text", str(f["gene_list"]), "--source", "symbol", "-q", "-o", out],
        ["embed-genes", str(f["texts"]), "-o", out],
        ["encode", str(f["h5ad"]), "--genes", str(f["genes"]), "-o", out],
        # refused before any download: the URL is never contacted
        ["fetch-genept", "--url", "http://127.0.0.1:9/GenePT.zip", "-q", "-o", out],
        ["annotate", str(f["h5ad"]), "--reference", str(f["h5ad"]), "--label", "ct", "-o", out],
        ["build-reference", str(f["h5ad"]), "--label", "ct", "-o", out],
    ]


def test_an_existing_output_is_refused_without_overwrite(
    files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = work / "keep.parquet"
    existing.write_bytes(b"precious")
    for argv in _every_command(files, str(existing)):
        refused(argv, work, capsys, "keep.parquet already exists", "--overwrite")
    report = work / "rep"
    report.mkdir()
    (report / "report.md").write_text("precious")
    refused(
        ["evaluate", str(files["h5ad"]), "--label", "ct", "-o", str(report)],
        work,
        capsys,
        "report.md already exists",
    )
    refused(
        ["evaluate-genes", str(files["genes"]), "--labels", str(files["labels"]), "-o", "rep"],
        work,
        capsys,
        "report.md already exists",
    )
    refused(["demo", "-o", str(report)], work, capsys, "already exists")
    refused(["demo", "-o", str(existing)], work, capsys, "is not a folder")


def test_a_foreign_directory_is_never_removed(
    files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("out.npy", "r.h5ad", "t.parquet"):
        d = work / name
        d.mkdir()
        (d / "thesis.tex").write_text("years of work")
        for argv in _every_command(files, name):
            refused([*argv, "--overwrite"], work, capsys, "is a directory")
    # an AnnData .zarr store (not ours) at a .zarr output: refused even with --overwrite
    store = work / "atlas.zarr"
    _adata().write_zarr(store)
    argv = ["encode", str(files["h5ad"]), "--genes", str(files["genes"]), "-o", str(store)]
    refused(argv, work, capsys, "already exists")
    refused([*argv, "--overwrite"], work, capsys, "did not write")
    # a folder at <output>.partial that is not ours
    (work / "x.npy.partial").mkdir()
    (work / "x.npy.partial" / "data.txt").write_text("mine")
    argv = ["encode", str(files["h5ad"]), "--genes", str(files["genes"]), "-o", "x.npy"]
    refused(argv, work, capsys, "x.npy.partial", "not genept-fast work state")


def test_our_own_store_is_replaced_with_overwrite(
    files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["encode", str(files["h5ad"]), "--genes", str(files["genes"]), "-o", "w.zarr"]
    assert main(argv) == 0
    assert is_own_store(work / "w.zarr")
    refused(argv, work, capsys, "already exists")
    assert main([*argv, "--overwrite", "--key", "X_other"]) == 0
    import zarr

    g: Any = zarr.open_group(str(work / "w.zarr"), mode="r")
    assert "X_other" in g and "X_genept_w" not in g


def test_an_input_is_never_an_output(
    files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = work / "texts.parquet"
    texts.write_bytes(files["texts"].read_bytes())
    genes = work / "genes.parquet"
    genes.write_bytes(files["genes"].read_bytes())
    store = work / "in.zarr"
    _adata().write_zarr(store)
    h5ad = work / "in.h5ad"
    h5ad.write_bytes(files["h5ad"].read_bytes())
    os.link(genes, work / "hardlink.parquet")
    cases = [
        (["embed-genes", str(texts), "-o", str(texts), "--overwrite"], "is the input"),
        (["gene-text", "GENE1", "--source", "file", "--file", str(texts), "-o", str(texts)], ""),
        (["encode", str(h5ad), "--genes", str(genes), "-o", str(genes), "--overwrite"], ""),
        (["encode", str(h5ad), "--genes", str(genes), "-o", str(h5ad), "--overwrite"], ""),
        (["encode", str(store), "--genes", str(genes), "-o", str(store / "x.npy")], "inside"),
        (
            ["encode", str(h5ad), "--genes", "hardlink.parquet", "-o", str(genes), "--overwrite"],
            "is the input",
        ),
        (
            ["evaluate-genes", str(genes), "--labels", "report.json", "-o", ".", "--overwrite"],
            "is the input",
        ),
    ]
    (work / "report.json").write_bytes(files["labels"].read_bytes())  # labels, oddly named
    for argv, message in cases:
        refused(argv, work, capsys, message)
    rule_input_inside_store = work / "store.zarr"
    rule_input_inside_store.mkdir()
    with pytest.raises(GeneptError, match="inside the output"):
        check_output(rule_input_inside_store, kind="store", inputs=[rule_input_inside_store / "a"])


def test_files_honour_the_umask(files: dict[str, Path], work: Path) -> None:
    old = os.umask(0o027)
    try:
        assert (
            main(
                [
                    "gene-text",
                    str(files["gene_list"]),
                    "--source",
                    "symbol",
                    "-q",
                    "-o",
                    "t.parquet",
                ]
            )
            == 0
        )
        GeneEmbeddings(["A"], np.ones((1, 2))).write(work / "g.parquet")
        argv = ["encode", str(files["h5ad"]), "--genes", str(files["genes"])]
        assert main([*argv, "-o", "e.h5ad"]) == 0
        assert main([*argv, "-o", "e.zarr"]) == 0
    finally:
        os.umask(old)
    for name in ("t.parquet", "g.parquet", "e.h5ad", "e.zarr/zarr.json"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o640, name


def test_partial_state_kept_only_when_resumable(files: dict[str, Path], work: Path) -> None:
    enc = stream.WeightedEncoder(np.ones((N_GENES, DIM), dtype=np.float32))
    calls = {"n": 0}

    def flaky(X: Any) -> np.ndarray:  # a service that fails on the third chunk
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("the embedding server went away")
        return enc(X)

    flaky.begin = enc.begin  # type: ignore[attr-defined]  # the same job record as enc's
    kw: dict[str, Any] = {"dim": DIM, "chunk_size": 20, "progress": False}
    kw["fingerprint"] = enc.fingerprint
    out = work / "f.npy"
    with pytest.raises(ConnectionError) as info:
        stream.encode_file(files["h5ad"], out, encoder=flaky, **kw)
    note = " ".join(info.value.__notes__)
    assert "partial work kept in" in note and "2 of 3 chunks done" in note and "resume" in note
    assert (work / "f.npy.partial" / "manifest.json").is_file()
    rep = stream.encode_file(files["h5ad"], out, encoder=enc, **kw)
    assert rep.chunks_resumed == 2 and not (work / "f.npy.partial").exists()
    # nothing finished: nothing kept
    calls["n"] = 2
    with pytest.raises(ConnectionError):
        stream.encode_file(files["h5ad"], work / "g.npy", encoder=flaky, **kw)
    assert not (work / "g.npy.partial").exists()


def test_a_directory_that_appears_during_the_job_is_not_removed(
    files: dict[str, Path], work: Path
) -> None:
    out = work / "late.zarr"
    enc = stream.WeightedEncoder(np.ones((N_GENES, DIM), dtype=np.float32))

    def intruder(X: Any) -> np.ndarray:
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("someone else's")
        return enc(X)

    with pytest.raises(GeneptError, match="did not write") as info:
        stream.encode_file(files["h5ad"], out, encoder=intruder, dim=DIM, progress=False)
    assert (out / "theirs.txt").read_text() == "someone else's"
    assert "partial work kept" in " ".join(info.value.__notes__)
    with pytest.raises(GeneptError, match="did not write"):
        install(work / "late.zarr.partial" / "out.zarr", out)


# -- errors a user sees: one line, global positions, evaluate's labels -------------------------


def test_an_unexpected_bug_prints_one_line_and_a_log(
    files: dict[str, Path],
    work: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def bug(*args: Any, **kwargs: Any) -> None:
        return {}["no such key"]  # type: ignore[return-value]

    monkeypatch.setattr(stream, "encode_weighted", bug)
    monkeypatch.setenv("TMPDIR", str(work))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    rc = main(["encode", str(files["h5ad"]), "--genes", str(files["genes"]), "-o", "b.npy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len([line for line in err if "internal error" in line]) == 1
    assert "Traceback" not in "\n".join(err)
    line = err[-1]
    assert "KeyError" in line and "please report it" in line
    log = Path(line.rsplit("the traceback is in ", 1)[1]).read_text()
    assert "Traceback" in log and "no such key" in log


def test_tl_and_dask_errors_give_global_cell_positions() -> None:
    from genept_fast import tl

    adata = _adata(nan_at=45)
    table = GeneEmbeddings(GENES, np.ones((N_GENES, DIM)), {"model_id": "test:m"})
    with pytest.raises(GeneptError, match="NaN at cell 45, gene 3"):
        tl.genept_w(adata, table, chunk_size=20, preprocess="none")
    dask_array = pytest.importorskip("dask.array")
    from genept_fast import dask as gfd

    x = dask_array.from_array(sp.csr_matrix(adata.X), chunks=(20, N_GENES), asarray=False)
    with pytest.raises(GeneptError, match="NaN at cell 45, gene 3"):
        gfd.weighted_embedding(x, np.ones((N_GENES, DIM), dtype=np.float32)).compute(
            scheduler="sync"
        )


def test_evaluate_reports_missing_labels_and_zero_embeddings() -> None:
    from genept_fast.eval import evaluate

    adata = _adata(90)
    labels = np.array(["T", "B", "NK"] * 30, dtype=object)
    labels[:6] = ["nan", "NaN", "", "None", " ", "nan"]
    adata.obs["ct"] = labels
    rng = np.random.default_rng(3)
    good = rng.standard_normal((90, 5))
    good[10:13] = 0
    adata.obsm["X_good"] = good
    adata.obsm["X_zero"] = np.zeros((90, 5))
    rep = evaluate(adata, label_key="ct", obsm_keys=["X_good", "X_zero"], leiden=False, plots=False)
    assert rep.cells["n_missing_label"] == 6 and rep.cells["n_evaluated"] == 84
    assert set(rep.cells["label_counts"]) == {"T", "B", "NK"}
    notes = " ".join(rep.notes)
    assert "count as having no label" in notes
    assert "obsm['X_zero'] is all zeros" in notes and "not scored" in notes
    assert "obsm['X_good']: 3 of 84 evaluated cells have an all-zero embedding" in notes
    assert "kmeans_ami" in rep.results["X_good"] and "kmeans_ami" not in rep.results["X_zero"]
    assert "| k-means AMI (label) |" in rep.to_markdown()


def test_help_texts_are_plain(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from genept_fast.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"gene-text", "encode", "fetch-genept"} <= set(sub.choices)
    for command in sub.choices:
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        for markup in ("``", ":mod:", ":func:", ":class:"):
            assert markup not in text, (command, markup)
        assert "--overwrite" in text
