//! All pairs on the GPU (placeholder while the kernels are written).
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::pairs::{PairJob, Tile, TileShape};

pub(crate) fn full(_g: &Gpu, _job: &PairJob<'_>, _out: &mut [f32]) -> Result<()> {
    Err(Error::Unsupported("pairwise on the GPU".into()))
}
pub(crate) fn top_k(
    _g: &Gpu,
    _job: &PairJob<'_>,
    _k: usize,
    _x: bool,
    _v: &mut [f32],
    _i: &mut [u32],
) -> Result<()> {
    Err(Error::Unsupported("pairwise on the GPU".into()))
}
pub(crate) fn tiles<E: From<Error>>(
    _g: &Gpu,
    _job: &PairJob<'_>,
    _s: TileShape,
    _f: &mut dyn FnMut(Tile<'_>) -> Result<(), E>,
) -> Result<(), E> {
    Err(Error::Unsupported("pairwise on the GPU".into()).into())
}
