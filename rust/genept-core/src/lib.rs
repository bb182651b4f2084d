//! genept-core: the pure-Rust kernels behind genept-fast.
//!
//! Nothing here knows about Python. Inputs are borrowed slices (validated once into
//! [`CsrView`] and [`EmbeddingView`]), errors are [`GeneptError`] values, and parallel work runs
//! on the rayon pool chosen by [`parallel::with_pool`].
//!
//! - [`weighted::weighted_embedding`]: GenePT-w, `X @ E` with row L2 normalisation.
//! - [`topn::top_genes`]: per-cell top-N genes by expression.
//! - [`sentences::cell_sentences`]: GenePT-s cell sentences from the top-N genes.

pub mod buffer;
pub mod coo;
pub mod csr;
pub mod error;
pub mod parallel;
pub mod sentences;
pub mod simd;
pub mod tiled;
pub mod topn;
pub mod weighted;

pub use csr::{CsrView, EmbeddingView, Index, Value};
pub use error::{GeneptError, Result};
pub use tiled::TiledEmbeddings;
pub use weighted::{GeneMap, Preprocess, WeightedOptions};
