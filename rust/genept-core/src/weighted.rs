//! GenePT-w: `out = X @ E` over a sparse X, then each row divided by its L2 norm.
//!
//! The embedding table (30k genes × 1536 floats = 184 MB) is far larger than any cache, so a
//! loop that walks a cell's nonzeros and reads a 6 KB embedding row for each is bound by memory
//! bandwidth. Instead each thread takes a block of cells, splits the table's rows into ranges
//! of [`RANGE_GENES`] genes and lists each cell's nonzeros per range. Then, for each tile of
//! [`TILE`] embedding dimensions and each gene range, the cells are the outer loop: a cell's
//! output row (96 floats) stays in registers while its genes of the range are added, scaled,
//! and the range's embedding tiles (512 × 384 bytes) stay in L2 while the block's cells pass
//! over them. Each embedding tile is thus read from memory once per block, and each
//! multiply-add costs one load from L2/L1 and no store (an earlier gene-major scatter did one
//! load and one store of the output per multiply-add, about 30% of peak; the gather reaches
//! about 38%).
//!
//! Summation order, and why results do not depend on blocks or threads: each output element
//! starts at +0.0 and is accumulated over the cell's genes in ascending table row (stored
//! duplicates in stored order). Which cells share a block only decides how the work is
//! grouped, never that order, and every output zero is written as +0.0, so the bits are the
//! same whatever is grouped with what: any chunking of a matrix gives the bits of one call.
//!
//! (A dense GEMM for the genes expressed in most cells ran beside the gather until it was
//! measured a wash against it: -9% to +9% on a quiet machine, +2% to +4% CPU time on a loaded
//! one; it was removed, and git keeps it.)
//!
//! With [`Preprocess::Log1p`] the kernel reads raw counts and applies scanpy's
//! `normalize_total(target_sum)` + `log1p` per cell while regrouping the block (duplicates are
//! summed first, as scipy's `sum_duplicates` does): each row is scanned once (its total, its
//! largest small-integer count, its order; [`crate::simd::scan_counts`]) and then placed while
//! it is still in L1, its values looked up in a per-row `log1p` table ([`place_counts`]).
//! There is no pass over the block and no copy.

use rayon::prelude::*;

use crate::csr::{CsrView, EmbeddingView, Index, Value};
use crate::error::{GeneptError, Result};
use crate::simd::{
    gather_range, pack_entry, scan_counts, CellLists, CopyAhead, Isa, PackAhead, Prefetch, TILE,
};
use crate::tiled::TiledEmbeddings;

/// Table rows per gene range of the sparse gather: a range's tiles (512 × 384 bytes) stay in
/// L2 (1 MB per core here) even when another process shares the core. Measured (8,000-10,000
/// cells, D = 1536, cells per CPU-second): 2,048 rows +3% over the scatter, 1,024 +17%;
/// 512 is 3% below 1,024 at load 2 but 3-17% above it at load 2.5-5; 256 as 512.
pub const RANGE_GENES: usize = 1 << RANGE_SHIFT;
const RANGE_SHIFT: u32 = 9;

/// Cells per block: block × tile of output (512 × 96 floats = 192 KB) stays in L2.
pub const DEFAULT_BLOCK_ROWS: usize = 512;

/// scanpy's `normalize_total` default target in GenePT: 10,000 counts per cell.
pub const TARGET_SUM: f64 = 1e4;

/// How X's columns map to rows of the embedding table.
#[derive(Clone, Copy, Debug)]
pub enum GeneMap<'a> {
    /// Column `j` of X is row `j` of the table (they must have the same length).
    Identity,
    /// Column `j` of X is row `map[j]` of the table, or has no embedding when `map[j] < 0`.
    Table(&'a [i64]),
}

impl<'a> GeneMap<'a> {
    /// Checks the map against X's columns and the table's rows.
    pub fn check(&self, n_cols: usize, n_emb: usize) -> Result<()> {
        match *self {
            GeneMap::Identity if n_cols != n_emb => Err(GeneptError::Shape(format!(
                "X has {n_cols} genes (columns) but gene_embeddings has {n_emb} rows"
            ))),
            GeneMap::Identity => Ok(()),
            GeneMap::Table(m) => {
                if m.len() != n_cols {
                    return Err(GeneptError::Shape(format!(
                        "gene_index has {} entries but X has {n_cols} genes (columns)",
                        m.len()
                    )));
                }
                if let Some(j) = m.iter().position(|&g| g < -1 || g >= n_emb as i64) {
                    return Err(GeneptError::GeneIndexOutside {
                        gene: j,
                        row: m[j],
                        n_emb,
                    });
                }
                Ok(())
            }
        }
    }

    #[inline(always)]
    fn row_of(&self, col: usize) -> Option<usize> {
        match *self {
            GeneMap::Identity => Some(col),
            GeneMap::Table(m) => usize::try_from(m[col]).ok(),
        }
    }
}

/// The embedding table a call reads: row-major as the user holds it, or tiled (see
/// [`TiledEmbeddings`]; faster for large jobs, costs one re-layout copy).
#[derive(Clone, Copy, Debug)]
pub enum Table<'a> {
    Rows(EmbeddingView<'a>),
    Tiled(&'a TiledEmbeddings),
}

impl<'a> Table<'a> {
    pub fn n_rows(&self) -> usize {
        match self {
            Table::Rows(e) => e.n_rows(),
            Table::Tiled(t) => t.n_rows(),
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Table::Rows(e) => e.dim(),
            Table::Tiled(t) => t.dim(),
        }
    }

    /// For the tile at `t0`: a base slice and a stride such that gene `g`'s tile is
    /// `base[g * stride..g * stride + width]`.
    #[inline]
    fn tile(&self, t0: usize) -> (&'a [f32], usize) {
        match *self {
            Table::Rows(e) => (e.data().get(t0..).unwrap_or(&[]), e.dim()),
            Table::Tiled(t) => (t.tile(t0), TILE.min(t.dim() - t0)),
        }
    }
}

/// Expression preprocessing applied by the kernel as it reads X.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Preprocess {
    /// Use the stored values as they are.
    None,
    /// Raw counts: each cell scaled to `target_sum` total counts, then `log1p`
    /// (`sc.pp.normalize_total(target_sum=...)` + `sc.pp.log1p`). Cells with zero total stay
    /// zero; negative values are rejected before any work.
    Log1p { target_sum: f64 },
}

