//! Validated, borrowed views of a CSR matrix (cells × genes) and of a dense embedding table.
//!
//! The kernels accept `int32` or `int64` indices and `float32` or `float64` values, exactly as
//! scipy stores them, so that a caller never has to copy an atlas-sized matrix to call us.
//! Validation happens once, here, in parallel; the kernels then index without further checks
//! beyond what the slice bounds give for free.

use rayon::prelude::*;

use crate::error::{non_finite_kind, GeneptError, Result};

/// An index type scipy uses for `indptr`/`indices`: `i32` or `i64`.
pub trait Index: Copy + Send + Sync + 'static {
    /// The value as `usize`, or `None` when negative (or not addressable).
    fn to_usize(self) -> Option<usize>;
    /// The value as `i64`, for messages.
    fn to_i64(self) -> i64;
    /// Whether the value is outside `[0, n)`: one unsigned compare in the index's own width
    /// (a negative index is a large unsigned one), so that the check loops vectorise.
    fn outside(self, n: usize) -> bool;
    /// Whether the indices are strictly increasing, for indices in `[0, MAX]` (checked
    /// ones). ORs `next - prev - 1` (negative exactly when `next <= prev`) in the index's own
    /// width, so that the loop vectorises: comparing after widening `i32` to `i64`, or
    /// comparing `i64` at all, stays scalar or emulated under SSE2.
    fn increasing(idx: &[Self]) -> bool;
}

macro_rules! increasing_by_gaps {
    () => {
        #[inline]
        fn increasing(idx: &[Self]) -> bool {
            let Some(last) = idx.len().checked_sub(1) else {
                return true;
            };
            let bad = idx[..last]
                .iter()
                .zip(&idx[1..])
                .fold(0, |bad, (&a, &b)| bad | b.wrapping_sub(a).wrapping_sub(1));
            bad >= 0
        }
    };
}

impl Index for i32 {
    #[inline(always)]
    fn to_usize(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
    #[inline(always)]
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
    #[inline(always)]
    fn outside(self, n: usize) -> bool {
        // Every non-negative i32 is below 2^31, and every negative one is at least 2^31 as u32.
        (self as u32) >= n.min(1 << 31) as u32
    }
    increasing_by_gaps!();
}

impl Index for i64 {
    #[inline(always)]
    fn to_usize(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
    #[inline(always)]
    fn to_i64(self) -> i64 {
        self
    }
    #[inline(always)]
    fn outside(self, n: usize) -> bool {
        (self as u64) >= (n as u64).min(1 << 63)
    }
    increasing_by_gaps!();
}

/// A value type of the expression matrix: `f32` or `f64`.
pub trait Value: Copy + Send + Sync + PartialOrd + std::ops::Add<Output = Self> + 'static {
    /// A sort key that orders strictly positive values descending, ties by ascending gene.
    type Key: Ord + Copy + Send + Sync;
    const ZERO: Self;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
    /// The key of a strictly positive, finite value of gene `gene`.
    fn rank_key(self, gene: u32) -> Self::Key;
    /// The gene index stored in a key.
    fn key_gene(key: Self::Key) -> u32;
    /// Bits that order strictly positive values like the values (equal values, equal bits).
    fn value_bits(self) -> u64;
    /// Whether [`CsrView::new`] rejects the value: NaN or infinite, or negative when `counts`.
    /// Computed in the value's own width, so that the check loops vectorise.
    fn rejected(self, counts: bool) -> bool;
    /// A key for a count: the float32 bits (as an `i32`) of the count if it is an integer
    /// below `limit` (an integer, at most 2^16), else of `limit`. Bits of non-negative floats
    /// order like the floats, so a row's largest key is an integer maximum, which vectorises
    /// (float maxima and saturating conversions do not).
    fn small_count(self, limit: f32) -> i32;
    /// The low bits (`mask`, below 2^16) of an integer count below 2^16, read off the float
    /// without a conversion.
    fn count_bits(self, mask: usize) -> usize;
}

impl Value for f32 {
    type Key = u64;
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn rank_key(self, gene: u32) -> u64 {
        // For positive floats the bit pattern orders like the value; inverting it makes the
        // largest value the smallest key, and the gene index in the low bits breaks ties.
        (u64::from(!self.to_bits()) << 32) | u64::from(gene)
    }
    #[inline(always)]
    fn key_gene(key: u64) -> u32 {
        key as u32
    }
    #[inline(always)]
    fn value_bits(self) -> u64 {
        u64::from(self.to_bits())
    }
    #[inline(always)]
    fn rejected(self, counts: bool) -> bool {
        // All exponent bits set: an infinity or a NaN.
        (self.to_bits() & 0x7f80_0000 == 0x7f80_0000) | (counts & (self < 0.0))
    }
    #[inline(always)]
    fn small_count(self, limit: f32) -> i32 {
        // Clamped (a NaN becomes 0), then rounded to an integer by adding and removing 2^23.
        let c = self.max(0.0).min(limit);
        let key = if (c + 8_388_608.0) - 8_388_608.0 == self {
            c
        } else {
            limit
        };
        key.to_bits() as i32
    }
    #[inline(always)]
    fn count_bits(self, mask: usize) -> usize {
        // 2^23 + k for an integer k < 2^23 is exact and holds k in the low mantissa bits.
        ((self + 8_388_608.0).to_bits() as usize) & mask
    }
}

impl Value for f64 {
    type Key = u128;
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn rank_key(self, gene: u32) -> u128 {
        (u128::from(!self.to_bits()) << 64) | u128::from(gene)
    }
    #[inline(always)]
    fn key_gene(key: u128) -> u32 {
        key as u32
    }
    #[inline(always)]
    fn value_bits(self) -> u64 {
        self.to_bits()
    }
    #[inline(always)]
    fn rejected(self, counts: bool) -> bool {
        !self.is_finite() | (counts & (self < 0.0))
    }
    #[inline(always)]
    fn small_count(self, limit: f32) -> i32 {
        let c = self.max(0.0).min(f64::from(limit));
        let key = if (c + 4_503_599_627_370_496.0) - 4_503_599_627_370_496.0 == self {
            c
        } else {
            f64::from(limit)
        };
        // An integer of at most 2^16: exact in float32.
        (key as f32).to_bits() as i32
    }
    #[inline(always)]
    fn count_bits(self, mask: usize) -> usize {
        // 2^52 + k for an integer k < 2^52 is exact and holds k in the low mantissa bits.
        ((self + 4_503_599_627_370_496.0).to_bits() as usize) & mask
    }
}

/// Whether a row's column indices are strictly increasing (canonical: sorted, no duplicates).
/// For the rows of a [`CsrView`] (indices checked to lie in `[0, n_cols)`).
#[inline]
pub(crate) fn strictly_increasing<I: Index>(idx: &[I]) -> bool {
    I::increasing(idx)
}

/// A borrowed CSR matrix whose structure and values have been checked.
#[derive(Clone, Copy, Debug)]
pub struct CsrView<'a, I: Index, V: Value> {
    indptr: &'a [I],
    indices: &'a [I],
    data: &'a [V],
    n_rows: usize,
    n_cols: usize,
    /// Checked to hold no negative value ([`CsrView::new_counts`]).
    nonnegative: bool,
}

