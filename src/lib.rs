//! # kullback
//!
//! Entropy, cross-entropy, Kullback-Leibler and Jensen-Shannon divergence, and
//! the negative log-likelihood of class targets, for batches of discrete
//! distributions: WGSL compute shaders through wgpu, with a CPU backend that
//! gives the same answers when no GPU is present.
//!
//! (Crate docs are completed in a later commit.)

#![warn(missing_docs)]

pub use wgpu;

mod batch;
mod context;
pub mod cost;
mod cpu;
mod error;
mod gpu;
mod job;
mod measure;
mod record;
mod resident;

pub use batch::{Batch, Targets, Values};
pub use context::{Backend, Context, ContextOptions, Output, Ran};
pub use error::{Arg, BadValue, Error, Result};
pub use measure::{
    Base, DEFAULT_TOLERANCE, Form, Measure, NllOptions, Normalization, Options, Reduction,
};
pub use record::{RECORD_SIZE, Record, Status};
pub use resident::{GpuBatch, GpuOutput, GpuTargets, decode_output, output_bytes};
