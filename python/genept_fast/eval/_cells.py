"""Cell-level evaluation: the GenePT paper's protocols, each embedding scored on its own.

For every embedding in ``adata.obsm`` the same cells (labelled, not "Unknown") get:

- zero-shot clustering: MiniBatchKMeans with k = number of labels (the paper's choice,
  ``random_state=2023``) and Leiden on a cosine kNN graph; AMI and ARI against the labels;
- annotation: one stratified 80/20 split shared by all embeddings; a k = 10 cosine kNN majority
  vote and a logistic regression (on standardised features); accuracy and macro
  precision/recall/F1 on the held-out cells;
- batch effect (with a batch key): ARI of both clusterings against the batch, and the silhouette
  width by label and by batch.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from genept_fast._extras import require_extra
from genept_fast.errors import InputError
from genept_fast.eval._io import (
    figure_png,
    fmt,
    markdown_table,
    new_figure,
    palette,
    safe_name,
    versions,
    write_report_files,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import pandas as pd
    from anndata import AnnData

__all__ = ["CELL_METRICS", "DEFAULT_EXCLUDE_LABELS", "CellEvalReport", "evaluate"]

log = logging.getLogger(__name__)

#: Labels left out of every cell-level metric (compared case-insensitively), as in the paper.
DEFAULT_EXCLUDE_LABELS: tuple[str, ...] = ("Unknown",)

#: obsm keys that hold 2-D layouts rather than embeddings; never picked by default.
_LAYOUT_KEYS = ("X_umap", "X_tsne", "X_draw_graph", "X_phate", "X_diffmap", "spatial")

#: (key, row label, better direction) of every cell-level metric, in report order.
CELL_METRICS: tuple[tuple[str, str, str], ...] = (
    ("kmeans_ami", "k-means AMI (label)", "up"),
    ("kmeans_ari", "k-means ARI (label)", "up"),
    ("leiden_ami", "Leiden AMI (label)", "up"),
    ("leiden_ari", "Leiden ARI (label)", "up"),
    ("leiden_n_clusters", "Leiden clusters", ""),
    ("knn_accuracy", "kNN accuracy", "up"),
    ("knn_precision", "kNN macro precision", "up"),
    ("knn_recall", "kNN macro recall", "up"),
    ("knn_f1", "kNN macro F1", "up"),
    ("logreg_accuracy", "LogReg accuracy", "up"),
    ("logreg_precision", "LogReg macro precision", "up"),
    ("logreg_recall", "LogReg macro recall", "up"),
    ("logreg_f1", "LogReg macro F1", "up"),
    ("silhouette_label", "silhouette (label)", "up"),
    ("kmeans_batch_ari", "k-means ARI (batch)", "down"),
    ("leiden_batch_ari", "Leiden ARI (batch)", "down"),
    ("silhouette_batch", "silhouette (batch)", "down"),
)


@dataclass
class CellEvalReport:
    """Result of :func:`evaluate`: numbers per embedding, the settings, and UMAP coordinates.

    Attributes
    ----------
    settings
        Every parameter that determines the numbers (seeds, k, split, library versions).
    cells
        Cell counts: evaluated, left out ("Unknown", missing label), per label, per batch,
        train/test sizes.
    results
        ``{obsm_key: {metric: value}}``; metric keys are listed in :data:`CELL_METRICS`.
    notes
        Remarks about the data (for example labels too rare for the stratified split).
    umap
        ``{obsm_key: (n_cells, 2) array}`` for the plots (empty when ``plots=False``).
    clusters
        ``{obsm_key: {"kmeans": labels, "leiden": labels}}``: the cluster of each evaluated cell.
    labels, batches
        Label (and batch) of each evaluated cell (the rows of ``umap`` and ``clusters``).
    cell_names
        ``obs_names`` of the evaluated cells.
    """

    settings: dict[str, Any]
    cells: dict[str, Any]
    results: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    umap: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    clusters: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object), repr=False)
    batches: np.ndarray | None = field(default=None, repr=False)
    cell_names: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object), repr=False)

    def metrics(self) -> pd.DataFrame:
        """The results as a DataFrame: one row per embedding, one column per metric."""
        import pandas as pd

        return pd.DataFrame.from_dict(self.results, orient="index")

    def to_dict(self) -> dict[str, Any]:
        """Everything but the plot coordinates, as plain JSON-able values."""
        return {
            "kind": "genept-fast cell-level evaluation",
            "settings": self.settings,
            "cells": self.cells,
            "results": self.results,
            "notes": self.notes,
            "figures": list(self._figure_names().values()),
        }

    def _figure_names(self) -> dict[str, str]:
        return {key: f"umap_{safe_name(key)}.png" for key in self.umap}

    def to_markdown(self) -> str:
        """The report as Markdown: one table with every embedding side by side, then settings."""
        keys = list(self.results)
        present = [m for m in CELL_METRICS if any(m[0] in self.results[k] for k in keys)]
        rows: list[list[str]] = [["dimensions", ""] + [str(self.results[k]["dim"]) for k in keys]]
        for metric, label, direction in present:
            values = [self.results[k].get(metric) for k in keys]
            best = _best(values, direction)
            arrow = {"up": "↑", "down": "↓"}.get(direction, "")
            cells = []
            for i, v in enumerate(values):
                text = fmt(v) if metric != "leiden_n_clusters" else fmt(v, 0)
                cells.append(f"**{text}**" if i in best and len(keys) > 1 else text)
            rows.append([label, arrow, *cells])
        c = self.cells
        s = self.settings
        batch_text = (
            f", {len(c['batch_counts'])} batches in `{s['batch_key']}`" if s["batch_key"] else ""
        )
        parts = [
            "# Cell-level evaluation",
            "",
            f"{c['n_evaluated']} cells evaluated out of {c['n_total']} "
            f"({c['n_excluded_label']} labelled {', '.join(map(repr, s['exclude_labels']))} "
            f"and {c['n_missing_label']} without a label left out); "
            f"{len(c['label_counts'])} labels in `{s['label_key']}`{batch_text}.",
            "",
            markdown_table(["metric", "better", *keys], rows),
            "",
            "Best value per row in bold. Each embedding is scored on its own matrix. "
            "Batch rows: lower means better mixing of batches.",
            "",
        ]
        if self.notes:
            parts += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        figs = self._figure_names()
        if figs:
            parts += ["## UMAP", ""]
            parts += [f"### {k}\n\n![UMAP of {k}]({name})\n" for k, name in figs.items()]
        parts += ["## Settings", "", *_settings_lines(self.settings, self.cells), ""]
        return "\n".join(parts)

    def figures(self) -> dict[str, bytes]:
        """PNG bytes of the UMAP plots by file name (one per embedding, label and batch panels)."""
        out: dict[str, bytes] = {}
        for key, name in self._figure_names().items():
            out[name] = _umap_png(
                key,
                self.umap[key],
                self.labels,
                self.batches,
                self.settings["label_key"],
                self.settings["batch_key"],
            )
        return out

    def write(self, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
        """Write ``report.md``, ``report.json`` and the UMAP PNGs into ``out_dir``.

        Every file is written atomically (a temporary file in ``out_dir``, then a rename);
        ``report.md`` is written last. A report file that exists already is refused unless
        ``overwrite=True``; nothing else in ``out_dir`` is touched. Returns the paths by file
        name.
        """
        return write_report_files(
            Path(out_dir), self.figures(), self.to_dict(), self.to_markdown(), overwrite=overwrite
        )


def _best(values: Sequence[Any], direction: str) -> set[int]:
    finite = [
        (i, float(v))
        for i, v in enumerate(values)
        if isinstance(v, int | float | np.number) and np.isfinite(v)
    ]
    if not finite or direction not in ("up", "down"):
        return set()
    pick = max if direction == "up" else min
    target = pick(v for _, v in finite)
    return {i for i, v in finite if round(v, 3) == round(target, 3)}


def _settings_lines(settings: dict[str, Any], cells: dict[str, Any]) -> list[str]:
    s = settings
    lines = [
        f"- cells: labels from `{s['label_key']}`; left out: labels "
        f"{', '.join(map(repr, s['exclude_labels']))} (case-insensitive) and missing labels",
        f"- k-means: MiniBatchKMeans, k = number of labels = {s['kmeans']['n_clusters']}, "
        f"random_state = {s['kmeans']['random_state']}, n_init = {s['kmeans']['n_init']}, "
        f"batch_size = {s['kmeans']['batch_size']}",
    ]
    if s["leiden"] is not None:
        ld = s["leiden"]
        lines.append(
            f"- Leiden: scanpy kNN graph (n_neighbors = {ld['n_neighbors']}, metric = "
            f"{ld['metric']}), flavor = {ld['flavor']}, resolution = {ld['resolution']}, "
            f"n_iterations = {ld['n_iterations']}, random_state = {ld['random_state']}"
        )
    sp_ = s["split"]
    lines.append(
        f"- annotation split: stratified, test_size = {sp_['test_size']}, random_state = "
        f"{sp_['random_state']}; {cells['n_train']} train / {cells['n_test']} test cells"
    )
    kn = s["knn"]
    lines.append(f"- kNN: k = {kn['k']}, metric = {kn['metric']}, uniform majority vote")
    if s["logreg"] is not None:
        lr = s["logreg"]
        lines.append(
            f"- logistic regression: StandardScaler + LogisticRegression(C = {lr['C']}, "
            f"max_iter = {lr['max_iter']}, random_state = {lr['random_state']})"
        )
    sil = s["silhouette"]
    lines.append(
        f"- silhouette: sklearn silhouette_score, metric = {sil['metric']}, "
        f"at most {sil['max_cells']} cells (random_state = {sil['random_state']})"
    )
    if s["umap"] is not None:
        lines.append(f"- UMAP: scanpy, random_state = {s['umap']['random_state']}")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()))
    return lines


def _umap_png(
    key: str,
    coords: np.ndarray,
    labels: np.ndarray,
    batches: np.ndarray | None,
    label_key: str,
    batch_key: str | None,
) -> bytes:
    from matplotlib.lines import Line2D

    panels: list[tuple[str, np.ndarray]] = [(label_key, labels)]
    if batches is not None and batch_key is not None:
        panels.append((batch_key, batches))
    fig = new_figure(6.5 * len(panels), 5.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    size = max(1.0, min(20.0, 30000.0 / max(len(coords), 1)))
    # One scatter per panel in a fixed shuffled order, so no category is always drawn on top.
    order = np.random.default_rng(0).permutation(len(coords))
    for ax, (title, values) in zip(axes, panels, strict=True):
        vals = np.array([str(v) for v in values], dtype=object)
        cats = sorted(set(vals.tolist()))
        colors = palette(len(cats))
        code = {c: i for i, c in enumerate(cats)}
        rgba = np.array([colors[code[v]] for v in vals[order]]).reshape(-1, 4)
        ax.scatter(coords[order, 0], coords[order, 1], s=size, c=rgba, linewidths=0)
        ax.set_title(f"{key} — {title}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1")
        ax.set_ylabel("UMAP2")
        if len(cats) <= 40:
            handles = [
                Line2D([], [], marker="o", linestyle="", color=col, label=cat, markersize=5)
                for cat, col in zip(cats, colors, strict=True)
            ]
            ax.legend(
                handles=handles,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                fontsize=7,
                frameon=False,
            )
    return figure_png(fig)


#: Label strings that mean "no label" (compared case-insensitively, after stripping): what
#: ``str()`` of a missing value gives after a round trip through text (CSV, ``astype(str)``).
MISSING_LABEL_TEXT = frozenset({"", "nan", "none", "null", "na", "n/a", "<na>"})


def _as_str_labels(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Strings per cell and a mask of missing values (NaN / None / empty / "nan" and kin)."""
    import pandas as pd

    series = pd.Series(values)
    missing = series.isna().to_numpy()
    text = np.array(
        ["" if m else str(v) for v, m in zip(series, missing, strict=True)], dtype=object
    )
    missing |= np.array([t.strip().casefold() in MISSING_LABEL_TEXT for t in text], dtype=bool)
    return text, missing