/// Options of [`weighted_embedding`].
#[derive(Clone, Copy, Debug)]
pub struct WeightedOptions {
    /// Divide each output row by its L2 norm (rows of norm zero stay zero).
    pub normalize: bool,
    /// Cells per block (tuning; results do not depend on it).
    pub block_rows: usize,
    /// The instruction set to run with.
    pub isa: Isa,
    /// What to do to the values first.
    pub preprocess: Preprocess,
}

impl Default for WeightedOptions {
    fn default() -> Self {
        WeightedOptions {
            normalize: true,
            block_rows: DEFAULT_BLOCK_ROWS,
            isa: Isa::detect(),
            preprocess: Preprocess::None,
        }
    }
}

/// The column code of a gene without an embedding (any other code is the gene's table row).
const SKIP: u32 = u32::MAX;

/// The most table rows the kernel addresses (a row is packed in 32 bits, below [`SKIP`]).
const MAX_ROWS: usize = (1 << 31) - 1;

/// One tile of embedding dimensions: where it starts, its width and the output tile's row
/// stride (the width rounded up to 16 floats, so that rows start on 64-byte lines).
#[derive(Clone, Copy, Debug)]
struct TileInfo {
    t0: usize,
    w: usize,
    stride: usize,
}

/// Everything a call shares between threads: the column codes and the tiles.
struct Plan<'a> {
    emb: Table<'a>,
    code: Vec<u32>,
    tiles: Vec<TileInfo>,
    isa: Isa,
    /// Genes are summed per range of [`RANGE_GENES`] table rows (cell-major within a range);
    /// `n_ranges` ranges cover the table.
    n_ranges: usize,
}

impl<'a> Plan<'a> {
    fn new(emb: Table<'a>, map: GeneMap<'_>, isa: Isa, n_cols: usize) -> Result<Self> {
        let n_emb = emb.n_rows();
        if n_emb > MAX_ROWS {
            return Err(GeneptError::InvalidArgument(format!(
                "{n_emb} table rows are more than the kernel addresses"
            )));
        }
        let code: Vec<u32> = (0..n_cols)
            .map(|j| map.row_of(j).map_or(SKIP, |g| g as u32))
            .collect();
        let d = emb.dim();
        let tiles = (0..d)
            .step_by(TILE)
            .map(|t0| {
                let w = TILE.min(d - t0);
                TileInfo {
                    t0,
                    w,
                    stride: w.next_multiple_of(16),
                }
            })
            .collect();
        Ok(Plan {
            emb,
            code,
            tiles,
            isa,
            n_ranges: (n_emb >> RANGE_SHIFT) + 1,
        })
    }
}

/// Merged copies of raw-count rows that are not in canonical order (duplicates summed).
#[derive(Default)]
struct CountRows {
    cols: Vec<usize>,
    vals: Vec<f64>,
    pairs: Vec<(usize, f64)>,
}

impl CountRows {
    /// Sorts one row by gene (stably: duplicates keep their stored order) and sums duplicates
    /// into `cols`/`vals`.
    fn merge<I: Index, V: Value>(&mut self, idx: &[I], val: &[V]) {
        self.pairs.clear();
        self.pairs.extend(
            idx.iter()
                .zip(val)
                .map(|(&j, &v)| (j.to_usize().unwrap_or(0), v.to_f64())),
        );
        self.pairs.sort_by_key(|p| p.0);
        self.cols.clear();
        self.vals.clear();
        for &(j, v) in &self.pairs {
            match (self.cols.last(), self.vals.last_mut()) {
                (Some(&last), Some(acc)) if last == j => *acc += v,
                _ => {
                    self.cols.push(j);
                    self.vals.push(v);
                }
            }
        }
    }
}

/// Counts below this have their `log1p` remembered per row (a 4 KB table and its tags: L1).
const SMALL: usize = 1024;

/// A row whose counts are all integers up to `max` fills its table for `0..=max` at once when
/// that costs less than checking each value: when `(max + 1) * EAGER_COST <= nnz` (a `log1p`
/// costs about as much as this many table checks).
const EAGER_COST: usize = 16;

/// `log1p(x * scale)` rounded to float32, remembered per row for small integer counts (the
/// same value either way: the memo only saves recomputing it).
struct Log1pMemo {
    val: [f32; SMALL],
    tag: [u32; SMALL],
    row: u32,
}

impl Log1pMemo {
    fn new() -> Self {
        Log1pMemo {
            val: [0.0; SMALL],
            tag: [u32::MAX; SMALL],
            row: 0,
        }
    }

    #[inline]
    fn next_row(&mut self) {
        self.row = self.row.wrapping_add(1);
        if self.row == u32::MAX {
            self.tag = [u32::MAX; SMALL];
            self.row = 0;
        }
    }

    /// Any count.
    #[inline(always)]
    fn get(&mut self, x: f64, scale: f64) -> f32 {
        let k = x as u32; // saturating; exact only for integers
        if (k as usize) < SMALL && f64::from(k) == x {
            self.remembered(k as usize, x, scale)
        } else {
            (x * scale).ln_1p() as f32
        }
    }

    /// A count known to be an integer below [`SMALL`].
    #[inline(always)]
    fn get_small<V: Value>(&mut self, x: V, scale: f64) -> f32 {
        self.remembered(small_index(x), x.to_f64(), scale)
    }

    #[inline(always)]
    fn remembered(&mut self, k: usize, x: f64, scale: f64) -> f32 {
        if self.tag[k] != self.row {
            self.tag[k] = self.row;
            self.val[k] = (x * scale).ln_1p() as f32;
        }
        self.val[k]
    }

    /// Computes every count `0..=max` (`max < SMALL`) for this row, so that
    /// [`Log1pMemo::filled`] can read them without a check. The tags are left alone: the
    /// row's values are read only through `filled`, and the next row starts a new tag.
    fn fill(&mut self, max: usize, scale: f64) {
        for (k, v) in self.val[..=max].iter_mut().enumerate() {
            *v = (k as f64 * scale).ln_1p() as f32;
        }
    }

