//! The one test support layer, shared by every test binary: the seeded
//! generator ([`random`]), the f64 oracle of every measure ([`oracle`]; both
//! also included by the crate's unit tests), the one GPU-or-skip decision
//! ([`gpu_or_skip`] and the contexts, devices and CLI backends built on it),
//! .npy reading, output checks against the oracle, and GPU buffer helpers.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "a helper module shared by the test binaries, each using a part of it"
)]

pub mod oracle;
pub mod random;

#[allow(unused_imports, reason = "each test binary uses a part of them")]
pub use oracle::*;
#[allow(unused_imports, reason = "each test binary uses a part of them")]
pub use random::*;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use kullback::{
    Backend, Base, Context, ContextOptions, Form, Measure, Normalization, Output, Reduction,
};

// ------------------------------------------------------------------ .npy

/// An .npy file with a hand-written header: `descr` as NumPy writes it
/// (e.g. "<V2", ml_dtypes' bfloat16) and `data` as the raw little-endian items.
pub fn save_raw_npy(path: &std::path::Path, descr: &str, shape: &[u64], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// `tests/data`, or `$KULLBACK_TEST_DATA` (prebuilt test binaries run from
/// another checkout: bench/gpu-check.sh).
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KULLBACK_TEST_DATA") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
}

fn open_npy(name: &str) -> npyz::NpyFile<std::io::BufReader<std::fs::File>> {
    let path = data_dir().join(name);
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    npyz::NpyFile::new(std::io::BufReader::new(f))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A float32 .npy file from `tests/data`: values (C order) and shape.
pub fn read_f32(name: &str) -> (Vec<f32>, Vec<u64>) {
    let f = open_npy(name);
    let shape = f.shape().to_vec();
    (f.into_vec::<f32>().expect(name), shape)
}

/// A float64 .npy file from `tests/data`.
pub fn read_f64(name: &str) -> Vec<f64> {
    open_npy(name).into_vec::<f64>().expect(name)
}

/// An int64 .npy file from `tests/data`.
pub fn read_i64(name: &str) -> Vec<i64> {
    open_npy(name).into_vec::<i64>().expect(name)
}

// ------------------------------------------------------------------ checks against the oracle

/// Panics listing the mismatches (up to 12) when `got` and `expected` differ
/// beyond `abs + rel·|expected|` anywhere, or in length.
pub fn assert_values(label: &str, got: &[f32], expected: &[f64], abs: f64, rel: f64) {
    assert_eq!(
        got.len(),
        expected.len(),
        "{label}: {} values, expected {}",
        got.len(),
        expected.len()
    );
    let bad: Vec<String> = got
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (g, e))| !close_tol(**g as f64, **e, abs, rel))
        .map(|(i, (g, e))| {
            format!(
                "  [{i}] got {g:e}, expected {e:e} (diff {:e}, allowed {:e})",
                *g as f64 - e,
                abs + rel * e.abs()
            )
        })
        .collect();
    if !bad.is_empty() {
        panic!(
            "{label}: {} of {} values out of tolerance (abs {abs:e} + rel {rel:e}):\n{}",
            bad.len(),
            got.len(),
            bad.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

/// Checks an [`Output`] against per-row expectations `rows` under `reduction`:
/// the values (see [`reduced_expectation`]), their count, `rows` and `counted`.
pub fn check_output(
    out: &Output,
    rows: &[f64],
    counted: f64,
    reduction: Reduction,
    abs: f64,
    rel: f64,
) -> Result<(), String> {
    let exp = reduced_expectation(rows, reduction, counted, abs, rel);
    if out.values.len() != exp.len() {
        return Err(format!(
            "{} values, expected {}",
            out.values.len(),
            exp.len()
        ));
    }
    if out.reduction != reduction {
        return Err(format!("Output::reduction {:?}", out.reduction));
    }
    let mut bad = Vec::new();
    for (i, (&g, &(e, tol))) in out.values.iter().zip(&exp).enumerate() {
        if !close_tol(g as f64, e, tol, 0.0) {
            bad.push(format!(
                "  [{i}] got {g:e}, expected {e:e} (diff {:e}, allowed {tol:e})",
                g as f64 - e
            ));
        }
    }
    if !bad.is_empty() {
        return Err(format!(
            "{} of {} values out of tolerance:\n{}",
            bad.len(),
            exp.len(),
            bad.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
        ));
    }
    if out.rows != rows.len() {
        return Err(format!("Output::rows {} expected {}", out.rows, rows.len()));
    }
    if (out.counted - counted).abs() > 1e-6 * counted.abs().max(1.0) {
        return Err(format!(
            "Output::counted {} expected {counted}",
            out.counted
        ));
    }
    Ok(())
}

/// [`check_output`], panicking with `label` on a mismatch.
pub fn assert_output(
    label: &str,
    out: &Output,
    rows: &[f64],
    counted: f64,
    reduction: Reduction,
    abs: f64,
    rel: f64,
) {
    if let Err(e) = check_output(out, rows, counted, reduction, abs, rel) {
        panic!(
            "{label} ({reduction:?}, backend {}): {e}",
            out.backend.name()
        );
    }
}

/// Panics with every failure in `failures` (one per line) when there is any.
pub fn report(what: &str, failures: &[String]) {
    if !failures.is_empty() {
        panic!(
            "{what}: {} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

// ------------------------------------------------------------------ backends

/// A context to run a test on, with a label for messages.
#[derive(Clone, Debug)]
pub struct Bk {
    /// "cpu", "gpu", or "gpu-cap<bytes>".
    pub name: String,
    /// The context.
    pub ctx: Context,
}

fn require_gpu() -> bool {
    std::env::var("KULLBACK_REQUIRE_GPU").is_ok_and(|v| v.trim() == "1")
}

fn note(msg: &str) {
    // Straight to stderr, past the test harness's capture, so a skip is seen.
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The one "GPU or skip" decision of every test in the crate: `Some` when
/// the GPU resource was made; otherwise a panic under
/// `KULLBACK_REQUIRE_GPU=1`, else `None` with a note printed once.
pub fn gpu_or_skip<T, E: std::fmt::Display>(made: Result<T, E>) -> Option<T> {
    match made {
        Ok(t) => Some(t),
        Err(e) => {
            if require_gpu() {
                panic!("KULLBACK_REQUIRE_GPU=1 but no GPU adapter could be used: {e}");
            }
            static NOTED: OnceLock<()> = OnceLock::new();
            NOTED.get_or_init(|| {
                note(&format!(
                    "note: GPU tests skipped, no GPU adapter ({e}); set KULLBACK_REQUIRE_GPU=1 to fail instead"
                ))
            });
            None
        }
    }
}

fn make_gpu(cap: Option<u64>) -> Option<Context> {
    let mut opts = ContextOptions::default().backend(Backend::Gpu);
    if let Some(c) = cap {
        opts = opts.max_binding_bytes(c);
    }
    let ctx = gpu_or_skip(Context::with_options(opts))?;
    assert_eq!(
        ctx.backend(),
        kullback::Ran::Gpu,
        "Backend::Gpu gave a CPU context"
    );
    Some(ctx)
}

/// A device on the first adapter (software ones included) with exactly
/// `limits`, for the GPU-resident tests. `None` as for [`gpu_or_skip`].
pub fn gpu_device(
    limits: kullback::wgpu::Limits,
) -> Option<(kullback::wgpu::Device, kullback::wgpu::Queue)> {
    gpu_device_with(Some(limits), kullback::wgpu::Features::empty()).map(|(d, q, _)| (d, q))
}

/// [`gpu_device`] with `features` where the adapter has them all (the
/// third value says whether it had), and `limits` (`None`: the adapter's).
pub fn gpu_device_with(
    limits: Option<kullback::wgpu::Limits>,
    features: kullback::wgpu::Features,
) -> Option<(kullback::wgpu::Device, kullback::wgpu::Queue, bool)> {
    use kullback::wgpu;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let adapter = gpu_or_skip(adapters.into_iter().next().ok_or("no adapter"))?;
    let has = adapter.features().contains(features);
    let desc = wgpu::DeviceDescriptor {
        label: Some("test"),
        required_features: if has {
            features
        } else {
            wgpu::Features::empty()
        },
        required_limits: limits.unwrap_or_else(|| adapter.limits()),
        ..Default::default()
    };
    let (d, q) = pollster::block_on(adapter.request_device(&desc)).expect("device");
    Some((d, q, has))
}

/// The CPU context.
pub fn cpu() -> Context {
    Context::with_backend(Backend::Cpu).expect("Backend::Cpu context")
}

/// The GPU context (one per test binary), or `None` when there is no adapter
/// (a printed note; a panic when `KULLBACK_REQUIRE_GPU=1`).
pub fn gpu() -> Option<Context> {
    static GPU: OnceLock<Option<Context>> = OnceLock::new();
    GPU.get_or_init(|| make_gpu(None)).clone()
}

/// A GPU context whose storage bindings are capped at `bytes`, which forces the
/// chunked path on small inputs. `None` as for [`gpu`].
pub fn gpu_capped(bytes: u64) -> Option<Context> {
    static CAPPED: OnceLock<Mutex<HashMap<u64, Option<Context>>>> = OnceLock::new();
    let map = CAPPED.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(bytes)
        .or_insert_with(|| make_gpu(Some(bytes)))
        .clone()
}

/// The CPU context and, when there is an adapter, the GPU one.
pub fn backends() -> Vec<Bk> {
    let mut v = vec![Bk {
        name: "cpu".into(),
        ctx: cpu(),
    }];
    if let Some(ctx) = gpu() {
        v.push(Bk {
            name: "gpu".into(),
            ctx,
        });
    }
    v
}

/// [`backends`] plus a GPU context capped at `cap` bytes per binding.
pub fn backends_with_cap(cap: u64) -> Vec<Bk> {
    let mut v = backends();
    if let Some(ctx) = gpu_capped(cap) {
        v.push(Bk {
            name: format!("gpu-cap{cap}"),
            ctx,
        });
    }
    v
}

/// The `--backend` values a CLI test runs on: "cpu", and "gpu" when there is
/// an adapter (the one GPU-or-skip decision: [`gpu`]).
pub fn cli_backends() -> Vec<&'static str> {
    if gpu().is_some() {
        vec!["cpu", "gpu"]
    } else {
        vec!["cpu"]
    }
}

/// Checks that an output names the backend it ran on.
pub fn assert_ran_on(bk: &Bk, out: &Output) {
    let want = bk.ctx.backend();
    assert_eq!(out.backend, want, "{}: Output::backend", bk.name);
    assert_eq!(
        out.adapter.is_some(),
        want == kullback::Ran::Gpu,
        "{}: Output::adapter is {:?}",
        bk.name,
        out.adapter
    );
}

/// All measures.
pub const MEASURES: [Measure; 4] = [
    Measure::Entropy,
    Measure::CrossEntropy,
    Measure::Kl,
    Measure::Js,
];
/// All forms.
pub const FORMS: [Form; 3] = [Form::Probs, Form::LogProbs, Form::Logits];
/// All reductions.
pub const REDUCTIONS: [Reduction; 3] = [Reduction::None, Reduction::Sum, Reduction::Mean];

// ------------------------------------------------------------------ calls

/// Evaluates `measure` on `ctx` from [`Input`]s.
pub fn eval(
    ctx: &Context,
    measure: Measure,
    p: Input<'_>,
    q: Option<Input<'_>>,
    cols: usize,
    opts: &kullback::Options,
) -> kullback::Result<Output> {
    let pb = kullback::Batch::new(p.data, p.rows, cols).form(p.form);
    let qb = q.map(|q| kullback::Batch::new(q.data, q.rows, cols).form(q.form));
    ctx.evaluate(measure, &pb, qb.as_ref(), opts)
}

/// Runs `measure` on `bk` under each of `reductions` and compares it with the
/// f64 reference; failures are appended, labelled.
#[allow(clippy::too_many_arguments, reason = "one call's full description")]
pub fn check_measure(
    failures: &mut Vec<String>,
    bk: &Bk,
    label: &str,
    measure: Measure,
    p: Input<'_>,
    q: Option<Input<'_>>,
    cols: usize,
    norm: Normalization,
    base: Base,
    reductions: &[Reduction],
) {
    let q = if measure == Measure::Entropy { None } else { q };
    let expected = ref_measure(measure, p, q, cols, norm, base);
    for &reduction in reductions {
        let opts = kullback::Options::default()
            .reduction(reduction)
            .normalization(norm)
            .base(base);
        let what = format!(
            "{label} {measure:?} p {:?}{} [{}, {reduction:?}]",
            p.form,
            q.map_or(String::new(), |q| format!(" q {:?}", q.form)),
            bk.name
        );
        match eval(&bk.ctx, measure, p, q, cols, &opts) {
            Err(e) => failures.push(format!("{what}: error {e}")),
            Ok(out) => {
                let n = expected.len() as f64;
                if let Err(e) = check_output(&out, &expected, n, reduction, ABS_TOL, REL_TOL) {
                    failures.push(format!("{what}: {e}"));
                }
                if out.backend != bk.ctx.backend() {
                    failures.push(format!("{what}: ran on {:?}", out.backend));
                }
            }
        }
    }
}

/// Options of [`check_nll`] beyond q and the targets.
#[derive(Clone, Copy, Debug, Default)]
pub struct NllCase<'a> {
    /// Ignore index.
    pub ignore: Option<i64>,
    /// Class weights.
    pub weights: Option<&'a [f32]>,
    /// Label smoothing.
    pub eps: f32,
    /// Tolerance (abs, rel); `None`: the crate's.
    pub tol: Option<(f64, f64)>,
}

/// Runs a negative log-likelihood on `bk` under each of `reductions` and
/// compares it with the f64 reference; failures are appended, labelled.
#[allow(clippy::too_many_arguments, reason = "one call's full description")]
pub fn check_nll(
    failures: &mut Vec<String>,
    bk: &Bk,
    label: &str,
    q: Input<'_>,
    cols: usize,
    targets: &[i64],
    case: NllCase<'_>,
    norm: Normalization,
    base: Base,
    reductions: &[Reduction],
) {
    let (expected, counted) = ref_nll(
        q,
        cols,
        targets,
        case.ignore,
        case.weights,
        case.eps as f64,
        norm,
        base,
    );
    let (abs, rel) = case.tol.unwrap_or((ABS_TOL, REL_TOL));
    for &reduction in reductions {
        let mut opts = kullback::NllOptions::default()
            .reduction(reduction)
            .normalization(norm)
            .base(base)
            .label_smoothing(case.eps);
        if let Some(i) = case.ignore {
            opts = opts.ignore_index(i);
        }
        if let Some(w) = case.weights {
            opts = opts.weights(w);
        }
        let what = format!("{label} nll q {:?} [{}, {reduction:?}]", q.form, bk.name);
        let qb = kullback::Batch::new(q.data, q.rows, cols).form(q.form);
        match bk.ctx.nll(&qb, targets, &opts) {
            Err(e) => failures.push(format!("{what}: error {e}")),
            Ok(out) => {
                if let Err(e) = check_output(&out, &expected, counted, reduction, abs, rel) {
                    failures.push(format!("{what}: {e}"));
                }
            }
        }
    }
}

// ------------------------------------------------------------------ GPU buffers

/// A storage buffer (also COPY_SRC) holding `data`, for the GPU-resident tests.
pub fn storage(device: &kullback::wgpu::Device, data: &[f32]) -> kullback::wgpu::Buffer {
    kullback::wgpu::util::DeviceExt::create_buffer_init(
        device,
        &kullback::wgpu::util::BufferInitDescriptor {
            label: Some("input"),
            contents: bytemuck::cast_slice(data),
            usage: kullback::wgpu::BufferUsages::STORAGE | kullback::wgpu::BufferUsages::COPY_SRC,
        },
    )
}

/// The records buffer of a GPU-resident loss gradient over `rows` rows
/// (COPY_DST, and COPY_SRC to read it back), and its size.
pub fn grad_records(device: &kullback::wgpu::Device, rows: usize) -> (kullback::wgpu::Buffer, u64) {
    let bytes = kullback::grad_output_bytes(rows);
    let buf = device.create_buffer(&kullback::wgpu::BufferDescriptor {
        label: Some("records"),
        size: bytes,
        usage: kullback::wgpu::BufferUsages::COPY_DST | kullback::wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    (buf, bytes)
}

pub fn out_buffer(device: &kullback::wgpu::Device, bytes: u64) -> kullback::wgpu::Buffer {
    device.create_buffer(&kullback::wgpu::BufferDescriptor {
        label: Some("output"),
        size: bytes,
        usage: kullback::wgpu::BufferUsages::STORAGE | kullback::wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// `bytes` of `src` from `offset` (a multiple of `T`'s size), copied through
/// a mappable buffer.
pub fn read_buffer<T: bytemuck::Pod>(
    device: &kullback::wgpu::Device,
    queue: &kullback::wgpu::Queue,
    src: &kullback::wgpu::Buffer,
    offset: u64,
    bytes: u64,
) -> Vec<T> {
    let staging = device.create_buffer(&kullback::wgpu::BufferDescriptor {
        label: Some("staging"),
        size: bytes,
        usage: kullback::wgpu::BufferUsages::MAP_READ | kullback::wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
    queue.submit([enc.finish()]);
    staging
        .slice(..)
        .map_async(kullback::wgpu::MapMode::Read, |r| r.expect("map"));
    device
        .poll(kullback::wgpu::PollType::Wait {
            submission_index: None,
            timeout: None,
        })
        .expect("poll");
    // mapped ranges are aligned to wgpu::MAP_ALIGNMENT (8 bytes)
    bytemuck::cast_slice::<u8, T>(&staging.slice(..).get_mapped_range().expect("view")).to_vec()
}

/// The records in `bytes` of `src` from `offset`.
pub fn read_records(
    device: &kullback::wgpu::Device,
    queue: &kullback::wgpu::Queue,
    src: &kullback::wgpu::Buffer,
    offset: u64,
    bytes: u64,
) -> Vec<kullback::Record> {
    read_buffer(device, queue, src, offset, bytes)
}

/// The [`kullback::GpuCall`] of `measure` over `p` (and `q`) into `out`.
pub fn gpu_call<'a>(
    measure: Measure,
    p: &kullback::GpuBatch<'a>,
    q: Option<&kullback::GpuBatch<'a>>,
    opts: &kullback::Options,
    out: &kullback::GpuOutput<'a>,
) -> kullback::GpuCall<'a> {
    let call = kullback::GpuCall::new(measure, *p, *out).options(*opts);
    match q {
        Some(q) => call.q(*q),
        None => call,
    }
}

/// The [`kullback::GpuNll`] of `targets` under `q` into `out`.
pub fn gpu_nll<'a>(
    q: &kullback::GpuBatch<'a>,
    targets: &kullback::GpuTargets<'a>,
    opts: &kullback::NllOptions<'a>,
    out: &kullback::GpuOutput<'a>,
) -> kullback::GpuNll<'a> {
    kullback::GpuNll::new(*q, *targets, *out).options(*opts)
}