def _default_obsm_keys(adata: AnnData) -> list[str]:
    keys = []
    for key in adata.obsm:
        if any(key == k or key.startswith(k + "_") for k in _LAYOUT_KEYS):
            continue
        shape: tuple[int, ...] = tuple(getattr(adata.obsm[key], "shape", ()))
        if len(shape) == 2 and shape[1] > 2:
            keys.append(key)
    return keys


def _embedding(adata: AnnData, key: str, keep: np.ndarray) -> np.ndarray:
    if key not in adata.obsm:
        msg = f"obsm has no key {key!r}; available: {sorted(adata.obsm)}"
        raise InputError(msg)
    M: Any = adata.obsm[key]
    if hasattr(M, "to_numpy"):
        M = M.to_numpy()
    is_sparse = sp.issparse(M)  # (not a type guard: M stays Any for mypy)
    if is_sparse:
        M = sp.csr_array(M)[keep].toarray()
    else:
        M = np.asarray(M)
        if M.ndim != 2:
            msg = f"obsm[{key!r}] must be 2-D (cells × dimensions), got shape {M.shape}"
            raise InputError(msg)
        M = M[keep]
    if not (np.issubdtype(M.dtype, np.floating) or np.issubdtype(M.dtype, np.integer)):
        msg = f"obsm[{key!r}] has non-numeric dtype {M.dtype}"
        raise InputError(msg)
    M = np.ascontiguousarray(M, dtype=np.float32 if M.dtype == np.float32 else np.float64)
    bad = ~np.isfinite(M).all(axis=1)
    if bad.any():
        msg = f"obsm[{key!r}] has {int(bad.sum())} evaluated cells with NaN or infinite values"
        raise InputError(msg)
    return M