    /// A count known to be an integer no larger than this row's [`Log1pMemo::fill`].
    #[inline(always)]
    fn filled<V: Value>(&self, x: V) -> f32 {
        self.val[small_index(x)]
    }
}

/// The table slot of an integer count below [`SMALL`] (masked: never out of bounds).
#[inline(always)]
fn small_index<V: Value>(x: V) -> usize {
    x.count_bits(SMALL - 1)
}

/// Per-thread buffers, reused from block to block.
struct Scratch {
    /// Output of one tile of the block.
    tile: Vec<f32>,
    /// A row-major table's tiles of one gene range, packed ([`pack_range`]).
    pack: Vec<f32>,
    counts: CountRows,
    memo: Log1pMemo,
    /// The sparse entries (gene, value) cell after cell, each cell's first entry, and where
    /// each cell's genes of each range start (see [`CellLists`]).
    cents: Vec<u64>,
    cell_at: Vec<u32>,
    cpos: Vec<u32>,
    /// The same entries range-major (one list per range and cell), and the lists' starts.
    rents: Vec<u64>,
    rstart: Vec<u32>,
    cursor: Vec<u32>,
    /// Sparse genes present in the block (a byte per table row, nonzero where present), as
    /// lists per range.
    seen: Vec<u8>,
    present: Vec<u32>,
    pstart: Vec<u32>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            tile: Vec::new(),
            pack: Vec::new(),
            counts: CountRows::default(),
            memo: Log1pMemo::new(),
            cents: Vec::new(),
            cell_at: Vec::new(),
            cpos: Vec::new(),
            rents: Vec::new(),
            rstart: Vec::new(),
            cursor: Vec::new(),
            seen: Vec::new(),
            present: Vec::new(),
            pstart: Vec::new(),
        }
    }
}

/// Computes `out = X @ E` (then row L2 normalisation if asked) into `out`, row-major
/// `n_cells × dim`. Runs on the current rayon pool. With [`Preprocess::Log1p`], `x` must have been checked for negative values
/// ([`CsrView::new_counts`]).
pub fn weighted_embedding<I: Index, V: Value>(
    x: &CsrView<'_, I, V>,
    emb: Table<'_>,
    map: GeneMap<'_>,
    opts: WeightedOptions,
    out: &mut [f32],
) -> Result<()> {
    let (n, d) = (x.n_rows(), emb.dim());
    map.check(x.n_cols(), emb.n_rows())?;
    if out.len() != n * d {
        return Err(GeneptError::Shape(format!(
            "output buffer has {} values, expected {n} × {d}",
            out.len()
        )));
    }
    if opts.block_rows == 0 {
        return Err(GeneptError::InvalidArgument(
            "block_rows must be ≥ 1".into(),
        ));
    }
    if let Preprocess::Log1p { target_sum } = opts.preprocess {
        if !(target_sum.is_finite() && target_sum > 0.0) {
            return Err(GeneptError::InvalidArgument(format!(
                "target_sum must be a positive number, got {target_sum}"
            )));
        }
        if !x.checked_nonnegative() {
            return Err(GeneptError::InvalidArgument(
                "log1p preprocessing needs X checked for negative values (CsrView::new_counts)"
                    .into(),
            ));
        }
    }
    let plan = Plan::new(emb, map, opts.isa, x.n_cols())?;
    if n == 0 || d == 0 {
        return Ok(());
    }
    // Enough blocks to keep every thread busy on small inputs.
    let threads = rayon::current_num_threads().max(1);
    let block = opts.block_rows.min(n.div_ceil(threads)).max(1);
    out.par_chunks_mut(block * d)
        .enumerate()
        .try_for_each(|(b, out_block)| {
            let r0 = b * block;
            let r1 = (r0 + block).min(n);
            with_scratch(|s| encode_block(x, &plan, opts, r0, r1, s, out_block))
        })
}

thread_local! {
    /// Each pool thread keeps its buffers between blocks and calls: fresh ones cost a page
    /// fault per 4 KB (measured 15% of the run time when they were made per call).
    static SCRATCH: std::cell::Cell<Option<Box<Scratch>>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with this thread's scratch. A panic inside `f` drops the scratch instead of
/// returning it half-used.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut s = SCRATCH.take().unwrap_or_else(|| Box::new(Scratch::new()));
    let r = f(&mut s);
    SCRATCH.set(Some(s));
    r
}

