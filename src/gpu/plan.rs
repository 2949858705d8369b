//! Work planning: how a rows × cols batch maps onto workgroups, blocks and
//! binding-sized chunks. Pure functions of the shape and the limits.

/// Threads per workgroup (`WG` in shaders/common.wgsl).
pub(crate) const WG: u32 = 256;
/// Elements per thread per block (`EPT` in shaders/common.wgsl).
pub(crate) const EPT: u32 = 32;
/// Columns one workgroup covers on a long row.
pub(crate) const BLOCK: u32 = WG * EPT;
/// The smallest binding cap we plan with: one block plus alignment slack.
pub(crate) const MIN_CAP_BYTES: u64 = 64 * 1024;

/// Bytes of the largest binding the kernels index: every u32 element index
/// they form (lead + row * stride + col, plus up to a block past a chunk's
/// end before the bound check) stays below 2^32 whatever the adapter allows
/// (Metal reports bindings beyond 16 GiB).
pub(crate) const MAX_INDEXED_BYTES: u64 = ((1u64 << 32) - (1 << 24)) * 4;

/// The bytes of one binding we plan with on a device with `limits`.
pub(crate) fn binding_limit(limits: &wgpu::Limits) -> u64 {
    limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        .min(MAX_INDEXED_BYTES)
}

/// How rows are spread over workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Threads per row T (a power of two ≤ WG); WG / T rows share a workgroup.
    pub threads_per_row: u32,
    /// Column blocks per row (1: a row is finished in one workgroup).
    pub blocks_per_row: u32,
}

impl Layout {
    pub(crate) fn new(cols: u32) -> Layout {
        if cols > BLOCK {
            return Layout {
                threads_per_row: WG,
                blocks_per_row: cols.div_ceil(BLOCK),
            };
        }
        let t = cols.div_ceil(EPT).next_power_of_two().clamp(1, WG);
        Layout {
            threads_per_row: t,
            blocks_per_row: 1,
        }
    }
    pub(crate) fn rows_per_group(&self) -> u32 {
        WG / self.threads_per_row
    }
    /// Columns one workgroup covers in a row.
    pub(crate) fn span(&self) -> u32 {
        self.threads_per_row * EPT
    }
}

/// A part of the batch whose inputs fit one binding: whole rows, or a run of
/// column blocks of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub row0: u32,
    pub rows: u32,
    pub col0: u32,
    pub cols: u32,
    /// Column blocks per row in this chunk.
    pub blocks: u32,
    /// Workgroups with work.
    pub items: u32,
}

/// Splits the batch so that each operand's binding stays within `cap_elems`
/// elements (alignment slack already taken off by the caller).
pub(crate) fn chunks(rows: u32, cols: u32, layout: Layout, cap_elems: u64) -> Vec<Chunk> {
    let span = layout.span();
    let mut out = Vec::new();
    if cols as u64 <= cap_elems {
        let per = (cap_elems / cols as u64).min(rows as u64) as u32;
        // keep row groups whole so that no workgroup straddles two chunks
        let rpg = layout.rows_per_group();
        let per = if per >= rpg {
            per / rpg * rpg
        } else {
            per.max(1)
        };
        let mut r = 0;
        while r < rows {
            let n = per.min(rows - r);
            let groups = n.div_ceil(rpg);
            out.push(Chunk {
                row0: r,
                rows: n,
                col0: 0,
                cols,
                blocks: layout.blocks_per_row,
                items: groups * layout.blocks_per_row,
            });
            r += n;
        }
    } else {
        // a row is larger than a binding: runs of whole blocks of one row
        let per_cols = (cap_elems / span as u64).max(1) as u32 * span;
        for r in 0..rows {
            let mut c = 0;
            while c < cols {
                let n = per_cols.min(cols - c);
                let blocks = n.div_ceil(span);
                out.push(Chunk {
                    row0: r,
                    rows: 1,
                    col0: c,
                    cols: n,
                    blocks,
                    items: blocks,
                });
                c += n;
            }
        }
    }
    out
}

/// A 2-D grid for `items` workgroups under the per-dimension limit.
pub(crate) fn grid(items: u32, max_dim: u32) -> (u32, u32) {
    let x = items.clamp(1, max_dim);
    (x, items.div_ceil(x).max(1))
}

