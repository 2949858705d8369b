//! Throughput benchmark: medians of timed runs, elements/s, GB/s of input read,
//! and (CPU) the ratio to the read bandwidth measured in the same run.
//!
//! ```text
//! cargo run --release --example bench -- --measure kl --rows 4096 --cols 4096 --backend cpu [--repeat 7] [--json]
//! cargo run --release --example bench -- --measure kl --rows 4096 --cols 4096 --backend cpu --dtype f32,f16,bf16 --repeat 5   # formats alternating
//! cargo run --release --example bench -- --probe        # the read-bandwidth probe alone
//! cargo run --release --example bench -- --gpu-probe    # the GPU's read and upload bandwidth, FMA and log rates
//! cargo run --release --example bench -- --auto-overhead   # Backend::Auto against Backend::Cpu, 1 x 1,000 KL
//! cargo run --release --example bench -- --measure kl --rows 4096 --cols 4096 --data DIR --values-out V.f32 --json   # bench/compare.py
//! ```
//! Measures: kl, cross-entropy, entropy, nll-logits (bench/compare.py's names
//! kl, ce, entropy, ce_logits are accepted too). `--data DIR` reads the inputs
//! from DIR (p.f32 and q.f32, or logits.f32 and targets.i64: little-endian,
//! row-major) instead of generating them; `--values-out FILE` writes the
//! per-row results there (raw little-endian f32). `--backend gpu` also reports the
//! device time of the GPU-resident path with the data already on the GPU
//! (`--stamps pass|encoder|wall`, default the best the adapter has: the
//! timestamp_writes of the measure's compute pass, else encoder timestamps
//! around it, else the wall time of submit-and-wait; the output says which;
//! scratch comes from a reused workspace, so no zero-fill is timed) beside
//! the end-to-end time with upload and readback. `--dtype` takes
//! one format (f32, f16, bf16: the inputs rounded to it, read as it) or a
//! comma-separated list: then each of `--repeat` rounds times one call per
//! format back to back on the same (rounded) data, and each format's line
//! gives its median, the bytes it read and GB/s, and its time relative to
//! the first format's (the median of the per-round ratios).

mod bandwidth;
mod gpu_probe;

use std::time::Instant;

