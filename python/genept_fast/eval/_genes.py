"""Gene-level evaluation: binary gene classification from gene embeddings (GenePT Table 1).

Labels are matched to embedded genes through the gene-identity layer
(:mod:`genept_fast.genes.match`): by symbol (current, alias or previous), Ensembl id (with or
without version), Entrez id or ortholog, whatever form the table's keys take; a label that
could name several genes is reported as ambiguous, never guessed. Each task runs 5-fold
stratified cross-validation of a logistic regression and a random forest, reports ROC AUC
mean ± sd over folds, and repeats both models on a random Gaussian embedding of the same shape
on the same folds (the paper's negative control).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast._extras import require_extra
from genept_fast.errors import InputError
from genept_fast.eval._io import (
    figure_png,
    fmt,
    markdown_table,
    new_figure,
    palette,
    versions,
    write_report_files,
)
from genept_fast.genes.match import index_keys, match_genes

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt
    import pandas as pd

__all__ = ["GENE_MODELS", "GeneEvalReport", "GeneLabels", "evaluate_genes", "read_gene_labels"]

#: Model names accepted by :func:`evaluate_genes`.
GENE_MODELS = ("logistic_regression", "random_forest")

_ID_COLUMNS = (  # in matching priority: Ensembl ids first, then symbols, then generic ids
    "ensembl_id",
    "ensembl_gene_id",
    "ensembl",
    "gene_id",
    "gene",
    "gene_name",
    "gene_symbol",
    "symbol",
)
_LABEL_COLUMNS = ("label", "class", "y", "target", "category")
_YES = {"yes", "y", "true", "1", "x"}
_ROC_GRID = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class GeneLabels:
    """A gene label table: candidate ids per labelled gene and its class.

    Attributes
    ----------
    ids
        For each labelled gene, its ids in matching priority (Ensembl id, then symbol).
    labels
        The class of each labelled gene.
    id_columns
        The table columns the ids came from.
    source
        Where the labels were read from and how (``"label column 'label'"`` or
        ``"flag columns [...]"``).
    n_dropped
        Rows left out: no class flagged, several classes flagged, or no id.
    """

    ids: tuple[tuple[str, ...], ...]
    labels: tuple[str, ...]
    id_columns: tuple[str, ...]
    source: str
    n_dropped: int = 0

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def _cell(v: Any) -> str | None:
    """A table cell as stripped text, ``None`` when empty or missing."""
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _label_columns(df: pd.DataFrame) -> tuple[list[Any], Any]:
    """The id columns and the label column (``None``: flag columns) of a label table."""
    lower = {str(c).strip().casefold(): c for c in df.columns}
    id_cols = [lower[c] for c in _ID_COLUMNS if c in lower]
    label_col = next((lower[c] for c in _LABEL_COLUMNS if c in lower), None)
    if not id_cols and label_col is None and df.shape[1] == 2:
        id_cols, label_col = [df.columns[0]], df.columns[1]
    if not id_cols:
        msg = (
            f"no gene id column in the label table (columns: {list(df.columns)}); "
            f"expected one of {list(_ID_COLUMNS)}"
        )
        raise InputError(msg)
    return id_cols, label_col


def _flag_labels(
    df: pd.DataFrame, text: pd.DataFrame, id_cols: list[Any]
) -> tuple[str, list[str | None]]:
    """Each row's class from flag columns: the one column flagged, else ``None``."""
    flag_cols = []
    for c in df.columns:
        if c in id_cols:
            continue
        vals = {_cell(v) for v in text[c]} - {None}
        if vals and all(str(v).casefold() in _YES for v in vals):
            flag_cols.append(c)
    if not flag_cols:
        msg = (
            f"no label column in the label table (columns: {list(df.columns)}); expected one "
            f"of {list(_LABEL_COLUMNS)} or flag columns marked 'Yes'"
        )
        raise InputError(msg)
    row_labels: list[str | None] = []
    for _, row in text.iterrows():
        hit = [str(c) for c in flag_cols if _cell(row[c]) is not None]
        row_labels.append(hit[0] if len(hit) == 1 else None)
    return f"flag columns {[str(c) for c in flag_cols]}", row_labels


