//! The embedding table re-laid out tile-major for the GenePT-w gather ([`TiledEmbeddings`]).
//!
//! Built from a checked [`EmbeddingView`] at the width of the kernel's register tile
//! ([`TILE`]); it depends on the views and on the SIMD kernels, and neither depends on it.

use std::sync::Mutex;

use rayon::prelude::*;

use crate::buffer::{advise_free, advise_huge, try_zeroed};
use crate::csr::{
    check_embedding_shape, embedding_row_rejected, non_finite_embedding, EmbeddingView,
};
use crate::error::Result;
use crate::simd::TILE;

/// An embedding table re-laid out tile-major for the GenePT-w kernel: for each tile of
/// [`TILE`] dimensions, the tile of every gene, gene after gene. A pass over
/// one tile then reads memory sequentially instead of 256 bytes from each 6 KB row, which keeps
/// the hardware prefetcher and the TLB effective. Build it once and reuse it across calls.
/// The tiles start on a 64-byte boundary, so that a 96-float gene tile is six whole cache
/// lines (the kernel gathers tiles one by one).
#[derive(Debug)]
pub struct TiledEmbeddings {
    /// `off` floats of padding, then the tiles.
    data: Vec<f32>,
    off: usize,
    n_rows: usize,
    dim: usize,
}

/// Floats of padding that put `data[off..]` on a 64-byte boundary (at most 15).
fn line_offset(data: &[f32]) -> usize {
    data.as_ptr().align_offset(64).min(16)
}

impl Clone for TiledEmbeddings {
    /// A copy whose tiles are 64-byte aligned too (a plain copy of the buffer may not be).
    fn clone(&self) -> Self {
        let len = self.n_rows * self.dim;
        let mut data = vec![0.0f32; len + 16];
        advise_huge(&data);
        let off = line_offset(&data);
        data[off..off + len].copy_from_slice(&self.data[self.off..self.off + len]);
        TiledEmbeddings {
            data,
            off,
            n_rows: self.n_rows,
            dim: self.dim,
        }
    }
}

impl TiledEmbeddings {
    /// Copies a (validated) row-major table into the tiled layout, in parallel.
    pub fn new(e: &EmbeddingView<'_>) -> Self {
        let data = vec![0.0f32; e.n_rows() * e.dim() + 16];
        advise_huge(&data);
        // A view is checked already: its rows are all finite.
        Self::fill(e.data(), e.n_rows(), e.dim(), data).0
    }

    /// A row-major `n × d` table checked as [`EmbeddingView::new`] checks it (its shape, then
    /// the first gene with a NaN or an infinity: the same errors), in the same pass as the
    /// copy into the tiled layout (one read of the table instead of two). Copied into `buffer`
    /// when it holds at least `n·d + 16` floats (what it holds is overwritten where the tiles
    /// go, and never read), else into a fresh buffer; a buffer the machine cannot give is an
    /// error, not an abort.
    pub fn from_rows(data: &[f32], n: usize, d: usize, buffer: Vec<f32>) -> Result<Self> {
        check_embedding_shape(data, n, d)?;
        let need = n * d + 16;
        let buffer = if buffer.len() >= need {
            buffer
        } else {
            drop(buffer);
            try_zeroed::<f32>(need, 1, "the table's tile-major copy")?
        };
        match Self::fill(data, n, d, buffer) {
            (t, None) => Ok(t),
            (_, Some(g)) => Err(non_finite_embedding(&data[g * d..(g + 1) * d], g)),
        }
    }

    /// The buffer back, for [`TiledEmbeddings::from_rows`].
    pub fn into_buffer(self) -> Vec<f32> {
        self.data
    }

    /// Writes every float of `buf[off..off + n·d]` (the tiles; `buf` holds at least `n·d + 16`
    /// floats) from the row-major `e`, gene blocks in parallel; and finds the first gene whose
    /// row has a NaN or an infinity, checked as each row is copied (it is then in L1).
    fn fill(e: &[f32], n: usize, d: usize, mut buf: Vec<f32>) -> (Self, Option<usize>) {
        let off = line_offset(&buf);
        let mut bad = None;
        if n > 0 && d > 0 {
            // Gene-major: each block of genes reads its rows front to back (what the hardware
            // prefetcher follows; reading tile by tile would read 384 bytes from every 6 KB row)
            // and appends each row's tiles to one write stream per tile. Blocks write disjoint
            // pieces of every tile, so they run in parallel.
            const BLOCK: usize = 256;
            let n_blocks = n.div_ceil(BLOCK);
            let mut pieces: Vec<Vec<&mut [f32]>> = (0..n_blocks).map(|_| Vec::new()).collect();
            for (t, tile) in buf[off..off + n * d].chunks_mut(n * TILE).enumerate() {
                let w = TILE.min(d - t * TILE);
                for (b, piece) in tile.chunks_mut(BLOCK * w).enumerate() {
                    pieces[b].push(piece);
                }
            }
            bad = pieces
                .into_par_iter()
                .enumerate()
                .filter_map(|(b, mut tiles)| {
                    let rows = &e[b * BLOCK * d..((b + 1) * BLOCK).min(n) * d];
                    let mut bad = None;
                    for (k, row) in rows.chunks_exact(d).enumerate() {
                        for (t, tile) in tiles.iter_mut().enumerate() {
                            let (t0, w) = (t * TILE, TILE.min(d - t * TILE));
                            tile[k * w..(k + 1) * w].copy_from_slice(&row[t0..t0 + w]);
                        }
                        if bad.is_none() && embedding_row_rejected(row) {
                            bad = Some(b * BLOCK + k);
                        }
                    }
                    bad
                })
                .min();
        }
        let t = TiledEmbeddings {
            data: buf,
            off,
            n_rows: n,
            dim: d,
        };
        (t, bad)
    }

