//! The native `Context`: one `kullback::Context`, the calls on it, and their
//! results. Arguments arrive positionally from the Python layer
//! (`kullback/__init__.py`), which owns the public signatures and docstrings.

use std::panic::{AssertUnwindSafe, catch_unwind};

use kullback::half::{bf16, f16};
use kullback::{
    Arg, Batch, ContextOptions, DistillOptions, Form, GradMut, Measure, NllOptions, Output,
    Reduction, SparseTeacher, Teacher, Values,
};
use numpy::ndarray::IxDyn;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{Names, RowOffset, panicked, shift_rows, to_py, to_py_named};
use crate::inputs::{Floats, IndexArray, MaskArray, TargetArray, weights};
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

/// Runs a training call `f` without the GIL; its errors name the Python
/// keyword arguments `names`, and rows `offset` below (a block of a larger
/// array: kullback.dask).
fn run_named<F>(py: Python<'_>, names: Names, offset: usize, f: F) -> PyResult<Output>
where
    F: FnOnce() -> kullback::Result<Output> + Send,
{
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(to_py_named(shift_rows(e, offset), names)),
        Err(payload) => Err(panicked(payload)),
    }
}

/// A gradient array: float32, float16 or ml_dtypes' bfloat16.
enum GradArray<'py> {
    F32(Bound<'py, PyArrayDyn<f32>>),
    F16(Bound<'py, PyArrayDyn<f16>>),
    BF16(Bound<'py, PyArrayDyn<bf16>>),
}

impl<'py> GradArray<'py> {
    /// A new zeroed array of `like`'s shape (1-D or 2-D) and dtype `dtype`
    /// ('float32', 'float16', 'bfloat16').
    fn new(py: Python<'py>, like: &Floats<'_>, dtype: &str) -> PyResult<GradArray<'py>> {
        let shape: &[usize] = if like.ndim == 1 {
            &[like.cols]
        } else {
            &[like.rows, like.cols]
        };
        Ok(match dtype {
            "float32" => GradArray::F32(PyArrayDyn::zeros(py, IxDyn(shape), false)),
            "float16" => GradArray::F16(PyArrayDyn::zeros(py, IxDyn(shape), false)),
            "bfloat16" => {
                // the dtype is ml_dtypes' (registered on import)
                py.import("ml_dtypes").map_err(|_| {
                    PyValueError::new_err("grad_dtype='bfloat16' needs the ml_dtypes package")
                })?;
                GradArray::BF16(PyArrayDyn::zeros(py, IxDyn(shape), false))
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "grad_dtype must be 'float32', 'float16' or 'bfloat16', got {other:?}"
                )));
            }
        })
    }

    fn unbind(self) -> Py<PyAny> {
        match self {
            GradArray::F32(a) => a.into_any().unbind(),
            GradArray::F16(a) => a.into_any().unbind(),
            GradArray::BF16(a) => a.into_any().unbind(),
        }
    }
}

