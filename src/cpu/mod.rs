//! The CPU backend: kernels that mirror `shaders/rows.wgsl`.

use crate::error::Result;
use crate::job::Job;
use crate::record::Record;

/// Per-row records of `job`, with the same values and status words as the GPU path.
pub(crate) fn run(job: &Job<'_>) -> Result<Vec<Record>> {
    let _ = job;
    Err(crate::error::Error::Unsupported(
        "CPU backend not written yet".into(),
    ))
}
