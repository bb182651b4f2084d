//! `genept_fast._core`: the only code that knows about Python.
//!
//! Every function has the same shape: borrow the numpy buffers without copying, release the GIL
//! for the whole computation (validation included), run on the requested thread pool, and hand
//! the result back as a numpy array that owns the Rust buffer. [`detached`] does the release,
//! the pool, panic containment and error mapping for every call. The Python package
//! (`genept_fast.kernels`) normalises dtypes and layouts before calling here, so this layer sees
//! one layout: CSR with `int32`/`int64` indices and `float32`/`float64` values, C-contiguous.

use std::panic::{catch_unwind, AssertUnwindSafe};

use genept_core::buffer::try_zeroed;
use genept_core::parallel::{resolve_threads, thread_limit as core_thread_limit, with_pool};
use genept_core::simd::Isa;
use genept_core::tiled::{self, TiledEmbeddings};
use genept_core::weighted::Table;
use genept_core::{
    sentences, topn, weighted, CsrView, EmbeddingView, GeneMap, Preprocess, WeightedOptions,
};
use numpy::ndarray::Array2;
use numpy::{
    Element, IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyReadwriteArray2, PyUntypedArrayMethods,
};
use pyo3::import_exception;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

// The exception classes live in Python (`genept_fast.errors`, one hierarchy for the whole
// package, with `ValueError`/`OverflowError`/`RuntimeError` bases); they are imported when
// first raised. `to_py` is the one conversion from the core's error enum.
import_exception!(genept_fast.errors, ShapeError);
import_exception!(genept_fast.errors, MalformedMatrixError);
import_exception!(genept_fast.errors, NonFiniteError);
import_exception!(genept_fast.errors, InvalidArgumentError);
import_exception!(genept_fast.errors, NumericOverflowError);
import_exception!(genept_fast.errors, ResourceError);
import_exception!(genept_fast.errors, InternalError);

fn to_py(py: Python<'_>, e: genept_core::GeneptError) -> PyErr {
    to_py_at(py, e, 0)
}

/// The Python exception of a core error, its cell moved by `row_offset` (the call's first row
/// in the whole matrix). Input errors carry `cell` and `gene` as attributes; one that names a
/// cell also keeps its message with `{cell}` in place of the number (`_cell_message`), so that
/// `kernels.offset_cells` can move it again without parsing the text.
fn to_py_at(py: Python<'_>, e: genept_core::GeneptError, row_offset: usize) -> PyErr {
    use genept_core::GeneptError as E;
    let e = e.offset_cells(row_offset);
    let msg = e.to_string();
    let ty = match e {
        E::Shape(_) => py.get_type::<ShapeError>(),
        E::MalformedCsr(_) | E::IndptrDecreases { .. } | E::GeneOutside { .. } => {
            py.get_type::<MalformedMatrixError>()
        }
        E::NonFinite { .. } | E::NonFiniteEmbedding { .. } | E::NonFiniteRow { .. } => {
            py.get_type::<NonFiniteError>()
        }
        E::InvalidArgument(_) | E::NegativeCount { .. } | E::GeneIndexOutside { .. } => {
            py.get_type::<InvalidArgumentError>()
        }
        E::Overflow { .. } => py.get_type::<NumericOverflowError>(),
        E::ThreadPool(_) => return ResourceError::new_err(msg),
    };
    let made = (|| -> PyResult<PyErr> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("cell", e.cell())?;
        kwargs.set_item("gene", e.gene())?;
        let exc = ty.call((msg,), Some(&kwargs))?;
        if let Some(template) = e.message_with_cell("{cell}") {
            exc.setattr("_cell_message", template)?;
        }
        Ok(PyErr::from_value(exc))
    })();
    made.unwrap_or_else(|err| err)
}

/// An argument the binding itself rejects (layout, dtype, a missing table).
fn invalid(msg: impl Into<String>) -> PyErr {
    InvalidArgumentError::new_err(msg.into())
}

/// Releases the GIL, runs `f` on the pool of `n_threads`, and maps errors and panics.
fn detached<T: Send>(
    py: Python<'_>,
    n_threads: Option<usize>,
    f: impl FnOnce() -> genept_core::Result<T> + Send,
) -> PyResult<T> {
    detached_at(py, n_threads, 0, f)
}