def read_gene_labels(labels: str | Path | pd.DataFrame | Any) -> GeneLabels:
    """Read a gene label table (CSV, TSV or parquet path, or a pandas/polars DataFrame).

    Two layouts are understood:

    - a label column (``label``, ``class``, ``y``, ``target`` or ``category``) next to id
      columns (``gene``, ``gene_name``, ``symbol``, ``ensembl_id``, ``gene_id``, ...); a table of
      exactly two unrecognised columns is read as ``gene, label``;
    - flag columns, as in Geneformer's dosage-sensitivity file
      (``ensembl_id,gene_name,dosage_insensitive,dosage_sensitive`` with ``"Yes"`` flags): each
      row's class is the name of the one column flagged (yes/true/1/x); rows with none or several
      flags are dropped.
    """
    df = _read_table(labels)
    if df.shape[0] == 0:
        msg = "the gene label table is empty"
        raise InputError(msg)
    id_cols, label_col = _label_columns(df)
    text = df.astype(object).where(df.notna(), None)
    if label_col is not None:
        source = f"label column {str(label_col)!r}"
        row_labels = [_cell(v) for v in text[label_col]]
    else:
        source, row_labels = _flag_labels(df, text, id_cols)
    ids_out: list[tuple[str, ...]] = []
    labels_out: list[str] = []
    dropped = 0
    for (_, row), lab in zip(text.iterrows(), row_labels, strict=True):
        ids = tuple(dict.fromkeys(i for i in (_cell(row[c]) for c in id_cols) if i is not None))
        if lab is None or not ids:
            dropped += 1
            continue
        ids_out.append(ids)
        labels_out.append(lab)
    if not labels_out:
        msg = "no labelled genes in the label table"
        raise InputError(msg)
    return GeneLabels(
        ids=tuple(ids_out),
        labels=tuple(labels_out),
        id_columns=tuple(str(c) for c in id_cols),
        source=source,
        n_dropped=dropped,
    )


def _read_table(labels: Any) -> pd.DataFrame:
    import pandas as pd

    if isinstance(labels, pd.DataFrame):
        return labels
    if hasattr(labels, "to_pandas") and hasattr(labels, "columns"):  # polars
        return labels.to_pandas()
    path = Path(labels)
    if not path.exists():
        msg = f"gene label file not found: {str(path)!r}"
        raise FileNotFoundError(msg)
    suffix = "".join(path.suffixes[-2:]).casefold()
    if suffix.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    sep = "\t" if suffix.endswith((".tsv", ".tab", ".txt", ".tsv.gz", ".txt.gz")) else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=True)
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"cannot read gene label table {str(path)!r}: {exc}"
        raise InputError(msg) from exc


