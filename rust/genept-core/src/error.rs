//! The one error type of the kernels. Every message names the argument, cell or gene at fault,
//! so that the Python exception built from it tells the user what to fix.
//!
//! Positions are data, not prose: a variant that concerns one cell or gene carries it as a
//! field ([`GeneptError::cell`], [`GeneptError::gene`]), and its message is composed from the
//! fields when it is displayed. A kernel called on rows `a..b` of a larger matrix names its
//! cells from 0; [`GeneptError::offset_cells`] moves them to the whole matrix before anything
//! is written.

use std::fmt;

/// Everything a kernel can reject. Kernels never panic on user input; they return one of these.
#[derive(Debug, Clone, PartialEq)]
pub enum GeneptError {
    /// Two arguments disagree on a dimension (for example X's genes and the embedding rows).
    Shape(String),

    /// The CSR arrays do not describe a valid matrix (no one cell at fault).
    MalformedCsr(String),

    /// `indptr[at + 1] < indptr[at]`: cell `cell` (`at`, its position in the call's own
    /// `indptr`, does not move with [`GeneptError::offset_cells`]).
    IndptrDecreases {
        cell: usize,
        at: usize,
        start: i64,
        end: i64,
    },

    /// Cell `cell` stores gene index `gene`, outside `[0, n_cols)`.
    GeneOutside {
        cell: usize,
        gene: i64,
        n_cols: usize,
    },

    /// A NaN or an infinity in X, at `cell` and `gene` (a column of X).
    NonFinite {
        kind: &'static str,
        cell: usize,
        gene: i64,
    },

    /// A NaN or an infinity in the gene-embedding table, at row `gene`, dimension `dim`.
    NonFiniteEmbedding {
        kind: &'static str,
        gene: usize,
        dim: usize,
    },

    /// A NaN or an infinity in row `row` of a matrix to L2-normalise (a cell's embedding).
    NonFiniteRow { kind: &'static str, row: usize },

    /// A negative value in X where raw counts are needed (log1p preprocessing): the first one.
    NegativeCount { value: f64, cell: usize, gene: i64 },

    /// A scalar argument out of its range (`n < 1`, a bad thread count).
    InvalidArgument(String),

    /// `gene_index[gene]` is `row`, outside `[-1, n_emb)`.
    GeneIndexOutside { gene: usize, row: i64, n_emb: usize },

    /// The weighted sum of cell `cell` does not fit float32.
    Overflow { cell: usize },

    /// The thread pool could not be built.
    ThreadPool(String),
}

pub type Result<T> = std::result::Result<T, GeneptError>;

impl GeneptError {
    /// The cell (row of X) at fault, if the error concerns one. For
    /// [`GeneptError::NonFiniteRow`], the row of the matrix (a cell's embedding).
    pub fn cell(&self) -> Option<usize> {
        match *self {
            GeneptError::IndptrDecreases { cell, .. }
            | GeneptError::GeneOutside { cell, .. }
            | GeneptError::NonFinite { cell, .. }
            | GeneptError::NegativeCount { cell, .. }
            | GeneptError::Overflow { cell } => Some(cell),
            GeneptError::NonFiniteRow { row, .. } => Some(row),
            _ => None,
        }
    }

    /// The gene at fault, if the error concerns one: a column of X (as stored, so possibly
    /// out of range for [`GeneptError::GeneOutside`]), or a row of the embedding table for
    /// [`GeneptError::NonFiniteEmbedding`].
    pub fn gene(&self) -> Option<i64> {
        match *self {
            GeneptError::GeneOutside { gene, .. }
            | GeneptError::NonFinite { gene, .. }
            | GeneptError::NegativeCount { gene, .. } => Some(gene),
            GeneptError::NonFiniteEmbedding { gene, .. }
            | GeneptError::GeneIndexOutside { gene, .. } => {
                Some(i64::try_from(gene).unwrap_or(i64::MAX))
            }
            _ => None,
        }
    }

    /// The error with its cell moved by `offset` rows: a kernel called on rows `offset..` of a
    /// larger matrix then names cells of the whole matrix. Errors without a cell are returned
    /// as they are.
    pub fn offset_cells(mut self, offset: usize) -> Self {
        match &mut self {
            GeneptError::IndptrDecreases { cell, .. }
            | GeneptError::GeneOutside { cell, .. }
            | GeneptError::NonFinite { cell, .. }
            | GeneptError::NegativeCount { cell, .. }
            | GeneptError::Overflow { cell }
            | GeneptError::NonFiniteRow { row: cell, .. } => *cell = cell.saturating_add(offset),
            _ => {}
        }
        self
    }

