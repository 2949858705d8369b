//! Host-to-device uploads with bounded host memory.
//!
//! `Queue::write_buffer` stages a write of n bytes in a fresh n-byte buffer
//! that lives until the next submission completes: uploading a 2 GiB input
//! that way holds a second 2 GiB on the host. Inputs above [`RING_CHUNK`]
//! go instead through a ring of [`RING_SLOTS`] mappable buffers: a chunk is
//! written (converted, for f64) into one slot while the copies of the slots
//! before it run on the queue, each slot reused once its copy is done. The
//! host memory an upload adds is at most `RING_SLOTS × RING_CHUNK`
//! (48 MiB) whatever the input's size. Where host and device share memory
//! (an integrated GPU or a software adapter whose device has
//! `MAPPABLE_PRIMARY_BUFFERS`), the input is written straight into the mapped
//! storage buffer: no staging at all.

use crate::batch::Data;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::pool::Scratch;
use std::time::Instant;

/// Bytes of one ring slot; inputs up to this size take `write_buffer`.
pub(crate) const RING_CHUNK: u64 = 16 << 20;
/// Slots in the ring: one being filled, two on the queue.
pub(crate) const RING_SLOTS: usize = 3;

/// What an upload reads: bytes as they are, or f64 values narrowed to f32.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    Bytes(&'a [u8]),
    F64(&'a [f64]),
}

impl<'a> Source<'a> {
    pub(crate) fn of(data: Data<'a>) -> Source<'a> {
        match data {
            Data::F32(v) => Source::Bytes(bytemuck::cast_slice(v)),
            Data::F64(v) => Source::F64(v),
        }
    }

    /// Bytes on the device.
    fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::F64(v) => v.len() as u64 * 4,
        }
    }

    /// Writes device bytes `[at, at + dst.len())` into `dst` (`at` and the
    /// length multiples of 4).
    fn fill(&self, at: u64, dst: &mut [u8]) {
        match self {
            Source::Bytes(b) => dst.copy_from_slice(&b[at as usize..at as usize + dst.len()]),
            Source::F64(v) => {
                let src = &v[at as usize / 4..(at as usize + dst.len()) / 4];
                match bytemuck::try_cast_slice_mut::<u8, f32>(dst) {
                    Ok(d) => crate::batch::convert(src, d),
                    // a mapping is at least 8-byte aligned in practice; never assume it
                    Err(_) => {
                        for (d, &s) in dst.chunks_exact_mut(4).zip(src) {
                            d.copy_from_slice(&crate::batch::narrow(s).to_ne_bytes());
                        }
                    }
                }
            }
        }
    }
}

/// Maps `buf[..size]` for writing once the queue is done with it (its last
/// use is `after`, if any) and waits for the map.
fn map_for_write(
    gpu: &Gpu,
    buf: &wgpu::Buffer,
    size: u64,
    after: Option<wgpu::SubmissionIndex>,
) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    buf.slice(..size).map_async(wgpu::MapMode::Write, move |r| {
        let _ = tx.send(r);
    });
    let poll = wgpu::PollType::Wait {
        submission_index: after,
        timeout: None,
    };
    gpu.device
        .poll(poll)
        .map_err(|e| Error::Device(format!("waiting for an upload slot: {e}")))?;
    let r = match rx.try_recv() {
        Ok(r) => r,
        // not resolved by that poll (a buffer with no submission): wait for all
        Err(_) => {
            gpu.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Device(format!("waiting for an upload slot: {e}")))?;
            rx.try_recv()
                .map_err(|_| Error::Device("an upload buffer was never mapped".into()))?
        }
    };
    r.map_err(|e| Error::Device(format!("mapping an upload buffer: {e}")))
}

/// Bytes of f64 input narrowed at a time before they are copied into a
/// mapping (wgpu's mapped views are write-only: no conversion in place).
const CONVERT_BYTES: u64 = 1 << 20;

