//! All pairs on the GPU: the kernels of `shaders/pairwise.wgsl` planned
//! over binding-sized regions and recorded.
//!
//! - **Preparation**: each argument's rows are read once (`prep_stats`, then
//!   `prep_write`, per row and column chunk) into *regions* of at most one
//!   binding: the fields of each element (k-major), four bit masks for the
//!   zero rules, each row's flags. Rows whose fields do not fit one binding
//!   are cut into column chunks (the same for both arguments), the rows into
//!   groups of regions. Each row's status (a [`Record`]: code, column, sum)
//!   goes to a status buffer.
//! - **Tiles**: `tile_main` over every (p region, q region) pair and output
//!   sub-block whose window fits one binding; with column chunks the sums
//!   are carried between them in a scratch binding (sum, compensation, hit).
//! - **Nearest k**: `topk_main` over bands of the matrix, merging each
//!   band's candidates into the lists so far.
//!
//! Four storage buffers per kernel at most, no optional feature: the kernels
//! run on `Limits::downlevel_defaults()` devices (16 KiB of workgroup memory:
//! the tiles use 12 KiB, the nearest-k lists 4 KiB).
//!
//! The host path uploads the inputs, prepares them, reads back the statuses
//! (a bad row is the same [`Error`] as on the CPU, before any tile), then
//! computes the matrix in bands of at most [`BAND_BYTES`], two in flight:
//! the band on the device while the previous one is copied out. The
//! GPU-resident path records the same work into the caller's encoder.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::pool::Scratch;
use crate::measure::Measure;
use crate::pairs::{self, PairJob, RowMode, Side, Tile, TileShape};
use crate::record::{RECORD_SIZE, Record};
use crate::widen::Dtype;

/// Threads per row of the preparation kernels.
const PREP_WG: u32 = 64;
/// Pairs per tile side (`TILE` in the shader).
const TILE: u32 = 64;
/// Bytes of one band of the matrix on the device (the host path keeps two).
pub(crate) const BAND_BYTES: u64 = 32 << 20;
/// Columns per chunk at most: a dispatch's loops stay short (llvmpipe ends
/// a loop after 65,535 iterations, nested ones counted; a long dispatch is
/// also what a display driver's watchdog kills). Longer rows are chunked,
/// their sums carried from chunk to chunk.
const KC_MAX: u64 = 16384;
/// Columns of a band read by one nearest-k dispatch at most (its loop over
/// batches of 256 candidates, each with a sort, stays short as above).
const TOPK_COLS: u64 = 4096;

/// Codes shared with the shader (written into it by `gpu::wgsl`).
mod code {
    pub(super) const RM_PROBS: u32 = 0;
    pub(super) const RM_PROBS_DIV: u32 = 1;
    pub(super) const RM_LOG: u32 = 2;
    pub(super) const RM_LOG_NORM: u32 = 3;
    /// Region flags of a row: a zero element, a far one (a log value more
    /// than f32::MAX below its maximum), a weight below f32::MIN_POSITIVE,
    /// a bad row (its pairs are NaN).
    pub(super) const PF_ZERO: u32 = 1;
    pub(super) const PF_FAR: u32 = 2;
    pub(super) const PF_SMALL: u32 = 4;
    pub(super) const PF_BAD: u32 = 8;
}

/// The constants `gpu::wgsl` writes above shaders/pairwise.wgsl.
pub(crate) fn wgsl_constants() -> Vec<(&'static str, u32)> {
    vec![
        ("RM_PROBS", code::RM_PROBS),
        ("RM_PROBS_DIV", code::RM_PROBS_DIV),
        ("RM_LOG", code::RM_LOG),
        ("RM_LOG_NORM", code::RM_LOG_NORM),
        ("PF_ZERO", code::PF_ZERO),
        ("PF_FAR", code::PF_FAR),
        ("PF_SMALL", code::PF_SMALL),
        ("PF_BAD", code::PF_BAD),
        ("PREP_WG", PREP_WG),
        // one thread per list entry of the nearest-k kernel
        ("TOPK_WG", crate::pairs::MAX_TOP_K as u32),
    ]
}

/// The measure's code in the shader: the `M_<IDENT>` the measure table
/// generates, as in the rows kernel.
fn measure_code(m: Measure) -> u32 {
    crate::gpu::wgsl::code(m)
}

fn mode_code(m: RowMode) -> u32 {
    match m {
        RowMode::Probs => code::RM_PROBS,
        RowMode::ProbsDiv => code::RM_PROBS_DIV,
        RowMode::Log => code::RM_LOG,
        RowMode::LogNorm => code::RM_LOG_NORM,
    }
}

/// Fields per element (`FIELDS` in the shader).
fn field_count(m: Measure) -> u32 {
    match m {
        Measure::Js => 3,
        Measure::Kl | Measure::CrossEntropy => 2,
        _ => 1,
    }
}

/// The value's factor: the measure's sign or ½, over ln(base).
fn scale(m: Measure, ln_base: f64) -> f32 {
    let s = match m {
        Measure::Kl => 1.0,
        Measure::CrossEntropy => -1.0,
        _ => 0.5,
    };
    (s / ln_base) as f32
}

// ---------------------------------------------------------------- parameters

/// The twin of `struct PrepParams` in shaders/pairwise.wgsl (layouts compared
/// by a test below).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct PrepParams {
    rows: u32,
    cols: u32,
    row0: u32,
    col0: u32,
    raw_lead: u32,
    raw_stride: u32,
    region_rows: u32,
    mode: u32,
    is_q: u32,
    first: u32,
    check_sums: u32,
    tolerance: f32,
    norm_at: u32,
    status_at: u32,
    words: u32,
    field_len: u32,
    mask_at: u32,
    flags_at: u32,
    region_row0: u32,
    nan_bits: u32,
    tpr: u32,
    /// How the raw values are stored ([`Dtype::code`]; halves two per u32).
    dtype: u32,
}

/// The twin of `struct TileParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct TileParams {
    m: u32,
    n: u32,
    kc: u32,
    tiles_x: u32,
    p_rows: u32,
    q_rows: u32,
    p_row0: u32,
    q_row0: u32,
    p_field: u32,
    q_field: u32,
    p_mask_at: u32,
    q_mask_at: u32,
    p_flags_at: u32,
    q_flags_at: u32,
    words: u32,
    out_lead: u32,
    out_stride: u32,
    gi0: u32,
    gj0: u32,
    first: u32,
    last: u32,
    zero_diag: u32,
    scale: f32,
    inf_bits: u32,
    nan_bits: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

/// The twin of `struct TopParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct TopParams {
    rows: u32,
    cols: u32,
    col0: u32,
    k: u32,
    merge: u32,
    band_lead: u32,
    band_stride: u32,
    out_lead: u32,
    row0: u32,
    exclude_self: u32,
    pad0: u32,
    pad1: u32,
}

/// Bytes of a row's normaliser (`struct Norm`).
const NORM_SIZE: u64 = 32;
/// Bytes of a uniform slot (every dispatch has its own).
const SLOT: u64 = 256;

