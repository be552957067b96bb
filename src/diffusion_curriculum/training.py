"""One training loop for every framework, parameterisation and timestep strategy.

Checkpoints hold everything that decides the future of a run (network, EMA, optimiser, every RNG,
the strategy's state, the step, the logs so far), so a run stopped at step k and resumed ends
bitwise equal to an uninterrupted one on CPU.

Data parallel (``torch.distributed`` initialised by the caller, e.g. under ``torchrun``): every rank
draws the *global* batch's images, timesteps and noise from the same seeded streams and trains on its
own slice of it, and the strategy observes the gathered per-sample losses of the whole batch.  So the
ranks together see exactly the batch a single process would, every rank's strategy makes the same
decisions, and the run matches a single-process run of the same global batch up to floating-point
summation order (condition dropout, drawn inside the network per rank, is the one exception).  Rank 0
writes checkpoints and calls ``on_log``; all ranks keep identical EMA weights.

Conditions: class labels, one per image; or caption embeddings (text conditioning), any number per image.
With captions the data stream draws *caption* rows -- so an image is seen in proportion to its number of
captions, every caption of it equally often, as when training on MS-COCO's (image, caption) pairs -- and
each step trains on the drawn captions' images.

The loop is assembled from parts in :mod:`diffusion_curriculum.loop` (batches, the optimisation step,
the loss log, checkpointing, stopping, progress), each testable on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .errors import TrainingDiverged
from .loop.batches import BatchSource, check_captions, make_generators, rank_slice
from .loop.checkpoint import CHECKPOINT_NAME, Checkpointer
from .loop.losslog import SPIKE_WINDOW, LossLog, spike_reference
from .loop.progress import Progress, Rate
from .loop.step import OptimStep, Trainable
from .loop.stopping import StopRule
from .losses import denoising_loss
from .schedules import NoiseSchedule
from .timesteps import Intervals, TimestepStrategy

__all__ = ["TrainResult", "TrainingDiverged", "train_loop", "CHECKPOINT_NAME", "SPIKE_WINDOW"]

_spike_reference = spike_reference  # the running median a log row's loss is checked against


@dataclass
class TrainResult:
    net: nn.Module
    ema: nn.Module
    step: int  # steps completed
    completed: bool  # False when stopped early by ``stop_after`` or ``should_stop``
    resumed_from: int  # 0 for a fresh start
    history: dict = field(default_factory=dict)  # 'steps', 'bins', 'transitions': lists of row dicts


def _check_lengths(
    iterations: int, batch_size: int, log_every: int, checkpoint_every: int, spike: float | None
) -> None:
    if iterations < 1 or batch_size < 1:
        raise ValueError(f"iterations and batch_size must be >= 1, got {iterations} and {batch_size}")
    if log_every < 1 or checkpoint_every < 1:
        raise ValueError(f"log_every and checkpoint_every must be >= 1, got {log_every}, {checkpoint_every}")
    if spike is not None and not spike > 1:
        raise ValueError(f"loss_spike_factor must be > 1 or None, got {spike}")


def train_loop(
    *,
    net: nn.Module,  # raw network: net(x, model_time, y) -> output in `prediction`'s parameterisation
    schedule: NoiseSchedule,  # forward process
    prediction: str,  # 'eps' | 'v' | 'x0' | 'flow' | 'edm'
    strategy: TimestepStrategy,  # draws timesteps, weights and observes the loss
    intervals: Intervals,  # loss bins for the log (the curriculum's clusters)
    images: torch.Tensor,  # training set (N, C, H, W), float, already scaled; may live on the device
    # (N,) long class ids; with `condition_image`, (K, T, D) float caption embeddings; None: unconditional
    labels: torch.Tensor | None,
    run_dir: str | Path,  # checkpoint.pt lives here; an existing one with the same fingerprint is resumed
    iterations: int,  # total optimisation steps
    batch_size: int,  # global batch size
    lr: float = 1e-4,  # AdamW learning rate (constant, as in the paper)
    weight_decay: float = 0.0,  # AdamW weight decay (the paper uses none)
    adam_betas: tuple[float, float] = (0.9, 0.999),
    ema_decay: float = 0.9999,  # EMA of the weights (torch.optim.swa_utils)
    grad_clip: float | None = 1.0,  # max global gradient norm; None disables clipping
    hflip: bool = False,  # random horizontal flips (the paper's augmentation; off for digits)
    log_every: int = 100,  # steps between log rows (loss per interval bin, stage); the only host syncs
    checkpoint_every: int = 1000,  # steps between resumable checkpoints
    seed: int = 0,  # seeds data order, timesteps, noise and condition dropout
    device: str | torch.device = "cpu",
    bf16: bool | None = None,  # bf16 autocast; None = on for CUDA, off elsewhere
    fingerprint: str = "",  # identifies the configuration; a checkpoint with another one is ignored
    snapshot_steps: tuple[int, ...] | list[int] = (),  # steps after which `on_snapshot` is called
    on_snapshot: Callable[[int, nn.Module, nn.Module], None] | None = None,  # (step, net, ema net), rank 0
    stop_after: int | None = None,  # stop (checkpoint written) once this many steps are done
    should_stop: Callable[[], bool] | None = None,  # polled after every step, e.g. set by a SIGTERM handler
    progress: bool = True,
    compile: bool | str = False,  # torch.compile the loss's network: True = inductor, or a backend name
    # (K,) long: the image row of each caption in `labels` (text conditioning); None: `labels` are per image
    condition_image: torch.Tensor | None = None,
    # stop when a log row's mean loss exceeds this multiple of the running median of the previous
    # SPIKE_WINDOW rows (a run that blows up while staying finite); None: only non-finite losses stop it
    loss_spike_factor: float | None = 1000.0,
    # called on rank 0 at every log row with a flat dict of scalars: step, loss, stage, lr, beta1,
    # steps_per_s (a timing: in no checkpoint or output), loss_bin_0..N-1 (None: no sample in the bin)
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    _check_lengths(iterations, batch_size, log_every, checkpoint_every, loss_spike_factor)
    device = torch.device(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    local = rank_slice(batch_size, rank, world)
    if condition_image is not None:
        check_captions(labels, condition_image, images.shape[0])

    torch.manual_seed(seed)  # condition dropout inside the network draws from the global RNG
    parts = Trainable.build(
        net,
        schedule,
        prediction,
        device=device,
        lr=lr,
        adam_betas=adam_betas,
        weight_decay=weight_decay,
        ema_decay=ema_decay,
        distributed=distributed,
        compile=compile,
    )
    gens = make_generators(seed, images.device, device)
    batches = BatchSource(
        images,
        labels,
        condition_image,
        batch_size=batch_size,
        generator=gens["data"],
        local=local,
        hflip=hflip,
        device=device,
    )
    # the loss is looked up in this module when the loop starts, so it can be wrapped (tests record batches)
    optim_step = OptimStep(
        parts,
        strategy,
        gens,
        denoising_loss,
        batch_size=batch_size,
        device=device,
        local=local,
        world=world,
        grad_clip=grad_clip,
        bf16=device.type == "cuda" if bf16 is None else bf16,
    )
    log = LossLog(intervals, schedule, device, spike_factor=loss_spike_factor)
    checkpoints = Checkpointer(
        run_dir / CHECKPOINT_NAME,
        parts=parts,
        strategy=strategy,
        generators=gens,
        log=log,
        device=device,
        fingerprint=fingerprint,
        rank=rank,
        iterations=iterations,
        checkpoint_every=checkpoint_every,
        snapshot_steps=snapshot_steps,
        on_snapshot=on_snapshot,
    )
    stops = StopRule(
        iterations, stop_after=stop_after, should_stop=should_stop, distributed=distributed, device=device
    )
    loop = _Loop(
        strategy, batches, optim_step, log, checkpoints, stops, log_every, on_log if rank == 0 else None
    )
    step = resumed_from = checkpoints.restore()
    parts.net.train()
    step, completed = loop.run(step, iterations, progress)
    return TrainResult(
        net=parts.net,
        ema=parts.ema.module,
        step=step,
        completed=completed,
        resumed_from=resumed_from,
        history=log.history,
    )


@dataclass
class _Loop:
    """The parts of a run wired together.  ``on_log``: None on ranks other than 0."""

    strategy: TimestepStrategy
    batches: BatchSource
    optim_step: OptimStep
    log: LossLog
    checkpoints: Checkpointer
    stops: StopRule
    log_every: int
    on_log: Callable[[dict], None] | None

    def run(self, step: int, iterations: int, progress: bool) -> tuple[int, bool]:
        """Train from ``step`` until ``iterations`` steps are done or the run stops early: (steps done,
        whether the run completed)."""
        bar = Progress(iterations, step, enabled=progress)
        rate = Rate(step)
        try:
            while step < iterations:
                t_all, losses = self.optim_step(step, *self.batches.draw())
                step += 1
                self.strategy.observe(step, t_all, losses)
                self.log.add(t_all, losses)
                if step % self.log_every == 0 or step == iterations:
                    row = self.log.row(step, self.strategy)
                    bar.log_row(row["loss"], row["stage"])
                    if self.on_log is not None:
                        self.on_log(_live_row(row, self.optim_step.parts, rate(step)))
                bar.update(1)
                self.checkpoints.after_step(step)
                if self.stops(step):
                    self.checkpoints.stop(step)
                    return step, False
        finally:
            bar.close()
        return step, True


def _live_row(row: dict, parts: Trainable, steps_per_s: float) -> dict:
    """A log row as ``on_log`` receives it: step, loss, stage, lr, beta1, steps_per_s, loss bins."""
    head = {k: row[k] for k in ("step", "loss", "stage")}
    bins = {k: v for k, v in row.items() if k not in head}
    return head | parts.hyperparameters() | {"steps_per_s": steps_per_s} | bins
