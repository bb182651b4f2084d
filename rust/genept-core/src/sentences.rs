//! GenePT-s cell sentences: a prefix, then the cell's top genes by expression, by name.

use rayon::prelude::*;

use crate::buffer::try_zeroed;
use crate::csr::{CsrView, Index, Value};
use crate::error::{GeneptError, Result};
use crate::topn::top_genes;

/// One sentence per cell: `prefix` followed by the names of its top-`n` genes joined by `sep`.
/// Runs on the current rayon pool.
///
/// `n` may be anything ≥ 1: no sentence can hold more genes than the longest row stores, so the
/// ranking is cut there, and its buffer (cells × that length) is allocated fallibly: a size
/// that cannot be had is an error, never an abort.
pub fn cell_sentences<I: Index, V: Value>(
    x: &CsrView<'_, I, V>,
    gene_names: &[String],
    n: usize,
    prefix: &str,
    sep: &str,
) -> Result<Vec<String>> {
    if gene_names.len() != x.n_cols() {
        return Err(GeneptError::Shape(format!(
            "gene_names has {} entries but X has {} genes (columns)",
            gene_names.len(),
            x.n_cols()
        )));
    }
    if n == 0 {
        return Err(GeneptError::InvalidArgument("n must be at least 1".into()));
    }
    let longest = (0..x.n_rows()).map(|r| x.row(r).0.len()).max().unwrap_or(0);
    let n = n.min(longest).max(1);
    let mut top = try_zeroed::<i32>(x.n_rows(), n, "the ranking of cell_sentences")?;
    top_genes(x, n, &mut top)?;
    Ok(sentences_from_top(&top, n, gene_names, prefix, sep))
}

/// Joins precomputed top-gene indices (-1 = padding) into sentences.
pub fn sentences_from_top(
    top: &[i32],
    n: usize,
    names: &[String],
    prefix: &str,
    sep: &str,
) -> Vec<String> {
    top.par_chunks(n.max(1))
        .with_min_len(64)
        .map(|row| {
            let genes = row
                .iter()
                .take_while(|&&g| g >= 0)
                .map(|&g| names[g as usize].as_str());
            let mut s = String::with_capacity(prefix.len() + row.len() * 8);
            s.push_str(prefix);
            for (k, name) in genes.enumerate() {
                if k > 0 {
                    s.push_str(sep);
                }
                s.push_str(name);
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_sentences() {
        let x = CsrView::<i32, f32>::new(&[0, 3, 3], &[0, 1, 2], &[1.0, 5.0, 3.0], 3).unwrap();
        let names: Vec<String> = ["CD3E", "CD74", "HLA-DRA"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = cell_sentences(&x, &names, 2, "A cell: ", " ").unwrap();
        assert_eq!(
            s,
            vec!["A cell: CD74 HLA-DRA".to_string(), "A cell: ".to_string()]
        );
        assert!(cell_sentences(&x, &names[..2], 2, "", " ").is_err());
    }

    #[test]
    fn huge_n_is_cut_at_the_longest_row() {
        let x = CsrView::<i32, f32>::new(&[0, 3, 3], &[0, 1, 2], &[1.0, 5.0, 3.0], 3).unwrap();
        let names: Vec<String> = ["A", "B", "C"].iter().map(|s| s.to_string()).collect();
        for n in [3, 1 << 40, 1 << 62, usize::MAX] {
            let s = cell_sentences(&x, &names, n, "", " ").unwrap();
            assert_eq!(s, vec!["B C A".to_string(), String::new()]);
        }
    }
}
