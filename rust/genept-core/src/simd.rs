//! Runtime CPU dispatch for the inner loops of GenePT-w.
//!
//! Wheels are built for generic x86-64, so the wide code is compiled with `#[target_feature]`
//! and chosen at run time: AVX-512F (Zen 4 runs it as two 256-bit halves, but its 32 vector
//! registers hold a 12-cell × 32-dimension register tile in the dense GEMM), AVX2+FMA, or
//! portable Rust. On Zen 4 both wide paths measure the same speed (the scatter is bound by
//! one store per multiply-add either way).
//!
//! Soundness: an [`Isa`] other than [`Isa::portable`] can only be made by [`Isa::detect`] and
//! [`Isa::available`], after the CPU reported the features its code needs, so every
//! `#[target_feature]` function reached through it runs on a CPU that has them. The kernels are
//! crate-private and check their bounds in release builds, once per call (not per entry): the
//! scatter takes [`Entries`], whose rows were checked against the tile's row count once when
//! they were built, and [`GeneGroups`], whose gene ranges were checked once per block; the
//! GEMM checks every buffer length against its shape at entry.
//!
//! Every path computes each output element as the same sequence of operations in the same
//! order. The two fused-multiply-add paths (AVX-512 and AVX2) therefore give identical bits;
//! the portable path rounds each product separately and may differ from them in the last bit.

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

    /// Cells per register tile of the dense GEMM.
    pub(crate) fn mr(self) -> usize {
        match self.0 {
            Level::Avx512 => 12,
            Level::Avx2Fma => 6,
            Level::Portable => 4,
        }
    }

    /// Dimensions per register tile of the dense GEMM (the width of a packed panel strip).
    pub(crate) fn nr(self) -> usize {
        match self.0 {
            Level::Avx512 => 32,
            Level::Avx2Fma => 16,
            Level::Portable => 8,
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

/// Entries whose rows were each checked once to be below `bound` (the output tile's rows).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entries<'a> {
    ents: &'a [u64],
    bound: usize,
}

impl<'a> Entries<'a> {
    /// Checks every row against `bound` (one vectorised pass; done once per block).
    pub(crate) fn new(ents: &'a [u64], bound: usize) -> Self {
        let max = ents
            .iter()
            .map(|&e| e as u32)
            .max()
            .map_or(0, |m| m as usize + 1);
        assert!(
            max <= bound,
            "row {} outside a tile of {bound} rows",
            max - 1
        );
        Entries { ents, bound }
    }

    /// Entries `a..b`, with the same bound.
    #[inline]
    pub(crate) fn slice(&self, a: usize, b: usize) -> Entries<'a> {
        Entries {
            ents: &self.ents[a..b],
            bound: self.bound,
        }
    }
}

/// A block's entries grouped by gene, checked once when built: gene `genes[i]` (a table row)
/// owns entries `starts[i] - base .. starts[i + 1] - base` of `ents`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GeneGroups<'a> {
    genes: &'a [u32],
    starts: &'a [u32],
    base: u32,
    ents: Entries<'a>,
    max_gene: usize,
}

impl<'a> GeneGroups<'a> {
    /// Checks that `starts` has one more entry than `genes`, never decreases, and spans
    /// exactly `ents` from `base` (one pass over the genes; once per block).
    pub(crate) fn new(genes: &'a [u32], starts: &'a [u32], base: u32, ents: Entries<'a>) -> Self {
        assert!(
            starts.len() == genes.len() + 1
                && starts[0] == base
                && starts.windows(2).all(|w| w[0] <= w[1])
                && (starts[genes.len()] - base) as usize == ents.ents.len(),
            "GeneGroups: inconsistent starts"
        );
        let max_gene = genes.iter().copied().max().map_or(0, |g| g as usize);
        GeneGroups {
            genes,
            starts,
            base,
            ents,
            max_gene,
        }
    }
}

