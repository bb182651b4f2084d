"""Every fenced code block of README.md and docs/*.md runs as written.

The convention (shared by every page, including ones added later):

- ```python blocks run in order, per file, in one namespace;
- ```console blocks run their ``$ `` lines, ```bash (or ```sh) blocks run whole, as shell
  scripts with ``set -e``, the virtual environment's ``bin`` first on ``PATH``;
- ```text blocks (output listings, diagrams) are not run; any other fence is an error here, so a
  block is never left out by accident;
- ``<!-- docs-test: skip (needs network) -->`` or ``<!-- docs-test: skip (needs API key) -->``
  on the line before a block is the only skip;
- ``<!-- docs-test: setup NAME -->`` on a line before a block runs the fixture ``NAME`` below
  first (it writes small files into the page's working folder).

Each page runs in its own temporary folder, offline: a proxy that refuses every connection is
set for the page, so a block that reaches for the network fails at once instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import ROOT, SHARED_DATA

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from anndata import AnnData

    from genept_fast.table import GeneEmbeddings

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_PYTHON = {"python", "py"}
RUN_SHELL = {"bash", "sh", "shell", "console"}
NOT_RUN = {"text"}
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<what>skip|setup)\s+(?P<arg>.*?)\s*-->\s*$")
SKIP_REASONS = {"(needs network)", "(needs API key)"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[^`\s]*)\s*$")
BLOCK_TIMEOUT_S = 600  # a hang, not a slow machine


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None
    setups: list[str] = field(default_factory=list)

    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def _markers(lines: list[str], fence_index: int) -> tuple[str | None, list[str]]:
    """The docs-test comments on the lines right above a fence (blank lines between allowed)."""
    skip, setups = None, []
    i = fence_index - 1
    while i >= 0 and (not lines[i].strip() or MARKER.match(lines[i].strip())):
        m = MARKER.match(lines[i].strip())
        if m and m["what"] == "skip":
            skip = m["arg"]
        elif m:
            setups.insert(0, m["arg"])
        i -= 1
    return skip, setups


def parse_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with their markers."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, close = i, m["fence"]
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != close:
            body.append(lines[i][len(m["indent"]) :])
            i += 1
        if i == len(lines):
            pytest.fail(f"{page}:{start + 1}: a fence that is never closed")
        skip, setups = _markers(lines, start)
        blocks.append(Block(page, start + 1, m["lang"], "\n".join(body) + "\n", skip, setups))
        i += 1
    return blocks


# --- setup fixtures: NAME -> a function that writes what the blocks need into the folder ---

SETUPS: dict[str, Callable[[Path], None]] = {}


def setup(name: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        SETUPS[name] = fn
        return fn

    return register


def _pbmc() -> AnnData:
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


def _small_pbmc() -> AnnData:
    """120 cells (the 5 largest cell types, 24 each) and every 5th gene (153) of scanpy's
    pbmc68k_reduced: X its log-normalised counts (no raw), obs['cell_type'], obsm['X_pca']."""
    import anndata as ad
    import numpy as np

    full = _pbmc()
    labels = full.obs["bulk_labels"]
    cells = np.concatenate(
        [np.flatnonzero(labels == t)[:24] for t in labels.value_counts().index[:5]]
    )
    genes = np.arange(0, full.raw.n_vars, 5)
    small = ad.AnnData(
        X=full.raw.X[cells][:, genes],
        obs=full.obs.iloc[cells][["n_counts"]].copy(),
        var=full.raw.var.iloc[genes].copy(),
    )
    small.obs["cell_type"] = labels.iloc[cells].astype(str).astype("category").to_numpy()
    small.obsm["X_pca"] = full.obsm["X_pca"][cells]
    return small


@setup("pbmc")
def _setup_pbmc(folder: Path) -> None:
    """pbmc.h5ad (:func:`_small_pbmc`) and genes.txt (its genes, one a line)."""
    small = _small_pbmc()
    small.write_h5ad(folder / "pbmc.h5ad")
    (folder / "genes.txt").write_text("\n".join(small.var_names) + "\n", encoding="utf-8")


def _local_table(names: list[str]) -> GeneEmbeddings:
    """The local model's embeddings of ``names`` (HGNC names as text; cached by content)."""
    from genept_fast.embed import get_embedder
    from genept_fast.table import GeneEmbeddings
    from genept_fast.text import gene_texts

    return GeneEmbeddings.from_texts(gene_texts(names, source="hgnc"), get_embedder("local"))


