"""Helpers shared by ``train_throughput.py`` and ``sample_throughput.py`` (not a benchmark itself).

* the model configurations of the GPU targets (and the ``--tiny`` CPU one),
* device synchronisation, a description of the device for the output header,
* the device's dense matmul peak, measured with a large square ``torch.matmul``,
* model FLOPs: measured with ``torch.utils.flop_counter.FlopCounterMode`` and, for the DiT, an analytic
  count to cross-check it.
"""

from __future__ import annotations

import datetime as _dt
import gc
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffusion_curriculum.models import create_model


@dataclass(frozen=True)
class ModelSpec:
    """A network and the data it is benchmarked on."""

    name: str  # registered model name
    input_size: int
    channels: int
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.input_size, self.input_size)

    @property
    def label(self) -> str:
        return f"{self.name} {self.channels}x{self.input_size}x{self.input_size}"

    def build(self) -> nn.Module:
        return create_model(
            self.name, input_size=self.input_size, in_channels=self.channels, num_classes=self.num_classes
        )


def spec_for(name: str, tiny: bool) -> ModelSpec:
    """The data each model is benchmarked on: DiTs on ImageNet-256 latents (4x32x32, 1000 classes),
    UNets on CIFAR-sized pixels (3x32x32, 10 classes); ``tiny``: 1x16x16, 10 classes."""
    if tiny:
        return ModelSpec(name, 16, 1, 10)
    if name.startswith("DiT"):
        return ModelSpec(name, 32, 4, 1000)
    return ModelSpec(name, 32, 3, 10)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def header(device: torch.device) -> str:
    """One line: device, hardware, threads, torch version, date (UTC)."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    extra = ""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        extra = f", {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
    return (
        f"device: {device} ({hardware(device)}{extra}), threads: {torch.get_num_threads()}, "
        f"torch {torch.__version__}, {now}"
    )


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_dtype(device: torch.device) -> torch.dtype:
    """The dtype MFU is quoted against: bf16 on CUDA (the training path's autocast), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def matmul_peak(
    device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10, inner: int = 10
) -> float:
    """Best achieved TFLOP/s of an n x n x n ``torch.matmul`` in ``dtype`` on random data.

    On CUDA each timing covers ``inner`` back-to-back products between two CUDA events (the kernel of an
    8192^3 bf16 product lasts about a millisecond: a host clock around one would add its launch and sync
    latency); on CPU one product is timed with the host clock.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):  # cuBLAS handle, heuristics, clocks up
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                torch.matmul(a, b)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3 / inner)
        else:
            sync(device)
            start_s = time.perf_counter()
            torch.matmul(a, b)
            sync(device)
            best = min(best, time.perf_counter() - start_s)
    del a, b
    free_memory(device)
    return 2.0 * n**3 / best / 1e12


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products (mm/bmm/conv/attention) that ``fn`` runs, per ``FlopCounterMode``.

    SDPA runs on its math backend here, so the attention products appear as plain ``bmm`` on every device
    (the CPU flash kernel has no flop formula); element-wise work is not counted, as usual for MFU.
    """
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


def _probe_inputs(net: nn.Module, spec: ModelSpec, batch: int, device: torch.device):
    x = torch.randn(batch, *spec.shape, device=device)
    t = torch.rand(batch, device=device) * 1000
    y = torch.randint(spec.num_classes, (batch,), device=device) if spec.num_classes else None
    return x, t, y


def train_flops_per_image(net: nn.Module, spec: ModelSpec, device: torch.device, probe: int = 2) -> float:
    """Measured FLOPs of one forward + backward per training image (a ``probe``-image batch, divided).

    Every layer is linear in the batch size, so the count per image does not depend on the batch.  The
    input does not require a gradient, so the first layer's input gradient is (rightly) not counted.
    """
    x, t, y = _probe_inputs(net, spec, probe, device)

    def step() -> None:
        net(x, t, y).float().square().mean().backward()

    flops = counted_flops(step)
    net.zero_grad(set_to_none=True)
    return flops / probe


def forward_flops_per_image(net: nn.Module, spec: ModelSpec, device: torch.device, probe: int = 2) -> float:
    """Measured FLOPs of one forward pass per image (inference)."""
    x, t, y = _probe_inputs(net, spec, probe, device)
    with torch.no_grad():
        flops = counted_flops(lambda: net(x, t, y))
    return flops / probe


def dit_analytic_forward_flops(net: nn.Module) -> float | None:
    """Analytic forward FLOPs per image of a :class:`DiT` (2 FLOPs per multiply-add), or None otherwise.

    Per token and block: qkv + output projections 8 d^2, MLP (ratio r) 4 r d^2, attention scores and the
    weighted sum 4 n d; per image and block: the adaLN modulation 12 d^2.  Plus the patch embedding and the
    final projection (2 d p^2 C per token each), the final adaLN (4 d^2), and the timestep and label
    embeddings' MLP (2 (F d + d^2), F = frequency features).
    """
    if type(net).__name__ != "DiT":
        return None
    d = net.blocks[0].attn.proj.in_features
    hidden = net.blocks[0].mlp[0].out_features
    depth = len(net.blocks)
    n = net.grid[0] * net.grid[1]
    patch_in = net.patch_embed.weight[0].numel()
    patch_out = net.final.linear.out_features
    freq = net.t_embed.mlp[0].in_features
    per_block = n * (8 * d * d + 4 * d * hidden + 4 * n * d) + 12 * d * d
    return float(depth * per_block + 2 * n * d * (patch_in + patch_out) + 4 * d * d + 2 * (freq * d + d * d))


def fmt(x: float) -> str:
    """Three significant digits below 100, one decimal above (TFLOP/s of a GPU and of a CPU alike)."""
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.3g}"


def fmt_gib(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**30:.2f}"
