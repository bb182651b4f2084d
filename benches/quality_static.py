"""Quality of GenePT-s with the static wordllama model against MiniLM GenePT-s and GenePT-w
(issue 24), on scanpy's PBMCs and on the dosage-sensitivity task for gene texts.

    python benches/quality_static.py                     # the table (a few minutes on 2 cores)
    python benches/quality_static.py --top-n 50 100 all  # other top_n values

Cells: scanpy's ``pbmc68k_reduced`` (700 PBMCs, ``.raw`` log-normalised, labels ``bulk_labels``),
scored by :func:`genept_fast.eval.evaluate` (k-means and Leiden AMI/ARI, 10-NN and logistic
regression accuracy on a stratified 80/20 split, seed 2023) for

- GenePT-s with wordllama at several ``top_n`` (the kernel's exact sum of each full sentence);
- GenePT-s with the local MiniLM (its default: sentences cut at its 256-token limit);
- GenePT-w with gene tables embedded by each model from NCBI texts (symbol, name, summary from
  ``/work/shared/data/ncbi_gene_summaries_2022.parquet``);
- scanpy's PCA (``X_pca`` of the dataset) as the baseline.

Genes: the dosage-sensitive vs -insensitive transcription factors
(``/work/shared/data/geneformer_dosage_sensitive_tfs.csv``), cross-validated ROC AUC of
:func:`genept_fast.eval.evaluate_genes` (logistic regression and random forest, 5 folds) on each
model's embeddings of the same gene texts, beside a random-embedding control.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data")
METRICS = {
    "kmeans_ami": "k-means AMI",
    "kmeans_ari": "k-means ARI",
    "leiden_ami": "Leiden AMI",
    "leiden_ari": "Leiden ARI",
    "knn_accuracy": "10-NN acc",
    "logreg_accuracy": "logreg acc",
}


def gene_texts(genes: list[str]):
    """``gene``, ``text`` (``"SYMBOL: full name. summary"``) from the NCBI table; null where
    the table has no such symbol."""
    import polars as pl

    ncbi = pl.read_parquet(DATA / "ncbi_gene_summaries_2022.parquet").unique("symbol")
    text = pl.concat_str(
        [pl.col("symbol"), pl.lit(": "), pl.col("full_name"), pl.lit(". "), pl.col("summary")],
        ignore_nulls=True,
    )
    found = ncbi.select(pl.col("symbol").alias("gene"), text.alias("text"))
    return pl.DataFrame({"gene": genes}).join(found, on="gene", how="left")


def cells(top_ns: list[str], args: argparse.Namespace) -> None:
    import scanpy as sc

    import genept_fast as gf
    from genept_fast.embed import get_embedder
    from genept_fast.table import GeneEmbeddings

    adata = sc.datasets.pbmc68k_reduced()
    genes = [str(g) for g in adata.raw.var_names]
    texts = gene_texts(genes)
    keys: dict[str, str] = {}
    seconds: dict[str, float] = {}
    models = {"wordllama": "wordllama", "MiniLM": "local"}
    for name, spec in models.items():
        emb = get_embedder(spec, cache_dir=args.cache_dir)
        table = GeneEmbeddings.from_texts(texts, emb)
        key = f"X_w_{name}"
        gf.tl.genept_w(adata, table, key_added=key)
        keys[key] = f"GenePT-w, {name} gene table"
    for n in top_ns:
        key = f"X_s_wordllama_{n}"
        t = time.perf_counter()
        gf.tl.genept_s(adata, "wordllama", top_n=None if n == "all" else int(n), key_added=key)
        seconds[key] = time.perf_counter() - t
        mean = adata.uns[key]["params"]["genes_per_sentence_mean"]
        keys[key] = f"GenePT-s, wordllama, top_n={n} ({mean:.0f} genes)"
    if not args.no_minilm:
        t = time.perf_counter()
        emb = get_embedder("local", cache_dir=args.cache_dir)
        gf.tl.genept_s(adata, emb, key_added="X_s_MiniLM")
        seconds["X_s_MiniLM"] = time.perf_counter() - t
        mean = adata.uns["X_s_MiniLM"]["params"]["genes_per_sentence_mean"]
        keys["X_s_MiniLM"] = f"GenePT-s, MiniLM, cut at 256 tokens ({mean:.0f} genes)"
    keys["X_pca"] = "PCA (scanpy, 50 components)"
    report = gf.eval.evaluate(adata, label_key="bulk_labels", obsm_keys=list(keys), plots=False)
    table = report.metrics()
    print(f"\n## PBMC ({adata.n_obs} cells, bulk_labels), seed 2023\n")
    head = "| embedding | " + " | ".join(METRICS.values()) + " |"
    print(head)
    print("|" + "---|" * (len(METRICS) + 1))
    for key, label in keys.items():
        row = table.loc[key]
        values = " | ".join(f"{row[m]:.3f}" if m in row else "-" for m in METRICS)
        print(f"| {label} | {values} |")
    print()
    for key, s in seconds.items():
        print(f"{keys[key]}: {adata.n_obs} cells in {s:.2f} s (embedder cache warm after a rerun)")


def genes(args: argparse.Namespace) -> None:
    import polars as pl

    import genept_fast as gf
    from genept_fast.embed import get_embedder

    labels = pl.read_csv(DATA / "geneformer_dosage_sensitive_tfs.csv")
    names = [str(g) for g in labels["gene_name"].to_list()]
    texts = gene_texts(names)
    have = [t is not None for t in texts["text"].to_list()]
    symbols = [g for g, h in zip(names, have, strict=True) if h]
    body = [t for t, h in zip(texts["text"].to_list(), have, strict=True) if h]
    print(f"\n## Dosage-sensitive vs -insensitive TFs ({len(symbols)} of {len(names)} genes with"
          " an NCBI text), 5-fold ROC AUC\n")  # fmt: skip
    print("| gene embeddings | logistic regression | random forest | random control (LR) |")
    print("|---|---|---|---|")
    for name, spec in {"wordllama": "wordllama", "MiniLM": "local"}.items():
        emb = get_embedder(spec, cache_dir=args.cache_dir)
        matrix = emb.embed(body)
        report = gf.eval.evaluate_genes(symbols, matrix, labels, plots=False, name=name)
        res = report.results
        lr, rf = res[name]["logistic_regression"], res[name]["random_forest"]
        ctrl = next(v for k, v in res.items() if k != name)["logistic_regression"]
        print(f"| {name} ({matrix.shape[1]}-d) | {_auc(lr)} | {_auc(rf)} | {_auc(ctrl)} |")


def _auc(result: dict) -> str:
    return f"{result['auc_mean']:.3f} ± {result['auc_sd']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top-n", nargs="+", default=["25", "50", "73", "100", "200", "all"])
    ap.add_argument("--cache-dir", default=None, help="embedding cache (default: the user's)")
    ap.add_argument("--no-minilm", action="store_true", help="skip MiniLM GenePT-s (slow)")
    ap.add_argument("--skip-genes", action="store_true")
    args = ap.parse_args()
    np.seterr(all="ignore")
    cells(args.top_n, args)
    if not args.skip_genes:
        genes(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
