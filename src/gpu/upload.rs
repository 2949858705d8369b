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

/// What an upload reads: bytes as they are, half values as they are (two
/// per u32, the last word padded with zeros), or f64 values narrowed to f32.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    Bytes(&'a [u8]),
    /// The bytes of f16 or bf16 values: the kernels widen them where they
    /// read them, so the upload moves half the bytes of f32.
    Half(&'a [u8]),
    /// Values converted to f32 (f64 narrowed, half widened) as they are written.
    Convert(Data<'a>),
}

impl<'a> Source<'a> {
    /// `data` as f32 on the device.
    pub(crate) fn of(data: Data<'a>) -> Source<'a> {
        match data {
            Data::F32(v) => Source::Bytes(bytemuck::cast_slice(v)),
            other => Source::Convert(other),
        }
    }

    /// `data` as f32, or half values as they are (for kernels that widen
    /// them: see [`Data::dtype`]).
    pub(crate) fn stored(data: Data<'a>) -> Source<'a> {
        match data {
            Data::F16(v) => Source::Half(bytemuck::cast_slice(v)),
            Data::BF16(v) => Source::Half(bytemuck::cast_slice(v)),
            other => Source::of(other),
        }
    }

    /// Bytes on the device.
    fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::Half(b) => (b.len() as u64).next_multiple_of(4),
            Source::Convert(d) => d.len() as u64 * 4,
        }
    }

    /// Writes device bytes `[at, at + dst.len())` into `dst` (`at` and the
    /// length multiples of 4).
    fn fill(&self, at: u64, dst: &mut [u8]) {
        match self {
            Source::Bytes(b) => dst.copy_from_slice(&b[at as usize..at as usize + dst.len()]),
            Source::Half(b) => {
                // the padding past the last value is zeros
                let from = (at as usize).min(b.len());
                let to = (at as usize + dst.len()).min(b.len());
                let (data, pad) = dst.split_at_mut(to - from);
                data.copy_from_slice(&b[from..to]);
                pad.fill(0);
            }
            Source::Convert(d) => {
                let range = at as usize / 4..(at as usize + dst.len()) / 4;
                match bytemuck::try_cast_slice_mut::<u8, f32>(dst) {
                    Ok(out) => d.convert_range(range, out),
                    // host buffers here are Vec<u8>: never assume their alignment
                    Err(_) => {
                        let mut tmp = [0f32; 256];
                        for (k, piece) in dst.chunks_mut(1024).enumerate() {
                            let n = piece.len() / 4;
                            let r0 = range.start + k * 256;
                            d.convert_range(r0..r0 + n, &mut tmp[..n]);
                            piece.copy_from_slice(bytemuck::cast_slice(&tmp[..n]));
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
    let mut tries = 0;
    loop {
        match map_once(gpu, buf, size, after.clone()) {
            Err(e) if tries < MAP_TRIES => {
                tries += 1;
                log::debug!("kullback: {e}; mapping again ({tries})");
                std::thread::yield_now();
            }
            r => return r,
        }
    }
}

/// How long a map may take once the queue is done with the buffer.
const MAP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Maps retried after a failed one: under concurrent calls on lavapipe a map
/// callback occasionally reports a failure that the next attempt does not.
const MAP_TRIES: u32 = 4;

fn map_once(
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
    let polled = |p| {
        gpu.device
            .poll(p)
            .map(|_| ())
            .map_err(|e| Error::Device(format!("waiting for an upload slot: {e}")))
    };
    polled(poll)?;
    // The callback may be fired by another thread's poll, which can still be
    // on its way to it when ours returns: wait for it, polling again now and
    // then, rather than expect it at once.
    let deadline = Instant::now() + MAP_WAIT;
    let r = loop {
        match rx.recv_timeout(std::time::Duration::from_millis(1)) {
            Ok(r) => break r,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Device("an upload buffer's map was dropped".into()));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                polled(wgpu::PollType::Poll)?;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(Error::Device(format!(
                    "an upload buffer was not mapped within {} s",
                    MAP_WAIT.as_secs()
                )));
            }
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
            Source::Half(_) | Source::Convert(_) => {
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
            match map_for_write(self, &buf, bytes, None) {
                Ok(()) => {
                    write_mapped(&buf, 0, &src, 0, bytes)?;
                    return Ok(buf);
                }
                // a buffer whose map failed never goes back to the pool (its
                // state is unknown); this upload takes the staged path
                Err(e) => {
                    scratch.detach(&buf);
                    log::warn!("kullback: {e}; uploading through staging instead");
                }
            }
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
                Source::Half(b) if b.len() as u64 == bytes => b,
                Source::Half(_) | Source::Convert(_) => {
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
            if let Err(e) = map_for_write(self, slot, size, last.take()) {
                // a slot whose map failed is dropped, not pooled: one fresh try
                scratch.detach(slot);
                log::warn!("kullback: {e}; replacing the upload slot");
                *slot = scratch.buffer(&self.device, "kullback.upload", RING_CHUNK, usage)?;
                map_for_write(self, slot, size, None)?;
            }
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