/// For every gene of `groups`: its tile `table[g*tstride ..][..w]` added, scaled by each of
/// its entries' values, into the output rows of those entries (`out[row*stride ..][..w]`).
/// The tile of the gene `pf` places ahead is prefetched.
///
/// # Panics
/// When a length does not fit (a bug in this crate): checked once per call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scatter_genes(
    isa: Isa,
    groups: &GeneGroups<'_>,
    table: &[f32],
    tstride: usize,
    w: usize,
    out: &mut [f32],
    stride: usize,
    pf: usize,
) {
    let g = groups;
    assert!(
        w <= stride
            && w <= tstride
            && (g.genes.is_empty()
                || g.max_gene
                    .checked_mul(tstride)
                    .and_then(|o| o.checked_add(w))
                    .is_some_and(|end| end <= table.len()))
            && g.ents
                .bound
                .checked_mul(stride)
                .is_some_and(|n| n <= out.len()),
        "scatter_genes: inconsistent lengths"
    );
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if w == TILE => {
            // SAFETY: AVX-512F is present (only detection makes this Isa). Every gene's tile
            // lies inside `table` (max_gene*tstride + w <= len, checked above); every entry
            // index lies in `ents` and every row r < bound, so r*stride + w <= out.len()
            // (GeneGroups/Entries checked at construction, the output length above).
            unsafe {
                x86::avx512::scatter_tile::<6>(
                    g,
                    table.as_ptr(),
                    tstride,
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
                x86::avx2::scatter_tile::<12>(
                    g,
                    table.as_ptr(),
                    tstride,
                    out.as_mut_ptr(),
                    stride,
                    pf,
                )
            }
        }
        _ => {
            for (i, &gene) in g.genes.iter().enumerate() {
                let (a, b) = (
                    (g.starts[i] - g.base) as usize,
                    (g.starts[i + 1] - g.base) as usize,
                );
                let e = &table[gene as usize * tstride..gene as usize * tstride + w];
                scatter_axpy(isa, e, g.ents.slice(a, b), out, w, stride);
            }
        }
    }
}

/// For every entry: `out[row*stride .. +w] += val * e[..w]`.
///
/// # Panics
/// When a length does not fit (a bug in this crate, not user input): checked once per call.
#[inline]
pub(crate) fn scatter_axpy(
    isa: Isa,
    e: &[f32],
    ents: Entries<'_>,
    out: &mut [f32],
    w: usize,
    stride: usize,
) {
    assert!(
        w <= stride
            && e.len() >= w
            && ents
                .bound
                .checked_mul(stride)
                .is_some_and(|n| n <= out.len()),
        "scatter_axpy: inconsistent lengths"
    );
    let ents = ents.ents;
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            // SAFETY: `Isa(Avx512)` exists only when the CPU has AVX-512F (`Isa::available`).
            // Each row r < bound, so r*stride + w <= bound*stride <= out.len() (checked above),
            // and e holds w floats.
            unsafe {
                if w == TILE {
                    x86::avx512::axpy_tile::<6>(e.as_ptr(), ents, out.as_mut_ptr(), stride);
                } else {
                    x86::avx512::axpy_any(e, ents, out, w, stride);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma => {
            // SAFETY: `Isa(Avx2Fma)` exists only when the CPU has AVX2 and FMA; bounds as above.
            unsafe {
                if w == TILE {
                    x86::avx2::axpy_tile::<12>(e.as_ptr(), ents, out.as_mut_ptr(), stride);
                } else {
                    x86::avx2::axpy_any(e, ents, out, w, stride);
                }
            }
        }
        _ => portable_axpy(e, ents, out, w, stride),
    }
}

fn portable_axpy(e: &[f32], ents: &[u64], out: &mut [f32], w: usize, stride: usize) {
    let e = &e[..w];
    for &en in ents {
        let (r, v) = (entry_row(en), entry_val(en));
        let o = &mut out[r * stride..r * stride + w];
        for (o, &x) in o.iter_mut().zip(e) {
            *o += v * x;
        }
    }
}

/// The shape of one dense GEMM call: `rows` cells (a multiple of `isa.mr()`), `k` dense genes,
/// `strips` panel strips of `isa.nr()` dimensions, output rows `stride` floats apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmShape {
    pub rows: usize,
    pub k: usize,
    pub strips: usize,
    pub stride: usize,
}