// ---------------------------------------------------------------- pipelines

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Entry {
    PrepStats,
    PrepWrite,
    Tile,
    Thin,
    Topk,
}

impl Entry {
    fn module(self) -> usize {
        match self {
            Entry::PrepStats | Entry::PrepWrite => 0,
            Entry::Tile | Entry::Thin => 1,
            Entry::Topk => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Entry::PrepStats => "prep_stats",
            Entry::PrepWrite => "prep_write",
            Entry::Tile => "tile_main",
            Entry::Thin => "thin_main",
            Entry::Topk => "topk_main",
        }
    }
}

/// The source of module `m` (prep, tile, topk) for a measure code and
/// symmetry: the two written as constants above the shared source.
fn module_source(m: usize, measure: u32, sym: bool) -> String {
    format!(
        "const MEASURE: u32 = {measure}u;\nconst SYM: bool = {sym};\n{}",
        crate::gpu::wgsl::PAIRWISE[m]
    )
}

/// The all-pairs layouts, and the modules and pipelines of one device
/// (built on first use, keyed by entry point, measure and symmetry).
#[derive(Debug)]
pub(crate) struct PairPipelines {
    bgls: [wgpu::BindGroupLayout; 3],
    layouts: [wgpu::PipelineLayout; 3],
    cache: Mutex<HashMap<(Entry, u32, bool), Arc<wgpu::ComputePipeline>>>,
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn uniform(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }
}

impl PairPipelines {
    fn new(device: &wgpu::Device) -> Result<PairPipelines> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let names = [
            "kullback.pairwise.prep",
            "kullback.pairwise.tile",
            "kullback.pairwise.topk",
        ];
        let entries: [&[wgpu::BindGroupLayoutEntry]; 3] = [
            // raw input, normalisers, region, statuses
            &[
                storage(0, true),
                storage(1, false),
                storage(2, false),
                storage(3, false),
                uniform(4),
            ],
            // p region, q region, output, carried sums
            &[
                storage(0, true),
                storage(1, true),
                storage(2, false),
                storage(3, false),
                uniform(4),
            ],
            // band, values, indices
            &[
                storage(0, true),
                storage(1, false),
                storage(2, false),
                uniform(3),
            ],
        ];
        let bgls = [0, 1, 2].map(|i| {
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(names[i]),
                entries: entries[i],
            })
        });
        let layouts = [0, 1, 2].map(|i| {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(names[i]),
                bind_group_layouts: &[Some(&bgls[i])],
                immediate_size: 0,
            })
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device(format!(
                "building kullback's all-pairs shaders: {e}"
            )));
        }
        Ok(PairPipelines {
            bgls,
            layouts,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The pipeline of `entry` for the measure code and symmetry.
    fn get(
        &self,
        device: &wgpu::Device,
        entry: Entry,
        measure: u32,
        sym: bool,
    ) -> Arc<wgpu::ComputePipeline> {
        // the first preparation pass and the nearest-k lists do not depend
        // on the measure: one pipeline each
        let key = match entry {
            Entry::Topk | Entry::PrepStats => (entry, 0, false),
            Entry::Tile | Entry::Thin => (entry, measure, sym),
            Entry::PrepWrite => (entry, measure, false),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&key) {
            return p.clone();
        }
        let m = entry.module();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(entry.name()),
            source: wgpu::ShaderSource::Wgsl(module_source(m, key.1, key.2).into()),
        });
        let p = Arc::new(
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry.name()),
                layout: Some(&self.layouts[m]),
                module: &module,
                entry_point: Some(entry.name()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            }),
        );
        cache.insert(key, p.clone());
        p
    }
}

/// The all-pairs pipelines of `gpu`, built once.
fn pipelines(gpu: &Gpu) -> Result<Arc<PairPipelines>> {
    if let Some(p) = gpu.pairwise.get() {
        return Ok(p.clone());
    }
    let p = Arc::new(PairPipelines::new(&gpu.device)?);
    let _ = gpu.pairwise.set(p);
    Ok(gpu
        .pairwise
        .get()
        .cloned()
        .unwrap_or_else(|| unreachable!("just set")))
}

/// Where a GPU keeps its all-pairs pipelines (a field of [`Gpu`]).
pub(crate) type PipelinesCell = OnceLock<Arc<PairPipelines>>;

// ---------------------------------------------------------------- planning

/// A window of `count` elements of `elem` bytes, starting at element
/// `first` of an array at byte `base` of a buffer, as a binding: (byte
/// offset in the buffer, a multiple of `align`; byte size; the lead in
/// elements of the array's element `first` in the binding). `base` must be
/// a multiple of gcd(elem, align) (an aligned offset is).
fn window(base: u64, first: u64, count: u64, elem: u64, align: u64) -> (u64, u64, u32) {
    let x = base + first * elem;
    let mut offset = x / align * align;
    while !(x - offset).is_multiple_of(elem) {
        offset -= align;
    }
    let lead = (x - offset) / elem;
    (offset, (lead + count.max(1)) * elem, lead as u32)
}

fn lcm(a: u64, b: u64) -> u64 {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// The shape of one region: `rows` × `cols` elements of `fields` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    rows: u32,
    cols: u32,
    words: u32,
    field_len: u32,
    mask_at: u32,
    flags_at: u32,
    total: u64,
}

fn geom(rows: u32, cols: u32, fields: u32) -> Geom {
    let words = cols.div_ceil(32);
    let field_len = rows * cols;
    let mask_at = fields * field_len;
    let flags_at = mask_at + 4 * words * rows;
    Geom {
        rows,
        cols,
        words,
        field_len,
        mask_at,
        flags_at,
        total: flags_at as u64 + rows as u64,
    }
}

/// Words of one row of a region of `cols` columns.
fn row_words(cols: u64, fields: u64) -> u64 {
    fields * cols + 4 * cols.div_ceil(32) + 1
}

/// Columns per chunk: every column when `want` rows of them fit a binding
/// of `cap_elems` words (and they are at most [`KC_MAX`]), else the largest
/// multiple of 32 that does. A region then holds a tile's rows (`want` =
/// 64, or all the rows there are) at least: regions of a row or two would
/// keep the tiles mostly idle.
fn chunk_cols(cols: u64, fields: u64, cap_elems: u64, want: u64) -> u64 {
    if row_words(cols, fields) * want <= cap_elems && cols <= KC_MAX {
        cols
    } else {
        ((cap_elems / want).saturating_sub(1) / (fields * 32 + 4) * 32).clamp(32, KC_MAX)
    }
}

/// How the call is cut to fit the device's bindings.
#[derive(Clone, Copy, Debug)]
struct Plan {
    cols: u32,
    /// Columns per chunk (the same for both arguments).
    kc: u32,
    chunks: u32,
    fields: u32,
    /// Elements of one binding (alignment slack taken off).
    cap_elems: u64,
    align: u64,
    /// Rows per region of p and of q.
    p_rc: u32,
    q_rc: u32,
    /// A small matrix (at most `THIN` × `THIN`): `thin_main` instead of tiles.
    /// Decided for the whole call, so that a pair's bits never depend on the
    /// band or tile that holds it.
    thin: bool,
}