@dataclass
class GeneEvalReport:
    """Result of :func:`evaluate_genes`.

    Attributes
    ----------
    settings
        Seed, folds, models and their parameters, positive class, library versions.
    matching
        How many labelled genes had an embedding (``n_labelled``, ``n_matched``,
        ``n_unmatched``, ``n_zero_embedding``, ``n_conflicting``, ``n_duplicate_entries``,
        ``unmatched`` genes), and the
        class counts of the matched genes.
    results
        ``{embedding: {model: {"auc_mean", "auc_sd", "fold_aucs"}}}`` with the embedding under
        its name and the control under ``"random control"``.
    roc
        ``{embedding: {model: mean TPR on a 101-point FPR grid}}`` for the ROC plot.
    """

    settings: dict[str, Any]
    matching: dict[str, Any]
    results: dict[str, dict[str, dict[str, Any]]]
    roc: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything, as plain JSON-able values (the ROC curves included)."""
        return {
            "kind": "genept-fast gene-level evaluation",
            "settings": self.settings,
            "matching": self.matching,
            "results": self.results,
            "roc": {"fpr": _ROC_GRID.tolist(), "mean_tpr": self.roc},
            "figures": ["roc.png"] if self.settings["plots"] else [],
        }

    def to_markdown(self) -> str:
        """The report as Markdown: AUC of every model on the embedding and the control."""
        s = self.settings
        m = self.matching
        names = list(self.results)
        rows = [
            [model] + [_auc_text(self.results[e][model]) for e in names] for model in s["models"]
        ]
        unmatched = m["unmatched"]
        more = f" (and {len(unmatched) - 20} more)" if len(unmatched) > 20 else ""
        parts = [
            f"# Gene-level evaluation: {s['task']}",
            "",
            f"Positive class: `{s['positive']}` ({m['class_counts'][s['positive']]} genes) vs "
            f"`{s['negative']}` ({m['class_counts'][s['negative']]} genes).",
            "",
            f"{m['n_matched']} of {m['n_labelled']} labelled genes had an embedding "
            f"({m['n_unmatched']} not in the table, {m['n_zero_embedding']} with an all-zero "
            f"embedding, {m['n_conflicting']} with conflicting labels, "
            f"{m['n_duplicate_entries']} duplicate entries, {m['n_ambiguous']} ambiguous, "
            f"{m['n_shadowed']} naming a gene another label names directly).",
            "",
            "ROC AUC, mean ± sd over folds:",
            "",
            markdown_table(["model", *names], rows),
            "",
        ]
        if unmatched:
            listed = ", ".join(unmatched[:20])
            parts += [f"Labelled genes without an embedding: {listed}{more}.", ""]
        if m["ambiguous"]:
            listed = "; ".join(
                f"{g} → {' | '.join(c)}" for g, c in list(m["ambiguous"].items())[:20]
            )
            parts += [f"Ambiguous labels (left out, never guessed): {listed}.", ""]
        if s["plots"]:
            parts += ["![ROC curves](roc.png)", ""]
        parts += [
            "## Settings",
            "",
            f"- labels: {s['label_source']}; genes matched through the identity layer "
            f"({', '.join(f'{k} {v}' for k, v in m['by_method'].items())})",
            f"- {s['n_splits']}-fold stratified cross-validation, shuffle, random_state = "
            f"{s['seed']}; sd over folds with ddof = 0",
            f"- logistic regression: StandardScaler + LogisticRegression(C = "
            f"{s['logistic_regression']['C']}, max_iter = {s['logistic_regression']['max_iter']})",
            f"- random forest: RandomForestClassifier(n_estimators = "
            f"{s['random_forest']['n_estimators']}, random_state = {s['seed']})",
            f"- random control: standard-normal embedding of the same shape "
            f"({m['n_matched']} × {s['dim']}), seed = {s['seed']}, same folds"
            if s["random_control"]
            else "- random control: off",
            *[f"- embedding {k}: {v}" for k, v in s["provenance"].items()],
            "- versions: " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()),
            "",
        ]
        return "\n".join(parts)

    def figures(self) -> dict[str, bytes]:
        """PNG bytes of the ROC plot (``roc.png``), empty when ``plots=False``."""
        if not self.settings["plots"]:
            return {}
        fig = new_figure(6.0, 5.0)
        ax = fig.subplots()
        combos = [(e, mo) for e in self.results for mo in self.results[e]]
        colors = palette(len(self.settings["models"]))
        for e, mo in combos:
            r = self.results[e][mo]
            color = colors[self.settings["models"].index(mo)]
            ax.plot(
                _ROC_GRID,
                self.roc[e][mo],
                color=color,
                linestyle="--" if e == "random control" else "-",
                label=f"{e}, {mo}: AUC {r['auc_mean']:.3f} ± {r['auc_sd']:.3f}",
            )
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{self.settings['task']} (mean over {self.settings['n_splits']} folds)")
        ax.legend(loc="lower right", fontsize=7)
        return {"roc.png": figure_png(fig)}

    def write(self, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
        """Write ``report.md``, ``report.json`` and ``roc.png`` into ``out_dir``, atomically.

        A report file that exists already is refused unless ``overwrite=True``; nothing else in
        ``out_dir`` is touched. Returns the paths by file name.
        """
        return write_report_files(
            Path(out_dir), self.figures(), self.to_dict(), self.to_markdown(), overwrite=overwrite
        )


def _auc_text(result: dict[str, Any]) -> str:
    return f"{fmt(result['auc_mean'])} ± {fmt(result['auc_sd'])}"


def _model(name: str, seed: int, n_jobs: int | None, n_estimators: int, c: float) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic_regression":
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed)
        )
    return RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)


def _cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    model_name: str,
    *,
    seed: int,
    n_jobs: int | None,
    n_estimators: int,
    c: float,
) -> tuple[dict[str, Any], list[float]]:
    from sklearn.metrics import roc_auc_score, roc_curve

    aucs: list[float] = []
    tprs: list[np.ndarray] = []
    for train, test in folds:
        model = _model(model_name, seed, n_jobs, n_estimators, c).fit(X[train], y[train])
        score = model.predict_proba(X[test])[:, 1]
        aucs.append(float(roc_auc_score(y[test], score)))
        fpr, tpr, _ = roc_curve(y[test], score)
        t = np.interp(_ROC_GRID, fpr, tpr)
        t[0] = 0.0
        tprs.append(t)
    mean_tpr = np.mean(tprs, axis=0)
    mean_tpr[-1] = 1.0
    a = np.asarray(aucs)
    return (
        {"auc_mean": float(a.mean()), "auc_sd": float(a.std()), "fold_aucs": aucs},
        [float(v) for v in mean_tpr],
    )


def _check_gene_matrix(matrix: npt.ArrayLike, n_genes: int) -> np.ndarray:
    E = np.asarray(matrix)
    if E.ndim != 2 or E.shape[0] != n_genes:
        msg = f"matrix must be genes × D with {n_genes} rows, got shape {E.shape}"
        raise InputError(msg)
    if not (np.issubdtype(E.dtype, np.floating) or np.issubdtype(E.dtype, np.integer)):
        msg = f"matrix has non-numeric dtype {E.dtype}"
        raise InputError(msg)
    return E


def _as_gene_labels(labels: Any) -> GeneLabels:
    if isinstance(labels, GeneLabels):
        return labels
    if isinstance(labels, Mapping):
        items = list(labels.items())
        return GeneLabels(
            ids=tuple((str(g),) for g, _ in items),
            labels=tuple(str(v) for _, v in items),
            id_columns=("gene",),
            source="mapping gene → class",
        )
    return read_gene_labels(labels)


def _positive_class(classes: Sequence[str], positive: str | None) -> tuple[str, str]:
    """The positive class (default: the one that sorts last) and the name of the other side."""
    if positive is None:
        if len(classes) != 2:
            msg = (
                f"the labels have {len(classes)} classes {classes[:10]}; a binary task needs 2, "
                "or name the positive class (positive=...) for a one-vs-rest task"
            )
            raise InputError(msg)
        positive = classes[-1]
    positive = str(positive)
    if positive not in classes:
        msg = f"positive class {positive!r} is not among the labels {classes[:10]}"
        raise InputError(msg)
    negative = next(c for c in classes if c != positive) if len(classes) == 2 else f"not {positive}"
    return positive, negative


@dataclass
class _LabelMatch:
    """Labelled genes met with embedding rows: each row's one label, and what did not meet."""

    row_label: dict[int, str]
    n_rows: int
    n_entries: int
    n_conflicting: int
    n_zero: int
    n_shadowed: int
    unmatched: list[str]
    ambiguous: dict[str, list[str]]
    by_method: dict[str, int]


