//! `kullback`: entropy, cross-entropy, KL, Jensen-Shannon, squared Hellinger,
//! total variation and negative log-likelihood of distributions stored in
//! `.npy` files.
//!
//! ```text
//! kullback entropy       --p P.npy [--p-form F]
//! kullback cross-entropy --p P.npy --q Q.npy [--p-form F] [--q-form F]
//! kullback kl            --p P.npy --q Q.npy [--p-form F] [--q-form F]
//! kullback js            --p P.npy --q Q.npy [--p-form F] [--q-form F]
//! kullback hellinger     --p P.npy --q Q.npy [--p-form F] [--q-form F]   (no --base)
//! kullback total-variation --p P.npy --q Q.npy [--p-form F] [--q-form F] (no --base)
//! kullback nll           --q Q.npy --targets T.npy [--q-form F] [--ignore-index K]
//!                        [--weights W.npy] [--label-smoothing E]
//! common: [--reduction none|sum|mean] [--base e|2|10|B] [--normalize]
//!         [--backend auto|gpu|cpu] [--out OUT.npy]
//! kullback pairwise MEASURE --p P.npy [--q Q.npy] [--p-form F] [--q-form F] [--base B]
//!                        [--normalize] [--backend ...] --out D.npy
//!                        [--top-k K --out-index I.npy [--exclude-self]]
//! ```
//!
//! `pairwise` writes the M × N matrix D[i, j] = MEASURE(P_i, Q_j) (q omitted:
//! p against itself) to D.npy as 2-D float32 in C order, a band of rows at a
//! time (memory is bounded by the band, not the matrix); with `--top-k` it
//! writes each row's k nearest instead: [M, K] float32 values to `--out` and
//! [M, K] uint32 indices to `--out-index`.
//!
//! Prints one JSON object on stdout. Bad input: exit status 1, nothing on
//! stdout, and `error: FILE: problem` as the last line of stderr.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kullback::{
    Arg, Backend, Base, Batch, Context, Error, Form, Measure, NllOptions, Normalization, Options,
    Output, PairwiseOptions, Reduction, Targets, TileShape, Values,
};
use npyz::{DType, NpyFile, Order, TypeChar, WriterBuilder};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "kullback",
    version,
    about = "Entropy, cross-entropy, KL, Jensen-Shannon and NLL of distributions in .npy files",
    long_about = "Entropy, cross-entropy, KL, Jensen-Shannon and NLL of distributions in .npy files.\n\n\
        Inputs: .npy float32 or float64, 2-D [rows, cols] in C order (one distribution per row) \
        or 1-D (one distribution); targets: 1-D int32, int64 or uint32. Prints one JSON object: \
        {\"measure\", \"backend\", \"adapter\", \"rows\", \"cols\", \"reduction\", \"values\"} \
        (+ \"perplexity\" for nll with --reduction mean); non-finite values are the strings \
        \"inf\", \"-inf\", \"nan\". KULLBACK_BACKEND=auto|gpu|cpu applies when --backend is auto."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Entropy H(p) = -Σ p log p of each row of p.
    Entropy(EntropyArgs),
    /// Cross-entropy H(p, q) = -Σ p log q of each row pair.
    CrossEntropy(PairArgs),
    /// Kullback-Leibler divergence D(P‖Q) = Σ p log(p / q) of each row pair.
    Kl(PairArgs),
    /// Jensen-Shannon divergence ½ D(P‖M) + ½ D(Q‖M), M = ½ (P + Q).
    Js(PairArgs),
    /// Squared Hellinger distance ½ Σ (√p − √q)² (takes no --base).
    Hellinger(PairArgs),
    /// Total variation distance ½ Σ |p − q| (takes no --base).
    TotalVariation(PairArgs),
    /// Negative log-likelihood -log q[t] of class targets t.
    Nll(NllArgs),
    /// All pairs: the matrix D[i, j] = MEASURE(P_i, Q_j), or each row's nearest k.
    Pairwise(PairwiseArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PairMeasure {
    Kl,
    CrossEntropy,
    Js,
    Hellinger,
    TotalVariation,
}

impl From<PairMeasure> for Measure {
    fn from(m: PairMeasure) -> Measure {
        match m {
            PairMeasure::Kl => Measure::Kl,
            PairMeasure::CrossEntropy => Measure::CrossEntropy,
            PairMeasure::Js => Measure::Js,
            PairMeasure::Hellinger => Measure::Hellinger,
            PairMeasure::TotalVariation => Measure::TotalVariation,
        }
    }
}

#[derive(Args, Debug)]
struct PairwiseArgs {
    /// kl, cross-entropy, js, hellinger (½ Σ (√p − √q)²) or total-variation (½ Σ |p − q|).
    #[arg(value_enum)]
    measure: PairMeasure,
    /// p: .npy, [rows, cols] or [cols]: the rows of the matrix.
    #[arg(long, value_name = "P.npy")]
    p: PathBuf,
    /// q: .npy, [rows, cols] or [cols]: its columns; omitted, p against itself.
    #[arg(long, value_name = "Q.npy")]
    q: Option<PathBuf>,
    /// How p is given.
    #[arg(long, value_enum, default_value_t = FormArg::Probs)]
    p_form: FormArg,
    /// How q is given.
    #[arg(long, value_enum, default_value_t = FormArg::Probs)]
    q_form: FormArg,
    /// Log base of the results: e, 2, 10 or any number > 0 other than 1 (kl,
    /// cross-entropy, js only: hellinger and total-variation take none).
    #[arg(long, value_name = "BASE", default_value = "e", value_parser = parse_base)]
    base: Base,
    /// Divide each row by its sum instead of requiring it to sum to 1.
    #[arg(long)]
    normalize: bool,
    /// Backend; `auto` lets KULLBACK_BACKEND choose, else a hardware GPU or the CPU.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// The matrix as 2-D float32 [M, N] (with --top-k: the values, [M, K]).
    #[arg(long, value_name = "D.npy")]
    out: PathBuf,
    /// Each row's K nearest (smallest) instead of the matrix.
    #[arg(long, value_name = "K", requires = "out_index")]
    top_k: Option<usize>,
    /// With --top-k: the indices (rows of q), 2-D uint32 [M, K].
    #[arg(long, value_name = "I.npy", requires = "top_k")]
    out_index: Option<PathBuf>,
    /// With --top-k and q omitted: leave each row's own index out.
    #[arg(long, requires = "top_k")]
    exclude_self: bool,
    /// Rows of the matrix computed and written at a time (default: about
    /// 64 MiB of them); bounds the memory.
    #[arg(long, value_name = "R", hide = true)]
    rows_per_band: Option<usize>,
}

#[derive(Args, Debug)]
struct EntropyArgs {
    /// p: .npy, [rows, cols] or [cols].
    #[arg(long, value_name = "P.npy")]
    p: PathBuf,
    /// How p is given.
    #[arg(long, value_enum, default_value_t = FormArg::Probs)]
    p_form: FormArg,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct PairArgs {
    /// p: .npy, [rows, cols] or [cols]; one row is compared with every row of q.
    #[arg(long, value_name = "P.npy")]
    p: PathBuf,
    /// q: .npy, [rows, cols] or [cols]; one row is compared with every row of p.
    #[arg(long, value_name = "Q.npy")]
    q: PathBuf,
    /// How p is given.
    #[arg(long, value_enum, default_value_t = FormArg::Probs)]
    p_form: FormArg,
    /// How q is given.
    #[arg(long, value_enum, default_value_t = FormArg::Probs)]
    q_form: FormArg,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct NllArgs {
    /// q: .npy, [rows, classes] or [classes] (one row shared by every target).
    #[arg(long, value_name = "Q.npy")]
    q: PathBuf,
    /// Class targets: 1-D .npy of int32, int64 or uint32, one per row of q.
    #[arg(long, value_name = "T.npy")]
    targets: PathBuf,
    /// How q is given.
    #[arg(long, value_enum, default_value_t = FormArg::Probs)]
    q_form: FormArg,
    /// Targets equal to K are ignored: value 0, not counted in the mean.
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    ignore_index: Option<i64>,
    /// Class weights: 1-D .npy of float32 or float64, one per class.
    #[arg(long, value_name = "W.npy")]
    weights: Option<PathBuf>,
    /// Label smoothing ε in [0, 1].
    #[arg(long, value_name = "E", default_value_t = 0.0)]
    label_smoothing: f32,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct Common {
    /// How per-row values are combined.
    #[arg(long, value_enum, default_value_t = ReductionArg::None)]
    reduction: ReductionArg,
    /// Log base of the results: e, 2, 10 or any number > 0 other than 1.
    #[arg(long, value_name = "BASE", default_value = "e", value_parser = parse_base)]
    base: Base,
    /// Divide each row by its sum instead of requiring it to sum to 1.
    #[arg(long)]
    normalize: bool,
    /// Backend; `auto` lets KULLBACK_BACKEND choose, else a hardware GPU or the CPU.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Write the values to OUT.npy (1-D float32) and leave them out of the JSON.
    #[arg(long, value_name = "OUT.npy")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormArg {
    Probs,
    LogProbs,
    Logits,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ReductionArg {
    None,
    Sum,
    Mean,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    Gpu,
    Cpu,
}

fn parse_base(s: &str) -> Result<Base, String> {
    match s {
        "e" => Ok(Base::E),
        "2" => Ok(Base::Two),
        "10" => Ok(Base::Ten),
        _ => match s.parse::<f64>() {
            Ok(b) if b.is_finite() && b > 0.0 && b != 1.0 => Ok(Base::Custom(b)),
            _ => Err("expected e, 2, 10 or a finite number > 0 other than 1".into()),
        },
    }
}

impl From<FormArg> for Form {
    fn from(f: FormArg) -> Form {
        match f {
            FormArg::Probs => Form::Probs,
            FormArg::LogProbs => Form::LogProbs,
            FormArg::Logits => Form::Logits,
        }
    }
}

impl Common {
    fn options(&self) -> Options {
        Options::default()
            .reduction(match self.reduction {
                ReductionArg::None => Reduction::None,
                ReductionArg::Sum => Reduction::Sum,
                ReductionArg::Mean => Reduction::Mean,
            })
            .base(self.base)
            .normalization(if self.normalize {
                Normalization::Renormalize
            } else {
                Normalization::Validate
            })
    }

    fn context(&self) -> Result<Context, String> {
        let backend = match self.backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Gpu => Backend::Gpu,
            BackendArg::Cpu => Backend::Cpu,
        };
        Context::with_backend(backend).map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    env_logger::init();
    let cli = Cli::parse();
    match run(&cli.command).and_then(|json| print_out(&json)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            // one line, whatever the message holds (parser messages span several)
            let line: Vec<&str> = msg.split_whitespace().collect();
            eprintln!("error: {}", line.join(" "));
            ExitCode::FAILURE
        }
    }
}

/// Writes the JSON line to stdout. A closed pipe (`| head`) ends quietly with
/// success, as other Unix tools do; any other failure (a full disk) is an error.
fn print_out(json: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{json}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("stdout: cannot write the result: {e}")),
    }
}

/// A path as it appears in messages: quoted, with newlines and other control
/// characters escaped, so that an error stays on one line.
fn show(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Refuses an `--out` that is one of the input files (it would be overwritten).
fn check_out(command: &Command) -> Result<(), String> {
    let (out, inputs): (Option<&PathBuf>, Vec<&Path>) = match command {
        Command::Entropy(a) => (a.common.out.as_ref(), vec![&a.p]),
        Command::CrossEntropy(a)
        | Command::Kl(a)
        | Command::Js(a)
        | Command::Hellinger(a)
        | Command::TotalVariation(a) => (a.common.out.as_ref(), vec![&a.p, &a.q]),
        Command::Nll(a) => {
            let mut v: Vec<&Path> = vec![&a.q, &a.targets];
            v.extend(a.weights.as_deref());
            (a.common.out.as_ref(), v)
        }
        Command::Pairwise(a) => {
            let mut inputs: Vec<&Path> = vec![&a.p];
            inputs.extend(a.q.as_deref());
            for out in std::iter::once(&a.out).chain(a.out_index.as_ref()) {
                refuse_input(out, &inputs)?;
            }
            if a.out_index.as_ref().is_some_and(|i| same_file(i, &a.out)) {
                return Err(format!(
                    "{}: --out-index is also --out; write them to two paths",
                    show(&a.out)
                ));
            }
            return Ok(());
        }
    };
    let Some(out) = out else { return Ok(()) };
    refuse_input(out, &inputs)
}

fn refuse_input(out: &Path, inputs: &[&Path]) -> Result<(), String> {
    for input in inputs {
        if same_file(out, input) {
            return Err(format!(
                "{}: --out is also an input ({}); write the output to another path",
                show(out),
                show(input)
            ));
        }
    }
    Ok(())
}

/// Whether two paths name the same file (the same inode, or the same path
/// where the output does not exist yet).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Parses nothing, prints nothing: load -> evaluate -> the JSON text.
fn run(command: &Command) -> Result<String, String> {
    check_out(command)?;
    if let Command::Pairwise(a) = command {
        return pairwise(a);
    }
    let (name, files, common, output) = match command {
        Command::Entropy(a) => {
            let files = Files {
                p: Some(&a.p),
                ..Files::default()
            };
            let p = Matrix::load(&a.p)?;
            let ctx = a.common.context()?;
            let out = ctx.entropy(&p.batch(a.p_form), &a.common.options());
            ("entropy", files, &a.common, out)
        }
        Command::CrossEntropy(a) => pair(Measure::CrossEntropy, a)?,
        Command::Kl(a) => pair(Measure::Kl, a)?,
        Command::Js(a) => pair(Measure::Js, a)?,
        Command::Hellinger(a) => pair(Measure::Hellinger, a)?,
        Command::TotalVariation(a) => pair(Measure::TotalVariation, a)?,
        Command::Pairwise(_) => unreachable!("handled above"),
        Command::Nll(a) => {
            let files = Files {
                q: Some(&a.q),
                targets: Some(&a.targets),
                weights: a.weights.as_deref(),
                ..Files::default()
            };
            let q = Matrix::load(&a.q)?;
            let targets = TargetVec::load(&a.targets)?;
            let weights = match &a.weights {
                Some(path) => Some(load_weights(path)?),
                None => None,
            };
            let mut opts = NllOptions::default()
                .common(a.common.options())
                .label_smoothing(a.label_smoothing);
            if let Some(k) = a.ignore_index {
                opts = opts.ignore_index(k);
            }
            if let Some(w) = &weights {
                opts = opts.weights(w);
            }
            let ctx = a.common.context()?;
            let out = ctx.nll(&q.batch(a.q_form), targets.as_targets(), &opts);
            ("nll", files, &a.common, out)
        }
    };
    let output = output.map_err(|e| files.explain(&e))?;
    if let Some(path) = &common.out {
        write_values(path, &output.values)?;
    }
    Ok(to_json(name, &output, common.out.is_none()))
}

/// Rows of the matrix per band written to the .npy: about 64 MiB of f32.
const BAND_BYTES: usize = 64 << 20;

/// `kullback pairwise`: the matrix (or the nearest k) into .npy files.
fn pairwise(a: &PairwiseArgs) -> Result<String, String> {
    let files = Files {
        p: Some(&a.p),
        q: a.q.as_deref(),
        ..Files::default()
    };
    let p = Matrix::load(&a.p)?;
    let q = match &a.q {
        Some(path) => Some(Matrix::load(path)?),
        None => None,
    };
    let backend = match a.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Gpu => Backend::Gpu,
        BackendArg::Cpu => Backend::Cpu,
    };
    let ctx = Context::with_backend(backend).map_err(|e| e.to_string())?;
    let opts = PairwiseOptions::default()
        .base(a.base)
        .normalization(if a.normalize {
            Normalization::Renormalize
        } else {
            Normalization::Validate
        })
        .exclude_self(a.exclude_self);
    let measure = Measure::from(a.measure);
    let pb = p.batch(a.p_form);
    let qb = q.as_ref().map(|q| q.batch(a.q_form));
    let n = q.as_ref().map_or(p.rows, |q| q.rows);
    let mut fields: Vec<(&str, Value)> = vec![("measure", measure.name().into())];
    let (ran, adapter, extra) = match (a.top_k, &a.out_index) {
        (Some(k), Some(index_path)) => {
            let t = ctx
                .pairwise_top_k(measure, &pb, qb.as_ref(), k, &opts)
                .map_err(|e| files.explain(&e))?;
            write_2d(&a.out, &t.values, t.rows, t.k)?;
            write_2d(index_path, &t.indices, t.rows, t.k)?;
            (t.backend, t.adapter, Some(("top_k", Value::from(k))))
        }
        _ => {
            // a band of whole rows at a time, written as it comes
            let rows = a
                .rows_per_band
                .unwrap_or((BAND_BYTES / 4 / n.max(1)).max(1));
            let mut writer: Option<npyz::NpyWriter<f32, BufWriter<File>>> = None;
            let fail = |e: std::io::Error| format!("{}: cannot write: {e}", show(&a.out));
            let ran = ctx
                .pairwise_tiles(
                    measure,
                    &pb,
                    qb.as_ref(),
                    &opts,
                    TileShape::full_rows(rows),
                    |t| {
                        if writer.is_none() {
                            let file = File::create(&a.out).map_err(fail)?;
                            let w = npyz::WriteOptions::new()
                                .default_dtype()
                                .shape(&[p.rows as u64, n as u64])
                                .writer(BufWriter::with_capacity(1 << 20, file))
                                .begin_nd()
                                .map_err(fail)?;
                            writer = Some(w);
                        }
                        if let Some(w) = writer.as_mut() {
                            w.extend(t.values.iter().copied()).map_err(fail)?;
                        }
                        Ok::<(), CliError>(())
                    },
                )
                .map_err(|e| match e {
                    CliError::Lib(e) => files.explain(&e),
                    CliError::Msg(m) => m,
                })?;
            if let Some(w) = writer {
                w.finish().map_err(fail)?;
            }
            (
                ran,
                ctx.adapter_name()
                    .map(str::to_string)
                    .filter(|_| ran == kullback::Ran::Gpu),
                None,
            )
        }
    };
    fields.extend([
        ("backend", ran.name().into()),
        ("adapter", adapter.into()),
        ("rows", p.rows.into()),
        ("cols", p.cols.into()),
        ("reduction", "none".into()),
        ("q_rows", n.into()),
        ("pairwise", true.into()),
    ]);
    fields.extend(extra);
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    Ok(format!("{{{}}}", body.join(",")))
}

/// The CLI's error while streaming tiles: the library's (explained with the
/// file names), or its own (already a message).
enum CliError {
    Lib(Error),
    Msg(String),
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Lib(e)
    }
}

impl From<String> for CliError {
    fn from(s: String) -> Self {
        CliError::Msg(s)
    }
}

/// Writes `values` as a 2-D [rows, cols] .npy (C order).
fn write_2d<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    values: &[T],
    rows: usize,
    cols: usize,
) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: cannot write: {e}", show(path));
    let file = File::create(path).map_err(fail)?;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[rows as u64, cols as u64])
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(fail)?;
    w.extend(values.iter().copied()).map_err(fail)?;
    w.finish().map_err(fail)
}