fn encode_block<I: Index, V: Value>(
    x: &CsrView<'_, I, V>,
    plan: &Plan<'_>,
    opts: WeightedOptions,
    r0: usize,
    r1: usize,
    s: &mut Scratch,
    out: &mut [f32],
) -> Result<()> {
    let d = plan.emb.dim();
    let isa = plan.isa;
    let rows = r1 - r0;
    if rows == 0 {
        return Ok(());
    }
    group_block(x, plan, opts.preprocess, r0, r1, s);
    let Scratch {
        tile,
        pack,
        rents,
        rstart,
        present,
        pstart,
        ..
    } = s;
    // The largest gene found once, for all tiles.
    let lists = CellLists::new(rents, rstart, rows);
    let packed = lists.masked(PACK_MASK);
    let max_stride = plan.tiles.iter().map(|t| t.stride).max().unwrap_or(0);
    tile.clear();
    tile.resize(rows * max_stride + 16, 0.0);
    // 64-byte aligned (max_stride is a multiple of 16), so that no vector load or store splits
    // a cache line.
    let skip = tile.as_ptr().align_offset(64).min(16);
    let tile = &mut tile[skip..skip + rows * max_stride];
    // A row-major table is gathered from packed copies of its ranges, in two buffers: one is
    // gathered while the next range is packed into the other ([`PackAhead`]).
    let (mut cur, mut next): (&mut [f32], &mut [f32]) = match plan.emb {
        Table::Rows(_) => {
            let len = RANGE_GENES * TILE.min(d);
            pack.resize(2 * len + 16, 0.0);
            let skip = pack.as_ptr().align_offset(64).min(16);
            pack[skip..skip + 2 * len].split_at_mut(len)
        }
        Table::Tiled(_) => (&mut [], &mut []),
    };
    let genes = |range: usize| &present[pstart[range] as usize..pstart[range + 1] as usize];
    if let (false, Some(t)) = (cur.is_empty(), plan.tiles.first()) {
        cur = PackAhead::new(genes(0), plan.emb.tile(t.t0), t.w, PACK_MASK, cur).finish();
    }
    let ranges = lists.ranges();
    for (ti, t) in plan.tiles.iter().enumerate() {
        let (table, tstride) = plan.emb.tile(t.t0);
        let buf = &mut tile[..rows * t.stride];
        // Every sum starts at +0.0 (the gather adds to the row; an empty list leaves it).
        buf.fill(0.0);
        for range in 0..ranges {
            // While a range is gathered, its successor's tiles (or the next tile's first
            // range) are brought into L2, and packed when the table is row-major.
            let upcoming = if range + 1 < ranges {
                Some((genes(range + 1), (table, tstride), t.w))
            } else {
                let tn = plan.tiles.get(ti + 1);
                tn.map(|tn| (genes(0), plan.emb.tile(tn.t0), tn.w))
            };
            let ahead = match upcoming {
                Some((g, src, w)) if !next.is_empty() => Some(PackAhead::new(
                    g,
                    src,
                    w,
                    PACK_MASK,
                    std::mem::take(&mut next),
                )),
                _ => None,
            };
            let pf = upcoming.map_or(Prefetch::none(), |(g, (tb, ts), w)| Prefetch {
                genes: g,
                table: tb.as_ptr(),
                tstride: ts,
                bytes: 4 * w,
                pack: ahead.as_ref().map(|a| a as &dyn CopyAhead),
            });
            if cur.is_empty() {
                gather_range(isa, &lists, range, table, tstride, t.w, buf, t.stride, pf);
            } else {
                gather_range(isa, &packed, range, cur, t.w, t.w, buf, t.stride, pf);
            }
            if let Some(a) = ahead {
                next = a.finish();
                std::mem::swap(&mut cur, &mut next);
            }
        }
        for (src, dst) in buf.chunks_exact(t.stride).zip(out.chunks_exact_mut(d)) {
            dst[t.t0..t.t0 + t.w].copy_from_slice(&src[..t.w]);
        }
    }
    finish_rows(out, d, r0, opts.normalize)
}

/// A row-major table is read through packed copies of its ranges: gene `g`'s tile of the range
/// at `pack[(g & PACK_MASK) * w..]` (see [`PackAhead`]).
///
/// Why: a row-major table's tiles of one range lie a row (6 KB at D = 1536) apart, so they fall
/// into few L2 sets and evict each other while the block's cells read them again and again,
/// and walking them crosses many pages. Packed, they are one contiguous run (192 KB) that stays
/// in L2, as a tiled table's range does; each is still read from memory once per block, while
/// the range before is gathered. The copy is small against the gather, and it makes re-laying
/// the whole table out (a copy of it, and the time to make it, on every call with a plain
/// array) unnecessary. Same values, same order: the same bits.
const PACK_MASK: u32 = (RANGE_GENES - 1) as u32;

/// What placing a cell's sparse entries marks besides its list: the genes present in the
/// block (`seen`, a byte per table row) and, per gene range `r`, the position after the
/// range's last entry so far (`bound[r + 1]`). Entries that are not kept mark the dummy last
/// slot of each (plain stores: a bitmap's read-modify-writes would chain a cell's genes).
struct Marks<'a> {
    seen: &'a mut [u8],
    bound: &'a mut [u32],
}

impl Marks<'_> {
    #[inline(always)]
    fn mark(&mut self, c: u32, keep: bool, at: usize) {
        let (ds, db) = (self.seen.len() - 1, self.bound.len() - 1);
        self.seen[if keep { c as usize } else { ds }] = 1;
        self.bound[if keep {
            (c >> RANGE_SHIFT) as usize + 1
        } else {
            db
        }] = (at + 1) as u32;
    }
}

/// Where one cell's entries go: `ents[*n..]`, marked in `marks`.
struct RowOut<'a, 'b> {
    code: &'a [u32],
    ents: &'a mut [u64],
    n: &'a mut usize,
    marks: Marks<'b>,
}

impl RowOut<'_, '_> {
    /// Places one cell's `(column, value)` pairs without branching on the gene: an entry
    /// (table row, value) is written at `ents[*n]` and kept by advancing `*n` unless its gene
    /// has no embedding ([`SKIP`]), and marked ([`Marks`]). Returns whether the cell's genes
    /// were out of ascending order.
    #[inline(always)]
    fn place(&mut self, vals: impl Iterator<Item = (usize, f32)>) -> bool {
        let mut prev = 0u32;
        let mut unsorted = false;
        let mut m = *self.n;
        for (j, v) in vals {
            let c = self.code[j];
            let keep = c != SKIP;
            self.marks.mark(c, keep, m);
            self.ents[m] = pack_entry(c, v);
            m += usize::from(keep);
            unsorted |= keep & (c < prev);
            prev = if keep { c } else { prev };
        }
        *self.n = m;
        unsorted
    }
}

#[inline(always)]
fn col<I: Index>(j: I) -> usize {
    j.to_usize().unwrap_or(0)
}

/// Places one cell of values as they are. Not inlined (nor is [`place_counts`]): each loop
/// gets the registers to itself.
#[inline(never)]
fn place_values<I: Index, V: Value>(out: &mut RowOut<'_, '_>, idx: &[I], val: &[V]) -> bool {
    out.place(idx.iter().zip(val).map(|(&j, &v)| (col(j), v.to_f32())))
}