/// A gradient array borrowed for writing.
enum GradWrite<'py> {
    F32(numpy::PyReadwriteArrayDyn<'py, f32>),
    F16(numpy::PyReadwriteArrayDyn<'py, f16>),
    BF16(numpy::PyReadwriteArrayDyn<'py, bf16>),
}

impl<'py> GradWrite<'py> {
    fn of(a: &GradArray<'py>) -> GradWrite<'py> {
        match a {
            GradArray::F32(a) => GradWrite::F32(a.readwrite()),
            GradArray::F16(a) => GradWrite::F16(a.readwrite()),
            GradArray::BF16(a) => GradWrite::BF16(a.readwrite()),
        }
    }
    /// The crate's gradient over the array's values (a new array: C order).
    fn grad(&mut self) -> PyResult<GradMut<'_>> {
        Ok(match self {
            GradWrite::F32(a) => GradMut::F32(a.as_slice_mut()?),
            GradWrite::F16(a) => GradMut::F16(a.as_slice_mut()?),
            GradWrite::BF16(a) => GradMut::BF16(a.as_slice_mut()?),
        })
    }
}

/// A gradient (loss, gradient) or (loss, gradient, teacher's gradient).
type Grads = (PyOutput, Py<PyAny>, Option<Py<PyAny>>);

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

    /// The NLL of class targets under logits, and its gradient with respect
    /// to the logits (a new float32 array of the logits' shape).
    #[pyo3(signature = (logits, targets, reduction, base, ignore_index, weight, label_smoothing, grad_dtype, grad_scale = 1.0, offset = 0))]
    #[allow(
        clippy::too_many_arguments,
        reason = "the keyword arguments of the Python call"
    )]
    fn nll_grad(
        &self,
        py: Python<'_>,
        logits: &Bound<'_, PyAny>,
        targets: &Bound<'_, PyAny>,
        reduction: &Bound<'_, PyAny>,
        base: &Bound<'_, PyAny>,
        ignore_index: Option<i64>,
        weight: Option<&Bound<'_, PyAny>>,
        label_smoothing: f64,
        grad_dtype: &str,
        grad_scale: f64,
        offset: usize,
    ) -> PyResult<(PyOutput, Py<PyAny>)> {
        let reduction = options::reduction(reduction)?;
        let mut opts = NllOptions::default()
            .reduction(reduction)
            .base(options::base(base)?)
            .label_smoothing(label_smoothing as f32)
            .grad_scale(grad_scale);
        let z = Floats::new(logits, "logits")?;
        let t = TargetArray::new(targets)?;
        let w = weight.map(weights).transpose()?;
        if let Some(i) = ignore_index {
            opts = opts.ignore_index(i);
        }
        if let Some(w) = &w {
            opts = opts.weights(w);
        }
        let scalar = reduction != Reduction::None || t.scalar;
        let zb = z.batch(Form::Logits)?;
        let tb = t.targets()?;
        let grad = GradArray::new(py, &z, grad_dtype)?;
        let out = {
            let mut gw = GradWrite::of(&grad);
            let g = gw.grad()?;
            let ctx = &self.ctx;
            let names = Names {
                p: "p",
                q: "logits",
            };
            run_named(py, names, offset, || ctx.nll_grad(&zb, tb, &opts, g))?
        };
        Ok((PyOutput::new(py, out, scalar), grad.unbind()))
    }

    /// A distillation loss of student logits against a dense or sparse
    /// teacher, its gradient with respect to the student's logits and, with
    /// `teacher_grad`, with respect to a dense teacher's values (new float32
    /// arrays of the student's shape).
    #[pyo3(signature = (student, teacher, teacher_form, teacher_indices, teacher_logprobs, divergence, beta, temperature, tail, tolerance, mask, reduction, teacher_grad, grad_dtype, grad_scale = 1.0, offset = 0))]
    #[allow(
        clippy::too_many_arguments,
        reason = "the keyword arguments of the Python call"
    )]
    fn distill(
        &self,
        py: Python<'_>,
        student: &Bound<'_, PyAny>,
        teacher: Option<&Bound<'_, PyAny>>,
        teacher_form: &Bound<'_, PyAny>,
        teacher_indices: Option<&Bound<'_, PyAny>>,
        teacher_logprobs: Option<&Bound<'_, PyAny>>,
        divergence: &Bound<'_, PyAny>,
        beta: f64,
        temperature: f64,
        tail: &Bound<'_, PyAny>,
        tolerance: f64,
        mask: Option<&Bound<'_, PyAny>>,
        reduction: &Bound<'_, PyAny>,
        teacher_grad: bool,
        grad_dtype: &str,
        grad_scale: f64,
        offset: usize,
    ) -> PyResult<Grads> {
        let reduction = options::reduction(reduction)?;
        let mut opts = DistillOptions::default()
            .grad_scale(grad_scale)
            .divergence(options::divergence(divergence)?)
            .beta(beta as f32)
            .temperature(temperature as f32)
            .tail(options::tail(tail)?)
            .tolerance(tolerance as f32)
            .reduction(reduction);
        let t_form = options::teacher_form(teacher_form)?;
        let s = Floats::new(student, "student")?;
        let m = mask.map(MaskArray::new).transpose()?;
        if let Some(m) = &m {
            opts = opts.mask(m.row_mask()?);
        }
        let dense;
        let indices;
        let logprobs;
        let converted: Vec<f32>;
        let (teacher, p_name) = match (teacher, teacher_indices, teacher_logprobs) {
            (Some(t), None, None) => {
                dense = Floats::new(t, "teacher")?;
                (Teacher::Dense(dense.batch(t_form)?), "teacher")
            }
            (None, Some(i), Some(l)) => {
                indices = IndexArray::new(i)?;
                logprobs = Floats::new(l, "teacher_logprobs")?;
                let lshape = if logprobs.ndim == 1 {
                    vec![logprobs.cols]
                } else {
                    vec![logprobs.rows, logprobs.cols]
                };
                if lshape != indices.shape {
                    return Err(PyValueError::new_err(format!(
                        "teacher_indices, teacher_logprobs: the indices have shape {:?} but the \
                         log-probabilities {lshape:?}; they must have the same shape",
                        indices.shape
                    )));
                }
                let lp: &[f32] = match logprobs.values()? {
                    Values::F32(v) => v,
                    Values::F64(v) => {
                        converted = kullback::f32_from_f64(v, Arg::P).map_err(|e| {
                            to_py_named(
                                shift_rows(e, offset),
                                Names {
                                    p: "teacher_logprobs",
                                    q: "student",
                                },
                            )
                        })?;
                        &converted
                    }
                    // k values per row: widened here (exactly)
                    Values::F16(v) => {
                        converted = v.iter().map(|x| x.to_f32()).collect();
                        &converted
                    }
                    Values::BF16(v) => {
                        converted = v.iter().map(|x| x.to_f32()).collect();
                        &converted
                    }
                    _ => {
                        return Err(PyValueError::new_err(
                            "teacher_logprobs must be float16, bfloat16, float32 or float64",
                        ));
                    }
                };
                let sparse = SparseTeacher::new(indices.targets()?, lp, indices.k());
                (Teacher::Sparse(sparse), "teacher_logprobs")
            }
            (Some(_), _, _) => {
                return Err(PyValueError::new_err(
                    "give teacher, or teacher_indices with teacher_logprobs, not both",
                ));
            }
            (None, None, None) => {
                return Err(PyValueError::new_err(
                    "distill needs a teacher: teacher (dense logits or log-probabilities), or \
                     teacher_indices with teacher_logprobs (its top-k)",
                ));
            }
            (None, _, _) => {
                return Err(PyValueError::new_err(
                    "a sparse teacher needs both teacher_indices and teacher_logprobs",
                ));
            }
        };
        let scalar = reduction != Reduction::None || s.ndim == 1;
        let sb: Batch<'_> = s.batch(Form::Logits)?;
        let grad = GradArray::new(py, &s, grad_dtype)?;
        let tgrad = teacher_grad
            .then(|| GradArray::new(py, &s, grad_dtype))
            .transpose()?;
        let names = Names {
            p: p_name,
            q: "student",
        };
        let out = {
            let mut gw = GradWrite::of(&grad);
            let g = gw.grad()?;
            let mut tw = tgrad.as_ref().map(GradWrite::of);
            let tg = tw.as_mut().map(|a| a.grad()).transpose()?;
            let ctx = &self.ctx;
            let teacher = &teacher;
            run_named(py, names, offset, || match tg {
                Some(tg) => ctx.distill_with_teacher_grad(&sb, teacher, &opts, g, tg),
                None => ctx.distill(&sb, teacher, &opts, g),
            })?
        };
        Ok((
            PyOutput::new(py, out, scalar),
            grad.unbind(),
            tgrad.map(GradArray::unbind),
        ))
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