def _match_labels(table: GeneLabels, gene_list: list[str], E: np.ndarray) -> _LabelMatch:
    """Labels and table keys meet through the gene-identity layer (symbols, aliases, previous
    symbols, Ensembl with or without version, Entrez, orthologs): ambiguity is reported, never
    guessed. Each labelled gene is looked up by its first id, then by its second. A row with
    two different labels is left out (conflicting)."""
    first = [ids[0] for ids in table.ids]
    second = [ids[1] if len(ids) > 1 else None for ids in table.ids]
    nonzero: np.ndarray = np.asarray(E.any(axis=1))
    found, coverage = match_genes(
        first,
        index_keys(gene_list),
        nonzero=nonzero,
        alternatives=second if any(second) else None,
    )
    row_labels: dict[int, set[str]] = {}
    n_entries = n_zero = n_shadowed = 0
    unmatched: list[str] = []
    ambiguous: dict[str, list[str]] = {}
    for i, (ids, lab) in enumerate(zip(table.ids, table.labels, strict=True)):
        if coverage.methods[i] is None:
            if first[i] in coverage.ambiguous:
                ambiguous[" / ".join(ids)] = coverage.ambiguous[first[i]]
            elif first[i] in coverage.shadowed:
                n_shadowed += 1  # another label names the same gene directly
            else:
                unmatched.append(" / ".join(ids))
            continue
        row = int(found[i])
        if row < 0:
            n_zero += 1
            continue
        n_entries += 1
        row_labels.setdefault(row, set()).add(lab)
    return _LabelMatch(
        row_label={r: next(iter(labs)) for r, labs in row_labels.items() if len(labs) == 1},
        n_rows=len(row_labels),
        n_entries=n_entries,
        n_conflicting=sum(len(labs) > 1 for labs in row_labels.values()),
        n_zero=n_zero,
        n_shadowed=n_shadowed,
        unmatched=unmatched,
        ambiguous=ambiguous,
        by_method=coverage.by_method,
    )


