"""The README's main job: `genept-fast demo`, end to end, offline (about a minute), and its
one figure: GenePT-w, GenePT-s and PCA side by side, titled in words, scores under each."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from genept_fast.cli import main
from genept_fast.errors import InputError

pytest.importorskip("scanpy")

KEYS = ["X_genept_w", "X_genept_s", "X_pca"]
TITLES = [
    "GenePT-w (weighted gene embeddings)",
    "GenePT-s (embedded cell sentences)",
    "PCA (of the expression matrix)",
]


@pytest.fixture(scope="module")
def report():
    """A real evaluation of 350 of scanpy's bundled PBMCs (all ten cell types).

    X_pca is the dataset's own; the two GenePT keys hold GenePT-w from seeded random gene
    tables, and each panel's layout is the dataset's stored UMAP: stand-ins that keep this
    test fast (the figure draws whatever it is given; the slow test below runs the real demo,
    UMAPs included)."""
    import dataclasses

    import scanpy as sc

    from genept_fast import eval as gfe
    from genept_fast import tl
    from genept_fast.table import GeneEmbeddings

    adata = sc.datasets.pbmc68k_reduced()[::2].copy()
    genes = list(adata.raw.var_names)
    for seed, key in enumerate(KEYS[:2]):
        vectors = np.random.default_rng(seed).standard_normal((len(genes), 16))
        table = GeneEmbeddings(genes, vectors, {"model_id": f"random-{seed}"})
        tl.genept_w(adata, table, key_added=key)
    scored = gfe.evaluate(
        adata, label_key="bulk_labels", obsm_keys=KEYS, leiden=False, logreg=False, plots=False
    )
    layout = np.asarray(adata.obsm["X_umap"])
    return dataclasses.replace(scored, umap={key: layout for key in KEYS})


def test_the_figure_has_three_panels_titled_in_words_with_their_scores(report):
    from genept_fast.eval._io import fmt
    from genept_fast.eval._plots import comparison_figure

    fig = comparison_figure(report)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == TITLES
    assert len(fig.axes) == 3
    for ax, key in zip(panels, KEYS, strict=True):
        scores = report.results[key]
        under = ax.get_xlabel()
        assert f"k-means AMI {fmt(scores['kmeans_ami'])}" in under
        assert f"ARI {fmt(scores['kmeans_ari'])}" in under
        assert f"kNN accuracy {fmt(scores['knn_accuracy'])}" in under
        assert len(ax.collections[0].get_offsets()) == len(report.labels)  # every cell drawn


def test_one_legend_with_a_distinct_colour_per_cell_type(report):
    from matplotlib.colors import to_hex

    from genept_fast.eval._plots import comparison_figure

    fig = comparison_figure(report)
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    entries = [t.get_text() for t in fig.legends[0].get_texts()]
    cats, counts = np.unique([str(v) for v in report.labels], return_counts=True)
    assert entries == [f"{c} ({n})" for c, n in zip(cats, counts, strict=True)]
    colours = [to_hex(h.get_markerfacecolor()) for h in fig.legends[0].legend_handles]
    assert len(set(colours)) == len(cats) == 10


def test_the_palette_tells_ten_classes_apart():
    from matplotlib.colors import to_rgb

    from genept_fast.eval._io import CATEGORY_COLORS, palette

    assert len(set(palette(10))) == 10 and palette(3) == palette(10)[:3]
    # CIE76 distance between every two of the ten colours, as documented beside them
    lab = [_lab(to_rgb(c)) for c in CATEGORY_COLORS]
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(lab, 2)) > 35
    assert len(set(palette(15))) == 15 and len(set(palette(30))) == 30


def _lab(rgb: tuple[float, float, float]) -> np.ndarray:
    c = np.asarray(rgb)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    t = (m @ lin) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_the_demo_report_writes_one_png_and_the_same_numbers(report, tmp_path):
    from genept_fast.demo import FIGURE, write_demo_report

    markdown = write_demo_report(tmp_path, report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", FIGURE]
    assert (tmp_path / FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["figures"] == [FIGURE]
    assert (tmp_path / "report.md").read_text() == markdown
    assert f"]({FIGURE})" in markdown and "umap_X_" not in markdown
    table = report.to_markdown().split("\n\n## ")[0]  # the numbers, as evaluate writes them
    assert markdown.startswith(table)
    with pytest.raises(InputError, match="already exists"):
        write_demo_report(tmp_path, report)
    write_demo_report(tmp_path, report, overwrite=True)


def test_a_key_without_a_umap_is_named(report):
    from genept_fast.eval._plots import comparison_figure

    with pytest.raises(InputError, match="X_scvi"):
        comparison_figure(report, ["X_pca", "X_scvi"])


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gene text:" in printed and "X_genept_w" in printed
    for name in ("report.md", "report.json", "genes.parquet", "pbmc68k_genept.h5ad"):
        assert (out / name).is_file(), name
    assert [p.name for p in out.glob("*.png")] == ["umap.png"]  # one figure, three panels
    assert (out / "umap.png").stat().st_size > 50_000
    results = json.loads((out / "report.json").read_text())["results"]
    # Real signal, not noise: 10 PBMC types, chance kNN accuracy is ~0.3 (the largest class).
    assert results["X_genept_w"]["knn_accuracy"] > 0.6
    assert results["X_genept_s"]["knn_accuracy"] > 0.45
    assert results["X_genept_w"]["kmeans_ami"] > 0.3