/// [`detached`] for a call on rows `row_offset..` of a larger matrix: errors name the cells
/// of the whole matrix.
fn detached_at<T: Send>(
    py: Python<'_>,
    n_threads: Option<usize>,
    row_offset: usize,
    f: impl FnOnce() -> genept_core::Result<T> + Send,
) -> PyResult<T> {
    let r = py.detach(|| catch_unwind(AssertUnwindSafe(|| with_pool(n_threads, f))));
    match r {
        Ok(r) => r.map_err(|e| to_py_at(py, e, row_offset)),
        Err(panic) => Err(internal_error(panic.as_ref())),
    }
}

/// The `InternalError` a caught panic becomes, with the panic's message.
fn internal_error(panic: &(dyn std::any::Any + Send)) -> PyErr {
    let msg = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    InternalError::new_err(format!(
        "internal error in genept-fast (please report it): {msg}"
    ))
}

fn slice<'a, T: Element>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| invalid(format!("{what} must be C-contiguous")))
}

fn opt_slice<'a, T: Element>(
    a: &'a Option<PyReadonlyArray1<'_, T>>,
    what: &str,
) -> PyResult<Option<&'a [T]>> {
    a.as_ref().map(|a| slice(a, what)).transpose()
}

fn dtype_error(
    indptr: &Bound<'_, PyAny>,
    indices: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
) -> PyErr {
    let dt = |a: &Bound<'_, PyAny>| {
        a.getattr("dtype")
            .and_then(|d| d.str().map(|s| s.to_string()))
            .unwrap_or_else(|_| "not an array".into())
    };
    invalid(format!(
        "unsupported CSR dtypes (indptr {}, indices {}, data {}): indptr and indices must both \
         be int32 or both int64 arrays, data float32 or float64",
        dt(indptr),
        dt(indices),
        dt(data)
    ))
}

/// Borrows `(indptr, indices, data)` under each supported dtype combination and evaluates
/// `$body` with `$p`, `$i`, `$d` bound to the slices (generic code, instantiated four times).
macro_rules! with_csr {
    ($indptr:expr, $indices:expr, $data:expr, |$p:ident, $i:ident, $d:ident| $body:expr) => {{
        macro_rules! data_arm {
            ($P:ty) => {{
                let p = $indptr.cast::<PyArray1<$P>>()?.readonly();
                let i = $indices.cast::<PyArray1<$P>>()?.readonly();
                let ($p, $i) = (slice(&p, "indptr")?, slice(&i, "indices")?);
                if let Ok(d) = $data.cast::<PyArray1<f32>>() {
                    let d = d.readonly();
                    let $d = slice(&d, "data")?;
                    $body
                } else if let Ok(d) = $data.cast::<PyArray1<f64>>() {
                    let d = d.readonly();
                    let $d = slice(&d, "data")?;
                    $body
                } else {
                    Err(dtype_error($indptr, $indices, $data))
                }
            }};
        }
        let both = |a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>| {
            (
                a.cast::<PyArray1<i32>>().is_ok() && b.cast::<PyArray1<i32>>().is_ok(),
                a.cast::<PyArray1<i64>>().is_ok() && b.cast::<PyArray1<i64>>().is_ok(),
            )
        };
        match both($indptr, $indices) {
            (true, _) => data_arm!(i32),
            (_, true) => data_arm!(i64),
            _ => Err(dtype_error($indptr, $indices, $data)),
        }
    }};
}

/// A gene-embedding table checked and re-laid out for GenePT-w, ready to reuse across calls.
#[pyclass(frozen, module = "genept_fast._core")]
struct PreparedEmbeddings {
    table: TiledEmbeddings,
}

