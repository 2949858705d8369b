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
//!                        [--weights W.npy] [--label-smoothing E] [--out-grad G.npy]
//!                        [--grad-dtype f32|f16|bf16]
//! kullback distill       --student S.npy (--teacher T.npy [--teacher-form logits|log-probs]
//!                        | --teacher-index I.npy --teacher-logprob L.npy [--tail bucket|renormalize])
//!                        --divergence forward-kl|reverse-kl|jsd [--beta B] --temperature T
//!                        [--mask M.npy] [--reduction none|sum|mean] [--backend auto|gpu|cpu]
//!                        [--out OUT.npy] [--out-grad G.npy] [--out-teacher-grad TG.npy]
//!                        [--grad-dtype f32|f16|bf16]
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
    Arg, Backend, Base, Batch, Context, DistillOptions, Divergence, Error, Form, GradMut, Measure,
    NllOptions, Normalization, Options, Output, PairwiseOptions, Reduction, RowMask, SparseTeacher,
    Tail, Targets, Teacher, TileShape, Values,
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
    /// Negative log-likelihood -log q[t] of class targets t (with --out-grad,
    /// from logits, also its gradient with respect to the logits).
    Nll(NllArgs),
    /// Distillation loss T²·D(teacher, student) at temperature T and its
    /// gradient with respect to the student's logits (--out-grad).
    Distill(DistillArgs),
    /// All pairs: the matrix D[i, j] = MEASURE(P_i, Q_j), or each row's nearest k.
    Pairwise(PairwiseArgs),
}

