"""``_core.coo_into_csr``: a block's COO entries sorted into a chunk's CSR (the SOMA reader).

Checked against a plain stable sort by row (numpy) on random blocks, with
skipped rows, an offset into the chunk, and every dtype pair; hostile arguments run in a fresh
interpreter, so that an abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from genept_fast import _core


@settings(max_examples=200, deadline=None)
@given(
    n_rows=st.integers(1, 9),
    n_cols=st.integers(1, 12),
    index=st.sampled_from([np.int32, np.int64]),
    value=st.sampled_from([np.float32, np.float64]),
    base=st.integers(0, 50),
    data=st.data(),
)
def test_equals_scipy_coo_to_csr(
    n_rows: int, n_cols: int, index: type, value: type, base: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(0, 40))
    rows = np.array(data.draw(st.lists(st.integers(-1, n_rows - 1), min_size=k, max_size=k)))
    cols = np.array(data.draw(st.lists(st.integers(0, n_cols - 1), min_size=k, max_size=k)))
    vals = np.arange(1, k + 1, dtype=value)  # distinct: the order within a row shows
    rows, cols = rows.astype(np.int32), cols.astype(np.int32)
    keep = rows >= 0
    want = sp.coo_array((vals[keep], (rows[keep], cols[keep])), shape=(n_rows, n_cols))
    want_p, want_i, want_d = _scipy_csr(want)

    indptr = np.full(n_rows + 3, -7, dtype=index)
    indices = np.full(k + base + 2, -7, dtype=index)
    out = np.full(k + base + 2, -7, dtype=value)
    kept = _core.coo_into_csr(
        rows, cols, vals, n_cols, base, indptr[1 : n_rows + 2], indices[base:], out[base:]
    )
    assert kept == int(keep.sum())
    np.testing.assert_array_equal(indptr[1 : n_rows + 2], want_p + base)
    np.testing.assert_array_equal(indices[base : base + kept], want_i)
    np.testing.assert_array_equal(out[base : base + kept], want_d)
    # nothing written outside what it was given, nor past the kept entries
    assert indptr[0] == -7 and (indptr[n_rows + 2 :] == -7).all()
    assert (indices[:base] == -7).all() and (indices[base + kept :] == -7).all()
    assert (out[base + kept :] == -7).all()


def _scipy_csr(coo: sp.coo_array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plain reference: entries in a stable sort by row (what scipy's COO -> CSR kernel
    computes, without the duplicate summing ``tocsr`` adds)."""
    n_rows = coo.shape[0]
    indptr = np.empty(n_rows + 1, dtype=np.int64)
    indices = np.empty(coo.nnz, dtype=np.int64)
    data = np.empty(coo.nnz, dtype=coo.data.dtype)
    order = np.argsort(coo.row, kind="stable")
    indptr[0] = 0
    np.cumsum(np.bincount(coo.row, minlength=n_rows), out=indptr[1:])
    indices[:] = coo.col[order]
    data[:] = coo.data[order]
    return indptr, indices, data


HOSTILE = """
import numpy as np
from genept_fast import _core
from genept_fast.errors import GeneptError

def refused(*args, match):
    try:
        _core.coo_into_csr(*args)
    except GeneptError as e:
        assert match in str(e), (match, str(e))
        print("refused:", e, flush=True)
        return
    raise AssertionError("not refused: " + match)

r = np.array([0, 1, 1], dtype=np.int32)
c = np.array([2, 0, 3], dtype=np.int32)
v = np.ones(3, dtype=np.float32)
p, i, d = np.zeros(3, np.int32), np.zeros(3, np.int32), np.zeros(3, np.float32)
refused(np.array([0, 2, 1], np.int32), c, v, 4, 0, p, i, d, match="outside the block")
refused(r, np.array([2, 0, 4], np.int32), v, 4, 0, p, i, d, match="gene index 4")
refused(r, np.array([2, -3, 1], np.int32), v, 4, 0, p, i, d, match="gene index -3")
refused(r, c[:2], v, 4, 0, p, i, d, match="must be equal")
refused(r, c, v, 4, 0, p, i[:2], d, match="do not fit")
refused(r, c, v, 4, 2**31 - 2, p, i, d, match="does not fit the index type")
refused(r, c, v, 4, 0, p[:0], i, d, match="at least one slot")
refused(r, c, v.astype(np.float64), 4, 0, p, i, d, match="one dtype")
refused(r, c, v, 4, 0, p, i.astype(np.int64), d, match="one dtype")
refused(r, c, v, 4, 0, p, p, d, match="writable array of its own")
refused(r, c, v, 4, 0, p, i[::-1], d, match="C-contiguous")
ro = np.zeros(3, np.float32); ro.flags.writeable = False
refused(r, c, v, 4, 0, p, i, ro, match="writable")
assert _core.coo_into_csr(r, c, v, 4, 0, p, i, d) == 3
print("OK")
"""


def test_hostile_arguments_are_errors_not_aborts() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HOSTILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), (
        proc.stdout[-2000:] + proc.stderr[-2000:]
    )
