"""The core works without the optional extras, and what needs one names it.

A fresh interpreter hides every module of the ``eval``, ``dask`` and ``annotate`` extras
(``None`` in ``sys.modules``: ``import`` raises ``ModuleNotFoundError`` and ``find_spec``
answers ``None``, as on an install without them), then runs the core path: gene text, the
local model, GenePT-w and GenePT-s on AnnData, a streamed encode, the CLI; and what needs an
extra (evaluation, Dask, annotation) must name it.
``make wheel-smoke`` does the same on a real install of the wheel without extras.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from genept_fast._extras import EXTRAS

HIDE = sorted({m for modules in EXTRAS.values() for m in modules} | {"leidenalg"})

SCRIPT = textwrap.dedent(
    """
    import sys
    HIDE = set(sys.argv[1].split(","))
    sys.modules.update(dict.fromkeys(HIDE))

    import anndata as ad, numpy as np, scipy.sparse as sp
    import genept_fast as gf
    from genept_fast import errors, stream, tl
    from genept_fast.cli import main
    from genept_fast.embed import get_embedder
    from genept_fast.text import gene_texts
    from genept_fast.table import GeneEmbeddings

    genes = ["CD3E", "CD19", "MS4A1", "LYZ", "NKG7", "GNLY"]
    X = sp.random_array((30, 6), density=0.6, format="csr", dtype=np.float32, rng=0)
    adata = ad.AnnData(X=X.tocsr())
    adata.var_names = genes
    texts = gene_texts(genes, source="hgnc")
    emb = get_embedder("local", use_cache=False, n_threads=1)
    table = GeneEmbeddings.from_texts(texts, emb)
    tl.genept_w(adata, table)
    tl.genept_s(adata, emb, top_n=3)
    assert adata.obsm["X_genept_w"].shape == (30, 384)
    assert adata.obsm["X_genept_s"].shape == (30, 384)
    adata.write_h5ad("cells.h5ad")
    table.write("genes.parquet")
    assert main(["encode", "cells.h5ad", "--genes", "genes.parquet", "-o", "w.npy"]) == 0

    for name in HIDE:
        assert sys.modules[name] is None, name  # never imported
    try:
        gf.eval.evaluate(adata, label_key="x", obsm_keys=["X_genept_w"])
    except errors.MissingDependencyError as e:
        assert "pip install 'genept-fast[eval]'" in str(e), e
    else:
        raise AssertionError("evaluate ran without the eval extra")
    try:
        import genept_fast.dask
    except errors.MissingDependencyError as e:
        assert "pip install 'genept-fast[dask]'" in str(e), e
    else:
        raise AssertionError("genept_fast.dask imported without dask")
    adata.obs["cell_type"] = ["T", "B"] * 15
    try:
        tl.transfer_labels(adata, adata, label_key="cell_type")
    except errors.MissingDependencyError as e:
        assert "pip install 'genept-fast[annotate]'" in str(e), e
    else:
        raise AssertionError("transfer_labels ran without the annotate extra")
    rc = main(["evaluate", "cells.h5ad", "--label", "x", "--obsm", "X_genept_w", "-o", "r"])
    print("evaluate exit", rc)
    print("OK")
    """
)


def test_core_runs_without_the_extras_and_names_them(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(HIDE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["evaluate exit 2", "OK"], proc.stdout
    assert "genept-fast evaluate: error: evaluation needs" in proc.stderr
    assert "pip install 'genept-fast[eval]'" in proc.stderr
    assert "Traceback" not in proc.stderr
