//! The native `Context`: one `kullback::Context`, the calls on it, and their
//! results. Arguments arrive positionally from the Python layer
//! (`kullback/__init__.py`), which owns the public signatures and docstrings.

use std::panic::{AssertUnwindSafe, catch_unwind};

use kullback::{ContextOptions, Measure, NllOptions, Output, Reduction};
use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{RowOffset, panicked, to_py};
use crate::inputs::{Floats, TargetArray, weights};
use crate::options;

/// The measure named `name` ('entropy', 'cross_entropy', 'kl', 'js',
/// 'hellinger', 'total_variation').
fn parse_measure(name: &str) -> PyResult<Measure> {
    Ok(match name {
        "entropy" => Measure::Entropy,
        "cross_entropy" => Measure::CrossEntropy,
        "kl" => Measure::Kl,
        "js" => Measure::Js,
        "hellinger" => Measure::Hellinger,
        "total_variation" => Measure::TotalVariation,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown measure {other:?} (entropy, cross_entropy, kl, js, hellinger, \
                 total_variation)"
            )));
        }
    })
}

/// `offset_args` names the arguments ('p', 'q', 't') whose rows `offset` shifts.
fn rows_shifted(offset: usize, offset_args: &str) -> RowOffset {
    RowOffset {
        offset,
        p: offset_args.contains('p'),
        q: offset_args.contains('q'),
        targets: offset_args.contains('t'),
    }
}

/// Runs `f` without the GIL; a panic becomes a `RuntimeError`, an error the
/// Python exception of its kind.
fn run<F>(py: Python<'_>, offset: RowOffset, f: F) -> PyResult<Output>
where
    F: FnOnce() -> kullback::Result<Output> + Send,
{
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(to_py(e, offset)),
        Err(payload) => Err(panicked(payload)),
    }
}

/// A device (or the CPU) to run calls on; `Send + Sync`, so one context can
/// serve several Python threads at once.
#[pyclass(name = "Context", module = "kullback._kullback", frozen)]
pub(crate) struct PyContext {
    ctx: kullback::Context,
}

#[pymethods]
impl PyContext {
    #[new]
    #[pyo3(signature = (backend, max_binding_bytes = None, pool_bytes = None))]
    fn new(
        py: Python<'_>,
        backend: &Bound<'_, PyAny>,
        max_binding_bytes: Option<u64>,
        pool_bytes: Option<u64>,
    ) -> PyResult<Self> {
        let mut opts = ContextOptions::default().backend(options::backend(backend)?);
        if let Some(b) = max_binding_bytes {
            opts = opts.max_binding_bytes(b);
        }
        if let Some(b) = pool_bytes {
            opts = opts.pool_bytes(b);
        }
        let made =
            py.detach(|| catch_unwind(AssertUnwindSafe(|| kullback::Context::with_options(opts))));
        match made {
            Ok(Ok(ctx)) => Ok(PyContext { ctx }),
            Ok(Err(e)) => Err(to_py(e, RowOffset::default())),
            Err(payload) => Err(panicked(payload)),
        }
    }