#[pymethods]
impl PreparedEmbeddings {
    #[new]
    #[pyo3(signature = (embeddings, n_threads=None))]
    fn new(
        py: Python<'_>,
        embeddings: PyReadonlyArray2<'_, f32>,
        n_threads: Option<usize>,
    ) -> PyResult<Self> {
        let (n, d) = (embeddings.shape()[0], embeddings.shape()[1]);
        let data = c_slice2(&embeddings, "gene_embeddings")?;
        let table = detached(py, n_threads, || {
            TiledEmbeddings::from_rows(data, n, d, Vec::new())
        })?;
        Ok(PreparedEmbeddings { table })
    }

    /// Number of genes (rows).
    #[getter]
    fn n_genes(&self) -> usize {
        self.table.n_rows()
    }

    /// Embedding dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.table.dim()
    }

    /// `(n_genes, dim)`, like a numpy array.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.table.n_rows(), self.table.dim())
    }

    fn __repr__(&self) -> String {
        format!(
            "PreparedEmbeddings(n_genes={}, dim={})",
            self.table.n_rows(),
            self.table.dim()
        )
    }
}

fn c_slice2<'a, T: Element>(a: &'a PyReadonlyArray2<'_, T>, what: &str) -> PyResult<&'a [T]> {
    // `as_slice` also accepts Fortran order, which would be read transposed: insist on C order.
    if !a.is_c_contiguous() {
        return Err(invalid(format!("{what} must be C-contiguous")));
    }
    a.as_slice()
        .map_err(|_| invalid(format!("{what} must be C-contiguous")))
}

/// Below this many cells a numpy table is read in place (the kernel packs the ranges it
/// needs as it goes, at ~89% of a tiled table's speed per cell); above it, re-laying it out
/// tile-major first (a copy of the table, made on every call, into a buffer kept between
/// calls: [`tiled::with_tiled`]) pays for itself. A `PreparedEmbeddings` is always tiled.
/// The break-even, measured: docs/benchmarks.md.
const TILE_MIN_CELLS: usize = 2000;