impl<'a, I: Index, V: Value> CsrView<'a, I, V> {
    /// Checks a CSR matrix and borrows it. Rejects: `indptr` of length 0, a first entry other
    /// than 0, a decreasing `indptr`, a last entry other than `nnz`, `indices`/`data` of
    /// different lengths, column indices outside `[0, n_cols)`, and NaN or infinite values.
    /// Unsorted and duplicate column indices are valid (duplicates are summed, as scipy does).
    pub fn new(indptr: &'a [I], indices: &'a [I], data: &'a [V], n_cols: usize) -> Result<Self> {
        Self::checked(indptr, indices, data, n_cols, false)
    }

    /// [`CsrView::new`] for raw counts: also rejects negative values, naming the first cell and
    /// gene that has one (in the same pass over the values).
    pub fn new_counts(
        indptr: &'a [I],
        indices: &'a [I],
        data: &'a [V],
        n_cols: usize,
    ) -> Result<Self> {
        Self::checked(indptr, indices, data, n_cols, true)
    }

    fn checked(
        indptr: &'a [I],
        indices: &'a [I],
        data: &'a [V],
        n_cols: usize,
        nonnegative: bool,
    ) -> Result<Self> {
        if indptr.is_empty() {
            return Err(GeneptError::MalformedCsr(
                "indptr is empty; it must have n_cells + 1 entries".into(),
            ));
        }
        if indices.len() != data.len() {
            return Err(GeneptError::MalformedCsr(format!(
                "indices has {} entries but data has {}",
                indices.len(),
                data.len()
            )));
        }
        let n_rows = indptr.len() - 1;
        if indptr[0].to_i64() != 0 {
            return Err(GeneptError::MalformedCsr(format!(
                "indptr[0] is {}, expected 0",
                indptr[0].to_i64()
            )));
        }
        let last = indptr[n_rows].to_i64();
        if last != data.len() as i64 {
            return Err(GeneptError::MalformedCsr(format!(
                "indptr[-1] is {last} but there are {} stored values",
                data.len()
            )));
        }
        if let Some(r) = indptr
            .windows(2)
            .position(|w| w[1].to_i64() < w[0].to_i64())
        {
            return Err(GeneptError::IndptrDecreases {
                cell: r,
                at: r,
                start: indptr[r].to_i64(),
                end: indptr[r + 1].to_i64(),
            });
        }
        let view = CsrView {
            indptr,
            indices,
            data,
            n_rows,
            n_cols,
            nonnegative,
        };
        view.check_entries()?;
        Ok(view)
    }

