//! Runtime CPU dispatch for the inner loops of GenePT-w.
//!
//! Wheels are built for generic x86-64, so the wide code is compiled with `#[target_feature]`
//! and chosen at run time: AVX-512F (Zen 4 runs it as two 256-bit halves, Zen 5 at full width;
//! six of its registers hold a cell's 96-float output row), AVX2+FMA, or portable Rust.
//!
//! The genes are gathered cell by cell ([`gather_range`]): a cell's output row stays in
//! registers while its genes of one gene range are added (one load and one multiply-add per
//! register per gene, no store), and the range's embedding tiles (512 genes × 384 bytes)
//! stay in L2 while the block's cells pass over them.
//!
//! Soundness: an [`Isa`] other than [`Isa::portable`] can only be made by [`Isa::detect`] and
//! [`Isa::available`], after the CPU reported the features its code needs, so every
//! `#[target_feature]` function reached through it runs on a CPU that has them. The kernels are
//! crate-private and check their bounds in release builds, once per call (not per entry): the
//! gather takes [`CellLists`], whose largest gene was found once when they were built and is
//! checked against the table's length per call (the cell rows against the output's), and
//! reads each list through a checked slice.
//!
//! Every path computes each output element as the same sequence of operations in the same
//! order. The two fused-multiply-add paths (AVX-512 and AVX2) therefore give identical bits;
//! the portable path rounds each product separately and may differ from them in the last bit.

use crate::csr::{Index, Value};

/// The instruction set the kernels run with on this machine. Only detection creates one that
/// needs CPU features (see the module notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(Level);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Portable,
    Avx2Fma,
    Avx512,
}

impl Isa {
    /// The best instruction set available on this CPU. `GENEPT_FAST_SIMD=portable` or `=avx2`
    /// caps it (for comparisons); it is never raised above what the CPU reports.
    pub fn detect() -> Isa {
        let cap = match std::env::var("GENEPT_FAST_SIMD") {
            Ok(v) if v.eq_ignore_ascii_case("portable") => Level::Portable,
            Ok(v) if v.eq_ignore_ascii_case("avx2") => Level::Avx2Fma,
            _ => Level::Avx512,
        };
        Isa::available()
            .into_iter()
            .rfind(|isa| isa.0 <= cap)
            .unwrap_or(Isa(Level::Portable))
    }

    /// Portable Rust (the compiler vectorises what it can for the build target).
    pub fn portable() -> Isa {
        Isa(Level::Portable)
    }

    /// Every instruction set this CPU can run, portable first, best last.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa(Level::Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa(Level::Avx2Fma));
                if is_x86_feature_detected!("avx512f") {
                    v.push(Isa(Level::Avx512));
                }
            }
        }
        v
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            Level::Avx512 => "avx512",
            Level::Avx2Fma => "avx2+fma",
            Level::Portable => "portable",
        }
    }
}

/// Width, in floats, of one embedding tile: 12 of the 16 AVX2 registers (6 of the 32 AVX-512
/// registers) hold it for a whole gene; 384, 768, 1536 and 3072 are multiples.
pub const TILE: usize = 96;

/// One entry of a regrouped block: its output row (low 32 bits) and its value (the f32 bits,
/// high 32 bits), so that the hot loop does one load per entry.
#[inline(always)]
pub(crate) fn pack_entry(row: u32, v: f32) -> u64 {
    u64::from(row) | (u64::from(v.to_bits()) << 32)
}

#[inline(always)]
fn entry_row(e: u64) -> usize {
    e as u32 as usize
}

#[inline(always)]
fn entry_val(e: u64) -> f32 {
    f32::from_bits((e >> 32) as u32)
}

/// A block's sparse entries as one list per (gene range, cell), range-major: list
/// `l = range · cells + cell` is `ents[starts[l]..starts[l + 1]]`, each entry a gene's table
/// row (low 32 bits) and its value. Built once per block: the largest gene is found once;
/// list bounds are slice-checked as they are read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CellLists<'a> {
    ents: &'a [u64],
    starts: &'a [u32],
    cells: usize,
    max_gene: usize,
    /// Each entry's row is ANDed with this before it is read (`u32::MAX`: as stored); see
    /// [`CellLists::masked`].
    mask: u32,
}

