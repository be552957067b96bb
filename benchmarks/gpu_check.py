"""The GPU check: every GPU figure BENCHMARKS.md asks for, in one run of at most 8 minutes on one GPU.

    bash benchmarks/gpu_check.sh [--dry] [--parts a,b] [OUT]     # the entry point (OUT defaults to $OUT)
    python benchmarks/gpu_check.py PART --out DIR [--dry] [--budget S]   # one part (what the script runs)
    python benchmarks/gpu_check.py caps [--dry]                  # "part seconds" lines, then "total S"
    python benchmarks/gpu_check.py merge --out DIR [--dry] [--wall S]    # DIR/gpu_check.json and .md

``gpu_check.sh`` runs each part below as its own process under ``timeout`` with the part's cap (never past
the run's total; the last part, the pipeline, may also use the time the others left unused), then merges
what the parts wrote into ``gpu_check.json`` (every figure, the device, the torch / CUDA / cuDNN / NCCL
versions, the commit, each part's status, wall time and cap) and ``gpu_check.md`` (the GPU table of
BENCHMARKS.md, filled).  A part writes ``parts/<part>.json`` after each measurement, so a part stopped by
its cap keeps the figures it had (status ``timeout``).

Parts (cap in seconds on the GPU; their sum, 465, plus 15 for the merge and ``timeout``'s grace: 480):

* ``env`` (25): device, versions, commit; the dense matmul peak measured with an 8192^3 product timed by
  CUDA events (bf16, and fp32 with TF32 off) -- the peak every MFU below is quoted against.
* ``train`` (120): DiT-B/2 on 4x32x32 latents, batch 256 (``train_throughput.py``'s ``Bench``): the plain
  fp32 eager loop (``reference``) against the project's ``train_loop`` (bf16 autocast, SDPA, fused AdamW)
  with the ``vanilla`` and ``dtd`` strategies, then ``vanilla+compile`` (inductor) if at least 40 s of the
  cap are left.  The project's figure is its fastest path.  MFU = FLOPs per image x batch / step time /
  measured bf16 peak, with FLOPs per image counted by ``torch.utils.flop_counter`` on one forward +
  backward (matrix products, attention included) and checked against the analytic DiT count,
  3 x forward, forward = depth x (n (8 d^2 + 4 r d^2 + 4 n d) + 12 d^2) + embeddings (``_common``).
* ``sample`` (75): DDPM-250 with CFG 1.5, batch 256, DiT-B/2 (``sample_throughput.py``): one guided call
  on the doubled batch in bf16 (``samplers.sample``) against the fp32 loop calling the network twice per
  step; 10 timed steps per run, images/s quoted for the 250-step chain; ``+compile`` if 30 s are left.
* ``kl`` (40): ``estimate_kl`` at M = L = 5,000, D = 3,072, 999 pairs, float32 (the GPU study's
  ``kl.precision``) (``kl_throughput.measure``): median time and achieved TFLOP/s against the fp32 matmul
  peak (TF32 off, as in the estimator).
* ``memory`` (40): ``torch.cuda.max_memory_allocated`` over two ``train_loop`` steps (vanilla, bf16,
  eager) of DiT-S/2, B/2, L/2, XL/2 at batch 256, smallest first, up to the first out-of-memory: the
  largest DiT that fits is the last one that trained.
* ``ddp`` (30): two processes of ``train_loop`` under NCCL data parallel (DiT-B/2, global batch 256),
  step time and whether the ranks' weights agree; skipped, with the reason, on a machine with one GPU.
* ``pipeline`` (135): a slice of ``configs/gpu_study.yaml`` through Snakemake and the real stages, in a
  copy of the repository: vanilla and dtd, seed 0, 4 experts of 150 steps, 300 training steps (FID at
  150 and 300), 1,000 samples, up to the report; ``train.compile`` off (compilation is timed in
  ``train``; here it would take most of the slice).  Figures: each method's final FID and training device.

``--dry``: the same code paths on the CPU at tiny sizes (DiT-tiny/4 on 1x16x16, batch 4, one timed step,
``aot_eager`` in place of inductor, KL with M = L = 16, D = 48 and 9 pairs, memory of DiT-tiny/4 and /2
from the fake-tensor estimate of ``memory_estimate.py`` since a CPU keeps no allocator statistics, the
data-parallel step on 2 gloo processes, the pipeline on ``configs/smoke.yaml`` up to the final FID of
each method).  ``tests/test_gpu_check.py`` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # the sibling benchmarks, imported by the parts
    sys.path.insert(0, str(HERE))

PARTS = ("env", "train", "sample", "kl", "memory", "ddp", "pipeline")
CAPS = {"env": 25, "train": 120, "sample": 75, "kl": 40, "memory": 40, "ddp": 30, "pipeline": 135}
DRY_CAPS = {"env": 60, "train": 180, "sample": 120, "kl": 60, "memory": 120, "ddp": 120, "pipeline": 420}
TOTAL_S = 480  # the whole run on a GPU, merge included: 8 minutes
MERGE_RESERVE_S = 15  # kept back for the merge and for ``timeout``'s kill grace
PART_MARGIN_S = 5  # a part stops starting new work this long before its cap
JOBS_PER_GPU = 8  # pipeline slice: jobs sharing one GPU
COMPILE_MIN_S = {"train": 40, "sample": 30}  # cap left that a compiled path needs, else it is skipped
TARGETS = (  # (key, what, threshold, unit)
    ("train_speedup", "training: project loop vs fp32 eager loop, DiT-B/2, batch 256", 3.0, "x"),
    ("train_mfu", "training MFU, DiT-B/2 (measured bf16 matmul peak)", 40.0, "%"),
    ("sample_speedup", "sampling: DDPM-250 + CFG, batch 256, DiT-B/2, vs two-call fp32 loop", 2.5, "x"),
    ("kl_percent_of_peak", "KL estimator, M = L = 5,000, D = 3,072, 999 pairs (fp32 matmul peak)", 30.0, "%"),
)


@dataclass(frozen=True)
class Sizes:
    """What each part measures: the GPU problem, or its tiny CPU stand-in (``--dry``)."""

    model: str
    tiny: bool  # 1x16x16 data (``_common.spec_for``)
    batch: int
    rounds: int  # training: rounds of every path; sampling: timed rounds after a warm-up round
    warmup: int  # training: untimed steps per run
    windows: int
    window_steps: int
    compile_backend: str
    sample_steps: int  # timed sampler steps per run
    kl: tuple[int, int, int, int]  # M, L, D, T (T - 1 pairs)
    kl_repeats: int
    memory_models: tuple[str, ...]
    ddp_batch: int
    peak_size: int  # edge of the peak-measuring matmul


FULL = Sizes(
    "DiT-B/2", False, 256, 2, 2, 2, 5, "inductor", 10, (5000, 5000, 3072, 1000), 2,
    ("DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2"), 256, 8192,
)  # fmt: skip
DRY = Sizes(
    "DiT-tiny/4", True, 4, 1, 1, 1, 1, "aot_eager", 2, (16, 16, 48, 10), 1,
    ("DiT-tiny/4", "DiT-tiny/2"), 8, 256,
)  # fmt: skip


def write_json(path: Path, record: dict) -> None:
    """Write atomically (a part killed by its cap leaves the previous complete file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)