type Evaluated<'a> = (
    &'static str,
    Files<'a>,
    &'a Common,
    kullback::Result<Output>,
);

fn pair(measure: Measure, a: &PairArgs) -> Result<Evaluated<'_>, String> {
    let files = Files {
        p: Some(&a.p),
        q: Some(&a.q),
        ..Files::default()
    };
    let p = Matrix::load(&a.p)?;
    let q = Matrix::load(&a.q)?;
    let ctx = a.common.context()?;
    let out = ctx.evaluate(
        measure,
        &p.batch(a.p_form),
        Some(&q.batch(a.q_form)),
        &a.common.options(),
    );
    Ok((measure.name(), files, &a.common, out))
}

/// The files behind each argument, to name them in error messages.
#[derive(Default)]
struct Files<'a> {
    p: Option<&'a Path>,
    q: Option<&'a Path>,
    targets: Option<&'a Path>,
    weights: Option<&'a Path>,
}

impl Files<'_> {
    fn name(&self, arg: Arg) -> String {
        let path = match arg {
            Arg::P => self.p,
            Arg::Q => self.q,
            Arg::Targets => self.targets,
            Arg::Weights => self.weights,
        };
        path.map_or_else(|| arg.to_string(), show)
    }

    /// Every input file, for an error that concerns the call as a whole.
    fn all(&self) -> String {
        let names: Vec<String> = [self.p, self.q, self.targets, self.weights]
            .into_iter()
            .flatten()
            .map(show)
            .collect();
        names.join(", ")
    }

    /// The library's error as one line that starts with the file(s) concerned.
    fn explain(&self, e: &Error) -> String {
        match e {
            Error::BadValue { arg, .. }
            | Error::Empty { arg, .. }
            | Error::Length { arg, .. }
            | Error::CannotNormalize { arg, .. } => format!("{}: {e}", self.name(*arg)),
            Error::NotNormalized {
                arg,
                row,
                sum,
                tolerance,
            } => format!(
                "{}: {arg} row {row} sums to {sum}, not 1 within {tolerance} \
                 (pass --normalize to divide each row by its sum)",
                self.name(*arg)
            ),
            Error::TargetOutOfRange { .. } => format!("{}: {e}", self.name(Arg::Targets)),
            Error::TargetCount {
                targets,
                q_rows,
                q_cols,
            } => format!(
                "{}: {targets} targets, but {} has {q_rows} rows of {q_cols} classes \
                 (one target per row of q, or q a single row)",
                self.name(Arg::Targets),
                self.name(Arg::Q)
            ),
            Error::ShapeMismatch { .. } => {
                format!("{}, {}: {e}", self.name(Arg::P), self.name(Arg::Q))
            }
            Error::OutOfMemory { .. } => format!("{}: {e}: the input did not fit", self.all()),
            other => format!("{}: {other}", self.all()),
        }
    }
}