@setup("texts")
def _setup_texts(folder: Path) -> None:
    """genes.txt and texts.parquet: the small PBMCs' genes and their HGNC names (offline)."""
    from genept_fast.text import gene_texts, write_texts

    names = list(_small_pbmc().var_names)
    (folder / "genes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    write_texts(gene_texts(names, source="hgnc"), folder / "texts.parquet")


@setup("pbmc-genes")
def _setup_pbmc_genes(folder: Path) -> None:
    """pbmc.h5ad and genes.txt (as ``pbmc``), genes.parquet (their local-model embeddings)."""
    _setup_pbmc(folder)
    _local_table(list(_small_pbmc().var_names)).write(folder / "genes.parquet")


@setup("pbmc-embedded")
def _setup_pbmc_embedded(folder: Path) -> None:
    """cells.h5ad: the small PBMCs with obsm X_genept_w, X_genept_s (top 32 genes) and X_pca,
    and a made-up batch column obs['patient'] (alternate cells 'A' and 'B')."""
    import genept_fast as gf

    cells = _small_pbmc()
    gf.tl.genept_w(cells, _local_table(list(cells.var_names)))
    gf.tl.genept_s(cells, "local", top_n=32)
    cells.obs["patient"] = ["A", "B"] * (cells.n_obs // 2)
    cells.write_h5ad(folder / "cells.h5ad")


@setup("pbmc-split")
def _setup_pbmc_split(folder: Path) -> None:
    """ref.h5ad, query.h5ad and query.zarr: the cells of ``pbmc-embedded`` split in two
    (alternate cells), each with obs['cell_type'] and the three embeddings."""
    import anndata as ad

    _setup_pbmc_embedded(folder)
    cells = ad.read_h5ad(folder / "cells.h5ad")
    cells[::2].copy().write_h5ad(folder / "ref.h5ad")
    query = cells[1::2].copy()
    query.write_h5ad(folder / "query.h5ad")
    query.write_zarr(folder / "query.zarr")


@setup("atlas")
def _setup_atlas(folder: Path) -> None:
    """atlas.h5ad (the small PBMCs standing for an atlas), genes.parquet (their genes' local
    embeddings), and the same table as a bare matrix: gene_embeddings.npy (genes × 384 float32,
    rows in reverse order) with gene_names.txt (the gene of each row)."""
    import numpy as np

    small = _small_pbmc()
    small.write_h5ad(folder / "atlas.h5ad")
    names = list(small.var_names)[::-1]
    table = _local_table(names)
    table.write(folder / "genes.parquet")
    matrix, _ = table.align(names)
    np.save(folder / "gene_embeddings.npy", matrix)
    (folder / "gene_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")


@setup("dosage-tfs")
def _setup_dosage_tfs(folder: Path) -> None:
    """dosage_tfs.csv: Geneformer's dosage-sensitive vs -insensitive transcription factors
    (GenePT's Table 1), from ../shared/data (the page's test asks for the ``shared_data``
    fixture first: skipped without it on a developer's machine, a failure under CI=true)."""
    source = SHARED_DATA / "geneformer_dosage_sensitive_tfs.csv"
    (folder / "dosage_tfs.csv").write_bytes(source.read_bytes())


@setup("dosage-tfs-table")
def _setup_dosage_tfs_table(folder: Path) -> None:
    """dosage_tfs.csv (as ``dosage-tfs``) and genes.parquet: its 488 distinct genes embedded by
    the local model (HGNC names as text)."""
    import polars as pl

    _setup_dosage_tfs(folder)
    names = pl.read_csv(folder / "dosage_tfs.csv")["gene_name"].unique(maintain_order=True)
    _local_table(names.to_list()).write(folder / "genes.parquet")


#: Setups that read ../shared/data: a page using one asks for the shared_data fixture.
NEEDS_SHARED_DATA = {"dosage-tfs", "dosage-tfs-table"}


# --- running ---


def _offline_env() -> dict[str, str]:
    """The page's environment: the venv first on PATH, no API keys, every proxy refusing."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    refuse = "http://127.0.0.1:9"
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        env[key] = refuse
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
    env["MPLBACKEND"] = "Agg"
    return env


def console_script(code: str) -> str:
    """The ``$ `` commands of a console block (continuation lines kept), one script."""
    commands, taking = [], False
    for line in code.splitlines():
        if line.startswith("$ "):
            commands.append(line[2:])
            taking = line.rstrip().endswith("\\")
        elif taking:
            commands.append(line)
            taking = line.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def _run_shell(block: Block, folder: Path, env: dict[str, str]) -> None:
    script = console_script(block.code) if block.lang == "console" else block.code
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{block.where()}: the {block.lang} block exited {proc.returncode}\n"
            f"--- script\n{script}--- stdout\n{proc.stdout[-3000:]}--- stderr\n"
            f"{proc.stderr[-3000:]}",
            pytrace=False,
        )


@contextlib.contextmanager
def _chdir(folder: Path) -> Iterator[None]:  # contextlib.chdir is Python >= 3.11
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run_python(block: Block, namespace: dict[str, object]) -> None:
    code = compile(block.code, f"{block.where()} (python block)", "exec")
    try:
        exec(code, namespace)
    except Exception as e:
        pytest.fail(f"{block.where()}: {type(e).__name__}: {e}", pytrace=True)


def run_page(page: Path, folder: Path) -> int:
    """Run a page's blocks in order in ``folder``; the number run."""
    blocks = parse_blocks(page)
    unknown = [b for b in blocks if b.lang not in RUN_PYTHON | RUN_SHELL | NOT_RUN]
    if unknown:
        listed = ", ".join(f"{b.where()} ({b.lang or 'no language'})" for b in unknown)
        pytest.fail(f"fence these ```text (not run) or ```python/```console/```bash: {listed}")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    env = _offline_env()
    ran = 0
    with _environ(env), _chdir(folder):
        for block in blocks:
            if block.lang in NOT_RUN:
                continue
            if block.skip is not None:
                assert block.skip in SKIP_REASONS, f"{block.where()}: skip only {SKIP_REASONS}"
                continue
            for name in block.setups:
                assert name in SETUPS, f"{block.where()}: no docs-test setup {name!r}"
                SETUPS[name](folder)
            if block.lang in RUN_PYTHON:
                _run_python(block, namespace)
            else:
                _run_shell(block, folder, env)
            ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_blocks_run(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if any(NEEDS_SHARED_DATA.intersection(b.setups) for b in parse_blocks(page)):
        request.getfixturevalue("shared_data")
    run_page(page, tmp_path)


# --- the runner itself: it must fail on a failing block and skip only what the markers say ---


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_runner_fails_on_a_failing_block(tmp_path: Path) -> None:
    page = _page(tmp_path, "```python\nx = 1\n```\n\n```console\n$ test 1 = 2\nout\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"page.md:5: the console block exited 1"):
        run_page(page, tmp_path)


def test_runner_shares_python_namespace_and_skips_only_marked(tmp_path: Path) -> None:
    text = (
        "```python\nx = 41\n```\n"
        "<!-- docs-test: skip (needs network) -->\n```bash\nexit 1\n```\n"
        "```text\nnot run\n```\n"
        "```python\nassert x + 1 == 42\n```\n"
        "```console\n$ echo a \\\n  b > out.txt\na b\n```\n"
    )
    page = _page(tmp_path, text)
    assert run_page(page, tmp_path) == 3
    assert (tmp_path / "out.txt").read_text() == "a b\n"


def test_runner_refuses_unlabelled_fences_and_unknown_skips(tmp_path: Path) -> None:
    page = _page(tmp_path, "```\nls\n```\n")
    with pytest.raises(pytest.fail.Exception, match="no language"):
        run_page(page, tmp_path)
    page.write_text("<!-- docs-test: skip (too slow) -->\n```bash\ntrue\n```\n")
    with pytest.raises(AssertionError, match="skip only"):
        run_page(page, tmp_path)