    /// Finds the first cell (lowest index) with a column index out of range, a non-finite
    /// value, or (for counts) a negative value.
    fn check_entries(&self) -> Result<()> {
        let (n_cols, counts) = (self.n_cols, self.nonnegative);
        let bad = (0..self.n_rows)
            .into_par_iter()
            .with_min_len(256)
            .map(|r| {
                let (idx, val) = self.row(r);
                // Fast path: OR a flag over the entries without branching, in their own widths
                // (the loops vectorise); only a row with a bad one is walked again to name it.
                let bad_idx = idx
                    .iter()
                    .fold(0u8, |b, &j| b | u8::from(j.outside(n_cols)));
                let bad_val = val
                    .iter()
                    .fold(0u8, |b, &v| b | u8::from(v.rejected(counts)));
                if bad_idx | bad_val == 0 {
                    return None;
                }
                for (&j, &v) in idx.iter().zip(val) {
                    match j.to_usize() {
                        Some(j) if j < n_cols => {}
                        _ => {
                            return Some(GeneptError::GeneOutside {
                                cell: r,
                                gene: j.to_i64(),
                                n_cols,
                            })
                        }
                    }
                    let x = v.to_f64();
                    if !x.is_finite() {
                        return Some(GeneptError::NonFinite {
                            kind: non_finite_kind(x),
                            cell: r,
                            gene: j.to_i64(),
                        });
                    }
                    if counts && x < 0.0 {
                        return Some(GeneptError::NegativeCount {
                            value: x,
                            cell: r,
                            gene: j.to_i64(),
                        });
                    }
                }
                None
            })
            .find_first(Option::is_some)
            .flatten();
        match bad {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    #[inline]
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    #[inline]
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// Whether the values were checked to be non-negative ([`CsrView::new_counts`]).
    #[inline]
    pub fn checked_nonnegative(&self) -> bool {
        self.nonnegative
    }

    #[inline]
    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// The stored (gene index, value) pairs of cell `r`.
    #[inline]
    pub fn row(&self, r: usize) -> (&'a [I], &'a [V]) {
        // Validated in `new`: indptr is monotone, starts at 0 and ends at nnz.
        let a = self.indptr[r].to_usize().unwrap_or(0);
        let b = self.indptr[r + 1].to_usize().unwrap_or(0);
        (&self.indices[a..b], &self.data[a..b])
    }

    /// Number of stored entries of rows `r0..r1`.
    #[inline]
    pub fn nnz_rows(&self, r0: usize, r1: usize) -> usize {
        self.indptr[r1].to_usize().unwrap_or(0) - self.indptr[r0].to_usize().unwrap_or(0)
    }
}

/// That `data` holds a row-major `n_rows × dim` table.
pub(crate) fn check_embedding_shape(data: &[f32], n_rows: usize, dim: usize) -> Result<()> {
    if n_rows.checked_mul(dim) != Some(data.len()) {
        return Err(GeneptError::Shape(format!(
            "embedding buffer has {} values, expected {n_rows} × {dim}",
            data.len()
        )));
    }
    Ok(())
}

/// Whether a table row holds a NaN or an infinity (a loop that vectorises).
#[inline]
pub(crate) fn embedding_row_rejected(row: &[f32]) -> bool {
    row.iter().fold(false, |b, &x| b | x.rejected(false))
}

/// The error for gene `gene`'s row `row`, which [`embedding_row_rejected`]: its first
/// non-finite dimension.
pub(crate) fn non_finite_embedding(row: &[f32], gene: usize) -> GeneptError {
    let (k, x) = row
        .iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite())
        .map(|(k, x)| (k, *x))
        .unwrap_or((0, f32::NAN));
    GeneptError::NonFiniteEmbedding {
        kind: non_finite_kind(f64::from(x)),
        gene,
        dim: k,
    }
}

/// A borrowed, row-major `n_genes × dim` float32 embedding table, checked to be finite.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingView<'a> {
    data: &'a [f32],
    n_rows: usize,
    dim: usize,
}