def _scores(y_true: np.ndarray, y_pred: np.ndarray, prefix: str) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {
        f"{prefix}_accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}_precision": float(p),
        f"{prefix}_recall": float(r),
        f"{prefix}_f1": float(f),
    }


def _silhouette(E: np.ndarray, groups: np.ndarray, metric: str, max_cells: int, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    n_groups = len(set(groups.tolist()))
    if n_groups < 2 or n_groups >= len(groups):
        return float("nan")
    sample = max_cells if len(groups) > max_cells else None
    return float(silhouette_score(E, groups, metric=metric, sample_size=sample, random_state=seed))


@dataclass
class _Options:
    """The scoring options of one :func:`evaluate` call."""

    seed: int
    knn_k: int
    test_size: float
    leiden: bool
    leiden_resolution: float
    n_neighbors: int
    logreg: bool
    logreg_c: float
    silhouette_metric: str
    silhouette_max_cells: int
    plots: bool
    n_jobs: int | None


@dataclass
class _Cells:
    """The evaluated cells: labels after exclusions, batches, and the annotation split."""

    keep: np.ndarray
    labels: np.ndarray
    excluded: np.ndarray
    missing: np.ndarray
    classes: np.ndarray
    counts: np.ndarray
    notes: list[str]
    batches: np.ndarray | None = None
    batch_ok: np.ndarray = field(default_factory=lambda: np.ones(0, dtype=bool))
    batch_counts: dict[str, int] = field(default_factory=dict)
    train_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    k_eff: int = 0

    @property
    def n(self) -> int:
        return int(self.keep.sum())


def _check_columns(adata: AnnData, label_key: str, batch_key: str | None) -> None:
    for key in (label_key, batch_key):
        if key is not None and key not in adata.obs:
            msg = f"obs has no column {key!r}; available: {list(adata.obs.columns)}"
            raise InputError(msg)


def _check_keys(adata: AnnData, obsm_keys: Iterable[str] | None) -> list[str]:
    keys = list(obsm_keys) if obsm_keys is not None else _default_obsm_keys(adata)
    if not keys:
        msg = f"no embeddings to evaluate: obsm holds {sorted(adata.obsm)}; pass obsm_keys"
        raise InputError(msg)
    if len(set(keys)) != len(keys):
        msg = f"obsm_keys lists a key twice: {keys}"
        raise InputError(msg)
    for key in keys:
        if key not in adata.obsm:
            msg = f"obsm has no key {key!r}; available: {sorted(adata.obsm)}"
            raise InputError(msg)
    return keys


def _check_options(opt: _Options) -> None:
    if not 0.0 < opt.test_size < 1.0:
        msg = f"test_size must be between 0 and 1, got {opt.test_size}"
        raise InputError(msg)
    if opt.knn_k < 1:
        msg = f"knn_k must be ≥ 1, got {opt.knn_k}"
        raise InputError(msg)
    if opt.leiden and importlib.util.find_spec("igraph") is None:
        msg = "Leiden clustering needs the igraph package (pip install igraph), or leiden=False"
        raise InputError(msg)


def _labelled_cells(adata: AnnData, label_key: str, exclude: tuple[str, ...]) -> _Cells:
    """The cells with a label that is not excluded, and notes on those left out."""
    exclude_cf = {x.strip().casefold() for x in exclude}
    labels_all, missing = _as_str_labels(adata.obs[label_key].to_numpy())
    excluded = np.array([t.strip().casefold() in exclude_cf for t in labels_all]) & ~missing
    keep = ~missing & ~excluded
    labels = labels_all[keep]
    classes, counts = np.unique(labels.astype(str), return_counts=True)
    if len(classes) < 2:
        msg = f"need at least 2 labels in obs[{label_key!r}] after exclusions, got {len(classes)}"
        raise InputError(msg)
    notes: list[str] = []
    textual = missing & np.array([t.strip() != "" for t in labels_all], dtype=bool)
    if textual.any():
        shown = sorted({str(t) for t in labels_all[textual]})[:5]
        notes.append(
            f"{int(textual.sum())} cells labelled {', '.join(map(repr, shown))} in"
            f" obs[{label_key!r}] count as having no label and are left out"
        )
    return _Cells(keep, labels, excluded, missing, classes, counts, notes)


def _add_batches(cells: _Cells, adata: AnnData, batch_key: str | None) -> None:
    cells.batch_ok = np.ones(cells.n, dtype=bool)
    if batch_key is None:
        return
    b_all, b_missing = _as_str_labels(adata.obs[batch_key].to_numpy())
    cells.batches = b_all[cells.keep]
    cells.batch_ok = ~b_missing[cells.keep]
    bc, bn = np.unique(cells.batches[cells.batch_ok].astype(str), return_counts=True)
    cells.batch_counts = {str(k): int(v) for k, v in zip(bc, bn, strict=True)}
    if len(bc) < 2:
        msg = f"batch metrics need at least 2 batches in obs[{batch_key!r}], got {len(bc)}"
        raise InputError(msg)
    if not cells.batch_ok.all():
        n_nb = int((~cells.batch_ok).sum())
        cells.notes.append(f"{n_nb} cells without a batch are left out of the batch metrics")


def _add_split(cells: _Cells, opt: _Options) -> None:
    """One stratified split for every embedding; labels with < 2 cells cannot be stratified."""
    from sklearn.model_selection import train_test_split

    labels = cells.labels
    rare = set(cells.classes[cells.counts < 2].tolist())
    annot_idx = np.flatnonzero([lab not in rare for lab in labels])
    if rare:
        cells.notes.append(
            f"labels with a single cell left out of the annotation split: {sorted(rare)}"
        )
    try:
        train_idx, test_idx = train_test_split(
            annot_idx, test_size=opt.test_size, stratify=labels[annot_idx], random_state=opt.seed
        )
    except ValueError as exc:
        msg = (
            f"cannot make a stratified {opt.test_size} test split of {len(annot_idx)} cells: {exc}"
        )
        raise InputError(msg) from exc
    cells.train_idx = np.sort(train_idx)
    cells.test_idx = np.sort(test_idx)
    cells.k_eff = min(opt.knn_k, len(cells.train_idx))
    if cells.k_eff < opt.knn_k:
        cells.notes.append(
            f"kNN uses k = {cells.k_eff}: only {len(cells.train_idx)} training cells"
        )


def _settings(
    opt: _Options,
    cells: _Cells,
    *,
    label_key: str,
    batch_key: str | None,
    keys: list[str],
    exclude: tuple[str, ...],
) -> dict[str, Any]:
    seed = opt.seed
    leiden = {
        "flavor": "igraph",
        "n_neighbors": opt.n_neighbors,
        "metric": "cosine",
        "resolution": opt.leiden_resolution,
        "n_iterations": 2,
        "random_state": seed,
    }
    logreg = {"C": opt.logreg_c, "max_iter": 1000, "random_state": seed, "standardize": True}
    return {
        "label_key": label_key,
        "batch_key": batch_key,
        "obsm_keys": keys,
        "seed": seed,
        "exclude_labels": list(exclude),
        "kmeans": {
            "algorithm": "MiniBatchKMeans",
            "n_clusters": len(cells.classes),
            "random_state": seed,
            "n_init": 3,
            "batch_size": 1024,
        },
        "leiden": leiden if opt.leiden else None,
        "split": {"stratified": True, "test_size": opt.test_size, "random_state": seed},
        "knn": {"k": cells.k_eff, "metric": "cosine", "weights": "uniform"},
        "logreg": logreg if opt.logreg else None,
        "silhouette": {
            "metric": opt.silhouette_metric,
            "max_cells": opt.silhouette_max_cells,
            "random_state": seed,
        },
        "umap": {"random_state": seed} if opt.plots else None,
        "versions": versions("genept-fast", "scikit-learn", "scanpy", "numpy"),
    }


def _cell_counts(adata: AnnData, cells: _Cells) -> dict[str, Any]:
    return {
        "n_total": int(adata.n_obs),
        "n_evaluated": cells.n,
        "n_excluded_label": int(cells.excluded.sum()),
        "n_missing_label": int(cells.missing.sum()),
        "label_counts": {str(k): int(v) for k, v in zip(cells.classes, cells.counts, strict=True)},
        "batch_counts": cells.batch_counts,
        "n_train": len(cells.train_idx),
        "n_test": len(cells.test_idx),
    }


@dataclass
class _Scored:
    """What scoring one embedding gives: its metrics, clusterings and UMAP coordinates."""

    result: dict[str, Any]
    clusters: dict[str, np.ndarray] = field(default_factory=dict)
    umap: np.ndarray | None = None


def _zero_rows_note(key: str, E: np.ndarray, cells: _Cells, res: dict[str, Any]) -> str | None:
    """A note on all-zero rows; sets ``res["not_scored"]`` when every row is zero."""
    n_zero = res["n_zero_rows"]
    if n_zero == cells.n:
        res["not_scored"] = "all-zero embedding"
        return (
            f"obsm[{key!r}] is all zeros for every evaluated cell (no gene with an"
            " embedding expressed?): not scored"
        )
    if n_zero:
        return (
            f"obsm[{key!r}]: {n_zero} of {cells.n} evaluated cells have an all-zero embedding"
            " (no gene with an embedding expressed); they are scored as they are"
        )
    return None


def _score_clusters(E: np.ndarray, y: np.ndarray, cells: _Cells, opt: _Options) -> _Scored:
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    km = MiniBatchKMeans(
        n_clusters=len(cells.classes), random_state=opt.seed, n_init=3, batch_size=1024
    ).fit_predict(E)
    res = {
        "kmeans_ami": float(adjusted_mutual_info_score(y, km)),
        "kmeans_ari": float(adjusted_rand_score(y, km)),
    }
    scored = _Scored(res, {"kmeans": np.asarray(km)})
    if opt.leiden or opt.plots:
        ld, scored.umap = _graph_steps(
            E,
            n_neighbors=opt.n_neighbors,
            resolution=opt.leiden_resolution,
            seed=opt.seed,
            leiden=opt.leiden,
            umap=opt.plots,
        )
        if ld is not None:
            scored.clusters["leiden"] = ld
            res["leiden_ami"] = float(adjusted_mutual_info_score(y, ld))
            res["leiden_ari"] = float(adjusted_rand_score(y, ld))
            res["leiden_n_clusters"] = len(set(ld.tolist()))
    return scored


def _score_annotation(E: np.ndarray, y: np.ndarray, cells: _Cells, opt: _Options) -> dict[str, Any]:
    from sklearn.neighbors import KNeighborsClassifier

    train, test = cells.train_idx, cells.test_idx
    knn = KNeighborsClassifier(
        n_neighbors=cells.k_eff, metric="cosine", algorithm="brute", n_jobs=opt.n_jobs
    ).fit(E[train], y[train])
    res = _scores(y[test], knn.predict(E[test]), "knn")
    if opt.logreg:
        res.update(_scores(y[test], _logreg(E, y, train, test, opt.logreg_c, opt.seed), "logreg"))
    return res


def _score_batches(E: np.ndarray, cells: _Cells, opt: _Options, scored: _Scored) -> None:
    from sklearn.metrics import adjusted_rand_score

    if cells.batches is None:
        return
    ok = cells.batch_ok
    yb = cells.batches[ok].astype(str)
    res = scored.result
    res["kmeans_batch_ari"] = float(adjusted_rand_score(yb, scored.clusters["kmeans"][ok]))
    if "leiden" in scored.clusters:
        res["leiden_batch_ari"] = float(adjusted_rand_score(yb, scored.clusters["leiden"][ok]))
    res["silhouette_batch"] = _silhouette(
        E[ok], yb, opt.silhouette_metric, opt.silhouette_max_cells, opt.seed
    )


def _score(
    adata: AnnData, key: str, y: np.ndarray, cells: _Cells, opt: _Options
) -> tuple[_Scored, str | None]:
    """Every metric of ``obsm[key]`` on the evaluated cells, and a note on its zero rows."""
    log.info("evaluating obsm[%r]", key)
    E = _embedding(adata, key, cells.keep)
    head: dict[str, Any] = {"dim": int(E.shape[1]), "n_zero_rows": int((~E.any(axis=1)).sum())}
    note = _zero_rows_note(key, E, cells, head)
    if "not_scored" in head:
        return _Scored(head), note
    scored = _score_clusters(E, y, cells, opt)
    scored.result = {**head, **scored.result}
    scored.result.update(_score_annotation(E, y, cells, opt))
    scored.result["silhouette_label"] = _silhouette(
        E, y, opt.silhouette_metric, opt.silhouette_max_cells, opt.seed
    )
    _score_batches(E, cells, opt, scored)
    return scored, note


def evaluate(
    adata: AnnData,
    *,
    label_key: str,
    batch_key: str | None = None,
    obsm_keys: Iterable[str] | None = None,
    seed: int = 2023,
    exclude_labels: Iterable[str] = DEFAULT_EXCLUDE_LABELS,
    knn_k: int = 10,
    test_size: float = 0.2,
    leiden: bool = True,
    leiden_resolution: float = 1.0,
    n_neighbors: int = 15,
    logreg: bool = True,
    logreg_c: float = 1.0,
    silhouette_metric: str = "cosine",
    silhouette_max_cells: int = 20_000,
    plots: bool = True,
    n_jobs: int | None = None,
) -> CellEvalReport:
    """Score cell embeddings with the GenePT paper's protocols, each on its own matrix.

    Parameters
    ----------
    adata
        Annotated data; embeddings in ``adata.obsm``, labels (and batches) in ``adata.obs``.
        It is not modified (works with ``backed`` AnnData too: only ``obs``/``obsm`` are read).
    label_key
        ``obs`` column with the cell-type labels.
    batch_key
        Optional ``obs`` column with the batch/patient; adds the batch-effect metrics.
    obsm_keys
        Embeddings to score, e.g. ``["X_genept_w", "X_genept_s", "X_pca"]``. Default: every 2-D
        ``obsm`` entry with more than two columns, except layouts (``X_umap``, ``X_tsne``, ...).
    seed
        Seed of every random step (k-means, split, Leiden, logistic regression, silhouette
        sampling, UMAP). The paper used 2023.
    exclude_labels
        Labels whose cells are left out of all metrics (case-insensitive); the paper drops
        ``"Unknown"``. Cells with a missing label are always left out.
    knn_k
        Neighbours in the kNN annotation (cosine distance, uniform majority vote).
    test_size
        Held-out fraction of the stratified annotation split.
    leiden, leiden_resolution, n_neighbors
        Leiden clustering (igraph flavour) on scanpy's cosine kNN graph with ``n_neighbors``.
    logreg, logreg_c
        Logistic-regression annotation on standardised features, with inverse regularisation
        ``logreg_c``.
    silhouette_metric, silhouette_max_cells
        Distance of the silhouette widths; above ``silhouette_max_cells`` cells a seeded random
        sample of that size is used (the full computation is quadratic).
    plots
        Compute UMAP coordinates for the report's figures (the slowest step; turn off for speed).
    n_jobs
        Parallel jobs for the kNN search (scikit-learn's ``n_jobs``).

    Returns
    -------
    A :class:`CellEvalReport`; ``report.write(out_dir)`` writes ``report.md``, ``report.json``
    and one ``umap_<key>.png`` per embedding.
    """
    require_extra("eval", "evaluation")
    opt = _Options(
        seed=seed,
        knn_k=knn_k,
        test_size=test_size,
        leiden=leiden,
        leiden_resolution=leiden_resolution,
        n_neighbors=n_neighbors,
        logreg=logreg,
        logreg_c=logreg_c,
        silhouette_metric=silhouette_metric,
        silhouette_max_cells=silhouette_max_cells,
        plots=plots,
        n_jobs=n_jobs,
    )
    _check_columns(adata, label_key, batch_key)
    keys = _check_keys(adata, obsm_keys)
    _check_options(opt)
    exclude = tuple(str(x) for x in exclude_labels)
    cells = _labelled_cells(adata, label_key, exclude)
    _add_batches(cells, adata, batch_key)
    _add_split(cells, opt)
    settings = _settings(
        opt, cells, label_key=label_key, batch_key=batch_key, keys=keys, exclude=exclude
    )

    results: dict[str, dict[str, Any]] = {}
    umaps: dict[str, np.ndarray] = {}
    clusters: dict[str, dict[str, np.ndarray]] = {}
    y = cells.labels.astype(str)
    for key in keys:
        scored, note = _score(adata, key, y, cells, opt)
        if note is not None:
            cells.notes.append(note)
        results[key] = scored.result
        if scored.clusters:
            clusters[key] = scored.clusters
        if scored.umap is not None:
            umaps[key] = scored.umap

    return CellEvalReport(
        settings=settings,
        cells=_cell_counts(adata, cells),
        results=results,
        notes=cells.notes,
        umap=umaps,
        clusters=clusters,
        labels=y.astype(object),
        batches=cells.batches,
        cell_names=np.asarray(adata.obs_names)[cells.keep].astype(object),
    )


def _logreg(
    E: np.ndarray, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, c: float, seed: int
) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=1000, random_state=seed)
    )
    model.fit(E[train_idx], y[train_idx])
    return np.asarray(model.predict(E[test_idx]))


