"""Training throughput (images/s) and MFU of the project's training path against a plain fp32 loop.

    python benchmarks/train_throughput.py --device cuda [--models DiT-S/2 DiT-B/2 UNet-small] [--batch 256]
        [--rounds 3] [--warmup 3] [--windows 3] [--window-steps 5] [--no-compile] [--peak-tflops 989]
        [--largest-dit]
    python benchmarks/train_throughput.py --device cpu --tiny        # DiT-tiny/4, 1x16x16, batch 8, < 60 s

Models and data: DiTs on ImageNet-256 latents (4x32x32, 1000 classes), UNets on 3x32x32 pixels
(10 classes), class-conditional, synthetic data already on the device; VP linear schedule (T = 1000),
eps-prediction.  Paths, all training the same network object in one run:

* ``reference``: a plain loop written here, as a straightforward script would do it -- fp32, no autocast,
  no compile, ``torch.randint`` timesteps, ``F.mse_loss`` on eps, ``torch.optim.AdamW`` with its
  defaults (foreach, not fused), and ``loss.item()`` every step.  It does the same work as the project's
  step: gradient clipping at 1.0 and an EMA of the weights (a per-tensor Python loop, as in DiT's
  ``train.py``).
* ``vanilla`` / ``dtd``: the real ``diffusion_curriculum.training.train_loop`` with the ``vanilla`` and
  the ``dtd`` strategy (N = 20 uniform clusters, tau_max = 200): bf16 autocast on CUDA (fp32 on CPU, its
  default; ``--bf16`` turns it on, as the stages' ``precision: auto`` does on CPUs with AMX or
  AVX512-BF16), fused AdamW, no host synchronisation inside a step (log rows and checkpoints are pushed
  past the end of the timed steps).
* ``... +compile``: the same with ``train_loop(compile=...)`` (``torch.compile``, inductor; ``--tiny``
  uses the ``aot_eager`` backend so that the CPU check stays short -- its timings say nothing about
  inductor).

Timing.  The run is ``--rounds`` rounds; a round runs every path once, in a freshly shuffled order, so the
device's drift falls on all paths alike.  Each run makes ``--warmup`` untimed steps and then ``--windows``
timed windows of ``--window-steps`` steps; the clock is read after a ``torch.cuda.synchronize()`` at each
window edge.  For ``train_loop`` the edges are marked by its own ``on_snapshot`` callback (called after the
step's update, EMA and strategy work), and the callback ends the run at the last edge -- so the timed
steps are exactly the steps ``train_loop`` makes, and setup, compilation, the warm-up steps and the final
checkpoint are outside the timed region.  ``step ms`` is the median over all windows of all rounds of the
window's time per step.  ``warm-up s`` is the time of the first round's run up to its first edge (setup +
warm-up steps, including compilation for ``+compile``: compile time ~ that minus the eager path's).  Later
rounds reuse Dynamo's compiled code (the same network object; Dynamo's cache is reset between models).

FLOPs and MFU.  Model FLOPs per training image are *measured* with ``torch.utils.flop_counter`` on one
forward + backward (SDPA on its math backend so that attention products are counted on every device; matrix
products only, element-wise work not counted); for DiTs the analytic count (see ``_common``) is printed
beside it as a cross-check.  MFU = FLOPs per step / step time / peak, where the peak is measured in the
same run with a square ``torch.matmul`` (8192^3 bf16 on CUDA; 1024^3 fp32 on CPU, where training runs in
fp32), and, with ``--peak-tflops``, also against the vendor's nominal dense peak (H100 SXM bf16: 989).
The fp32 reference is quoted against the same bf16 peak (MFU is about the hardware, not the dtype).

``--largest-dit`` then tries DiT-XL/2, L/2, B/2, S/2, tiny/2 (in that order) on the ``vanilla`` path at the
same batch and reports each until one trains without ``torch.OutOfMemoryError``.  Peak memory is
``torch.cuda.max_memory_allocated`` over the configuration's runs, reset before each run.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ModelSpec,
    dit_analytic_forward_flops,
    fmt,
    fmt_gib,
    free_memory,
    header,
    matmul_peak,
    peak_dtype,
    spec_for,
    sync,
    train_flops_per_image,
)

from diffusion_curriculum.schedules import make_schedule  # noqa: E402
from diffusion_curriculum.timesteps import Intervals, make_strategy  # noqa: E402
from diffusion_curriculum.training import train_loop  # noqa: E402

STRATEGY_PARAMS = {"vanilla": {}, "dtd": {"tau_max": 200}}
PATHS = ("reference", "vanilla", "dtd", "vanilla+compile", "dtd+compile")
LR, EMA_DECAY, GRAD_CLIP = 1e-4, 0.9999, 1.0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="DiT-tiny/4 on 1x16x16, batch 8: a quick CPU check")
    ap.add_argument("--models", nargs="+", default=None, help="default: DiT-S/2 DiT-B/2 UNet-small")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default 256; 8 with --tiny)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every path once, shuffled")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every run")
    ap.add_argument("--windows", type=int, default=3, help="timed windows per run")
    ap.add_argument("--window-steps", type=int, default=5, help="steps per timed window")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--no-compile", action="store_true", help="drop the +compile paths")
    ap.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default inductor; aot_eager with --tiny)",
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="vendor's nominal dense peak, for MFU")
    ap.add_argument(
        "--peak-size", type=int, default=None, help="edge of the peak matmul (8192 CUDA, 1024 CPU)"
    )
    ap.add_argument("--largest-dit", action="store_true", help="find the largest DiT-*/2 that fits the batch")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast in the project's paths (default: on CUDA; the stages' precision: auto also "
        "turns it on for CPUs with AMX or AVX512-BF16)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if min(args.rounds, args.warmup, args.windows, args.window_steps) < 1:
        ap.error("--rounds, --warmup, --windows and --window-steps must be >= 1")
    if args.models is None:
        args.models = ["DiT-tiny/4"] if args.tiny else ["DiT-S/2", "DiT-B/2", "UNet-small"]
    if args.batch is None:
        args.batch = 8 if args.tiny else 256
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.tiny else "inductor"
    if args.no_compile:
        args.paths = [p for p in args.paths if not p.endswith("+compile")]
    if "reference" not in args.paths:
        args.paths = ["reference", *args.paths]
    return args


class _Done(Exception):
    """Raised by the timing callback at the last window edge: ends train_loop before its checkpoint."""


@dataclass
class PathStats:
    per_step: list[float] = field(default_factory=list)  # seconds per step, one value per timed window
    warmup_s: list[float] = field(default_factory=list)  # per run: start -> first window edge
    peak_bytes: int | None = None
    error: str | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args = args
        self.device = device
        self.schedule = make_schedule("vp", beta_schedule="linear", num_timesteps=1000)
        self.intervals = Intervals.uniform(20)
        self.edges = [args.warmup + i * args.window_steps for i in range(args.windows + 1)]

    def data(self, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator(device=self.device).manual_seed(self.args.seed)
        n = max(4 * self.args.batch, 1024)
        images = torch.randn(n, *spec.shape, generator=g, device=self.device)
        labels = torch.randint(spec.num_classes, (n,), generator=g, device=self.device)
        return images, labels

    def _timed(self, run: Callable[[Callable[[int], None]], None]) -> tuple[list[float], float]:
        """Run ``run(mark)``; ``mark(step)`` is called after every step and records the window edges."""
        marks: list[float] = []
        start = time.perf_counter()

        def mark(step: int) -> None:
            if step in self.edges:
                sync(self.device)
                marks.append(time.perf_counter())
                if len(marks) == len(self.edges):
                    raise _Done

        with contextlib.suppress(_Done):
            run(mark)
        if len(marks) != len(self.edges):
            raise RuntimeError(f"run ended after {len(marks)} of {len(self.edges)} window edges")
        k = self.args.window_steps
        return [(b - a) / k for a, b in zip(marks[:-1], marks[1:], strict=True)], marks[0] - start

    def reference(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        """The plain fp32 eager loop (see the module docstring)."""
        device, batch = self.device, self.args.batch
        abar = self.schedule.alphas_cumprod.to(device=device, dtype=torch.float32)
        optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.0)
        ema = {name: p.detach().clone() for name, p in net.named_parameters()}
        net.train()

        def run(mark: Callable[[int], None]) -> None:
            for step in range(1, self.edges[-1] + 1):
                idx = torch.randint(images.shape[0], (batch,), device=device)
                x0, y = images[idx], labels[idx]
                t = torch.randint(0, self.schedule.num_timesteps, (batch,), device=device)
                noise = torch.randn_like(x0)
                a = abar[t].view(-1, 1, 1, 1)
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
                loss = F.mse_loss(net(x_t, t.float(), y), noise)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
                optimizer.step()
                with torch.no_grad():
                    for name, p in net.named_parameters():
                        ema[name].mul_(EMA_DECAY).add_(p.detach(), alpha=1 - EMA_DECAY)
                loss.item()  # the usual per-step logging read: a host synchronisation
                mark(step)

        return self._timed(run)

    def project(self, net, images, labels, strategy: str, compile: bool | str, round_: int):
        """The real train_loop; window edges are marked through its on_snapshot callback."""

        def run(mark: Callable[[int], None]) -> None:
            iterations = self.edges[-1] + 1  # one more: the final log row and checkpoint are never reached
            with tempfile.TemporaryDirectory(prefix="train_throughput_") as run_dir:
                train_loop(
                    net=net,
                    schedule=self.schedule,
                    prediction="eps",
                    strategy=make_strategy(
                        strategy, self.schedule, self.intervals, **STRATEGY_PARAMS[strategy]
                    ),
                    intervals=self.intervals,
                    images=images,
                    labels=labels,
                    run_dir=run_dir,
                    iterations=iterations,
                    batch_size=self.args.batch,
                    lr=LR,
                    ema_decay=EMA_DECAY,
                    grad_clip=GRAD_CLIP,
                    log_every=iterations,
                    checkpoint_every=iterations,
                    seed=self.args.seed + round_,
                    device=self.device,
                    snapshot_steps=self.edges,
                    on_snapshot=lambda step, _net, _ema: mark(step),
                    progress=False,
                    compile=compile,
                    bf16=self.args.bf16,
                )

        return self._timed(run)

    def run_path(self, path: str, net, images, labels, round_: int, stats: PathStats) -> None:
        if stats.error is not None:
            return
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            if path == "reference":
                per_step, warm = self.reference(net, images, labels)
            else:
                strategy, _, compiled = path.partition("+")
                backend = self.args.compile_backend if compiled else False
                per_step, warm = self.project(net, images, labels, strategy, backend, round_)
        except torch.OutOfMemoryError as exc:
            stats.error = "OOM: " + str(exc).splitlines()[0][:80]
        if cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            stats.peak_bytes = max(stats.peak_bytes or 0, peak)
        net.zero_grad(set_to_none=True)
        free_memory(self.device)
        if stats.error is None:
            stats.per_step.extend(per_step)
            stats.warmup_s.append(warm)

    def model(
        self, spec: ModelSpec, paths: list[str]
    ) -> tuple[dict[str, PathStats], float, float | None, int]:
        torch._dynamo.reset()
        torch.manual_seed(self.args.seed)
        net = spec.build().to(self.device)
        n_params = sum(p.numel() for p in net.parameters())
        flops = train_flops_per_image(net, spec, self.device)
        analytic = dit_analytic_forward_flops(net)
        images, labels = self.data(spec)
        stats = {p: PathStats() for p in paths}
        order = list(paths)
        shuffle = random.Random(self.args.seed)
        for round_ in range(self.args.rounds):
            shuffle.shuffle(order)
            for path in order:
                self.run_path(path, net, images, labels, round_, stats[path])
        del net, images, labels
        free_memory(self.device)
        return stats, flops, None if analytic is None else 3 * analytic, n_params


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    bench = Bench(args, device)

    peak_n = args.peak_size or (8192 if cuda else 1024)
    pdt = peak_dtype(device)
    peak = matmul_peak(device, pdt, peak_n)
    peak_name = str(pdt).removeprefix("torch.")

    lines = [
        header(device),
        f"batch {args.batch}, VP linear T = 1000, eps-prediction, class-conditional, data on the device; "
        f"{args.rounds} rounds x {args.windows} windows x {args.window_steps} steps per path "
        f"(after {args.warmup} warm-up steps per run); compile backend: {args.compile_backend}",
        f"measured matmul peak ({peak_name}, n = {peak_n}): {fmt(peak)} TFLOP/s"
        + (f"; nominal peak given: {args.peak_tflops:.1f} TFLOP/s" if args.peak_tflops else ""),
        "FLOPs per image: forward + backward, measured (torch.utils.flop_counter, matrix products only)",
    ]
    rows = []
    overheads = []
    for name in args.models:
        spec = spec_for(name, args.tiny)
        stats, flops, analytic, n_params = bench.model(spec, args.paths)
        line = f"{spec.label}: {n_params / 1e6:.2f} M parameters, {flops / 1e9:.3f} GFLOP per training image"
        if analytic is not None:
            line += f" (analytic 3 x forward: {analytic / 1e9:.3f})"
        lines.append(line)
        ref = statistics.median(stats["reference"].per_step) if stats["reference"].per_step else None
        medians = {p: statistics.median(s.per_step) for p, s in stats.items() if s.per_step}
        for path in args.paths:
            s = stats[path]
            if s.error is not None:
                rows.append(f"| {spec.label} | {path} | {s.error} | | | | | {fmt_gib(s.peak_bytes)} | |")
                continue
            step = medians[path]
            achieved = flops * args.batch / step / 1e12
            mfu_nominal = f" {100 * achieved / args.peak_tflops:.1f} % |" if args.peak_tflops else ""
            speedup = f"{ref / step:.2f}x" if ref else "n/a"
            rows.append(
                f"| {spec.label} | {path} | {args.batch / step:.1f} | {1e3 * step:.2f} | {speedup} | "
                f"{fmt(achieved)} | {100 * achieved / peak:.1f} % |{mfu_nominal} {fmt_gib(s.peak_bytes)} | "
                f"{s.warmup_s[0]:.1f} |"
            )
        eager_warm = [
            s.warmup_s[0] for p, s in stats.items() if "+" not in p and p != "reference" and s.warmup_s
        ]
        compiled_warm = [s.warmup_s[0] for p, s in stats.items() if p.endswith("+compile") and s.warmup_s]
        if eager_warm and compiled_warm:
            compile_s = max(compiled_warm) - statistics.median(eager_warm)
            lines.append(
                f"  compile time ({args.compile_backend}) ~ {compile_s:.1f} s (first compiled run's warm-up "
                "minus the eager runs'; later runs reuse the compiled code)"
            )
        for suffix in ("", "+compile"):
            v, d = medians.get("vanilla" + suffix), medians.get("dtd" + suffix)
            if v and d:
                kind = "compiled" if suffix else "eager"
                overheads.append(f"{spec.label} {kind}: {100 * (d / v - 1):+.2f} %")

    print("\n".join(lines) + "\n")
    nominal_col = " MFU (nominal) |" if args.peak_tflops else ""
    print(
        "| model | path | images/s | step ms (median) | speed-up vs reference | model TFLOP/s "
        f"| MFU (measured {peak_name} peak) |{nominal_col} peak memory GiB | warm-up s (first run) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|" if args.peak_tflops else "") + "---:|---:|")
    print("\n".join(rows))
    if overheads:
        print("\ncurriculum overhead, dtd step time vs vanilla's (target <= 1 %): " + "; ".join(overheads))

    if args.largest_dit:
        largest(args, bench, device)


def largest(args: argparse.Namespace, bench: Bench, device: torch.device) -> None:
    """Try DiT-XL/2 down to DiT-tiny/2 on the vanilla path until one trains at the batch size."""
    print(f"\nlargest DiT-*/2 that trains at batch {args.batch} (vanilla path, eager, 4x32x32):\n")
    print("| model | parameters (M) | result | images/s | peak memory GiB |")
    print("|---|---:|---|---:|---:|")
    for size in ("XL", "L", "B", "S", "tiny"):
        spec = spec_for(f"DiT-{size}/2", False)
        torch._dynamo.reset()
        net = spec.build().to(device)
        n_params = sum(p.numel() for p in net.parameters()) / 1e6
        images, labels = bench.data(spec)
        stats = PathStats()
        bench.run_path("vanilla", net, images, labels, 0, stats)
        del net, images, labels
        free_memory(device)
        if stats.error is not None:
            print(f"| {spec.name} | {n_params:.1f} | {stats.error} | | {fmt_gib(stats.peak_bytes)} |")
            continue
        ips = args.batch / statistics.median(stats.per_step)
        print(f"| {spec.name} | {n_params:.1f} | trains | {ips:.1f} | {fmt_gib(stats.peak_bytes)} |")
        print(f"\nlargest: {spec.name}")
        return
    print("\nnone of the DiT sizes fits")


if __name__ == "__main__":
    main()
