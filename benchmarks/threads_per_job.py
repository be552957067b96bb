"""Concurrent training jobs: every job on every core (oversubscribed) against the driver's grant.

    python benchmarks/threads_per_job.py [--jobs 2] [--model UNet-small] [--steps 200] [--batch 32]
                                         [--rounds 3]

Snakemake runs ``--cores N`` worth of jobs at once.  Without a thread budget each torch process starts a
pool as large as the machine, so two concurrent jobs on a 2-core machine run 4 threads that fight for 2
cores.  Each round starts ``--jobs`` identical training processes side by side, twice, in a shuffled
order: once with every process left to take all cores (``--threads 0``, the old behaviour) and once
with each held to ``cores / jobs`` threads through the stages' own ``_cli.use_threads`` (what every
rule's ``threads:`` grants).  The table gives the median wall time per round and per-job steps/s, and the
ratio of the two, paired within each round.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from diffusion_curriculum.stages._cli import use_threads

    use_threads(args.threads)
    import torch

    from diffusion_curriculum.models import create_model

    torch.manual_seed(0)
    net = create_model(args.model, input_size=16, in_channels=1, num_classes=10)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    x, y = torch.randn(args.batch, 1, 16, 16), torch.randint(0, 10, (args.batch,))
    t = torch.randint(0, 1000, (args.batch,)).float()
    for _ in range(args.steps):
        loss = (net(x, t, y) - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def run_round(args: argparse.Namespace, threads: int) -> float:
    """Wall seconds for ``--jobs`` concurrent workers with ``threads`` threads each (0: all cores)."""
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--model", args.model,
               "--steps", str(args.steps), "--batch", str(args.batch)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    started = time.perf_counter()
    procs = [subprocess.Popen(command, env=env) for _ in range(args.jobs)]
    if any(p.wait() for p in procs):
        raise RuntimeError("a worker failed")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--model", default="UNet-small")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    cores = os.cpu_count() or 1
    granted = max(1, cores // args.jobs)
    times: dict[str, list[float]] = {"every core": [], f"{granted} thread(s)": []}
    rng = random.Random(0)
    for _ in range(args.rounds):
        variants = [("every core", 0), (f"{granted} thread(s)", granted)]
        rng.shuffle(variants)
        for name, threads in variants:
            times[name].append(run_round(args, threads))
    print(f"{args.jobs} concurrent {args.model} training jobs, batch {args.batch}, {args.steps} steps each, "
          f"{cores} cores, {args.rounds} round(s); median over rounds\n")  # fmt: skip
    print("| threads per job | wall time (s) | steps/s per job | speed-up vs every core |")
    print("|---|---|---|---|")
    base = times["every core"]
    for name, values in times.items():
        ratio = statistics.median(b / v for b, v in zip(base, values, strict=True))
        wall = statistics.median(values)
        print(f"| {name} | {wall:.1f} | {args.steps / wall:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