/// `out[r*stride + j] = Σ_k v[r, k] · panel[k, j]` for `r < rows`, `j < strips·nr`, summed in
/// ascending `k` (the output is overwritten).
///
/// Layouts (both packed by `weighted`): `v` holds groups of `mr` cells, `k`-major within a
/// group (`v[(g·k + kk)·mr + c]` is cell `g·mr + c`, gene `kk`); `panel` holds strips of `nr`
/// dimensions, `k`-major within a strip (`panel[(s·k + kk)·nr + j]`).
///
/// # Panics
/// When a buffer is shorter than the shape needs (a bug in this crate): checked once per call.
pub(crate) fn dense_gemm(isa: Isa, sh: GemmShape, v: &[f32], panel: &[f32], out: &mut [f32]) {
    let (mr, nr) = (isa.mr(), isa.nr());
    let fits = |len: usize, a: usize, b: usize| a.checked_mul(b).is_some_and(|n| n <= len);
    assert!(
        sh.rows.is_multiple_of(mr)
            && sh.stride >= sh.strips * nr
            && fits(v.len(), sh.rows, sh.k)
            && fits(panel.len(), sh.strips * nr, sh.k)
            && fits(out.len(), sh.rows, sh.stride),
        "dense_gemm: inconsistent lengths"
    );
    if sh.rows == 0 || sh.strips == 0 {
        return;
    }
    /// One register tile: `k`, the group's values, the strip's panel, the output, its stride.
    type Tile = unsafe fn(usize, *const f32, *const f32, *mut f32, usize);
    let tile: Tile = match isa.0 {
        // Only detection makes these Isa values, after checking the CPU's features.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => x86::avx512::gemm::<12, 2>,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma => x86::avx2::gemm::<6, 2>,
        _ => return portable_gemm::<4, 8>(sh, v, panel, out),
    };
    for g in 0..sh.rows / mr {
        for s in 0..sh.strips {
            // SAFETY: the CPU has the tile's features (see above). The group reads
            // v[g·k·mr ..][.. k·mr] and panel[s·k·nr ..][.. k·nr], and writes mr rows of nr
            // floats at out[(g·mr)·stride + s·nr ..]: all inside the lengths checked above
            // (rows·k, strips·nr·k, rows·stride with stride >= strips·nr).
            unsafe {
                tile(
                    sh.k,
                    v.as_ptr().add(g * sh.k * mr),
                    panel.as_ptr().add(s * sh.k * nr),
                    out.as_mut_ptr().add(g * mr * sh.stride + s * nr),
                    sh.stride,
                );
            }
        }
    }
}

fn portable_gemm<const MR: usize, const NR: usize>(
    sh: GemmShape,
    v: &[f32],
    panel: &[f32],
    out: &mut [f32],
) {
    for g in 0..sh.rows / MR {
        let vg = &v[g * sh.k * MR..(g + 1) * sh.k * MR];
        for s in 0..sh.strips {
            let ps = &panel[s * sh.k * NR..(s + 1) * sh.k * NR];
            let mut acc = [[0.0f32; NR]; MR];
            for (vk, pk) in vg.chunks_exact(MR).zip(ps.chunks_exact(NR)) {
                for (a, &x) in acc.iter_mut().zip(vk) {
                    for (a, &e) in a.iter_mut().zip(pk) {
                        *a += x * e;
                    }
                }
            }
            for (c, a) in acc.iter().enumerate() {
                let o = (g * MR + c) * sh.stride + s * NR;
                out[o..o + NR].copy_from_slice(a);
            }
        }
    }
}

/// Hints the CPU to start loading `bytes` bytes at `p` into L1.
#[inline(always)]
pub(crate) fn prefetch(p: *const f32, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, bytes);
    }
}

