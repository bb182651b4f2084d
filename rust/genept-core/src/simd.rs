//! Runtime CPU dispatch for the inner loop of GenePT-w.
//!
//! Wheels are built for generic x86-64, so the AVX2+FMA code is compiled with
//! `#[target_feature]` and chosen at run time with `is_x86_feature_detected!`. Zen 4 executes
//! AVX-512 as two 256-bit halves, so AVX2 is as fast there and is the only wide path we keep.
//! Every path computes each output element as the same sequence of operations in the same
//! order, so the result never depends on chunking or thread count (it may differ in the last
//! bit between the FMA and the portable path, which rounds the product separately).

/// The instruction set the kernels run with on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 with fused multiply-add (x86-64).
    Avx2Fma,
    /// Portable Rust; the compiler vectorises what it can for the build target.
    Portable,
}

impl Isa {
    /// The best instruction set available on this CPU, unless `GENEPT_FAST_SIMD=portable`.
    pub fn detect() -> Isa {
        if std::env::var("GENEPT_FAST_SIMD").is_ok_and(|v| v.eq_ignore_ascii_case("portable")) {
            return Isa::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2Fma => "avx2+fma",
            Isa::Portable => "portable",
        }
    }
}

/// Width, in floats, of one embedding tile: 12 of the 16 AVX2 registers hold it for a whole
/// gene (measured 5-10% faster than 8 registers / 64 floats; 1536 and 3072 are multiples).
pub const TILE: usize = 96;

/// For every entry `i`: `out[rows[i]*w .. rows[i]*w + w] += vals[i] * e[..w]`.
///
/// `out` is a row-major tile of row stride `w`; `e` holds at least `w` floats.
///
/// # Panics
/// Never on valid input: callers build `rows` from local row numbers of the tile, and the
/// bounds are checked once up front (a failed check is a bug in this crate, not user input).
#[inline]
pub fn scatter_axpy(isa: Isa, e: &[f32], rows: &[u32], vals: &[f32], out: &mut [f32], w: usize) {
    assert!(e.len() >= w && rows.len() == vals.len());
    debug_assert!(rows.iter().all(|&r| (r as usize + 1) * w <= out.len()));
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            // SAFETY: the CPU supports AVX2 and FMA (checked by `Isa::detect`); all row
            // offsets lie inside `out` (local rows of the tile, see the debug assertion).
            unsafe {
                if w == TILE {
                    x86::axpy_tile::<12>(e.as_ptr(), rows, vals, out.as_mut_ptr());
                } else {
                    x86::axpy_any(e, rows, vals, out, w);
                }
            }
        }
        _ => portable_axpy(e, rows, vals, out, w),
    }
}

fn portable_axpy(e: &[f32], rows: &[u32], vals: &[f32], out: &mut [f32], w: usize) {
    let e = &e[..w];
    for (&r, &v) in rows.iter().zip(vals) {
        let o = &mut out[r as usize * w..r as usize * w + w];
        for (o, &x) in o.iter_mut().zip(e) {
            *o += v * x;
        }
    }
}

/// Hints the CPU to start loading `bytes` bytes at `p` into L1.
#[inline(always)]
pub fn prefetch(p: *const f32, bytes: usize) {
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The hot loop: the gene's tile of `8*NV` floats stays in registers while each entry
    /// does one load, one FMA and one store per 8 floats of its output row.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_tile<const NV: usize>(
        e: *const f32,
        rows: &[u32],
        vals: &[f32],
        out: *mut f32,
    ) {
        let w = 8 * NV;
        let mut ev = [_mm256_setzero_ps(); NV];
        for (k, x) in ev.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(e.add(8 * k));
        }
        for (&r, &v) in rows.iter().zip(vals) {
            let vb = _mm256_set1_ps(v);
            let o = out.add(r as usize * w);
            for (k, x) in ev.iter().enumerate() {
                let p = o.add(8 * k);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(vb, *x, _mm256_loadu_ps(p)));
            }
        }
    }

    /// Any width (the last, partial tile): fused multiply-add, vectorised by the compiler.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_any(
        e: &[f32],
        rows: &[u32],
        vals: &[f32],
        out: &mut [f32],
        w: usize,
    ) {
        let e = &e[..w];
        for (&r, &v) in rows.iter().zip(vals) {
            let o = &mut out[r as usize * w..r as usize * w + w];
            for (o, &x) in o.iter_mut().zip(e) {
                *o = v.mul_add(x, *o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(isa: Isa, w: usize) {
        let e: Vec<f32> = (0..w).map(|i| i as f32 * 0.5 - 3.0).collect();
        let rows = [2u32, 0, 2, 1];
        let vals = [1.5f32, -2.0, 0.25, 4.0];
        let mut out = vec![1.0f32; 3 * w];
        scatter_axpy(isa, &e, &rows, &vals, &mut out, w);
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
                    (out[r * w + j] - want).abs() < 1e-4,
                    "{isa:?} w={w} r={r} j={j}"
                );
            }
        }
    }

    #[test]
    fn all_paths_agree_with_arithmetic() {
        for w in [1, 7, 8, 13, TILE] {
            check(Isa::Portable, w);
            check(Isa::detect(), w);
        }
    }
}