#[derive(Args, Debug)]
struct DistillArgs {
    /// Student logits: .npy, [rows, cols] or [cols].
    #[arg(long, value_name = "S.npy")]
    student: PathBuf,
    /// Dense teacher: .npy of the student's shape.
    #[arg(long, value_name = "T.npy", conflicts_with_all = ["teacher_index", "teacher_logprob"])]
    teacher: Option<PathBuf>,
    /// How the dense teacher is given (the temperature applies to both forms).
    #[arg(long, value_enum, default_value_t = TeacherFormArg::Logits)]
    teacher_form: TeacherFormArg,
    /// Sparse teacher: column indices, [rows, k] (or [k]) int32, int64 or uint32.
    #[arg(long, value_name = "I.npy", requires = "teacher_logprob")]
    teacher_index: Option<PathBuf>,
    /// Sparse teacher: ln p_T at those columns (temperature applied), [rows, k] float.
    #[arg(long, value_name = "L.npy", requires = "teacher_index")]
    teacher_logprob: Option<PathBuf>,
    /// A sparse teacher's remaining mass: one tail bucket, or both renormalised over the k columns.
    #[arg(long, value_enum, default_value_t = TailArg::Bucket)]
    tail: TailArg,
    /// The divergence.
    #[arg(long, value_enum)]
    divergence: DivergenceArg,
    /// β of the generalized JSD, in (0, 1).
    #[arg(long, value_name = "B", default_value_t = 0.5)]
    beta: f32,
    /// The temperature T > 0.
    #[arg(long, value_name = "T")]
    temperature: f32,
    /// Row mask: 1-D bool or uint8, one per row (0: the row is ignored).
    #[arg(long, value_name = "M.npy")]
    mask: Option<PathBuf>,
    /// How per-row losses are combined (mean: over the rows that count).
    #[arg(long, value_enum, default_value_t = ReductionArg::None)]
    reduction: ReductionArg,
    /// Backend; `auto` lets KULLBACK_BACKEND choose, else a hardware GPU or
    /// the CPU.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Write the values to OUT.npy (1-D float32) and leave them out of the JSON.
    #[arg(long, value_name = "OUT.npy")]
    out: Option<PathBuf>,
    /// Write the gradient with respect to the student's logits (2-D float32, the student's shape).
    #[arg(long, value_name = "G.npy")]
    out_grad: Option<PathBuf>,
    /// Write the gradient with respect to the teacher's values (a dense
    /// --teacher only, logits or log-probs; 2-D float32, the teacher's shape).
    #[arg(long, value_name = "TG.npy")]
    out_teacher_grad: Option<PathBuf>,
    /// Format of the gradient files: f32, f16 ('<f2'), or bf16 (its bits as
    /// '<u2', as --bf16 reads them), rounded to nearest even.
    #[arg(long, value_enum, default_value_t = GradDtypeArg::F32)]
    grad_dtype: GradDtypeArg,
    /// Float inputs (by flag name: student, teacher, teacher-logprob) holding
    /// bfloat16, read from a '<u2' .npy or an ml_dtypes '<V2' one.
    #[arg(long, value_name = "ARG[,ARG]", value_delimiter = ',')]
    bf16: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TeacherFormArg {
    Logits,
    LogProbs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TailArg {
    Bucket,
    Renormalize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DivergenceArg {
    ForwardKl,
    ReverseKl,
    Jsd,
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
    /// Float inputs (by flag name: p, q) holding bfloat16, read from a '<u2'
    /// .npy or an ml_dtypes '<V2' one.
    #[arg(long, value_name = "ARG[,ARG]", value_delimiter = ',')]
    bf16: Vec<String>,
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
    /// Write the gradient of the (reduced) loss with respect to q, which must
    /// be logits, to G.npy (2-D float32 [rows, classes]).
    #[arg(long, value_name = "G.npy")]
    out_grad: Option<PathBuf>,
    /// Format of the gradient file: f32, f16 ('<f2'), or bf16 (its bits as
    /// '<u2', as --bf16 reads them), rounded to nearest even.
    #[arg(long, value_enum, default_value_t = GradDtypeArg::F32)]
    grad_dtype: GradDtypeArg,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GradDtypeArg {
    F32,
    F16,
    Bf16,
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
    /// Float inputs (by flag name: p, q) holding bfloat16, read from a '<u2'
    /// .npy or an ml_dtypes '<V2' one (NumPy has no bfloat16 dtype).
    #[arg(long, value_name = "ARG[,ARG]", value_delimiter = ',')]
    bf16: Vec<String>,
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

impl ReductionArg {
    fn reduction(self) -> Reduction {
        match self {
            ReductionArg::None => Reduction::None,
            ReductionArg::Sum => Reduction::Sum,
            ReductionArg::Mean => Reduction::Mean,
        }
    }
}

fn context(backend: BackendArg) -> Result<Context, String> {
    let backend = match backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Gpu => Backend::Gpu,
        BackendArg::Cpu => Backend::Cpu,
    };
    Context::with_backend(backend).map_err(|e| e.to_string())
}

impl Common {
    /// Whether `--bf16` names `arg`, after checking that every name it
    /// lists is one of `inputs` (this subcommand's float inputs).
    fn bf16(&self, arg: &str, inputs: &[&str]) -> Result<bool, String> {
        bf16_names(&self.bf16, arg, inputs)
    }

    fn options(&self) -> Options {
        Options::default()
            .reduction(self.reduction.reduction())
            .base(self.base)
            .normalization(if self.normalize {
                Normalization::Renormalize
            } else {
                Normalization::Validate
            })
    }

    fn context(&self) -> Result<Context, String> {
        context(self.backend)
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
    let (outs, inputs): (Vec<(&str, &Path)>, Vec<&Path>) = match command {
        Command::Entropy(a) => (outs(&a.common.out, &None), vec![&a.p]),
        Command::CrossEntropy(a)
        | Command::Kl(a)
        | Command::Js(a)
        | Command::Hellinger(a)
        | Command::TotalVariation(a) => (outs(&a.common.out, &None), vec![&a.p, &a.q]),
        Command::Nll(a) => {
            let mut v: Vec<&Path> = vec![&a.q, &a.targets];
            v.extend(a.weights.as_deref());
            (outs(&a.common.out, &a.out_grad), v)
        }
        Command::Distill(a) => {
            let mut v: Vec<&Path> = vec![&a.student];
            v.extend(
                [&a.teacher, &a.teacher_index, &a.teacher_logprob, &a.mask]
                    .into_iter()
                    .flat_map(|p| p.as_deref()),
            );
            let mut o = outs(&a.out, &a.out_grad);
            o.extend(
                a.out_teacher_grad
                    .as_deref()
                    .map(|p| ("--out-teacher-grad", p)),
            );
            (o, v)
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
    for (i, &(fa, a)) in outs.iter().enumerate() {
        for &(fb, b) in &outs[i + 1..] {
            if same_file(a, b) {
                return Err(format!("{}: {fa} and {fb} name the same file", show(a)));
            }
        }
    }
    for (flag, out) in outs {
        for &input in &inputs {
            if same_file(out, input) {
                return Err(format!(
                    "{}: {flag} is also an input ({}); write the output to another path",
                    show(out),
                    show(input)
                ));
            }
        }
    }
    Ok(())
}

/// Refuses an output path that names one of `inputs`.
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

/// The output files given, with their flags.
fn outs<'a>(out: &'a Option<PathBuf>, grad: &'a Option<PathBuf>) -> Vec<(&'static str, &'a Path)> {
    let mut v = Vec::new();
    v.extend(out.as_deref().map(|p| ("--out", p)));
    v.extend(grad.as_deref().map(|p| ("--out-grad", p)));
    v
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
            let p = Matrix::load(&a.p, a.common.bf16("p", &["p"])?)?;
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
            let q = Matrix::load(&a.q, a.common.bf16("q", &["q"])?)?;
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
            if let Some(path) = &a.out_grad {
                let mut grad = grad_buffer(q.rows, q.cols, a.grad_dtype)?;
                let out = ctx
                    .nll_grad(
                        &q.batch(a.q_form),
                        targets.as_targets(),
                        &opts,
                        grad.as_mut(),
                    )
                    .map_err(|e| files.explain(&e))?;
                write_grad(path, &grad, q.rows, q.cols)?;
                return finish("nll", &out, a.common.out.as_deref());
            }
            let out = ctx.nll(&q.batch(a.q_form), targets.as_targets(), &opts);
            ("nll", files, &a.common, out)
        }
        Command::Distill(a) => return distill(a),
    };
    let output = output.map_err(|e| files.explain(&e))?;
    if let Some(path) = &common.out {
        write_values(path, &output.values)?;
    }
    Ok(to_json(name, &output, common.out.is_none()))
}

/// Whether the `--bf16` list `names` holds `arg`, after checking that every
/// name it lists is one of `inputs` (the subcommand's float inputs).
fn bf16_names(names: &[String], arg: &str, inputs: &[&str]) -> Result<bool, String> {
    if let Some(bad) = names.iter().find(|n| !inputs.contains(&n.as_str())) {
        return Err(format!(
            "--bf16 {bad}: not a float input of this subcommand (its float inputs: {})",
            inputs.join(", ")
        ));
    }
    Ok(names.iter().any(|n| n == arg))
}

/// Writes the values to `out` if given; the JSON text.
fn finish(name: &str, output: &Output, out: Option<&Path>) -> Result<String, String> {
    if let Some(path) = out {
        write_values(path, &output.values)?;
    }
    Ok(to_json(name, output, out.is_none()))
}

/// A zeroed gradient of rows × cols, or an error if it does not fit.
/// A gradient in the format `--grad-dtype` asks for.
enum GradBuf {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
}

impl GradBuf {
    fn as_mut(&mut self) -> GradMut<'_> {
        match self {
            GradBuf::F32(v) => v.into(),
            GradBuf::F16(v) => v.into(),
            GradBuf::BF16(v) => v.into(),
        }
    }
}

fn zeros<T: Clone>(n: usize, zero: T, rows: usize, cols: usize) -> Result<Vec<T>, String> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| format!("the gradient of {rows} x {cols} values does not fit in memory"))?;
    v.resize(n, zero);
    Ok(v)
}

fn grad_buffer(rows: usize, cols: usize, dtype: GradDtypeArg) -> Result<GradBuf, String> {
    let n = rows.saturating_mul(cols);
    Ok(match dtype {
        GradDtypeArg::F32 => GradBuf::F32(zeros(n, 0.0, rows, cols)?),
        GradDtypeArg::F16 => GradBuf::F16(zeros(n, half::f16::ZERO, rows, cols)?),
        GradDtypeArg::Bf16 => GradBuf::BF16(zeros(n, half::bf16::ZERO, rows, cols)?),
    })
}

fn distill(a: &DistillArgs) -> Result<String, String> {
    let files = Files {
        p: a.teacher.as_deref().or(a.teacher_logprob.as_deref()),
        q: Some(&a.student),
        mask: a.mask.as_deref(),
        indices: a.teacher_index.as_deref(),
        ..Files::default()
    };
    const INPUTS: [&str; 3] = ["student", "teacher", "teacher-logprob"];
    let student = Matrix::load(&a.student, bf16_names(&a.bf16, "student", &INPUTS)?)?;
    let mask = match &a.mask {
        Some(path) => Some(load_mask(path)?),
        None => None,
    };
    let divergence = match a.divergence {
        DivergenceArg::ForwardKl => Divergence::ForwardKl,
        DivergenceArg::ReverseKl => Divergence::ReverseKl,
        DivergenceArg::Jsd => Divergence::Jsd,
    };
    let mut opts = DistillOptions::default()
        .divergence(divergence)
        .beta(a.beta)
        .temperature(a.temperature)
        .reduction(a.reduction.reduction())
        .tail(match a.tail {
            TailArg::Bucket => Tail::Bucket,
            TailArg::Renormalize => Tail::Renormalize,
        });
    if let Some(m) = &mask {
        opts = opts.mask(m.as_mask());
    }
    let dense;
    let sparse;
    let teacher = match (&a.teacher, &a.teacher_index, &a.teacher_logprob) {
        (Some(t), None, None) => {
            dense = Matrix::load(t, bf16_names(&a.bf16, "teacher", &INPUTS)?)?;
            let form = match a.teacher_form {
                TeacherFormArg::Logits => FormArg::Logits,
                TeacherFormArg::LogProbs => FormArg::LogProbs,
            };
            Teacher::Dense(dense.batch(form))
        }
        (None, Some(i), Some(l)) => {
            let (ix, ishape) = TargetVec::load_nd(i, "teacher indices")?;
            let lp = Matrix::load(l, bf16_names(&a.bf16, "teacher-logprob", &INPUTS)?)?;
            let k = ishape.last().copied().unwrap_or(0) as usize;
            if (lp.rows, lp.cols) != (ix.len() / k.max(1), k) {
                return Err(format!(
                    "{}, {}: the indices are {ishape:?} but the log-probabilities {} x {}; \
                     they must have the same shape",
                    show(i),
                    show(l),
                    lp.rows,
                    lp.cols
                ));
            }
            sparse = (ix, lp.to_f32(l)?);
            Teacher::Sparse(SparseTeacher::new(sparse.0.as_targets(), &sparse.1, k))
        }
        _ => {
            return Err(
                "give --teacher T.npy, or --teacher-index I.npy with --teacher-logprob L.npy"
                    .into(),
            );
        }
    };
    if a.out_teacher_grad.is_some() && !matches!(teacher, Teacher::Dense(_)) {
        return Err(
            "--out-teacher-grad needs a dense --teacher (logits or log-probs): a sparse \
             top-k teacher has no gradient of its own"
                .into(),
        );
    }
    let ctx = context(a.backend)?;
    let mut grad = grad_buffer(student.rows, student.cols, a.grad_dtype)?;
    let s = student.batch(FormArg::Logits);
    let (out, tgrad) = match &a.out_teacher_grad {
        Some(_) => {
            let mut tg = grad_buffer(student.rows, student.cols, a.grad_dtype)?;
            let out =
                ctx.distill_with_teacher_grad(&s, &teacher, &opts, grad.as_mut(), tg.as_mut());
            (out, Some(tg))
        }
        None => (ctx.distill(&s, &teacher, &opts, grad.as_mut()), None),
    };
    let out = out.map_err(|e| files.explain(&e))?;
    if let Some(path) = &a.out_grad {
        write_grad(path, &grad, student.rows, student.cols)?;
    }
    if let (Some(path), Some(tg)) = (&a.out_teacher_grad, &tgrad) {
        write_grad(path, tg, student.rows, student.cols)?;
    }
    finish("distill", &out, a.out.as_deref())
}

/// A row mask: 1-D bool or uint8.
enum MaskVec {
    Bool(Vec<bool>),
    U8(Vec<u8>),
}

impl MaskVec {
    fn as_mask(&self) -> RowMask<'_> {
        match self {
            MaskVec::Bool(v) => RowMask::from(v),
            MaskVec::U8(v) => RowMask::from(v),
        }
    }
}