/// Rows and columns of the matrices `thin_main` takes.
const THIN: u32 = 16;

impl Plan {
    fn new(gpu: &Gpu, cols: u32, fields: u32, p_rows: u32, q_rows: u32) -> Result<Plan> {
        let align = gpu.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        // a window of whole records and norms may start up to lcm(24, align)
        // bytes early: leave that much slack
        let cap_elems = (gpu.cap.saturating_sub(lcm(RECORD_SIZE, align) + 64)) / 4;
        let f = fields as u64;
        let want = (p_rows.max(q_rows) as u64).min(TILE as u64);
        let kc = chunk_cols(cols as u64, f, cap_elems, want);
        let per = row_words(kc, f);
        let rc = |rows: u32| (cap_elems / per).clamp(1, rows as u64) as u32;
        Ok(Plan {
            cols,
            kc: kc as u32,
            chunks: (cols as u64).div_ceil(kc) as u32,
            fields,
            cap_elems,
            align,
            p_rc: rc(p_rows),
            q_rc: rc(q_rows),
            thin: p_rows <= THIN && q_rows <= THIN,
        })
    }

    /// Columns of chunk `c` (and its first column).
    fn chunk(&self, c: u32) -> (u32, u32) {
        let c0 = c * self.kc;
        (c0, self.kc.min(self.cols - c0))
    }
}

/// One argument prepared on the device: a region per (row group, column
/// chunk), each row's normaliser and status.
struct DevSide {
    rows: u32,
    rc: u32,
    /// `regions[g * chunks + c]`.
    regions: Vec<wgpu::Buffer>,
    norms: wgpu::Buffer,
    status: wgpu::Buffer,
    status_offset: u64,
}

impl DevSide {
    fn groups(&self) -> u32 {
        self.rows.div_ceil(self.rc)
    }
    fn geom(&self, plan: &Plan, g: u32, c: u32) -> Geom {
        let rows = self.rc.min(self.rows - g * self.rc);
        geom(rows, plan.chunk(c).1, plan.fields)
    }
}

// ---------------------------------------------------------------- recording

/// One dispatch before its bind group exists.
struct Spec {
    entry: Entry,
    bindings: Vec<(wgpu::Buffer, u64, u64)>,
    params: Vec<u8>,
    grid: (u32, u32),
}

/// Dispatches collected in order, then built (uniform slots, bind groups,
/// pipelines) and recorded in one compute pass.
struct Recorder {
    specs: Vec<Spec>,
    measure: u32,
    sym: bool,
}

/// A 2-D grid for `items` workgroups under the per-dimension limit.
fn grid(items: u32, max_dim: u32) -> (u32, u32) {
    let x = items.clamp(1, max_dim);
    (x, items.div_ceil(x).max(1))
}

impl Recorder {
    fn push<T: bytemuck::Pod>(
        &mut self,
        entry: Entry,
        bindings: Vec<(wgpu::Buffer, u64, u64)>,
        params: &T,
        grid: (u32, u32),
    ) {
        self.specs.push(Spec {
            entry,
            bindings,
            params: bytemuck::bytes_of(params).to_vec(),
            grid,
        });
    }

    /// Makes the uniform buffer, bind groups and pipelines: nothing can fail
    /// once this returns.
    fn build(self, gpu: &Gpu, pipes: &PairPipelines, scratch: &mut Scratch) -> Result<Built> {
        let n = self.specs.len().max(1) as u64;
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        let params = scratch.buffer(&gpu.device, "kullback.pairwise.params", n * SLOT, usage)?;
        let mut bytes = vec![0u8; (n * SLOT) as usize];
        for (i, s) in self.specs.iter().enumerate() {
            let at = i * SLOT as usize;
            bytes[at..at + s.params.len()].copy_from_slice(&s.params);
        }
        gpu.queue.write_buffer(&params, 0, &bytes);
        let mut steps = Vec::with_capacity(self.specs.len());
        for (i, s) in self.specs.into_iter().enumerate() {
            let m = s.entry.module();
            let mut entries: Vec<wgpu::BindGroupEntry<'_>> = s
                .bindings
                .iter()
                .enumerate()
                .map(|(b, (buf, off, size))| wgpu::BindGroupEntry {
                    binding: b as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: buf,
                        offset: *off,
                        size: NonZeroU64::new((*size).max(4)),
                    }),
                })
                .collect();
            entries.push(wgpu::BindGroupEntry {
                binding: s.bindings.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params,
                    offset: 0,
                    size: NonZeroU64::new(SLOT),
                }),
            });
            let group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(s.entry.name()),
                layout: &pipes.bgls[m],
                entries: &entries,
            });
            let pipeline = pipes.get(&gpu.device, s.entry, self.measure, self.sym);
            steps.push((pipeline, group, (i as u64 * SLOT) as u32, s.grid));
        }
        Ok(Built { steps })
    }
}

/// One recorded dispatch: pipeline, bind group, parameter offset, grid.
type Step = (Arc<wgpu::ComputePipeline>, wgpu::BindGroup, u32, (u32, u32));

struct Built {
    steps: Vec<Step>,
}

impl Built {
    fn record(&self, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("kullback.pairwise"),
            timestamp_writes: None,
        });
        for (pipeline, group, slot, grid) in &self.steps {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[*slot]);
            pass.dispatch_workgroups(grid.0, grid.1, 1);
        }
    }
}

/// What the preparation of one argument reads and writes.
struct PrepIo<'a> {
    /// The raw values: a buffer and the byte offset of the first.
    raw: (&'a wgpu::Buffer, u64),
    /// How `raw` stores the values (f16 and bf16: packed two per u32, widened
    /// in the shader).
    dtype: Dtype,
    mode: RowMode,
    is_q: bool,
}