    #[inline]
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    #[inline]
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The tile starting at dimension `t0` (a multiple of `TILE`): `n_rows × width` floats.
    #[inline]
    pub fn tile(&self, t0: usize) -> &[f32] {
        let w = TILE.min(self.dim - t0);
        &self.data[self.off + self.n_rows * t0..self.off + self.n_rows * (t0 + w)]
    }
}

/// The process that made it, and the buffer of the last per-call re-layout ([`with_tiled`]),
/// kept for the next call.
static SPARE: Mutex<(u32, Vec<f32>)> = Mutex::new((0, Vec::new()));

/// Runs `f` on the row-major `n × d` table `data`, checked and re-laid out tile-major for this
/// call only ([`TiledEmbeddings::from_rows`]: the checks and errors of [`EmbeddingView::new`]),
/// in a buffer kept from the previous such call when it is large enough.
///
/// Why: a fresh buffer for a 20,000 × 1536 table is 123 MB of new pages, which the OS faults in
/// and zeroes as the re-layout first writes them (about 40% of the re-layout's CPU time,
/// measured). The buffer kept between calls is given back to the OS lazily (`MADV_FREE`,
/// [`advise_free`]): its pages stay mapped and cost nothing to write again, unless memory ran
/// short meanwhile and the OS took them (it then hands out zeroed ones). Its contents are
/// never reused: each call re-lays the whole table out, and nothing reads the buffer before
/// writing it. One buffer is kept, the last one used; a call that finds it taken (a
/// concurrent call) makes its own. A forked child does not use its parent's (its pages would
/// be copied on write).
pub fn with_tiled<R>(
    data: &[f32],
    n: usize,
    d: usize,
    f: impl FnOnce(&TiledEmbeddings) -> Result<R>,
) -> Result<R> {
    let pid = std::process::id();
    // Never waits: taken by a concurrent call, or (not expected: nothing panics while holding
    // it) poisoned, the buffer is not reused.
    let (owner, spare) = SPARE
        .try_lock()
        .map_or_else(|_| (pid, Vec::new()), |mut s| std::mem::take(&mut *s));
    let spare = if owner == pid {
        spare
    } else {
        drop(spare);
        Vec::new()
    };
    let t = TiledEmbeddings::from_rows(data, n, d, spare)?;
    let r = f(&t);
    let mut buffer = t.into_buffer();
    advise_free(&mut buffer);
    // One buffer is kept, the last one used (one a concurrent call kept is dropped).
    if let Ok(mut s) = SPARE.try_lock() {
        *s = (pid, buffer);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every gene's tile `t` holds its dimensions `t·TILE..`, for several gene blocks and a
    /// last, partial tile.
    #[test]
    fn tiled_layout_over_gene_blocks() {
        let (n, d) = (700, 2 * TILE + 8);
        let e: Vec<f32> = (0..n * d).map(|i| i as f32).collect();
        let t = TiledEmbeddings::new(&EmbeddingView::new(&e, n, d).unwrap());
        assert_tiles(&t, &e, n, d);
    }

    /// Every tile of `t` holds `e`'s dimensions, gene by gene.
    fn assert_tiles(t: &TiledEmbeddings, e: &[f32], n: usize, d: usize) {
        assert_eq!((t.n_rows(), t.dim()), (n, d));
        for t0 in (0..d).step_by(TILE) {
            let w = TILE.min(d - t0);
            let tile = t.tile(t0);
            assert_eq!(tile.len(), n * w);
            for g in 0..n {
                assert_eq!(&tile[g * w..(g + 1) * w], &e[g * d + t0..g * d + t0 + w]);
            }
        }
    }

    /// Re-laid out into a used buffer (garbage, larger than needed), too small a buffer, or
    /// none: the tiles are the table's, whatever the buffer held; the buffer is reused when it
    /// is large enough. Shapes: several gene blocks, one gene, partial and narrow tiles, none.
    #[test]
    fn from_rows_into_any_buffer() {
        for (n, d) in [
            (700, 2 * TILE + 8),
            (1, 5),
            (1, TILE),
            (300, 1),
            (0, 7),
            (5, 0),
        ] {
            let e: Vec<f32> = (0..n * d).map(|i| i as f32 * 0.5 - 3.0).collect();
            let want = TiledEmbeddings::new(&EmbeddingView::new(&e, n, d).unwrap());
            assert_tiles(&want, &e, n, d);
            for len in [0, n * d + 15, n * d + 16, 2 * n * d + 99] {
                let buf = vec![f32::NAN; len];
                let ptr = buf.as_ptr();
                let t = TiledEmbeddings::from_rows(&e, n, d, buf).unwrap();
                assert_tiles(&t, &e, n, d);
                let back = t.into_buffer();
                if len >= n * d + 16 {
                    assert_eq!((back.as_ptr(), back.len()), (ptr, len), "n={n} d={d}");
                } else {
                    assert_eq!(back.len(), n * d + 16, "n={n} d={d} len={len}");
                }
            }
        }
    }

    /// A non-finite value is the error [`EmbeddingView::new`] gives: the first bad gene (the
    /// blocks run in parallel), its first bad dimension; a wrong shape likewise.
    #[test]
    fn from_rows_checks_as_the_view_does() {
        let (n, d) = (1500, 130);
        let clean: Vec<f32> = (0..n * d).map(|i| (i % 17) as f32).collect();
        let bad_cases: [&[(usize, usize, f32)]; 5] = [
            &[(0, 0, f32::NAN)],
            &[(1499, 129, f32::INFINITY)],
            &[
                (1300, 5, f32::NEG_INFINITY),
                (700, 100, f32::NAN),
                (900, 0, f32::NAN),
            ],
            &[(256, 3, f32::NAN), (255, 9, f32::INFINITY)],
            &[(40, 120, f32::NAN), (40, 7, f32::INFINITY)],
        ];
        for bad in bad_cases {
            let mut e = clean.clone();
            for &(g, k, x) in bad {
                e[g * d + k] = x;
            }
            let want = EmbeddingView::new(&e, n, d).unwrap_err().to_string();
            let got = TiledEmbeddings::from_rows(&e, n, d, Vec::new()).unwrap_err();
            assert_eq!(got.to_string(), want);
            let got = with_tiled(&e, n, d, |_| -> Result<()> { panic!("not called") });
            assert_eq!(got.unwrap_err().to_string(), want);
        }
        let want = EmbeddingView::new(&clean[1..], n, d)
            .unwrap_err()
            .to_string();
        let got = TiledEmbeddings::from_rows(&clean[1..], n, d, Vec::new()).unwrap_err();
        assert_eq!(got.to_string(), want);
    }

    /// Calls in a row on tables of several sizes (large enough that the kept buffer is given
    /// back with `MADV_FREE` between them), from several threads at once: each call sees its
    /// own table, whichever buffer it got.
    #[test]
    fn with_tiled_calls_in_a_row_and_at_once() {
        let tables: Vec<(usize, usize)> = vec![(5000, 300), (3000, 200), (6000, 333), (2, 3)];
        std::thread::scope(|scope| {
            for k in 0..3 {
                let tables = &tables;
                scope.spawn(move || {
                    for round in 0..3 {
                        for (i, &(n, d)) in tables.iter().enumerate() {
                            let seed = (k * 31 + round * 7 + i) as f32;
                            let e: Vec<f32> =
                                (0..n * d).map(|j| (j % 1013) as f32 + seed).collect();
                            let sum = with_tiled(&e, n, d, |t| {
                                assert_tiles(t, &e, n, d);
                                Ok(t.tile(0)[0])
                            });
                            assert_eq!(sum.unwrap(), seed);
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn tiled_layout() {
        let d = TILE + 3;
        let e: Vec<f32> = (0..2 * d).map(|i| i as f32).collect();
        let t = TiledEmbeddings::new(&EmbeddingView::new(&e, 2, d).unwrap());
        assert_eq!(&t.tile(0)[..2], &[0.0, 1.0]);
        assert_eq!(t.tile(0)[TILE], d as f32); // gene 1, dimension 0
        assert_eq!(
            t.tile(TILE),
            &[
                TILE as f32,
                TILE as f32 + 1.0,
                TILE as f32 + 2.0,
                (d + TILE) as f32,
                (d + TILE) as f32 + 1.0,
                (d + TILE) as f32 + 2.0
            ]
        );
    }
}
