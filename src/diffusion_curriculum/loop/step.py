"""One optimisation step, and the network, EMA and optimiser it updates."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..losses import Denoiser
from ..schedules import NoiseSchedule
from ..timesteps import TimestepStrategy


@dataclass
class Trainable:
    """What a step trains: the raw network, the module its forward runs through (DDP and/or compiled),
    the EMA of the raw network's weights, and the optimiser."""

    net: nn.Module
    denoiser: Denoiser
    ema: AveragedModel
    optimizer: torch.optim.Optimizer

    @classmethod
    def build(
        cls,
        net: nn.Module,
        schedule: NoiseSchedule,
        prediction: str,
        *,
        device: torch.device,
        lr: float,
        adam_betas: tuple[float, float],
        weight_decay: float,
        ema_decay: float,
        distributed: bool = False,
        compile: bool | str = False,
    ) -> Trainable:
        net = net.to(device)
        trained = DistributedDataParallel(net) if distributed else net
        if compile:
            # Compiled after the DDP wrapper, as the DDP notes advise (Dynamo then splits the graph at
            # the gradient buckets).  Only the step's forward goes through it: `net` stays the raw
            # module, so the optimiser, the EMA and the checkpoint keys are those of an uncompiled run.
            # Random ops inside the network (label dropout) draw other values than in eager mode, still
            # from the global RNG that checkpoints restore.
            trained = torch.compile(trained, backend="inductor" if compile is True else compile)
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        # Fused on CPU too: one kernel over all parameters instead of a loop of small ops (3-4x faster).
        optimizer = torch.optim.AdamW(
            net.parameters(),
            lr=lr,
            betas=adam_betas,
            weight_decay=weight_decay,
            fused=device.type in ("cuda", "cpu"),
        )
        return cls(net, Denoiser(trained, schedule, prediction), ema, optimizer)

    def hyperparameters(self) -> dict[str, float]:
        """The optimiser's current learning rate and Adam beta1 (a strategy may change both)."""
        group = self.optimizer.param_groups[0]
        return {"lr": float(group["lr"]), "beta1": float(group["betas"][0])}


def gather_losses(per_sample: torch.Tensor, world: int) -> torch.Tensor:
    """The per-sample losses of the whole global batch, in rank order, on every rank."""
    if world == 1:
        return per_sample
    parts = [torch.empty_like(per_sample) for _ in range(world)]
    dist.all_gather(parts, per_sample)
    return torch.cat(parts)


class OptimStep:
    """One optimisation step on this rank's slice of the global batch.

    Draws the global batch's timesteps (from the strategy, on the timestep stream) and noise (on the
    noise stream), trains on this rank's slice (weighted per-sample loss, backward, gradient clipping,
    AdamW, EMA update) and returns the global timesteps with the whole batch's detached per-sample losses.
    ``loss_fn`` is :func:`diffusion_curriculum.losses.denoising_loss` or a function with its signature.
    """

    def __init__(
        self,
        parts: Trainable,
        strategy: TimestepStrategy,
        generators: dict[str, torch.Generator],
        loss_fn: Callable[..., torch.Tensor],
        *,
        batch_size: int,
        device: torch.device,
        local: slice = slice(None),
        world: int = 1,
        grad_clip: float | None = 1.0,
        bf16: bool = False,
    ):
        self.parts, self.strategy, self.generators, self.loss_fn = parts, strategy, generators, loss_fn
        self.batch_size, self.device, self.local, self.world = batch_size, device, local, world
        self.grad_clip = grad_clip
        self.bf16 = bf16

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def __call__(
        self, step: int, x0: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step`` + 1 (``step`` steps are done).  Returns (timesteps, per-sample losses), both of
        the global batch."""
        parts, strategy = self.parts, self.strategy
        strategy.before_step(step, parts.optimizer)
        t_all = strategy.sample(self.batch_size, self.generators["timesteps"], device=self.device)
        noise = torch.randn(
            (self.batch_size, *x0.shape[1:]),
            generator=self.generators["noise"],
            device=self.device,
            dtype=x0.dtype,
        )
        t, noise = t_all[self.local], noise[self.local]
        with self._autocast():
            per_sample = self.loss_fn(parts.denoiser, x0, t, noise, y, weight=strategy.weights(t))
        loss = per_sample.mean()
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(parts.net.parameters(), self.grad_clip)
        parts.optimizer.step()
        parts.ema.update_parameters(parts.net)
        return t_all, gather_losses(per_sample.detach(), self.world)
