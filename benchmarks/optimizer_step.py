"""AdamW step time by implementation (for-loop, foreach, fused) on one network, measured in one run.

    python benchmarks/optimizer_step.py [--device cpu|cuda] [--model DiT-tiny/4] [--input-size 16]
                                        [--channels 1] [--repeats 30] [--steps 20] [--threads 1]

``train_loop`` uses the fused AdamW on CPU and CUDA.  Every round times ``--steps`` optimiser steps of each
implementation, in a freshly shuffled order, on the same parameters and (fixed, random) gradients; the
table gives the median per-step time over rounds and the ratio to the for-loop implementation (the CPU
default of ``torch.optim.AdamW``), paired within each round.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import sync  # noqa: E402

from diffusion_curriculum.models import create_model  # noqa: E402

VARIANTS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="DiT-tiny/4")
    ap.add_argument("--input-size", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    net = create_model(args.model, input_size=args.input_size, in_channels=args.channels, num_classes=10)
    net.to(device)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    optimizers = {name: torch.optim.AdamW(net.parameters(), lr=1e-4, **kw) for name, kw in VARIANTS.items()}

    def timed(opt: torch.optim.Optimizer) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            opt.step()
        sync(device)
        return (time.perf_counter() - start) / args.steps

    for opt in optimizers.values():  # warm-up: state allocation, first-call dispatch
        timed(opt)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        order = list(VARIANTS)
        random.shuffle(order)
        round_times = {name: timed(optimizers[name]) for name in order}
        for name, seconds in round_times.items():
            times[name].append(seconds)
            ratios[name].append(seconds / round_times["for-loop"])

    params = sum(p.numel() for p in net.parameters())
    print(
        f"AdamW step, {args.model} ({params / 1e6:.2f} M parameters), device {device}, "
        f"{args.threads} thread(s), {args.repeats} rounds of {args.steps} steps"
    )
    print("| implementation | median step (ms) | ratio to for-loop |")
    print("|---|---:|---:|")
    for name in VARIANTS:
        step_ms = statistics.median(times[name]) * 1e3
        print(f"| {name} | {step_ms:.2f} | {statistics.median(ratios[name]):.2f} |")


if __name__ == "__main__":
    main()
