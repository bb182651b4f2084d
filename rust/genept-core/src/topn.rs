//! Top-N gene ranking per cell (the gene order of a GenePT-s cell sentence).
//!
//! For each cell: the indices of the `n` genes with the largest strictly positive values, in
//! descending order of value, ties broken by the lower gene index, padded with -1. Each
//! nonzero becomes one integer key (the value's order-preserving bits, inverted, above the gene
//! index), so the whole comparison is one integer compare; `select_nth_unstable` finds the
//! first `n` and only those are sorted. Duplicate entries of a gene are summed first, as scipy
//! does; rows stored in canonical order (strictly increasing indices) skip that step.

use rayon::prelude::*;

use crate::csr::{CsrView, Index, Value};
use crate::error::{GeneptError, Result};

struct Scratch<V: Value> {
    keys: Vec<V::Key>,
    /// Dense per-gene sums for rows with duplicates or unsorted indices (all zero between rows).
    dense: Vec<V>,
    seen: Vec<bool>,
    touched: Vec<u32>,
}

/// Writes the top-`n` gene indices of every cell into `out` (row-major `n_cells × n`).
/// Runs on the current rayon pool.
pub fn top_genes<I: Index, V: Value>(
    x: &CsrView<'_, I, V>,
    n: usize,
    out: &mut [i32],
) -> Result<()> {
    if n == 0 {
        return Err(GeneptError::InvalidArgument("n must be at least 1".into()));
    }
    if x.n_cols() > i32::MAX as usize {
        return Err(GeneptError::InvalidArgument(format!(
            "{} genes do not fit the int32 output",
            x.n_cols()
        )));
    }
    if out.len() != x.n_rows() * n {
        return Err(GeneptError::Shape(format!(
            "output buffer has {} values, expected {} × {n}",
            out.len(),
            x.n_rows()
        )));
    }
    let n_cols = x.n_cols();
    out.par_chunks_mut(n)
        .with_min_len(64)
        .enumerate()
        .for_each_init(
            || Scratch::<V> {
                keys: Vec::new(),
                dense: Vec::new(),
                seen: Vec::new(),
                touched: Vec::new(),
            },
            |s, (r, dst)| {
                row_keys(x, r, n_cols, s);
                rank_into::<V>(&mut s.keys, dst);
            },
        );
    Ok(())
}

/// Fills `s.keys` with one key per gene of cell `r` whose (summed) value is > 0.
fn row_keys<I: Index, V: Value>(
    x: &CsrView<'_, I, V>,
    r: usize,
    n_cols: usize,
    s: &mut Scratch<V>,
) {
    let (idx, val) = x.row(r);
    s.keys.clear();
    // Validated: every index is in [0, n_cols).
    let col = |j: I| j.to_usize().unwrap_or(0);
    let canonical = idx.windows(2).all(|w| col(w[0]) < col(w[1]));
    if canonical {
        s.keys.extend(
            idx.iter()
                .zip(val)
                .filter(|(_, &v)| v > V::ZERO)
                .map(|(&j, &v)| v.rank_key(col(j) as u32)),
        );
        return;
    }
    if s.dense.len() != n_cols {
        s.dense = vec![V::ZERO; n_cols];
        s.seen = vec![false; n_cols];
    }
    s.touched.clear();
    for (&j, &v) in idx.iter().zip(val) {
        let j = col(j);
        if !s.seen[j] {
            s.seen[j] = true;
            s.touched.push(j as u32);
        }
        s.dense[j] = s.dense[j] + v;
    }
    for &j in &s.touched {
        let v = s.dense[j as usize];
        if v > V::ZERO {
            s.keys.push(v.rank_key(j));
        }
        s.dense[j as usize] = V::ZERO;
        s.seen[j as usize] = false;
    }
}

fn rank_into<V: Value>(keys: &mut [V::Key], dst: &mut [i32]) {
    let n = dst.len();
    let m = keys.len().min(n);
    if keys.len() > n {
        keys.select_nth_unstable(n - 1);
    }
    let top = &mut keys[..m];
    top.sort_unstable();
    for (d, &k) in dst.iter_mut().zip(top.iter()) {
        *d = V::key_gene(k) as i32;
    }
    dst[m..].fill(-1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(ip: &[i64], ix: &[i64], v: &[f64], g: usize, n: usize) -> Vec<i32> {
        let x = CsrView::new(ip, ix, v, g).unwrap();
        let mut out = vec![0; (ip.len() - 1) * n];
        top_genes(&x, n, &mut out).unwrap();
        out
    }

    #[test]
    fn ranks_ties_and_pads() {
        // cell 0: genes 0..5 with values 1, 3, 3, 0, -1 ; cell 1 empty.
        let out = top(
            &[0, 5, 5],
            &[0, 1, 2, 3, 4],
            &[1.0, 3.0, 3.0, 0.0, -1.0],
            5,
            4,
        );
        assert_eq!(out, vec![1, 2, 0, -1, -1, -1, -1, -1]);
    }

    #[test]
    fn sums_duplicates_and_handles_unsorted() {
        // gene 2 appears twice (0.5 + 2.0 = 2.5 beats gene 0's 2.0); gene 1 cancels to 0.
        let out = top(&[0, 5], &[2, 0, 1, 2, 1], &[0.5, 2.0, 1.0, 2.0, -1.0], 3, 3);
        assert_eq!(out, vec![2, 0, -1]);
    }

    #[test]
    fn f32_and_f64_agree() {
        let x32 = CsrView::<i32, f32>::new(&[0, 3], &[4, 1, 7], &[0.25, 9.0, 0.25], 8).unwrap();
        let mut o = vec![0; 2];
        top_genes(&x32, 2, &mut o).unwrap();
        assert_eq!(o, vec![1, 4]);
        assert!(top_genes(&x32, 0, &mut o).is_err());
    }
}
