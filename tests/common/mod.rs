//! Helpers shared by the test binaries: .npy reading, the tolerance check, an
//! independent plain-f64 reference implementation of every measure and form,
//! seeded input generators, and the list of backends each test runs on.
//!
//! The reference here is written from the convention table of the crate docs
//! (README's "Conventions"), not from the library's code:
//! f64 throughout, log-sum-exp relative to the row maximum, the zero rules
//! decided on exact zeros (a probability of 0, a log-probability or logit of -inf).

#![allow(
    dead_code,
    unreachable_pub,
    reason = "a helper module shared by the test binaries, each using a part of it"
)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use kullback::{
    Backend, Base, Context, ContextOptions, Form, Measure, Normalization, Output, Reduction,
};

/// The crate's accuracy bound (crate docs, "Accuracy"): abs 2e-6 + rel 2e-5 · |expected|.
pub const ABS_TOL: f64 = 2e-6;
/// See [`ABS_TOL`].
pub const REL_TOL: f64 = 2e-5;

// ------------------------------------------------------------------ .npy

/// `tests/data`.
pub fn data_dir() -> PathBuf {
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

// ------------------------------------------------------------------ tolerance

/// Whether `got` matches `expected` within `abs + rel·|expected|`. An infinite
/// expectation must be met exactly, a NaN expectation by a NaN.
pub fn close_tol(got: f64, expected: f64, abs: f64, rel: f64) -> bool {
    if expected.is_nan() {
        return got.is_nan();
    }
    if expected.is_infinite() {
        return got == expected;
    }
    got.is_finite() && (got - expected).abs() <= abs + rel * expected.abs()
}

/// [`close_tol`] with the crate's bound.
pub fn close(got: f64, expected: f64) -> bool {
    close_tol(got, expected, ABS_TOL, REL_TOL)
}

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

/// The expected value and the allowed error of a reduction of per-row values
/// `rows` (already in the output's base) counted `counted` times. The bound
/// for a sum is the per-row bound summed: n·abs + rel·Σ|v|; a mean divides it
/// (and the sum) by `counted`.
pub fn reduced_expectation(
    rows: &[f64],
    reduction: Reduction,
    counted: f64,
    abs: f64,
    rel: f64,
) -> Vec<(f64, f64)> {
    let n = rows.len() as f64;
    let sum: f64 = rows.iter().sum();
    let mag: f64 = rows.iter().filter(|v| v.is_finite()).map(|v| v.abs()).sum();
    let tol = n * abs + rel * mag;
    match reduction {
        Reduction::None => rows.iter().map(|&v| (v, abs + rel * v.abs())).collect(),
        Reduction::Sum => vec![(sum, tol)],
        Reduction::Mean => {
            if counted == 0.0 {
                vec![(f64::NAN, 0.0)]
            } else {
                vec![(sum / counted, tol / counted)]
            }
        }
        other => panic!("not covered here: {other:?}"),
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
    use kullback::wgpu;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let adapter = gpu_or_skip(adapters.into_iter().next().ok_or("no adapter"))?;
    let desc = wgpu::DeviceDescriptor {
        label: Some("test"),
        required_limits: limits,
        ..Default::default()
    };
    Some(pollster::block_on(adapter.request_device(&desc)).expect("device"))
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

// ------------------------------------------------------------------ options

/// ln(base) in f64, for the reference.
pub fn ln_base(base: Base) -> f64 {
    match base {
        Base::E => 1.0,
        Base::Two => 2f64.ln(),
        Base::Ten => 10f64.ln(),
        Base::Custom(b) => b.ln(),
    }
}

// ------------------------------------------------------------------ reference (f64)

/// One argument as the library receives it: f32 values, its rows (1 for a row
/// compared with every row of the other argument) and its form.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// Row-major values.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Form.
    pub form: Form,
}

impl<'a> Input<'a> {
    /// An input.
    pub fn new(data: &'a [f32], rows: usize, form: Form) -> Self {
        Input { data, rows, form }
    }
    fn row(&self, r: usize, cols: usize) -> &'a [f32] {
        let r = if self.rows == 1 { 0 } else { r };
        &self.data[r * cols..(r + 1) * cols]
    }
}

/// ln Σ exp(x) in f64, relative to the maximum; -inf for an all -inf row.
pub fn log_sum_exp(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

/// `v as f64`, from the bits for zeros and subnormals: exact even in a
/// process that reads subnormals as zero (tests/flush.rs sets MXCSR's DAZ).
pub fn widen(v: f32) -> f64 {
    let b = v.to_bits();
    if b & 0x7f80_0000 != 0 {
        return v as f64;
    }
    let m = (b & 0x007f_ffff) as f64 * 2f64.powi(-149);
    if b >> 31 != 0 { -m } else { m }
}

/// One row's (p, ln p) in f64 per form and normalisation. ln p = -inf exactly
/// where the input is a zero probability, a -inf log-probability or a -inf logit.
pub fn ref_dist(x: &[f32], form: Form, norm: Normalization) -> (Vec<f64>, Vec<f64>) {
    let x: Vec<f64> = x.iter().map(|&v| widen(v)).collect();
    match form {
        Form::Probs => {
            let p: Vec<f64> = if norm == Normalization::Renormalize {
                let s: f64 = x.iter().sum();
                x.iter().map(|v| v / s).collect()
            } else {
                x
            };
            let lp = p.iter().map(|v| v.ln()).collect();
            (p, lp)
        }
        Form::LogProbs | Form::Logits => {
            let lp: Vec<f64> = if form == Form::Logits || norm == Normalization::Renormalize {
                // (x - m) - ln s, with ln s = ln Σ e^(x - m) formed on its own:
                // never lse - m (m + ln s loses ln s when |m| is large: 3.4e38).
                let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let ls = x.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
                x.iter().map(|v| (v - m) - ls).collect()
            } else {
                x
            };
            let p = lp.iter().map(|v| v.exp()).collect();
            (p, lp)
        }
        other => panic!("not covered here: {other:?}"),
    }
}

fn sum_f64(x: &[f64]) -> f64 {
    // Neumaier-compensated sum: the reference's own error stays far below the tolerance.
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for &v in x {
        let t = s + v;
        if s.abs() >= v.abs() {
            c += (s - t) + v;
        } else {
            c += (v - t) + s;
        }
        s = t;
    }
    s + c
}

/// p = 0 exactly where ln p = -inf: a zero probability, a -inf log-probability
/// or logit. A finite logit far below the row maximum is p > 0 even where
/// exp(ln p) underflows in f64 (over a q of 0 it still gives +inf).
fn zero(_p: f64, lp: f64) -> bool {
    lp == f64::NEG_INFINITY
}

/// The per-row values of `measure` in base `base` (nats / ln base), in f64,
/// from the f32 inputs. `q` is ignored for entropy.
pub fn ref_measure(
    measure: Measure,
    p: Input<'_>,
    q: Option<Input<'_>>,
    cols: usize,
    norm: Normalization,
    base: Base,
) -> Vec<f64> {
    let rows = p.rows.max(q.map_or(1, |q| q.rows));
    let lb = ln_base(base);
    (0..rows)
        .map(|r| {
            let (pp, lp) = ref_dist(p.row(r, cols), p.form, norm);
            let nats = if measure == Measure::Entropy {
                let t: Vec<f64> = (0..cols)
                    .map(|i| {
                        if zero(pp[i], lp[i]) {
                            0.0
                        } else {
                            -pp[i] * lp[i]
                        }
                    })
                    .collect();
                sum_f64(&t)
            } else {
                let q = q.expect("q");
                let (qq, lq) = ref_dist(q.row(r, cols), q.form, norm);
                row_pair(measure, &pp, &lp, &qq, &lq)
            };
            nats / lb
        })
        .collect()
}

fn row_pair(measure: Measure, pp: &[f64], lp: &[f64], qq: &[f64], lq: &[f64]) -> f64 {
    let n = pp.len();
    let mut inf = false;
    let mut t = Vec::with_capacity(n);
    match measure {
        Measure::CrossEntropy | Measure::Kl => {
            for i in 0..n {
                if zero(pp[i], lp[i]) {
                    continue; // p = 0: 0 whatever q is
                }
                if zero(qq[i], lq[i]) {
                    inf = true;
                    continue;
                }
                t.push(if measure == Measure::Kl {
                    pp[i] * (lp[i] - lq[i])
                } else {
                    -pp[i] * lq[i]
                });
            }
        }
        Measure::Js => {
            for i in 0..n {
                let (pz, qz) = (zero(pp[i], lp[i]), zero(qq[i], lq[i]));
                if pz && qz {
                    continue;
                }
                // ln m = ln(½(p + q)) = logaddexp(ln p, ln q) - ln 2.
                let (a, b) = if lp[i] > lq[i] {
                    (lp[i], lq[i])
                } else {
                    (lq[i], lp[i])
                };
                let lm = a + (b - a).exp().ln_1p() - 2f64.ln();
                if !pz {
                    t.push(0.5 * pp[i] * (lp[i] - lm));
                }
                if !qz {
                    t.push(0.5 * qq[i] * (lq[i] - lm));
                }
            }
        }
        // ½ Σ (√p − √q)² and ½ Σ |p − q|: a zero's term is ½ (the other side)
        Measure::Hellinger => {
            t.extend((0..n).map(|i| 0.5 * (pp[i].sqrt() - qq[i].sqrt()).powi(2)));
        }
        Measure::TotalVariation => {
            t.extend((0..n).map(|i| 0.5 * (pp[i] - qq[i]).abs()));
        }
        Measure::Entropy => unreachable!(),
        other => panic!("not covered here: {other:?}"),
    }
    if inf { f64::INFINITY } else { sum_f64(&t) }
}

/// Per-row negative log-likelihood (weighted, smoothed as PyTorch's
/// `F.cross_entropy`) in base `base`, and Σ wₜ over the rows not ignored.
///   lᵢ = (1−ε)·w_t·(−ln q_t) + (ε/C)·Σ_c w_c·(−ln q_c), 0 for an ignored row.
/// A class with w_c = 0 (or ε = 0) contributes nothing even where q_c = 0.
#[allow(
    clippy::too_many_arguments,
    reason = "mirrors NllOptions field by field"
)]
pub fn ref_nll(
    q: Input<'_>,
    cols: usize,
    targets: &[i64],
    ignore: Option<i64>,
    weights: Option<&[f32]>,
    eps: f64,
    norm: Normalization,
    base: Base,
) -> (Vec<f64>, f64) {
    let lb = ln_base(base);
    let w = |c: usize| weights.map_or(1.0, |w| w[c] as f64);
    let mut counted = 0.0;
    let vals = targets
        .iter()
        .enumerate()
        .map(|(r, &t)| {
            if ignore == Some(t) {
                return 0.0;
            }
            let t = t as usize;
            let (qq, lq) = ref_dist(q.row(r, cols), q.form, norm);
            counted += w(t);
            let nl = |c: usize| {
                if zero(qq[c], lq[c]) {
                    f64::INFINITY
                } else {
                    -lq[c]
                }
            };
            let mut terms = Vec::new();
            let wt = (1.0 - eps) * w(t);
            if wt > 0.0 {
                terms.push(wt * nl(t));
            }
            if eps > 0.0 {
                for c in 0..cols {
                    if w(c) > 0.0 {
                        terms.push(eps / cols as f64 * w(c) * nl(c));
                    }
                }
            }
            if terms.iter().any(|v| v.is_infinite()) {
                f64::INFINITY
            } else {
                sum_f64(&terms) / lb
            }
        })
        .collect();
    (vals, counted)
}

