"""Estimated peak memory of one training step per model at a given batch, without a GPU.

    python benchmarks/memory_estimate.py [--models DiT-S/2 DiT-B/2 DiT-L/2 DiT-XL/2 UNet-small]
        [--batch 256] [--budget-gib 79]

An estimate, not a measurement: the measured figure is ``torch.cuda.max_memory_allocated`` from
``train_throughput.py --device cuda --largest-dit``.  This script runs ``train_loop``'s step -- bf16
autocast, ``denoising_loss`` (eps-prediction, VP linear schedule), backward, gradient clipping, fused
AdamW, the EMA update -- twice on fake tensors (``FakeTensorMode``: shapes and dtypes, no data, no
arithmetic) under PyTorch's ``MemTracker``, which adds up the bytes of every tensor alive at each moment
and keeps the peak, split into parameters (the network and its EMA copy), optimiser state, activations
and temporaries.  The second step includes the optimiser state that the first one creates.

The fake tensors live on the CPU (fake CUDA tensors need a CUDA device for backward), with CPU autocast
in bf16 and SDPA's own kernel choice (the flash kernel for the DiTs: no n x n matrix is kept), so
activations have the dtypes and the attention memory of the CUDA path.  A GPU adds what tensors do
not account for: the caching allocator's fragmentation and the cuBLAS / cuDNN workspaces.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import spec_for  # noqa: E402

from diffusion_curriculum.losses import Denoiser, denoising_loss  # noqa: E402
from diffusion_curriculum.schedules import make_schedule  # noqa: E402

DEFAULT_MODELS = ("DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2", "UNet-small")
CATEGORIES = {
    "parameters + EMA": (_MemRefType.PARAM, _MemRefType.BUFFER),
    "gradients": (_MemRefType.GRAD,),
    "optimiser state": (_MemRefType.OPT,),
    "activations": (_MemRefType.ACT,),
    "temporaries": (_MemRefType.TEMP, _MemRefType.OTH),
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models", nargs="+", default=["DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2", "UNet-small"]
    )
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tiny", action="store_true", help="1x16x16 data, as the benchmarks' --tiny")
    ap.add_argument(
        "--budget-gib", type=float, default=79.0, help="device memory (an 80 GB H100 / A100 reports ~79 GiB)"
    )
    return ap.parse_args()


def estimate(name: str, batch: int, tiny: bool = False) -> tuple[dict[str, int], int, int]:
    """Peak bytes per category and in total over two training steps, and the parameter count."""
    spec = spec_for(name, tiny)
    schedule = make_schedule("vp")
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = spec.build()
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9999), use_buffers=True)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
        denoiser = Denoiser(net, schedule, "eps")
        x0 = torch.randn(batch, *spec.shape)
        noise = torch.randn(batch, *spec.shape)
        t = torch.randint(schedule.num_timesteps, (batch,))
        y = torch.randint(spec.num_classes, (batch,))
        tracker = MemTracker()
        tracker.track_external(net, ema, optimizer, x0, noise, t, y)
        with tracker:
            for _ in range(2):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = denoising_loss(denoiser, x0, t, noise, y).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimizer.step()
                ema.update_parameters(net)
                tracker.reset_mod_stats()  # module-level stats only; the peak is kept
        (peak,) = tracker.get_tracker_snapshot("peak").values()
        n_params = sum(p.numel() for p in net.parameters())
    parts = {label: sum(peak.get(kind, 0) for kind in kinds) for label, kinds in CATEGORIES.items()}
    return parts, peak["Total"], n_params


def main() -> None:
    args = parse_args()
    # AveragedModel deep-copies the network, which reads each fake parameter's data pointer (harmless).
    warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
    torch.set_num_threads(1)
    budget = args.budget_gib * 2**30
    print(
        f"estimated peak memory of a training step (bf16 autocast, fused AdamW, EMA), batch {args.batch}, "
        f"torch {torch.__version__}; budget {args.budget_gib:g} GiB\n"
    )
    print(
        "| model | data | parameters (M) | "
        + " | ".join(f"{c} GiB" for c in CATEGORIES)
        + " | total GiB | fits |"
    )
    print("|---|---|---:|" + "---:|" * len(CATEGORIES) + "---:|---|")
    fitting = []
    for name in args.models:
        parts, total, n_params = estimate(name, args.batch, args.tiny)
        cells = " | ".join(f"{v / 2**30:.2f}" for v in parts.values())
        shape = "x".join(map(str, spec_for(name, args.tiny).shape))
        fits = total <= budget
        verdict = "yes" if fits else "no"
        print(f"| {name} | {shape} | {n_params / 1e6:.1f} | {cells} | {total / 2**30:.2f} | {verdict} |")
        if fits and name.startswith("DiT"):
            fitting.append((n_params, name))
    if fitting:
        print(f"\nlargest DiT within {args.budget_gib:g} GiB at batch {args.batch}: {max(fitting)[1]}")


if __name__ == "__main__":
    main()