/// The x86 kernels, written once and compiled for AVX2+FMA (8-float registers) and AVX-512F
/// (16-float registers): the same operations in the same order, so both give the same bits.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernels {
    ($feature:literal, $lanes:literal, $vec:ty, $zero:ident, $load:ident, $store:ident,
     $fmadd:ident, $set1:ident) => {
        use std::arch::x86_64::*;

        /// One gene's tile of `LANES*NV` floats in `NV` registers while each entry does one
        /// load, one FMA and one store per register of its output row.
        ///
        /// # Safety
        /// The CPU has the features; `e` holds `LANES*NV` floats; `out + row*stride` holds
        /// `LANES*NV` floats for every entry's row.
        #[target_feature(enable = $feature)]
        #[inline]
        pub(crate) unsafe fn axpy_tile<const NV: usize>(
            e: *const f32,
            ents: &[u64],
            out: *mut f32,
            stride: usize,
        ) {
            let mut ev: [$vec; NV] = [$zero(); NV];
            for (k, x) in ev.iter_mut().enumerate() {
                *x = $load(e.add($lanes * k));
            }
            for &en in ents {
                let vb = $set1(super::super::entry_val(en));
                let o = out.add(super::super::entry_row(en) * stride);
                for (k, x) in ev.iter().enumerate() {
                    let p = o.add($lanes * k);
                    $store(p, $fmadd(vb, *x, $load(p)));
                }
            }
        }

        /// [`super::super::scatter_genes`] for full tiles: [`axpy_tile`] for one gene after
        /// another, prefetching the tile of the gene `pf` places ahead.
        ///
        /// # Safety
        /// The CPU has the features; every gene's tile (`LANES*NV` floats at
        /// `table + gene*tstride`) and every entry's output row in bounds.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn scatter_tile<const NV: usize>(
            g: &super::super::GeneGroups<'_>,
            table: *const f32,
            tstride: usize,
            out: *mut f32,
            stride: usize,
            pf: usize,
        ) {
            for (i, &gene) in g.genes.iter().enumerate() {
                if let Some(&next) = g.genes.get(i + pf) {
                    super::super::prefetch(table.add(next as usize * tstride), 4 * $lanes * NV);
                }
                let (a, b) = (
                    (g.starts[i] - g.base) as usize,
                    (g.starts[i + 1] - g.base) as usize,
                );
                let e = table.add(gene as usize * tstride);
                axpy_tile::<NV>(e, &g.ents.ents[a..b], out, stride);
            }
        }

        /// Any width (the last, partial tile): fused multiply-add, vectorised by the compiler.
        ///
        /// # Safety
        /// The CPU has the features (the slices are bounds-checked).
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn axpy_any(
            e: &[f32],
            ents: &[u64],
            out: &mut [f32],
            w: usize,
            stride: usize,
        ) {
            let e = &e[..w];
            for &en in ents {
                let (r, v) = (super::super::entry_row(en), super::super::entry_val(en));
                let o = &mut out[r * stride..r * stride + w];
                for (o, &x) in o.iter_mut().zip(e) {
                    *o = v.mul_add(x, *o);
                }
            }
        }

        /// One `MR × LANES·NV` register tile of the dense GEMM over `k` genes.
        ///
        /// # Safety
        /// The CPU has the features; `v` holds `k·MR` floats, `p` holds `k·LANES·NV`, and
        /// `out + c·stride` holds `LANES·NV` floats for `c < MR`.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn gemm<const MR: usize, const NV: usize>(
            k: usize,
            v: *const f32,
            p: *const f32,
            out: *mut f32,
            stride: usize,
        ) {
            let mut acc: [[$vec; NV]; MR] = [[$zero(); NV]; MR];
            for kk in 0..k {
                let pk = p.add(kk * $lanes * NV);
                let mut e: [$vec; NV] = [$zero(); NV];
                for (j, x) in e.iter_mut().enumerate() {
                    *x = $load(pk.add($lanes * j));
                }
                let vk = v.add(kk * MR);
                for (c, a) in acc.iter_mut().enumerate() {
                    let b = $set1(*vk.add(c));
                    for (a, x) in a.iter_mut().zip(&e) {
                        *a = $fmadd(b, *x, *a);
                    }
                }
            }
            for (c, a) in acc.iter().enumerate() {
                for (j, x) in a.iter().enumerate() {
                    $store(out.add(c * stride + $lanes * j), *x);
                }
            }
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

    fn check(isa: Isa, w: usize, stride: usize) {
        let e: Vec<f32> = (0..w).map(|i| i as f32 * 0.5 - 3.0).collect();
        let rows = [2u32, 0, 2, 1];
        let vals = [1.5f32, -2.0, 0.25, 4.0];
        let ents: Vec<u64> = rows
            .iter()
            .zip(&vals)
            .map(|(&r, &v)| pack_entry(r, v))
            .collect();
        let mut out = vec![1.0f32; 3 * stride];
        scatter_axpy(isa, &e, Entries::new(&ents, 3), &mut out, w, stride);
        for r in 0..3 {
            let s: f32 = rows
                .iter()
                .zip(&vals)
                .filter(|(&rr, _)| rr as usize == r)
                .map(|(_, v)| v)
                .sum();
            for j in 0..w {
                let want = 1.0 + s * e[j];
                assert!(
                    (out[r * stride + j] - want).abs() < 1e-4,
                    "{isa:?} w={w} r={r} j={j}"
                );
            }
            assert!(out[r * stride + w..(r + 1) * stride]
                .iter()
                .all(|&x| x == 1.0));
        }
    }

    #[test]
    fn scatter_paths_agree_with_arithmetic() {
        for isa in Isa::available() {
            for (w, stride) in [(1, 1), (7, 8), (8, 8), (13, 24), (TILE, TILE), (TILE, 128)] {
                check(isa, w, stride);
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside a tile")]
    fn rows_are_checked_against_the_tile() {
        let _ = Entries::new(&[pack_entry(0, 1.0), pack_entry(3, 1.0)], 3);
    }

    #[test]
    #[should_panic(expected = "inconsistent lengths")]
    fn scatter_checks_the_output_length() {
        let ents = [pack_entry(0, 1.0), pack_entry(2, 1.0)];
        let mut out = vec![0.0f32; 2 * 8];
        scatter_axpy(
            Isa::detect(),
            &[1.0; 8],
            Entries::new(&ents, 3),
            &mut out,
            8,
            8,
        );
    }

    /// Packs a dense rows × k matrix and a k × n panel, runs the GEMM, compares with f64.
    #[test]
    fn gemm_paths_agree_with_arithmetic_and_fma_paths_agree_bitwise() {
        let mut results = Vec::new();
        for isa in Isa::available() {
            let (mr, nr) = (isa.mr(), isa.nr());
            let (rows, k, n) = (2 * mr, 37, 96usize);
            let strips = n.div_ceil(nr);
            let a = |r: usize, kk: usize| ((r * 7 + kk * 3) % 11) as f32 * 0.25 - 1.0;
            let b = |kk: usize, j: usize| ((kk * 5 + j) % 13) as f32 * 0.5 - 3.0;
            let mut v = vec![0.0f32; rows * k];
            for r in 0..rows {
                for kk in 0..k {
                    v[((r / mr) * k + kk) * mr + r % mr] = a(r, kk);
                }
            }
            let mut panel = vec![0.0f32; strips * nr * k];
            for s in 0..strips {
                for kk in 0..k {
                    for j in 0..nr {
                        if s * nr + j < n {
                            panel[(s * k + kk) * nr + j] = b(kk, s * nr + j);
                        }
                    }
                }
            }
            let stride = strips * nr;
            let mut out = vec![f32::NAN; rows * stride];
            let sh = GemmShape {
                rows,
                k,
                strips,
                stride,
            };
            dense_gemm(isa, sh, &v, &panel, &mut out);
            let mut got = vec![0.0f32; rows * n];
            for r in 0..rows {
                for j in 0..n {
                    let want: f64 = (0..k).map(|kk| f64::from(a(r, kk) * b(kk, j))).sum();
                    let x = out[r * stride + j];
                    assert!((f64::from(x) - want).abs() < 1e-3, "{isa:?} r={r} j={j}");
                    got[r * n + j] = x;
                }
            }
            results.push((isa, got));
        }
        let fma: Vec<_> = results
            .iter()
            .filter(|(isa, _)| *isa != Isa::portable())
            .collect();
        for w in fma.windows(2) {
            // Rows are padded to each path's own mr, so compare the rows both computed.
            let n = w[0].1.len().min(w[1].1.len());
            assert_eq!(w[0].1[..n], w[1].1[..n], "{:?} vs {:?}", w[0].0, w[1].0);
        }
    }
}
