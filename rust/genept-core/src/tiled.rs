//! The embedding table re-laid out tile-major for the GenePT-w gather ([`TiledEmbeddings`]).
//!
//! Built from a checked [`EmbeddingView`] at the width of the kernel's register tile
//! ([`TILE`]); it depends on the views and on the SIMD kernels, and neither depends on it.

use rayon::prelude::*;

use crate::csr::EmbeddingView;
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
        crate::buffer::advise_huge(&data);
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
        let (n, d) = (e.n_rows(), e.dim());
        let mut data = vec![0.0f32; n * d + 16];
        crate::buffer::advise_huge(&data);
        let off = line_offset(&data);
        if n > 0 && d > 0 {
            // Gene-major: each block of genes reads its rows front to back (what the hardware
            // prefetcher follows; reading tile by tile would read 384 bytes from every 6 KB row)
            // and appends each row's tiles to one write stream per tile. Blocks write disjoint
            // pieces of every tile, so they run in parallel.
            const BLOCK: usize = 256;
            let n_blocks = n.div_ceil(BLOCK);
            let mut pieces: Vec<Vec<&mut [f32]>> = (0..n_blocks).map(|_| Vec::new()).collect();
            for (t, tile) in data[off..off + n * d].chunks_mut(n * TILE).enumerate() {
                let w = TILE.min(d - t * TILE);
                for (b, piece) in tile.chunks_mut(BLOCK * w).enumerate() {
                    pieces[b].push(piece);
                }
            }
            pieces
                .into_par_iter()
                .enumerate()
                .for_each(|(b, mut tiles)| {
                    let rows = &e.data()[b * BLOCK * d..((b + 1) * BLOCK).min(n) * d];
                    for (k, row) in rows.chunks_exact(d).enumerate() {
                        for (t, tile) in tiles.iter_mut().enumerate() {
                            let (t0, w) = (t * TILE, TILE.min(d - t * TILE));
                            tile[k * w..(k + 1) * w].copy_from_slice(&row[t0..t0 + w]);
                        }
                    }
                });
        }
        TiledEmbeddings {
            data,
            off,
            n_rows: n,
            dim: d,
        }
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
        for t0 in (0..d).step_by(TILE) {
            let w = TILE.min(d - t0);
            let tile = t.tile(t0);
            assert_eq!(tile.len(), n * w);
            for g in 0..n {
                assert_eq!(&tile[g * w..(g + 1) * w], &e[g * d + t0..g * d + t0 + w]);
            }
        }
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
