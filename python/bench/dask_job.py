#!/usr/bin/env python3
"""The Dask job of issue 19's acceptance: KL over a 200,000 x 1,024 float32
batch in 16 uneven row chunks on a LocalCluster of 2 worker processes, against
the in-memory call on the same data.

    pip install ./python[dask]        # into the Python that runs this
    python python/bench/dask_job.py [--rows 200000 --cols 1024 --chunks 16 --backend cpu]

The inputs are made on the workers (seeded) and kept there (persist); the
job's time is that of computing the per-row values (and, separately, the mean)
from them, results gathered on the client. The in-memory call runs in this
process on the same arrays (gathered once), median of --repeat calls. Prints
one JSON line: timings, whether the per-row values are bit-identical, the two
means and their difference.
"""

import argparse
import json
import statistics
import time

import numpy as np
import dask
import dask.array as da
from dask.distributed import Client, LocalCluster, wait

import kullback
import kullback.dask as kd


def uneven(rows, n, seed):
    """n row chunks of uneven sizes (between about 1/4 and 7/4 of the mean)."""
    w = np.random.default_rng(seed).uniform(0.25, 1.75, n)
    sizes = np.floor(w / w.sum() * rows).astype(int)
    sizes[-1] += rows - sizes.sum()
    return tuple(int(s) for s in sizes)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=19)
    A = ap.parse_args()
    chunks = uneven(A.rows, A.chunks, A.seed)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        rng = da.random.default_rng(A.seed)

        def dist():
            x = rng.random((A.rows, A.cols), chunks=(chunks, A.cols), dtype=np.float32)
            x = x + np.float32(2.0 ** -24)
            return x / x.sum(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)

        p, q = dist(), dist()
        p, q = client.persist([p, q])
        wait([p, q])
        # warm the workers (their contexts) on a small job first
        kd.kl(p[:1000], q[:1000], backend=A.backend).compute()
        job = []
        for _ in range(A.repeat):
            t0 = time.perf_counter()
            per_row = kd.kl(p, q, backend=A.backend).compute()
            job.append(time.perf_counter() - t0)
        job_mean = []
        for _ in range(A.repeat):
            t0 = time.perf_counter()
            mean_d = float(kd.kl(p, q, backend=A.backend, reduction="mean").compute())
            job_mean.append(time.perf_counter() - t0)
        p_np, q_np = dask.compute(p, q)
    kullback.kl(p_np[:1000], q_np[:1000], backend=A.backend)  # warm
    mem = []
    for _ in range(A.repeat):
        t0 = time.perf_counter()
        in_memory = kullback.kl(p_np, q_np, backend=A.backend)
        mem.append(time.perf_counter() - t0)
    mean_m = kullback.kl(p_np, q_np, backend=A.backend, reduction="mean")
    same = bool(np.array_equal(per_row.view(np.uint32), in_memory.view(np.uint32)))
    print(json.dumps({
        "rows": A.rows, "cols": A.cols, "row_chunks": chunks, "backend": A.backend,
        "workers": 2, "threads_per_worker": 1,
        "dask_per_row_s": statistics.median(job), "dask_mean_s": statistics.median(job_mean),
        "in_memory_s": statistics.median(mem), "per_row_bit_identical": same,
        "dask_mean": mean_d, "in_memory_mean": mean_m, "mean_difference": mean_d - mean_m,
        "repeat": A.repeat,
    }))
    if not same:
        raise SystemExit("per-row values differ")


if __name__ == "__main__":
    main()