/// The element range of one operand that a chunk reads, as a binding
/// (`offset` aligned) plus the lead of the chunk's first element in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub offset_elems: u64,
    pub size_elems: u64,
    pub lead: u32,
}

/// `stride` is the operand's row stride (0 for one broadcast row);
/// `align_elems` the storage offset alignment in elements.
pub(crate) fn range(chunk: &Chunk, stride: u64, align_elems: u64) -> Range {
    let first = chunk.row0 as u64 * stride + chunk.col0 as u64;
    let end = (chunk.row0 + chunk.rows - 1) as u64 * stride + chunk.col0 as u64 + chunk.cols as u64;
    let offset = first / align_elems * align_elems;
    Range {
        offset_elems: offset,
        size_elems: end - offset,
        lead: (first - offset) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_short_and_long_rows() {
        assert_eq!(Layout::new(1).threads_per_row, 1);
        assert_eq!(Layout::new(5).threads_per_row, 1);
        assert_eq!(Layout::new(16).threads_per_row, 1);
        assert_eq!(Layout::new(100).threads_per_row, 4);
        assert_eq!(Layout::new(257).threads_per_row, 16);
        assert_eq!(
            Layout::new(8192),
            Layout {
                threads_per_row: 256,
                blocks_per_row: 1
            }
        );
        assert_eq!(
            Layout::new(8193),
            Layout {
                threads_per_row: 256,
                blocks_per_row: 2
            }
        );
        assert_eq!(Layout::new(1_000_003).blocks_per_row, 123);
    }

    #[test]
    fn chunks_cover_every_element_once() {
        for &(rows, cols, cap) in &[
            (70_001u32, 5u32, 1u64 << 30),
            (70_001, 5, 4096),
            (3, 1_000_003, 1 << 30),
            (3, 1_000_003, 20_000),
            (7, 3000, 3000),
            (1, 1, 4096),
        ] {
            let l = Layout::new(cols);
            let cs = chunks(rows, cols, l, cap);
            let mut seen = vec![0u8; (rows as usize) * (cols as usize)];
            for c in &cs {
                let r = range(c, cols as u64, 64);
                assert!(r.size_elems <= cap + 64, "{c:?} {r:?}");
                assert!(c.col0 % l.span() == 0);
                for row in c.row0..c.row0 + c.rows {
                    for col in c.col0..c.col0 + c.cols {
                        seen[(row * cols + col) as usize] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{rows}x{cols} cap {cap}");
        }
    }

    /// A synthetic 64 GiB binding limit (lavapipe cannot report one): the
    /// planned bindings keep every u32 index a kernel forms below 2^32.
    #[test]
    fn indices_stay_below_2_pow_32_under_a_64_gib_limit() {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 64 << 30,
            max_buffer_size: 64 << 30,
            ..wgpu::Limits::default()
        };
        let cap = binding_limit(&limits);
        assert!(cap <= MAX_INDEXED_BYTES);
        let align_elems = 64;
        // as encode() derives it
        let cap_elems = (cap / 4).saturating_sub(align_elems).max(BLOCK as u64);
        for &(rows, cols) in &[
            (1u32, u32::MAX),
            (3, 4_000_000_000),
            (1 << 20, 1 << 14),
            (u32::MAX / 8, 8),
            (5, 3_000_000_001),
        ] {
            let l = Layout::new(cols);
            let cs = chunks(rows, cols, l, cap_elems);
            let mut covered = 0u64;
            for c in &cs {
                let r = range(c, cols as u64, align_elems);
                // the last element a thread may index before its bound check
                let top = r.lead as u64
                    + (c.rows as u64 - 1) * cols as u64
                    + c.cols as u64
                    + l.span() as u64;
                assert!(top < 1 << 32, "{rows}x{cols} {c:?}: index {top}");
                assert!(r.size_elems * 4 <= cap, "{rows}x{cols} {c:?}");
                covered += c.rows as u64 * c.cols as u64;
            }
            assert_eq!(covered, rows as u64 * cols as u64);
        }
    }

    #[test]
    fn grid_respects_dimension_limit() {
        assert_eq!(grid(70_001, 65_535), (65_535, 2));
        assert_eq!(grid(1, 65_535), (1, 1));
        assert_eq!(grid(0, 65_535), (1, 1));
    }
}
