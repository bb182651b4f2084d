"""``kernels.coo_into_csr``: a block's batches of COO entries sorted into a chunk's CSR (the SOMA
reader), rows and columns mapped from joinids on the way.

Checked against a plain stable sort by row (numpy) on random blocks: runs of one row (as TileDB
gives them) and scattered entries, split into several batches, rows by offset, by a span's
``row_of`` map (negative: skipped) and by sorted joinids, columns as they are or through a
``col_of`` map, with an offset into the chunk, every dtype pair. Hostile arguments run in a
fresh interpreter, so that an abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from genept_fast import kernels
from genept_fast.errors import MalformedMatrixError


def _rows_map(kind: str, n_rows: int, data: st.DataObject) -> tuple[np.ndarray, dict[str, Any]]:
    """The joinids a block's reads may return, each one's block row (-1: skipped), and the
    arguments that tell the kernel so."""
    first = data.draw(st.integers(0, 2**40))
    if kind == "offset":
        joinids = first + np.arange(n_rows, dtype=np.int64)
        return np.stack([joinids, np.arange(n_rows)]), {"first": first}
    if kind == "span":
        span = data.draw(st.integers(n_rows, 3 * n_rows))
        chosen = sorted(data.draw(st.permutations(range(span)))[:n_rows])
        row_of = np.full(span, -1, dtype=np.int32)
        row_of[chosen] = np.arange(n_rows, dtype=np.int32)
        joinids = first + np.arange(span, dtype=np.int64)
        return np.stack([joinids, row_of]), {"first": first, "row_of": row_of}
    ids = np.array(
        sorted(data.draw(st.sets(st.integers(0, 2**40), min_size=n_rows, max_size=n_rows))),
        dtype=np.int64,
    )
    return np.stack([ids, np.arange(n_rows)]), {"row_ids": ids}


def _cols_map(mapped: bool, n_cols: int, data: st.DataObject) -> tuple[np.ndarray, np.ndarray]:
    """The column joinids entries may hold, and each one's column; ``col_of`` when mapped."""
    if not mapped:
        return np.arange(n_cols, dtype=np.int64), np.arange(n_cols)
    width = data.draw(st.integers(n_cols, 2 * n_cols + 3))
    col_of = np.full(width, -1, dtype=np.int32)
    named = data.draw(st.permutations(range(width)))[:n_cols]
    col_of[named] = data.draw(st.permutations(range(n_cols)))
    valid = np.flatnonzero(col_of >= 0).astype(np.int64)
    return valid, col_of