/// The table of a weighted_embedding call: prepared once by the caller, or borrowed from numpy.
enum TableArg<'a, 'py> {
    Prepared(&'a TiledEmbeddings),
    Array(PyReadonlyArray2<'py, f32>),
}

/// The kernel's preprocessing option from its Python name.
fn preprocess_arg(preprocess: &str, target_sum: f64) -> PyResult<Preprocess> {
    match preprocess {
        "none" => Ok(Preprocess::None),
        "log1p" => Ok(Preprocess::Log1p { target_sum }),
        other => Err(InvalidArgumentError::new_err(format!(
            "preprocess must be 'none' or 'log1p', got {other:?}"
        ))),
    }
}

/// GenePT-w: `X @ E`, rows L2-normalised when `normalize`. Returns float32 (n_cells, dim).
#[pyfunction]
#[pyo3(signature = (indptr, indices, data, n_cols, embeddings, gene_index=None, normalize=true, n_threads=None, out=None, block_rows=512, preprocess="none", target_sum=1e4, row_offset=0))]
#[allow(clippy::too_many_arguments)]
fn weighted_embedding<'py>(
    py: Python<'py>,
    indptr: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    n_cols: usize,
    embeddings: &Bound<'py, PyAny>,
    gene_index: Option<PyReadonlyArray1<'py, i64>>,
    normalize: bool,
    n_threads: Option<usize>,
    out: Option<Bound<'py, PyArray2<f32>>>,
    block_rows: usize,
    preprocess: &str,
    target_sum: f64,
    row_offset: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let pre = preprocess_arg(preprocess, target_sum)?;
    let prepared = embeddings.cast::<PreparedEmbeddings>().ok();
    let table = match &prepared {
        Some(p) => TableArg::Prepared(&p.get().table),
        None => TableArg::Array(
            embeddings
                .cast::<PyArray2<f32>>()
                .map_err(|_| {
                    invalid("gene_embeddings must be a 2-D float32 array or PreparedEmbeddings")
                })?
                .readonly(),
        ),
    };
    let (dim, raw) = match &table {
        TableArg::Prepared(t) => (t.dim(), None),
        TableArg::Array(a) => (
            a.shape()[1],
            Some((c_slice2(a, "gene_embeddings")?, a.shape()[0])),
        ),
    };
    let prepared_table = match &table {
        TableArg::Prepared(t) => Some(*t),
        TableArg::Array(_) => None,
    };
    let map_arr = opt_slice(&gene_index, "gene_index")?;
    let n_cells = indptr.len()?.saturating_sub(1);
    let opts = WeightedOptions {
        normalize,
        block_rows,
        preprocess: pre,
        ..WeightedOptions::default()
    };
    let run = |buf: &mut [f32]| -> PyResult<()> {
        with_csr!(indptr, indices, data, |p, i, d| detached_at(
            py,
            n_threads,
            row_offset,
            || {
                let x = match pre {
                    Preprocess::None => CsrView::new(p, i, d, n_cols)?,
                    Preprocess::Log1p { .. } => CsrView::new_counts(p, i, d, n_cols)?,
                };
                let map = map_arr.map_or(GeneMap::Identity, GeneMap::Table);
                let run = |table: Table<'_>, buf: &mut [f32]| {
                    weighted::weighted_embedding(&x, table, map, opts, buf)
                };
                match (prepared_table, raw) {
                    (Some(t), _) => run(Table::Tiled(t), buf),
                    (None, Some((e, n_emb))) if x.n_rows() < TILE_MIN_CELLS => {
                        run(Table::Rows(EmbeddingView::new(e, n_emb, dim)?), buf)
                    }
                    // Checked while it is re-laid out (the view's checks, one pass).
                    (None, Some((e, n_emb))) => {
                        tiled::with_tiled(e, n_emb, dim, |t| run(Table::Tiled(t), buf))
                    }
                    (None, None) => Err(genept_core::GeneptError::InvalidArgument(
                        "no embedding table given".into(),
                    )),
                }
            }
        ))
    };
    match out {
        Some(out) => {
            if out.shape() != [n_cells, dim] {
                return Err(ShapeError::new_err(format!(
                    "out has shape {:?}, expected ({n_cells}, {dim})",
                    out.shape()
                )));
            }
            if !out.is_c_contiguous() {
                return Err(invalid("out must be C-contiguous"));
            }
            {
                let mut w: PyReadwriteArray2<'py, f32> = out.readwrite();
                let buf = w
                    .as_slice_mut()
                    .map_err(|_| invalid("out must be C-contiguous"))?;
                run(buf)?;
            }
            Ok(out)
        }
        None => {
            let mut buf =
                try_zeroed::<f32>(n_cells, dim, "the GenePT-w result").map_err(|e| to_py(py, e))?;
            run(&mut buf)?;
            into_2d(py, buf, n_cells, dim)
        }
    }
}

fn into_2d<T: Element>(
    py: Python<'_>,
    v: Vec<T>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'_, PyArray2<T>>> {
    let a = Array2::from_shape_vec((rows, cols), v)
        .map_err(|e| InternalError::new_err(format!("internal shape error: {e}")))?;
    Ok(a.into_pyarray(py))
}

/// Per cell, the indices of the `n` genes with the largest positive values (int32, -1 padded).
/// `n` is clamped to the number of genes; the result is allocated fallibly.
#[pyfunction]
#[pyo3(signature = (indptr, indices, data, n_cols, n, n_threads=None, row_offset=0))]
#[allow(clippy::too_many_arguments)]
fn top_genes<'py>(
    py: Python<'py>,
    indptr: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    n_cols: usize,
    n: usize,
    n_threads: Option<usize>,
    row_offset: usize,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    if n == 0 {
        return Err(invalid("invalid argument: n must be at least 1"));
    }
    let n = n.min(n_cols);
    let n_cells = indptr.len()?.saturating_sub(1);
    let mut buf =
        try_zeroed::<i32>(n_cells, n, "the top_genes result").map_err(|e| to_py(py, e))?;
    with_csr!(indptr, indices, data, |p, i, d| detached_at(
        py,
        n_threads,
        row_offset,
        || {
            let x = CsrView::new(p, i, d, n_cols)?;
            if n == 0 {
                return Ok(()); // no genes: an (n_cells, 0) result
            }
            topn::top_genes(&x, n, &mut buf)
        }
    ))?;
    into_2d(py, buf, n_cells, n)
}

