"""Gene-level evaluation on Geneformer's dosage-sensitive TF labels (GenePT Table 1).

The gene embedding is real and computed offline: TF-IDF + truncated SVD of the NCBI summaries of
the labelled genes (genes without a summary get a zero row, i.e. no embedding). Fold AUCs are
recomputed with ``cross_val_score`` on the same folds.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from genept_fast import GeneptError
from genept_fast.cli import main
from genept_fast.eval import GeneEvalReport, evaluate_genes, read_gene_labels

SEED = 2023
LR = ("logistic_regression",)


@pytest.fixture(scope="module")
def labels_path(shared_data):
    return shared_data / "geneformer_dosage_sensitive_tfs.csv"


@pytest.fixture(scope="module")
def embedding(shared_data, labels_path):
    """(symbols, matrix): TF-IDF/SVD of NCBI summaries for every labelled gene NCBI knows."""
    wanted = set(pd.read_csv(labels_path)["gene_name"].str.upper())
    table = pl.read_parquet(
        shared_data / "ncbi_gene_summaries_2022.parquet", columns=["symbol", "summary"]
    ).filter(pl.col("symbol").str.to_uppercase().is_in(list(wanted)))
    has = table["summary"].is_not_null().to_numpy()
    docs = table.filter(pl.col("summary").is_not_null())["summary"].to_list()
    tfidf = TfidfVectorizer(stop_words="english", min_df=2, sublinear_tf=True, dtype=np.float32)
    Z = TruncatedSVD(64, random_state=0).fit_transform(tfidf.fit_transform(docs))
    M = np.zeros((table.height, 64), dtype=np.float32)
    M[has] = Z
    return table["symbol"].to_list(), M


@pytest.fixture(scope="module")
def report(embedding, labels_path) -> GeneEvalReport:
    genes, M = embedding
    return evaluate_genes(genes, M, labels_path, plots=False)


def _xy(embedding, labels_path):
    """The matched genes in embedding-row order, built independently of the module."""
    genes, M = embedding
    df = pd.read_csv(labels_path)
    row = {g.upper(): i for i, g in enumerate(genes)}
    lab: dict[int, set[str]] = {}
    for name, sens in zip(df["gene_name"], df["dosage_sensitive"], strict=True):
        r = row.get(name.upper())
        if r is not None and M[r].any():
            lab.setdefault(r, set()).add("s" if sens == "Yes" else "i")
    rows = sorted(r for r, v in lab.items() if len(v) == 1)
    y = np.array([lab[r] == {"s"} for r in rows], dtype=int)
    return M[rows].astype(np.float64), y


def test_auc_clearly_above_random_control(report):
    res = report.results
    print(
        json.dumps({e: {m: round(v["auc_mean"], 3) for m, v in r.items()} for e, r in res.items()})
    )
    for model in ("logistic_regression", "random_forest"):
        real = res["embedding"][model]["auc_mean"]
        control = res["random control"][model]["auc_mean"]
        assert real > 0.75, (model, real)
        assert 0.35 < control < 0.65, (model, control)
        assert real - control > 0.2
        assert len(res["embedding"][model]["fold_aucs"]) == 5
    s = report.settings
    assert (s["positive"], s["negative"]) == ("dosage_sensitive", "dosage_insensitive")


def test_matching_counts(report):
    m = report.matching
    assert m["n_labelled"] == 490
    # every labelled row is accounted for: matched, unknown to NCBI, no summary, a duplicate,
    # ambiguous, or naming a gene another row names directly
    total = m["n_matched"] + m["n_unmatched"] + m["n_zero_embedding"] + m["n_duplicate_entries"]
    total += m["n_ambiguous"] + m["n_shadowed"]
    assert total + 2 * m["n_conflicting"] == 490
    assert m["n_ambiguous"] == len(m["ambiguous"])
    assert m["n_zero_embedding"] > 0  # genes without an NCBI summary have no embedding
    assert m["n_unmatched"] == len(m["unmatched"])
    assert sum(m["class_counts"].values()) == m["n_matched"]
    assert m["n_matched"] > 400


def test_auc_matches_cross_val_score(report, embedding, labels_path):
    X, y = _xy(embedding, labels_path)
    assert len(y) == report.matching["n_matched"]
    assert int(y.sum()) == report.matching["class_counts"]["dosage_sensitive"]
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    models = {
        "logistic_regression": make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, random_state=SEED)
        ),
        "random_forest": RandomForestClassifier(n_estimators=100, random_state=SEED),
    }
    control = np.random.default_rng(SEED).standard_normal(X.shape)
    # the random forest on the control is left out only to keep the test fast
    checks = [
        ("logistic_regression", "embedding", X),
        ("logistic_regression", "random control", control),
        ("random_forest", "embedding", X),
    ]
    for name, emb, data in checks:
        expect = cross_val_score(models[name], data, y, cv=cv, scoring="roc_auc")
        got = report.results[emb][name]
        np.testing.assert_allclose(got["fold_aucs"], expect, rtol=1e-12)
        assert got["auc_mean"] == pytest.approx(expect.mean())
        assert got["auc_sd"] == pytest.approx(expect.std())


def test_deterministic(embedding, labels_path):
    genes, M = embedding
    runs = [evaluate_genes(genes, M, labels_path, n_estimators=20) for _ in range(2)]
    assert runs[0].to_dict() == runs[1].to_dict()
    assert runs[0].figures() == runs[1].figures()


def test_ids_by_ensembl_and_case_insensitive_symbol(embedding, labels_path):
    genes, M = embedding
    df = pd.read_csv(labels_path)
    ens = dict(zip(df["gene_name"].str.upper(), df["ensembl_id"], strict=False))
    # Half the rows keyed by versioned Ensembl id, the other half by lower-case symbol.
    mixed = [
        f"{ens[g.upper()]}.7" if i % 2 == 0 and g.upper() in ens else g.lower()
        for i, g in enumerate(genes)
    ]
    kw = {"models": LR, "random_control": False, "plots": False}
    a = evaluate_genes(genes, M, labels_path, **kw)
    b = evaluate_genes(mixed, M, labels_path, **kw)
    assert b.matching["n_matched"] == a.matching["n_matched"]
    assert b.results == a.results


def test_generic_gene_label_tables(embedding, labels_path, tmp_path):
    genes, M = embedding
    df = pd.read_csv(labels_path)
    generic = pd.DataFrame(
        {"gene": df["gene_name"], "label": np.where(df["dosage_sensitive"] == "Yes", "1", "0")}
    )
    kw = {"models": LR, "random_control": False, "plots": False}
    base = evaluate_genes(genes, M, labels_path, **kw)
    generic.to_csv(tmp_path / "l.csv", index=False)
    generic.to_csv(tmp_path / "l.tsv", sep="\t", index=False)
    generic.to_parquet(tmp_path / "l.parquet")
    sources = [tmp_path / "l.csv", tmp_path / "l.tsv", tmp_path / "l.parquet", generic]
    sources += [pl.from_pandas(generic), dict(zip(generic["gene"], generic["label"], strict=True))]
    for src in sources:
        rep = evaluate_genes(genes, M, src, **kw)
        assert rep.settings["positive"] == "1"
        assert rep.matching["n_matched"] == base.matching["n_matched"]
        got = rep.results["embedding"]["logistic_regression"]["fold_aucs"]
        assert got == base.results["embedding"]["logistic_regression"]["fold_aucs"]


def test_read_gene_labels_flag_table(labels_path):
    table = read_gene_labels(labels_path)
    assert table.classes == ["dosage_insensitive", "dosage_sensitive"]
    assert table.labels.count("dosage_sensitive") == 122
    assert table.labels.count("dosage_insensitive") == 368
    assert table.ids[0] == ("ENSG00000010539", "ZNF200")
    assert table.id_columns == ("ensembl_id", "gene_name")


def test_multiclass_needs_positive(embedding):
    genes, M = embedding
    labels = {g: "abc"[i % 3] for i, g in enumerate(genes)}
    with pytest.raises(GeneptError, match="3 classes"):
        evaluate_genes(genes, M, labels, plots=False)
    rep = evaluate_genes(genes, M, labels, positive="a", models=LR, plots=False)
    assert rep.settings["negative"] == "not a"
    n_a = sum(1 for g, v in labels.items() if v == "a" and M[genes.index(g)].any())
    assert rep.matching["class_counts"]["a"] == n_a


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (pd.DataFrame({"gene": ["A", "B"], "x": ["1", "2"], "z": ["p", "q"]}), "no label column"),
        (pd.DataFrame({"foo": ["A"], "label": ["1"]}), "no gene id column"),
        (pd.DataFrame({"gene": ["A", "B"], "label": ["1", "0"]}), "each class needs at least"),
    ],
)
def test_label_errors(labels, match):
    genes = ["A", "B", "C"]
    with pytest.raises(GeneptError, match=match):
        evaluate_genes(genes, np.eye(3), labels, plots=False)


def test_shape_and_file_errors(tmp_path):
    with pytest.raises(GeneptError, match="genes × D"):
        evaluate_genes(["A", "B"], np.zeros((3, 4)), {"A": "1"})
    with pytest.raises(FileNotFoundError):
        evaluate_genes(["A"], np.zeros((1, 4)), tmp_path / "missing.csv")


def test_report_files_with_roc_plot(embedding, labels_path, tmp_path):
    genes, M = embedding
    rep = evaluate_genes(genes, M, labels_path, models=LR, name="tfidf")
    written = rep.write(tmp_path)
    assert set(written) == {"report.md", "report.json", "roc.png"}
    assert (tmp_path / "roc.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["matching"]["n_matched"] == rep.matching["n_matched"]
    assert len(data["roc"]["fpr"]) == len(data["roc"]["mean_tpr"]["tfidf"]["logistic_regression"])
    md = (tmp_path / "report.md").read_text()
    assert "| model | tfidf | random control |" in md
    assert "labelled genes had an embedding" in md


def test_cli(embedding, labels_path, tmp_path, capsys):
    pytest.importorskip("genept_fast.table")
    genes, M = embedding
    path = tmp_path / "genes.parquet"
    schema = {"gene": pl.String, "embedding": pl.Array(pl.Float32, 64)}
    pl.DataFrame({"gene": genes, "embedding": M}, schema=schema).write_parquet(path)
    out = tmp_path / "rep"
    argv = ["evaluate-genes", str(path), "--labels", str(labels_path), "-o", str(out)]
    rc = main([*argv, "--models", "logistic_regression"])
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    api = evaluate_genes(genes, M, labels_path, name="genes", models=LR, plots=False)
    assert data["results"] == json.loads(json.dumps(api.results))
    assert (out / "roc.png").is_file()
    assert "| model | genes | random control |" in capsys.readouterr().out
    assert data["settings"]["provenance"]["path"] == str(path)

    rc = main([*argv, "--positive", "nope", "--overwrite"])  # the report exists (issue #9)
    assert rc == 2
    assert "positive class 'nope'" in capsys.readouterr().err


def test_labels_match_through_the_identity_layer():
    """Old symbols, aliases and versioned Ensembl ids in the labels find the table's current
    symbols; a label naming two table genes is reported as ambiguous, not guessed."""
    table_genes = ["KMT2A", "ERBB2", "CD3E", "TWNK", "AMER1", "SEPTIN7", "MRE11", "PCLAF"]
    table_genes += ["TP53", "BRCA1", "CRYBG1", "SGK1", "ADGRE5", "CAP2", "BHLHE40", "DELEC1"]
    label_names = ["MLL", "HER2", "ENSG00000198851.9", "C10orf2", "FAM123B", "SEPT7", "MRE11A"]
    label_names += ["KIAA0101", "TP53", "BRCA1", "AIM1", "SGK", "CD97", "CAP2", "DEC1"]
    rng = np.random.default_rng(0)
    M = rng.standard_normal((len(table_genes), 8))
    labels = {g: "ab"[i % 2] for i, g in enumerate(label_names)}
    rep = evaluate_genes(
        table_genes, M, labels, n_splits=2, models=LR, random_control=False, plots=False
    )
    m = rep.matching
    assert m["n_matched"] == 14
    assert m["unmatched"] == []
    assert m["ambiguous"] == {"DEC1": ["BHLHE40", "DELEC1"]}
    assert m["by_method"]["previous"] >= 8
    assert m["by_method"]["alias"] >= 1  # HER2
    assert m["by_method"]["ensembl"] == 1
    assert "Ambiguous labels" in rep.to_markdown()