/// Floats from a .npy file, as a rows × cols batch.
struct Matrix {
    values: FloatVec,
    rows: usize,
    cols: usize,
}

enum FloatVec {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Matrix {
    /// Reads a 1-D or 2-D C-order float32/float64 array.
    fn load(path: &Path) -> Result<Matrix, String> {
        let npy = open_npy(path)?;
        let shape = npy.shape().to_vec();
        let (rows, cols) = match shape[..] {
            [n] => (1, n),
            [r, c] => (r, c),
            _ => {
                return Err(format!(
                    "{}: a {}-D array of shape {shape:?}; expected 2-D [rows, cols] or 1-D [cols]",
                    show(path),
                    shape.len()
                ));
            }
        };
        if shape.len() == 2 && npy.order() == Order::Fortran {
            return Err(format!(
                "{}: stored in Fortran (column-major) order; save it in C order \
                 (numpy.ascontiguousarray)",
                show(path)
            ));
        }
        let values = match float_size(&npy.dtype()) {
            Some(4) => FloatVec::F32(read_all(path, npy)?),
            Some(8) => FloatVec::F64(read_all(path, npy)?),
            _ => {
                return Err(format!(
                    "{}: unsupported dtype {}; expected float32 or float64",
                    show(path),
                    dtype_name(&npy.dtype())
                ));
            }
        };
        Ok(Matrix {
            values,
            rows: to_usize(path, rows)?,
            cols: to_usize(path, cols)?,
        })
    }

