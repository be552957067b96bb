"""Sampling throughput (images/s) of the project's samplers with classifier-free guidance, against a plain
fp32 loop, measured in one run.

    python benchmarks/sample_throughput.py --device cuda [--models DiT-S/2 DiT-B/2 UNet-small] [--batch 256]
        [--samplers ddpm euler] [--timed-steps 20 | --full] [--rounds 3] [--cfg-scale 1.5] [--no-compile]
        [--compile-mode default] [--peak-tflops 989]
    python benchmarks/sample_throughput.py --device cpu --tiny       # DiT-tiny/4, 1x16x16, batch 8, < 60 s

Samplers: ``ddpm`` -- DDPM ancestral sampling with 250 respaced steps on the VP linear schedule (T = 1000),
eps-prediction, x0 clipped to [-1, 1]; ``euler`` -- Euler with 40 steps on the probability-flow ODE of the
linear (flow) interpolant, flow-prediction, uniform time grid.  Every step is one guided network
evaluation, CFG scale 1.5, labels cycling over the classes.  Models and data shapes as in
``train_throughput.py``; the weights are random (the layers that start at zero are filled with
N(0, 0.02²)), so that the outputs are not trivially zero and can be compared.

Paths:

* ``reference``: a straightforward loop written here -- fp32, no autocast, no compile, the network called
  twice per step (conditional, then unconditional), the same update formulas.
* ``project``: ``samplers.sample`` with ``samplers.guided_x0_fn`` (one call on the doubled batch) on a
  ``losses.Denoiser``.  ``samplers.sample`` does not enable autocast itself (it keeps its state in
  float32 and runs whatever the network computes), so the benchmark wraps the call in
  ``torch.autocast("cuda", torch.bfloat16)``; attention goes through the network's
  ``F.scaled_dot_product_attention`` (flash kernel in bf16).  On CPU no autocast is used (fp32), as in
  ``train_loop``; ``--bf16``/``--no-bf16`` override.
* ``project+compile``: the same with the network ``torch.compile``d (``--compile-mode``; inductor, or
  ``aot_eager`` with ``--tiny``, which checks the code path only).

Timing.  Every path runs the same seeded noise and generator in a round, so its output can be compared
with the reference's (last column: relative L2 difference of the samples -- fp32 vs fp32 on CPU is ~1e-6,
bf16 vs fp32 on GPU is larger and says only that the samplers agree).  Round 0 is an untimed warm-up of
every path (it includes compilation: ``compile s``), then ``--rounds`` timed rounds in shuffled order, a
``torch.cuda.synchronize()`` before each clock read.  A sampler's steps all cost the same (one network
evaluation and a few element-wise operations), so each timed run makes ``--timed-steps`` steps of the
sampler (the same code on a shorter time grid) and images/s is quoted for the full chain:
batch / (chain steps x median time per step); ``--full`` times the full chains instead.  ``compile s`` is
the warm-up run's time minus its steps at the median rate (the first sampler's warm-up compiles; later
samplers reuse the compiled network, as do all timed runs).  The per-step time is the median over rounds.

FLOPs.  Model TFLOP/s counts the network's matrix products (``torch.utils.flop_counter``, one forward,
per image) x 2 x batch per step; MFU divides that by the bf16 matmul peak measured in the same run (fp32
on CPU) and, with ``--peak-tflops``, by the vendor's nominal dense peak (H100 SXM bf16: 989).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ModelSpec,
    fmt,
    fmt_gib,
    forward_flops_per_image,
    free_memory,
    header,
    matmul_peak,
    peak_dtype,
    spec_for,
    sync,
)

from diffusion_curriculum import samplers  # noqa: E402
from diffusion_curriculum.losses import Denoiser  # noqa: E402
from diffusion_curriculum.schedules import make_schedule  # noqa: E402


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # samplers.sample name
    framework: str
    prediction: str
    steps: int  # the chain whose throughput is quoted
    kwargs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name.upper() if self.name == 'ddpm' else self.name.capitalize()}-{self.steps}"


SAMPLERS = {
    "ddpm": SamplerSpec("ddpm", "vp", "eps", 250, {"clip_x0": 1.0}),
    "euler": SamplerSpec("euler", "flow", "flow", 40),
}
PATHS = ("reference", "project", "project+compile")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="DiT-tiny/4 on 1x16x16, batch 8: a quick CPU check")
    ap.add_argument("--models", nargs="+", default=None, help="default: DiT-S/2 DiT-B/2 UNet-small")
    ap.add_argument("--batch", type=int, default=None, help="images per batch before CFG (256; 8 --tiny)")
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    ap.add_argument("--timed-steps", type=int, default=20, help="sampler steps per timed run")
    ap.add_argument("--full", action="store_true", help="time the full chains instead")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--no-compile", action="store_true", help="drop the project+compile path")
    ap.add_argument("--compile-backend", default=None, help="default inductor; aot_eager with --tiny")
    ap.add_argument(
        "--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs"
    )
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA")
    ap.add_argument("--peak-tflops", type=float, default=None, help="vendor's nominal dense peak, for MFU")
    ap.add_argument("--peak-size", type=int, default=None, help="peak matmul edge (8192 CUDA, 1024 CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if min(args.rounds, args.timed_steps) < 1:
        ap.error("--rounds and --timed-steps must be >= 1")
    if args.models is None:
        args.models = ["DiT-tiny/4"] if args.tiny else ["DiT-S/2", "DiT-B/2", "UNet-small"]
    if args.batch is None:
        args.batch = 8 if args.tiny else 256
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.tiny else "inductor"
    if args.no_compile:
        args.paths = [p for p in args.paths if p != "project+compile"]
    if "reference" not in args.paths:
        args.paths = ["reference", *args.paths]
    return args


def randomize_zero_layers(net: nn.Module, seed: int) -> None:
    """Fill the parameters that start at zero (adaLN-Zero, output layers) with N(0, 0.02^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------------------------------
# the plain fp32 reference loops


@torch.no_grad()
def reference_ddpm(net, schedule, noise, y, null, scale, steps, generator, clip=1.0) -> torch.Tensor:
    """DDPM on the respaced chain, eps-prediction, guidance by two network calls per step."""
    timesteps = samplers.vp_timesteps(schedule, steps).tolist()
    betas = samplers.respaced_betas(schedule, torch.tensor(timesteps)).tolist()
    abar = schedule.alphas_cumprod[timesteps].tolist()
    x = noise.clone()
    null_y = torch.full_like(y, null)
    for i in reversed(range(len(timesteps))):
        t = torch.full((x.shape[0],), float(timesteps[i]), device=x.device)
        eps_c = net(x, t, y)
        eps_u = net(x, t, null_y)
        eps = eps_u + scale * (eps_c - eps_u)
        ab, ab_prev, beta = abar[i], (abar[i - 1] if i > 0 else 1.0), betas[i]
        x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-clip, clip)
        x = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x
        if i > 0:
            std = math.sqrt(beta * (1 - ab_prev) / (1 - ab))
            x = x + std * torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return x


