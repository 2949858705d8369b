//! Copying results back to the host.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::pool::Scratch;
use crate::record::Record;

/// A copy into a mappable buffer, submitted, with its map request made.
pub(crate) struct Reading {
    pub(crate) index: wgpu::SubmissionIndex,
    staging: wgpu::Buffer,
    size: u64,
    rx: futures_intrusive::channel::shared::OneshotReceiver<Result<(), wgpu::BufferAsyncError>>,
}

/// Finishes `enc` with a copy of `size` bytes of `src` at `offset` into a
/// mappable buffer, submits it (the call's one submission) and asks for the
/// map. The mappable buffer leaves `scratch` until [`Reading::finish`] has
/// unmapped it: a reading dropped before that (a dropped future) drops the
/// buffer with it rather than pooling a buffer whose map is pending.
pub(crate) fn start(
    gpu: &Gpu,
    scratch: &mut Scratch,
    mut enc: wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Reading> {
    let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
    let staging = scratch.buffer(&gpu.device, "kullback.readback", size, usage)?;
    scratch.detach(&staging);
    enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
    let index = gpu.queue.submit([enc.finish()]);
    let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
    staging
        .slice(..size)
        .map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
    Ok(Reading {
        index,
        staging,
        size,
        rx,
    })
}

impl Reading {
    /// Waits for the map callback (someone must poll the device) and copies
    /// the records out; gives back the unmapped buffer.
    pub(crate) async fn finish(self) -> Result<(Vec<Record>, wgpu::Buffer)> {
        let staging = self.staging;
        match self.rx.receive().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::Device(format!("mapping the results: {e}"))),
            None => return Err(Error::Device("the map callback was dropped".into())),
        }
        let out = {
            let view = staging
                .slice(..self.size)
                .get_mapped_range()
                .map_err(|e| Error::Device(format!("reading the results: {e}")))?;
            let recs = bytemuck::cast_slice::<u8, Record>(&view);
            let mut out = crate::error::try_vec(recs.len(), "the records read back")?;
            out.extend_from_slice(recs);
            out
        };
        staging.unmap();
        Ok((out, staging))
    }
}