    fn batch(&self, form: FormArg) -> Batch<'_> {
        let values = match &self.values {
            FloatVec::F32(v) => Values::F32(v),
            FloatVec::F64(v) => Values::F64(v),
        };
        Batch::new(values, self.rows, self.cols).form(form.into())
    }
}

enum TargetVec {
    I32(Vec<i32>),
    I64(Vec<i64>),
    U32(Vec<u32>),
}

impl TargetVec {
    fn load(path: &Path) -> Result<TargetVec, String> {
        let npy = open_npy(path)?;
        check_1d(path, npy.shape(), "targets")?;
        let dtype = npy.dtype();
        match &dtype {
            DType::Plain(t) if t.size_field() == 4 && t.type_char() == TypeChar::Int => {
                Ok(TargetVec::I32(read_all(path, npy)?))
            }
            DType::Plain(t) if t.size_field() == 8 && t.type_char() == TypeChar::Int => {
                Ok(TargetVec::I64(read_all(path, npy)?))
            }
            DType::Plain(t) if t.size_field() == 4 && t.type_char() == TypeChar::Uint => {
                Ok(TargetVec::U32(read_all(path, npy)?))
            }
            _ => Err(format!(
                "{}: unsupported dtype {} for targets; expected int32, int64 or uint32",
                show(path),
                dtype_name(&dtype)
            )),
        }
    }