impl<'a> EmbeddingView<'a> {
    pub fn new(data: &'a [f32], n_rows: usize, dim: usize) -> Result<Self> {
        check_embedding_shape(data, n_rows, dim)?;
        if dim > 0 {
            let bad = data
                .par_chunks(dim)
                .with_min_len(64)
                .position_first(embedding_row_rejected);
            if let Some(g) = bad {
                return Err(non_finite_embedding(&data[g * dim..(g + 1) * dim], g));
            }
        }
        Ok(EmbeddingView { data, n_rows, dim })
    }

    #[inline]
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    #[inline]
    pub fn dim(&self) -> usize {
        self.dim
    }

    #[inline]
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `increasing` (ORed gaps) agrees with comparing neighbours, at the ends of the range and
    /// around the vector loop's tail, for both index widths.
    #[test]
    fn increasing_matches_neighbour_comparison() {
        fn check<I: Index + Ord>(rows: &[Vec<I>]) {
            for r in rows {
                let want = r.windows(2).all(|w| w[0] < w[1]);
                assert_eq!(
                    I::increasing(r),
                    want,
                    "row {:?}",
                    r.iter().map(|x| x.to_i64()).collect::<Vec<_>>()
                );
            }
        }
        let mut rows: Vec<Vec<i64>> = vec![vec![], vec![0], vec![0, 0], vec![0, 1], vec![1, 0]];
        rows.push(vec![0, i64::MAX]);
        rows.push(vec![i64::MAX, i64::MAX]);
        rows.push(vec![i64::MAX - 1, i64::MAX]);
        for n in 1..40 {
            let up: Vec<i64> = (0..n).map(|i| 3 * i).collect();
            rows.push(up.clone());
            for at in 0..n as usize {
                let mut dup = up.clone();
                dup[at] = dup[at.saturating_sub(1)];
                rows.push(dup);
                let mut down = up.clone();
                down[at] += if at + 1 < n as usize { 4 } else { -4 };
                rows.push(down);
            }
        }
        check(&rows);
        let small: Vec<Vec<i32>> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&x| x.min(i64::from(i32::MAX)) as i32)
                    .collect()
            })
            .collect();
        check(&small);
    }

    #[test]
    fn accepts_valid_and_empty() {
        let v = CsrView::<i32, f32>::new(&[0, 2, 2, 3], &[1, 0, 2], &[1.0, 2.0, 3.0], 3).unwrap();
        assert_eq!(v.n_rows(), 3);
        assert_eq!(v.row(1).0.len(), 0);
        let e = CsrView::<i64, f64>::new(&[0], &[], &[], 0).unwrap();
        assert_eq!(e.n_rows(), 0);
    }

    #[test]
    fn rejects_malformed() {
        let err = |r: Result<CsrView<'_, i32, f32>>| r.unwrap_err().to_string();
        assert!(err(CsrView::new(&[], &[], &[], 1)).contains("indptr is empty"));
        assert!(err(CsrView::new(&[1, 1], &[0], &[1.0], 1)).contains("indptr[0]"));
        assert!(err(CsrView::new(&[0, 2, 1, 2], &[0, 0], &[1.0, 1.0], 1)).contains("decreases"));
        assert!(err(CsrView::new(&[0, 1], &[0, 0], &[1.0, 1.0], 1)).contains("indptr[-1]"));
        assert!(err(CsrView::new(&[0, 1], &[0], &[1.0, 2.0], 1)).contains("indices has"));
        assert!(err(CsrView::new(&[0, 1, 2], &[0, 5], &[1.0, 1.0], 3)).contains("cell 1"));
        assert!(err(CsrView::new(&[0, 1], &[-1], &[1.0], 3)).contains("outside"));
        let nan = err(CsrView::new(&[0, 1, 2], &[0, 1], &[1.0, f32::NAN], 3));
        assert!(
            nan.contains("NaN") && nan.contains("cell 1, gene 1"),
            "{nan}"
        );
    }

    #[test]
    fn embedding_checks() {
        assert!(EmbeddingView::new(&[0.0; 6], 2, 4).is_err());
        let e = EmbeddingView::new(&[0.0, 1.0, f32::INFINITY, 0.0], 2, 2).unwrap_err();
        assert!(e.to_string().contains("gene row 1, dimension 0"), "{e}");
    }

    #[test]
    fn rank_keys_order() {
        assert!(2.0f32.rank_key(5) < 1.0f32.rank_key(0));
        assert!(1.0f32.rank_key(0) < 1.0f32.rank_key(1));
        assert!(2.0f64.rank_key(5) < 1.0f64.rank_key(0));
        assert_eq!(<f64 as Value>::key_gene(1.5f64.rank_key(77)), 77);
    }
}
