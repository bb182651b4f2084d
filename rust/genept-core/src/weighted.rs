//! GenePT-w: `out = X @ E` over a sparse X, then each row divided by its L2 norm.
//!
//! The embedding table (30k genes × 1536 floats = 184 MB) is far larger than any cache, so a
//! loop that walks a cell's nonzeros and reads a 6 KB embedding row for each is bound by memory
//! bandwidth. Instead each thread takes a block of cells and regroups its nonzeros by gene
//! (a counting sort). Then, for each tile of [`TILE`] embedding dimensions, the genes are the
//! outer loop: a gene's tile is loaded into registers once per block and added, scaled, into
//! every output row of the block that expresses the gene; the block × tile output lives in L2.
//! Each embedding tile is thus read once per block instead of once per nonzero.
//!
//! Every output element is accumulated over the cell's genes in ascending gene order (stored
//! duplicates in stored order), so results do not depend on the block size or the thread count.

use rayon::prelude::*;

use crate::csr::{CsrView, EmbeddingView, Index, TiledEmbeddings, Value};
use crate::error::{GeneptError, Result};
use crate::simd::{prefetch, scatter_axpy, Isa, TILE};

/// How many genes ahead the next embedding tile is prefetched (measured best of 1, 4, 8, 16).
const PREFETCH_GENES: usize = 4;

/// Cells per block: block × tile of output (512 × 96 floats = 192 KB) stays in L2.
pub const DEFAULT_BLOCK_ROWS: usize = 512;

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
                    return Err(GeneptError::InvalidArgument(format!(
                        "gene_index[{j}] = {} is outside [-1, {n_emb})",
                        m[j]
                    )));
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

/// Options of [`weighted_embedding`].
#[derive(Clone, Copy, Debug)]
pub struct WeightedOptions {
    /// Divide each output row by its L2 norm (rows of norm zero stay zero).
    pub normalize: bool,
    /// Cells per block (tuning; results do not depend on it).
    pub block_rows: usize,
    /// The instruction set to run with.
    pub isa: Isa,
}

impl Default for WeightedOptions {
    fn default() -> Self {
        WeightedOptions {
            normalize: true,
            block_rows: DEFAULT_BLOCK_ROWS,
            isa: Isa::detect(),
        }
    }
}

/// Per-thread buffers, reused from block to block.
struct Scratch {
    /// Per embedding row: entry count, then fill cursor; all zero between blocks.
    count: Vec<u32>,
    /// Embedding rows present in the block, ascending.
    genes: Vec<u32>,
    /// Start of each present gene's entries; `starts[genes.len()]` = total.
    starts: Vec<u32>,
    /// The block's entries grouped by gene: local cell number and value.
    ent_row: Vec<u32>,
    ent_val: Vec<f32>,
    /// Output of one tile: block rows × tile width.
    tile: Vec<f32>,
}

impl Scratch {
    fn new(n_emb: usize) -> Self {
        Scratch {
            count: vec![0; n_emb],
            genes: Vec::new(),
            starts: Vec::new(),
            ent_row: Vec::new(),
            ent_val: Vec::new(),
            tile: Vec::new(),
        }
    }
}

