//! Copying results back to the host.

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Finishes `enc` with a copy of `size` bytes of `src` at `offset` into a
/// mappable buffer, submits it (the call's one submission), waits and returns
/// the bytes as `T`s.
pub(crate) fn read<T: bytemuck::Pod>(
    gpu: &Gpu,
    mut enc: wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Vec<T>> {
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("kullback.readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
    let index = gpu.queue.submit([enc.finish()]);
    let slice = staging.slice(..);
    let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })
        .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
    match pollster::block_on(rx.receive()) {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(Error::Device(format!("mapping the results: {e}"))),
        None => return Err(Error::Device("the map callback was dropped".into())),
    }
    let out = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| Error::Device(format!("reading the results: {e}")))?;
        bytemuck::cast_slice::<u8, T>(&view).to_vec()
    };
    staging.unmap();
    Ok(out)
}
