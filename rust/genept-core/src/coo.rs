//! A block of coordinate (COO) entries scattered into a chunk's CSR arrays ([`coo_into_csr`]).
//!
//! The TileDB-SOMA reader gets each block of rows as batches of three columns (the cell's
//! `soma_joinid`, the gene's var `soma_joinid`, the value) in the array's tile order: within a
//! tile row by row, a row's tiles one after another. CSR wants every row's entries together; a
//! stable counting sort by row gives that in two passes over the batches as they came (no copy
//! of them), mapping joinids to block rows and var joinids to genes on the way, and writes
//! straight into the chunk's arrays (no block CSR, no copy of it).
//!
//! Both passes go by runs of one row: TileDB gives a row's entries of a tile one after another
//! (about a tile's width of them), so a row is mapped once per run, and a run's values are one
//! copy and its columns one tight loop.

use crate::csr::Index;
use crate::error::{GeneptError, Result};

/// One batch of a block's entries as the reader got them: row joinids, column joinids and
/// values, of equal lengths.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a, V> {
    pub rows: &'a [i64],
    pub cols: &'a [i64],
    pub vals: &'a [V],
}

/// How a row joinid becomes the block's row.
#[derive(Clone, Copy, Debug)]
pub enum RowMap<'a> {
    /// `joinid - first`: the block is a run of joinids, read as one range.
    Offset(i64),
    /// `row_of[joinid - first]`, a negative one skipped: the cells between the selected ones
    /// of a range read (a span read).
    Table { first: i64, row_of: &'a [i32] },
    /// The joinid's position in these increasing joinids: a read by points.
    Sorted(&'a [i64]),
}

/// How a column joinid (a var `soma_joinid`) becomes the gene's column.
#[derive(Clone, Copy, Debug)]
pub enum ColMap<'a> {
    /// The joinid is the column.
    Identity,
    /// `col_of[joinid]`; a joinid past the table or mapped to a negative column names no gene.
    Table(&'a [i32]),
}

impl ColMap<'_> {
    /// The column of joinid `c`, or -1 where the map names none (a joinid past it, or mapped
    /// to a negative column); the identity's may be anything, checked by the caller.
    #[inline(always)]
    fn col(self, c: i64) -> i64 {
        match self {
            ColMap::Identity => c,
            ColMap::Table(col_of) => table_col(col_of, c),
        }
    }
}

/// `col_of[c]`, or -1 where `c` is past `col_of`.
#[inline(always)]
fn table_col(col_of: &[i32], c: i64) -> i64 {
    usize::try_from(c)
        .ok()
        .and_then(|c| col_of.get(c))
        .map_or(-1, |&m| i64::from(m))
}

/// An index type of the chunk's CSR arrays, built from a column already checked to be below
/// the column count (which fits the type: checked once per call).
pub trait CsrIndex: Index + TryFrom<usize> {
    fn from_col(c: u32) -> Self;
}

impl CsrIndex for i32 {
    #[inline(always)]
    fn from_col(c: u32) -> Self {
        c as i32 // c < n_cols <= i32::MAX
    }
}

impl CsrIndex for i64 {
    #[inline(always)]
    fn from_col(c: u32) -> Self {
        i64::from(c)
    }
}

/// The runs of equal values of `rows`: `(value, start, end)`.
fn runs(rows: &[i64]) -> impl Iterator<Item = (i64, usize, usize)> + '_ {
    let mut k = 0;
    std::iter::from_fn(move || {
        let &x = rows.get(k)?;
        let start = k;
        k += 1;
        while k < rows.len() && rows[k] == x {
            k += 1;
        }
        Some((x, start, k))
    })
}

impl RowMap<'_> {
    /// The block row of `joinid` (`None`: skipped), checked against the block's `n_rows`.
    #[inline]
    fn row(&self, joinid: i64, n_rows: usize) -> Result<Option<usize>> {
        let outside = |what: String| {
            GeneptError::MalformedCsr(format!(
                "the read returned cell soma_joinid {joinid}, {what}"
            ))
        };
        let r = match *self {
            RowMap::Offset(first) => joinid.wrapping_sub(first),
            RowMap::Table { first, row_of } => {
                let at = joinid.wrapping_sub(first);
                match usize::try_from(at).ok().and_then(|at| row_of.get(at)) {
                    Some(&r) if r < 0 => return Ok(None),
                    Some(&r) => i64::from(r),
                    None => {
                        return Err(outside(format!(
                            "outside the {} joinids from {first} asked for",
                            row_of.len()
                        )))
                    }
                }
            }
            RowMap::Sorted(ids) => match ids.binary_search(&joinid) {
                Ok(at) => at as i64,
                Err(_) => return Err(outside("which was not asked for".into())),
            },
        };
        match usize::try_from(r) {
            Ok(r) if r < n_rows => Ok(Some(r)),
            _ => Err(outside(format!(
                "which maps to row {r}, outside the block's {n_rows} rows"
            ))),
        }
    }
}