/// Records the preparation of `side` (rows read from `io.raw`).
fn record_prep(
    rec: &mut Recorder,
    gpu: &Gpu,
    plan: &Plan,
    side: &DevSide,
    io: &PrepIo<'_>,
    check_sums: bool,
    tolerance: f32,
) {
    let max_dim = gpu.limits.max_compute_workgroups_per_dimension;
    let cols = plan.cols as u64;
    for g in 0..side.groups() {
        let r0 = g * side.rc;
        let r1 = (r0 + side.rc).min(side.rows);
        // dispatches of rows whose raw window (a chunk of each, rows apart)
        // fits a binding
        let per = ((plan.cap_elems - plan.kc as u64) / cols + 1).clamp(1, (r1 - r0) as u64) as u32;
        let mut a0 = r0;
        while a0 < r1 {
            let a1 = (a0 + per).min(r1);
            let rows = a1 - a0;
            let (n_off, n_size, n_lead) = window(0, a0 as u64, rows as u64, NORM_SIZE, plan.align);
            let (s_off, s_size, s_lead) = window(
                side.status_offset,
                a0 as u64,
                rows as u64,
                RECORD_SIZE,
                plan.align,
            );
            for write in [false, true] {
                for c in 0..plan.chunks {
                    let (c0, kc) = plan.chunk(c);
                    let gm = side.geom(plan, g, c);
                    // threads per row: a mask word each (short rows share a workgroup)
                    let tpr = gm.words.next_power_of_two().min(PREP_WG);
                    let first = a0 as u64 * cols + c0 as u64;
                    let count = (rows as u64 - 1) * cols + kc as u64;
                    // halves: a window of 2-byte values, bound as whole words
                    let elem = if io.dtype.is_half() { 2 } else { 4 };
                    let (r_off, r_size, r_lead) = window(io.raw.1, first, count, elem, plan.align);
                    let r_size = r_size.next_multiple_of(4);
                    let region = &side.regions[(g * plan.chunks + c) as usize];
                    let params = PrepParams {
                        rows,
                        cols: kc,
                        row0: a0,
                        col0: c0,
                        raw_lead: r_lead,
                        raw_stride: plan.cols,
                        region_rows: gm.rows,
                        mode: mode_code(io.mode),
                        is_q: io.is_q as u32,
                        first: (c == 0) as u32,
                        check_sums: check_sums as u32,
                        tolerance,
                        norm_at: n_lead,
                        status_at: s_lead,
                        words: gm.words,
                        field_len: gm.field_len,
                        mask_at: gm.mask_at,
                        flags_at: gm.flags_at,
                        region_row0: a0 - r0,
                        nan_bits: f32::NAN.to_bits(),
                        tpr,
                        dtype: io.dtype.code(),
                    };
                    rec.push(
                        if write {
                            Entry::PrepWrite
                        } else {
                            Entry::PrepStats
                        },
                        vec![
                            (io.raw.0.clone(), r_off, r_size),
                            (side.norms.clone(), n_off, n_size),
                            (region.clone(), 0, gm.total * 4),
                            (side.status.clone(), s_off, s_size),
                        ],
                        &params,
                        grid(rows.div_ceil(PREP_WG / tpr), max_dim),
                    );
                }
            }
            a0 = a1;
        }
    }
}

/// Where tile values go: element (i, j) of the matrix is at
/// `base + (i - row0) * stride + (j - col0)` of `buffer` (byte `offset` 0).
struct OutTarget<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    base: u64,
    stride: u64,
    row0: u32,
    col0: u32,
}

/// What the tiles need of the call besides the regions.
#[derive(Clone, Copy)]
struct TileCall {
    measure: Measure,
    zero_diag: bool,
    ln_base: f64,
}

/// Records the tiles of rows `rows` × columns `cols` of the matrix into `out`.
#[allow(
    clippy::too_many_arguments,
    reason = "one recording's full description"
)]
fn record_tiles(
    rec: &mut Recorder,
    gpu: &Gpu,
    plan: &Plan,
    p: &DevSide,
    q: &DevSide,
    rows: Range<u32>,
    cols: Range<u32>,
    out: &OutTarget<'_>,
    carry: &wgpu::Buffer,
    call: TileCall,
) {
    let max_dim = gpu.limits.max_compute_workgroups_per_dimension;
    let cap = plan.cap_elems;
    let carry_cap = carry.size() / 12;
    for gp in rows.start / p.rc..rows.end.div_ceil(p.rc) {
        let i0 = rows.start.max(gp * p.rc);
        let i1 = rows.end.min((gp + 1) * p.rc).min(p.rows);
        for gq in cols.start / q.rc..cols.end.div_ceil(q.rc) {
            let j0 = cols.start.max(gq * q.rc);
            let j1 = cols.end.min((gq + 1) * q.rc).min(q.rows);
            // sub-blocks whose output window (and carried sums) fit one binding
            let mut w = ((j1 - j0) as u64).min(cap);
            if plan.chunks > 1 {
                w = w.min(carry_cap);
            }
            let mut b0 = j0;
            while b0 < j1 {
                let b1 = (b0 as u64 + w).min(j1 as u64) as u32;
                let n = b1 - b0;
                let mut h = ((cap - n as u64) / out.stride + 1).min((i1 - i0) as u64);
                if plan.chunks > 1 {
                    h = h.min(carry_cap / n as u64);
                }
                let h = h.max(1) as u32;
                let mut a0 = i0;
                while a0 < i1 {
                    let a1 = (a0 + h).min(i1);
                    let m = a1 - a0;
                    let first =
                        out.base + (a0 - out.row0) as u64 * out.stride + (b0 - out.col0) as u64;
                    let count = (m as u64 - 1) * out.stride + n as u64;
                    let (o_off, o_size, o_lead) = window(out.offset, first, count, 4, plan.align);
                    let side = if plan.thin { 4 } else { TILE };
                    let tiles_x = n.div_ceil(side);
                    let items = tiles_x * m.div_ceil(side);
                    for c in 0..plan.chunks {
                        let pg = p.geom(plan, gp, c);
                        let qg = q.geom(plan, gq, c);
                        let params = TileParams {
                            m,
                            n,
                            kc: plan.chunk(c).1,
                            tiles_x,
                            p_rows: pg.rows,
                            q_rows: qg.rows,
                            p_row0: a0 - gp * p.rc,
                            q_row0: b0 - gq * q.rc,
                            p_field: pg.field_len,
                            q_field: qg.field_len,
                            p_mask_at: pg.mask_at,
                            q_mask_at: qg.mask_at,
                            p_flags_at: pg.flags_at,
                            q_flags_at: qg.flags_at,
                            words: pg.words,
                            out_lead: o_lead,
                            out_stride: out.stride as u32,
                            gi0: a0,
                            gj0: b0,
                            first: (c == 0) as u32,
                            last: (c + 1 == plan.chunks) as u32,
                            zero_diag: call.zero_diag as u32,
                            scale: scale(call.measure, call.ln_base),
                            inf_bits: (f32::INFINITY * call.ln_base.signum() as f32).to_bits(),
                            nan_bits: f32::NAN.to_bits(),
                            ..Default::default()
                        };
                        let pr = &p.regions[(gp * plan.chunks + c) as usize];
                        let qr = &q.regions[(gq * plan.chunks + c) as usize];
                        rec.push(
                            if plan.thin { Entry::Thin } else { Entry::Tile },
                            vec![
                                (pr.clone(), 0, pg.total * 4),
                                (qr.clone(), 0, qg.total * 4),
                                (out.buffer.clone(), o_off, o_size),
                                (carry.clone(), 0, carry.size()),
                            ],
                            &params,
                            grid(items, max_dim),
                        );
                    }
                    a0 = a1;
                }
                b0 = b1;
            }
        }
    }
}

// ---------------------------------------------------------------- a prepared call

/// A call's inputs prepared on the device.
struct Prepared {
    plan: Plan,
    p: DevSide,
    q: Option<DevSide>,
    pipes: Arc<PairPipelines>,
    measure: u32,
    sym: bool,
    /// The call's buffers (inputs, regions), back to the pool at the end.
    _scratch: Scratch,
}

impl Prepared {
    fn q(&self) -> &DevSide {
        self.q.as_ref().unwrap_or(&self.p)
    }
    fn recorder(&self) -> Recorder {
        Recorder {
            specs: Vec::new(),
            measure: self.measure,
            sym: self.sym,
        }
    }
}

