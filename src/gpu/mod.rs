//! The GPU backend.

use crate::context::Records;
use crate::error::{Error, Result};
use crate::job::Job;

/// A device, its queue and the pipelines built on it.
#[derive(Debug)]
pub(crate) struct Gpu {
    adapter_name: String,
}

impl Gpu {
    pub(crate) fn create(allow_software: bool, cap: Option<u64>) -> Result<Gpu> {
        let _ = (allow_software, cap);
        Err(Error::NoAdapter("not written yet".into()))
    }
    pub(crate) fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        name: Option<String>,
        cap: Option<u64>,
    ) -> Result<Gpu> {
        let _ = (device, queue, cap);
        Ok(Gpu {
            adapter_name: name.unwrap_or_default(),
        })
    }
    pub(crate) fn adapter_name(&self) -> &str {
        &self.adapter_name
    }
    pub(crate) fn run(&self, job: &Job<'_>) -> Result<Records> {
        let _ = job;
        Err(Error::Unsupported("GPU backend not written yet".into()))
    }
}