fn load_mask(path: &Path) -> Result<MaskVec, String> {
    let npy = open_npy(path)?;
    check_1d(path, npy.shape(), "the mask")?;
    let dtype = npy.dtype();
    match &dtype {
        DType::Plain(t) if t.size_field() == 1 && t.type_char() == TypeChar::Bool => {
            Ok(MaskVec::Bool(read_all(path, npy)?))
        }
        DType::Plain(t) if t.size_field() == 1 && t.type_char() == TypeChar::Uint => {
            Ok(MaskVec::U8(read_all(path, npy)?))
        }
        _ => Err(format!(
            "{}: unsupported dtype {} for a mask; expected bool or uint8",
            show(path),
            dtype_name(&dtype)
        )),
    }
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
    let p = Matrix::load(&a.p, bf16_names(&a.bf16, "p", &["p", "q"])?)?;
    let q = match &a.q {
        Some(path) => Some(Matrix::load(path, bf16_names(&a.bf16, "q", &["p", "q"])?)?),
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
    let p = Matrix::load(&a.p, a.common.bf16("p", &["p", "q"])?)?;
    let q = Matrix::load(&a.q, a.common.bf16("q", &["p", "q"])?)?;
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
    mask: Option<&'a Path>,
    indices: Option<&'a Path>,
}

impl Files<'_> {
    fn name(&self, arg: Arg) -> String {
        let path = match arg {
            Arg::P => self.p,
            Arg::Q => self.q,
            Arg::Targets => self.targets,
            Arg::Weights => self.weights,
            Arg::Mask => self.mask,
            Arg::Indices => self.indices,
            // the gradient is an output; later arguments are named by kind
            _ => None,
        };
        path.map_or_else(|| arg.to_string(), show)
    }

    /// Every input file, for an error that concerns the call as a whole.
    fn all(&self) -> String {
        let names: Vec<String> = [
            self.p,
            self.q,
            self.targets,
            self.weights,
            self.mask,
            self.indices,
        ]
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
            Error::TeacherIndex { .. } => format!("{}: {e}", self.name(Arg::Indices)),
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
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
}

impl Matrix {
    /// Reads a 1-D or 2-D C-order float32/float64/float16 array, or with
    /// `bf16` a bfloat16 one ('<u2', or ml_dtypes' '<V2').
    fn load(path: &Path, bf16: bool) -> Result<Matrix, String> {
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
        let dtype = npy.dtype();
        let raw2 = matches!(&dtype, DType::Plain(t) if t.type_char() == TypeChar::RawData && t.size_field() == 2);
        let u2 = matches!(&dtype, DType::Plain(t) if t.type_char() == TypeChar::Uint && t.size_field() == 2);
        let values = match (bf16, float_size(&dtype)) {
            (true, _) if u2 => FloatVec::BF16(
                read_all::<u16>(path, npy)?
                    .into_iter()
                    .map(half::bf16::from_bits)
                    .collect(),
            ),
            (true, _) if raw2 => FloatVec::BF16(
                read_all::<npyz::FixedSizeBytes<2>>(path, npy)?
                    .into_iter()
                    .map(|b| half::bf16::from_bits(u16::from_le_bytes(b.0)))
                    .collect(),
            ),
            (true, _) => {
                return Err(format!(
                    "{}: --bf16 names this input, but its dtype is {}; expected '<u2' or '<V2' (bfloat16 bits)",
                    show(path),
                    dtype_name(&dtype)
                ));
            }
            (false, _) if raw2 => {
                return Err(format!(
                    "{}: a 2-byte raw dtype ('V2', as ml_dtypes saves bfloat16); pass --bf16 with this input's flag name to read it as bfloat16",
                    show(path)
                ));
            }
            (false, Some(4)) => FloatVec::F32(read_all(path, npy)?),
            (false, Some(8)) => FloatVec::F64(read_all(path, npy)?),
            (false, Some(2)) => FloatVec::F16(read_all(path, npy)?),
            _ => {
                return Err(format!(
                    "{}: unsupported dtype {}; expected float32, float64 or float16 (bfloat16 with --bf16)",
                    show(path),
                    dtype_name(&dtype)
                ));
            }
        };
        Ok(Matrix {
            values,
            rows: to_usize(path, rows)?,
            cols: to_usize(path, cols)?,
        })
    }

    /// The values as f32 (f64 converted with the library's checks).
    fn to_f32(&self, path: &Path) -> Result<Vec<f32>, String> {
        match &self.values {
            FloatVec::F32(v) => Ok(v.clone()),
            FloatVec::F64(v) => {
                kullback::f32_from_f64(v, Arg::P).map_err(|e| format!("{}: {e}", show(path)))
            }
            FloatVec::F16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            FloatVec::BF16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
        }
    }

    fn batch(&self, form: FormArg) -> Batch<'_> {
        let values = match &self.values {
            FloatVec::F32(v) => Values::F32(v),
            FloatVec::F64(v) => Values::F64(v),
            FloatVec::F16(v) => Values::F16(v),
            FloatVec::BF16(v) => Values::BF16(v),
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
        Self::read(path, npy, "targets")
    }

    /// A 1-D or 2-D integer array and its shape.
    fn load_nd(path: &Path, what: &str) -> Result<(TargetVec, Vec<u64>), String> {
        let npy = open_npy(path)?;
        let shape = npy.shape().to_vec();
        if !(1..=2).contains(&shape.len()) || npy.order() == Order::Fortran {
            return Err(format!(
                "{}: a {}-D array of shape {shape:?}; {what} must be 2-D [rows, k] in C order, or 1-D [k]",
                show(path),
                shape.len()
            ));
        }
        Ok((Self::read(path, npy, what)?, shape))
    }

    fn len(&self) -> usize {
        match self {
            TargetVec::I32(v) => v.len(),
            TargetVec::I64(v) => v.len(),
            TargetVec::U32(v) => v.len(),
        }
    }

    fn read(path: &Path, npy: NpyFile<BufReader<File>>, what: &str) -> Result<TargetVec, String> {
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
                "{}: unsupported dtype {} for {what}; expected int32, int64 or uint32",
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

/// The gradient as a 2-D float32 .npy of shape [rows, cols].
fn write_grad(path: &Path, grad: &GradBuf, rows: usize, cols: usize) -> Result<(), String> {
    match grad {
        GradBuf::F32(g) => write_2d(path, g, rows, cols),
        GradBuf::F16(g) => write_2d(path, g, rows, cols),
        // bfloat16's bits as '<u2' (NumPy has no bfloat16 dtype)
        GradBuf::BF16(g) => write_2d(path, bytemuck::cast_slice::<half::bf16, u16>(g), rows, cols),
    }
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
