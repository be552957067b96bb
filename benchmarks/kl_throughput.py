"""Throughput of the Monte-Carlo KL estimator (``diffusion_curriculum.kl.estimate_kl``) on one device.

    python benchmarks/kl_throughput.py [--device cpu|cuda] [--num-samples M] [--num-data L] [--dim D]
                                       [--num-timesteps T] [--dtype float64|float32] [--repeats 3]

Times ``estimate_kl`` over every consecutive pair of a VP linear schedule with T timesteps (P = T - 1 pairs,
common random numbers, self included: the defaults) on synthetic data uniform in [-1, 1], after one
untimed warm-up run, with a device synchronisation before each clock read.  Defaults: the paper's scale
on CUDA (M = L = 5000, D = 3072 = 3x32x32, T = 1000); a small problem on CPU (M = L = 256) so that it
finishes in well under a minute.

FLOPs counted (matrix products only, 2 flops per multiply-add):

* Gram products, once per noise draw: ``[Y_k; E] Y^T`` with (2M x D) @ (D x L) -> 4 M L D;
* exponent assembly: (2P x 5) @ (5 x M L) -> 20 P M L (memory-bound: it writes 2P M L values).

The logsumexp over components (an exp per entry, 2P M L entries) is not counted as flops; it and the
assembly are what the run spends its time on, so "achieved TFLOP/s" is low by design -- the Gram trick has
already removed the O(P M L D) work a per-timestep evaluation would do (``naive`` column: 4 P M L D).
The matmul peak of the device is measured in the same run with a large square ``torch.matmul`` (float64,
float32 with TF32 off, and bfloat16 on CUDA), so the ratio is against what this device actually delivers.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from diffusion_curriculum.kl import estimate_kl
from diffusion_curriculum.schedules import make_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import matmul_peak, sync  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--num-samples", type=int, default=None, help="M (default: 5000 on CUDA, 256 on CPU)")
    ap.add_argument("--num-data", type=int, default=None, help="L (default: 5000 on CUDA, 256 on CPU)")
    ap.add_argument("--dim", type=int, default=3072, help="D, values per data sample")
    ap.add_argument("--num-timesteps", type=int, default=1000, help="T of the VP schedule (T - 1 pairs)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="float64")
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (after one warm-up run)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--peak-size", type=int, default=None, help="edge of the peak-measuring matmul")
    return ap.parse_args()


def measure(
    device: torch.device,
    m: int,
    n_data: int,
    dim: int,
    num_timesteps: int = 1000,
    dtype: torch.dtype = torch.float64,
    chunk_size: int = 1024,
    repeats: int = 3,
    peak_size: int | None = None,
) -> dict:
    """Time ``estimate_kl`` over the T - 1 pairs (one warm-up run, then ``repeats``), count its FLOPs and
    measure the device's matmul peaks; every figure of the table, as a dict."""
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # the estimator must not run in TF32
    schedule = make_schedule("vp", beta_schedule="linear", num_timesteps=num_timesteps)
    pairs = num_timesteps - 1
    data = torch.rand(n_data, dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    data = data.to(device)

    def run() -> float:
        gen = torch.Generator(device=device).manual_seed(1)
        sync(device)
        start = time.perf_counter()
        estimate_kl(data, schedule, None, m, generator=gen, dtype=dtype, chunk_size=chunk_size)
        sync(device)
        return time.perf_counter() - start

    warmup_s = run()
    times = [run() for _ in range(repeats)]
    wall = statistics.median(times)

    gram = 4.0 * m * n_data * dim
    assemble = 20.0 * pairs * m * n_data
    naive = 4.0 * pairs * m * n_data * dim
    achieved = (gram + assemble) / wall / 1e12

    peak_n = peak_size or (8192 if cuda else 1024)
    peak_dtypes = [torch.float64, torch.float32] + ([torch.bfloat16] if cuda else [])
    peaks = {str(dt).removeprefix("torch."): matmul_peak(device, dt, peak_n) for dt in peak_dtypes}
    name = str(dtype).removeprefix("torch.")
    return {
        "hardware": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "M": m,
        "L": n_data,
        "D": dim,
        "num_timesteps": num_timesteps,
        "pairs": pairs,
        "dtype": name,
        "chunk_size": chunk_size,
        "warmup_s": warmup_s,
        "times_s": times,
        "median_s": wall,
        "gram_flop": gram,
        "assembly_flop": assemble,
        "naive_gram_flop": naive,
        "achieved_tflops": achieved,
        "peak_size": peak_n,
        "matmul_peak_tflops": peaks,
        "percent_of_peak": 100 * achieved / peaks[name],
        "us_per_pair": 1e6 * wall / pairs,
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    m = args.num_samples or (5000 if cuda else 256)
    n_data = args.num_data or (5000 if cuda else 256)
    r = measure(
        device, m, n_data, args.dim, args.num_timesteps, DTYPES[args.dtype], args.chunk_size, args.repeats,
        args.peak_size,
    )  # fmt: skip
    print(
        f"device: {device} ({r['hardware']}), threads: {torch.get_num_threads()}, torch {torch.__version__}\n"
        f"estimate_kl: M = {m}, L = {n_data}, D = {args.dim}, VP linear T = {args.num_timesteps} "
        f"({r['pairs']} pairs), dtype {args.dtype}, chunk {args.chunk_size}; runs (s): "
        + ", ".join(f"{t:.3f}" for t in r["times_s"])
    )
    print(
        f"matmul peak (n = {r['peak_size']}): "
        + ", ".join(f"{dt} {p:.3f} TFLOP/s" for dt, p in r["matmul_peak_tflops"].items())
        + "\n"
    )
    print(
        "| device | dtype | M | L | D | pairs | median time (s) | Gram GFLOP | assembly GFLOP | "
        "per-pair Gram GFLOP (avoided) | achieved TFLOP/s | matmul peak TFLOP/s | % of peak | "
        "µs per pair |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {r['hardware']} | {args.dtype} | {m} | {n_data} | {args.dim} | {r['pairs']} | "
        f"{r['median_s']:.3f} | "
        f"{r['gram_flop'] / 1e9:.1f} | {r['assembly_flop'] / 1e9:.1f} | {r['naive_gram_flop'] / 1e9:.0f} | "
        f"{r['achieved_tflops']:.4f} | {r['matmul_peak_tflops'][args.dtype]:.3f} | "
        f"{r['percent_of_peak']:.2f} | {r['us_per_pair']:.0f} |"
    )


if __name__ == "__main__":
    main()