/// Writes `src[at..at + size]` into the mapped `buf` at `dst_at` and unmaps.
fn write_mapped(
    buf: &wgpu::Buffer,
    dst_at: u64,
    src: &Source<'_>,
    at: u64,
    size: u64,
) -> Result<()> {
    {
        let mut view = buf
            .slice(dst_at..dst_at + size)
            .get_mapped_range_mut()
            .map_err(|e| Error::Device(format!("writing an upload buffer: {e}")))?;
        match src {
            Source::Bytes(b) => view.copy_from_slice(&b[at as usize..(at + size) as usize]),
            Source::F64(_) => {
                let len = CONVERT_BYTES.min(size) as usize;
                let mut tmp = crate::error::try_vec(len, "an f64 upload chunk")?;
                tmp.resize(len, 0u8);
                for o in (0..size).step_by(CONVERT_BYTES as usize) {
                    let n = CONVERT_BYTES.min(size - o);
                    let piece = &mut tmp[..n as usize];
                    src.fill(at + o, piece);
                    view.slice(o as usize..(o + n) as usize)
                        .copy_from_slice(piece);
                }
            }
        }
    }
    buf.unmap();
    Ok(())
}

impl Gpu {
    /// A storage buffer holding `src` (at least 4 bytes), taken from `scratch`.
    pub(crate) fn upload_source(
        &self,
        scratch: &mut Scratch,
        label: &'static str,
        src: Source<'_>,
    ) -> Result<wgpu::Buffer> {
        let bytes = src.len();
        if self.unified && bytes > 0 {
            let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::MAP_WRITE;
            let buf = scratch.buffer(&self.device, label, bytes.max(4), usage)?;
            // f64 converts straight into the mapping: no staging, no f32 copy
            map_for_write(self, &buf, bytes, None)?;
            write_mapped(&buf, 0, &src, 0, bytes)?;
            return Ok(buf);
        }
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let dst = scratch.buffer(&self.device, label, bytes.max(4), usage)?;
        if bytes == 0 {
            return Ok(dst);
        }
        if bytes <= RING_CHUNK {
            let mut tmp;
            let b = match src {
                Source::Bytes(b) => b,
                Source::F64(_) => {
                    tmp = crate::error::try_vec(bytes as usize, "an f64 upload chunk")?;
                    tmp.resize(bytes as usize, 0u8);
                    src.fill(0, &mut tmp);
                    &tmp[..]
                }
            };
            self.queue.write_buffer(&dst, 0, b);
            return Ok(dst);
        }
        self.upload_ring(scratch, &dst, &src)?;
        Ok(dst)
    }

    /// [`Gpu::upload_source`] through the staging ring.
    fn upload_ring(
        &self,
        scratch: &mut Scratch,
        dst: &wgpu::Buffer,
        src: &Source<'_>,
    ) -> Result<()> {
        let usage = wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC;
        let mut slots: Vec<(wgpu::Buffer, Option<wgpu::SubmissionIndex>)> = Vec::new();
        let bytes = src.len();
        for (k, at) in (0..bytes).step_by(RING_CHUNK as usize).enumerate() {
            let size = RING_CHUNK.min(bytes - at);
            if slots.len() < RING_SLOTS {
                let b = scratch.buffer(&self.device, "kullback.upload", RING_CHUNK, usage)?;
                slots.push((b, None));
            }
            let (slot, last) = &mut slots[k % RING_SLOTS];
            map_for_write(self, slot, size, last.take())?;
            write_mapped(slot, 0, src, at, size)?;
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("kullback.upload"),
                });
            enc.copy_buffer_to_buffer(slot, 0, dst, at, size);
            *last = Some(self.queue.submit([enc.finish()]));
        }
        Ok(())
    }
}

/// Bytes of the upload probe.
const UPLOAD_PROBE_BYTES: u64 = 8 << 20;

/// Host-to-device bytes per second of `gpu`: the faster of two timed
/// `write_buffer`s of 8 MiB (submitted and waited for); `None` if the device
/// refused.
pub(crate) fn probe_rate(gpu: &Gpu) -> Option<f64> {
    let dst = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("kullback.upload-probe"),
        size: UPLOAD_PROBE_BYTES,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let host = vec![0u8; UPLOAD_PROBE_BYTES as usize];
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let t = Instant::now();
        gpu.queue.write_buffer(&dst, 0, &host);
        let index = gpu.queue.submit([]);
        gpu.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .ok()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let rate = UPLOAD_PROBE_BYTES as f64 / best;
    log::debug!("kullback: upload probe: {:.2} GB/s", rate / 1e9);
    Some(rate)
}