    fn as_targets(&self) -> Targets<'_> {
        match self {
            TargetVec::I32(v) => Targets::I32(v),
            TargetVec::I64(v) => Targets::I64(v),
            TargetVec::U32(v) => Targets::U32(v),
        }
    }
}

/// Class weights: 1-D float32 or float64 (converted to f32).
fn load_weights(path: &Path) -> Result<Vec<f32>, String> {
    let npy = open_npy(path)?;
    check_1d(path, npy.shape(), "weights")?;
    match float_size(&npy.dtype()) {
        Some(4) => read_all(path, npy),
        Some(8) => kullback::f32_from_f64(&read_all::<f64>(path, npy)?, Arg::Weights)
            .map_err(|e| format!("{}: {e}", show(path))),
        _ => Err(format!(
            "{}: unsupported dtype {} for weights; expected float32 or float64",
            show(path),
            dtype_name(&npy.dtype())
        )),
    }
}

fn open_npy(path: &Path) -> Result<NpyFile<BufReader<File>>, String> {
    let file = File::open(path).map_err(|e| format!("{}: cannot open: {e}", show(path)))?;
    // only a regular file's size is known up front; pipes and devices
    // (/dev/stdin) are read as streams
    let file_len = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let npy = NpyFile::new(BufReader::new(file))
        .map_err(|e| format!("{}: not a readable .npy file: {e}", show(path)))?;
    if npy.uses_pickled_array() {
        return Err(format!(
            "{}: holds Python objects (pickled); expected a numeric array",
            show(path)
        ));
    }
    let item = match npy.dtype() {
        DType::Plain(t) => t.num_bytes().unwrap_or(0) as u64,
        _ => 0,
    };
    let need = npy
        .shape()
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(item));
    let Some(need) = need else {
        return Err(format!(
            "{}: shape {:?} is too large: its size in bytes overflows 64 bits",
            show(path),
            npy.shape()
        ));
    };
    // The header's shape must fit in the file before anything is allocated for it.
    if let Some(file_len) = file_len {
        if need > file_len {
            return Err(format!(
                "{}: shape {:?} needs {need} bytes of data, but the file holds {file_len} bytes",
                show(path),
                npy.shape()
            ));
        }
    }
    Ok(npy)
}

