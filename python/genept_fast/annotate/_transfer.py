"""Label transfer: each query cell gets a reference label and a confidence in [0, 1].

Methods:

- ``"knn"`` with ``weights="distance"`` (default): the ``k`` most similar reference cells by
  cosine similarity vote, each with weight ``1 / d`` where ``d = 1 - cosine`` is the cosine
  distance (scikit-learn's ``weights="distance"``: when a neighbour is at distance 0, only the
  neighbours at distance 0 vote). The confidence is the winning label's share of the total
  weight.
- ``"knn"`` with ``weights="uniform"``: a plain majority vote (the GenePT paper's protocol with
  ``k = 10``); the confidence is the fraction of the ``k`` neighbours with the winning label.
- ``"logreg"``: multinomial logistic regression on the standardised reference vectors
  (scikit-learn); the confidence is the predicted label's probability.

Ties go to the label that sorts first. A query cell whose embedding is all zero (a GenePT-w cell
without an embedded gene, a GenePT-s cell without a gene) has no neighbours worth the name: it
gets the reject label (``"Unknown"`` unless ``unknown_label`` says otherwise) and confidence 0.
With ``min_confidence``, every prediction below it gets the reject label too.

Before anything is predicted, three rules keep an answer from being silently wrong:

- a reference label that reads like the reject label (``"Unknown"``, ``" unknown"``: compared
  stripped and case-folded) is refused, since a prediction and a rejection would look the same:
  pass another ``unknown_label``, or rename or drop those reference cells;
- the query must hold the reference's embeddings with the same dimensions, and where both sides
  recorded what made an embedding (``uns[key]["params"]``: method, model, dimension, text source),
  the same provenance; a difference raises :class:`ProvenanceMismatchError` naming both sides,
  unless ``allow_mismatch=True`` (then a warning, and ``uns[key_added]["params"]`` records it);
- reference cells whose embedding is all zero are not in the index (:func:`build_reference`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from genept_fast._outputs import check_key
from genept_fast.annotate._index import (
    _HDF5_SIGNATURE,
    CHUNK_CELLS,
    FORMAT,
    HEADER_BYTES,
    MAGIC,
    ReferenceIndex,
    build_reference,
)
from genept_fast.annotate._io import (
    AnnDataEmbeddings,
    EmbeddingSource,
    combine,
    obsm_keys_arg,
    positive_int,
)
from genept_fast.annotate._search import threads
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData

__all__ = [
    "UNKNOWN",
    "Predictions",
    "ProvenanceMismatchError",
    "check_compatible",
    "check_unknown_label",
    "is_index_file",
    "jsonable",
    "predict",
    "transfer_labels",
    "vote",
]

log = logging.getLogger(__name__)

#: The label of a cell that could not be annotated.
UNKNOWN = "Unknown"

Method = Literal["knn", "logreg"]
Weights = Literal["distance", "uniform"]


def vote(
    similarity: np.ndarray, neighbours: np.ndarray, labels: np.ndarray, n_classes: int, weights: str
) -> tuple[np.ndarray, np.ndarray]:
    """Label code and confidence of each query from its neighbours (see the module docstring)."""
    lab = labels[neighbours]
    n_q, k = lab.shape
    if weights == "uniform":
        w = np.ones((n_q, k), dtype=np.float64)
    else:
        d = np.maximum(1.0 - similarity.astype(np.float64), 0.0)
        exact = d <= 0.0
        with np.errstate(divide="ignore"):
            w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), 1.0 / d)
    rows = np.repeat(np.arange(n_q), k)
    scores = np.bincount(
        rows * n_classes + lab.reshape(-1), weights=w.reshape(-1), minlength=n_q * n_classes
    ).reshape(n_q, n_classes)
    code = scores.argmax(axis=1)
    total = scores.sum(axis=1)
    conf = np.take_along_axis(scores, code[:, None], axis=1)[:, 0] / np.where(total > 0, total, 1)
    return code.astype(np.int32), np.clip(conf, 0.0, 1.0).astype(np.float32)


class Predictions:
    """Label codes (``-1`` for "Unknown") and confidences of query cells, filled by chunks."""

    def __init__(self, n: int) -> None:
        self.codes = np.full(n, -1, dtype=np.int32)
        self.confidence = np.zeros(n, dtype=np.float32)
        self.n_zero = 0
        self.n_below = 0

    def categorical(
        self, classes: list[str], with_unknown: bool, unknown_label: str = UNKNOWN
    ) -> pd.Categorical[str]:
        """The predictions as labels; rejected cells get ``unknown_label``, a category of its
        own (:func:`check_unknown_label` keeps it apart from every reference label)."""
        import pandas as pd

        cats = list(classes)
        codes = self.codes.copy()
        if with_unknown or (codes < 0).any():
            if unknown_label in cats:
                msg = f"the reject label {unknown_label!r} is also a reference label"
                raise InputError(msg)
            codes[codes < 0] = len(cats)
            cats.append(unknown_label)
        return pd.Categorical.from_codes(codes, categories=pd.Index(cats))


def _check_method(method: str, weights: str, k: int, min_confidence: float | None) -> None:
    if method not in ("knn", "logreg"):
        msg = f"method must be 'knn' or 'logreg', got {method!r}"
        raise InputError(msg)
    if weights not in ("distance", "uniform"):
        msg = f"weights must be 'distance' or 'uniform', got {weights!r}"
        raise InputError(msg)
    positive_int(k, "k")
    if min_confidence is not None and not 0.0 <= float(min_confidence) <= 1.0:
        msg = f"min_confidence must be between 0 and 1, got {min_confidence!r}"
        raise InputError(msg)


def check_unknown_label(index: ReferenceIndex, unknown_label: str) -> str:
    """``unknown_label``, after checking that no reference label reads like it.

    Labels are compared stripped and case-folded (``"unknown "`` clashes with ``"Unknown"``): a
    cell predicted as such a label and a rejected cell would look the same.

    Raises
    ------
    InputError
        ``unknown_label`` is empty or not text, or a reference label reads like it.
    """
    if not isinstance(unknown_label, str) or not unknown_label.strip():
        msg = f"unknown_label must be a non-empty label, got {unknown_label!r}"
        raise InputError(msg)
    norm = unknown_label.strip().casefold()
    clash = [c for c in index.classes if c.strip().casefold() == norm]
    if clash:
        counts = index.label_counts()
        named = ", ".join(f"{c!r} ({counts[c]:,} cells)" for c in clash)
        msg = (
            f"the reference has the label {named} in obs[{index.label_key!r}], which reads like "
            f"the reject label {unknown_label!r}: a cell predicted as it and a cell left "
            "unannotated would look the same. Give another reject label (unknown_label=..., "
            "--unknown-label), or rename or drop those reference cells"
        )
        raise InputError(msg)
    return unknown_label


class ProvenanceMismatchError(InputError):
    """The query's embedding was made differently from the reference's.

    Attributes
    ----------
    key
        The ``obsm`` key.
    differences
        ``{field: (query value, reference value)}`` for each field that differs (``method``,
        ``model``, ``dimension``, ``text_source``).
    """

    def __init__(self, key: str, differences: dict[str, tuple[str, str]]) -> None:
        self.key = key
        self.differences = differences
        super().__init__(
            f"obsm[{key!r}] of the query and of the reference were made differently: "
            f"{_describe(differences)}; their similarities mean nothing. Embed both with the "
            "same gene table, model and method, or pass allow_mismatch=True (--allow-mismatch) "
            "to annotate anyway"
        )


def _describe(differences: dict[str, tuple[str, str]]) -> str:
    return "; ".join(f"{f} {q!r} (query) vs {r!r} (reference)" for f, (q, r) in differences.items())


def check_compatible(
    index: ReferenceIndex,
    src: AnnDataEmbeddings | EmbeddingSource,
    keys: Sequence[str],
    *,
    allow_mismatch: bool = False,
) -> list[str]:
    """The query holds the reference's embeddings, with the same dimensions and provenance.

    The provenance fields both sides recorded (method, model, dimension, text source) must
    agree; a key that only one side documents is checked by dimension alone, with a warning.

    Returns
    -------
    The provenance differences that ``allow_mismatch=True`` let through (each
    ``"key: field query vs reference"``, also given as a warning); empty when all agree.

    Raises
    ------
    ProvenanceMismatchError
        A difference, without ``allow_mismatch``.
    """
    if list(keys) != index.obsm_keys:
        msg = f"the reference holds obsm {index.obsm_keys}, the query {list(keys)}"
        raise InputError(msg)
    for key, dq, dr in zip(keys, src.dims, index.dims, strict=True):
        if dq != dr:
            msg = (
                f"{src.where}obsm[{key!r}] has {dq} dimensions but the reference's has {dr}: "
                "query and reference must be embedded by the same model"
            )
            raise InputError(msg)
    ref_params = index.provenance.get("embeddings") or {}
    allowed = []
    for key in keys:
        q, r = src.params.get(key) or {}, ref_params.get(key) or {}
        if bool(q) != bool(r):
            side = "reference" if r else "query"
            warnings.warn(
                f"obsm[{key!r}]: only the {side} records what made it (uns[{key!r}]"
                '["params"]); the other side\'s model and gene table cannot be checked',
                stacklevel=3,
            )
        diff = {f: (str(q[f]), str(r[f])) for f in q if f in r and str(q[f]) != str(r[f])}
        if not diff:
            continue
        if not allow_mismatch:
            raise ProvenanceMismatchError(key, diff)
        allowed.append(f"{key}: {_describe(diff)}")
        warnings.warn(
            f"obsm[{key!r}] of the query and of the reference were made differently "
            f"({_describe(diff)}); annotating anyway, as allow_mismatch asks",
            stacklevel=3,
        )
    return allowed


def predict(
    index: ReferenceIndex,
    src: AnnDataEmbeddings | EmbeddingSource,
    *,
    k: int = 15,
    method: Method = "knn",
    weights: Weights = "distance",
    min_confidence: float | None = None,
    exact: bool = False,
    chunk_size: int = CHUNK_CELLS,
    n_threads: int | None = None,
) -> Predictions:
    """Predict every query cell of ``src``, one chunk of cells at a time."""
    out = Predictions(src.n_cells)
    if method == "knn" and k > index.n_cells:
        msg = f"k = {k} but the reference has only {index.n_cells} cells"
        raise InputError(msg)
    model = index.logreg
    if method == "logreg" and model is None:
        with threads(n_threads):
            model = index.fit_logreg()
    with threads(n_threads):
        for a in range(0, src.n_cells, chunk_size):
            b = min(a + chunk_size, src.n_cells)
            Q = combine(src.read(a, b), src.keys, start=a, where=src.where, n_threads=n_threads)
            zero = ~Q.any(axis=1)
            if method == "knn":
                sim, idx = index.search(Q, k, exact=exact, n_threads=n_threads)
                code, conf = vote(sim, idx, index.labels, len(index.classes), weights)
            else:
                assert model is not None
                proba = model.predict_proba(Q)
                code = proba.argmax(axis=1).astype(np.int32)
                conf = np.take_along_axis(proba, code[:, None], axis=1)[:, 0].astype(np.float32)
            code[zero] = -1
            conf[zero] = 0.0
            out.n_zero += int(zero.sum())
            if min_confidence is not None:
                below = (conf < float(min_confidence)) & ~zero
                code[below] = -1
                out.n_below += int(below.sum())
            out.codes[a:b] = code
            out.confidence[a:b] = conf
    return out


def summary(
    index: ReferenceIndex,
    pred: Predictions,
    *,
    method: str,
    k: int,
    weights: str,
    min_confidence: float | None,
    exact: bool,
    categories: pd.Categorical[str],
    unknown_label: str = UNKNOWN,
    mismatches: Sequence[str] = (),
) -> dict[str, Any]:
    """What ``uns[key_added]`` holds: parameters, the reference, and what was predicted.

    ``mismatches`` are the provenance differences ``allow_mismatch`` let through
    (:func:`check_compatible`), recorded as ``params["provenance_mismatch"]``.
    """
    counts = categories.value_counts()
    params: dict[str, Any] = {
        "method": method,
        "label_key": index.label_key,
        "obsm_keys": list(index.obsm_keys),
        "min_confidence": "none" if min_confidence is None else float(min_confidence),
        "unknown_label": unknown_label,
    }
    if mismatches:
        params["provenance_mismatch"] = list(mismatches)
    if method == "knn":
        params.update(
            k=int(k),
            weights=weights,
            metric="cosine",
            search="exact" if exact or index.backend == "exact" else index.backend,
            **index.params(),
        )
    elif index.logreg is not None:
        params["logreg"] = dict(index.logreg.params)
    return {
        "params": params,
        "reference": {
            "n_cells": index.n_cells,
            "n_labels": len(index.classes),
            "n_zero_embedding_excluded": index.n_zero_excluded,
            "label_counts": _count_frame(index.label_counts()),
            "fingerprint": index.fingerprint,
            "backend": index.backend,
            "path": str(index.path) if index.path is not None else "in memory",
        },
        "prediction_counts": _count_frame({str(c): int(n) for c, n in counts.items()}),
        "n_unknown": int((pred.codes < 0).sum()),
        "n_zero_embedding": int(pred.n_zero),
        "n_below_min_confidence": int(pred.n_below),
        "mean_confidence": float(pred.confidence.mean()) if len(pred.confidence) else 0.0,
    }


def _count_frame(counts: dict[str, int]) -> pd.DataFrame:
    """Counts by label as a DataFrame (``label``, ``n_cells``): a dict keyed by labels would be
    split into nested groups by an ``.h5ad`` writer wherever a label holds a ``/``."""
    import pandas as pd

    return pd.DataFrame(
        {"label": list(counts), "n_cells": np.array(list(counts.values()), dtype=np.int64)}
    )


def jsonable(obj: Any) -> Any:
    """``uns`` content as JSON values (count tables become ``{label: n_cells}``)."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame) and list(obj.columns) == ["label", "n_cells"]:
        return {str(a): int(b) for a, b in zip(obj["label"], obj["n_cells"], strict=True)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def as_index(
    reference: AnnData | ReferenceIndex | str | os.PathLike[str],
    *,
    label_key: str | None,
    obsm_key: str | Sequence[str] | None,
    method: str,
    n_threads: int | None,
) -> tuple[ReferenceIndex, list[str]]:
    """The reference as an index (built or loaded), and the obsm keys to use."""
    if isinstance(reference, (str, os.PathLike)) and is_index_file(reference):
        reference = ReferenceIndex.load(reference)
    if isinstance(reference, ReferenceIndex):
        if label_key is not None and label_key != reference.label_key:
            msg = (
                f"the reference index holds labels from obs[{reference.label_key!r}], not "
                f"{label_key!r}"
            )
            raise InputError(msg)
        keys = obsm_keys_arg(obsm_key, reference.obsm_keys)
        if keys != reference.obsm_keys:
            msg = (
                f"the reference index was built on obsm {reference.obsm_keys}; the query asks "
                f"for {keys} (give the same keys, in the same order)"
            )
            raise InputError(msg)
        return reference, keys
    if label_key is None:
        msg = "label_key is required when the reference is an AnnData or an .h5ad/.zarr file"
        raise InputError(msg)
    keys = obsm_keys_arg(obsm_key, ["X_genept_w"])
    index = build_reference(
        reference,
        label_key=label_key,
        obsm_key=keys,
        logreg=method == "logreg",
        n_threads=n_threads,
    )
    return index, keys


def is_index_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a saved reference index (any format version) rather than an AnnData.

    An index of the current format is recognised by its header, with plain reads (also when the
    header is damaged: HDF5's signature then follows the 512 bytes that HDF5 keeps for it), so a
    corrupted index is never handed to HDF5 before it is checked. An HDF5 file without the
    header is an index of format version 1 when its attributes say so. A file that is neither
    counts as an index when its name ends in ``.index``, so that loading it reports the
    corruption instead of "not an AnnData".
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        return False
    with p.open("rb") as fh:
        head = fh.read(HEADER_BYTES + len(_HDF5_SIGNATURE))
    if head.startswith(MAGIC) or head[HEADER_BYTES:] == _HDF5_SIGNATURE:
        return True
    if head.startswith(_HDF5_SIGNATURE):
        try:
            with h5py.File(p, "r") as f:
                return bool(f.attrs.get("format") == FORMAT)
        except OSError:
            pass
    return p.suffix == ".index"


def transfer_labels(
    adata: AnnData,
    reference: AnnData | ReferenceIndex | str | os.PathLike[str],
    *,
    label_key: str | None = None,
    obsm_key: str | Sequence[str] | None = None,
    k: int = 15,
    method: Method = "knn",
    weights: Weights = "distance",
    min_confidence: float | None = None,
    key_added: str | None = None,
    exact: bool = False,
    unknown_label: str = UNKNOWN,
    allow_mismatch: bool = False,
    chunk_size: int = CHUNK_CELLS,
    n_threads: int | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Annotate the cells of ``adata`` with the labels of a reference.

    Parameters
    ----------
    adata
        Query cells with the embedding(s) in ``obsm``.
    reference
        An AnnData with ``obs[label_key]`` and ``obsm[obsm_key]``, a
        :class:`~genept_fast.annotate.ReferenceIndex` (from :func:`build_reference` or
        ``ReferenceIndex.load``), or the path of a saved index or of an ``.h5ad`` / ``.zarr``.
    label_key
        Reference ``obs`` column with the labels (required unless the reference is an index).
    obsm_key
        Embedding(s) to compare; several are each L2-normalised and concatenated (the paper's
        "ensemble"). Default: the index's keys, or ``"X_genept_w"``.
    k
        Neighbours of the kNN vote (the paper used 10, unweighted).
    method
        ``"knn"`` or ``"logreg"`` (see the module docstring).
    weights
        kNN vote: ``"distance"`` (1 / cosine distance) or ``"uniform"``.
    min_confidence
        Predictions with a lower confidence get the reject label.
    key_added
        Where the result goes (default ``f"{label_key}_pred"``); a plain non-empty name.
    exact
        Search exactly even when the index is approximate (IVF, HNSW).
    unknown_label
        The reject label, for cells left unannotated (all-zero embedding, or below
        ``min_confidence``). A reference label that reads like it is refused.
    allow_mismatch
        Annotate even when the query's embedding was made differently from the reference's
        (method, model, dimension or text source in ``uns[key]["params"]``); with a warning,
        and recorded in ``uns[key_added]["params"]["provenance_mismatch"]``.
    chunk_size
        Query cells searched at a time (bounds memory).
    n_threads
        Threads (BLAS and faiss); default all cores, capped by ``GENEPT_FAST_NUM_THREADS``.
    copy
        Return an annotated copy instead of writing to ``adata``.

    Returns
    -------
    AnnData or None
        ``None``, or the copy with ``copy=True``. Sets ``adata.obs[key_added]`` (categorical
        over the reference's labels, plus ``unknown_label`` when a cell is left unannotated or
        ``min_confidence`` is given), ``adata.obs[f"{key_added}_confidence"]`` (float32 in
        [0, 1]) and ``adata.uns[key_added]``: ``params``, ``reference`` (size, label counts,
        fingerprint), ``prediction_counts`` (count tables: DataFrames with ``label`` and
        ``n_cells``, which survive ``write_h5ad`` whatever the labels), the counts of cells
        left unannotated and of reference cells left out of the index for an all-zero
        embedding.

    Raises
    ------
    ProvenanceMismatchError
        The query's embedding was made differently (without ``allow_mismatch``).
    InputError
        Among others: a reference label that reads like ``unknown_label``.
    """
    _check_method(method, weights, k, min_confidence)
    if key_added is not None:
        check_key(key_added)
    chunk_size = positive_int(chunk_size, "chunk_size")
    index, keys = as_index(
        reference, label_key=label_key, obsm_key=obsm_key, method=method, n_threads=n_threads
    )
    check_unknown_label(index, unknown_label)
    target = adata.copy() if copy else adata
    src = AnnDataEmbeddings(target, keys, what="query ")
    mismatches = check_compatible(index, src, keys, allow_mismatch=allow_mismatch)
    pred = predict(
        index,
        src,
        k=k,
        method=method,
        weights=weights,
        min_confidence=min_confidence,
        exact=exact,
        chunk_size=int(chunk_size),
        n_threads=n_threads,
    )
    key = key_added or f"{index.label_key}_pred"
    cats = pred.categorical(index.classes, min_confidence is not None, unknown_label)
    target.obs[key] = cats
    target.obs[f"{key}_confidence"] = pred.confidence
    target.uns[key] = summary(
        index,
        pred,
        method=method,
        k=k,
        weights=weights,
        min_confidence=min_confidence,
        exact=exact,
        categories=cats,
        unknown_label=unknown_label,
        mismatches=mismatches,
    )
    return target if copy else None