impl<'a> CellLists<'a> {
    /// `starts` must hold `ranges · cells + 1` positions.
    pub(crate) fn new(ents: &'a [u64], starts: &'a [u32], cells: usize) -> Self {
        assert!(
            cells > 0 && !starts.is_empty() && (starts.len() - 1).is_multiple_of(cells),
            "CellLists: inconsistent starts"
        );
        let max_gene = ents
            .iter()
            .map(|&e| e as u32)
            .max()
            .map_or(0, |g| g as usize);
        CellLists {
            ents,
            starts,
            cells,
            max_gene,
            mask: u32::MAX,
        }
    }

    /// The same lists, read with each entry's row ANDed with `mask`: a range of
    /// `mask + 1` rows (aligned to it) then addresses a packed copy of just that range, row
    /// `g` at `g & mask`. Every row read is at most `mask`, whatever the entries hold.
    pub(crate) fn masked(self, mask: u32) -> Self {
        CellLists { mask, ..self }
    }

    /// The largest row read (the largest entry row, or the mask if smaller).
    fn max_row(&self) -> usize {
        self.max_gene.min(self.mask as usize)
    }

    /// The number of gene ranges.
    pub(crate) fn ranges(&self) -> usize {
        (self.starts.len() - 1) / self.cells
    }

    /// Where the lists of range `range` start and end, one of each per cell.
    #[inline]
    fn bounds(&self, range: usize) -> (&'a [u32], &'a [u32]) {
        let c = self.cells;
        (
            &self.starts[range * c..(range + 1) * c],
            &self.starts[range * c + 1..(range + 1) * c + 1],
        )
    }
}

/// For each cell `c` of `lists` and each entry (gene `g`, value `v`) of its list in range
/// `range`, in order: `out[c*stride ..][..w] += v * table[g*tstride ..][..w]` (`g` ANDed with
/// the lists' mask, see [`CellLists::masked`]). The output row stays in registers while the
/// cell's genes of the range are added.
///
/// # Panics
/// When a length does not fit (a bug in this crate): checked once per call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather_range(
    isa: Isa,
    lists: &CellLists<'_>,
    range: usize,
    table: &[f32],
    tstride: usize,
    w: usize,
    out: &mut [f32],
    stride: usize,
    pf: Prefetch<'_>,
) {
    assert!(
        range < lists.ranges()
            && w <= stride
            && w <= tstride
            && (lists.ents.is_empty()
                || lists
                    .max_row()
                    .checked_mul(tstride)
                    .and_then(|o| o.checked_add(w))
                    .is_some_and(|end| end <= table.len()))
            && lists
                .cells
                .checked_mul(stride)
                .is_some_and(|n| n <= out.len()),
        "gather_range: inconsistent lengths"
    );
    let (starts, ends) = lists.bounds(range);
    let (l, rows) = ((lists.ents, starts, ends), (tstride, lists.mask as usize));
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if w == TILE => {
            // SAFETY: AVX-512F is present (only detection makes this Isa). Every row read,
            // g = entry & mask, is <= max_row, so its tile g*tstride + w <= table.len(); every
            // cell c < cells, so its row c*stride + w <= out.len() (both checked above).
            unsafe {
                x86::avx512::gather_tile::<6>(
                    lists.ents,
                    starts,
                    ends,
                    table.as_ptr(),
                    tstride,
                    rows.1,
                    out.as_mut_ptr(),
                    stride,
                    pf,
                )
            }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma if w == TILE => {
            // SAFETY: AVX2 and FMA are present; bounds as for the AVX-512 path.
            unsafe {
                x86::avx2::gather_tile::<12>(
                    lists.ents,
                    starts,
                    ends,
                    table.as_ptr(),
                    tstride,
                    rows.1,
                    out.as_mut_ptr(),
                    stride,
                    pf,
                )
            }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            // SAFETY: AVX-512F is present; the slices are bounds-checked.
            unsafe { x86::avx512::gather_any(l, table, rows, w, out, stride) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma => {
            // SAFETY: AVX2 and FMA are present; the slices are bounds-checked.
            unsafe { x86::avx2::gather_any(l, table, rows, w, out, stride) }
        }
        _ => gather_slices(l, table, rows, w, out, stride, |v, x, o| o + v * x),
    }
}

/// Gene tiles to prefetch while a range is gathered (those of the range that comes next):
/// gene `g`'s tile starts at `table + g*tstride` and spans `bytes` bytes. Spread evenly over
/// the range's cells. With `pack`, the same tiles are also copied to a packed buffer, a few
/// genes behind the prefetches (see [`PackAhead`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prefetch<'a> {
    pub genes: &'a [u32],
    pub table: *const f32,
    pub tstride: usize,
    pub bytes: usize,
    pub pack: Option<&'a (dyn CopyAhead + 'a)>,
}

