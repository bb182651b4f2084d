"""The embeddings side by side: one figure, one 2-D layout per embedding, one legend.

:func:`comparison_figure` draws the UMAP of each embedding of a
:class:`~genept_fast.eval.CellEvalReport` next to the others (GenePT-w, GenePT-s, PCA, ...),
coloured by the label with one shared palette (:func:`genept_fast.eval._io.palette`), each
panel titled in words and its scores (k-means AMI/ARI, kNN accuracy) written under it. The
demo writes it as ``umap.png``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast.errors import InputError
from genept_fast.eval._io import figure_png, fmt, new_figure, palette

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from genept_fast.eval._cells import CellEvalReport

__all__ = ["EMBEDDING_TITLES", "comparison_figure", "comparison_png", "embedding_title"]

#: Panel titles in words for the embeddings genept-fast and scanpy write.
EMBEDDING_TITLES: dict[str, str] = {
    "X_genept_w": "GenePT-w (weighted gene embeddings)",
    "X_genept_s": "GenePT-s (embedded cell sentences)",
    "X_pca": "PCA (of the expression matrix)",
}

#: The scores written under each panel: (report key, text), in groups joined by " · ".
PANEL_SCORES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("kmeans_ami", "k-means AMI"), ("kmeans_ari", "ARI")),
    (("knn_accuracy", "kNN accuracy"),),
)


def embedding_title(key: str) -> str:
    """The panel title of ``obsm`` key ``key``: in words when known, else the key."""
    return EMBEDDING_TITLES.get(key, key)


def comparison_figure(
    report: CellEvalReport,
    keys: Sequence[str] | None = None,
    *,
    title: str | None = None,
    titles: Mapping[str, str] | None = None,
) -> Figure:
    """One figure with the UMAP of each embedding of ``report`` side by side.

    Parameters
    ----------
    report
        A report from :func:`genept_fast.eval.evaluate` run with ``plots=True``.
    keys
        The embeddings to draw, in order (default: every one with a UMAP).
    title
        The figure's title (default: how many cells, coloured by which label).
    titles
        Panel titles by key (default: :data:`EMBEDDING_TITLES`, else the key).
    """
    keys = list(report.umap) if keys is None else list(keys)
    missing = [k for k in keys if k not in report.umap]
    if not keys or missing:
        msg = (
            f"no UMAP for {', '.join(missing)} in this report (evaluate with plots=True)"
            if missing
            else "no embedding to draw: the report has no UMAP (evaluate with plots=True)"
        )
        raise InputError(msg)
    labels = np.array([str(v) for v in report.labels], dtype=object)
    cats, counts = np.unique(labels, return_counts=True)
    colors = palette(len(cats))
    code = {c: i for i, c in enumerate(cats.tolist())}
    rgba = np.array([colors[code[v]] for v in labels.tolist()]).reshape(-1, 4)
    label_key = str(report.settings.get("label_key", "label"))

    fig = new_figure(4.3 * len(keys) + 2.6, 5.0, dpi=130)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    order = np.random.default_rng(0).permutation(len(labels))  # no class always on top
    size = max(2.0, min(16.0, 12000.0 / max(len(labels), 1)))
    for ax, key in zip(axes, keys, strict=True):
        coords = np.asarray(report.umap[key])
        ax.scatter(
            coords[order, 0],
            coords[order, 1],
            s=size,
            c=rgba[order],
            edgecolors="white",
            linewidths=0.25 if len(labels) <= 5_000 else 0.0,  # edges would hide small dots
        )
        _panel(ax, (titles or {}).get(key, embedding_title(key)), report.results.get(key, {}))
    _legend(fig, cats.tolist(), counts.tolist(), colors, label_key)
    fig.suptitle(
        title or f"UMAP of each embedding: {len(labels):,} cells coloured by {label_key}",
        fontsize=12,
    )
    return fig


def comparison_png(
    report: CellEvalReport, keys: Sequence[str] | None = None, **options: Any
) -> bytes:
    """:func:`comparison_figure` rendered as PNG bytes."""
    return figure_png(comparison_figure(report, keys, **options))


def _panel(ax: Axes, title: str, scores: Mapping[str, Any]) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    groups = [
        ", ".join(f"{text} {fmt(scores[key])}" for key, text in group if key in scores)
        for group in PANEL_SCORES
    ]
    ax.set_xlabel(" · ".join(g for g in groups if g), fontsize=10)


def _legend(
    fig: Figure, cats: list[str], counts: list[int], colors: list[Any], label_key: str
) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor=col,
            markeredgecolor="white",
            markersize=8,
            label=f"{cat} ({n})",
        )
        for cat, n, col in zip(cats, counts, colors, strict=True)
    ]
    fig.legend(
        handles=handles,
        loc="outside right center",
        title=f"{label_key} (cells)",
        ncols=1 + len(cats) // 25,
        fontsize=9,
        title_fontsize=9,
        frameon=False,
    )