@torch.no_grad()
def reference_euler(net, schedule, noise, y, null, scale, steps, generator=None) -> torch.Tensor:
    """Euler on the flow ODE dx/dt = v(x, t), t from 1 to 0 on a uniform grid, guided velocity."""
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = noise.clone()  # sigma(1) = 1
    null_y = torch.full_like(y, null)
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        tt = torch.full((x.shape[0],), 1000.0 * t, device=x.device)
        v_c = net(x, tt, y)
        v_u = net(x, tt, null_y)
        x = x + (t_next - t) * (v_u + scale * (v_c - v_u))
    return x


REFERENCES = {"ddpm": reference_ddpm, "euler": reference_euler}


# ----------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    per_step: list[float] = field(default_factory=list)
    first_run_s: float | None = None  # the warm-up run (compilation included)
    first_run_steps: int = 0
    peak_bytes: int | None = None
    rel_diff: float | None = None
    error: str | None = None


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    bf16 = cuda if args.bf16 is None else args.bf16

    peak_n = args.peak_size or (8192 if cuda else 1024)
    pdt = peak_dtype(device)
    peak = matmul_peak(device, pdt, peak_n)
    peak_name = str(pdt).removeprefix("torch.")
    lines = [
        header(device),
        f"batch {args.batch} (x2 with CFG, scale {args.cfg_scale}); project path: "
        + ("bf16 autocast around samplers.sample" if bf16 else "fp32 (no autocast)")
        + f"; compile backend {args.compile_backend}, mode {args.compile_mode or 'default'}; "
        + ("full chains timed" if args.full else f"{args.timed_steps} sampler steps per timed run")
        + f", {args.rounds} timed rounds after 1 warm-up round",
        f"measured matmul peak ({peak_name}, n = {peak_n}): {fmt(peak)} TFLOP/s"
        + (f"; nominal peak given: {args.peak_tflops:.1f} TFLOP/s" if args.peak_tflops else ""),
    ]
    rows = []
    for name in args.models:
        spec = spec_for(name, args.tiny)
        result = bench_model(args, spec, device, bf16)
        lines.append(result.pop("line"))
        flops_per_image = result.pop("flops")
        for (sampler, path), s in result.items():
            sspec = SAMPLERS[sampler]
            label = f"| {spec.label} | {sspec.label} | {path} |"
            if s.error is not None:
                rows.append(f"{label} {s.error} | | | | | {fmt_gib(s.peak_bytes)} | | |")
                continue
            step = statistics.median(s.per_step)
            ref = result[(sampler, "reference")]
            speedup = statistics.median(ref.per_step) / step if ref.per_step else math.nan
            flops = flops_per_image * 2 * args.batch / step / 1e12
            nominal = f" {100 * flops / args.peak_tflops:.1f} % |" if args.peak_tflops else ""
            target = "" if path == "reference" else (" (met)" if speedup >= 2.5 else " (not met)")
            compile_s = ""
            if s.first_run_s is not None:
                compile_s = f"{max(s.first_run_s - s.first_run_steps * step, 0.0):.1f}"
            diff = "" if s.rel_diff is None else f"{s.rel_diff:.1e}"
            ips = args.batch / (sspec.steps * step)
            rows.append(
                f"{label} {fmt(ips)} | {1e3 * step:.2f} | {speedup:.2f}x{target} | {fmt(flops)} | "
                f"{100 * flops / peak:.1f} % |{nominal} {fmt_gib(s.peak_bytes)} | {compile_s} | {diff} |"
            )
    print("\n".join(lines) + "\n")
    nominal_col = " MFU (nominal) |" if args.peak_tflops else ""
    print(
        "| model | sampler | path | images/s | ms per step (median) | speed-up vs reference (target 2.5x) "
        f"| model TFLOP/s | MFU (measured {peak_name} peak) |{nominal_col} peak memory GiB | compile s "
        "| rel. diff vs reference |"
    )
    print(
        "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if args.peak_tflops else "") + "---:|---:|---:|"
    )
    print("\n".join(rows))