/// Writes the columns of `cols` (joinids) mapped by `map` into `out`; the first joinid that
/// names no column in `[0, n_cols)` is an error naming block row `row`.
#[inline]
fn put_cols<I: CsrIndex>(
    cols: &[i64],
    map: ColMap<'_>,
    n_cols: usize,
    row: usize,
    out: &mut [I],
) -> Result<()> {
    let n = n_cols as u64; // n_cols <= i32::MAX: checked by the caller
    let mut bad = false;
    // One loop per map, so the identity's stays a plain copy with a bound check; a column
    // outside [0, n_cols) (negative: none) sets `bad`, and the joinid is found below.
    match map {
        ColMap::Identity => {
            for (o, &c) in out.iter_mut().zip(cols) {
                bad |= (c as u64) >= n;
                *o = I::from_col(c as u32);
            }
        }
        ColMap::Table(col_of) => {
            for (o, &c) in out.iter_mut().zip(cols) {
                let m = table_col(col_of, c);
                bad |= (m as u64) >= n;
                *o = I::from_col(m as u32);
            }
        }
    }
    if !bad {
        return Ok(());
    }
    let limit = match map {
        ColMap::Identity => n_cols,
        ColMap::Table(col_of) => col_of.len(),
    };
    let gene = cols
        .iter()
        .copied()
        .find(|&c| (map.col(c) as u64) >= n)
        .unwrap_or(-1);
    Err(GeneptError::GeneOutside {
        cell: row,
        gene,
        n_cols: limit,
    })
}