use kullback::wgpu;
use kullback::{
    Backend, Batch, Context, Form, GpuBatch, GpuCall, GpuNll, GpuOutput, GpuTargets, GpuTimestamps,
    Measure, NllOptions, Options, output_bytes,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Which {
    Kl,
    Ce,
    Entropy,
    NllLogits,
}

impl Which {
    fn parse(s: &str) -> Option<Which> {
        Some(match s {
            "kl" => Which::Kl,
            "cross-entropy" | "ce" => Which::Ce,
            "entropy" => Which::Entropy,
            "nll-logits" | "ce_logits" => Which::NllLogits,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Which::Kl => "kl",
            Which::Ce => "cross-entropy",
            Which::Entropy => "entropy",
            Which::NllLogits => "nll-logits",
        }
    }
    /// Input streams the kernel reads side by side.
    fn streams(self) -> usize {
        match self {
            Which::Kl | Which::Ce => 2,
            _ => 1,
        }
    }
    fn measure(self) -> Option<Measure> {
        match self {
            Which::Kl => Some(Measure::Kl),
            Which::Ce => Some(Measure::CrossEntropy),
            Which::Entropy => Some(Measure::Entropy),
            Which::NllLogits => None,
        }
    }
}

struct Args {
    which: Which,
    rows: usize,
    cols: usize,
    backend: Backend,
    repeat: usize,
    warmup: usize,
    json: bool,
    data: Option<std::path::PathBuf>,
    values_out: Option<std::path::PathBuf>,
    /// f32, or f16 / bf16 (the inputs rounded, read as half: half the bytes);
    /// several, comma-separated, alternate round by round.
    dtype: String,
    /// How the GPU-resident device time is taken (`None`: the best the adapter has).
    stamps: Option<Stamping>,
}

/// How `device_time` times the measure, best first.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stamping {
    /// `ComputePassDescriptor::timestamp_writes` on the measure's own pass
    /// (TIMESTAMP_QUERY): its dispatches only.
    Pass,
    /// `CommandEncoder::write_timestamp` around the recording
    /// (TIMESTAMP_QUERY_INSIDE_ENCODERS): also any copy recorded before the
    /// pass (NLL targets; scratch is reused from a workspace, so no zero-fill).
    Encoder,
    /// Wall time of submit-and-wait.
    Wall,
}

impl Stamping {
    fn parse(s: &str) -> Option<Stamping> {
        match s {
            "pass" => Some(Stamping::Pass),
            "encoder" => Some(Stamping::Encoder),
            "wall" => Some(Stamping::Wall),
            _ => None,
        }
    }
    fn features(self) -> wgpu::Features {
        match self {
            Stamping::Pass => wgpu::Features::TIMESTAMP_QUERY,
            Stamping::Encoder => {
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            }
            Stamping::Wall => wgpu::Features::empty(),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Stamping::Pass => "compute-pass timestamp_writes",
            Stamping::Encoder => "encoder timestamps",
            Stamping::Wall => "wall time of submit and wait",
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        which: Which::Kl,
        rows: 4096,
        cols: 4096,
        backend: Backend::Auto,
        repeat: 7,
        warmup: 2,
        json: false,
        data: None,
        values_out: None,
        dtype: "f32".into(),
        stamps: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let value = |i: usize| {
        argv.get(i + 1)
            .cloned()
            .ok_or_else(|| format!("{} needs a value", argv[i]))
    };
    while i < argv.len() {
        match argv[i].as_str() {
            "--measure" => {
                let v = value(i)?;
                a.which = Which::parse(&v).ok_or(format!("unknown measure {v}"))?;
                i += 1;
            }
            "--rows" => {
                a.rows = value(i)?.parse().map_err(|e| format!("--rows: {e}"))?;
                i += 1;
            }
            "--cols" => {
                a.cols = value(i)?.parse().map_err(|e| format!("--cols: {e}"))?;
                i += 1;
            }
            "--backend" => {
                let v = value(i)?;
                a.backend = Backend::parse(&v).ok_or(format!("unknown backend {v}"))?;
                i += 1;
            }
            "--repeat" => {
                a.repeat = value(i)?.parse().map_err(|e| format!("--repeat: {e}"))?;
                i += 1;
            }
            "--warmup" => {
                a.warmup = value(i)?.parse().map_err(|e| format!("--warmup: {e}"))?;
                i += 1;
            }
            "--json" => a.json = true,
            "--dtype" => {
                let v = value(i)?;
                if !v.split(',').all(|d| ["f32", "f16", "bf16"].contains(&d)) {
                    return Err(format!(
                        "--dtype {v}: expected f32, f16 or bf16 (or a comma-separated list)"
                    ));
                }
                a.dtype = v;
                i += 1;
            }
            "--probe" => {
                // the read-bandwidth probe alone: 1 and 2 streams
                for streams in [1, 2] {
                    let (bw, isa) = bandwidth::read_bandwidth(streams, 7);
                    println!(
                        "{{\"probe\": \"read\", \"streams\": {streams}, \"isa\": \"{isa}\", \"gbps\": {:.3}}}",
                        bw / 1e9
                    );
                }
                std::process::exit(0);
            }
            "--auto-overhead" => {
                // Backend::Auto against Backend::Cpu on a 1 x 1,000 KL
                match auto_overhead() {
                    Ok(line) => println!("{line}"),
                    Err(e) => return Err(format!("--auto-overhead: {e}")),
                }
                std::process::exit(0);
            }
            "--gpu-probe" => {
                // the GPU's read and upload bandwidth alone
                match gpu_probe::probe(7) {
                    Ok(Some(g)) => println!("{}", probe_json(&g)),
                    Ok(None) => println!("{{\"probe\": \"gpu\", \"adapter\": null}}"),
                    Err(e) => return Err(format!("--gpu-probe: {e}")),
                }
                std::process::exit(0);
            }
            "--data" => {
                a.data = Some(value(i)?.into());
                i += 1;
            }
            "--values-out" => {
                a.values_out = Some(value(i)?.into());
                i += 1;
            }
            "--stamps" => {
                let v = value(i)?;
                a.stamps = Some(
                    Stamping::parse(&v)
                        .ok_or_else(|| format!("--stamps {v}: expected pass, encoder or wall"))?,
                );
                i += 1;
            }
            other => return Err(format!("unknown argument {other}")),
        }
        i += 1;
    }
    a.repeat = a.repeat.max(1);
    Ok(a)
}

/// The inputs: (p, q) distributions, or (logits, targets).
struct Data {
    p: Vec<f32>,
    q: Vec<f32>,
    targets: Vec<i64>,
}

fn xorshift(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
}

fn make_data(w: Which, rows: usize, cols: usize) -> Data {
    let n = rows * cols;
    let mut r = xorshift(0x9e37_79b9_7f4a_7c15);
    let dist = |r: &mut dyn FnMut() -> f32| {
        let mut v: Vec<f32> = (0..n).map(|_| r()).collect();
        for row in v.chunks_mut(cols) {
            let s: f64 = row.iter().map(|&x| x as f64).sum();
            let inv = (1.0 / s) as f32;
            row.iter_mut().for_each(|x| *x *= inv);
        }
        v
    };
    match w {
        Which::NllLogits => Data {
            p: (0..n).map(|_| 4.0 * r() - 2.0).collect(),
            q: Vec::new(),
            targets: (0..rows)
                .map(|_| ((r() * cols as f32) as i64).min(cols as i64 - 1))
                .collect(),
        },
        _ => Data {
            p: dist(&mut r),
            q: if w.streams() == 2 {
                dist(&mut r)
            } else {
                Vec::new()
            },
            targets: Vec::new(),
        },
    }
}

fn read_f32(path: &std::path::Path) -> Result<Vec<f32>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn read_data(w: Which, dir: &std::path::Path) -> Result<Data, String> {
    Ok(match w {
        Which::NllLogits => {
            let t =
                std::fs::read(dir.join("targets.i64")).map_err(|e| format!("targets.i64: {e}"))?;
            Data {
                p: read_f32(&dir.join("logits.f32"))?,
                q: Vec::new(),
                targets: t
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            }
        }
        _ => Data {
            p: read_f32(&dir.join("p.f32"))?,
            q: if w.streams() == 2 {
                read_f32(&dir.join("q.f32"))?
            } else {
                Vec::new()
            },
            targets: Vec::new(),
        },
    })
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Seconds per call of a 1 x 1,000 KL through `Backend::Auto` and through
/// `Backend::Cpu`: 15 rounds, each timing 2,000 calls of one then the other
/// on the same data (the order alternating), medians of the rounds.
fn auto_overhead() -> Result<String, Box<dyn std::error::Error>> {
    let data = make_data(Which::Kl, 1, 1000);
    let auto = Context::with_backend(Backend::Auto)?;
    let cpu = Context::with_backend(Backend::Cpu)?;
    let opts = Options::default();
    let (p, q) = (Batch::new(&data.p, 1, 1000), Batch::new(&data.q, 1, 1000));
    let time = |ctx: &Context| -> Result<f64, kullback::Error> {
        let t0 = Instant::now();
        for _ in 0..2000 {
            ctx.kl(&p, &q, &opts)?;
        }
        Ok(t0.elapsed().as_secs_f64() / 2000.0)
    };
    time(&auto)?;
    time(&cpu)?;
    let (mut a, mut c) = (Vec::new(), Vec::new());
    for round in 0..15 {
        if round % 2 == 0 {
            a.push(time(&auto)?);
            c.push(time(&cpu)?);
        } else {
            c.push(time(&cpu)?);
            a.push(time(&auto)?);
        }
    }
    let (a, c) = (median(&mut a), median(&mut c));
    Ok(format!(
        "{{\"probe\": \"auto-overhead\", \"shape\": \"1x1000 kl\", \"auto_ran\": \"{}\", \"auto_s\": {a:.4e}, \"cpu_s\": {c:.4e}, \"overhead\": {:.4}}}",
        auto.backend().name(),
        a / c - 1.0
    ))
}

fn probe_json(g: &gpu_probe::GpuProbe) -> String {
    format!(
        "{{\"probe\": \"gpu\", \"adapter\": {}, \"bytes\": {}, \"read_gbps\": {:.3}, \"upload_gbps\": {:.3}, \"fma_g_per_s\": {:.3}, \"log_g_per_s\": {:.3}, \"timing\": {}}}",
        json_str(&g.adapter),
        g.bytes,
        g.read_bps / 1e9,
        g.upload_bps / 1e9,
        g.fma_per_s / 1e9,
        g.log_per_s / 1e9,
        json_str(g.timing)
    )
}

/// The inputs rounded to a half format (`--dtype f16|bf16`), or nothing (f32).
enum Halves {
    F32,
    F16(Vec<kullback::half::f16>, Vec<kullback::half::f16>),
    BF16(Vec<kullback::half::bf16>, Vec<kullback::half::bf16>),
}

impl Halves {
    fn of(d: &Data, dtype: &str) -> Halves {
        use kullback::half::{bf16, f16};
        match dtype {
            "f16" => Halves::F16(
                d.p.iter().map(|&x| f16::from_f32(x)).collect(),
                d.q.iter().map(|&x| f16::from_f32(x)).collect(),
            ),
            "bf16" => Halves::BF16(
                d.p.iter().map(|&x| bf16::from_f32(x)).collect(),
                d.q.iter().map(|&x| bf16::from_f32(x)).collect(),
            ),
            _ => Halves::F32,
        }
    }
    fn p<'a>(&'a self, d: &'a Data) -> kullback::Values<'a> {
        match self {
            Halves::F32 => (&d.p).into(),
            Halves::F16(p, _) => p.into(),
            Halves::BF16(p, _) => p.into(),
        }
    }
    fn q<'a>(&'a self, d: &'a Data) -> kullback::Values<'a> {
        match self {
            Halves::F32 => (&d.q).into(),
            Halves::F16(_, q) => q.into(),
            Halves::BF16(_, q) => q.into(),
        }
    }
}

/// `--dtype A,B,..`: every round times one call per format, back to back on
/// the same data (rounded to each format), so that the machine's swings hit
/// every format alike; one line per format.
fn alternate(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (rows, cols, w) = (a.rows, a.cols, a.which);
    let data = match &a.data {
        Some(dir) => read_data(w, dir)?,
        None => make_data(w, rows, cols),
    };
    let dtypes: Vec<&str> = a.dtype.split(',').collect();
    let halves: Vec<Halves> = dtypes.iter().map(|d| Halves::of(&data, d)).collect();
    let ctx = Context::with_backend(a.backend)?;
    let (opts, nll_opts) = (Options::default(), NllOptions::default());
    let eval = |h: &Halves| -> kullback::Result<kullback::Output> {
        match w.measure() {
            Some(m) => {
                let p = Batch::new(h.p(&data), rows, cols);
                let q = Batch::new(h.q(&data), rows, cols);
                ctx.evaluate(m, &p, (w.streams() == 2).then_some(&q), &opts)
            }
            None => ctx.nll(
                &Batch::new(h.p(&data), rows, cols).form(Form::Logits),
                &data.targets,
                &nll_opts,
            ),
        }
    };
    for _ in 0..a.warmup {
        for h in &halves {
            eval(h)?;
        }
    }
    let mut times = vec![Vec::new(); dtypes.len()];
    let mut backend = "";
    for _ in 0..a.repeat {
        for (h, t) in halves.iter().zip(&mut times) {
            let t0 = Instant::now();
            let out = eval(h)?;
            t.push(t0.elapsed().as_secs_f64());
            backend = out.backend.name();
        }
    }
    let elems = rows * cols;
    for (k, d) in dtypes.iter().enumerate() {
        let width = if *d == "f32" { 4 } else { 2 };
        let bytes = (elems * width * w.streams() + data.targets.len() * 8) as f64;
        let mut ratios: Vec<f64> = times[k].iter().zip(&times[0]).map(|(x, y)| x / y).collect();
        let ratio = median(&mut ratios);
        let med = median(&mut times[k].clone());
        let line = [
            ("measure", json_str(w.name())),
            ("dtype", json_str(d)),
            ("rows", rows.to_string()),
            ("cols", cols.to_string()),
            ("backend", json_str(backend)),
            ("rounds", a.repeat.to_string()),
            ("median_s", format!("{med:.6e}")),
            ("bytes_read", format!("{bytes:.0}")),
            ("gbps", format!("{:.3}", bytes / med / 1e9)),
            ("elem_per_s", format!("{:.6e}", elems as f64 / med)),
            ("time_vs_first", format!("{ratio:.3}")),
        ];
        if a.json {
            let body: Vec<String> = line.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            println!("{{{}}}", body.join(", "));
        } else {
            println!(
                "{} {rows} x {cols} {d} on {backend}: median {:.3} ms of {} alternating rounds, {:.1} MB read, {:.2} GB/s, {:.3} G elements/s, time {:.3}x {}'s (median of per-round ratios)",
                w.name(),
                med * 1e3,
                a.repeat,
                bytes / 1e6,
                bytes / med / 1e9,
                elems as f64 / med / 1e9,
                ratio,
                dtypes[0]
            );
        }
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if a.dtype.contains(',') {
        return alternate(a);
    }
    let (rows, cols, w) = (a.rows, a.cols, a.which);
    let data = match &a.data {
        Some(dir) => read_data(w, dir)?,
        None => make_data(w, rows, cols),
    };
    let elems = rows * cols;
    let halves = Halves::of(&data, &a.dtype);
    let width = if a.dtype == "f32" { 4 } else { 2 };
    let bytes = (elems * width * w.streams() + data.targets.len() * 8) as f64;
    let ctx = Context::with_backend(a.backend)?;
    let opts = Options::default();
    let nll_opts = NllOptions::default();
    let eval = || -> kullback::Result<kullback::Output> {
        match w.measure() {
            Some(m) => {
                let p = Batch::new(halves.p(&data), rows, cols);
                let q = Batch::new(halves.q(&data), rows, cols);
                ctx.evaluate(m, &p, if w.streams() == 2 { Some(&q) } else { None }, &opts)
            }
            None => ctx.nll(
                &Batch::new(halves.p(&data), rows, cols).form(Form::Logits),
                &data.targets,
                &nll_opts,
            ),
        }
    };
    for _ in 0..a.warmup {
        eval()?;
    }
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..a.repeat {
        let t0 = Instant::now();
        let out = eval()?;
        times.push(t0.elapsed().as_secs_f64());
        last = Some(out);
    }
    let out = last.expect("at least one run");
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let med = median(&mut times);
    if let Some(path) = &a.values_out {
        let b: Vec<u8> = out.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, b)?;
    }
    let backend = out.backend.name();
    let adapter = out.adapter.clone();
    let mut fields = vec![
        ("measure", json_str(w.name())),
        ("dtype", json_str(&a.dtype)),
        ("rows", rows.to_string()),
        ("cols", cols.to_string()),
        ("backend", json_str(backend)),
        (
            "adapter",
            adapter.as_deref().map_or("null".into(), json_str),
        ),
        (
            "impl",
            json_str(&format!(
                "kullback {} ({backend})",
                env!("CARGO_PKG_VERSION")
            )),
        ),
        ("version", json_str(env!("CARGO_PKG_VERSION"))),
        (
            "threads",
            std::thread::available_parallelism()
                .map_or(1, |t| t.get())
                .to_string(),
        ),
        ("median_s", format!("{med:.6e}")),
        ("min_s", format!("{min:.6e}")),
        ("elem_per_s", format!("{:.6e}", elems as f64 / med)),
        ("gbps", format!("{:.3}", bytes / med / 1e9)),
    ];
    if !a.json {
        println!(
            "{} {rows} x {cols} on {backend}{}: median {:.3} ms, min {:.3} ms, {:.3} G elements/s, {:.2} GB/s of input",
            w.name(),
            adapter
                .as_deref()
                .map_or(String::new(), |n| format!(" ({n})")),
            med * 1e3,
            min * 1e3,
            elems as f64 / med / 1e9,
            bytes / med / 1e9
        );
    }
    if out.backend == kullback::Ran::Cpu {
        let (bw, isa) = bandwidth::read_bandwidth(w.streams(), 7);
        fields.push(("bw_gbps", format!("{:.3}", bw / 1e9)));
        fields.push(("bw_isa", json_str(isa)));
        fields.push(("bw_streams", w.streams().to_string()));
        fields.push(("bw_ratio", format!("{:.3}", bytes / med / bw)));
        if !a.json {
            println!(
                "read bandwidth ({} stream{}, {isa} read loop, same run): {:.2} GB/s; this measure reached {:.0}% of it",
                w.streams(),
                if w.streams() == 1 { "" } else { "s" },
                bw / 1e9,
                100.0 * bytes / med / bw
            );
        }
    } else if let Some((dev_med, how, subgroups)) = device_time(a, &data)? {
        fields.push(("kernel_median_s", format!("{dev_med:.6e}")));
        fields.push(("kernel_subgroups", subgroups.to_string()));
        fields.push(("kernel_gbps", format!("{:.3}", bytes / dev_med / 1e9)));
        fields.push(("kernel_timing", json_str(how)));
        if !a.json {
            println!(
                "device time ({how}, subgroups {}), data already on the GPU: median {:.3} ms, {:.2} GB/s; end-to-end above includes upload and readback",
                if subgroups { "on" } else { "off" },
                dev_med * 1e3,
                bytes / dev_med / 1e9
            );
        }
        if let Some(g) = gpu_probe::probe(5)? {
            let (kr, er) = (bytes / dev_med / g.read_bps, bytes / med / g.upload_bps);
            fields.push(("device_read_gbps", format!("{:.3}", g.read_bps / 1e9)));
            fields.push(("upload_gbps", format!("{:.3}", g.upload_bps / 1e9)));
            fields.push(("kernel_read_ratio", format!("{kr:.3}")));
            fields.push(("end_to_end_upload_ratio", format!("{er:.3}")));
            fields.push(("probe_timing", json_str(g.timing)));
            if !a.json {
                println!(
                    "same run: device read {:.2} GB/s ({}), upload {:.2} GB/s; kernel at {:.0}% of read, end-to-end at {:.0}% of upload",
                    g.read_bps / 1e9,
                    g.timing,
                    g.upload_bps / 1e9,
                    100.0 * kr,
                    100.0 * er
                );
            }
        }
    }
    if a.json {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        println!("{{{}}}", body.join(", "));
    }
    Ok(())
}

/// A device time: median seconds, how it was taken, whether the reductions
/// used subgroups.
type DeviceTime = (f64, &'static str, bool);

/// Device time of the GPU-resident path on a device of our own (so that
/// timestamp queries can be enabled where the adapter has them).
fn device_time(a: &Args, data: &Data) -> Result<Option<DeviceTime>, Box<dyn std::error::Error>> {
    use wgpu::util::DeviceExt;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let Ok(adapter) = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    })) else {
        return Ok(None);
    };
    // the best the adapter has, or the one asked for (if it has it)
    let how = [Stamping::Pass, Stamping::Encoder, Stamping::Wall]
        .into_iter()
        .filter(|s| a.stamps.is_none_or(|w| w == *s))
        .find(|s| adapter.features().contains(s.features()))
        .unwrap_or(Stamping::Wall);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("bench"),
        // subgroups as a context would request them (KULLBACK_SUBGROUPS=off
        // still turns them off in the context made over this device)
        required_features: how.features() | (adapter.features() & wgpu::Features::SUBGROUP),
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    let ctx = Context::from_device(device.clone(), queue.clone())?;
    let (rows, cols, w) = (a.rows, a.cols, a.which);
    let upload = |v: &[f32], usage| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(if v.is_empty() { &[0.0f32] } else { v }),
            usage,
        })
    };
    let p = upload(&data.p, wgpu::BufferUsages::STORAGE);
    let q = upload(&data.q, wgpu::BufferUsages::STORAGE);
    let t32: Vec<i32> = data.targets.iter().map(|&t| t as i32).collect();
    let t = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(if t32.is_empty() { &[0i32] } else { &t32 }),
        usage: wgpu::BufferUsages::COPY_SRC,
    });
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: output_bytes(rows, kullback::Reduction::None),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let st = gpu_probe::Stamps::new(&device, how != Stamping::Wall);
    let qs = st.set.as_ref();
    // scratch reused from call to call, as an application would: after the
    // first call wgpu has nothing to zero-fill
    let workspace = kullback::Workspace::new();
    let mut times = Vec::new();
    for i in 0..a.warmup.max(1) + a.repeat {
        let mut enc = device.create_command_encoder(&Default::default());
        let mut o = GpuOutput::new(&out).workspace(&workspace);
        match (how, qs) {
            (Stamping::Pass, Some(qs)) => o = o.timestamps(GpuTimestamps::new(qs, 0, 1)),
            (Stamping::Encoder, Some(qs)) => enc.write_timestamp(qs, 0),
            _ => {}
        }
        match w.measure() {
            Some(m) => {
                let call = GpuCall::new(m, GpuBatch::new(&p, rows, cols), o);
                let call = if w.streams() == 2 {
                    call.q(GpuBatch::new(&q, rows, cols))
                } else {
                    call
                };
                ctx.encode(&mut enc, &call)?
            }
            None => {
                let lq = GpuBatch::new(&p, rows, cols).form(Form::Logits);
                ctx.encode_nll(&mut enc, &GpuNll::new(lq, GpuTargets::i32(&t, rows), o))?
            }
        }
        if let (Stamping::Encoder, Some(qs)) = (how, qs) {
            enc.write_timestamp(qs, 1);
        }
        st.resolve(&mut enc);
        let dt = st.time(&device, &queue, enc)?;
        if i >= a.warmup.max(1) {
            times.push(dt);
        }
    }
    Ok(Some((median(&mut times), how.name(), ctx.uses_subgroups())))
}
