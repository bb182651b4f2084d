//! Top-N gene ranking per cell (the gene order of a GenePT-s cell sentence).
//!
//! For each cell: the indices of the `n` genes with the largest strictly positive values, in
//! descending order of value, ties broken by the lower gene index, padded with -1. Each
//! nonzero becomes one integer key (the value's order-preserving bits, inverted, above the gene
//! index), so the whole comparison is one integer compare; `select_nth_unstable` finds the
//! first `n` and only those are sorted. Duplicate entries of a gene are summed first, as scipy
//! does; rows stored in canonical order (strictly increasing indices) skip that step.
//!
//! Expression values are normalised integer counts, so a cell has few distinct values (tens,
//! for thousands of genes). For canonical rows the ranking is therefore a stable counting sort
//! over the distinct values ([`Buckets`]): one pass counts each value in a small hash table, the
//! few distinct values are sorted, and a second pass drops each gene at its place; walking the
//! genes in ascending order keeps ties in gene order. Rows with more distinct values than the
//! table holds, and short rankings (`8n` < the row's genes), use the sort path. Both give
//! exactly the same result.

use rayon::prelude::*;

use crate::csr::{strictly_increasing, CsrView, Index, Value};
use crate::error::{GeneptError, Result};

struct Scratch<V: Value> {
    buckets: Buckets,
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
    if x.n_rows().checked_mul(n) != Some(out.len()) {
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
                buckets: Buckets::new(),
                keys: Vec::new(),
                dense: Vec::new(),
                seen: Vec::new(),
                touched: Vec::new(),
            },
            |s, (r, dst)| {
                // For a short ranking of a long row, selecting then sorting is cheaper.
                let long_ranking = 8 * n >= x.row(r).0.len();
                if !(long_ranking && rank_by_buckets(x, r, s, dst)) {
                    row_keys(x, r, n_cols, s);
                    rank_into::<V>(&mut s.keys, dst);
                }
            },
        );
    Ok(())
}

/// Distinct values a row may have for the counting-sort path (then it falls back to sorting).
const MAX_DISTINCT: usize = 256;
const SLOTS: usize = 1024; // open addressing, load ≤ 1/4
/// The slot of entries that are not ranked (values ≤ 0); its positions are all past `n`.
const SKIP: usize = SLOTS;
/// Length of the count table (a power of two above [`SKIP`]): a slot masked with
/// `COUNTS - 1` is always in bounds, so the hot loops need no bounds checks.
const COUNTS: usize = 2 * SLOTS;
const EMPTY: u64 = u64::MAX; // no positive float has these bits

/// A small hash table from a value's bits to its counts, then to its output positions.
struct Buckets {
    key: Box<[u64; SLOTS]>,
    /// Per slot (and [`SKIP`]): a count, then its first output position.
    count: Box<[u32; COUNTS]>,
    used: Vec<u32>,
    /// The slot of each entry of the row ([`SKIP`] for values ≤ 0), in row order.
    entry_slot: Vec<u16>,
    /// How many earlier entries of the row share each entry's slot (its place in its group).
    entry_rank: Vec<u32>,
    /// The ranking being built, with one spare slot for genes past `n`.
    placed: Vec<i32>,
}

impl Buckets {
    fn new() -> Self {
        Buckets {
            key: Box::new([EMPTY; SLOTS]),
            count: Box::new([0; COUNTS]),
            used: Vec::with_capacity(MAX_DISTINCT + 1),
            entry_slot: Vec::new(),
            entry_rank: Vec::new(),
            placed: Vec::new(),
        }
    }

    fn clear(&mut self) {
        for &s in &self.used {
            self.key[s as usize] = EMPTY;
            self.count[s as usize] = 0;
        }
        self.count[SKIP] = 0;
        self.used.clear();
    }
}