/// Computes `out = X @ E` (then row L2 normalisation if asked) into `out`, row-major
/// `n_cells × dim`. Runs on the current rayon pool.
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
    if n == 0 || d == 0 {
        return Ok(());
    }
    // Enough blocks to keep every thread busy on small inputs.
    let threads = rayon::current_num_threads().max(1);
    let block = opts.block_rows.min(n.div_ceil(threads)).max(1);
    out.par_chunks_mut(block * d).enumerate().try_for_each_init(
        || Scratch::new(emb.n_rows()),
        |s, (b, out_block)| {
            let r0 = b * block;
            let r1 = (r0 + block).min(n);
            encode_block(x, emb, map, opts, r0, r1, s, out_block)
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn encode_block<I: Index, V: Value>(
    x: &CsrView<'_, I, V>,
    emb: Table<'_>,
    map: GeneMap<'_>,
    opts: WeightedOptions,
    r0: usize,
    r1: usize,
    s: &mut Scratch,
    out: &mut [f32],
) -> Result<()> {
    let d = emb.dim();
    let rows = r1 - r0;
    group_by_gene(x, map, r0, r1, s);

    let mut t0 = 0;
    while t0 < d {
        let w = TILE.min(d - t0);
        let (table, stride) = emb.tile(t0);
        // The tile, 64-byte aligned so that no vector load or store splits a cache line.
        s.tile.clear();
        s.tile.resize(rows * w + 16, 0.0);
        let skip = s.tile.as_ptr().align_offset(64).min(16);
        let tile = &mut s.tile[skip..skip + rows * w];
        for (gi, &g) in s.genes.iter().enumerate() {
            if let Some(&next) = s.genes.get(gi + PREFETCH_GENES) {
                prefetch(table[next as usize * stride..].as_ptr(), w * 4);
            }
            let (a, b) = (s.starts[gi] as usize, s.starts[gi + 1] as usize);
            let e = &table[g as usize * stride..g as usize * stride + w];
            scatter_axpy(opts.isa, e, &s.ent_row[a..b], &s.ent_val[a..b], tile, w);
        }
        for (r, src) in tile.chunks_exact(w).enumerate() {
            out[r * d + t0..r * d + t0 + w].copy_from_slice(src);
        }
        t0 += w;
    }
    finish_rows(out, d, r0, opts.normalize)
}

/// Counting sort of the block's entries by embedding row; rows without an embedding skipped.
fn group_by_gene<I: Index, V: Value>(
    x: &CsrView<'_, I, V>,
    map: GeneMap<'_>,
    r0: usize,
    r1: usize,
    s: &mut Scratch,
) {
    s.genes.clear();
    let mut total = 0usize;
    for r in r0..r1 {
        for &j in x.row(r).0 {
            // Validated: 0 <= j < n_cols.
            if let Some(g) = map.row_of(j.to_usize().unwrap_or(0)) {
                if s.count[g] == 0 {
                    s.genes.push(g as u32);
                }
                s.count[g] += 1;
                total += 1;
            }
        }
    }
    s.genes.sort_unstable();
    s.starts.clear();
    let mut acc = 0u32;
    for &g in &s.genes {
        s.starts.push(acc);
        let c = s.count[g as usize];
        s.count[g as usize] = acc; // becomes the fill cursor
        acc += c;
    }
    s.starts.push(acc);
    s.ent_row.resize(total, 0);
    s.ent_val.resize(total, 0.0);
    for r in r0..r1 {
        let (idx, val) = x.row(r);
        for (&j, &v) in idx.iter().zip(val) {
            if let Some(g) = map.row_of(j.to_usize().unwrap_or(0)) {
                let p = s.count[g] as usize;
                s.ent_row[p] = (r - r0) as u32;
                s.ent_val[p] = v.to_f32();
                s.count[g] += 1;
            }
        }
    }
    for &g in &s.genes {
        s.count[g as usize] = 0;
    }
}

/// Checks each row for float32 overflow and, if asked, divides it by its L2 norm.
fn finish_rows(out: &mut [f32], d: usize, r0: usize, normalize: bool) -> Result<()> {
    for (r, row) in out.chunks_exact_mut(d).enumerate() {
        let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        if !ss.is_finite() {
            return Err(GeneptError::Overflow(format!(
                "the weighted sum of cell {} exceeds the float32 range; scale X or the embeddings down",
                r0 + r
            )));
        }
        if normalize && ss > 0.0 {
            let inv = (1.0 / ss.sqrt()) as f32;
            for v in row.iter_mut() {
                *v *= inv;
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
    if data.len() % d != 0 {
        return Err(GeneptError::Shape(format!(
            "buffer of {} values is not a whole number of rows of {d}",
            data.len()
        )));
    }
    data.par_chunks_mut(d * 256)
        .enumerate()
        .try_for_each(|(b, chunk)| {
            if let Some(r) = chunk
                .chunks_exact(d)
                .position(|row| row.iter().any(|v| !v.is_finite()))
            {
                return Err(GeneptError::NonFinite {
                    what: "the matrix",
                    kind: crate::error::non_finite_kind(f64::NAN),
                    location: format!("row {}", b * 256 + r),
                });
            }
            finish_rows(chunk, d, b * 256, true)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense float64 reference of X @ E with optional normalisation.
    fn reference(
        indptr: &[i64],
        idx: &[i64],
        val: &[f64],
        e: &[f32],
        d: usize,
        map: Option<&[i64]>,
        normalize: bool,
    ) -> Vec<f64> {
        let n = indptr.len() - 1;
        let mut out = vec![0.0f64; n * d];
        for r in 0..n {
            for k in indptr[r] as usize..indptr[r + 1] as usize {
                let g = match map {
                    Some(m) if m[idx[k] as usize] < 0 => continue,
                    Some(m) => m[idx[k] as usize] as usize,
                    None => idx[k] as usize,
                };
                for t in 0..d {
                    out[r * d + t] += val[k] * f64::from(e[g * d + t]);
                }
            }
            if normalize {
                let nn: f64 = out[r * d..(r + 1) * d]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f64>()
                    .sqrt();
                if nn > 0.0 {
                    out[r * d..(r + 1) * d].iter_mut().for_each(|v| *v /= nn);
                }
            }
        }
        out
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

    fn random_csr(
        rng: &mut Lcg,
        n: usize,
        g: usize,
        per_row: usize,
    ) -> (Vec<i64>, Vec<i64>, Vec<f64>) {
        let (mut ip, mut ix, mut v) = (vec![0i64], vec![], vec![]);
        for r in 0..n {
            let k = if r % 5 == 3 {
                0
            } else {
                rng.next() as usize % (per_row + 1)
            };
            for _ in 0..k {
                ix.push((rng.next() as usize % g) as i64); // unsorted, with duplicates
                v.push((rng.unit() * 4.0).round() / 2.0); // many ties and zeros
            }
            ip.push(ix.len() as i64);
        }
        (ip, ix, v)
    }

    fn run(
        isa: Isa,
        block_rows: usize,
        map: Option<&[i64]>,
        n_emb: usize,
        d: usize,
        normalize: bool,
    ) {
        let mut rng = Lcg(42 + d as u64);
        let g = map.map_or(n_emb, |m| m.len());
        let (ip, ix, v) = random_csr(&mut rng, 37, g, 30);
        let e: Vec<f32> = (0..n_emb * d)
            .map(|_| (rng.unit() * 2.0 - 1.0) as f32)
            .collect();
        let x = CsrView::new(&ip, &ix, &v, g).unwrap();
        let ev = tiled(&e, n_emb, d);
        let gm = map.map_or(GeneMap::Identity, GeneMap::Table);
        let mut out = vec![f32::NAN; 37 * d];
        let opts = WeightedOptions {
            normalize,
            block_rows,
            isa,
        };
        weighted_embedding(&x, Table::Tiled(&ev), gm, opts, &mut out).unwrap();
        let mut rows_out = vec![f32::NAN; 37 * d];
        let rows = Table::Rows(EmbeddingView::new(&e, n_emb, d).unwrap());
        weighted_embedding(&x, rows, gm, opts, &mut rows_out).unwrap();
        assert_eq!(out, rows_out, "the two table layouts must agree bitwise");
        let want = reference(&ip, &ix, &v, &e, d, map, normalize);
        for r in 0..37 {
            let row = &want[r * d..(r + 1) * d];
            let scale = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
            for t in 0..d {
                let err = (f64::from(out[r * d + t]) - row[t]).abs();
                assert!(
                    err <= 1e-5 * scale,
                    "isa={isa:?} d={d} r={r} t={t}: {} vs {}",
                    out[r * d + t],
                    row[t]
                );
            }
        }
    }

    fn tiled(e: &[f32], n: usize, d: usize) -> TiledEmbeddings {
        TiledEmbeddings::new(&EmbeddingView::new(e, n, d).unwrap())
    }

    #[test]
    fn matches_reference_all_paths() {
        for isa in [Isa::Portable, Isa::detect()] {
            for d in [1, 5, 64, 100, 200] {
                for block in [1, 4, 512] {
                    run(isa, block, None, 50, d, true);
                    run(isa, block, None, 50, d, false);
                }
            }
        }
    }

    #[test]
    fn gene_map_skips_and_reorders() {
        let map: Vec<i64> = (0..60)
            .map(|j| if j % 7 == 0 { -1 } else { (j * 13) % 40 })
            .collect();
        for isa in [Isa::Portable, Isa::detect()] {
            run(isa, 8, Some(&map), 40, 70, true);
        }
    }

    #[test]
    fn independent_of_block_size() {
        let mut rng = Lcg(7);
        let (ip, ix, v) = random_csr(&mut rng, 100, 300, 80);
        let e: Vec<f32> = (0..300 * 130).map(|_| rng.unit() as f32 - 0.5).collect();
        let x = CsrView::new(&ip, &ix, &v, 300).unwrap();
        let ev = tiled(&e, 300, 130);
        let mut a = vec![0.0; 100 * 130];
        let mut b = vec![0.0; 100 * 130];
        let o = WeightedOptions::default();
        weighted_embedding(
            &x,
            Table::Tiled(&ev),
            GeneMap::Identity,
            WeightedOptions { block_rows: 3, ..o },
            &mut a,
        )
        .unwrap();
        weighted_embedding(
            &x,
            Table::Rows(EmbeddingView::new(&e, 300, 130).unwrap()),
            GeneMap::Identity,
            WeightedOptions {
                block_rows: 1000,
                ..o
            },
            &mut b,
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn zero_rows_stay_zero_and_shapes_are_checked() {
        let x = CsrView::<i32, f32>::new(&[0, 0, 1], &[0], &[0.0], 2).unwrap();
        let e = vec![1.0f32; 4];
        let ev = tiled(&e, 2, 2);
        let mut out = vec![7.0; 4];
        weighted_embedding(
            &x,
            Table::Tiled(&ev),
            GeneMap::Identity,
            WeightedOptions::default(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![0.0; 4]);
        let ev3 = tiled(&[1.0f32; 6], 3, 2);
        let err = weighted_embedding(
            &x,
            Table::Tiled(&ev3),
            GeneMap::Identity,
            WeightedOptions::default(),
            &mut out,
        );
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
        assert!(matches!(e, Err(GeneptError::Overflow(_))));
    }

    #[test]
    fn normalize_rows() {
        let mut m = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize_rows(&mut m, 2).unwrap();
        assert_eq!(m, vec![0.6, 0.8, 0.0, 0.0]);
        assert!(l2_normalize_rows(&mut [1.0, f32::NAN], 2).is_err());
    }
}
