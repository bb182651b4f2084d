//! Tuning bench for the GenePT-w kernel, without Python: compares kernel variants on synthetic
//! atlas-like data (the model of `benches/synthetic.py`), interleaved and repeated, and reports
//! each variant's best wall time and its CPU time (from `/proc/self/task/*/schedstat`, which
//! a loaded machine disturbs far less than wall time).
//!
//! ```text
//! cargo run --release -p genept-core --example kernel_bench -- [cells] [dim] [repeat] [threads] [genes]
//! ```
//!
//! `ONESHOT=1`: one call on a plain (row-major) table right after other work (a 64 MB sweep
//! leaves the caches cold), the ways a plain table can be read against a prepared one.

use std::time::Instant;

use genept_core::simd::Isa;
use genept_core::tiled::{self, TiledEmbeddings};
use genept_core::weighted::{self, GeneMap, Preprocess, Table, WeightedOptions};
use genept_core::{CsrView, EmbeddingView};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per-gene expression probabilities: 300 genes at 0.9, a power law for the rest (capped at
/// 0.8), scaled to `nnz` genes per cell, shuffled.
fn gene_probabilities(n_genes: usize, nnz: f64, rng: &mut Rng) -> Vec<f64> {
    let core = 300.min(n_genes);
    let rest = n_genes - core;
    let w: Vec<f64> = (1..=rest).map(|r| (r as f64).powf(-1.2)).collect();
    let target = (nnz - core as f64 * 0.9).max(0.0);
    let mut scale = target / w.iter().sum::<f64>();
    for _ in 0..20 {
        let s: f64 = w.iter().map(|x| (x * scale).min(0.8)).sum();
        if s >= target * 0.999 {
            break;
        }
        scale *= target / s;
    }
    let mut p: Vec<f64> = std::iter::repeat_n(0.9, core)
        .chain(w.iter().map(|x| (x * scale).min(0.8)))
        .collect();
    for i in (1..p.len()).rev() {
        p.swap(i, rng.next() as usize % (i + 1));
    }
    p
}

/// Raw counts and their log-normalised values, CSR with int32 indices.
fn make_csr(n: usize, g: usize, nnz: f64) -> (Vec<i32>, Vec<i32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let p = gene_probabilities(g, nnz, &mut rng);
    let (mut ip, mut ix, mut counts, mut logs) = (vec![0i32], vec![], vec![], vec![]);
    for _ in 0..n {
        let a = ix.len();
        for (j, &pj) in p.iter().enumerate() {
            if rng.unit() < pj {
                ix.push(j as i32);
                // Geometric count, mean 1 + 3p.
                let q = 1.0 / (1.0 + 3.0 * pj);
                let c = (rng.unit().ln() / (1.0 - q).ln()).floor() + 1.0;
                counts.push(c as f32);
            }
        }
        let total: f64 = counts[a..].iter().map(|&c| f64::from(c)).sum();
        logs.extend(
            counts[a..]
                .iter()
                .map(|&c| (1e4 * f64::from(c) / total).ln_1p() as f32),
        );
        ip.push(ix.len() as i32);
    }
    (ip, ix, counts, logs)
}

/// CPU time of this process so far, in seconds (all threads).
fn cpu_seconds() -> f64 {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 * 1e-9
}

struct Variant {
    name: String,
    isa: Isa,
    block_rows: usize,
    log1p: bool,
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(4000);
    let d = args.get(1).copied().unwrap_or(1536);
    let repeat = args.get(2).copied().unwrap_or(5);
    let threads = args.get(3).copied().unwrap_or(2);
    let g = args.get(4).copied().unwrap_or(30_000);
    let t = Instant::now();
    let (ip, ix, counts, logs) = make_csr(n, g, 2000.0);
    let mut rng = Rng(7);
    let e: Vec<f32> = (0..g * d).map(|_| rng.unit() as f32 - 0.5).collect();
    eprintln!(
        "data: {n} cells × {g} genes, {:.0} nnz/cell, D = {d} ({:.1} s)",
        ix.len() as f64 / n as f64,
        t.elapsed().as_secs_f64()
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let tiled = pool.install(|| TiledEmbeddings::new(&EmbeddingView::new(&e, g, d).unwrap()));
    let xl = CsrView::new(&ip, &ix, &logs, g).unwrap();
    let xc = CsrView::new_counts(&ip, &ix, &counts, g).unwrap();

    if std::env::var("ONESHOT").is_ok() {
        oneshot(&pool, &xl, &e, &tiled, repeat);
        return;
    }
    if let Ok(n_top) = std::env::var("TOPN") {
        let n_top: usize = n_top.parse().unwrap();
        let mut out = vec![0i32; n * n_top];
        let mut best = (f64::INFINITY, f64::INFINITY);
        for _ in 0..repeat {
            let (c0, t0) = (cpu_seconds(), Instant::now());
            if std::env::var("FRESH").is_ok() {
                out = genept_core::buffer::try_zeroed(n, n_top, "out").unwrap();
                // fresh each call, as the Python binding
            }
            pool.install(|| genept_core::topn::top_genes(&xl, n_top, &mut out))
                .unwrap();
            best = (
                best.0.min(t0.elapsed().as_secs_f64()),
                best.1.min(cpu_seconds() - c0),
            );
        }
        println!(
            "top_genes n={n_top}: wall {:.0} cells/s, cpu {:.0} cells/cpu-s",
            n as f64 / best.0,
            n as f64 / best.1
        );
        return;
    }
    // VARIANTS: comma-separated; each is an instruction set (best, avx2, portable), optionally
    // followed by `/block_rows` and `+log1p` (raw counts, fused normalisation).
    let spec = std::env::var("VARIANTS").unwrap_or_else(|_| "avx2,best,best+log1p".into());
    let isas = Isa::available();
    let mut variants = Vec::new();
    for name in spec.split(',') {
        let (head, log1p) = match name.strip_suffix("+log1p") {
            Some(h) => (h, true),
            None => (name, false),
        };
        let (head, block_rows) = match head.split_once('/') {
            Some((h, b)) => (h, b.parse().unwrap()),
            None => (head, weighted::DEFAULT_BLOCK_ROWS),
        };
        let isa_name = head;
        let isa = match isa_name {
            "best" => *isas.last().unwrap(),
            "avx2" => *isas
                .iter()
                .find(|i| i.name() == "avx2+fma")
                .unwrap_or(&isas[0]),
            "portable" => Isa::portable(),
            _ => panic!("unknown instruction set {isa_name}"),
        };
        variants.push(Variant {
            name: format!("{name} ({})", isa.name()),
            isa,
            block_rows,
            log1p,
        });
    }
    let mut out = vec![0.0f32; n * d];
    let mut wall = vec![f64::INFINITY; variants.len()];
    let mut cpu = vec![f64::INFINITY; variants.len()];
    let mut reference: Option<Vec<f32>> = None;
    for _ in 0..repeat {
        for (i, v) in variants.iter().enumerate() {
            let opts = WeightedOptions {
                normalize: true,
                block_rows: v.block_rows,
                isa: v.isa,
                preprocess: if v.log1p {
                    Preprocess::Log1p {
                        target_sum: weighted::TARGET_SUM,
                    }
                } else {
                    Preprocess::None
                },
            };
            let x = if v.log1p { &xc } else { &xl };
            let (c0, t0) = (cpu_seconds(), Instant::now());
            pool.install(|| {
                weighted::weighted_embedding(
                    x,
                    Table::Tiled(&tiled),
                    GeneMap::Identity,
                    opts,
                    &mut out,
                )
            })
            .unwrap();
            wall[i] = wall[i].min(t0.elapsed().as_secs_f64());
            cpu[i] = cpu[i].min(cpu_seconds() - c0);
            match &reference {
                None => reference = Some(out.clone()),
                Some(r) => {
                    let err = r
                        .iter()
                        .zip(&out)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(err < 1e-4, "{} disagrees: {err}", v.name);
                }
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load: {}", load.trim());
    for (i, v) in variants.iter().enumerate() {
        let flops = 2.0 * ix.len() as f64 * d as f64;
        println!(
            "{:<32} wall {:>7.0} cells/s  cpu {:>7.0} cells/cpu-s  {:>5.1} GFLOP/cpu-s",
            v.name,
            n as f64 / wall[i],
            n as f64 / cpu[i],
            flops / cpu[i] / 1e9
        );
    }
}

/// One-shot calls (`ONESHOT=1`): a prepared table against a plain one checked and re-laid out
/// per call into a fresh buffer (two passes), checked while re-laid out into the kept buffer
/// ([`tiled::with_tiled`]), or checked and read in place; each call right after a 64 MB sweep,
/// the variants rotated each round.
fn oneshot(
    pool: &rayon::ThreadPool,
    x: &CsrView<'_, i32, f32>,
    e: &[f32],
    prepared: &TiledEmbeddings,
    repeat: usize,
) {
    let (g, d) = (prepared.n_rows(), prepared.dim());
    let n = x.n_rows();
    let opts = WeightedOptions::default();
    let mut out = vec![0.0f32; n * d];
    let mut junk = vec![0u8; 64 << 20];
    let names = ["prepared", "fresh re-layout", "kept re-layout", "in place"];
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); names.len()];
    let mut first: Option<Vec<f32>> = None;
    for r in 0..repeat {
        for k in 0..names.len() {
            let i = (k + r) % names.len();
            for (j, b) in junk.iter_mut().enumerate().step_by(64) {
                *b = b.wrapping_add(j as u8);
            }
            let run = |t: Table<'_>, out: &mut [f32]| {
                weighted::weighted_embedding(x, t, GeneMap::Identity, opts, out)
            };
            let (c0, t0) = (cpu_seconds(), Instant::now());
            // As the binding does: a plain table is checked on every call.
            pool.install(|| match i {
                0 => run(Table::Tiled(prepared), &mut out),
                1 => {
                    let rows = EmbeddingView::new(e, g, d)?;
                    run(Table::Tiled(&TiledEmbeddings::new(&rows)), &mut out)
                }
                2 => tiled::with_tiled(e, g, d, |t| run(Table::Tiled(t), &mut out)),
                _ => run(Table::Rows(EmbeddingView::new(e, g, d)?), &mut out),
            })
            .unwrap();
            samples[i].push((t0.elapsed().as_secs_f64(), cpu_seconds() - c0));
            match &first {
                None => first = Some(out.clone()),
                Some(f) => assert!(f == &out, "{} gives other bits", names[i]),
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{n} cells × {g} genes, D = {d}, {repeat} rounds; load {}",
        load.trim()
    );
    let stat = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let walls: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| stat(&s.iter().map(|x| x.0).collect::<Vec<_>>()))
        .collect();
    let cpus: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| stat(&s.iter().map(|x| x.1).collect::<Vec<_>>()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        println!(
            "{name:<16} wall best {:6.1} ms (median {:6.1}), {:3.0}% of prepared; cpu best {:6.1} ms \
             (median {:6.1}), {:3.0}% of prepared",
            1e3 * walls[i].0,
            1e3 * walls[i].1,
            100.0 * walls[0].0 / walls[i].0,
            1e3 * cpus[i].0,
            1e3 * cpus[i].1,
            100.0 * cpus[0].0 / cpus[i].0,
        );
    }
}