/// GenePT-s sentences: `prefix` + the names of each cell's top-`n` genes joined by `sep`.
#[pyfunction]
#[pyo3(signature = (indptr, indices, data, n_cols, gene_names, n, prefix, sep, n_threads=None, row_offset=0))]
#[allow(clippy::too_many_arguments)]
fn cell_sentences<'py>(
    py: Python<'py>,
    indptr: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    n_cols: usize,
    gene_names: Vec<String>,
    n: usize,
    prefix: &str,
    sep: &str,
    n_threads: Option<usize>,
    row_offset: usize,
) -> PyResult<Vec<String>> {
    with_csr!(indptr, indices, data, |p, i, d| detached_at(
        py,
        n_threads,
        row_offset,
        || {
            let x = CsrView::new(p, i, d, n_cols)?;
            sentences::cell_sentences(&x, &gene_names, n, prefix, sep)
        }
    ))
}

/// GenePT-s sentences from ranked genes: `prefix` + the names of each row of `top` (C-contiguous
/// int32, cells × width) up to its first -1, joined by `sep`.
#[pyfunction]
#[pyo3(signature = (top, gene_names, prefix, sep, n_threads=None))]
fn sentences_from_top(
    py: Python<'_>,
    top: PyReadonlyArray2<'_, i32>,
    gene_names: Vec<String>,
    prefix: &str,
    sep: &str,
    n_threads: Option<usize>,
) -> PyResult<Vec<String>> {
    let (n_rows, width) = (top.shape()[0], top.shape()[1]);
    let ranked = top
        .as_slice()
        .map_err(|_| invalid("top must be C-contiguous"))?;
    detached(py, n_threads, || {
        // The core indexes `gene_names` by every entry before the first -1: check them all.
        if let Some(&bad) = ranked
            .iter()
            .find(|&&g| g < -1 || (g >= 0 && g as usize >= gene_names.len()))
        {
            return Err(genept_core::GeneptError::InvalidArgument(format!(
                "top holds gene position {bad}, outside -1..{}",
                gene_names.len() as i64 - 1
            )));
        }
        if width == 0 {
            return Ok(vec![prefix.to_string(); n_rows]);
        }
        Ok(sentences::sentences_from_top(
            ranked,
            width,
            &gene_names,
            prefix,
            sep,
        ))
    })
}

/// Releases the GIL and runs `f` on this thread (no pool: a reader thread's small job must not
/// queue behind the kernel's), mapping errors and panics as [`detached`] does.
fn detached_here<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> genept_core::Result<T> + Send,
) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(r) => r.map_err(|e| to_py(py, e)),
        Err(panic) => Err(internal_error(panic.as_ref())),
    }
}

/// A 1-D array of `T` (`i32` or `i64`) borrowed from `obj`, or an error naming `what`.
fn borrow<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<PyReadonlyArray1<'py, T>> {
    let arr = obj.cast::<PyArray1<T>>().map_err(|_| {
        let dtype = if std::mem::size_of::<T>() == 8 {
            "int64"
        } else {
            "int32"
        };
        invalid(format!("{what} must be a 1-D numpy array of {dtype}"))
    })?;
    arr.try_readonly()
        .map_err(|_| invalid(format!("{what} is being written elsewhere")))
}

/// The block's batches as borrowed arrays: `(rows, cols, values)` per batch, rows and columns
/// int64; the values' arrays kept untyped until the data's type is known.
type Borrowed<'py> = Vec<(
    PyReadonlyArray1<'py, i64>,
    PyReadonlyArray1<'py, i64>,
    Bound<'py, PyAny>,
)>;

fn borrow_batches<'py>(batches: &Bound<'py, PyAny>) -> PyResult<Borrowed<'py>> {
    let shape = || invalid("batches must be a list of (rows, cols, values) tuples of arrays");
    let list = batches.cast::<PyList>().map_err(|_| shape())?;
    let mut out = Vec::with_capacity(list.len());
    for (k, item) in list.iter().enumerate() {
        let t = item.cast::<PyTuple>().map_err(|_| shape())?;
        if t.len() != 3 {
            return Err(shape());
        }
        let rows = borrow::<i64>(&t.get_item(0)?, &format!("batch {k}'s rows"))?;
        let cols = borrow::<i64>(&t.get_item(1)?, &format!("batch {k}'s cols"))?;
        out.push((rows, cols, t.get_item(2)?));
    }
    Ok(out)
}

