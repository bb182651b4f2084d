"""``encode.compact_table``: the table rows a dataset uses, in its gene order.

Checked against the plain gather it stands for (``matrix[gene_index[gene_index >= 0]]``), on
random maps and on the identity map, which it serves without copying the table.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from genept_fast.encode import compact_table


def reference(matrix: np.ndarray, gene_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hit = gene_index >= 0
    index = np.where(hit, np.cumsum(hit) - 1, -1)
    return matrix[gene_index[hit]].astype(np.float32), index


@settings(max_examples=150, deadline=None)
@given(
    n_rows=st.integers(1, 12),
    dim=st.integers(1, 5),
    data=st.data(),
)
def test_compact_table_equals_the_gather(n_rows: int, dim: int, data: st.DataObject) -> None:
    n_genes = data.draw(st.integers(0, 15))
    gene_index = np.array(
        data.draw(st.lists(st.integers(-1, n_rows - 1), min_size=n_genes, max_size=n_genes)),
        dtype=np.int64,
    )
    matrix = np.arange(n_rows * dim, dtype=np.float32).reshape(n_rows, dim)
    rows, index = compact_table(matrix, gene_index)
    want_rows, want_index = reference(matrix, gene_index)
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(index, want_index)


def test_identity_map_serves_the_table_without_a_copy() -> None:
    matrix = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    rows, index = compact_table(matrix, np.arange(50))
    assert np.shares_memory(rows, matrix)
    np.testing.assert_array_equal(index, np.arange(50))
    # any other map (a row missing, reordered, repeated, or a float64 table) is a fresh gather
    others = (np.arange(49), np.arange(50)[::-1], np.r_[np.arange(50), 3], np.r_[-1, 1:50])
    for gene_index in others:
        rows, _ = compact_table(matrix, gene_index)
        assert not np.shares_memory(rows, matrix)
        np.testing.assert_array_equal(rows, reference(matrix, gene_index)[0])
    rows, _ = compact_table(matrix.astype(np.float64), np.arange(50))
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, matrix)