// ------------------------------------------------------------------ inputs

/// A small seeded generator (SplitMix64): the tests need no `rand`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with seed `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }
}

/// Random probability rows (normalised in f64, then rounded to f32), about
/// `zero_frac` of the entries exactly 0 (never a whole row).
pub fn rand_probs(rng: &mut Rng, rows: usize, cols: usize, zero_frac: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let mut x: Vec<f64> = (0..cols)
            .map(|_| {
                if rng.uniform() < zero_frac {
                    0.0
                } else {
                    -rng.uniform().ln() * rng.uniform()
                }
            })
            .collect();
        if x.iter().all(|&v| v == 0.0) {
            x[rng.below(cols)] = 1.0;
        }
        let s: f64 = x.iter().sum();
        out.extend(x.iter().map(|v| (v / s) as f32));
    }
    out
}

/// Random logits: offset + scale · N(0, 1), rounded to f32.
pub fn rand_logits(rng: &mut Rng, rows: usize, cols: usize, scale: f64, offset: f64) -> Vec<f32> {
    (0..rows * cols)
        .map(|_| (offset + scale * rng.normal()) as f32)
        .collect()
}

/// ln of each probability, rounded to f32 (0 becomes -inf).
pub fn log_of(p: &[f32]) -> Vec<f32> {
    p.iter().map(|&v| (v as f64).ln() as f32).collect()
}