    /// The message with `cell` written where the cell number goes (the number itself when
    /// `None`). `Display` is `write(f, None)`.
    fn write(&self, f: &mut fmt::Formatter<'_>, cell: Option<&str>) -> fmt::Result {
        use GeneptError as E;
        let at = |n: usize| -> String { cell.map_or_else(|| n.to_string(), str::to_string) };
        match self {
            E::Shape(m) => write!(f, "shape mismatch: {m}"),
            E::MalformedCsr(m) => write!(f, "malformed CSR matrix: {m}"),
            E::IndptrDecreases {
                cell: r,
                at: i,
                start,
                end,
            } => write!(
                f,
                "malformed CSR matrix: indptr decreases at cell {} (indptr[{i}] = {start}, \
                 indptr[{}] = {end})",
                at(*r),
                i + 1
            ),
            E::GeneOutside {
                cell: r,
                gene,
                n_cols,
            } => write!(
                f,
                "malformed CSR matrix: cell {} has gene index {gene} outside [0, {n_cols})",
                at(*r)
            ),
            E::NonFinite {
                kind,
                cell: r,
                gene,
            } => write!(f, "X contains {kind} at cell {}, gene {gene}", at(*r)),
            E::NonFiniteEmbedding { kind, gene, dim } => write!(
                f,
                "gene_embeddings contains {kind} at gene row {gene}, dimension {dim}"
            ),
            E::NonFiniteRow { kind, row } => {
                write!(f, "the matrix contains {kind} at row {}", at(*row))
            }
            E::NegativeCount {
                value,
                cell: r,
                gene,
            } => write!(
                f,
                "invalid argument: log1p preprocessing needs raw counts, but X has negative \
                 values (the first: {value} at cell {}, gene {gene})",
                at(*r)
            ),
            E::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            E::GeneIndexOutside { gene, row, n_emb } => write!(
                f,
                "invalid argument: gene_index[{gene}] = {row} is outside [-1, {n_emb})"
            ),
            E::Overflow { cell: r } => write!(
                f,
                "overflow: the weighted sum of cell {} exceeds the float32 range; scale X or the \
                 embeddings down",
                at(*r)
            ),
            E::ThreadPool(m) => write!(f, "thread pool: {m}"),
        }
    }

    /// The message with `placeholder` where the cell number goes, for a caller that moves the
    /// cell later without parsing the text (`None` for an error without a cell).
    pub fn message_with_cell(&self, placeholder: &str) -> Option<String> {
        struct With<'a>(&'a GeneptError, &'a str);
        impl fmt::Display for With<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write(f, Some(self.1))
            }
        }
        self.cell().map(|_| With(self, placeholder).to_string())
    }
}

impl fmt::Display for GeneptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, None)
    }
}

impl std::error::Error for GeneptError {}

/// Describes a non-finite float: "NaN", "+inf" or "-inf".
pub(crate) fn non_finite_kind(x: f64) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "+inf"
    } else {
        "-inf"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_fields_and_move_with_the_offset() {
        let e = GeneptError::NonFinite {
            kind: "NaN",
            cell: 3,
            gene: 7,
        };
        assert_eq!((e.cell(), e.gene()), (Some(3), Some(7)));
        assert_eq!(e.to_string(), "X contains NaN at cell 3, gene 7");
        let moved = e.offset_cells(40);
        assert_eq!(moved.cell(), Some(43));
        assert_eq!(moved.to_string(), "X contains NaN at cell 43, gene 7");
        assert_eq!(
            moved.message_with_cell("{cell}").as_deref(),
            Some("X contains NaN at cell {cell}, gene 7")
        );
        let table = GeneptError::NonFiniteEmbedding {
            kind: "+inf",
            gene: 2,
            dim: 5,
        };
        assert_eq!(table.clone().offset_cells(9), table);
        assert_eq!((table.cell(), table.gene()), (None, Some(2)));
        assert_eq!(table.message_with_cell("{cell}"), None);
        let shape = GeneptError::Shape("x".into());
        assert_eq!((shape.cell(), shape.gene()), (None, None));
    }

    #[test]
    fn indptr_message_keeps_its_own_array_positions() {
        let e = GeneptError::IndptrDecreases {
            cell: 1,
            at: 1,
            start: 4,
            end: 2,
        };
        assert_eq!(
            e.offset_cells(10).to_string(),
            "malformed CSR matrix: indptr decreases at cell 11 (indptr[1] = 4, indptr[2] = 2)"
        );
    }
}
