"""Reference → query evaluation: labels transferred from one dataset to another, scored.

For every embedding (or ensemble of embeddings) and every method, the query's cells are annotated
from the reference with :func:`genept_fast.annotate.transfer_labels`'s machinery and compared with
the query's own labels: accuracy, macro precision / recall / F1 (scikit-learn, over the labels
present in the truth or the predictions), the fraction left "Unknown", and a confusion matrix
(rows: true label, columns: predicted; a PNG per embedding and method). With an approximate
(IVF or HNSW) reference the kNN predictions are also made by exact search and their agreement
reported.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast.errors import InputError
from genept_fast.eval._cells import DEFAULT_EXCLUDE_LABELS, _as_str_labels
from genept_fast.eval._io import (
    figure_png,
    fmt,
    markdown_table,
    new_figure,
    safe_name,
    versions,
    write_report_files,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from anndata import AnnData

    from genept_fast.annotate import ReferenceIndex

__all__ = ["TransferEvalReport", "evaluate_transfer"]

log = logging.getLogger(__name__)

#: (key, row label) of the metrics, in report order.
TRANSFER_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro F1"),
    ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"),
    ("unknown_fraction", "left Unknown"),
    ("mean_confidence", "mean confidence"),
    ("exact_agreement", "ANN vs exact agreement"),
)


@dataclass
class TransferEvalReport:
    """Result of :func:`evaluate_transfer`.

    Attributes
    ----------
    settings
        Everything that determines the numbers (keys, methods, k, weights, versions).
    cells
        Query cells evaluated and left out, reference size, labels only one side has.
    results
        ``{embedding: {method: {metric: value}}}``.
    confusion
        ``{(embedding, method): (true labels, predicted labels, counts matrix)}``.
    """

    settings: dict[str, Any]
    cells: dict[str, Any]
    results: dict[str, dict[str, dict[str, Any]]]
    confusion: dict[tuple[str, str], tuple[list[str], list[str], np.ndarray]] = field(
        default_factory=dict, repr=False
    )
    notes: list[str] = field(default_factory=list)

    def _figure_names(self) -> dict[tuple[str, str], str]:
        return {key: f"confusion_{safe_name(key[0])}_{key[1]}.png" for key in self.confusion}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "genept-fast reference to query evaluation",
            "settings": self.settings,
            "cells": self.cells,
            "results": self.results,
            "confusion": {
                f"{e} {m}": {"true": t, "predicted": p, "counts": c.tolist()}
                for (e, m), (t, p, c) in self.confusion.items()
            },
            "notes": self.notes,
            "figures": list(self._figure_names().values()),
        }

    def to_markdown(self) -> str:
        cols = [(e, m) for e, per in self.results.items() for m in per]
        rows = []
        for metric, label in TRANSFER_METRICS:
            values = [self.results[e][m].get(metric) for e, m in cols]
            if all(v is None for v in values):
                continue
            rows.append([label, *(fmt(v) for v in values)])
        c = self.cells
        parts = [
            "# Reference → query label transfer",
            "",
            f"{c['n_evaluated']} query cells evaluated out of {c['n_query']} (labels from "
            f"`{self.settings['query_label_key']}`; {c['n_excluded_label']} labelled "
            f"{', '.join(map(repr, self.settings['exclude_labels']))} and {c['n_missing_label']} "
            f"without a label left out); reference: {c['n_reference']} cells, "
            f"{len(c['reference_label_counts'])} labels in `{self.settings['label_key']}`.",
            "",
            markdown_table(["metric", *(f"{e} {m}" for e, m in cols)], rows),
            "",
        ]
        if self.notes:
            parts += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        figs = self._figure_names()
        if figs:
            parts += ["## Confusion matrices", ""]
            parts += [f"### {e} {m}\n\n![confusion {e} {m}]({n})\n" for (e, m), n in figs.items()]
        s = self.settings
        parts += [
            "## Settings",
            "",
            f"- kNN: k = {s['k']}, cosine, weights = {s['weights']}; logistic regression: "
            "StandardScaler + LogisticRegression (C = 1, max_iter = 1000)",
            f"- min_confidence = {s['min_confidence']}; reference backend = {s['backend']}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()),
            "",
        ]
        return "\n".join(parts)

    def figures(self) -> dict[str, bytes]:
        names = self._figure_names()
        return {names[key]: _confusion_png(key, *value) for key, value in self.confusion.items()}

    def write(self, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
        """Write ``report.md``, ``report.json`` and the confusion-matrix PNGs, atomically.

        A file of the report that exists in ``out_dir`` is refused unless ``overwrite``.
        """
        return write_report_files(
            Path(out_dir), self.figures(), self.to_dict(), self.to_markdown(), overwrite=overwrite
        )


def _confusion_png(
    key: tuple[str, str], true: list[str], pred: list[str], counts: np.ndarray
) -> bytes:
    n_t, n_p = counts.shape
    fig = new_figure(max(4.5, 0.45 * n_p + 3.0), max(3.5, 0.4 * n_t + 2.0))
    ax = fig.subplots()
    totals = counts.sum(axis=1, keepdims=True)
    frac = counts / np.where(totals > 0, totals, 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_p), pred, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n_t), true, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (query)")
    ax.set_title(f"{key[0]} — {key[1]} (row fractions; counts)", fontsize=9)
    if n_t * n_p <= 900:
        for i in range(n_t):
            for j in range(n_p):
                if counts[i, j]:
                    color = "white" if frac[i, j] > 0.6 else "black"
                    ax.text(
                        j,
                        i,
                        str(int(counts[i, j])),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color=color,
                    )
    fig.colorbar(im, ax=ax, fraction=0.04)
    return figure_png(fig)


def _entries(
    obsm_keys: Iterable[str | Sequence[str]] | None, default: list[str]
) -> list[list[str]]:
    if obsm_keys is None:
        return [default]
    out = []
    for entry in obsm_keys:
        out.append([entry] if isinstance(entry, str) else [str(k) for k in entry])
    if not out:
        msg = "obsm_keys names no embedding"
        raise InputError(msg)
    return out


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f),
        "macro_precision": float(p),
        "macro_recall": float(r),
    }


def evaluate_transfer(
    query: AnnData,
    reference: AnnData | ReferenceIndex | str | os.PathLike[str],
    *,
    label_key: str | None = None,
    query_label_key: str | None = None,
    obsm_keys: Iterable[str | Sequence[str]] | None = None,
    methods: Sequence[str] = ("knn", "logreg"),
    k: int = 15,
    weights: str = "distance",
    min_confidence: float | None = None,
    backend: str = "auto",
    exclude_labels: Iterable[str] = DEFAULT_EXCLUDE_LABELS,
    compare_exact: bool = True,
    unknown_label: str = "Unknown",
    allow_mismatch: bool = False,
    n_threads: int | None = None,
) -> TransferEvalReport:
    """Transfer labels from ``reference`` to ``query`` and score them against the query's own.

    Parameters
    ----------
    query
        Cells with embeddings in ``obsm`` and true labels in ``obs[query_label_key]``.
    reference
        AnnData, :class:`~genept_fast.annotate.ReferenceIndex`, or the path of an index or an
        ``.h5ad`` / ``.zarr``.
    label_key
        Reference label column (default: the index's); ``query_label_key`` defaults to it.
    obsm_keys
        Embeddings to score, each a key or a list of keys (an ensemble), e.g.
        ``["X_genept_w", "X_genept_s", ["X_genept_w", "X_genept_s"], "X_pca"]``.
        Default: the index's keys, or ``"X_genept_w"``.
    methods
        ``"knn"`` and/or ``"logreg"``.
    k, weights, min_confidence
        As in :func:`~genept_fast.annotate.transfer_labels`.
    backend
        Reference index backend when it is built here (``"auto"``, ``"exact"``, ``"ivf"``,
        ``"hnsw"``).
    exclude_labels
        Query cells with these labels (case-insensitive) are not scored; missing labels never.
    compare_exact
        With an approximate (IVF, HNSW) reference, also predict by exact search and report the
        agreement.
    unknown_label, allow_mismatch
        As in :func:`~genept_fast.annotate.transfer_labels`: a reference label that reads like
        the reject label is refused, and so is a query embedded differently from the reference
        unless ``allow_mismatch`` (then the report's notes say so).
    n_threads
        Threads (BLAS and faiss).
    """
    from genept_fast.annotate import build_reference
    from genept_fast.annotate._io import AnnDataEmbeddings
    from genept_fast.annotate._transfer import check_compatible, check_unknown_label

    methods = _check_methods(methods, weights, k, min_confidence, backend)
    given_index, label_key, entries = _reference_entries(reference, label_key, obsm_keys)
    qkey = query_label_key or label_key
    exclude = tuple(str(x) for x in exclude_labels)
    q = _query_truth(query, qkey, exclude)
    sub = query[q.keep]
    opts = _PredictOptions(k, weights, min_confidence, unknown_label, compare_exact, n_threads)

    results: dict[str, dict[str, dict[str, Any]]] = {}
    confusion: dict[tuple[str, str], tuple[list[str], list[str], np.ndarray]] = {}
    notes: list[str] = []
    backends = set()
    index = given_index
    for keys in entries:
        name = "+".join(keys)
        if given_index is None:
            index = build_reference(
                reference,
                label_key=label_key,
                obsm_key=keys,
                backend=backend,  # type: ignore[arg-type]
                logreg="logreg" in methods,
                n_threads=n_threads,
            )
        assert index is not None
        check_unknown_label(index, unknown_label)
        backends.add(index.backend)
        src = AnnDataEmbeddings(sub, keys, what="query ")
        for diff in check_compatible(index, src, keys, allow_mismatch=allow_mismatch):
            notes.append(f"provenance differs, scored anyway (allow_mismatch): {diff}")
        results[name] = {}
        for method in methods:
            res, y_pred = _score_method(index, src, q.truth, method, opts)
            results[name][method] = res
            confusion[(name, method)] = _confusion(q.truth, y_pred, index.classes)

    assert index is not None
    ref_counts = index.label_counts()
    unseen = sorted(set(q.truth.tolist()) - set(ref_counts))
    notes += _reference_notes(index, q.truth, unseen)
    settings = {
        "label_key": label_key,
        "query_label_key": qkey,
        "obsm_keys": ["+".join(e) for e in entries],
        "methods": methods,
        "k": int(k),
        "weights": weights,
        "min_confidence": "none" if min_confidence is None else float(min_confidence),
        "backend": ", ".join(sorted(backends)),
        "exclude_labels": list(exclude),
        "unknown_label": unknown_label,
        "versions": versions("genept-fast", "scikit-learn", "faiss-cpu", "numpy"),
    }
    labels_q, counts_q = np.unique(q.truth, return_counts=True)
    cells = {
        "n_query": int(query.n_obs),
        "n_evaluated": int(q.keep.sum()),
        "n_excluded_label": int(q.excluded.sum()),
        "n_missing_label": int(q.missing.sum()),
        "n_reference": index.n_cells,
        "n_reference_zero_excluded": index.n_zero_excluded,
        "reference_label_counts": ref_counts,
        "query_label_counts": {str(a): int(b) for a, b in zip(labels_q, counts_q, strict=True)},
        "labels_not_in_reference": unseen,
    }
    return TransferEvalReport(
        settings=settings, cells=cells, results=results, confusion=confusion, notes=notes
    )


def _check_methods(
    methods: Sequence[str], weights: str, k: int, min_confidence: float | None, backend: str
) -> list[str]:
    from genept_fast.annotate._index import BACKENDS
    from genept_fast.annotate._transfer import _check_method

    methods = list(methods)
    if not methods:
        msg = "methods names no method"
        raise InputError(msg)
    for m in methods:
        _check_method(m, weights, k, min_confidence)
    if backend not in BACKENDS:
        msg = f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        raise InputError(msg)
    return methods


def _reference_entries(
    reference: Any, label_key: str | None, obsm_keys: Iterable[str | Sequence[str]] | None
) -> tuple[ReferenceIndex | None, str, list[list[str]]]:
    """The saved index given (if one is), the reference label column and the embeddings
    to score."""
    from genept_fast.annotate import ReferenceIndex
    from genept_fast.annotate._transfer import is_index_file

    given_index = None
    if isinstance(reference, ReferenceIndex):
        given_index = reference
    elif isinstance(reference, (str, os.PathLike)) and is_index_file(reference):
        given_index = ReferenceIndex.load(reference)
    if given_index is None:
        if label_key is None:
            msg = "label_key is required when the reference is not a saved index"
            raise InputError(msg)
        return None, label_key, _entries(obsm_keys, ["X_genept_w"])
    if label_key is not None and label_key != given_index.label_key:
        msg = f"the reference index holds labels from obs[{given_index.label_key!r}]"
        raise InputError(msg)
    return given_index, given_index.label_key, _entries(obsm_keys, given_index.obsm_keys)


@dataclass
class _Truth:
    """The query cells scored (``keep``), their true labels, and those left out."""

    keep: np.ndarray
    truth: np.ndarray
    excluded: np.ndarray
    missing: np.ndarray


def _query_truth(query: AnnData, qkey: str, exclude: tuple[str, ...]) -> _Truth:
    if qkey not in query.obs:
        msg = f"query obs has no column {qkey!r}; available: {list(query.obs.columns)}"
        raise InputError(msg)
    exclude_cf = {x.strip().casefold() for x in exclude}
    truth_all, missing = _as_str_labels(query.obs[qkey].to_numpy())
    excluded = np.array([t.strip().casefold() in exclude_cf for t in truth_all], dtype=bool)
    excluded &= ~missing
    keep = ~missing & ~excluded
    if not keep.any():
        msg = f"no query cell has a label in obs[{qkey!r}] to score against"
        raise InputError(msg)
    return _Truth(keep, truth_all[keep].astype(str), excluded, missing)


@dataclass
class _PredictOptions:
    k: int
    weights: str
    min_confidence: float | None
    unknown_label: str
    compare_exact: bool
    n_threads: int | None


def _score_method(
    index: ReferenceIndex, src: Any, truth: np.ndarray, method: str, opts: _PredictOptions
) -> tuple[dict[str, Any], np.ndarray]:
    """The scores of one method on one embedding, and its predicted labels."""
    from genept_fast.annotate._transfer import predict

    def run(method: str, *, exact: bool = False) -> Any:
        return predict(
            index,
            src,
            k=opts.k,
            method=method,  # type: ignore[arg-type]
            weights=opts.weights,  # type: ignore[arg-type]
            min_confidence=opts.min_confidence,
            exact=exact,
            n_threads=opts.n_threads,
        )

    def labels(pred: Any) -> np.ndarray:
        return np.asarray(pred.categorical(index.classes, True, opts.unknown_label).astype(str))

    pred = run(method)
    y_pred = labels(pred)
    res: dict[str, Any] = _scores(truth, y_pred)
    res["unknown_fraction"] = float((pred.codes < 0).mean())
    res["mean_confidence"] = float(pred.confidence.mean())
    if method == "knn" and index.backend != "exact" and opts.compare_exact:
        ex = run("knn", exact=True)
        res["exact_agreement"] = float((ex.codes == pred.codes).mean())
        res["exact_accuracy"] = _scores(truth, labels(ex))["accuracy"]
    return res, y_pred


def _reference_notes(index: ReferenceIndex, truth: np.ndarray, unseen: list[str]) -> list[str]:
    notes = []
    if unseen:
        n_unseen = int(np.isin(truth, unseen).sum())
        notes.append(
            f"{n_unseen} query cells have labels the reference lacks (always wrong): {unseen}"
        )
    if index.n_zero_excluded:
        notes.append(
            f"{index.n_zero_excluded} reference cells with an all-zero embedding were left out "
            "of the index"
        )
    return notes


def _confusion(
    truth: np.ndarray, pred: np.ndarray, classes: list[str]
) -> tuple[list[str], list[str], np.ndarray]:
    from sklearn.metrics import confusion_matrix

    true_labels = sorted(set(truth.tolist()))
    pred_labels = [c for c in classes if c in set(pred.tolist()) or c in true_labels]
    pred_labels += sorted(set(pred.tolist()) - set(pred_labels))
    labels = sorted(set(true_labels) | set(pred_labels))
    m = confusion_matrix(truth, pred, labels=labels)
    rows = [labels.index(t) for t in true_labels]
    cols = [labels.index(p) for p in pred_labels]
    return true_labels, pred_labels, m[np.ix_(rows, cols)]
