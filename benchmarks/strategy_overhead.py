"""Per-step cost of each timestep strategy relative to ``vanilla``, measured in one run.

    python benchmarks/strategy_overhead.py [--device cpu|cuda] [--model DiT-tiny/4] [--batch 64]
                                           [--repeats 60] [--threads 1]

Every strategy trains the same network with the same inner step as ``training.train_loop`` (strategy
``before_step`` -> ``sample`` -> ``denoising_loss`` with ``weights`` -> AdamW with gradient clipping ->
EMA update -> ``observe`` -> loss-bin accumulation) on synthetic class-conditional images.  The run is
``--repeats`` rounds; a round makes one step with every strategy, in a freshly shuffled order, so that
the load of a shared machine falls on all strategies alike.  Each step is timed on its own, with a device
synchronisation before the clock is read (a no-op on CPU; on GPU it exposes host work a strategy adds
instead of letting asynchronous execution hide it).

Columns: the median step time; the median over rounds of the step time divided by vanilla's step in the
same round (pairing cancels the machine's drift) and the overhead it implies; the median host time of the
strategy's own calls per step (``before_step`` + ``sample`` + ``weights`` + ``observe``) and that time's
excess over vanilla's calls as a share of vanilla's step — the part of the overhead the strategy itself
causes, free of the timing noise of the whole step.
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import statistics
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from diffusion_curriculum.losses import Denoiser, denoising_loss
from diffusion_curriculum.models import create_model
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import Intervals, make_strategy

# Each strategy with the parameters a study would use (VP, eps-prediction, N = 20 clusters).
CONFIGS: dict[str, dict] = {
    "vanilla": {},
    "dtd": {"tau_max": 200},
    "anti_cl": {"tau_max": 200},
    "naive_cl": {"stage_steps": 100},
    "clts": {"total_steps": 10_000, "momentum_decay": True},
    "speed": {},
    "min_snr": {"gamma": 5.0},
    "p2": {},
    "logit_normal": {},
    "edm_lognormal": {},
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--model", default="DiT-tiny/4")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=60, help="timed rounds (one step of every strategy each)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--strategies", nargs="*", default=list(CONFIGS), help="subset of: " + " ".join(CONFIGS))
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if "vanilla" not in args.strategies:
        args.strategies = ["vanilla", *args.strategies]
    unknown = sorted(set(args.strategies) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose from {list(CONFIGS)}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.manual_seed(0)
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(20)
    num_classes = 10
    net = create_model(
        args.model, input_size=args.image_size, in_channels=args.channels, num_classes=num_classes
    ).to(device)
    denoiser = Denoiser(net, schedule, "eps")
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9999), use_buffers=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0, fused=device.type == "cuda")
    defaults = copy.deepcopy([{k: g[k] for k in ("lr", "betas")} for g in optimizer.param_groups])
    gens = {
        name: torch.Generator(device=device).manual_seed(seed)
        for name, seed in (("data", 1), ("timesteps", 2), ("noise", 3))
    }
    images = torch.randn(1024, args.channels, args.image_size, args.image_size, device=device)
    labels = torch.randint(num_classes, (1024,), device=device)
    ones = torch.ones(args.batch, dtype=torch.float64, device=device)
    bin_sum = torch.zeros(intervals.num, dtype=torch.float64, device=device)
    bin_count = torch.zeros_like(bin_sum)
    strategies = {name: make_strategy(name, schedule, intervals, **CONFIGS[name]) for name in args.strategies}
    step_times: dict[str, list[float]] = {name: [] for name in strategies}
    call_times: dict[str, list[float]] = {name: [] for name in strategies}
    counters = dict.fromkeys(strategies, 0)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def train_step(name: str) -> tuple[float, float]:
        strategy = strategies[name]
        step = counters[name]
        sync()
        start = time.perf_counter()
        idx = torch.randint(images.shape[0], (args.batch,), generator=gens["data"], device=device)
        x0, y = images[idx], labels[idx]
        c0 = time.perf_counter()
        strategy.before_step(step, optimizer)
        t = strategy.sample(args.batch, gens["timesteps"], device=device)
        weight = strategy.weights(t)
        calls = time.perf_counter() - c0
        noise = torch.randn(x0.shape, generator=gens["noise"], device=device, dtype=x0.dtype)
        if autocast is None:
            per_sample = denoising_loss(denoiser, x0, t, noise, y, weight=weight)
        else:
            with autocast:
                per_sample = denoising_loss(denoiser, x0, t, noise, y, weight=weight)
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        ema.update_parameters(net)
        counters[name] = step + 1
        detached = per_sample.detach()
        c1 = time.perf_counter()
        strategy.observe(step + 1, t, detached)
        calls += time.perf_counter() - c1
        bins = intervals.index(schedule, t)
        bin_sum.index_add_(0, bins, detached.to(torch.float64))
        bin_count.index_add_(0, bins, ones)
        sync()
        return time.perf_counter() - start, calls

    names = list(strategies)
    order = random.Random(0)
    for round_ in range(args.warmup + args.repeats):
        order.shuffle(names)
        for name in names:
            total, calls = train_step(name)
            # Momentum decay rewrites lr and beta1; every other strategy steps with the run's settings.
            for group, saved in zip(optimizer.param_groups, defaults, strict=True):
                group.update(copy.deepcopy(saved))
            if round_ >= args.warmup:
                step_times[name].append(total)
                call_times[name].append(calls)

    base_step = statistics.median(step_times["vanilla"])
    base_calls = statistics.median(call_times["vanilla"])
    n_params = sum(p.numel() for p in net.parameters())
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device: {device} ({hardware}), threads: {torch.get_num_threads()}, torch {torch.__version__}\n"
        f"model: {args.model} ({n_params / 1e6:.2f} M parameters), input {args.channels}x{args.image_size}x"
        f"{args.image_size}, batch {args.batch}, VP eps-prediction, N = {intervals.num} clusters\n"
        f"{args.repeats} timed rounds (after {args.warmup} warm-up rounds), one step per strategy per round, "
        "shuffled order\n"
    )
    print(
        "| strategy | median step (ms) | ratio to vanilla | overhead % | strategy calls (µs) "
        "| calls overhead % of step |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in CONFIGS:
        if name not in strategies:
            continue
        ratio = statistics.median(a / b for a, b in zip(step_times[name], step_times["vanilla"], strict=True))
        calls = statistics.median(call_times[name])
        print(
            f"| {name} | {1e3 * statistics.median(step_times[name]):.2f} | {ratio:.4f} | "
            f"{100 * (ratio - 1):+.2f} | {1e6 * calls:.0f} | {100 * (calls - base_calls) / base_step:+.3f} |"
        )


if __name__ == "__main__":
    main()