class Part:
    """One part's run: its sizes, device, deadline and the record it keeps on disk."""

    def __init__(self, name: str, out: Path, dry: bool, budget: float | None):
        self.name, self.out, self.dry = name, out, dry
        self.sizes = DRY if dry else FULL
        self.start = time.monotonic()
        cap = (DRY_CAPS if dry else CAPS)[name]
        self.budget = cap if budget is None else budget
        self.figures: dict = {}
        self.status = "partial"
        self.reason: str | None = None

    def left(self) -> float:
        """Seconds left before the part should stop starting work."""
        return self.budget - PART_MARGIN_S - (time.monotonic() - self.start)

    def save(self) -> None:
        record = {"part": self.name, "status": self.status, "figures": self.figures}
        if self.reason:
            record["reason"] = self.reason
        record["part_wall_s"] = round(time.monotonic() - self.start, 2)
        write_json(self.out / "parts" / f"{self.name}.json", record)

    def env(self) -> dict:
        path = self.out / "parts" / "env.json"
        return json.loads(path.read_text()).get("figures", {}) if path.exists() else {}


def pick_device(part: Part):
    import torch

    if part.dry:
        torch.set_num_threads(1)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device: the GPU check needs one (bash benchmarks/gpu_check.sh --dry runs on CPU)"
        )
    return torch.device("cuda")


def mfu_peak(part: Part, device) -> tuple[float, str]:
    """The peak MFU is quoted against (bf16 on CUDA, fp32 on CPU): env's measurement, else measured here."""
    from _common import matmul_peak, peak_dtype

    dtype = peak_dtype(device)
    name = str(dtype).removeprefix("torch.")
    peak = part.env().get("matmul_peak_tflops", {}).get(name)
    if peak is None:
        peak = matmul_peak(device, dtype, part.sizes.peak_size)
    return peak, name


# ----------------------------------------------------------------------------------------------------
# the parts