/// What the gather calls, once per cell, to copy gene tiles behind its prefetches.
pub(crate) trait CopyAhead: std::fmt::Debug {
    /// Copies the genes up to `genes[..upto]` not copied yet.
    fn copy_to(&self, upto: usize);
}

/// Genes the copy of [`PackAhead`] stays behind the prefetches: far enough for the prefetched
/// lines to have arrived, near enough that they are still in L2 (a row-major table's tiles
/// share few L2 sets: prefetched a whole range ahead, most would be evicted again).
const PACK_LAG: usize = 16;

/// The next range's tiles of a row-major table, copied (packed) while the current range is
/// gathered: gene `genes[k]`'s `w` floats at `src[g * tstride..]` go to
/// `dst[(g & mask) * w..]`. The gather copies a share per cell, behind its prefetches
/// ([`Prefetch::issue`]); [`PackAhead::finish`] copies what is left. Checked slices: a bad
/// gene panics, never reads or writes out of bounds.
#[derive(Debug)]
pub(crate) struct PackAhead<'a> {
    genes: &'a [u32],
    src: &'a [f32],
    tstride: usize,
    w: usize,
    mask: usize,
    dst: std::cell::RefCell<&'a mut [f32]>,
    done: std::cell::Cell<usize>,
}

impl<'a> PackAhead<'a> {
    pub(crate) fn new(
        genes: &'a [u32],
        (src, tstride): (&'a [f32], usize),
        w: usize,
        mask: u32,
        dst: &'a mut [f32],
    ) -> Self {
        PackAhead {
            genes,
            src,
            tstride,
            w,
            mask: mask as usize,
            dst: std::cell::RefCell::new(dst),
            done: std::cell::Cell::new(0),
        }
    }

    /// Copies every gene not copied yet, and hands the packed buffer back.
    pub(crate) fn finish(self) -> &'a mut [f32] {
        self.copy_to(self.genes.len());
        self.dst.into_inner()
    }
}

impl CopyAhead for PackAhead<'_> {
    fn copy_to(&self, upto: usize) {
        let (from, upto) = (self.done.get(), upto.min(self.genes.len()));
        if upto <= from {
            return;
        }
        let mut dst = self.dst.borrow_mut();
        let w = self.w;
        for &g in &self.genes[from..upto] {
            let (g, slot) = (g as usize, g as usize & self.mask);
            let src = &self.src[g * self.tstride..g * self.tstride + w];
            dst[slot * w..(slot + 1) * w].copy_from_slice(src);
        }
        self.done.set(upto);
    }
}

impl Prefetch<'_> {
    pub(crate) fn none() -> Self {
        Prefetch {
            genes: &[],
            table: std::ptr::null(),
            tstride: 0,
            bytes: 0,
            pack: None,
        }
    }

    /// Issues the share of cell `c` of `cells`.
    #[inline(always)]
    fn issue(&self, c: usize, cells: usize) {
        let m = self.genes.len();
        if m == 0 {
            return;
        }
        let (a, b) = (c * m / cells, (c + 1) * m / cells);
        for &g in &self.genes[a..b] {
            prefetch_l2(
                self.table.wrapping_add(g as usize * self.tstride),
                self.bytes,
            );
        }
        if let Some(pack) = self.pack {
            pack.copy_to(a.saturating_sub(PACK_LAG));
        }
    }
}

/// The gather on checked slices, for any width: `o = add(v, x, o)` for each element of each
/// cell's row, each gene of its list in order (inlined, so that the caller's target features
/// vectorise it).
#[inline(always)]
fn gather_slices(
    (ents, starts, ends): (&[u64], &[u32], &[u32]),
    table: &[f32],
    (tstride, mask): (usize, usize),
    w: usize,
    out: &mut [f32],
    stride: usize,
    add: impl Fn(f32, f32, f32) -> f32,
) {
    for (c, (&a, &b)) in starts.iter().zip(ends).enumerate() {
        let o = &mut out[c * stride..c * stride + w];
        for &en in &ents[a as usize..b as usize] {
            let (g, v) = (entry_row(en) & mask, entry_val(en));
            let e = &table[g * tstride..g * tstride + w];
            for (o, &x) in o.iter_mut().zip(e) {
                *o = add(v, x, *o);
            }
        }
    }
}

