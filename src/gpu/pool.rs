//! Buffers reused across host-path calls, keyed by usage and size class.
//!
//! A call takes what it needs from the pool into a [`Scratch`] and gives it all
//! back when the call is over (its results read back), so a buffer is never
//! reused while a submission may still touch it. The GPU-resident path records
//! into the caller's encoder and cannot know when that work ends: it gets fresh
//! buffers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Buffers kept per (usage, size class): enough for a call and one in flight.
const KEEP: usize = 4;

#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Mutex<HashMap<(u32, u64), Vec<wgpu::Buffer>>>,
}

/// Size classes: 8 per octave (at most 12.5% larger than asked), from 256 bytes.
fn class(size: u64) -> u64 {
    let size = size.max(256);
    let octave = 1u64 << (63 - size.leading_zeros());
    let step = octave / 8;
    size.div_ceil(step) * step
}

impl Pool {
    fn take(
        &self,
        device: &wgpu::Device,
        label: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let size = class(size).min(device.limits().max_buffer_size.max(size));
        let key = (usage.bits(), size);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = free.get_mut(&key).and_then(Vec::pop) {
            return b;
        }
        drop(free);
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    fn give(&self, buffers: Vec<wgpu::Buffer>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        for b in buffers {
            let list = free.entry((b.usage().bits(), b.size())).or_default();
            if list.len() < KEEP {
                list.push(b);
            }
        }
    }
}

/// The buffers of one call: pooled (host path) or fresh (GPU-resident path).
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

    /// A buffer of at least `size` bytes; it lives until this scratch is dropped.
    pub(crate) fn buffer(
        &mut self,
        device: &wgpu::Device,
        label: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let b = match &self.pool {
            Some(p) => p.take(device, label, size, usage),
            None => device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(4),
                usage,
                mapped_at_creation: false,
            }),
        };
        self.taken.push(b.clone());
        b
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
