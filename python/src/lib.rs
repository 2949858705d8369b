//! The native part of the `kullback` Python package (`kullback._kullback`):
//! a thin layer over the Rust crate. The public functions, their signatures
//! and docstrings live in `kullback/__init__.py`; this module converts
//! arguments (`options`, `inputs`), runs the crate without the GIL
//! (`context`) and maps its errors (`errors`).

mod context;
mod errors;
mod inputs;
mod options;

use pyo3::prelude::*;

/// The address of the first value the binding would hand to the library for
/// `obj` (its own buffer when `obj` is a C-contiguous float32 or float64
/// array): lets the tests check that such arrays are read without a copy.
#[pyfunction]
fn _address(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    Ok(inputs::Floats::new(obj, "p")?.address())
}

/// The canonical name of an option value ('reduction': 'none', 'sum' or
/// 'mean'; 'backend': 'auto', 'gpu' or 'cpu'), parsed by `options` (the Dask
/// layer builds its graph from it, so that spellings are decided in one place).
#[pyfunction]
fn _canonical(kind: &str, value: &Bound<'_, PyAny>) -> PyResult<&'static str> {
    match kind {
        "reduction" => Ok(options::reduction(value)?.name()),
        "backend" => Ok(match options::backend(value)? {
            kullback::Backend::Gpu => "gpu",
            kullback::Backend::Cpu => "cpu",
            kullback::Backend::Auto => "auto",
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "backend {other:?} has no name in this binding"
                )));
            }
        }),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "no canonical form for {other:?}"
        ))),
    }
}

#[pymodule]
fn _kullback(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<context::PyContext>()?;
    m.add_class::<context::PyOutput>()?;
    m.add_function(wrap_pyfunction!(_address, m)?)?;
    m.add_function(wrap_pyfunction!(_canonical, m)?)?;
    // 1e-3 as Python writes it (the f32's shortest decimal), not 0.0010000000474974513
    let tolerance: f64 = kullback::DEFAULT_TOLERANCE
        .to_string()
        .parse()
        .unwrap_or(f64::from(kullback::DEFAULT_TOLERANCE));
    m.add("DEFAULT_TOLERANCE", tolerance)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