/// Hints the CPU to start loading `bytes` bytes at `p` into L2.
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const f32, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>((p as *const i8).wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, bytes);
    }
}

/// What [`scan_counts`] finds in a row of raw counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CountScan {
    /// The sum of the counts: eight lanes, each summing every eighth value, combined in a
    /// fixed order, so that a row's total never depends on blocks, threads or the instruction
    /// set (totals of integer counts are exact in any order).
    pub total: f64,
    /// The largest count if every count is an integer below the limit, else the limit.
    pub small_max: usize,
    /// Whether the row's genes are strictly increasing (canonical).
    pub canonical: bool,
}

/// One row of raw counts (`idx`, `val`) in passes that vectorise; see [`CountScan`]. `limit`
/// is at most 2^16. Values must be finite and non-negative and indices checked
/// (`CsrView::new_counts`). Compiled for each [`Isa`]: with AVX2 it takes about half the
/// generic build's instructions.
pub(crate) fn scan_counts<I: Index, V: Value>(
    isa: Isa,
    idx: &[I],
    val: &[V],
    limit: usize,
) -> CountScan {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: an Isa above portable exists only where the CPU has its features (module notes).
        match isa.0 {
            Level::Avx512 => return unsafe { x86::avx512::scan_counts(idx, val, limit) },
            Level::Avx2Fma => return unsafe { x86::avx2::scan_counts(idx, val, limit) },
            Level::Portable => {}
        }
    }
    let _ = isa;
    scan_counts_body(idx, val, limit)
}

#[inline(always)]
fn scan_counts_body<I: Index, V: Value>(idx: &[I], val: &[V], limit: usize) -> CountScan {
    const LANES: usize = 8;
    let mut sum = [0.0f64; LANES];
    let chunks = val.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            sum[l] += c[l].to_f64();
        }
    }
    let mut total =
        ((sum[0] + sum[1]) + (sum[2] + sum[3])) + ((sum[4] + sum[5]) + (sum[6] + sum[7]));
    for v in rest {
        total += v.to_f64();
    }
    let limit = limit.min(1 << 16) as f32;
    let key = val.iter().fold(0i32, |m, v| m.max(v.small_count(limit)));
    CountScan {
        total,
        small_max: f32::from_bits(key as u32) as usize,
        canonical: I::increasing(idx),
    }
}