def part_env(part: Part) -> None:
    import platform

    import torch
    from _common import matmul_peak

    from diffusion_curriculum.report.provenance import collect_provenance

    device = pick_device(part)
    prov = collect_provenance(REPO / "configs" / "gpu_study.yaml", REPO)
    f = part.figures
    f.update(
        device=device.type,
        device_name=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        device_count=torch.cuda.device_count() if device.type == "cuda" else 1,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        nccl=_nccl_version() if device.type == "cuda" else None,
        python=prov["python"],
        platform=prov["platform"],
        cpus=prov["cpus"],
        # outside a git checkout (a copied tree), the commit the caller names
        commit=prov["commit"] or os.environ.get("GPU_CHECK_COMMIT"),
        date=prov["date"],
        packages=prov["packages"],
        tf32_matmul_default=torch.backends.cuda.matmul.allow_tf32,
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        f.update(
            memory_gib=props.total_memory / 2**30,
            sm_count=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
            driver=_nvidia_smi("driver_version"),
        )
    part.save()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the KL estimator's setting)
    dtypes = (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32,)
    f["peak_size"] = part.sizes.peak_size
    f["matmul_peak_tflops"] = {
        str(dt).removeprefix("torch."): matmul_peak(device, dt, part.sizes.peak_size) for dt in dtypes
    }
    part.status = "ok"


def _nccl_version() -> str | None:
    import torch

    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _nvidia_smi(field: str) -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None


def _path_figures(per_step: list[float], batch: int, flops_per_step: float, peak: float) -> dict:
    step = statistics.median(per_step)
    return {
        "step_ms": 1e3 * step,
        "images_per_s": batch / step,
        "model_tflops": flops_per_step / step / 1e12,
        "mfu_percent": 100 * flops_per_step / step / 1e12 / peak,
        "per_step_s": per_step,
    }


def part_train(part: Part) -> None:
    import random

    import torch
    from _common import dit_analytic_forward_flops, free_memory, spec_for, train_flops_per_image
    from train_throughput import Bench, PathStats

    device = pick_device(part)
    sz = part.sizes
    peak, peak_name = mfu_peak(part, device)
    args = argparse.Namespace(
        batch=sz.batch, warmup=sz.warmup, windows=sz.windows, window_steps=sz.window_steps, seed=0,
        bf16=None, compile_backend=sz.compile_backend,
    )  # fmt: skip
    bench = Bench(args, device)
    spec = spec_for(sz.model, sz.tiny)
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = spec.build().to(device)
    flops = train_flops_per_image(net, spec, device)
    analytic = dit_analytic_forward_flops(net)
    images, labels = bench.data(spec)
    f = part.figures
    f.update(
        model=spec.label,
        parameters=sum(p.numel() for p in net.parameters()),
        batch=sz.batch,
        flops_per_image=flops,
        flops_per_image_analytic=None if analytic is None else 3 * analytic,
        peak_tflops=peak,
        peak_dtype=peak_name,
        timing=f"{sz.rounds} rounds x {sz.windows} windows x {sz.window_steps} steps, {sz.warmup} warm-up",
        compile_backend=sz.compile_backend,
        paths={},
    )
    stats = {p: PathStats() for p in ("reference", "vanilla", "dtd", "vanilla+compile")}

    def record() -> None:
        ref = stats["reference"].per_step
        for path, s in stats.items():
            if s.error is not None:
                f["paths"][path] = {"error": s.error}
            elif s.per_step:
                fig = _path_figures(s.per_step, sz.batch, flops * sz.batch, peak)
                fig["peak_memory_gib"] = None if s.peak_bytes is None else s.peak_bytes / 2**30
                fig["warmup_s"] = s.warmup_s[0]
                if ref:
                    fig["speedup"] = statistics.median(ref) / statistics.median(s.per_step)
                f["paths"][path] = fig
        # the project's loop: its faster form, eager or compiled (dtd is there for the curriculum's cost)
        project = {p: v for p, v in f["paths"].items() if p.startswith("vanilla") and "speedup" in v}
        if project:
            best = min(project, key=lambda p: project[p]["step_ms"])
            f["project_path"] = best
            f["speedup"] = project[best]["speedup"]
            f["mfu_percent"] = project[best]["mfu_percent"]
        v, d = f["paths"].get("vanilla", {}), f["paths"].get("dtd", {})
        if "step_ms" in v and "step_ms" in d:
            f["dtd_overhead_percent"] = 100 * (d["step_ms"] / v["step_ms"] - 1)
        part.save()

    order = ["reference", "vanilla", "dtd"]
    shuffle = random.Random(0)
    for round_ in range(sz.rounds):
        shuffle.shuffle(order)
        for path in order:
            bench.run_path(path, net, images, labels, round_, stats[path])
        record()
    if part.left() >= COMPILE_MIN_S["train"]:
        try:
            for round_ in range(sz.rounds):
                bench.run_path("vanilla+compile", net, images, labels, round_, stats["vanilla+compile"])
                record()
        except Exception as exc:  # a compiler failure leaves the eager figures standing
            f["compile_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        eager = [stats[p].warmup_s[0] for p in ("vanilla", "dtd") if stats[p].warmup_s]
        if eager and stats["vanilla+compile"].warmup_s:
            # the first compiled run's warm-up minus the eager runs': what compiling took
            f["compile_s"] = max(stats["vanilla+compile"].warmup_s[0] - statistics.median(eager), 0.0)
    else:
        f["compile_skipped"] = f"{part.left():.0f} s of the cap left, {COMPILE_MIN_S['train']} s needed"
    del net, images, labels
    free_memory(device)
    part.status = "ok"
    record()


def part_sample(part: Part) -> None:
    import contextlib as ctx

    import torch
    from _common import forward_flops_per_image, free_memory, spec_for
    from sample_throughput import SAMPLERS, bench_sampler, randomize_zero_layers

    device = pick_device(part)
    sz = part.sizes
    peak, peak_name = mfu_peak(part, device)
    spec = spec_for(sz.model, sz.tiny)
    sampler = SAMPLERS["ddpm"]
    args = argparse.Namespace(
        batch=sz.batch, full=False, timed_steps=sz.sample_steps, rounds=sz.rounds, seed=0, cfg_scale=1.5,
        paths=["reference", "project"],
    )  # fmt: skip
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = spec.build()
    randomize_zero_layers(net, 0)
    net = net.to(device).eval()
    flops = forward_flops_per_image(net, spec, device)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cuda else ctx.nullcontext()
    models = {"reference": net, "project": net}
    f = part.figures
    f.update(
        model=spec.label,
        sampler=sampler.label,
        cfg_scale=1.5,
        batch=sz.batch,
        project_precision="bf16 autocast" if cuda else "fp32",
        flops_per_image_forward=flops,
        peak_tflops=peak,
        peak_dtype=peak_name,
        timing=f"{sz.sample_steps} sampler steps per run, {sz.rounds} timed rounds after a warm-up round; "
        f"images/s = batch / ({sampler.steps} x median step time)",
        paths={},
    )
    stats = {}

    def record() -> None:
        ref = stats.get("reference")
        for path, s in stats.items():
            if s.error is not None:
                f["paths"][path] = {"error": s.error}
                continue
            if not s.per_step:
                continue
            # one step: a guided evaluation = 2 forward passes per image
            fig = _path_figures(s.per_step, sz.batch, 2 * flops * sz.batch, peak)
            fig["images_per_s"] /= sampler.steps
            fig["peak_memory_gib"] = None if s.peak_bytes is None else s.peak_bytes / 2**30
            fig["rel_diff_vs_reference"] = s.rel_diff
            if s.first_run_s is not None:
                step = statistics.median(s.per_step)
                fig["compile_s"] = max(s.first_run_s - s.first_run_steps * step, 0.0)
            if ref is not None and ref.per_step:
                fig["speedup"] = statistics.median(ref.per_step) / statistics.median(s.per_step)
            f["paths"][path] = fig
        project = {p: v for p, v in f["paths"].items() if p != "reference" and "speedup" in v}
        if project:
            best = min(project, key=lambda p: project[p]["step_ms"])
            f.update(
                project_path=best, speedup=project[best]["speedup"], mfu_percent=project[best]["mfu_percent"]
            )
        part.save()

    stats.update(bench_sampler(args, spec, "ddpm", models, autocast, device))
    record()
    if part.left() >= COMPILE_MIN_S["sample"]:
        models["project+compile"] = torch.compile(net, backend=sz.compile_backend)
        args.paths = ["project+compile"]
        try:
            stats.update(bench_sampler(args, spec, "ddpm", models, autocast, device))
        except Exception as exc:  # a compiler failure leaves the eager figures standing
            f["compile_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    else:
        f["compile_skipped"] = f"{part.left():.0f} s of the cap left, {COMPILE_MIN_S['sample']} s needed"
    del net, models
    free_memory(device)
    part.status = "ok"
    record()


def part_kl(part: Part) -> None:
    import torch
    from kl_throughput import measure

    device = pick_device(part)
    m, n_data, dim, steps = part.sizes.kl
    result = measure(
        device, m, n_data, dim, steps, torch.float32, chunk_size=1024, repeats=part.sizes.kl_repeats,
        peak_size=part.sizes.peak_size,
    )  # fmt: skip
    part.figures.update(result)
    part.status = "ok"


def part_memory(part: Part) -> None:
    import torch
    from _common import free_memory, spec_for
    from train_throughput import Bench, PathStats

    device = pick_device(part)
    sz = part.sizes
    cuda = device.type == "cuda"
    args = argparse.Namespace(
        batch=sz.batch, warmup=1, windows=1, window_steps=1, seed=0, bf16=None, compile_backend=None
    )
    bench = Bench(args, device)
    f = part.figures
    f.update(
        batch=sz.batch,
        path="vanilla train_loop, eager, two steps",
        source="torch.cuda.max_memory_allocated"
        if cuda
        else "memory_estimate.estimate (fake tensors: a CPU keeps no allocator statistics)",
        models={},
        first_oom=None,  # None when every size trained (the largest registered DiT fits)
    )
    if cuda:
        f["device_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    for name in sz.memory_models:
        spec = spec_for(name, sz.tiny)
        torch._dynamo.reset()
        with device:  # initialised on the device: DiT-XL/2's 675 M weights take seconds on a CPU
            net = spec.build()
        net = net.to(device)  # the buffers made from NumPy arrays
        n_params = sum(p.numel() for p in net.parameters())
        images, labels = bench.data(spec)
        stats = PathStats()
        bench.run_path("vanilla", net, images, labels, 0, stats)
        del net, images, labels
        free_memory(device)
        row = {"data": "x".join(map(str, spec.shape)), "parameters": n_params}
        if stats.error is not None:
            row.update(fits=False, error=stats.error)
        else:
            row["fits"] = True
            row["step_ms"] = 1e3 * statistics.median(stats.per_step)
            if cuda:
                row["peak_gib"] = stats.peak_bytes / 2**30
            else:
                from memory_estimate import estimate

                # AveragedModel reads each fake parameter's data pointer (harmless), as in memory_estimate
                warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
                _, total, _ = estimate(name, sz.batch, sz.tiny)
                row["peak_gib"] = total / 2**30
            f["largest_fitting"] = name
        f["models"][name] = row
        part.save()
        if stats.error is not None:
            f["first_oom"] = name
            break  # the larger sizes cannot fit either
        if part.left() < 10:
            f["stopped"] = f"cap reached after {name}"
            break
    part.status = "ok"


def part_ddp(part: Part) -> None:
    import torch
    import torch.multiprocessing as mp

    device = pick_device(part)
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        part.status = "skipped"
        part.reason = (
            f"{torch.cuda.device_count()} CUDA device visible: the NCCL data-parallel step needs two"
        )
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    world = 2
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        result = Path(tmp) / "result.json"
        mp.spawn(_ddp_rank, args=(world, backend, tmp, part.dry), nprocs=world, join=True)
        part.figures.update(json.loads(result.read_text()))
    part.status = "ok"


def _ddp_rank(rank: int, world: int, backend: str, tmp: str, dry: bool) -> None:
    """One data-parallel rank: train_loop's steps under DDP; rank 0 times the windows and writes."""
    import torch
    import torch.distributed as dist
    from _common import spec_for, sync
    from train_throughput import EMA_DECAY, GRAD_CLIP, LR, Bench

    from diffusion_curriculum.timesteps import make_strategy
    from diffusion_curriculum.training import train_loop

    sz = DRY if dry else FULL
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    dist.init_process_group(backend, init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        args = argparse.Namespace(
            batch=sz.ddp_batch, warmup=2, windows=2, window_steps=1 if dry else 3, seed=0, bf16=None,
            compile_backend=None,
        )  # fmt: skip
        bench = Bench(args, device)
        spec = spec_for(sz.model, sz.tiny)
        torch.manual_seed(0)
        net = spec.build()
        images, labels = bench.data(spec)
        marks: list[float] = []

        def mark(step: int, _net, _ema) -> None:
            sync(device)
            marks.append(time.perf_counter())

        result = train_loop(
            net=net, schedule=bench.schedule, prediction="eps",
            strategy=make_strategy("vanilla", bench.schedule, bench.intervals), intervals=bench.intervals,
            images=images, labels=labels, run_dir=Path(tmp) / "run", iterations=bench.edges[-1],
            batch_size=sz.ddp_batch, lr=LR, ema_decay=EMA_DECAY, grad_clip=GRAD_CLIP,
            log_every=bench.edges[-1], checkpoint_every=bench.edges[-1], seed=0, device=device,
            snapshot_steps=bench.edges, on_snapshot=mark, progress=False,
        )  # fmt: skip
        checksum = torch.stack([p.detach().double().sum() for p in result.net.parameters()]).sum()
        sums = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(sums, checksum)
        if rank == 0:
            k = args.window_steps
            per_step = [(b - a) / k for a, b in zip(marks[:-1], marks[1:], strict=True)]
            step = statistics.median(per_step)
            write_json(
                Path(tmp) / "result.json",
                {
                    "backend": backend,
                    "world_size": world,
                    "model": spec.label,
                    "global_batch": sz.ddp_batch,
                    "step_ms": 1e3 * step,
                    "images_per_s": sz.ddp_batch / step,
                    "per_step_s": per_step,
                    "ranks_in_lockstep": len({float(s) for s in sums}) == 1,
                },
            )
    finally:
        dist.destroy_process_group()


def slice_params(dry: bool) -> dict:
    """The pipeline slice's params file: configs/gpu_study.yaml cut to two minutes (smoke.yaml if dry)."""

    from diffusion_curriculum.stages.params import compose

    base = "smoke.yaml" if dry else "gpu_study.yaml"
    cfg = compose(REPO / "configs" / base)  # a preset holds only what differs from params.yaml
    cfg["study"].update(methods=["vanilla", "dtd"], seeds=[0])
    if dry:
        clusters, iterations = 2, cfg["train"]["iterations"]
        cfg["train"]["snapshots"] = [iterations]
    else:
        clusters, iterations = 4, 300
        cfg["experts"].update(iterations=150, log_every=10)
        cfg["convergence"]["start"] = 20
        cfg["kl"].update(num_data=1000, num_samples=1000)
        cfg["kl"]["score"].update(num_samples=128)
        cfg["train"].update(
            iterations=iterations, log_every=20, checkpoint_every=iterations, snapshots=[150, iterations],
            compile=False,
        )  # fmt: skip
        cfg["sample"].update(num_samples=1000, batch_size=500)
        cfg["features"]["domain"]["epochs"] = 1
        cfg["evaluate"].update(kid_subsets=10, kid_subset_size=500, is_splits=2)
    cfg["curriculum"]["num_clusters"] = clusters
    cfg["experts"]["intervals"] = list(range(1, clusters + 1))
    cfg["experts"]["stitch_intervals"] = [1]
    return cfg


# Not copied into the pipeline's work folder outside git: environments, caches, outputs of earlier runs.
_NOT_COPIED = ("results", "data", "logs", "checkpoints", "build", "datasets", "weights", ".snakemake", ".dvc")


def copy_repository(work: Path, out: Path) -> None:
    """The repository's files, wherever its stage package lives, into ``work``: what git tracks or would
    track (not what .gitignore names: environments, outputs), or, outside a git checkout, the folder
    without environments, caches and outputs; never ``out``."""
    out = out.resolve()
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True, timeout=30,
        ).stdout.decode()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        listing = None
    if listing is not None:
        for rel in filter(None, listing.split("\0")):
            src = REPO / rel
            if src.is_file() and not src.resolve().is_relative_to(out):
                (work / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, work / rel)
        return

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder).resolve()
        skip = {
            n for n in names
            if n in ("__pycache__", ".git", ".pytest_cache", ".ruff_cache") or n.startswith(".venv")
            or n.endswith(".egg-info") or here / n == out
        }  # fmt: skip
        return skip | (set(_NOT_COPIED) & set(names) if here == REPO else set())

    shutil.copytree(REPO, work, ignore=ignore, symlinks=True)


def part_pipeline(part: Part) -> None:
    import yaml

    device = pick_device(part)
    cfg = slice_params(part.dry)
    methods, seed, last = cfg["study"]["methods"], cfg["study"]["seeds"][0], max(cfg["train"]["snapshots"])
    dest = part.out / "pipeline"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    final = [f"results/metrics/{m}/seed{seed}/step{last}.json" for m in methods]
    targets = final if part.dry else []  # the GPU slice goes up to the report (Snakemake's default target)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "snakemake", "--cores", str(os.cpu_count() or 1)]
    if device.type == "cuda":
        import torch

        # The slice's jobs are small: JOBS_PER_GPU of them share each GPU (stages/gpu.py hands out slots).
        env["DIFFUSION_CURRICULUM_JOBS_PER_GPU"] = str(JOBS_PER_GPU)
        command += ["--resources", f"gpu={JOBS_PER_GPU * torch.cuda.device_count()}"]
    command += ["--rerun-incomplete", *targets]
    f = part.figures
    f.update(
        base="configs/" + ("smoke.yaml" if part.dry else "gpu_study.yaml"),
        params_file="pipeline/params.yaml",
        command=" ".join(["python", *command[1:]]),
        targets=targets or ["all (the report)"],
        methods={},
    )
    part.save()
    with tempfile.TemporaryDirectory(prefix="gpu_check_pipeline_") as tmp:
        work = Path(tmp) / "repo"
        copy_repository(work, part.out.resolve())
        shutil.copy2(dest / "params.yaml", work / "params.yaml")
        start = time.monotonic()
        timeout = max(part.left() - 10, 1)  # leave time to copy the results out
        with open(dest / "snakemake.log", "w") as log:
            # Its own process group, so that stopping it stops its jobs; a SIGTERM to this part (the
            # script's cap) reaches them through the handler.
            proc = subprocess.Popen(
                command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            signal.signal(signal.SIGTERM, lambda *_: (_stop_group(proc), sys.exit(124)))
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                rc = None
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        f["wall_s"] = time.monotonic() - start
        f["exit_code"] = rc
        text = (dest / "snakemake.log").read_text(errors="replace")
        jobs = re.search(r"^total\s+(\d+)", text, re.MULTILINE)
        f["jobs"] = int(jobs.group(1)) if jobs else None
        for m in methods:
            row: dict = {}
            metrics = work / f"results/metrics/{m}/seed{seed}/step{last}.json"
            if metrics.exists():
                got = json.loads(metrics.read_text())
                row.update({k: got[k] for k in ("fid", "kid", "precision", "recall", "step") if k in got})
            summary = work / f"results/train/{m}/seed{seed}/summary.json"
            if summary.exists():
                got = json.loads(summary.read_text())
                row.update(train_device=got.get("device"), final_loss=got.get("final_loss"))
            f["methods"][m] = row
        report = work / "results/report/metrics.json"
        f["report"] = report.exists()
        for name in ("logs", "results/metrics", "results/report/metrics.json", "results/report/summary.md"):
            src = work / name
            if src.is_dir():
                shutil.copytree(src, dest / name, dirs_exist_ok=True)
            elif src.exists():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    if rc is None:
        part.status = "timeout"
        part.reason = f"Snakemake stopped after {timeout:.0f} s (the part's cap)"
    elif rc != 0:
        part.status = "failed"
        part.reason = f"snakemake exited {rc}; see pipeline/snakemake.log and pipeline/logs/"
    elif not all("fid" in f["methods"][m] for m in methods):
        part.status = "failed"
        part.reason = "snakemake succeeded but a final metrics file is missing"
    else:
        part.status = "ok"


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to Snakemake and its jobs (their own process group), SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


RUNNERS = {
    "env": part_env,
    "train": part_train,
    "sample": part_sample,
    "kl": part_kl,
    "memory": part_memory,
    "ddp": part_ddp,
    "pipeline": part_pipeline,
}


# ----------------------------------------------------------------------------------------------------
# merging


def _status(out: Path, name: str) -> dict:
    """A part's record: what it wrote, with the exit status, wall time and cap the script recorded."""
    parts = out / "parts"
    path = parts / f"{name}.json"
    record = json.loads(path.read_text()) if path.exists() else {"part": name, "figures": {}}
    rc_file = parts / f"{name}.rc"
    if not rc_file.exists():
        record.update(status="not run", reason="not selected by --parts")
        return record
    fields = rc_file.read_text().split(maxsplit=3)
    rc, wall, cap = int(fields[0]), float(fields[1]), float(fields[2])
    note = fields[3].strip() if len(fields) > 3 else ""
    record.update(exit_code=rc, wall_s=wall, cap_s=cap)
    if note:
        record.update(status="not run", reason=note)
    elif rc in (124, 137):
        record["status"] = "timeout"
        record["reason"] = f"stopped by its cap of {cap:g} s" + (
            "; the figures are those written before" if record["figures"] else ""
        )
    elif rc != 0:
        record["status"] = "failed"
        log = parts / f"{name}.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        record["reason"] = record.get("reason") or f"exit status {rc}: " + " / ".join(tail)
    elif record.get("status") == "partial":
        record["status"] = "failed"
        record["reason"] = "exited 0 without finishing"
    return record


def targets_table(parts: dict, dry: bool) -> list[dict]:
    figures = {
        "train_speedup": parts["train"]["figures"].get("speedup"),
        "train_mfu": parts["train"]["figures"].get("mfu_percent"),
        "sample_speedup": parts["sample"]["figures"].get("speedup"),
        "kl_percent_of_peak": parts["kl"]["figures"].get("percent_of_peak"),
    }
    rows = []
    for key, what, threshold, unit in TARGETS:
        value = figures[key]
        passed = None if dry or value is None else value >= threshold
        rows.append(
            {"key": key, "what": what, "target": threshold, "unit": unit, "measured": value, "pass": passed}
        )
    return rows


def merge(out: Path, dry: bool, wall: float | None) -> dict:
    caps = DRY_CAPS if dry else CAPS
    parts = {name: _status(out, name) for name in PARTS}
    env = parts["env"]["figures"]
    record = {
        "mode": "dry" if dry else "gpu",
        "command": "bash benchmarks/gpu_check.sh" + (" --dry" if dry else "") + " OUT",
        "device": env.get("device"),
        "device_name": env.get("device_name"),
        "device_count": env.get("device_count"),
        "torch": env.get("torch"),
        "cuda": env.get("cuda"),
        "cudnn": env.get("cudnn"),
        "nccl": env.get("nccl"),
        "driver": env.get("driver"),
        "commit": env.get("commit"),
        "date": env.get("date"),
        "matmul_peak_tflops": env.get("matmul_peak_tflops"),
        "wall_s": wall,
        "total_cap_s": TOTAL_S if not dry else sum(caps.values()) + MERGE_RESERVE_S,
        "caps_s": caps,
        "targets": targets_table(parts, dry),
        "parts": {name: {k: v for k, v in rec.items() if k != "part"} for name, rec in parts.items()},
    }
    write_json(out / "gpu_check.json", record)
    (out / "gpu_check.md").write_text(markdown(record) + "\n")
    return record


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _paths_line(f: dict, ips_digits: int) -> str:
    return "; ".join(
        f"{path} {_num(v['images_per_s'], ips_digits)} img/s, {_num(v['step_ms'])} ms/step, "
        f"{_num(v.get('speedup'))}x, MFU {_num(v['mfu_percent'], 1)} %"
        + (f", compile {_num(v['compile_s'], 0)} s" if "compile_s" in v else "")
        for path, v in f.get("paths", {}).items()
        if "step_ms" in v
    )


def _summary(name: str, f: dict) -> str:
    """One table cell: a part's main figures."""
    if not f:
        return ""
    if name == "env":
        peaks = ", ".join(f"{k} {v:.1f}" for k, v in f.get("matmul_peak_tflops", {}).items())
        return f"{f.get('device_name')}; matmul peak TFLOP/s: {peaks}"
    if name == "train":
        compile_s = f"; compile {_num(f['compile_s'], 0)} s" if "compile_s" in f else ""
        return f"{f.get('model')}, batch {f.get('batch')}: {_paths_line(f, 1)}{compile_s}"
    if name == "sample":
        return f"{f.get('model')} {f.get('sampler')}, batch {f.get('batch')}: {_paths_line(f, 3)}"
    if name == "kl":
        return (
            f"M = {f.get('M')}, L = {f.get('L')}, D = {f.get('D')}, {f.get('pairs')} pairs, "
            f"{f.get('dtype')}: "
            f"{_num(f.get('median_s'), 3)} s, {_num(f.get('achieved_tflops'), 3)} TFLOP/s, "
            f"{_num(f.get('percent_of_peak'), 1)} % of peak"
        )
    if name == "memory":
        sizes = "; ".join(
            f"{m} {_num(v['peak_gib'])} GiB" if v.get("fits") else f"{m} does not fit"
            for m, v in f.get("models", {}).items()
        )
        return f"batch {f.get('batch')}: {sizes}; largest that fits: {f.get('largest_fitting')}"
    if name == "ddp":
        return (
            f"{f.get('backend')} x {f.get('world_size')}, {f.get('model')}, batch {f.get('global_batch')}: "
            f"{_num(f.get('images_per_s'), 1)} img/s, ranks in lockstep: {f.get('ranks_in_lockstep')}"
        )
    runs = "; ".join(
        f"{m} FID {_num(v.get('fid'), 3)} at step {v.get('step')} (trained on {v.get('train_device')})"
        for m, v in f.get("methods", {}).items()
    )
    return f"{runs}; {f.get('jobs')} jobs in {_num(f.get('wall_s'), 0)} s"


def markdown(r: dict) -> str:
    """The GPU tables of BENCHMARKS.md, filled from the merged record."""
    lines = [
        f"`{r['command']}`: {r['device_name']} ({r['device']}), torch {r['torch']}, CUDA {r['cuda']}, "
        f"commit `{r['commit']}`, {r['date']}, wall time {_num(r['wall_s'], 0)} s"
        + ("; dry run: tiny sizes on the CPU, the targets are not judged" if r["mode"] == "dry" else ""),
        "",
        "| target | threshold | measured | pass |",
        "|---|---:|---:|---|",
    ]
    for t in r["targets"]:
        passed = {True: "yes", False: "no", None: "n/a"}[t["pass"]]
        unit = " %" if t["unit"] == "%" else "x"
        measured = "n/a" if t["measured"] is None else _num(t["measured"], 1 if unit == " %" else 2) + unit
        lines.append(f"| {t['what']} | ≥ {t['target']:g}{unit} | {measured} | {passed} |")
    lines += ["", "| part | status | wall s (cap) | figures |", "|---|---|---:|---|"]
    for name, rec in r["parts"].items():
        status = rec["status"] + (f" ({rec['reason']})" if rec.get("reason") else "")
        wall = f"{_num(rec.get('wall_s'), 0)} ({_num(rec.get('cap_s'), 0)})"
        lines.append(f"| {name} | {status} | {wall} | {_summary(name, rec['figures'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=[*PARTS, "caps", "merge"])
    ap.add_argument("--out", type=Path, help="the output folder (parts/ and the merged files)")
    ap.add_argument("--dry", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--budget", type=float, default=None, help="seconds this part may take (its cap)")
    ap.add_argument("--wall", type=float, default=None, help="merge: the run's wall time so far")
    args = ap.parse_args()
    if args.action == "caps":
        caps = DRY_CAPS if args.dry else CAPS
        print("\n".join(f"{name} {caps[name]}" for name in PARTS))
        print(f"total {sum(caps.values()) + MERGE_RESERVE_S if args.dry else TOTAL_S}")
        print(f"reserve {MERGE_RESERVE_S}")
        return
    if args.out is None:
        ap.error("--out is required")
    if args.action == "merge":
        record = merge(args.out, args.dry, args.wall)
        print(markdown(record))
        bad = [n for n, rec in record["parts"].items() if rec["status"] not in ("ok", "skipped")]
        if bad:
            print(f"\nnot complete: {', '.join(bad)}", file=sys.stderr)
            sys.exit(1)
        return
    part = Part(args.action, args.out, args.dry, args.budget)
    part.save()
    RUNNERS[args.action](part)
    part.save()
    print(json.dumps({"part": part.name, "status": part.status, "reason": part.reason}))


if __name__ == "__main__":
    main()