/// The slot of `bits` in `key`, inserting it (and recording it in `used`); `None` once the row
/// has too many distinct values. Takes the fixed-size table, so that indexing it with a masked
/// slot needs no bounds check.
#[inline(always)]
fn slot_of(key: &mut [u64; SLOTS], used: &mut Vec<u32>, bits: u64) -> Option<usize> {
    let mut s = (bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize; // 10 bits
    loop {
        let k = key[s & (SLOTS - 1)];
        if k == bits {
            return Some(s & (SLOTS - 1));
        }
        if k == EMPTY {
            if used.len() == MAX_DISTINCT {
                return None;
            }
            key[s & (SLOTS - 1)] = bits;
            used.push((s & (SLOTS - 1)) as u32);
            return Some(s & (SLOTS - 1));
        }
        s += 1;
    }
}

/// The counting-sort ranking of a canonical row; `false` (nothing written) when the row is not
/// canonical or has too many distinct values.
fn rank_by_buckets<I: Index, V: Value>(
    x: &CsrView<'_, I, V>,
    r: usize,
    s: &mut Scratch<V>,
    dst: &mut [i32],
) -> bool {
    let (idx, val) = x.row(r);
    let col = |j: I| j.to_usize().unwrap_or(0);
    if !strictly_increasing(idx) {
        return false; // not canonical: duplicates or unsorted indices
    }
    let b = &mut s.buckets;
    b.clear();
    let n = dst.len();
    // Scratch that the passes overwrite before reading it (grown, never cleared): every entry's
    // slot and place in its slot are written by pass 1, every position below the row's count
    // by pass 2.
    if b.entry_slot.len() < idx.len() {
        b.entry_slot.resize(idx.len(), 0);
        b.entry_rank.resize(idx.len(), 0);
    }
    if b.placed.len() < n + 1 {
        b.placed.resize(n + 1, 0);
    }
    // Slices and fixed-size tables, not the Vecs, so that the loops keep their pointers in
    // registers and index the tables with a mask instead of a bounds check.
    let (key, used) = (&mut *b.key, &mut b.used);
    let entry_slot = &mut b.entry_slot[..idx.len()];
    let entry_rank = &mut b.entry_rank[..idx.len()];
    let (count, placed) = (&mut *b.count, &mut b.placed[..]);
    let mask = COUNTS - 1;
    // Pass 1: each entry's slot ([`SKIP`] for values ≤ 0, whose count is not used) and its
    // place among the earlier entries of that slot, counted.
    for ((es, er), &v) in entry_slot.iter_mut().zip(entry_rank.iter_mut()).zip(val) {
        let slot = if v > V::ZERO {
            let Some(slot) = slot_of(key, used, v.value_bits()) else {
                return false;
            };
            slot
        } else {
            SKIP
        };
        *es = slot as u16;
        let c = &mut count[slot & mask];
        *er = *c;
        *c += 1;
    }
    // Distinct values, largest first; each slot's count becomes its first output position.
    used.sort_unstable_by_key(|&slot| std::cmp::Reverse(key[slot as usize]));
    let mut pos = 0u32;
    for &slot in used.iter() {
        let c = count[slot as usize];
        count[slot as usize] = pos;
        pos += c;
    }
    count[SKIP] = n as u32;
    // Pass 2, branch-free and without stores to the counts (each position is its slot's first
    // plus its place in the slot): positions past `n` (and unranked entries) land in one spare
    // slot (`placed` has n + 1, so the index needs no check).
    let placed = &mut placed[..n + 1];
    let count = &*count;
    for ((&es, &er), &j) in entry_slot.iter().zip(entry_rank.iter()).zip(idx) {
        let p = count[es as usize & mask] as usize + er as usize;
        placed[p.min(n)] = col(j) as i32;
    }
    let filled = (pos as usize).min(n);
    dst[..filled].copy_from_slice(&placed[..filled]);
    dst[filled..].fill(-1);
    true
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
    let canonical = strictly_increasing(idx);
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

    /// The counting-sort path and the key-sort path agree, with few and with many distinct values.
    #[test]
    fn bucket_path_equals_sort_path() {
        let mut state = 99u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        for levels in [1u64, 3, 40, 300, 1 << 30] {
            for n in [1usize, 7, 100, 600] {
                let (mut ip, mut ix, mut v) = (vec![0i64], vec![], vec![]);
                for _ in 0..20 {
                    for g in 0..900i64 {
                        if next() % 3 == 0 {
                            ix.push(g);
                            let lvl = (next() % levels) as f64;
                            v.push(if next() % 10 == 0 { -1.0 } else { lvl * 0.25 });
                        }
                    }
                    ip.push(ix.len() as i64);
                }
                let x = CsrView::new(&ip, &ix, &v, 900).unwrap();
                let mut fast = vec![0; 20 * n];
                top_genes(&x, n, &mut fast).unwrap();
                let mut s = Scratch::<f64> {
                    buckets: Buckets::new(),
                    keys: Vec::new(),
                    dense: Vec::new(),
                    seen: Vec::new(),
                    touched: Vec::new(),
                };
                for r in 0..20 {
                    let mut slow = vec![0; n];
                    row_keys(&x, r, 900, &mut s);
                    rank_into::<f64>(&mut s.keys, &mut slow);
                    assert_eq!(
                        &fast[r * n..(r + 1) * n],
                        &slow[..],
                        "levels={levels} n={n} r={r}"
                    );
                }
            }
        }
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