/// Random rows in `form`: probabilities with about `zero_frac` zeros, their
/// logs, or logits with scale 3 (no masked classes).
pub fn rand_form(rng: &mut Rng, rows: usize, cols: usize, form: Form, zero_frac: f64) -> Vec<f32> {
    match form {
        Form::Probs => rand_probs(rng, rows, cols, zero_frac),
        Form::LogProbs => log_of(&rand_probs(rng, rows, cols, zero_frac)),
        Form::Logits => rand_logits(rng, rows, cols, 3.0, 0.0),
        other => panic!("not covered here: {other:?}"),
    }
}

/// Random class targets in [0, classes).
pub fn rand_targets(rng: &mut Rng, n: usize, classes: usize) -> Vec<i64> {
    (0..n).map(|_| rng.below(classes) as i64).collect()
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

pub fn out_buffer(device: &kullback::wgpu::Device, bytes: u64) -> kullback::wgpu::Buffer {
    device.create_buffer(&kullback::wgpu::BufferDescriptor {
        label: Some("output"),
        size: bytes,
        usage: kullback::wgpu::BufferUsages::STORAGE | kullback::wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

pub fn read_records(
    device: &kullback::wgpu::Device,
    queue: &kullback::wgpu::Queue,
    src: &kullback::wgpu::Buffer,
    offset: u64,
    bytes: u64,
) -> Vec<kullback::Record> {
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
    bytemuck::cast_slice::<u8, kullback::Record>(
        &staging.slice(..).get_mapped_range().expect("view"),
    )
    .to_vec()
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