def _reference(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plain reference: the kept entries (row >= 0) in a stable sort by row."""
    keep = rows >= 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols[order], vals[order]


@settings(max_examples=300, deadline=None)
@given(
    n_rows=st.integers(1, 9),
    n_cols=st.integers(1, 12),
    index=st.sampled_from([np.int32, np.int64]),
    value=st.sampled_from([np.float32, np.float64]),
    kind=st.sampled_from(["offset", "span", "sorted"]),
    mapped=st.booleans(),
    base=st.integers(0, 50),
    data=st.data(),
)
def test_equals_a_stable_sort_by_row(
    n_rows: int,
    n_cols: int,
    index: type,
    value: type,
    kind: str,
    mapped: bool,
    base: int,
    data: st.DataObject,
) -> None:
    (joinids, block_rows), row_args = _rows_map(kind, n_rows, data)
    col_joinids, col_map = _cols_map(mapped, n_cols, data)
    # runs of one row (TileDB's order within a tile) of 1 to 6 entries each
    runs = data.draw(
        st.lists(st.tuples(st.integers(0, joinids.size - 1), st.integers(1, 6)), max_size=12)
    )
    at = np.repeat([r for r, _ in runs], [k for _, k in runs]).astype(np.int64)
    k = at.size
    rows = joinids[at]
    which = np.array(
        data.draw(st.lists(st.integers(0, col_joinids.size - 1), min_size=k, max_size=k)),
        dtype=np.int64,
    )
    cols = col_joinids[which]
    vals = np.arange(1, k + 1, dtype=value)  # distinct: the order within a row shows
    cuts = sorted(data.draw(st.lists(st.integers(0, k), max_size=3)))
    bounds = [0, *cuts, k]
    batches = [(rows[a:b], cols[a:b], vals[a:b]) for a, b in itertools.pairwise(bounds)]

    want_p, want_i, want_d = _reference(
        block_rows[at].astype(np.int64),
        col_map[cols] if mapped else cols,
        vals,
        n_rows,
    )
    indptr = np.full(n_rows + 3, -7, dtype=index)
    indices = np.full(k + base + 2, -7, dtype=index)
    out = np.full(k + base + 2, -7, dtype=value)
    kept = kernels.coo_into_csr(
        batches,
        n_cols,
        base=base,
        indptr=indptr[1 : n_rows + 2],
        indices=indices[base:],
        data=out[base:],
        col_of=col_map if mapped else None,
        **row_args,
    )
    assert kept == want_i.size
    np.testing.assert_array_equal(indptr[1 : n_rows + 2], want_p + base)
    np.testing.assert_array_equal(indices[base : base + kept], want_i)
    np.testing.assert_array_equal(out[base : base + kept], want_d)
    # nothing written outside what it was given, nor past the kept entries
    assert indptr[0] == -7 and (indptr[n_rows + 2 :] == -7).all()
    assert (indices[:base] == -7).all() and (indices[base + kept :] == -7).all()
    assert (out[base + kept :] == -7).all()


def test_a_column_no_var_row_names_carries_its_joinid_and_row() -> None:
    rows = np.array([5, 5, 6, 6], dtype=np.int64)
    vals = np.ones(4, dtype=np.float32)
    col_of = np.array([0, -1, 1], dtype=np.int32)
    p, i, d = np.zeros(3, np.int32), np.zeros(4, np.int32), np.zeros(4, np.float32)
    for cols, joinid in (([0, 1, 2, 2], 1), ([0, 2, 0, 7], 7)):
        c = np.array(cols, dtype=np.int64)
        try:
            kernels.coo_into_csr(
                [(rows, c, vals)], 2, base=0, indptr=p, indices=i, data=d, first=5, col_of=col_of
            )
        except MalformedMatrixError as e:
            assert (e.cell, e.gene) == (0 if joinid == 1 else 1, joinid), str(e)
        else:
            raise AssertionError("not refused")


HOSTILE = """
import numpy as np
from genept_fast import _core
from genept_fast.errors import GeneptError

def refused(batches, *args, match, **kw):
    try:
        _core.coo_into_csr(batches, *args, **kw)
    except GeneptError as e:
        assert match in str(e), (match, str(e))
        print("refused:", e, flush=True)
        return
    raise AssertionError("not refused: " + match)

r = np.array([0, 1, 1], dtype=np.int64)
c = np.array([2, 0, 3], dtype=np.int64)
v = np.ones(3, dtype=np.float32)
b = [(r, c, v)]
p, i, d = np.zeros(3, np.int32), np.zeros(3, np.int32), np.zeros(3, np.float32)
refused([(np.array([0, 2, 1]), c, v)], 4, 0, p, i, d, match="outside the block's 2 rows")
refused([(np.array([0, -1, 1]), c, v)], 4, 0, p, i, d, match="outside the block's 2 rows")
refused(b, 4, 0, p, i, d, first=1, match="outside the block's 2 rows")
refused(b, 4, 0, p, i, d, row_ids=np.array([0, 2]), match="not asked for")
refused(b, 4, 0, p, i, d, row_ids=np.array([1, 0]), match="strictly increasing")
refused(b, 4, 0, p, i, d, row_of=np.array([0], np.int32), match="outside the 1 joinids")
refused(b, 4, 0, p, i, d, row_of=np.array([0, 1], np.int32), row_ids=np.array([0, 1]),
        match="not both")
refused([(r, np.array([2, 0, 4]), v)], 4, 0, p, i, d, match="gene index 4")
refused([(r, np.array([2, -3, 1]), v)], 4, 0, p, i, d, match="gene index -3")
refused(b, 4, 0, p, i, d, col_of=np.array([0, 1, 2], np.int32), match="gene index 3")
refused(b, 4, 0, p, i, d, col_of=np.array([0, 1, -1, 2], np.int32), match="gene index 2")
refused([(r, c[:2], v)], 4, 0, p, i, d, match="must be equal")
refused(b, 4, 0, p, i[:2], d, match="do not fit")
refused(b, 4, 2**31 - 2, p, i, d, match="does not fit the index type")
refused(b, 2**31, 0, p, i, d, match="does not fit the index type")
refused(b, 4, 0, p[:0], i, d, match="at least one slot")
refused([(r.astype(np.int32), c, v)], 4, 0, p, i, d, match="rows must be a 1-D numpy array of int6")
refused([(r, c.astype(np.float64), v)], 4, 0, p, i, d, match="cols must be a 1-D numpy array")
refused(b, 4, 0, p, i, d, row_of=np.array([0, 1]), match="row_of must be a 1-D numpy array")
refused(b, 4, 0, p, i, d, col_of=[0, 1, 2, 3], match="col_of must be a 1-D numpy array")
refused([(r, c)], 4, 0, p, i, d, match="list of (rows, cols, values) tuples")
refused((r, c, v), 4, 0, p, i, d, match="list of (rows, cols, values) tuples")
refused([[r, c, v]], 4, 0, p, i, d, match="list of (rows, cols, values) tuples")
refused(b, 4, 0, p, i, d.astype(np.float64), match="one dtype")
refused(b + [(r, c, v.astype(np.float64))], 4, 0, p, i, d, match="one dtype")
refused([(r, c, v.astype(np.int64))], 4, 0, p, i, d, match="one dtype")
refused(b, 4, 0, p, i.astype(np.int64), d, match="one dtype")
refused(b, 4, 0, p, p, d, match="writable array of its own")
refused(b, 4, 0, p, i, v, match="writable array of its own")  # an input as the output
refused(b, 4, 0, p, i[::-1], d, match="C-contiguous")
refused([(r[::-1], c, v)], 4, 0, p, i, d, match="C-contiguous")
ro = np.zeros(3, np.float32); ro.flags.writeable = False
refused(b, 4, 0, p, i, ro, match="writable")
assert _core.coo_into_csr(b, 4, 0, p, i, d) == 3
assert _core.coo_into_csr([], 4, 5, p, i, d) == 0 and list(p) == [5, 5, 5]
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
