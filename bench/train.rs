//! Times kullback's loss and gradient (issue 18) on .npy inputs:
//! `cargo run --release --example train-bench -- --mode distill|nll --student S.npy
//! [--teacher T.npy] [--divergence forward-kl|reverse-kl|jsd] [--targets Y.npy]
//! [--temperature 2] [--repeat 3] [--grad f32|f16|bf16]`.
//!
//! The distillation at the temperature (forward KL unless `--divergence`
//! says otherwise; mean over rows) or the
//! NLL of integer targets (mean), on the CPU backend; the gradient goes into
//! one buffer allocated once (f32, or f16 / bf16 with `--grad`). Prints one JSON line: the median and minimum of
//! `repeat` timed calls after one untimed call, the loss, and the gradient's
//! L1 norm (a checksum the caller compares with its peers).

use std::time::Instant;

use kullback::half::{bf16, f16};
use kullback::{
    Backend, Batch, Context, DistillOptions, Divergence, Form, GradMut, NllOptions, Reduction,
    Teacher,
};

/// One loss-and-gradient call into the given buffer, returning the loss.
type LossCall<'a> = dyn FnMut(GradMut<'_>) -> f32 + 'a;

/// The gradient buffer, in the format `--grad` asks for.
enum Grad {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Grad {
    fn buf(&mut self) -> GradMut<'_> {
        match self {
            Grad::F32(g) => g.into(),
            Grad::F16(g) => g.into(),
            Grad::BF16(g) => g.into(),
        }
    }
    fn l1(&self) -> f64 {
        match self {
            Grad::F32(g) => g.iter().map(|v| v.abs() as f64).sum(),
            Grad::F16(g) => g.iter().map(|v| v.to_f64().abs()).sum(),
            Grad::BF16(g) => g.iter().map(|v| v.to_f64().abs()).sum(),
        }
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn read_f32(path: &str) -> (Vec<f32>, Vec<u64>) {
    let f = npyz::NpyFile::new(std::io::BufReader::new(
        std::fs::File::open(path).expect(path),
    ))
    .expect(path);
    let shape = f.shape().to_vec();
    (f.into_vec::<f32>().expect(path), shape)
}

fn main() {
    let mode = arg("--mode").unwrap_or_else(|| "distill".into());
    let repeat: usize = arg("--repeat").map_or(3, |v| v.parse().expect("--repeat"));
    let temp: f32 = arg("--temperature").map_or(2.0, |v| v.parse().expect("--temperature"));
    let (s, shape) = read_f32(&arg("--student").expect("--student S.npy"));
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    let ctx = Context::with_backend(Backend::Cpu).expect("cpu");
    let n = rows * cols;
    let grad_fmt = arg("--grad").unwrap_or_else(|| "f32".into());
    let mut grad = match grad_fmt.as_str() {
        "f32" => Grad::F32(vec![0.0; n]),
        "f16" => Grad::F16(vec![f16::ZERO; n]),
        "bf16" => Grad::BF16(vec![bf16::ZERO; n]),
        g => panic!("--grad f32|f16|bf16, not {g}"),
    };
    let student = Batch::new(&s, rows, cols).form(Form::Logits);
    let teacher_vals;
    let targets: Vec<i64>;
    let mut call: Box<LossCall<'_>> = match mode.as_str() {
        "distill" => {
            teacher_vals = read_f32(&arg("--teacher").expect("--teacher T.npy")).0;
            let teacher = Teacher::Dense(Batch::new(&teacher_vals, rows, cols).form(Form::Logits));
            let divergence = match arg("--divergence").as_deref() {
                None | Some("forward-kl") => Divergence::ForwardKl,
                Some("reverse-kl") => Divergence::ReverseKl,
                Some("jsd") => Divergence::Jsd,
                Some(d) => panic!("--divergence forward-kl|reverse-kl|jsd, not {d}"),
            };
            let opts = DistillOptions::default()
                .temperature(temp)
                .divergence(divergence)
                .reduction(Reduction::Mean);
            let ctx = ctx.clone();
            Box::new(move |g| {
                ctx.distill(&student, &teacher, &opts, g)
                    .expect("distill")
                    .values[0]
            })
        }
        _ => {
            let path = arg("--targets").expect("--targets Y.npy");
            let f = npyz::NpyFile::new(std::io::BufReader::new(
                std::fs::File::open(&path).expect("targets"),
            ))
            .expect("targets");
            targets = f.into_vec::<i64>().expect("int64 targets");
            let opts = NllOptions::default().reduction(Reduction::Mean);
            let ctx = ctx.clone();
            Box::new(move |g| {
                ctx.nll_grad(&student, &targets, &opts, g)
                    .expect("nll")
                    .values[0]
            })
        }
    };
    let loss = call(grad.buf());
    let mut times = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        std::hint::black_box(call(grad.buf()));
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let l1 = grad.l1();
    println!(
        "{{\"impl\": \"kullback\", \"mode\": \"{mode}\", \"grad\": \"{grad_fmt}\", \"rows\": {rows}, \"cols\": {cols}, \"median_s\": {}, \"min_s\": {}, \"loss\": {loss}, \"grad_l1\": {l1}}}",
        times[times.len() / 2],
        times[0]
    );
}