def make_run(
    args, spec: ModelSpec, sampler: str, path: str, model: nn.Module, autocast, n_steps: int, seed: int
):
    """A closure that runs ``path`` once, ``n_steps`` sampler steps, from the round's seeded noise."""
    device = next(model.parameters()).device
    sspec = SAMPLERS[sampler]
    kw = {"num_timesteps": 1000} if sspec.framework == "vp" else {}
    schedule = make_schedule(sspec.framework, **kw)
    noise_gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn(args.batch, *spec.shape, generator=noise_gen, device=device)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    y = torch.arange(args.batch, device=device) % spec.num_classes
    null, scale = spec.num_classes, args.cfg_scale
    if path == "reference":
        reference = REFERENCES[sampler]
        return lambda: reference(model, schedule, noise, y, null, scale, n_steps, gen)
    x0_fn = samplers.guided_x0_fn(Denoiser(model, schedule, sspec.prediction), y, scale=scale)

    def project() -> torch.Tensor:
        with autocast:
            return samplers.sample(x0_fn, schedule, noise, sampler, n_steps, generator=gen, **sspec.kwargs)

    return project


def bench_sampler(args, spec, sampler, models: dict[str, nn.Module], autocast, device) -> dict[str, Stats]:
    """Warm-up round, then ``--rounds`` timed rounds of every path in shuffled order."""
    steps = SAMPLERS[sampler].steps if args.full else min(args.timed_steps, SAMPLERS[sampler].steps)
    stats = {p: Stats() for p in args.paths}
    order = list(args.paths)
    shuffle = random.Random(args.seed)
    for round_ in range(args.rounds + 1):
        warm = round_ == 0
        n_steps = min(steps, 3) if warm and not args.full else steps
        shuffle.shuffle(order)
        outputs: dict[str, torch.Tensor] = {}
        for path in order:
            s = stats[path]
            if s.error is not None:
                continue
            run = make_run(args, spec, sampler, path, models[path], autocast, n_steps, args.seed + round_)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                sync(device)
                start = time.perf_counter()
                outputs[path] = run()
                sync(device)
                elapsed = time.perf_counter() - start
            except torch.OutOfMemoryError as exc:
                s.error = "OOM: " + str(exc).splitlines()[0][:80]
            if device.type == "cuda":
                s.peak_bytes = max(s.peak_bytes or 0, torch.cuda.max_memory_allocated(device))
            del run
            if s.error is not None:
                free_memory(device)
            elif warm:
                if path.endswith("+compile"):
                    s.first_run_s, s.first_run_steps = elapsed, n_steps
            else:
                s.per_step.append(elapsed / n_steps)
        if "reference" in outputs:
            ref = outputs["reference"].float()
            for path, x in outputs.items():
                if path != "reference":
                    stats[path].rel_diff = float((x.float() - ref).norm() / ref.norm())
        del outputs
        free_memory(device)
    return stats


def bench_model(args, spec: ModelSpec, device: torch.device, bf16: bool) -> dict:
    torch._dynamo.reset()
    torch.manual_seed(args.seed)
    net = spec.build()
    randomize_zero_layers(net, args.seed)
    net = net.to(device).eval()
    n_params = sum(p.numel() for p in net.parameters())
    flops = forward_flops_per_image(net, spec, device)
    models = {"reference": net, "project": net}
    if "project+compile" in args.paths:
        models["project+compile"] = torch.compile(net, backend=args.compile_backend, mode=args.compile_mode)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    out: dict = {
        "flops": flops,
        "line": f"{spec.label}: {n_params / 1e6:.2f} M parameters, {flops / 1e9:.3f} GFLOP per image and "
        "network evaluation (forward, measured)",
    }
    for sampler in args.samplers:
        for path, s in bench_sampler(args, spec, sampler, models, autocast, device).items():
            out[(sampler, path)] = s
    del net, models
    free_memory(device)
    return out


if __name__ == "__main__":
    main()