#: Below this many cells scanpy's kNN graph is exact (brute force); above, pynndescent.
_EXACT_KNN_MAX = 4096


class _CsrMatrixKnn:
    """A kNN transformer whose output is a ``scipy.sparse.csr_matrix`` (scanpy calls ``getnnz``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return dict(self.inner.get_params(deep=deep))

    def fit(self, X: Any, y: Any = None) -> _CsrMatrixKnn:
        self.inner.fit(X)
        return self

    def transform(self, X: Any) -> sp.csr_matrix:
        return sp.csr_matrix(self.inner.transform(X))

    def fit_transform(self, X: Any, y: Any = None) -> sp.csr_matrix:
        return sp.csr_matrix(self.inner.fit_transform(X))


def _graph_steps(
    E: np.ndarray, *, n_neighbors: int, resolution: float, seed: int, leiden: bool, umap: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Leiden labels and/or UMAP coordinates from scanpy's cosine kNN graph of ``E``."""
    import warnings

    import anndata as ad
    import pandas as pd
    import scanpy as sc

    n = E.shape[0]
    k = min(n_neighbors, n - 1)
    tmp = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(n)]))
    tmp.obsm["X_emb"] = E
    transformer = None
    if n >= _EXACT_KNN_MAX:
        # What scanpy picks itself above 4096 cells (pynndescent, umap's settings), wrapped so
        # that scanpy gets the csr_matrix it expects (pynndescent ≥ 0.6 returns a csr_array).
        from pynndescent import PyNNDescentTransformer

        transformer = _CsrMatrixKnn(
            PyNNDescentTransformer(
                n_neighbors=k,
                metric="cosine",
                random_state=seed,
                n_jobs=sc.settings.n_jobs,
                n_trees=min(64, 5 + round(n**0.5 / 20.0)),
                n_iters=max(5, round(np.log2(n))),
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sc.pp.neighbors(
            tmp,
            n_neighbors=k,
            use_rep="X_emb",
            metric="cosine",
            random_state=seed,
            transformer=transformer,
        )
        labels = None
        if leiden:
            sc.tl.leiden(
                tmp,
                resolution=resolution,
                flavor="igraph",
                n_iterations=2,
                directed=False,
                random_state=seed,
                key_added="leiden",
            )
            labels = tmp.obs["leiden"].astype(str).to_numpy()
        coords = None
        if umap:
            sc.tl.umap(tmp, random_state=seed)
            coords = np.asarray(tmp.obsm["X_umap"], dtype=np.float64)
    return labels, coords