/// Places one cell of raw counts as `log1p(x * target / total)`: the row's total and kind
/// in one pass (the row then sits in L1 for placing), then each value by the cheapest lookup
/// the row allows: a table filled at once for small integer counts, a remembered value per
/// distinct count, or a `log1p` per value. Rows out of canonical order are merged first
/// (duplicates summed).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn place_counts<I: Index, V: Value>(
    out: &mut RowOut<'_, '_>,
    idx: &[I],
    val: &[V],
    target: f64,
    memo: &mut Log1pMemo,
    counts: &mut CountRows,
    isa: Isa,
) -> bool {
    let scan = scan_counts(isa, idx, val, SMALL);
    let scale = if scan.total > 0.0 {
        target / scan.total
    } else {
        0.0
    };
    memo.next_row();
    let max = scan.small_max;
    let small = max < SMALL;
    if !scan.canonical {
        counts.merge(idx, val);
        let merged = counts.cols.iter().zip(&counts.vals);
        out.place(merged.map(|(&j, &v)| (j, memo.get(v, scale))))
    } else if small && (max + 1) * EAGER_COST <= idx.len() {
        memo.fill(max, scale);
        let memo = &*memo;
        out.place(idx.iter().zip(val).map(|(&j, &v)| (col(j), memo.filled(v))))
    } else if small {
        let vals = idx.iter().zip(val);
        out.place(vals.map(|(&j, &v)| (col(j), memo.get_small(v, scale))))
    } else {
        let vals = idx.iter().zip(val);
        out.place(vals.map(|(&j, &v)| (col(j), memo.get(v.to_f64(), scale))))
    }
}

/// Regroups cells `r0..r1` for the gather: their entries (gene, value) into one list per
/// (gene range, cell), range-major, each list's genes ascending (stably: duplicates
/// in stored order), in `rents`/`rstart` (see [`CellLists`]); the genes present, per range, in
/// `present`/`pstart`.
fn group_block<I: Index, V: Value>(
    x: &CsrView<'_, I, V>,
    plan: &Plan<'_>,
    pre: Preprocess,
    r0: usize,
    r1: usize,
    s: &mut Scratch,
) {
    let rows = r1 - r0;
    let nr = plan.n_ranges;
    let (n, unsorted) = s.place_rows(x, plan, pre, r0, r1);
    if unsorted {
        s.sort_cells(rows, nr + 2);
    }
    s.count_ranges(rows, nr);
    s.copy_range_runs(rows, nr, n);
    s.collect_present(nr);
}

impl Scratch {
    /// Places the entries of cells `r0..r1` cell after cell in `cents` (preprocessed, genes
    /// coded), marking the genes present in `seen` and each cell's range bounds in `cursor`
    /// (see [`Marks`]). Returns the number of entries and whether some row was unsorted.
    #[inline]
    fn place_rows<I: Index, V: Value>(
        &mut self,
        x: &CsrView<'_, I, V>,
        plan: &Plan<'_>,
        pre: Preprocess,
        r0: usize,
        r1: usize,
    ) -> (usize, bool) {
        let rows = r1 - r0;
        let code = &plan.code[..];
        let target = match pre {
            Preprocess::Log1p { target_sum } => Some(target_sum),
            Preprocess::None => None,
        };
        let need = x.nnz_rows(r0, r1) + 1;
        if self.cents.len() < need {
            self.cents.resize(need, 0);
        }
        self.cell_at.clear();
        // Marks (see [`Marks`]): a byte per table row and a dummy one; per cell, `nr + 1`
        // range bounds and a dummy slot (cell-major).
        self.seen.clear();
        self.seen.resize(plan.emb.n_rows() + 1, 0);
        let nbs = plan.n_ranges + 2;
        self.cursor.clear();
        self.cursor.resize(nbs * rows, 0);
        let mut unsorted = false;
        let mut n = 0usize;
        let Scratch {
            cents,
            cell_at,
            counts,
            memo,
            seen,
            cursor,
            ..
        } = self;
        for r in r0..r1 {
            let lr = r - r0;
            cell_at.push(n as u32);
            let bound = &mut cursor[lr * nbs..(lr + 1) * nbs];
            bound.fill(n as u32);
            let marks = Marks { seen, bound };
            let (idx, val) = x.row(r);
            let mut out = RowOut {
                code,
                ents: cents,
                n: &mut n,
                marks,
            };
            unsorted |= match target {
                Some(target) => place_counts(&mut out, idx, val, target, memo, counts, plan.isa),
                None => place_values(&mut out, idx, val),
            };
        }
        cell_at.push(n as u32);
        (n, unsorted)
    }

    /// Rows whose genes are not ascending (a reordering gene map, unsorted X): sorts each
    /// cell's entries by gene, stably (duplicates keep their stored order), and marks the
    /// ranges' bounds again (`nbs` slots per cell).
    #[cold]
    fn sort_cells(&mut self, rows: usize, nbs: usize) {
        for c in 0..rows {
            let (a, b) = (self.cell_at[c] as usize, self.cell_at[c + 1] as usize);
            self.cents[a..b].sort_by_key(|&e| e as u32);
            let bound = &mut self.cursor[c * nbs..(c + 1) * nbs];
            bound.fill(a as u32);
            for (i, &e) in self.cents[a..b].iter().enumerate() {
                bound[((e as u32) >> RANGE_SHIFT) as usize + 1] = (a + i + 1) as u32;
            }
        }
    }

    /// Where each cell's genes of each range start (`bound[r]`; a running maximum fills the
    /// empty ranges), and how many there are, range-major, in `cpos`.
    #[inline]
    fn count_ranges(&mut self, rows: usize, nr: usize) {
        let (nb, nbs) = (nr + 1, nr + 2);
        self.cpos.clear();
        self.cpos.resize(nr * rows + 1, 0);
        for c in 0..rows {
            let bound = &mut self.cursor[c * nbs..c * nbs + nb];
            let mut run = self.cell_at[c];
            for x in bound.iter_mut() {
                run = run.max(*x);
                *x = run;
            }
            for (rr, w) in bound.windows(2).enumerate() {
                self.cpos[rr * rows + c] = w[1] - w[0];
            }
        }
    }