def _score_embeddings(
    embeddings: dict[str, np.ndarray],
    y: np.ndarray,
    models: Sequence[str],
    *,
    n_splits: int,
    seed: int,
    n_jobs: int | None,
    n_estimators: int,
    c: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """Every model on every embedding, on the same stratified folds."""
    from sklearn.model_selection import StratifiedKFold

    first = next(iter(embeddings.values()))
    folds = list(
        StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(first, y)
    )
    results: dict[str, dict[str, Any]] = {}
    roc: dict[str, dict[str, list[float]]] = {}
    for emb_name, M in embeddings.items():
        results[emb_name] = {}
        roc[emb_name] = {}
        for mo in models:
            res, tpr = _cross_validate(
                M, y, folds, mo, seed=seed, n_jobs=n_jobs, n_estimators=n_estimators, c=c
            )
            results[emb_name][mo] = res
            roc[emb_name][mo] = tpr
    return results, roc


def evaluate_genes(
    genes: Sequence[str],
    matrix: npt.ArrayLike,
    labels: str | Path | pd.DataFrame | GeneLabels | Mapping[str, Any] | Any,
    *,
    seed: int = 2023,
    n_splits: int = 5,
    positive: str | None = None,
    models: Sequence[str] = GENE_MODELS,
    random_control: bool = True,
    name: str = "embedding",
    task: str | None = None,
    n_estimators: int = 100,
    logreg_c: float = 1.0,
    plots: bool = True,
    n_jobs: int | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> GeneEvalReport:
    """Binary gene classification from gene embeddings, against a random-embedding control.

    Parameters
    ----------
    genes
        Gene ids of the embedding rows (symbols or Ensembl ids).
    matrix
        Genes × D embedding matrix. All-zero rows (genes without text) count as missing.
    labels
        A label table (path to CSV/TSV/parquet, pandas or polars DataFrame; see
        :func:`read_gene_labels`), a :class:`GeneLabels`, or a mapping ``{gene: class}``.
    seed
        Seed of the fold assignment, the models and the random control.
    n_splits
        Folds of the stratified cross-validation (shuffled).
    positive
        The positive class. Default: the class that sorts last (``dosage_sensitive`` over
        ``dosage_insensitive``, ``1`` over ``0``). With more than two classes it is required and
        the task becomes ``positive`` vs the rest.
    models
        Any of ``"logistic_regression"`` (standardised features) and ``"random_forest"``.
    random_control
        Also score a standard-normal embedding of the same shape on the same folds.
    name
        Name of the embedding in the report.
    task
        Title of the task in the report (default: ``"<positive> vs <negative>"``).
    n_estimators, logreg_c
        Trees of the random forest; inverse regularisation of the logistic regression.
    plots
        Render ``roc.png`` when the report is written.
    n_jobs
        Parallel jobs of the random forest (``None``: one).
    provenance
        Where the embedding came from (file, model id, text source); copied into the settings.

    Returns
    -------
    A :class:`GeneEvalReport`; ``report.write(out_dir)`` writes ``report.md``, ``report.json``
    and ``roc.png``.
    """
    require_extra("eval", "gene-level evaluation")
    gene_list = [str(g) for g in genes]
    E = _check_gene_matrix(matrix, len(gene_list))
    bad_models = [mo for mo in models if mo not in GENE_MODELS]
    if bad_models or not models:
        msg = f"unknown models {bad_models}; choose from {list(GENE_MODELS)}"
        raise InputError(msg)
    if n_splits < 2:
        msg = f"n_splits must be ≥ 2, got {n_splits}"
        raise InputError(msg)
    table = _as_gene_labels(labels)
    positive, negative = _positive_class(table.classes, positive)
    m = _match_labels(table, gene_list, E)
    rows = np.array(sorted(m.row_label), dtype=np.int64)
    y = np.array([m.row_label[r] == positive for r in rows.tolist()], dtype=np.int64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < n_splits:
        msg = (
            f"{n_pos} {positive!r} and {n_neg} {negative!r} genes have an embedding; each class "
            f"needs at least n_splits = {n_splits}"
        )
        raise InputError(msg)
    X = np.ascontiguousarray(E[rows], dtype=np.float64)
    if not np.isfinite(X).all():
        msg = "the embeddings of the labelled genes hold NaN or infinite values"
        raise InputError(msg)
    embeddings: dict[str, np.ndarray] = {name: X}
    if random_control:
        rng = np.random.default_rng(seed)
        embeddings["random control"] = rng.standard_normal(X.shape)
    results, roc = _score_embeddings(
        embeddings,
        y,
        models,
        n_splits=n_splits,
        seed=seed,
        n_jobs=n_jobs,
        n_estimators=n_estimators,
        c=logreg_c,
    )

    settings: dict[str, Any] = {
        "task": task or f"{positive} vs {negative}",
        "name": name,
        "positive": positive,
        "negative": negative,
        "seed": seed,
        "n_splits": n_splits,
        "models": list(models),
        "logistic_regression": {"C": logreg_c, "max_iter": 2000, "standardize": True},
        "random_forest": {"n_estimators": n_estimators},
        "random_control": random_control,
        "dim": int(E.shape[1]),
        "label_source": table.source,
        "plots": plots,
        "provenance": dict(provenance or {}),
        "versions": versions("genept-fast", "scikit-learn", "numpy"),
    }
    matching = {
        "n_labelled": len(table.labels),
        "n_label_rows_dropped": table.n_dropped,
        "n_matched": len(rows),
        "n_unmatched": len(m.unmatched),
        "n_zero_embedding": m.n_zero,
        "n_conflicting": m.n_conflicting,
        "n_duplicate_entries": m.n_entries - m.n_rows,
        "n_ambiguous": len(m.ambiguous),
        "n_shadowed": m.n_shadowed,
        "by_method": m.by_method,
        "class_counts": {positive: n_pos, negative: n_neg},
        "unmatched": m.unmatched,
        "ambiguous": m.ambiguous,
    }
    return GeneEvalReport(settings=settings, matching=matching, results=results, roc=roc)