/// Makes one argument's regions, normalisers and statuses in `scratch`.
fn dev_side(
    gpu: &Gpu,
    scratch: &mut Scratch,
    plan: &Plan,
    rows: u32,
    rc: u32,
    status: Option<(&wgpu::Buffer, u64)>,
) -> Result<DevSide> {
    let storage = wgpu::BufferUsages::STORAGE;
    let mut side = DevSide {
        rows,
        rc,
        regions: Vec::new(),
        norms: scratch.buffer(
            &gpu.device,
            "kullback.pairwise.norms",
            rows as u64 * NORM_SIZE,
            storage,
        )?,
        status: match status {
            Some((b, _)) => b.clone(),
            None => scratch.buffer(
                &gpu.device,
                "kullback.pairwise.status",
                rows as u64 * RECORD_SIZE,
                storage | wgpu::BufferUsages::COPY_SRC,
            )?,
        },
        status_offset: status.map_or(0, |(_, o)| o),
    };
    for g in 0..side.groups() {
        for c in 0..plan.chunks {
            let gm = side.geom(plan, g, c);
            side.regions.push(scratch.buffer(
                &gpu.device,
                "kullback.pairwise.region",
                gm.total * 4,
                storage,
            )?);
        }
    }
    Ok(side)
}

/// Uploads and prepares the job's arguments (host path), then reads back
/// their statuses: the first bad row (of p, then of q) is the error.
fn prepare_host(gpu: &Gpu, job: &PairJob<'_>) -> Result<Prepared> {
    let pipes = pipelines(gpu)?;
    let (m, n, k) = (job.m() as u32, job.n() as u32, job.cols as u32);
    let fields = field_count(job.measure);
    let plan = Plan::new(gpu, k, fields, m, n)?;
    let mut scratch = Scratch::pooled(&gpu.pool);
    let inputs = (job.m() + job.q.map_or(0, |q| q.rows)) as u64 * job.cols as u64 * 4;
    let bytes = inputs * (1 + fields as u64);
    let (p, q, status) = gpu.scoped("the prepared rows of an all-pairs call", bytes, || {
        let sc = &mut scratch;
        // halves as they are (half the bytes): the prep kernel widens them
        let p_raw = gpu.upload_stored(sc, "kullback.pairwise.p", job.p.data)?;
        let q_raw = match &job.q {
            Some(q) => Some(gpu.upload_stored(sc, "kullback.pairwise.q", q.data)?),
            None => None,
        };
        let p = dev_side(gpu, sc, &plan, m, plan.p_rc, None)?;
        let q = match &q_raw {
            Some(_) => Some(dev_side(gpu, sc, &plan, n, plan.q_rc, None)?),
            None => None,
        };
        let mut rec = Recorder {
            specs: Vec::new(),
            measure: measure_code(job.measure),
            sym: false,
        };
        let sides: Vec<(&DevSide, &wgpu::Buffer, &Side<'_>)> =
            std::iter::once((&p, &p_raw, &job.p))
                .chain(
                    q.as_ref()
                        .zip(q_raw.as_ref())
                        .zip(job.q.as_ref())
                        .map(|((d, r), s)| (d, r, s)),
                )
                .collect();
        for (dev, raw, side) in &sides {
            let io = PrepIo {
                raw: (raw, 0),
                dtype: side.data.dtype(),
                mode: side.mode,
                is_q: side.arg == crate::error::Arg::Q,
            };
            record_prep(
                &mut rec,
                gpu,
                &plan,
                dev,
                &io,
                job.check_sums,
                side.tolerance,
            );
        }
        let built = rec.build(gpu, &pipes, sc)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        built.record(&mut enc);
        // both statuses into one readback
        let s_bytes = (m as u64 + q.as_ref().map_or(0, |_| n as u64)) * RECORD_SIZE;
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging = sc.buffer(&gpu.device, "kullback.pairwise.status.read", s_bytes, usage)?;
        enc.copy_buffer_to_buffer(&p.status, 0, &staging, 0, m as u64 * RECORD_SIZE);
        if let Some(q) = &q {
            enc.copy_buffer_to_buffer(
                &q.status,
                0,
                &staging,
                m as u64 * RECORD_SIZE,
                n as u64 * RECORD_SIZE,
            );
        }
        let index = gpu.queue.submit([enc.finish()]);
        Ok((p, q, (staging, s_bytes, index)))
    })?;
    let (staging, s_bytes, index) = status;
    let status: Vec<Record> = read_back(gpu, &staging, s_bytes, index)?;
    if let Some(e) = pairs::first_error(&status[..m as usize], m as usize, &job.decode_ctx(&job.p))
    {
        return Err(e);
    }
    let q_ctx = job.decode_ctx(job.q.as_ref().unwrap_or(&job.p));
    if let Some(e) = pairs::first_error(&status[m as usize..], n as usize, &q_ctx) {
        return Err(e);
    }
    Ok(Prepared {
        plan,
        p,
        q,
        pipes,
        measure: measure_code(job.measure),
        sym: job.symmetric() && job.measure == Measure::Js,
        _scratch: scratch,
    })
}

/// Maps `staging` once submission `index` is done and copies out its values.
fn read_back<T: bytemuck::Pod>(
    gpu: &Gpu,
    staging: &wgpu::Buffer,
    bytes: u64,
    index: wgpu::SubmissionIndex,
) -> Result<Vec<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging
        .slice(..bytes)
        .map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
    gpu.device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })
        .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
    match rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::Device(format!("mapping the results: {e}"))),
        Err(_) => return Err(Error::Device("the map callback was dropped".into())),
    }
    let out = {
        let view = staging
            .slice(..bytes)
            .get_mapped_range()
            .map_err(|e| Error::Device(format!("reading the results: {e}")))?;
        let vals: &[T] = bytemuck::cast_slice(&view);
        let mut out = crate::error::try_vec(vals.len(), "the results read back")?;
        out.extend_from_slice(vals);
        out
    };
    staging.unmap();
    Ok(out)
}

// ---------------------------------------------------------------- host calls

/// The bands of the matrix, row-major: at most `rows` × `cols` each, at most
/// one binding and [`BAND_BYTES`].
fn bands(m: u32, n: u32, rows: u64, cols: u64, plan: &Plan) -> Vec<(Range<u32>, Range<u32>)> {
    let limit = plan.cap_elems.min(BAND_BYTES / 4);
    let bc = cols.clamp(1, n as u64).min(limit);
    let br = rows.clamp(1, m as u64).min((limit / bc).max(1));
    let mut out = Vec::new();
    for r0 in (0..m as u64).step_by(br as usize) {
        for c0 in (0..n as u64).step_by(bc as usize) {
            let r1 = (r0 + br).min(m as u64);
            let c1 = (c0 + bc).min(n as u64);
            out.push((r0 as u32..r1 as u32, c0 as u32..c1 as u32));
        }
    }
    out
}

/// A band in flight: its buffers and submission.
struct InFlight {
    band: (Range<u32>, Range<u32>),
    staging: wgpu::Buffer,
    index: wgpu::SubmissionIndex,
    bytes: u64,
}

