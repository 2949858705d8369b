//! Uniform parameter blocks, paired with the WGSL structs of the same name.

/// Every dispatch gets its own 256-byte slot in one uniform buffer (dynamic
/// offset): `queue.write_buffer` lands before the whole next submission, so
/// dispatches recorded together must never share a slot.
pub(crate) const SLOT: u64 = 256;

/// The twin of `struct Params` in `shaders/rows.wgsl` (layouts compared by a
/// test in `gpu::wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RowParams {
    pub rows: u32,
    pub cols: u32,
    pub row0: u32,
    pub col0: u32,
    pub chunk_rows: u32,
    pub chunk_cols: u32,
    pub threads_per_row: u32,
    pub blocks_per_row: u32,
    pub chunk_blocks: u32,
    pub item_count: u32,
    pub p_lead: u32,
    pub q_lead: u32,
    pub p_stride: u32,
    pub q_stride: u32,
    pub norm_at: u32,
    pub tolerance: f32,
    pub inv_ln_base: f32,
    pub ignore_bits: u32,
    pub has_ignore: u32,
    pub smoothing: f32,
    pub weights_at: u32,
    pub inf_bits: u32,
    pub nan_bits: u32,
    pub targets_signed: u32,
}

/// The twin of `struct Params` in `shaders/total.wgsl` (layouts compared by a
/// test in `gpu::wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TotalParams {
    pub count: u32,
    pub from_rows: u32,
    pub last: u32,
    pub mean: u32,
    pub weighted: u32,
    pub rows_base: u32,
    pub inf_bits: u32,
    pub nan_bits: u32,
}

/// Size of a partial row state (`struct State` in rows.wgsl): 10 words.
pub(crate) const STATE_SIZE: u64 = 40;
/// Size of a batch-total state (`struct Total` in total.wgsl): 11 words.
pub(crate) const TOTAL_SIZE: u64 = 44;

/// Uniform slots, filled in recording order and uploaded once.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    bytes: Vec<u8>,
}

impl Slots {
    /// Appends one parameter block; returns its dynamic offset.
    pub(crate) fn push<T: bytemuck::Pod>(&mut self, p: &T) -> u32 {
        let at = self.bytes.len();
        self.bytes.resize(at + SLOT as usize, 0);
        let b = bytemuck::bytes_of(p);
        self.bytes[at..at + b.len()].copy_from_slice(b);
        at as u32
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