    /// 'gpu' or 'cpu': where this context runs (under 'auto' with a hardware
    /// GPU, each call is still placed by the cost model).
    #[getter]
    fn backend(&self) -> &'static str {
        self.ctx.backend().name()
    }

    /// The GPU adapter's name, or None.
    #[getter]
    fn adapter(&self) -> Option<String> {
        self.ctx.adapter_name().map(str::to_string)
    }

    /// Frees the buffers kept between calls.
    fn trim(&self) {
        self.ctx.trim();
    }

    /// Bytes of buffers kept between calls.
    #[getter]
    fn kept_bytes(&self) -> u64 {
        self.ctx.kept_bytes()
    }

    /// entropy, cross_entropy, kl, js, hellinger or total_variation of p (and q).
    #[pyo3(signature = (measure, p, q, reduction, base, normalize, tolerance, p_form, q_form, row_offset = 0, offset_args = ""))]
    #[allow(
        clippy::too_many_arguments,
        reason = "the keyword arguments of the Python call"
    )]
    fn evaluate(
        &self,
        py: Python<'_>,
        measure: &str,
        p: &Bound<'_, PyAny>,
        q: Option<&Bound<'_, PyAny>>,
        reduction: &Bound<'_, PyAny>,
        base: &Bound<'_, PyAny>,
        normalize: &Bound<'_, PyAny>,
        tolerance: f64,
        p_form: &Bound<'_, PyAny>,
        q_form: &Bound<'_, PyAny>,
        row_offset: usize,
        offset_args: &str,
    ) -> PyResult<PyOutput> {
        let m = parse_measure(measure)?;
        let opts = options::common(reduction, base, normalize, tolerance)?;
        let p_form = options::form("p_form", p_form)?;
        let q_form = options::form("q_form", q_form)?;
        let p = Floats::new(p, "p")?;
        let q = match (m.needs_q(), q) {
            (true, Some(q)) => Some(Floats::new(q, "q")?),
            (true, None) => return Err(PyValueError::new_err(format!("{measure} needs q"))),
            (false, Some(_)) => {
                return Err(PyValueError::new_err(format!("{measure} takes no q")));
            }
            (false, None) => None,
        };
        let scalar = opts.reduction != Reduction::None
            || (p.ndim == 1 && q.as_ref().is_none_or(|q| q.ndim == 1));
        let pb = p.batch(p_form)?;
        let qb = q.as_ref().map(|q| q.batch(q_form)).transpose()?;
        let ctx = &self.ctx;
        let out = run(py, rows_shifted(row_offset, offset_args), || {
            ctx.evaluate(m, &pb, qb.as_ref(), &opts)
        })?;
        Ok(PyOutput::new(py, out, scalar))
    }

    /// The negative log-likelihood of class targets under q.
    #[pyo3(signature = (q, targets, reduction, base, normalize, tolerance, q_form, ignore_index, weight, label_smoothing, row_offset = 0, offset_args = ""))]
    #[allow(
        clippy::too_many_arguments,
        reason = "the keyword arguments of the Python call"
    )]
    fn nll(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        targets: &Bound<'_, PyAny>,
        reduction: &Bound<'_, PyAny>,
        base: &Bound<'_, PyAny>,
        normalize: &Bound<'_, PyAny>,
        tolerance: f64,
        q_form: &Bound<'_, PyAny>,
        ignore_index: Option<i64>,
        weight: Option<&Bound<'_, PyAny>>,
        label_smoothing: f64,
        row_offset: usize,
        offset_args: &str,
    ) -> PyResult<PyOutput> {
        let common = options::common(reduction, base, normalize, tolerance)?;
        let q_form = options::form("q_form", q_form)?;
        let q = Floats::new(q, "q")?;
        let t = TargetArray::new(targets)?;
        let w = weight.map(weights).transpose()?;
        let mut opts = NllOptions::default()
            .common(common)
            .label_smoothing(label_smoothing as f32);
        if let Some(i) = ignore_index {
            opts = opts.ignore_index(i);
        }
        if let Some(w) = &w {
            opts = opts.weights(w);
        }
        let scalar = common.reduction != Reduction::None || t.scalar;
        let qb = q.batch(q_form)?;
        let tb = t.targets()?;
        let ctx = &self.ctx;
        let out = run(py, rows_shifted(row_offset, offset_args), || {
            ctx.nll(&qb, tb, &opts)
        })?;
        Ok(PyOutput::new(py, out, scalar))
    }

    fn __repr__(&self) -> String {
        match self.ctx.adapter_name() {
            Some(a) => format!(
                "Context(backend='{}', adapter={a:?})",
                self.ctx.backend().name()
            ),
            None => format!("Context(backend='{}')", self.ctx.backend().name()),
        }
    }
}

/// What a call gave: the values, what the reduction counted, and where it ran.
#[pyclass(name = "Output", module = "kullback._kullback", frozen)]
pub(crate) struct PyOutput {
    /// One float32 value per row (reduction 'none'), or one value (sum, mean).
    #[pyo3(get)]
    values: Py<PyArray1<f32>>,
    /// Rows counted by the reduction (for an NLL: Σ w_t over the rows not ignored).
    #[pyo3(get)]
    counted: f64,
    /// exp(mean in nats), for an NLL with reduction 'mean'.
    #[pyo3(get)]
    perplexity: Option<f64>,
    /// 'gpu' or 'cpu': the backend that ran.
    #[pyo3(get)]
    backend: &'static str,
    /// The GPU adapter's name when the GPU ran.
    #[pyo3(get)]
    adapter: Option<String>,
    /// Whether the call's result is one float (a reduction, or 1-D inputs).
    #[pyo3(get)]
    scalar: bool,
    /// values[0], for a scalar result.
    first: f32,
}

impl PyOutput {
    fn new(py: Python<'_>, out: Output, scalar: bool) -> PyOutput {
        PyOutput {
            counted: out.counted,
            perplexity: out.perplexity,
            backend: out.backend.name(),
            adapter: out.adapter,
            first: out.values.first().copied().unwrap_or(f32::NAN),
            values: PyArray1::from_vec(py, out.values).unbind(),
            scalar,
        }
    }
}

#[pymethods]
impl PyOutput {
    /// The call's result: a float, or the float32 array of per-row values.
    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.scalar {
            Ok(f64::from(self.first).into_pyobject(py)?.into_any().unbind())
        } else {
            Ok(self.values.clone_ref(py).into_any())
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let v = self.values.bind(py);
        format!(
            "Output(values={}, counted={}, perplexity={:?}, backend='{}', adapter={:?})",
            v.repr().map_or_else(|_| "?".to_string(), |r| r.to_string()),
            self.counted,
            self.perplexity,
            self.backend,
            self.adapter
        )
    }
}