/// A band of the matrix: its rows and its columns.
type Band = (Range<u32>, Range<u32>);
/// Where a band's values go.
type BandSink<'a, E> = dyn FnMut(&Band, &[f32]) -> Result<(), E> + 'a;

/// Computes each band on the device and hands its values (row-major,
/// band rows × band columns) to `sink`, in order; the next band is computed
/// while one is copied out.
fn run_bands<E: From<Error>>(
    gpu: &Gpu,
    job: &PairJob<'_>,
    prep: &Prepared,
    bands: Vec<Band>,
    sink: &mut BandSink<'_, E>,
) -> Result<(), E> {
    let call = TileCall {
        measure: job.measure,
        zero_diag: job.zero_diagonal(),
        ln_base: job.ln_base,
    };
    let max_band = bands
        .iter()
        .map(|(r, c)| r.len() as u64 * c.len() as u64)
        .max()
        .unwrap_or(1);
    let mut pending: Option<InFlight> = None;
    for band in bands {
        let mut scratch = Scratch::pooled(&gpu.pool);
        let bytes = band.0.len() as u64 * band.1.len() as u64 * 4;
        let next = gpu.scoped("a band of an all-pairs matrix", bytes * 3, || {
            let sc = &mut scratch;
            let out_usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
            let buf = sc.buffer(
                &gpu.device,
                "kullback.pairwise.band",
                max_band * 4,
                out_usage,
            )?;
            let carry = carry_buffer(gpu, sc, &prep.plan, max_band)?;
            let mut rec = prep.recorder();
            let out = OutTarget {
                buffer: &buf,
                offset: 0,
                base: 0,
                stride: band.1.len() as u64,
                row0: band.0.start,
                col0: band.1.start,
            };
            record_tiles(
                &mut rec,
                gpu,
                &prep.plan,
                &prep.p,
                prep.q(),
                band.0.clone(),
                band.1.clone(),
                &out,
                &carry,
                call,
            );
            let built = rec.build(gpu, &prep.pipes, sc)?;
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            built.record(&mut enc);
            let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
            let staging = sc.buffer(&gpu.device, "kullback.pairwise.read", bytes, usage)?;
            sc.detach(&staging);
            enc.copy_buffer_to_buffer(&buf, 0, &staging, 0, bytes);
            let index = gpu.queue.submit([enc.finish()]);
            Ok(InFlight {
                band: band.clone(),
                staging,
                index,
                bytes,
            })
        })?;
        if let Some(prev) = pending.take() {
            finish_band(gpu, prev, sink)?;
        }
        pending = Some(next);
    }
    if let Some(prev) = pending.take() {
        finish_band(gpu, prev, sink)?;
    }
    Ok(())
}

fn finish_band<E: From<Error>>(
    gpu: &Gpu,
    f: InFlight,
    sink: &mut BandSink<'_, E>,
) -> Result<(), E> {
    let vals: Vec<f32> = read_back(gpu, &f.staging, f.bytes, f.index)?;
    sink(&f.band, &vals)
}

/// The scratch of sums carried between column chunks (a word when there is
/// one chunk: never read).
fn carry_buffer(gpu: &Gpu, sc: &mut Scratch, plan: &Plan, pairs: u64) -> Result<wgpu::Buffer> {
    let bytes = if plan.chunks > 1 {
        (pairs * 12).min(plan.cap_elems * 4)
    } else {
        16
    };
    sc.buffer(
        &gpu.device,
        "kullback.pairwise.carry",
        bytes,
        wgpu::BufferUsages::STORAGE,
    )
}

/// The M × N matrix into `out` (host path).
pub(crate) fn full(gpu: &Gpu, job: &PairJob<'_>, out: &mut [f32]) -> Result<()> {
    let prep = prepare_host(gpu, job)?;
    let (m, n) = (job.m() as u32, job.n() as u32);
    let bands = bands(m, n, u64::MAX, u64::MAX, &prep.plan);
    let nn = n as usize;
    run_bands::<Error>(gpu, job, &prep, bands, &mut |(rows, cols), vals| {
        let w = cols.len();
        for (r, i) in rows.clone().enumerate() {
            let at = i as usize * nn + cols.start as usize;
            out[at..at + w].copy_from_slice(&vals[r * w..(r + 1) * w]);
        }
        Ok(())
    })
}

/// The matrix handed to `f` in tiles of at most `shape` (host path).
pub(crate) fn tiles<E: From<Error>>(
    gpu: &Gpu,
    job: &PairJob<'_>,
    shape: TileShape,
    f: &mut dyn FnMut(Tile<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let prep = prepare_host(gpu, job)?;
    let (m, n) = (job.m() as u32, job.n() as u32);
    let bands = bands(m, n, shape.rows as u64, shape.cols as u64, &prep.plan);
    run_bands(gpu, job, &prep, bands, &mut |(rows, cols), vals| {
        f(Tile {
            rows: rows.start as usize..rows.end as usize,
            cols: cols.start as usize..cols.end as usize,
            values: vals,
        })
    })
}

/// Records `topk_main` over a band `rows` × `cols` held in `band` (row-major,
/// stride `cols.len()`), the lists of its rows at `out` (values, indices:
/// buffers and the element of the band's first row).
#[allow(
    clippy::too_many_arguments,
    reason = "one recording's full description"
)]
fn record_topk(
    rec: &mut Recorder,
    gpu: &Gpu,
    plan: &Plan,
    band: &wgpu::Buffer,
    rows: &Range<u32>,
    cols: &Range<u32>,
    out: (&wgpu::Buffer, u64, &wgpu::Buffer, u64, u64),
    k: u32,
    exclude_self: bool,
) {
    let max_dim = gpu.limits.max_compute_workgroups_per_dimension;
    let (vbuf, voff, ibuf, ioff, first) = out;
    let m = rows.len() as u32;
    let n = cols.len() as u32;
    let count = m as u64 * k as u64;
    let (v_off, l_size, l_lead) = window(voff, first, count, 4, plan.align);
    let (i_off, _, i_lead) = window(ioff, first, count, 4, plan.align);
    debug_assert_eq!(l_lead, i_lead, "values and indices at the same alignment");
    let params = TopParams {
        rows: m,
        cols: n,
        col0: cols.start,
        k,
        merge: (cols.start > 0) as u32,
        band_lead: 0,
        band_stride: n,
        out_lead: l_lead,
        row0: rows.start,
        exclude_self: exclude_self as u32,
        ..Default::default()
    };
    rec.push(
        Entry::Topk,
        vec![
            (band.clone(), 0, m as u64 * n as u64 * 4),
            (vbuf.clone(), v_off, l_size),
            (ibuf.clone(), i_off, l_size),
        ],
        &params,
        grid(m, max_dim),
    );
}