/// What [`coo_into_csr`] reads and writes: the block's batches, the row and column maps, the
/// columns' count, the chunk's offset and its three CSR arrays (their types are found by
/// [`coo_typed`]).
struct CooInto<'a, 'py> {
    batches: &'a Borrowed<'py>,
    rows: genept_core::coo::RowMap<'a>,
    cols: genept_core::coo::ColMap<'a>,
    n_cols: usize,
    base: usize,
    indptr: &'a Bound<'py, PyAny>,
    indices: &'a Bound<'py, PyAny>,
    data: &'a Bound<'py, PyAny>,
}

/// [`coo_into_csr`] for one pair of types; `None` when the arrays are not of these types.
fn coo_typed<I, V>(py: Python<'_>, a: &CooInto<'_, '_>) -> PyResult<Option<usize>>
where
    I: genept_core::coo::CsrIndex + Element,
    V: Element + Copy + Send + Sync,
{
    let (Ok(indptr), Ok(indices), Ok(data)) = (
        a.indptr.cast::<PyArray1<I>>(),
        a.indices.cast::<PyArray1<I>>(),
        a.data.cast::<PyArray1<V>>(),
    ) else {
        return Ok(None);
    };
    let mut values = Vec::with_capacity(a.batches.len());
    for (_, _, v) in a.batches {
        let Ok(v) = v.cast::<PyArray1<V>>() else {
            return Ok(None);
        };
        values.push(
            v.try_readonly()
                .map_err(|_| invalid("values are being written elsewhere"))?,
        );
    }
    let mut batches = Vec::with_capacity(a.batches.len());
    for ((r, c, _), v) in a.batches.iter().zip(&values) {
        batches.push(genept_core::coo::Batch {
            rows: slice(r, "rows")?,
            cols: slice(c, "cols")?,
            vals: slice(v, "values")?,
        });
    }
    // Distinct writable arrays, none of them an input: numpy's borrow checking refuses an
    // array borrowed twice.
    let mut indptr = indptr
        .try_readwrite()
        .map_err(|_| invalid("indptr must be a writable array of its own"))?;
    let mut indices = indices
        .try_readwrite()
        .map_err(|_| invalid("indices must be a writable array of its own"))?;
    let mut data = data
        .try_readwrite()
        .map_err(|_| invalid("data must be a writable array of its own"))?;
    let (p, i, d) = (
        indptr
            .as_slice_mut()
            .map_err(|_| invalid("indptr must be C-contiguous"))?,
        indices
            .as_slice_mut()
            .map_err(|_| invalid("indices must be C-contiguous"))?,
        data.as_slice_mut()
            .map_err(|_| invalid("data must be C-contiguous"))?,
    );
    let (rows, cols, n_cols, base) = (a.rows, a.cols, a.n_cols, a.base);
    detached_here(py, || {
        genept_core::coo::coo_into_csr(&batches, rows, cols, n_cols, base, p, i, d)
    })
    .map(Some)
}

/// Scatters a block's batches of COO entries (int64 row and column joinids, float32/float64
/// values) into CSR arrays (int32/int64 `indptr` and `indices`, `data` of the values' dtype),
/// stable by row; rows are `joinid - first`, or `row_of[joinid - first]` (negative: skipped),
/// or the joinid's position in the increasing `row_ids`; columns the joinid or `col_of[joinid]`.
/// Returns the number of entries written (`genept_core::coo`).
#[pyfunction]
#[pyo3(signature = (batches, n_cols, base, indptr, indices, data, *, first=0, row_of=None, row_ids=None, col_of=None))]
#[allow(clippy::too_many_arguments)]
fn coo_into_csr(
    py: Python<'_>,
    batches: &Bound<'_, PyAny>,
    n_cols: usize,
    base: usize,
    indptr: &Bound<'_, PyAny>,
    indices: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
    first: i64,
    row_of: Option<&Bound<'_, PyAny>>,
    row_ids: Option<&Bound<'_, PyAny>>,
    col_of: Option<&Bound<'_, PyAny>>,
) -> PyResult<usize> {
    use genept_core::coo::{ColMap, RowMap};
    let batches = borrow_batches(batches)?;
    let row_of = row_of.map(|a| borrow::<i32>(a, "row_of")).transpose()?;
    let row_ids = row_ids.map(|a| borrow::<i64>(a, "row_ids")).transpose()?;
    let col_of = col_of.map(|a| borrow::<i32>(a, "col_of")).transpose()?;
    let rows = match (
        opt_slice(&row_of, "row_of")?,
        opt_slice(&row_ids, "row_ids")?,
    ) {
        (Some(_), Some(_)) => return Err(invalid("give row_of or row_ids, not both")),
        (Some(row_of), None) => RowMap::Table { first, row_of },
        (None, Some(ids)) => {
            if ids.windows(2).any(|w| w[0] >= w[1]) {
                return Err(invalid("row_ids must be strictly increasing"));
            }
            RowMap::Sorted(ids)
        }
        (None, None) => RowMap::Offset(first),
    };
    let cols = opt_slice(&col_of, "col_of")?.map_or(ColMap::Identity, ColMap::Table);
    let a = CooInto {
        batches: &batches,
        rows,
        cols,
        n_cols,
        base,
        indptr,
        indices,
        data,
    };
    let mut found = coo_typed::<i32, f32>(py, &a)?;
    if found.is_none() {
        found = coo_typed::<i64, f32>(py, &a)?;
    }
    if found.is_none() {
        found = coo_typed::<i32, f64>(py, &a)?;
    }
    if found.is_none() {
        found = coo_typed::<i64, f64>(py, &a)?;
    }
    found.ok_or_else(|| {
        invalid(
            "coo_into_csr wants 1-D values (every batch's) and data of one dtype (float32 or \
             float64) and indptr and indices of one dtype (int32 or int64)",
        )
    })
}

/// Divides each row of a C-contiguous float32 matrix by its L2 norm, in place.
#[pyfunction]
#[pyo3(signature = (matrix, n_threads=None))]
fn l2_normalize(
    py: Python<'_>,
    matrix: Bound<'_, PyArray2<f32>>,
    n_threads: Option<usize>,
) -> PyResult<()> {
    let dim = matrix.shape()[1];
    if !matrix.is_c_contiguous() {
        return Err(invalid("matrix must be C-contiguous"));
    }
    let mut w = matrix.readwrite();
    let buf = w
        .as_slice_mut()
        .map_err(|_| invalid("matrix must be C-contiguous"))?;
    detached(py, n_threads, || weighted::l2_normalize_rows(buf, dim))
}

/// The SIMD instruction set the kernels use on this CPU ("avx512", "avx2+fma" or "portable").
#[pyfunction]
fn simd_level() -> &'static str {
    Isa::detect().name()
}

/// The most threads a call uses: 4 × the available cores (larger requests are capped).
#[pyfunction]
fn thread_limit() -> usize {
    core_thread_limit()
}

/// The number of threads a call with `n_threads` would use (all cores, capped by
/// `GENEPT_FAST_NUM_THREADS` and by `thread_limit()`).
#[pyfunction]
#[pyo3(signature = (n_threads=None))]
fn resolved_threads(py: Python<'_>, n_threads: Option<usize>) -> PyResult<usize> {
    resolve_threads(n_threads).map_err(|e| to_py(py, e))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PreparedEmbeddings>()?;
    m.add_function(wrap_pyfunction!(weighted_embedding, m)?)?;
    m.add_function(wrap_pyfunction!(top_genes, m)?)?;
    m.add_function(wrap_pyfunction!(cell_sentences, m)?)?;
    m.add_function(wrap_pyfunction!(sentences_from_top, m)?)?;
    m.add_function(wrap_pyfunction!(l2_normalize, m)?)?;
    m.add_function(wrap_pyfunction!(coo_into_csr, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(resolved_threads, m)?)?;
    m.add_function(wrap_pyfunction!(thread_limit, m)?)?;
    Ok(())
}
