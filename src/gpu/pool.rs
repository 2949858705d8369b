//! Buffers reused across calls, keyed by usage and size class, within a byte cap.
//!
//! A call takes what it needs from a pool into a [`Scratch`] and gives it all
//! back when the call is over, so a buffer is never handed to two calls at
//! once. The host path's pool belongs to the context (its buffers come back
//! once the results are read); a [`Workspace`](crate::Workspace) is a pool the
//! caller owns for the GPU-resident path (its buffers come back when the
//! encode returns: the queue orders the next submission after the last).
//! What a pool keeps is capped in bytes; the rest is freed as it comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Buffers kept per (usage, size class): enough for a call and one in flight.
const KEEP: usize = 4;

/// Bytes a pool keeps by default (see `ContextOptions::pool_bytes`).
pub(crate) const DEFAULT_POOL_BYTES: u64 = 256 << 20;

#[derive(Debug)]
pub(crate) struct Pool {
    free: Mutex<Free>,
    cap: u64,
}

#[derive(Debug, Default)]
struct Free {
    lists: HashMap<(u32, u64), Vec<wgpu::Buffer>>,
    bytes: u64,
}

/// Size classes: 8 per octave (at most 12.5% larger than asked), from 256 bytes.
fn class(size: u64) -> u64 {
    let size = size.max(256);
    let octave = 1u64 << (63 - size.leading_zeros());
    let step = octave / 8;
    size.div_ceil(step) * step
}

impl Pool {
    /// A pool that keeps at most `cap` bytes of free buffers.
    pub(crate) fn new(cap: u64) -> Pool {
        Pool {
            free: Mutex::new(Free::default()),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, size: u64, usage: wgpu::BufferUsages) -> Option<wgpu::Buffer> {
        let mut free = self.lock();
        let b = free
            .lists
            .get_mut(&(usage.bits(), size))
            .and_then(Vec::pop)?;
        free.bytes -= b.size();
        Some(b)
    }

    fn give(&self, buffers: Vec<wgpu::Buffer>) {
        let mut free = self.lock();
        for b in buffers {
            let size = b.size();
            let fits = free.bytes + size <= self.cap;
            let list = free.lists.entry((b.usage().bits(), size)).or_default();
            if fits && list.len() < KEEP {
                list.push(b);
                free.bytes += size;
            }
            // otherwise dropped here: wgpu frees it once no submission uses it
        }
    }

    /// Frees every kept buffer.
    pub(crate) fn trim(&self) {
        let mut free = self.lock();
        free.lists.clear();
        free.bytes = 0;
    }

    /// Bytes of the buffers kept now.
    pub(crate) fn kept_bytes(&self) -> u64 {
        self.lock().bytes
    }
}

/// The buffers of one call, from a pool or fresh.
pub(crate) struct Scratch {
    pool: Option<Arc<Pool>>,
    taken: Vec<wgpu::Buffer>,
}

impl Scratch {
    pub(crate) fn pooled(pool: &Arc<Pool>) -> Scratch {
        Scratch {
            pool: Some(pool.clone()),
            taken: Vec::new(),
        }
    }

    pub(crate) fn fresh() -> Scratch {
        Scratch {
            pool: None,
            taken: Vec::new(),
        }
    }

    /// A buffer of at least `size` bytes; it lives until this scratch is
    /// dropped. A device that is out of memory gives [`Error::OutOfMemory`]
    /// (the caller holds an out-of-memory error scope: see `gpu::Scoped`).
    pub(crate) fn buffer(
        &mut self,
        device: &wgpu::Device,
        label: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let max = device.limits().max_buffer_size;
        if size > max {
            return Err(Error::TooLarge {
                what: format!("{label}: bytes of one buffer"),
                size,
                limit: max,
            });
        }
        let size = match &self.pool {
            Some(_) => class(size).min(max.max(size)),
            None => size.max(4),
        };
        let pooled = self.pool.as_ref().and_then(|p| p.take(size, usage));
        let b = match pooled {
            Some(b) => b,
            None => device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            }),
        };
        self.taken.push(b.clone());
        Ok(b)
    }

    /// Stops tracking `buffer`: it is dropped with its last handle instead of
    /// going back to the pool (a readback buffer whose map may still be pending).
    pub(crate) fn detach(&mut self, buffer: &wgpu::Buffer) {
        self.taken.retain(|b| b != buffer);
    }

    /// Tracks `buffer` again (a readback buffer, unmapped).
    pub(crate) fn attach(&mut self, buffer: wgpu::Buffer) {
        self.taken.push(buffer);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.give(std::mem::take(&mut self.taken));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::class;

    #[test]
    fn size_classes_waste_at_most_an_eighth() {
        for s in [
            1u64,
            255,
            256,
            257,
            1000,
            4096,
            4097,
            1 << 20,
            (1 << 20) + 1,
            134_217_728 + 5,
        ] {
            let c = class(s);
            assert!(c >= s && c >= 256, "{s} -> {c}");
            assert!(c <= (s.max(256) as f64 * 1.126) as u64 + 1, "{s} -> {c}");
        }
        assert_eq!(class(1000), class(1001));
    }
}
