//! A block of coordinate (COO) entries scattered into a chunk's CSR arrays ([`coo_into_csr`]).
//!
//! The TileDB-SOMA reader gets each block of rows as three columns (row, column, value) in the
//! array's tile order: within a tile row by row, a row's tiles one after another. CSR wants
//! every row's entries together; a stable counting sort by row gives that in two passes, and
//! writes straight into the chunk's arrays (no block CSR, no copy of it).

use crate::csr::Index;
use crate::error::{GeneptError, Result};

/// Scatters the entries `(rows[k], cols[k], vals[k])` of a block of `indptr.len() - 1` rows into
/// CSR arrays, stable by row: each row keeps its entries in the order they come (so columns
/// that come sorted within each row stay sorted). An entry whose row is negative is skipped
/// (a cell read but not selected).
///
/// `indptr` receives `base` plus each row's start (`indptr[0] = base`); `indices` and `data`
/// receive the kept entries from their position 0 (pass the chunk's arrays from its current
/// position on). Returns the number of entries kept.
///
/// Errors: the three inputs of different lengths, a row at or past the block's rows, a column
/// outside `[0, n_cols)` (named with its block row), outputs too short, or an offset that does
/// not fit the index type.
#[allow(clippy::too_many_arguments)]
pub fn coo_into_csr<I, V>(
    rows: &[i32],
    cols: &[i32],
    vals: &[V],
    n_cols: usize,
    base: usize,
    indptr: &mut [I],
    indices: &mut [I],
    data: &mut [V],
) -> Result<usize>
where
    I: Index + TryFrom<usize>,
    V: Copy,
{
    if rows.len() != cols.len() || rows.len() != vals.len() {
        return Err(GeneptError::Shape(format!(
            "rows, cols and values have {}, {} and {} entries; they must be equal",
            rows.len(),
            cols.len(),
            vals.len()
        )));
    }
    let Some(n_rows) = indptr.len().checked_sub(1) else {
        return Err(GeneptError::Shape(
            "indptr must have at least one slot".into(),
        ));
    };
    // Rows: count each row's entries (starts[r + 1]), checking every row on the way.
    let mut starts = vec![0usize; n_rows + 1];
    for &r in rows {
        if r < 0 {
            continue;
        }
        let r = r as usize;
        if r >= n_rows {
            return Err(GeneptError::MalformedCsr(format!(
                "an entry has row {r}, outside the block's {n_rows} rows"
            )));
        }
        starts[r + 1] += 1;
    }
    for r in 0..n_rows {
        starts[r + 1] += starts[r];
    }
    let kept = starts[n_rows];
    if indices.len() < kept || data.len() < kept {
        return Err(GeneptError::Shape(format!(
            "{kept} entries do not fit outputs of {} indices and {} values",
            indices.len(),
            data.len()
        )));
    }
    let offset = |at: usize| -> Result<I> {
        base.checked_add(at)
            .and_then(|v| I::try_from(v).ok())
            .ok_or_else(|| {
                GeneptError::InvalidArgument(format!(
                    "offset {base} + {at} does not fit the index type"
                ))
            })
    };
    // The last offset first: when it fits, every smaller one does.
    indptr[n_rows] = offset(kept)?;
    for (slot, &s) in indptr[..n_rows].iter_mut().zip(&starts[..n_rows]) {
        *slot = offset(s)?;
    }
    // Scatter: `next[r]` is where row `r`'s next entry goes.
    let mut next = starts;
    for ((&r, &c), &v) in rows.iter().zip(cols).zip(vals) {
        if r < 0 {
            continue;
        }
        let r = r as usize; // < n_rows: checked above
        if c < 0 || c as usize >= n_cols {
            return Err(GeneptError::GeneOutside {
                cell: r,
                gene: i64::from(c),
                n_cols,
            });
        }
        let p = next[r];
        // A column is an i32 in [0, n_cols), so it fits int32 and int64 indices; converted
        // with a check all the same (never a silent wrap).
        indices[p] = I::try_from(c as usize).map_err(|_| {
            GeneptError::InvalidArgument(format!("column {c} does not fit the index type"))
        })?;
        data[p] = v;
        next[r] = p + 1;
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stable counting sort by row: the plain reference.
    fn reference(
        rows: &[i32],
        cols: &[i32],
        vals: &[f32],
        n: usize,
    ) -> (Vec<i64>, Vec<i64>, Vec<f32>) {
        let mut indptr = vec![0i64; n + 1];
        let mut indices = Vec::new();
        let mut data = Vec::new();
        for r in 0..n {
            for k in 0..rows.len() {
                if rows[k] == r as i32 {
                    indices.push(i64::from(cols[k]));
                    data.push(vals[k]);
                }
            }
            indptr[r + 1] = indices.len() as i64;
        }
        (indptr, indices, data)
    }

    #[test]
    fn scatters_stably_by_row_and_skips_negative_rows() {
        let rows = [1, 0, 1, -1, 2, 0, 1];
        let cols = [3, 1, 5, 9, 0, 2, 7];
        let vals = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let (want_p, want_i, want_d) = reference(&rows, &cols, &vals, 3);
        let mut indptr = vec![0i64; 4];
        let mut indices = vec![-9i64; 10];
        let mut data = vec![0f32; 10];
        let kept = coo_into_csr(
            &rows,
            &cols,
            &vals,
            10,
            100,
            &mut indptr,
            &mut indices,
            &mut data,
        )
        .unwrap();
        assert_eq!(kept, 6);
        let shifted: Vec<i64> = want_p.iter().map(|p| p + 100).collect();
        assert_eq!(indptr, shifted);
        assert_eq!(&indices[..kept], &want_i[..]);
        assert_eq!(&data[..kept], &want_d[..]);
        assert_eq!(indices[kept], -9); // nothing written past the kept entries
    }

    /// `coo_into_csr` on a 2-row block of unit values, 5 columns, outputs of `room` entries.
    fn call(rows: &[i32], cols: &[i32], base: usize, room: usize) -> Result<usize> {
        let vals = vec![1.0f32; rows.len()];
        let mut p = vec![0i32; 3];
        let (mut i, mut d) = (vec![0i32; room], vec![0f32; room]);
        coo_into_csr(rows, cols, &vals, 5, base, &mut p, &mut i, &mut d)
    }

    #[test]
    fn errors_name_the_problem() {
        let e = call(&[0, 2], &[0, 0], 0, 4);
        assert!(matches!(e, Err(GeneptError::MalformedCsr(_))));
        let e = call(&[0, 1], &[0, 5], 0, 4);
        let outside = matches!(
            e,
            Err(GeneptError::GeneOutside {
                cell: 1,
                gene: 5,
                ..
            })
        );
        assert!(outside, "{e:?}");
        let vals = [1.0f32];
        let (mut p, mut i, mut d) = (vec![0i32; 3], vec![0i32; 4], vec![0f32; 4]);
        let e = coo_into_csr(&[0], &[0, 1], &vals, 5, 0, &mut p, &mut i, &mut d);
        assert!(matches!(e, Err(GeneptError::Shape(_))));
        assert!(matches!(
            call(&[0, 1], &[0, 1], 0, 1),
            Err(GeneptError::Shape(_))
        ));
        let e = call(&[0], &[0], i32::MAX as usize, 4);
        assert!(matches!(e, Err(GeneptError::InvalidArgument(_))));
        let mut empty: Vec<i32> = Vec::new();
        let e = coo_into_csr::<i32, f32>(&[], &[], &[], 5, 0, &mut empty, &mut i, &mut d);
        assert!(matches!(e, Err(GeneptError::Shape(_))));
        assert_eq!(call(&[1, -1, 0], &[4, 9, 0], 0, 2).unwrap(), 2); // a skipped row's column is not checked
    }
}