/// All values of `npy`, into memory reserved up front without aborting: a
/// file that does not fit is an error naming it.
fn read_all<T: npyz::Deserialize>(
    path: &Path,
    npy: NpyFile<BufReader<File>>,
) -> Result<Vec<T>, String> {
    let n = npy.len();
    let bytes = n.saturating_mul(std::mem::size_of::<T>() as u64);
    let mut v = Vec::new();
    usize::try_from(n)
        .ok()
        .and_then(|n| v.try_reserve_exact(n).ok())
        .ok_or_else(|| {
            format!(
                "{}: does not fit in memory: its {n} values need {bytes} bytes, which could not be allocated",
                show(path)
            )
        })?;
    let data = npy
        .data::<T>()
        .map_err(|e| format!("{}: cannot read the data: {e}", show(path)))?;
    for x in data {
        v.push(x.map_err(|e| format!("{}: cannot read the data: {e}", show(path)))?);
    }
    Ok(v)
}

fn check_1d(path: &Path, shape: &[u64], what: &str) -> Result<(), String> {
    if shape.len() == 1 {
        Ok(())
    } else {
        Err(format!(
            "{}: a {}-D array of shape {shape:?}; {what} must be 1-D",
            show(path),
            shape.len()
        ))
    }
}

fn float_size(dtype: &DType) -> Option<u64> {
    match dtype {
        DType::Plain(t) if t.type_char() == TypeChar::Float => Some(t.size_field()),
        _ => None,
    }
}

