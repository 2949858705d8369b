"""PyTorch autograd reference values for tests/train.rs (`torch_reference`).

Run: python tests/data/torch_train/make.py (needs torch and numpy; made with
torch 2.15.0, CPU, float64). Inputs are float32 values, widened to float64;
each loss is written plainly in PyTorch (F.cross_entropy for the NLL) and its
gradient with respect to the student logits comes from autograd of the
reduced loss (for reduction none: of the sum of rows).

Writes manifest.json (one entry per case: options and offsets) and
values.npy (every array, float64, concatenated).
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(18)
chunks = []
offset = 0


def put(a):
    global offset
    a = np.asarray(a, dtype=np.float64).ravel()
    chunks.append(a)
    start = offset
    offset += a.size
    return [start, int(a.size)]


def logits(rows, cols, huge):
    if huge:
        s = rng.uniform(-1e4, 1e4, (rows, cols))
        t = rng.uniform(-1e4, 1e4, (rows, cols))
    else:
        s = 2.0 * rng.standard_normal((rows, cols))
        t = s + 1.5 * rng.standard_normal((rows, cols))
    return s.astype(np.float32), t.astype(np.float32)


def reduce(per_row, reduction, count):
    if reduction == "none":
        return per_row, per_row.sum()
    if reduction == "sum":
        v = per_row.sum()
        return v.reshape(1), v
    v = per_row.sum() / count
    return v.reshape(1), v


def divergence(div, beta, lp, lq):
    """Row divergences between log-distributions (last axis)."""
    def kl(a, b):
        return (a.exp() * (a - b)).sum(-1)
    if div == "forward-kl":
        return kl(lp, lq)
    if div == "reverse-kl":
        return kl(lq, lp)
    lm = torch.logsumexp(torch.stack([math.log(beta) + lp, math.log(1 - beta) + lq]), 0)
    return beta * kl(lp, lm) + (1 - beta) * kl(lq, lm)


cases = []
reductions = ["none", "sum", "mean"]
n = 0
for cols in [3, 257]:
    rows = 3
    # NLL
    for weighted in [False, True]:
        for eps in [0.0, 0.2]:
            for ignore in [False, True]:
                red = reductions[n % 3]
                n += 1
                z, _ = logits(rows, cols, huge=(n % 4 == 0))
                tg = rng.integers(0, cols, rows)
                if ignore:
                    tg[1] = -100
                w = rng.uniform(0.25, 1.25, cols).astype(np.float32)
                zt = torch.tensor(z.astype(np.float64), requires_grad=True)
                per = F.cross_entropy(zt, torch.tensor(tg), weight=torch.tensor(w.astype(np.float64)) if weighted else None,
                                      ignore_index=-100, label_smoothing=eps, reduction="none")
                if red == "mean":
                    v = F.cross_entropy(zt, torch.tensor(tg), weight=torch.tensor(w.astype(np.float64)) if weighted else None,
                                        ignore_index=-100, label_smoothing=eps, reduction="mean")
                    vals, total = v.reshape(1), v
                else:
                    vals, total = reduce(per, red, None)
                total.backward()
                cases.append(dict(kind="nll", rows=rows, cols=cols, reduction=red, weighted=weighted,
                                  label_smoothing=eps, ignore_index=-100 if ignore else None,
                                  s=put(z), targets=[int(x) for x in tg], weights=put(w),
                                  loss=put(vals.detach().numpy()), grad=put(zt.grad.numpy())))
    # dense distillation
    for div, beta in [("forward-kl", 0.5), ("reverse-kl", 0.5), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9)]:
        for T in ([0.5, 1.0, 2.0, 4.0] if cols < 100 else [0.5, 4.0]):
            for form in (["logits", "log-probs"] if cols < 100 else [["logits", "log-probs"][T > 1]]):
                red = reductions[n % 3]
                mask = [1, 0, 1] if n % 2 else [1, 1, 1]
                n += 1
                s, t = logits(rows, cols, huge=(n % 5 == 0))
                if form == "log-probs":
                    t = torch.log_softmax(torch.tensor(t.astype(np.float64)), -1).numpy().astype(np.float32)
                st = torch.tensor(s.astype(np.float64), requires_grad=True)
                tt = torch.tensor(t.astype(np.float64))
                per = T * T * divergence(div, beta, torch.log_softmax(tt / T, -1), torch.log_softmax(st / T, -1))
                per = per * torch.tensor(mask, dtype=torch.float64)
                vals, total = reduce(per, red, sum(mask))
                total.backward()
                cases.append(dict(kind="dense", rows=rows, cols=cols, reduction=red, divergence=div, beta=beta,
                                  temperature=T, teacher_form=form, mask=mask, s=put(s), t=put(t),
                                  loss=put(vals.detach().numpy()), grad=put(st.grad.numpy())))
    # sparse teacher
    for k in [1, 8, 64]:
        if k > cols:
            continue
        for tail in ["bucket", "renormalize"]:
            for div, beta in [("forward-kl", 0.5), ("reverse-kl", 0.5), ("jsd", 0.5)]:
                T = [0.5, 1.0, 2.0, 4.0][n % 4]
                red = reductions[n % 3]
                mask = [1, 1, 0] if n % 2 else [1, 1, 1]
                n += 1
                s, t = logits(rows, cols, huge=False)
                lpt = torch.log_softmax(torch.tensor(t.astype(np.float64)) / T, -1)
                top = torch.topk(lpt, k, -1).indices
                perm = torch.tensor(np.stack([rng.permutation(k) for _ in range(rows)]))
                idx = torch.gather(top, 1, perm)
                l32 = torch.gather(lpt, 1, idx).numpy().astype(np.float32)
                lp = torch.tensor(l32.astype(np.float64))
                st = torch.tensor(s.astype(np.float64), requires_grad=True)
                lq = torch.log_softmax(st / T, -1)
                lqk = torch.gather(lq, 1, idx)
                if tail == "bucket":
                    outside = torch.ones(rows, cols, dtype=torch.bool).scatter(1, idx, False)
                    lq_tail = torch.logsumexp(lq.masked_fill(~outside, -math.inf), -1, keepdim=True)
                    r = (1 - lp.exp().sum(-1, keepdim=True)).clamp(min=0)
                    lpb = torch.cat([lp, r.log()], -1)
                    lqb = torch.cat([lqk, lq_tail], -1)
                else:
                    lpb = torch.log_softmax(lp, -1)
                    lqb = torch.log_softmax(lqk, -1)
                per = T * T * divergence(div, beta, lpb, lqb)
                per = per * torch.tensor(mask, dtype=torch.float64)
                vals, total = reduce(per, red, sum(mask))
                total.backward()
                cases.append(dict(kind="sparse", rows=rows, cols=cols, reduction=red, divergence=div, beta=beta,
                                  temperature=T, tail=tail, k=k, mask=mask, s=put(s),
                                  indices=[int(x) for x in idx.numpy().ravel()], logprobs=put(l32),
                                  loss=put(vals.detach().numpy()), grad=put(st.grad.numpy())))

np.save(os.path.join(HERE, "values.npy"), np.concatenate(chunks))
with open(os.path.join(HERE, "manifest.json"), "w") as f:
    json.dump(dict(torch=torch.__version__, cases=cases), f, indent=0)
print(len(cases), "cases,", offset, "values")