/// The nearest `k` of each row into `values` and `indices` (host path): the
/// bands of a row band are computed and merged on the device, then its
/// lists are read back.
pub(crate) fn top_k(
    gpu: &Gpu,
    job: &PairJob<'_>,
    k: usize,
    exclude_self: bool,
    values: &mut [f32],
    indices: &mut [u32],
) -> Result<()> {
    let prep = prepare_host(gpu, job)?;
    let (m, n) = (job.m() as u32, job.n() as u32);
    let k32 = k as u32;
    // a row band's lists fit a binding; its bands, one binding each
    let rows = (prep.plan.cap_elems / k as u64).max(1);
    let bands = bands(m, n, rows, TOPK_COLS, &prep.plan);
    let call = TileCall {
        measure: job.measure,
        zero_diag: job.zero_diagonal(),
        ln_base: job.ln_base,
    };
    let mut i = 0;
    while i < bands.len() {
        let rows = bands[i].0.clone();
        let mut j = i;
        while j < bands.len() && bands[j].0 == rows {
            j += 1;
        }
        let row_bands = &bands[i..j];
        let max_band = row_bands
            .iter()
            .map(|(r, c)| r.len() as u64 * c.len() as u64)
            .max()
            .unwrap_or(1);
        let list_bytes = rows.len() as u64 * k as u64 * 4;
        let mut scratch = Scratch::pooled(&gpu.pool);
        let (vs, is, staging, index) =
            gpu.scoped("a band of nearest-k lists", max_band * 4, || {
                let sc = &mut scratch;
                let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
                let band =
                    sc.buffer(&gpu.device, "kullback.pairwise.band", max_band * 4, storage)?;
                let vs = sc.buffer(&gpu.device, "kullback.pairwise.topv", list_bytes, storage)?;
                let is = sc.buffer(&gpu.device, "kullback.pairwise.topi", list_bytes, storage)?;
                let carry = carry_buffer(gpu, sc, &prep.plan, max_band)?;
                let mut rec = prep.recorder();
                for (r, c) in row_bands {
                    let out = OutTarget {
                        buffer: &band,
                        offset: 0,
                        base: 0,
                        stride: c.len() as u64,
                        row0: r.start,
                        col0: c.start,
                    };
                    record_tiles(
                        &mut rec,
                        gpu,
                        &prep.plan,
                        &prep.p,
                        prep.q(),
                        r.clone(),
                        c.clone(),
                        &out,
                        &carry,
                        call,
                    );
                    record_topk(
                        &mut rec,
                        gpu,
                        &prep.plan,
                        &band,
                        r,
                        c,
                        (&vs, 0, &is, 0, 0),
                        k32,
                        exclude_self,
                    );
                }
                let built = rec.build(gpu, &prep.pipes, sc)?;
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                built.record(&mut enc);
                let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
                let staging =
                    sc.buffer(&gpu.device, "kullback.pairwise.read", 2 * list_bytes, usage)?;
                enc.copy_buffer_to_buffer(&vs, 0, &staging, 0, list_bytes);
                enc.copy_buffer_to_buffer(&is, 0, &staging, list_bytes, list_bytes);
                let index = gpu.queue.submit([enc.finish()]);
                Ok((vs, is, staging, index))
            })?;
        let _ = (vs, is);
        let words: Vec<u32> = read_back(gpu, &staging, 2 * list_bytes, index)?;
        let at = rows.start as usize * k;
        let len = rows.len() * k;
        for (d, s) in values[at..at + len].iter_mut().zip(&words[..len]) {
            *d = f32::from_bits(*s);
        }
        indices[at..at + len].copy_from_slice(&words[len..2 * len]);
        i = j;
    }
    Ok(())
}

// ---------------------------------------------------------------- GPU-resident

/// A batch in a caller's buffer, for the GPU-resident calls.
pub(crate) struct ResidentSide<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub rows: u32,
    /// How the buffer stores the values (halves: two per u32).
    pub dtype: Dtype,
    pub mode: RowMode,
    /// The row-sum check's tolerance (the caller's plus a half format's
    /// roundoff, as on the host path).
    pub tolerance: f32,
}

