//! Python keyword arguments → the crate's options: the one place where the
//! binding's option names and spellings are decided. A new call (pairwise,
//! training) parses its shared options here and adds its own beside them.

use kullback::{Backend, Base, Form, Normalization, Options, Reduction};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

fn bad(what: &str, allowed: &str, got: &Bound<'_, PyAny>) -> PyErr {
    let got = got
        .repr()
        .map_or_else(|_| "?".to_string(), |r| r.to_string());
    PyValueError::new_err(format!("{what} must be {allowed}, got {got}"))
}

/// A string option, lower-cased, with '-' read as '_'.
fn name(what: &str, allowed: &str, v: &Bound<'_, PyAny>) -> PyResult<String> {
    match v.cast::<PyString>() {
        Ok(s) => Ok(s.to_cow()?.trim().to_ascii_lowercase().replace('-', "_")),
        Err(_) => Err(bad(what, allowed, v)),
    }
}

/// `reduction`: 'none', 'sum', 'mean' ('batchmean', PyTorch's name for the
/// mean over distributions, is the same as 'mean').
pub(crate) fn reduction(v: &Bound<'_, PyAny>) -> PyResult<Reduction> {
    const ALLOWED: &str = "'none', 'sum' or 'mean'";
    Ok(match name("reduction", ALLOWED, v)?.as_str() {
        "none" => Reduction::None,
        "sum" => Reduction::Sum,
        "mean" | "batchmean" => Reduction::Mean,
        _ => return Err(bad("reduction", ALLOWED, v)),
    })
}

/// `base`: None (natural log), or a number > 0 and != 1 (checked by the crate).
pub(crate) fn base(v: &Bound<'_, PyAny>) -> PyResult<Base> {
    if v.is_none() {
        return Ok(Base::E);
    }
    if v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(
            "base must be None or a number, got a bool",
        ));
    }
    let b: f64 = v
        .extract()
        .map_err(|_| PyTypeError::new_err("base must be None or a number"))?;
    Ok(if b == 2.0 {
        Base::Two
    } else if b == 10.0 {
        Base::Ten
    } else if b == std::f64::consts::E {
        Base::E
    } else {
        Base::Custom(b)
    })
}

/// `normalize`: 'validate', 'renormalize', 'as_given', or a bool (True:
/// renormalize, as `scipy.stats.entropy` does; False: validate).
pub(crate) fn normalization(v: &Bound<'_, PyAny>) -> PyResult<Normalization> {
    const ALLOWED: &str = "'validate', 'renormalize', 'as_given' or a bool";
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(if b.is_true() {
            Normalization::Renormalize
        } else {
            Normalization::Validate
        });
    }
    Ok(match name("normalize", ALLOWED, v)?.as_str() {
        "validate" => Normalization::Validate,
        "renormalize" => Normalization::Renormalize,
        "as_given" => Normalization::AsGiven,
        _ => return Err(bad("normalize", ALLOWED, v)),
    })
}

/// `p_form` / `q_form`: 'probs', 'log_probs', 'logits'.
pub(crate) fn form(which: &str, v: &Bound<'_, PyAny>) -> PyResult<Form> {
    const ALLOWED: &str = "'probs', 'log_probs' or 'logits'";
    Ok(match name(which, ALLOWED, v)?.as_str() {
        "probs" => Form::Probs,
        "log_probs" | "logprobs" => Form::LogProbs,
        "logits" => Form::Logits,
        _ => return Err(bad(which, ALLOWED, v)),
    })
}

/// `backend`: 'auto', 'gpu', 'cpu'.
pub(crate) fn backend(v: &Bound<'_, PyAny>) -> PyResult<Backend> {
    const ALLOWED: &str = "'auto', 'gpu' or 'cpu'";
    let s = name("backend", ALLOWED, v)?;
    Backend::parse(&s).ok_or_else(|| bad("backend", ALLOWED, v))
}

/// The options every measure shares. The tolerance arrives as a Python float
/// and is used as f32 (the crate checks that it is finite and >= 0).
pub(crate) fn common(
    reduction_: &Bound<'_, PyAny>,
    base_: &Bound<'_, PyAny>,
    normalize: &Bound<'_, PyAny>,
    tolerance: f64,
) -> PyResult<Options> {
    Ok(Options::default()
        .reduction(reduction(reduction_)?)
        .base(base(base_)?)
        .normalization(normalization(normalize)?)
        .tolerance(tolerance as f32))
}

/// `divergence`: 'forward-kl', 'reverse-kl', 'jsd' (the CLI's names; '_' for
/// '-' too).
pub(crate) fn divergence(v: &Bound<'_, PyAny>) -> PyResult<kullback::Divergence> {
    const ALLOWED: &str = "'forward-kl', 'reverse-kl' or 'jsd'";
    kullback::Divergence::parse(&name("divergence", ALLOWED, v)?.replace('_', "-"))
        .ok_or_else(|| bad("divergence", ALLOWED, v))
}

/// `tail`: 'bucket' or 'renormalize' (a sparse teacher's remaining mass).
pub(crate) fn tail(v: &Bound<'_, PyAny>) -> PyResult<kullback::Tail> {
    const ALLOWED: &str = "'bucket' or 'renormalize'";
    Ok(match name("tail", ALLOWED, v)?.as_str() {
        "bucket" => kullback::Tail::Bucket,
        "renormalize" => kullback::Tail::Renormalize,
        _ => return Err(bad("tail", ALLOWED, v)),
    })
}

/// `teacher_form`: 'logits' or 'log_probs' (a dense teacher).
pub(crate) fn teacher_form(v: &Bound<'_, PyAny>) -> PyResult<Form> {
    const ALLOWED: &str = "'logits' or 'log_probs'";
    Ok(match name("teacher_form", ALLOWED, v)?.as_str() {
        "logits" => Form::Logits,
        "log_probs" | "logprobs" => Form::LogProbs,
        _ => return Err(bad("teacher_form", ALLOWED, v)),
    })
}
