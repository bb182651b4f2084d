"""Kernels never abort, panic or hang on their arguments (issue #9).

Each group of hostile calls runs in a fresh interpreter, so that an abort ("memory allocation of
200000000000 bytes failed"), a panic or a hang fails the test instead of killing pytest. The
script prints one line per case and ``OK`` at the end; a missing ``OK`` shows the last case.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import time, warnings
import numpy as np, scipy.sparse as sp
import genept_fast as gf
from genept_fast import GeneptError, _core

X = sp.random_array((50, 30), density=0.3, format="csr", dtype=np.float32, rng=0)
names = [f"G{j}" for j in range(30)]
E = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)

def refused(fn, *args, match, **kw):
    try:
        fn(*args, **kw)
    except (GeneptError, OverflowError) as e:
        assert match in str(e), (match, str(e))
        return str(e)
    raise AssertionError(f"{fn.__name__} did not raise")
"""

GROUPS = {
    "n is clamped to the number of genes": """
        full = gf.top_genes(X, 30)
        for n in (31, 10**9, 2**62, 2**63, 2**64 + 5, 10**30):
            print("top_genes", n, flush=True)
            assert np.array_equal(gf.top_genes(X, n), full)
        ref = gf.cell_sentences(X, names, 30)
        assert ref and all(s.startswith(gf.kernels.DEFAULT_PREFIX) for s in ref)
        for n in (31, 10**9, 2**62, 2**63, 2**64 - 1, 10**30):
            print("cell_sentences", n, flush=True)
            assert gf.cell_sentences(X, names, n) == ref
        # the compiled functions clamp too (no Python layer in front)
        p = (X.indptr.astype(np.int32), X.indices.astype(np.int32), X.data)
        assert _core.top_genes(*p, 30, 2**40).shape == (50, 30)
        assert _core.cell_sentences(*p, 30, names, 2**64 - 1, "", " ") == \\
            _core.cell_sentences(*p, 30, names, 30, "", " ")
        refused(_core.top_genes, *p, 30, 2**64, match="")  # OverflowError, not an abort
    """,
    "results larger than memory are errors that say how much": """
        big = sp.csr_array((10**6, 30000), dtype=np.float32)
        print(refused(gf.top_genes, big, 30000, match="would need"), flush=True)
        refused(gf.top_genes, big, 30000, match="GB")
        wide = sp.csr_array((10**7, 5), dtype=np.float32)
        table = np.ones((5, 10**5), dtype=np.float32)
        print(refused(gf.weighted_embedding, wide, table, match="would need"), flush=True)
        # without the Python check, the core allocates fallibly
        p = (wide.indptr.astype(np.int32), wide.indices.astype(np.int32), wide.data)
        print(refused(_core.weighted_embedding, *p, 5, table, match="would need"), flush=True)
        p = (X.indptr.astype(np.int32), X.indices.astype(np.int32), X.data)
        print(refused(_core.top_genes, *p, 2**40, 2**40, match="would need"), flush=True)
        refused(_core.weighted_embedding, *p, 30, E, block_rows=0, match="block_rows")
        assert _core.weighted_embedding(*p, 30, E, block_rows=2**63).shape == (50, 8)
    """,
    "thread counts above 4 per core are capped, with a warning": """
        limit = gf.kernels.thread_limit()
        assert limit >= 4 and limit % 4 == 0
        assert _core.resolved_threads(10**9) <= limit
        for fn, args in (
            (gf.weighted_embedding, (X, E)),
            (gf.top_genes, (X, 5)),
            (gf.cell_sentences, (X, names, 5)),
            (gf.l2_normalize, (E,)),
            (gf.prepare_embeddings, (E,)),
        ):
            t = time.perf_counter()
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                fn(*args, n_threads=10_000)
            took = time.perf_counter() - t
            print(fn.__name__, f"{took:.2f} s", flush=True)
            assert took < 5, took
            assert any(f"using {limit}" in str(x.message) for x in w), [str(x) for x in w]
        p = (X.indptr.astype(np.int32), X.indices.astype(np.int32), X.data)
        t = time.perf_counter()
        _core.weighted_embedding(*p, 30, E, n_threads=2**63)
        _core.PreparedEmbeddings(E, n_threads=2**63)
        assert time.perf_counter() - t < 5
        refused(gf.weighted_embedding, X, E, n_threads=0, match="at least 1")
        refused(gf.weighted_embedding, X, E, n_threads=2.5, match="must be an integer")
        refused(gf.top_genes, X, 5, row_offset=-1, match="row_offset")
    """,
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_hostile_kernel_arguments(group: str) -> None:
    code = PRELUDE + textwrap.dedent(GROUPS[group]) + '\nprint("OK")\n'
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"exit {proc.returncode} (negative: killed by a signal)\n{tail}"
    assert proc.stdout.rstrip().endswith("OK"), tail
    assert "panicked" not in proc.stderr, tail