/// What a GPU-resident all-pairs call writes.
pub(crate) enum ResidentOut<'a> {
    /// The M × N matrix at byte `offset` of `buffer`.
    Matrix {
        buffer: &'a wgpu::Buffer,
        offset: u64,
    },
    /// M × k values and indices.
    TopK {
        values: (&'a wgpu::Buffer, u64),
        indices: (&'a wgpu::Buffer, u64),
        k: u32,
        exclude_self: bool,
    },
}

/// What a GPU-resident call is, checked by the façade.
pub(crate) struct ResidentCall<'a> {
    pub measure: Measure,
    pub p: ResidentSide<'a>,
    pub q: Option<ResidentSide<'a>>,
    pub cols: u32,
    pub check_sums: bool,
    pub ln_base: f64,
    /// Statuses: p's rows, then q's, at byte offset of the buffer.
    pub status: (&'a wgpu::Buffer, u64),
    pub out: ResidentOut<'a>,
}

/// Records a GPU-resident all-pairs call into `enc`: everything is made
/// (inside our error scopes) before the first command is recorded.
pub(crate) fn encode(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    call: &ResidentCall<'_>,
    workspace: Option<&Arc<crate::gpu::Pool>>,
) -> Result<()> {
    let pipes = pipelines(gpu)?;
    let m = call.p.rows;
    let n = call.q.as_ref().map_or(m, |q| q.rows);
    let fields = field_count(call.measure);
    let plan = Plan::new(gpu, call.cols, fields, m, n)?;
    let mut scratch = match workspace {
        Some(w) => Scratch::pooled(w),
        None => Scratch::fresh(),
    };
    let self_mode = call.q.is_none();
    let symmetric = self_mode
        && matches!(
            call.measure,
            Measure::Js | Measure::Hellinger | Measure::TotalVariation
        );
    let tcall = TileCall {
        measure: call.measure,
        zero_diag: self_mode && call.measure != Measure::CrossEntropy,
        ln_base: call.ln_base,
    };
    let bytes = (m + if self_mode { 0 } else { n }) as u64 * call.cols as u64 * 4 * fields as u64;
    let built = gpu.scoped(
        "the scratch of a GPU-resident all-pairs call",
        bytes,
        || {
            let sc = &mut scratch;
            let p = dev_side(gpu, sc, &plan, m, plan.p_rc, Some(call.status))?;
            let q = match &call.q {
                Some(_) => Some(dev_side(
                    gpu,
                    sc,
                    &plan,
                    n,
                    plan.q_rc,
                    Some((call.status.0, call.status.1 + m as u64 * RECORD_SIZE)),
                )?),
                None => None,
            };
            let mut rec = Recorder {
                specs: Vec::new(),
                measure: measure_code(call.measure),
                sym: symmetric && call.measure == Measure::Js,
            };
            let io = PrepIo {
                raw: (call.p.buffer, call.p.offset),
                dtype: call.p.dtype,
                mode: call.p.mode,
                is_q: false,
            };
            record_prep(
                &mut rec,
                gpu,
                &plan,
                &p,
                &io,
                call.check_sums,
                call.p.tolerance,
            );
            if let (Some(qs), Some(qd)) = (&call.q, &q) {
                let io = PrepIo {
                    raw: (qs.buffer, qs.offset),
                    dtype: qs.dtype,
                    mode: qs.mode,
                    is_q: true,
                };
                record_prep(&mut rec, gpu, &plan, qd, &io, call.check_sums, qs.tolerance);
            }
            let qd = q.as_ref().unwrap_or(&p);
            match &call.out {
                ResidentOut::Matrix { buffer, offset } => {
                    // sub-blocks of at most one binding of output (and carry)
                    let carry = carry_buffer(gpu, sc, &plan, plan.cap_elems / 3)?;
                    let out = OutTarget {
                        buffer,
                        offset: *offset,
                        base: 0,
                        stride: n as u64,
                        row0: 0,
                        col0: 0,
                    };
                    record_tiles(
                        &mut rec,
                        gpu,
                        &plan,
                        &p,
                        qd,
                        0..m,
                        0..n,
                        &out,
                        &carry,
                        tcall,
                    );
                }
                ResidentOut::TopK {
                    values,
                    indices,
                    k,
                    exclude_self,
                } => {
                    let rows = (plan.cap_elems / *k as u64).max(1);
                    let bands = bands(m, n, rows, TOPK_COLS, &plan);
                    let max_band = bands
                        .iter()
                        .map(|(r, c)| r.len() as u64 * c.len() as u64)
                        .max()
                        .unwrap_or(1);
                    let storage = wgpu::BufferUsages::STORAGE;
                    let band =
                        sc.buffer(&gpu.device, "kullback.pairwise.band", max_band * 4, storage)?;
                    let carry = carry_buffer(gpu, sc, &plan, max_band)?;
                    for (r, c) in &bands {
                        let out = OutTarget {
                            buffer: &band,
                            offset: 0,
                            base: 0,
                            stride: c.len() as u64,
                            row0: r.start,
                            col0: c.start,
                        };
                        record_tiles(
                            &mut rec,
                            gpu,
                            &plan,
                            &p,
                            qd,
                            r.clone(),
                            c.clone(),
                            &out,
                            &carry,
                            tcall,
                        );
                        let first = r.start as u64 * *k as u64;
                        record_topk(
                            &mut rec,
                            gpu,
                            &plan,
                            &band,
                            r,
                            c,
                            (values.0, values.1, indices.0, indices.1, first),
                            *k,
                            *exclude_self,
                        );
                    }
                }
            }
            rec.build(gpu, &pipes, sc)
        },
    )?;
    built.record(enc);
    Ok(())
}

/// Bytes a GPU-resident all-pairs call's status buffer needs: one
/// [`Record`] per row of p, then one per row of q (none with q omitted).
pub(crate) fn status_bytes(p_rows: usize, q_rows: Option<usize>) -> u64 {
    (p_rows + q_rows.unwrap_or(0)) as u64 * RECORD_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::wgsl_fields;

    /// The parameter blocks and the record have the layouts of their WGSL
    /// twins (naga lays them out), and no padding the host would not write.
    #[test]
    fn host_structs_match_the_shaders() {
        let check = |src: &str, name: &str, bytes: u64| {
            let module = naga::front::wgsl::parse_str(src).expect("our WGSL parses");
            let mut layouter = naga::proc::Layouter::default();
            layouter.update(module.to_ctx()).expect("layouts");
            let (handle, ty) = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("struct {name}"));
            let naga::TypeInner::Struct { members, span } = &ty.inner else {
                panic!("{name} is not a struct");
            };
            assert_eq!(*span as u64, bytes, "size of {name}");
            assert_eq!(layouter[handle].size as u64, bytes, "layout of {name}");
            let packed: u64 = members.iter().map(|m| layouter[m.ty].size as u64).sum();
            assert_eq!(packed, bytes, "{name}: no padding");
        };
        let srcs = [0, 1, 2].map(|m| module_source(m, measure_code(Measure::Js), true));
        check(
            &srcs[0],
            "PrepParams",
            std::mem::size_of::<PrepParams>() as u64,
        );
        check(&srcs[0], "Norm", NORM_SIZE);
        check(&srcs[0], "Record", RECORD_SIZE);
        check(
            &srcs[1],
            "TileParams",
            std::mem::size_of::<TileParams>() as u64,
        );
        check(
            &srcs[2],
            "TopParams",
            std::mem::size_of::<TopParams>() as u64,
        );
        assert_eq!(
            wgsl_fields(include_str!("../../shaders/pairwise.wgsl"), "Record"),
            wgsl_fields(include_str!("../../shaders/rows.wgsl"), "Record")
        );
        for m in 0..3 {
            for measure in [
                Measure::Kl,
                Measure::CrossEntropy,
                Measure::Js,
                Measure::Hellinger,
                Measure::TotalVariation,
            ] {
                for sym in [false, true] {
                    let src = module_source(m, measure_code(measure), sym);
                    let module =
                        naga::front::wgsl::parse_str(&src).expect("every all-pairs module parses");
                    let info = naga::valid::Validator::new(
                        naga::valid::ValidationFlags::all(),
                        naga::valid::Capabilities::empty(),
                    )
                    .validate(&module)
                    .unwrap_or_else(|e| panic!("module {m} measure {measure:?}: {e:?}"));
                    // and translates to SPIR-V (naga's backend has panicked on
                    // constructs its validator takes)
                    for ep in &module.entry_points {
                        let pl = naga::back::spv::PipelineOptions {
                            shader_stage: naga::ShaderStage::Compute,
                            entry_point: ep.name.clone(),
                        };
                        naga::back::spv::write_vec(&module, &info, &Default::default(), Some(&pl))
                            .unwrap_or_else(|e| panic!("module {m} {}: {e:?}", ep.name));
                    }
                }
            }
        }
    }

    #[test]
    fn windows_are_aligned_and_cover() {
        for &(first, count, elem, align, base) in &[
            (0u64, 10u64, 4u64, 256u64, 0u64),
            (1000, 7, 24, 256, 0),
            (1000, 7, 24, 256, 512),
            (3, 7, 24, 256, 24 * 5000),
            (12345, 1, 32, 64, 128),
            (3, 100, 4, 4, 8),
        ] {
            let (off, size, lead) = window(base, first, count, elem, align);
            assert_eq!(off % align, 0);
            assert_eq!(off + lead as u64 * elem, base + first * elem);
            assert_eq!(size, (lead as u64 + count) * elem);
        }
    }

    #[test]
    fn regions_fit_one_binding() {
        for fields in 1..=3u64 {
            for &(cols, cap_elems, want) in &[
                (256u64, 1u64 << 20, 64u64),
                (1_000_003, 16_000, 2),
                (9000, 16_000, 64),
                (5, 16_000, 64),
                (100_000, 32 << 20, 64),
            ] {
                let kc = chunk_cols(cols, fields, cap_elems, want);
                assert!(
                    kc <= KC_MAX && (kc == cols || kc.is_multiple_of(32)),
                    "{fields} {cols}: {kc}"
                );
                assert!(
                    row_words(kc, fields) * want <= cap_elems,
                    "{fields} {cols}: {kc}"
                );
                let g = geom(want as u32, kc as u32, fields as u32);
                assert!(g.total <= cap_elems, "{fields} {cols}: {}", g.total);
            }
        }
    }
}