/// Scatters the entries of a block's `batches` into CSR arrays, stable by row: entries are
/// taken batch after batch in order, and each row keeps its entries in the order they come
/// (so columns that come sorted within each row stay sorted). Rows are mapped by `rows` (a
/// skipped one is a cell read but not selected), columns by `cols`.
///
/// The block has `indptr.len() - 1` rows; `indptr` receives `base` plus each row's start
/// (`indptr[0] = base`); `indices` and `data` receive the kept entries from their position 0
/// (pass the chunk's arrays from its current position on). Returns the number kept.
///
/// Errors: a batch's three columns of different lengths; a row joinid the read was not asked
/// for; a column joinid that names no column in `[0, n_cols)`
/// ([`GeneptError::GeneOutside`], its `gene` the joinid, its `cell` the block row; a skipped
/// row's columns are not checked); outputs too short, an offset or `n_cols` that does not fit
/// the index type.
#[allow(clippy::too_many_arguments)]
pub fn coo_into_csr<I, V>(
    batches: &[Batch<'_, V>],
    rows: RowMap<'_>,
    cols: ColMap<'_>,
    n_cols: usize,
    base: usize,
    indptr: &mut [I],
    indices: &mut [I],
    data: &mut [V],
) -> Result<usize>
where
    I: CsrIndex,
    V: Copy,
{
    for (k, b) in batches.iter().enumerate() {
        if b.rows.len() != b.cols.len() || b.rows.len() != b.vals.len() {
            return Err(GeneptError::Shape(format!(
                "batch {k} has {}, {} and {} rows, columns and values; they must be equal",
                b.rows.len(),
                b.cols.len(),
                b.vals.len()
            )));
        }
    }
    let Some(n_rows) = indptr.len().checked_sub(1) else {
        return Err(GeneptError::Shape(
            "indptr must have at least one slot".into(),
        ));
    };
    if i32::try_from(n_cols).is_err() || I::try_from(n_cols).is_err() {
        return Err(GeneptError::InvalidArgument(format!(
            "n_cols {n_cols} does not fit the index type (at most 2**31 - 1 columns)"
        )));
    }
    // Rows: count each row's entries (starts[r + 1]), checking every row on the way.
    let mut starts = vec![0usize; n_rows + 1];
    for b in batches {
        for (x, s, e) in runs(b.rows) {
            if let Some(r) = rows.row(x, n_rows)? {
                starts[r + 1] += e - s;
            }
        }
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
    // Scatter: `next[r]` is where row `r`'s next entry goes; each run is one copy.
    let mut next = starts;
    for b in batches {
        for (x, s, e) in runs(b.rows) {
            let Some(r) = rows.row(x, n_rows)? else {
                continue;
            };
            let (p, len) = (next[r], e - s);
            put_cols(&b.cols[s..e], cols, n_cols, r, &mut indices[p..p + len])?;
            data[p..p + len].copy_from_slice(&b.vals[s..e]);
            next[r] = p + len;
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain reference: each row's kept entries in order, rows mapped by `row_of` (block
    /// row of each row joinid, negative skipped), columns by `col_of`.
    fn reference(
        rows: &[i64],
        cols: &[i64],
        vals: &[f32],
        row_of: impl Fn(i64) -> i64,
        col_of: impl Fn(i64) -> i64,
        n: usize,
    ) -> (Vec<i64>, Vec<i64>, Vec<f32>) {
        let mut indptr = vec![0i64; n + 1];
        let mut indices = Vec::new();
        let mut data = Vec::new();
        for r in 0..n {
            for k in 0..rows.len() {
                if row_of(rows[k]) == r as i64 {
                    indices.push(col_of(cols[k]));
                    data.push(vals[k]);
                }
            }
            indptr[r + 1] = indices.len() as i64;
        }
        (indptr, indices, data)
    }

    fn split<'a>(
        rows: &'a [i64],
        cols: &'a [i64],
        vals: &'a [f32],
        at: usize,
    ) -> [Batch<'a, f32>; 2] {
        [
            Batch {
                rows: &rows[..at],
                cols: &cols[..at],
                vals: &vals[..at],
            },
            Batch {
                rows: &rows[at..],
                cols: &cols[at..],
                vals: &vals[at..],
            },
        ]
    }

    #[test]
    fn scatters_stably_by_row_across_batches_and_skips_rows() {
        // joinids 10..13 read as a span; 11 not selected (row_of -1); var joinids through a map
        let rows = [12, 10, 10, 11, 13, 10, 12, 12];
        let cols = [3, 1, 5, 0, 0, 2, 7, 7];
        let vals = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let row_of = [0i32, -1, 1, 2];
        let col_of = [4i32, 3, 2, 1, 0, 6, -1, 5];
        let map_row = |j: i64| i64::from(row_of[(j - 10) as usize]);
        let map_col = |c: i64| i64::from(col_of[c as usize]);
        let (want_p, want_i, want_d) = reference(&rows, &cols, &vals, map_row, map_col, 3);
        for at in [0, 3, 8] {
            let batches = split(&rows, &cols, &vals, at);
            let mut indptr = vec![0i64; 4];
            let mut indices = vec![-9i64; 10];
            let mut data = vec![0f32; 10];
            let rows_map = RowMap::Table {
                first: 10,
                row_of: &row_of,
            };
            let kept = coo_into_csr(
                &batches,
                rows_map,
                ColMap::Table(&col_of),
                10,
                100,
                &mut indptr,
                &mut indices,
                &mut data,
            )
            .unwrap();
            assert_eq!(kept, 7);
            let shifted: Vec<i64> = want_p.iter().map(|p| p + 100).collect();
            assert_eq!(indptr, shifted);
            assert_eq!(&indices[..kept], &want_i[..]);
            assert_eq!(&data[..kept], &want_d[..]);
            assert_eq!(indices[kept], -9); // nothing written past the kept entries
        }
    }

    #[test]
    fn offset_and_sorted_rows_agree() {
        let rows = [5, 5, 7, 6, 7, 5];
        let cols = [0, 3, 1, 2, 2, 1];
        let vals = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let ids = [5i64, 6, 7];
        let mut got = Vec::new();
        for map in [RowMap::Offset(5), RowMap::Sorted(&ids)] {
            let (mut p, mut i, mut d) = (vec![0i32; 4], vec![0i32; 6], vec![0f32; 6]);
            let batches = split(&rows, &cols, &vals, 2);
            let kept = coo_into_csr(
                &batches,
                map,
                ColMap::Identity,
                4,
                0,
                &mut p,
                &mut i,
                &mut d,
            );
            assert_eq!(kept, Ok(6));
            got.push((p, i, d));
        }
        let (want_p, want_i, want_d) = reference(&rows, &cols, &vals, |j| j - 5, |c| c, 3);
        let want_p: Vec<i32> = want_p.iter().map(|&p| p as i32).collect();
        let want_i: Vec<i32> = want_i.iter().map(|&c| c as i32).collect();
        assert_eq!(got[0], (want_p, want_i, want_d));
        assert_eq!(got[0], got[1]);
    }

    /// `coo_into_csr` on a 2-row block of unit values (rows joinids 0 and 1, identity
    /// columns, 5 of them), outputs of `room` entries.
    fn call(rows: &[i64], cols: &[i64], base: usize, room: usize) -> Result<usize> {
        let vals = vec![1.0f32; rows.len()];
        let b = [Batch {
            rows,
            cols,
            vals: &vals,
        }];
        let mut p = vec![0i32; 3];
        let (mut i, mut d) = (vec![0i32; room], vec![0f32; room]);
        coo_into_csr(
            &b,
            RowMap::Offset(0),
            ColMap::Identity,
            5,
            base,
            &mut p,
            &mut i,
            &mut d,
        )
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(matches!(
            call(&[0, 2], &[0, 0], 0, 4),
            Err(GeneptError::MalformedCsr(_))
        ));
        assert!(matches!(
            call(&[-1, 0], &[0, 0], 0, 4),
            Err(GeneptError::MalformedCsr(_))
        ));
        let e = call(&[0, 1], &[0, 5], 0, 4);
        let outside = matches!(
            e,
            Err(GeneptError::GeneOutside {
                cell: 1,
                gene: 5,
                n_cols: 5
            })
        );
        assert!(outside, "{e:?}");
        let e = call(&[0, 1, 1], &[0, 1, -3], 0, 4);
        assert!(
            matches!(e, Err(GeneptError::GeneOutside { gene: -3, .. })),
            "{e:?}"
        );
        let vals = [1.0f32];
        let b = [Batch {
            rows: &[0],
            cols: &[0, 1],
            vals: &vals,
        }];
        let (mut p, mut i, mut d) = (vec![0i32; 3], vec![0i32; 4], vec![0f32; 4]);
        let (r, c) = (RowMap::Offset(0), ColMap::Identity);
        let e = coo_into_csr(&b, r, c, 5, 0, &mut p, &mut i, &mut d);
        assert!(matches!(e, Err(GeneptError::Shape(_))));
        assert!(matches!(
            call(&[0, 1], &[0, 1], 0, 1),
            Err(GeneptError::Shape(_))
        ));
        let e = call(&[0], &[0], i32::MAX as usize, 4);
        assert!(matches!(e, Err(GeneptError::InvalidArgument(_))));
        let mut empty: Vec<i32> = Vec::new();
        let e = coo_into_csr::<i32, f32>(&[], r, c, 5, 0, &mut empty, &mut i, &mut d);
        assert!(matches!(e, Err(GeneptError::Shape(_))));
        let e = coo_into_csr::<i32, f32>(&[], r, c, 1 << 31, 0, &mut p, &mut i, &mut d);
        assert!(matches!(e, Err(GeneptError::InvalidArgument(_))));
        // a joinid not asked for, by points and past a span's table
        let ids = [3i64, 9];
        let e = coo_into_csr(
            &b[..0],
            RowMap::Sorted(&ids),
            c,
            5,
            0,
            &mut p,
            &mut i,
            &mut d,
        );
        assert_eq!(e, Ok(0));
        let b = [Batch {
            rows: &[4],
            cols: &[0],
            vals: &vals,
        }];
        let e = coo_into_csr(&b, RowMap::Sorted(&ids), c, 5, 0, &mut p, &mut i, &mut d);
        assert!(matches!(e, Err(GeneptError::MalformedCsr(_))), "{e:?}");
        let span = RowMap::Table {
            first: 1,
            row_of: &[0, 1, -1],
        };
        let e = coo_into_csr(&b, span, c, 5, 0, &mut p, &mut i, &mut d);
        assert!(matches!(e, Err(GeneptError::MalformedCsr(_))), "{e:?}");
        // a column mapped to -1, and one past the map
        let b = [Batch {
            rows: &[0, 0],
            cols: &[0, 1],
            vals: &[1.0, 2.0],
        }];
        for col_of in [&[0i32, -1][..], &[0][..]] {
            let e = coo_into_csr(&b, r, ColMap::Table(col_of), 5, 0, &mut p, &mut i, &mut d);
            assert!(
                matches!(
                    e,
                    Err(GeneptError::GeneOutside {
                        cell: 0,
                        gene: 1,
                        ..
                    })
                ),
                "{e:?}"
            );
        }
        // a skipped row's columns are not checked
        let span = RowMap::Table {
            first: 0,
            row_of: &[0, -1],
        };
        assert_eq!(
            call(&[1, 0], &[4, 9], 0, 2),
            Err(GeneptError::GeneOutside {
                cell: 0,
                gene: 9,
                n_cols: 5
            })
        );
        let b = [Batch {
            rows: &[1, 0],
            cols: &[9, 4],
            vals: &[1.0, 2.0],
        }];
        assert_eq!(
            coo_into_csr(&b, span, c, 5, 0, &mut p[..2], &mut i, &mut d),
            Ok(1)
        );
    }
}