    /// The lists' starts (`rstart`), then each cell's run of each range (one run: its genes
    /// are ascending) copied to its list in `rents`.
    #[inline]
    fn copy_range_runs(&mut self, rows: usize, nr: usize, n: usize) {
        let (nb, nbs) = (nr + 1, nr + 2);
        self.rstart.clear();
        let mut acc = 0u32;
        for &cnt in &self.cpos {
            self.rstart.push(acc);
            acc += cnt;
        }
        if self.rents.len() < n {
            self.rents.resize(n, 0);
        }
        for c in 0..rows {
            let bound = &self.cursor[c * nbs..c * nbs + nb];
            for (r, w) in bound.windows(2).enumerate() {
                let (from, to) = (w[0] as usize, w[1] as usize);
                if to > from {
                    let at = self.rstart[r * rows + c] as usize;
                    self.rents[at..at + (to - from)].copy_from_slice(&self.cents[from..to]);
                }
            }
        }
        self.rents.truncate(n);
    }

    /// The present genes, range by range, in `present`/`pstart` (the dummy byte dropped).
    #[inline]
    fn collect_present(&mut self, nr: usize) {
        self.present.clear();
        self.pstart.clear();
        self.pstart.push(0);
        self.seen.pop();
        self.seen.resize(self.seen.len().next_multiple_of(8), 0);
        for (wi, word) in self.seen.chunks_exact(8).enumerate() {
            let mut bytes = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            while bytes != 0 {
                let at = bytes.trailing_zeros() / 8;
                bytes &= !(0xff << (8 * at));
                let g = (wi * 8) as u32 + at;
                while self.pstart.len() <= (g >> RANGE_SHIFT) as usize {
                    self.pstart.push(self.present.len() as u32);
                }
                self.present.push(g);
            }
        }
        while self.pstart.len() <= nr {
            self.pstart.push(self.present.len() as u32);
        }
    }
}

/// Checks each row for float32 overflow and, if asked, divides it by its L2 norm. Zeros are
/// written as +0.0 (see the module notes).
fn finish_rows(out: &mut [f32], d: usize, r0: usize, normalize: bool) -> Result<()> {
    for (r, row) in out.chunks_exact_mut(d).enumerate() {
        let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        if !ss.is_finite() {
            return Err(GeneptError::Overflow { cell: r0 + r });
        }
        if normalize && ss > 0.0 {
            let inv = (1.0 / ss.sqrt()) as f32;
            for v in row.iter_mut() {
                *v = *v * inv + 0.0;
            }
        } else {
            for v in row.iter_mut() {
                *v += 0.0;
            }
        }
    }
    Ok(())
}