fn dtype_name(dtype: &DType) -> String {
    match dtype {
        DType::Plain(t) => t.to_string(),
        _ => "(a structured dtype)".into(),
    }
}

fn to_usize(path: &Path, n: u64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| format!("{}: dimension {n} is too large", show(path)))
}

fn write_values(path: &Path, values: &[f32]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: cannot write: {e}", show(path));
    let file = File::create(path).map_err(fail)?;
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[values.len() as u64])
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(fail)?;
    writer.extend(values.iter().copied()).map_err(fail)?;
    writer.finish().map_err(fail)
}

/// A finite value as a JSON number (the shortest decimal that reads back as the
/// same f32), a non-finite one as "inf", "-inf" or "nan".
fn number(x: f64, shortest: String) -> Value {
    if x.is_nan() {
        Value::from("nan")
    } else if x.is_infinite() {
        Value::from(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        shortest
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number)
    }
}

/// The JSON object, its keys in the documented order (serde_json's `Map`
/// would sort them).
fn to_json(measure: &str, out: &Output, with_values: bool) -> String {
    let mut fields: Vec<(&str, Value)> = vec![
        ("measure", measure.into()),
        ("backend", out.backend.name().into()),
        ("adapter", out.adapter.clone().into()),
        ("rows", out.rows.into()),
        ("cols", out.cols.into()),
        ("reduction", out.reduction.name().into()),
    ];
    if with_values {
        let values = out.values.iter().map(|&v| number(v as f64, v.to_string()));
        fields.push(("values", Value::Array(values.collect())));
    }
    if let Some(ppl) = out.perplexity {
        fields.push(("perplexity", number(ppl, ppl.to_string())));
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(","))
}
