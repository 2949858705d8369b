"""PyTorch on the GPU beside kullback, on the inputs bench/gpu-check.sh wrote.

    python3 bench/torch_gpu.py DIR ROWS COLS kl|nll-logits|nll-grad|distill [--repeat 7]

DIR holds p.f32 and q.f32 (kl) or logits.f32 and targets.i64 (nll-logits), raw
little-endian, row-major: the files `target/release/examples/bench --data DIR`
reads; for the training modes student.npy, teacher.npy and targets.npy (the
files `train-bench` reads). Times, with CUDA events and the inputs already on
the device:
  kl:          F.kl_div(q.log(), p, reduction='none').sum(-1)   (the log inside the timed region)
  nll-logits:  F.cross_entropy(logits, targets, reduction='none')
  nll-grad:    F.cross_entropy(logits, targets) and its backward (mean)
  distill:     T^2 F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True,
               reduction='batchmean') and its backward w.r.t. s, T = 2
and prints one JSON line (median of --repeat, after one warm-up), or a line
saying why nothing was timed (no torch, no CUDA).
"""
import argparse
import json
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("rows", type=int)
    ap.add_argument("cols", type=int)
    ap.add_argument("measure", choices=["kl", "nll-logits", "nll-grad", "distill"])
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(json.dumps({"impl": "torch", "measure": a.measure, "skipped": f"no torch: {e}"}))
        return
    if not torch.cuda.is_available():
        print(json.dumps({"impl": "torch", "measure": a.measure, "skipped": "no CUDA device"}))
        return
    dev = torch.device("cuda")
    shape = (a.rows, a.cols)

    def load(name, dtype):
        return torch.from_numpy(np.fromfile(f"{a.dir}/{name}", dtype=dtype)).to(dev)

    if a.measure == "kl":
        p = load("p.f32", np.float32).reshape(shape)
        q = load("q.f32", np.float32).reshape(shape)
        run = lambda: F.kl_div(q.log(), p, reduction="none").sum(-1)  # noqa: E731
        nbytes = 2 * p.numel() * 4
    elif a.measure == "nll-logits":
        x = load("logits.f32", np.float32).reshape(shape)
        t = load("targets.i64", np.int64)
        run = lambda: F.cross_entropy(x, t, reduction="none")  # noqa: E731
        nbytes = x.numel() * 4 + t.numel() * 8
    else:
        def npy(name):
            return torch.from_numpy(np.load(f"{a.dir}/{name}")).to(dev)
        x = npy("student.npy").requires_grad_(True)
        if a.measure == "nll-grad":
            t = npy("targets.npy")

            def run():
                F.cross_entropy(x, t).backward()
                x.grad = None
            # the same bytes as kullback's count: logits read twice, gradient written once
            nbytes = 3 * x.numel() * 4
        else:
            te = npy("teacher.npy")
            T = 2.0

            def run():
                loss = F.kl_div(F.log_softmax(x / T, -1), F.log_softmax(te / T, -1),
                                log_target=True, reduction="batchmean") * T * T
                loss.backward()
                x.grad = None
            nbytes = 5 * x.numel() * 4
    times = []
    for i in range(a.repeat + 1):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        run()
        e.record()
        torch.cuda.synchronize()
        if i > 0:
            times.append(s.elapsed_time(e) * 1e-3)
    med = float(np.median(times))
    print(json.dumps({
        "impl": f"torch {torch.__version__} (cuda, eager)",
        "device": torch.cuda.get_device_name(0),
        "measure": a.measure, "rows": a.rows, "cols": a.cols,
        "kernel_median_s": med, "elem_per_s": a.rows * a.cols / med,
        "kernel_gbps": nbytes / med / 1e9,
    }))


if __name__ == "__main__":
    sys.exit(main())