/// The x86 kernels, written once and compiled for AVX2+FMA (8-float registers) and AVX-512F
/// (16-float registers): the same operations in the same order, so both give the same bits.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernels {
    ($feature:literal, $lanes:literal, $vec:ty, $zero:ident, $load:ident, $store:ident,
     $fmadd:ident, $set1:ident) => {
        use std::arch::x86_64::*;

        /// One output row of `LANES*NV` floats in `NV` registers per cell while its list's
        /// genes are added: one load and one FMA per register per entry, no store.
        ///
        /// # Safety
        /// The CPU has the features; every entry's tile (`LANES*NV` floats at
        /// `table + (gene & mask)*tstride`) and every cell's row (`out + c*stride`, `c <
        /// starts.len()`) in bounds.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn gather_tile<const NV: usize>(
            ents: &[u64],
            starts: &[u32],
            ends: &[u32],
            table: *const f32,
            tstride: usize,
            mask: usize,
            out: *mut f32,
            stride: usize,
            pf: super::super::Prefetch<'_>,
        ) {
            let cells = starts.len();
            for (c, (&a, &b)) in starts.iter().zip(ends).enumerate() {
                pf.issue(c, cells);
                let list = &ents[a as usize..b as usize];
                if list.is_empty() {
                    continue;
                }
                let o = out.add(c * stride);
                let mut acc: [$vec; NV] = [$zero(); NV];
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = $load(o.add($lanes * k));
                }
                for &en in list {
                    let vb = $set1(super::super::entry_val(en));
                    let e = table.add((super::super::entry_row(en) & mask) * tstride);
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = $fmadd(vb, $load(e.add($lanes * k)), *a);
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    $store(o.add($lanes * k), *a);
                }
            }
        }

        /// [`gather_tile`] for any width (the last, partial tile), bounds-checked.
        ///
        /// # Safety
        /// The CPU has the features.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn gather_any(
            lists: (&[u64], &[u32], &[u32]),
            table: &[f32],
            rows: (usize, usize),
            w: usize,
            out: &mut [f32],
            stride: usize,
        ) {
            super::super::gather_slices(lists, table, rows, w, out, stride, f32::mul_add);
        }

        /// [`super::super::scan_counts`] compiled for these features.
        ///
        /// # Safety
        /// The CPU has the features.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn scan_counts<I: crate::csr::Index, V: crate::csr::Value>(
            idx: &[I],
            val: &[V],
            limit: usize,
        ) -> super::super::CountScan {
            super::super::scan_counts_body(idx, val, limit)
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    pub(super) mod avx2 {
        x86_kernels!(
            "avx2,fma",
            8,
            __m256,
            _mm256_setzero_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_fmadd_ps,
            _mm256_set1_ps
        );
    }

    pub(super) mod avx512 {
        x86_kernels!(
            "avx512f",
            16,
            __m512,
            _mm512_setzero_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_fmadd_ps,
            _mm512_set1_ps
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three cells, two gene ranges of lists (range-major), a 4-gene table of `w` columns.
    fn check(isa: Isa, w: usize, stride: usize) {
        let tstride = w.div_ceil(8) * 8 + 8;
        let e: Vec<f32> = (0..4 * tstride).map(|i| i as f32 * 0.5 - 3.0).collect();
        // (cell, gene, value), listed range by range, cell by cell.
        let lists = [
            vec![(1, 1.5f32)],
            vec![],
            vec![(0, -2.0), (1, 0.25)],
            vec![(2, 4.0), (3, -1.0)],
            vec![(3, 0.5)],
            vec![],
        ];
        let mut ents = Vec::new();
        let mut starts = vec![0u32];
        for l in &lists {
            ents.extend(l.iter().map(|&(g, v)| pack_entry(g, v)));
            starts.push(ents.len() as u32);
        }
        let cl = CellLists::new(&ents, &starts, 3);
        assert_eq!(cl.ranges(), 2);
        let mut out = vec![1.0f32; 3 * stride];
        for range in 0..2 {
            gather_range(
                isa,
                &cl,
                range,
                &e,
                tstride,
                w,
                &mut out,
                stride,
                Prefetch::none(),
            );
        }
        for c in 0..3 {
            for j in 0..w {
                let want: f32 = 1.0
                    + [&lists[c], &lists[3 + c]]
                        .iter()
                        .flat_map(|l| l.iter())
                        .map(|&(g, v)| v * e[g as usize * tstride + j])
                        .sum::<f32>();
                assert!(
                    (out[c * stride + j] - want).abs() < 1e-3,
                    "{isa:?} w={w} c={c} j={j}"
                );
            }
            assert!(out[c * stride + w..(c + 1) * stride]
                .iter()
                .all(|&x| x == 1.0));
        }
    }

    #[test]
    fn gather_paths_agree_with_arithmetic() {
        for isa in Isa::available() {
            for (w, stride) in [(1, 1), (7, 8), (8, 8), (13, 24), (TILE, TILE), (TILE, 128)] {
                check(isa, w, stride);
            }
        }
    }

    #[test]
    #[should_panic(expected = "inconsistent starts")]
    fn lists_are_checked_against_the_cells() {
        let _ = CellLists::new(&[pack_entry(0, 1.0)], &[0, 1, 1], 3);
    }

    #[test]
    #[should_panic(expected = "inconsistent lengths")]
    fn gather_checks_the_table_length() {
        // Gene 3 needs 4 table rows of 8; the table has 3.
        let ents = [pack_entry(0, 1.0), pack_entry(3, 1.0)];
        let cl = CellLists::new(&ents, &[0, 2], 1);
        let mut out = vec![0.0f32; 8];
        gather_range(
            Isa::detect(),
            &cl,
            0,
            &[1.0; 24],
            8,
            8,
            &mut out,
            8,
            Prefetch::none(),
        );
    }

    #[test]
    #[should_panic(expected = "inconsistent lengths")]
    fn gather_checks_the_output_length() {
        let ents = [pack_entry(0, 1.0), pack_entry(1, 1.0)];
        let cl = CellLists::new(&ents, &[0, 1, 2], 2);
        let mut out = vec![0.0f32; 8];
        gather_range(
            Isa::detect(),
            &cl,
            0,
            &[1.0; 16],
            8,
            8,
            &mut out,
            8,
            Prefetch::none(),
        );
    }
}