/// L2-normalises the rows of a row-major `n × d` matrix in place; zero rows stay zero.
pub fn l2_normalize_rows(data: &mut [f32], d: usize) -> Result<()> {
    if d == 0 {
        return Ok(());
    }
    if !data.len().is_multiple_of(d) {
        return Err(GeneptError::Shape(format!(
            "buffer of {} values is not a whole number of rows of {d}",
            data.len()
        )));
    }
    data.par_chunks_mut(d * 256)
        .enumerate()
        .try_for_each(|(b, chunk)| {
            let bad = chunk
                .chunks_exact(d)
                .enumerate()
                .find_map(|(r, row)| row.iter().find(|v| !v.is_finite()).map(|&v| (r, v)));
            if let Some((r, v)) = bad {
                return Err(GeneptError::NonFiniteRow {
                    kind: crate::error::non_finite_kind(f64::from(v)),
                    row: b * 256 + r,
                });
            }
            finish_rows(chunk, d, b * 256, true)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense float64 reference of X @ E (values optionally log-normalised per cell first) with
    /// optional row normalisation.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        indptr: &[i64],
        idx: &[i64],
        val: &[f64],
        e: &[f32],
        d: usize,
        map: Option<&[i64]>,
        normalize: bool,
        log1p: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let n = indptr.len() - 1;
        let mut bound = vec![0.0f64; n];
        let g = idx.iter().copied().max().map_or(0, |m| m as usize + 1);
        let mut out = vec![0.0f64; n * d];
        for r in 0..n {
            let (a, b) = (indptr[r] as usize, indptr[r + 1] as usize);
            let mut dense = vec![0.0f64; g];
            for k in a..b {
                dense[idx[k] as usize] += val[k];
            }
            if log1p {
                let total: f64 = dense.iter().sum();
                for v in dense.iter_mut() {
                    *v = if total > 0.0 {
                        (*v * TARGET_SUM / total).ln_1p()
                    } else {
                        0.0
                    };
                }
            }
            let mut abs = vec![0.0f64; d];
            for (j, &v) in dense.iter().enumerate() {
                let row = match map {
                    Some(m) if m[j] < 0 => continue,
                    Some(m) => m[j] as usize,
                    None => j,
                };
                for t in 0..d {
                    out[r * d + t] += v * f64::from(e[row * d + t]);
                    abs[t] += (v * f64::from(e[row * d + t])).abs();
                }
            }
            // float32 accumulation error is bounded relative to |X| @ |E| (before cancellation).
            bound[r] = abs.iter().map(|v| v * v).sum::<f64>().sqrt();
            if normalize {
                let nn: f64 = out[r * d..(r + 1) * d]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f64>()
                    .sqrt();
                if nn > 0.0 {
                    out[r * d..(r + 1) * d].iter_mut().for_each(|v| *v /= nn);
                    bound[r] /= nn;
                }
            }
        }
        (out, bound)
    }

    /// A small deterministic generator (no dependency needed for the unit tests).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn unit(&mut self) -> f64 {
            self.next() as f64 / (1u64 << 31) as f64
        }
    }

    /// Rows with a few frequent genes and rare ones, unsorted, duplicated,
    /// with many ties and zeros; every fifth row empty. Values are counts (integers) or halves.
    fn random_csr(
        rng: &mut Lcg,
        n: usize,
        g: usize,
        per_row: usize,
        counts: bool,
    ) -> (Vec<i64>, Vec<i64>, Vec<f64>) {
        let (mut ip, mut ix, mut v) = (vec![0i64], vec![], vec![]);
        for r in 0..n {
            if r % 5 != 3 {
                for j in 0..g.min(6) {
                    if rng.next() % 10 < 8 {
                        ix.push(j as i64);
                        v.push((rng.next() % 5) as f64);
                    }
                }
                for _ in 0..rng.next() as usize % (per_row + 1) {
                    ix.push((rng.next() as usize % g) as i64);
                    let x = (rng.next() % 9) as f64;
                    v.push(if counts { x } else { x / 2.0 });
                }
            }
            ip.push(ix.len() as i64);
        }
        (ip, ix, v)
    }

    fn tiled(e: &[f32], n: usize, d: usize) -> TiledEmbeddings {
        TiledEmbeddings::new(&EmbeddingView::new(e, n, d).unwrap())
    }

    struct Case {
        n_emb: usize,
        d: usize,
        normalize: bool,
        log1p: bool,
    }

    /// Runs every instruction set, block shape and both table layouts on one input; checks
    /// them against the reference and, within the FMA paths, against each other bitwise.
    fn run(c: Case, map: Option<&[i64]>) {
        let mut rng = Lcg(42 + c.d as u64);
        let g = map.map_or(c.n_emb, |m| m.len());
        let n = 97;
        let (ip, ix, v) = random_csr(&mut rng, n, g, 30, c.log1p);
        let e: Vec<f32> = (0..c.n_emb * c.d)
            .map(|_| (rng.unit() * 2.0 - 1.0) as f32)
            .collect();
        let x = if c.log1p {
            CsrView::new_counts(&ip, &ix, &v, g).unwrap()
        } else {
            CsrView::new(&ip, &ix, &v, g).unwrap()
        };
        let ev = tiled(&e, c.n_emb, c.d);
        let gm = map.map_or(GeneMap::Identity, GeneMap::Table);
        let (want, bound) = reference(&ip, &ix, &v, &e, c.d, map, c.normalize, c.log1p);
        let mut fma_result: Option<Vec<f32>> = None;
        for isa in Isa::available() {
            let mut first: Option<Vec<f32>> = None;
            for block_rows in [512, 40, 1, 7] {
                let opts = WeightedOptions {
                    normalize: c.normalize,
                    block_rows,
                    isa,
                    preprocess: if c.log1p {
                        Preprocess::Log1p {
                            target_sum: TARGET_SUM,
                        }
                    } else {
                        Preprocess::None
                    },
                };
                // The prepared table, the row-major one read in place, and one re-laid out
                // for the call (in the kept buffer).
                for k in 0..3 {
                    let mut out = vec![f32::NAN; n * c.d];
                    let rows = EmbeddingView::new(&e, c.n_emb, c.d).unwrap();
                    let mut call = |t: Table<'_>| weighted_embedding(&x, t, gm, opts, &mut out);
                    match k {
                        0 => call(Table::Tiled(&ev)),
                        1 => call(Table::Rows(rows)),
                        _ => crate::tiled::with_tiled(&e, c.n_emb, c.d, |t| call(Table::Tiled(t))),
                    }
                    .unwrap();
                    match &first {
                        None => first = Some(out),
                        Some(f) => assert_eq!(
                            f.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            "{isa:?} blocks of {block_rows}: not bitwise equal"
                        ),
                    }
                }
            }
            let out = first.unwrap();
            for r in 0..n {
                let row = &want[r * c.d..(r + 1) * c.d];
                for t in 0..c.d {
                    let err = (f64::from(out[r * c.d + t]) - row[t]).abs();
                    assert!(
                        err <= 1e-5 * bound[r] + 1e-30,
                        "isa={isa:?} d={} r={r} t={t}: {} vs {}",
                        c.d,
                        out[r * c.d + t],
                        row[t]
                    );
                }
            }
            if isa != Isa::portable() {
                match &fma_result {
                    None => fma_result = Some(out),
                    Some(f) => assert_eq!(f, &out, "{isa:?} differs from the other FMA path"),
                }
            }
        }
    }

    #[test]
    fn matches_reference_all_paths() {
        for d in [1, 5, 64, 96, 100, 200] {
            for (normalize, log1p) in [(true, false), (false, false), (false, true), (true, true)] {
                let c = Case {
                    n_emb: 50,
                    d,
                    normalize,
                    log1p,
                };
                run(c, None);
            }
        }
    }

    /// A table of three gene ranges of the gather (and a partial one), with and without a map
    /// that reverses, merges and skips columns; one tile narrower than [`TILE`], two and a
    /// partial one: a row-major table's packed ranges (see [`PACK_MASK`]) give the tiled
    /// table's bits.
    #[test]
    fn many_gene_ranges() {
        let n_emb = 2 * RANGE_GENES + 500;
        let map: Vec<i64> = (0..n_emb as i64 + 300)
            .map(|j| {
                if j % 11 == 0 {
                    -1
                } else {
                    n_emb as i64 - 1 - (j * 7) % n_emb as i64
                }
            })
            .collect();
        for (log1p, m) in [
            (false, None),
            (true, None),
            (false, Some(&map[..])),
            (true, Some(&map[..])),
        ] {
            let c = Case {
                n_emb,
                d: 100,
                normalize: true,
                log1p,
            };
            run(c, m);
        }
        for d in [40, 2 * TILE + 8] {
            let c = Case {
                n_emb,
                d,
                normalize: false,
                log1p: false,
            };
            run(c, Some(&map[..]));
        }
    }

    /// A table of one gene, read directly or through a map that repeats and skips it.
    #[test]
    fn one_gene_table() {
        let map: Vec<i64> = (0..9).map(|j| if j % 3 == 0 { -1 } else { 0 }).collect();
        for (d, m) in [(1, None), (TILE + 1, None), (7, Some(&map[..]))] {
            let c = Case {
                n_emb: 1,
                d,
                normalize: true,
                log1p: false,
            };
            run(c, m);
        }
    }

    #[test]
    fn gene_map_skips_and_reorders() {
        let map: Vec<i64> = (0..60)
            .map(|j| if j % 7 == 0 { -1 } else { (j * 13) % 40 })
            .collect();
        for log1p in [false, true] {
            let c = Case {
                n_emb: 40,
                d: 70,
                normalize: true,
                log1p,
            };
            run(c, Some(&map));
        }
    }

    #[test]
    fn independent_of_block_size_and_threads() {
        let mut rng = Lcg(7);
        let (ip, ix, v) = random_csr(&mut rng, 300, 300, 80, false);
        let e: Vec<f32> = (0..300 * 130).map(|_| rng.unit() as f32 - 0.5).collect();
        let x = CsrView::new(&ip, &ix, &v, 300).unwrap();
        let ev = tiled(&e, 300, 130);
        let o = WeightedOptions::default();
        let mut results = Vec::new();
        for (threads, block_rows) in [(1, 3), (2, 1000), (3, 64)] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut a = vec![0.0; 300 * 130];
            pool.install(|| {
                weighted_embedding(
                    &x,
                    Table::Tiled(&ev),
                    GeneMap::Identity,
                    WeightedOptions { block_rows, ..o },
                    &mut a,
                )
            })
            .unwrap();
            results.push(a);
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }

    /// The count scan: the total equals a plain sum (exact for integer counts), and the
    /// maximum is reported only when every count is an integer below `SMALL`.
    #[test]
    fn scan_counts_total_and_small_maximum() {
        let cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![0.0],
            vec![3.0; 9],
            (0..1023).map(|i| i as f32).collect(),
            (0..1024).map(|i| i as f32).collect(),
            vec![1.0, 2.5, 3.0],
            vec![1.0, 1e30, 2.0],
            vec![7.0, 1023.0, 5.0, 0.0, 2.0, 2.0, 2.0, 2.0, 9.0],
            vec![0.5; 17],
            vec![1.0; 8].into_iter().chain([1023.5]).collect(),
        ];
        for v in &cases {
            let idx: Vec<i32> = (0..v.len() as i32).collect();
            let scan = scan_counts(Isa::portable(), &idx, v, SMALL);
            for isa in Isa::available() {
                assert_eq!(scan_counts(isa, &idx, v, SMALL), scan, "{isa:?} {v:?}");
            }
            let (total, max) = (scan.total, scan.small_max);
            assert!(scan.canonical);
            let want: f64 = v.iter().map(|&x| f64::from(x)).sum();
            assert!((total - want).abs() <= 1e-12 * want.abs(), "{v:?}");
            let small = v.iter().all(|&x| x.fract() == 0.0 && x < SMALL as f32);
            let want_max = if small {
                v.iter().fold(0.0f32, |m, &x| m.max(x)) as usize
            } else {
                SMALL
            };
            assert_eq!(max, want_max, "{v:?}");
            let v64: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
            let idx64: Vec<i64> = (0..v.len() as i64).rev().collect();
            for isa in Isa::available() {
                let scan64 = scan_counts(isa, &idx64, &v64, SMALL);
                assert_eq!(scan64.small_max, want_max, "{isa:?} {v:?} as f64");
                assert_eq!(scan64.total, total, "{isa:?} {v:?} as f64");
                assert_eq!(scan64.canonical, v.len() < 2, "{isa:?} {v:?} reversed");
            }
        }
        // A count's table slot is the count.
        for k in [0u32, 1, 2, 255, 256, 1000, 1023] {
            assert_eq!(small_index(k as f32), k as usize);
            assert_eq!(small_index(f64::from(k)), k as usize);
        }
    }

    #[test]
    fn log1p_rejects_negatives_and_zero_totals_stay_zero() {
        let ip = [0i64, 2, 4];
        let ix = [0i64, 1, 0, 1];
        let err = CsrView::new_counts(&ip, &ix, &[1.0f32, 2.0, 0.0, -1.0], 2).unwrap_err();
        assert!(err.to_string().contains("cell 1, gene 1"), "{err}");
        let x = CsrView::new_counts(&ip, &ix, &[1.0f32, 3.0, 0.0, 0.0], 2).unwrap();
        let e = [1.0f32, 0.0, 0.0, 1.0];
        let mut out = vec![7.0; 4];
        let opts = WeightedOptions {
            normalize: false,
            preprocess: Preprocess::Log1p { target_sum: 4.0 },
            ..WeightedOptions::default()
        };
        let table = Table::Rows(EmbeddingView::new(&e, 2, 2).unwrap());
        weighted_embedding(&x, table, GeneMap::Identity, opts, &mut out).unwrap();
        assert_eq!(out, vec![2f64.ln() as f32, 4f64.ln() as f32, 0.0, 0.0]);
        // A view not checked for negatives is refused.
        let unchecked = CsrView::new(&ip, &ix, &[1.0f32, 3.0, 0.0, 0.0], 2).unwrap();
        let r = weighted_embedding(&unchecked, table, GeneMap::Identity, opts, &mut out);
        assert!(r.is_err());
    }

    #[test]
    fn zero_rows_stay_zero_and_shapes_are_checked() {
        let x = CsrView::<i32, f32>::new(&[0, 0, 1], &[0], &[0.0], 2).unwrap();
        let e = vec![1.0f32; 4];
        let ev = tiled(&e, 2, 2);
        let mut out = vec![7.0; 4];
        let o = WeightedOptions::default();
        weighted_embedding(&x, Table::Tiled(&ev), GeneMap::Identity, o, &mut out).unwrap();
        assert_eq!(out, vec![0.0; 4]);
        assert!(out.iter().all(|v| v.to_bits() == 0), "zeros are +0.0");
        let ev3 = tiled(&[1.0f32; 6], 3, 2);
        let err = weighted_embedding(&x, Table::Tiled(&ev3), GeneMap::Identity, o, &mut out);
        assert!(err.unwrap_err().to_string().contains("2 genes"));
    }

    #[test]
    fn overflow_is_reported() {
        let x = CsrView::<i32, f32>::new(&[0, 1], &[0], &[3e38], 1).unwrap();
        let ev = tiled(&[1e10f32], 1, 1);
        let mut out = vec![0.0; 1];
        let e = weighted_embedding(
            &x,
            Table::Tiled(&ev),
            GeneMap::Identity,
            WeightedOptions::default(),
            &mut out,
        );
        assert!(matches!(e, Err(GeneptError::Overflow { cell: 0 })));
    }

    #[test]
    fn normalize_rows() {
        let mut m = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize_rows(&mut m, 2).unwrap();
        assert_eq!(m, vec![0.6, 0.8, 0.0, 0.0]);
        assert!(l2_normalize_rows(&mut [1.0, f32::NAN], 2).is_err());
    }
}
