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
writes checkpoints; all ranks keep identical EMA weights.

Conditions: class labels, one per image; or caption embeddings (text conditioning), any number per image.
With captions the data stream draws *caption* rows -- so an image is seen in proportion to its number of
captions, every caption of it equally often, as when training on MS-COCO's (image, caption) pairs -- and
each step trains on the drawn captions' images.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .errors import TrainingDiverged
from .io import atomic_torch_save
from .losses import Denoiser, denoising_loss
from .schedules import NoiseSchedule
from .timesteps import Intervals, TimestepStrategy

__all__ = ["TrainResult", "TrainingDiverged", "train_loop", "CHECKPOINT_NAME", "SPIKE_WINDOW"]

CHECKPOINT_NAME = "checkpoint.pt"
# Log rows in the running median a loss spike is measured against.
SPIKE_WINDOW = 10
# What torch.load raises on a truncated, empty or foreign file (pickle, zip and stream-reader errors).
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    ValueError,
    OSError,
    AttributeError,
    ImportError,
    IndexError,
)


def _spike_reference(first_loss: float | None, rows: list[dict]) -> float | None:
    """The running median a log row's loss is compared with: the last ``SPIKE_WINDOW`` log rows, and the
    loss of the run's first step while there are fewer rows (so a run that explodes within its first log
    interval is still measured against its healthy start)."""
    recent = [row["loss"] for row in rows[-SPIKE_WINDOW:]]
    if len(recent) < SPIKE_WINDOW and first_loss is not None:
        recent.insert(0, first_loss)
    return statistics.median(recent) if recent else None


def _check_loss(
    step: int, loss: float, reference: float | None = None, spike_factor: float | None = None
) -> None:
    # At log rows, where the loop syncs with the host anyway: the loss is already a host number.
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged at step {step}: mean loss {loss} since the last log row; the last good "
            "checkpoint is kept (lower the learning rate, or check the data)"
        )
    if (
        spike_factor is not None
        and reference is not None
        and reference > 0
        and loss > spike_factor * reference
    ):
        raise TrainingDiverged(
            f"training diverged at step {step}: mean loss {loss:.4g} since the last log row is "
            f"{loss / reference:.3g}x its running median {reference:.4g} "
            f"(loss_spike_factor {spike_factor:g}); the last good checkpoint is kept (lower the learning "
            "rate, or check the data)"
        )


def _read_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The resumable state in ``path``, or None when there is none.  A file that cannot be read (truncated
    by a full disk, emptied, overwritten) is moved aside with a warning naming it, and the run starts from
    step 0: a damaged checkpoint must not block its job on every retry."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or "step" not in state or "fingerprint" not in state:
            raise ValueError("not a training checkpoint (no step or fingerprint)")
    except _UNREADABLE as err:
        aside = path.with_name(f"{path.name}.unreadable")
        path.replace(aside)
        # torch's own first lines are long advice about weights_only, not about the file
        first = str(err).splitlines()[0] if str(err) else ""
        reason = f"{type(err).__name__}: {first}" if 0 < len(first) <= 100 else type(err).__name__
        warnings.warn(
            f"{path}: unreadable checkpoint ({reason}); moved to {aside.name}, training starts from step 0",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return state


def _check_weights(step: int, net: nn.Module, ema: nn.Module) -> None:
    # Before anything is saved, so a diverged run never overwrites its last good checkpoint or publishes
    # a model.  One host sync per network; the names are looked up only once something is wrong.
    for name, module in (("network", net), ("EMA", ema)):
        tensors = list(module.parameters())
        if bool(torch.stack([torch.isfinite(p).all() for p in tensors]).all()):
            continue
        bad = [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]
        raise TrainingDiverged(
            f"training diverged at step {step}: {len(bad)} {name} weight tensor(s) are not finite "
            f"(first: {bad[0]}); the last good checkpoint is kept"
        )


@dataclass
class TrainResult:
    net: nn.Module
    ema: nn.Module
    step: int  # steps completed
    completed: bool  # False when stopped early by ``stop_after`` or ``should_stop``
    resumed_from: int  # 0 for a fresh start
    history: dict = field(default_factory=dict)  # 'steps', 'bins', 'transitions': lists of row dicts


def _make_generators(seed: int, data_device, device) -> dict[str, torch.Generator]:
    # Independent streams, so that e.g. a strategy drawing a different number of values does not shift
    # which images or which noise the run sees.
    data_seed, t_seed, noise_seed = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(3)
    )
    return {
        "data": torch.Generator(device=data_device).manual_seed(data_seed),
        "timesteps": torch.Generator(device=device).manual_seed(t_seed),
        "noise": torch.Generator(device=device).manual_seed(noise_seed),
    }


def _check_captions(labels: torch.Tensor | None, condition_image: torch.Tensor, n_images: int) -> None:
    """Validate caption embeddings (K, T, D) and their image rows (K,) against ``n_images`` images."""
    if labels is None or not labels.is_floating_point() or labels.ndim != 3:
        got = None if labels is None else f"{labels.dtype} {tuple(labels.shape)}"
        raise ValueError(
            f"with condition_image, labels must be float caption embeddings (K, T, D); got {got}"
        )
    if condition_image.dtype != torch.long or condition_image.shape != (labels.shape[0],):
        raise ValueError(
            f"condition_image must be a long tensor of shape ({labels.shape[0]},), one image row per "
            f"caption; got {condition_image.dtype} {tuple(condition_image.shape)}"
        )
    if labels.shape[0] == 0:
        raise ValueError("condition_image and labels hold no captions")
    low, high = int(condition_image.min()), int(condition_image.max())
    if low < 0 or high >= n_images:
        raise ValueError(
            f"condition_image values must lie in 0..{n_images - 1} (the images), got {low}..{high}"
        )


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
) -> TrainResult:
    if iterations < 1 or batch_size < 1:
        raise ValueError(f"iterations and batch_size must be >= 1, got {iterations} and {batch_size}")
    if log_every < 1 or checkpoint_every < 1:
        raise ValueError(f"log_every and checkpoint_every must be >= 1, got {log_every}, {checkpoint_every}")
    if loss_spike_factor is not None and not loss_spike_factor > 1:
        raise ValueError(f"loss_spike_factor must be > 1 or None, got {loss_spike_factor}")
    device = torch.device(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if bf16 is None:
        bf16 = device.type == "cuda"

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world} data-parallel ranks")
    local = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
    n_images = images.shape[0]
    if condition_image is not None:
        _check_captions(labels, condition_image, n_images)
        condition_image = condition_image.to(images.device)
    # What a step draws: images, or captions (each standing for its image) when there are captions.
    n_rows = n_images if condition_image is None else condition_image.shape[0]

    torch.manual_seed(seed)  # condition dropout inside the network draws from the global RNG
    net = net.to(device)
    trained = DistributedDataParallel(net) if distributed else net
    if compile:
        # Compiled after the DDP wrapper, as the DDP notes advise (Dynamo then splits the graph at the
        # gradient buckets).  Only the step's forward goes through it: `net` stays the raw module, so the
        # optimiser, the EMA and the checkpoint keys are those of an uncompiled run.  Random ops inside
        # the network (label dropout) draw other values than in eager mode, still from the global RNG
        # that checkpoints restore.
        trained = torch.compile(trained, backend="inductor" if compile is True else compile)
    denoiser = Denoiser(trained, schedule, prediction)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
    # Fused on CPU too: one kernel over all parameters instead of a loop of small ops (3-4x faster there).
    optimizer = torch.optim.AdamW(
        net.parameters(),
        lr=lr,
        betas=adam_betas,
        weight_decay=weight_decay,
        fused=device.type in ("cuda", "cpu"),
    )
    gens = _make_generators(seed, images.device, device)
    num_bins = intervals.num
    bin_sum = torch.zeros(num_bins, dtype=torch.float64, device=device)
    bin_count = torch.zeros(num_bins, dtype=torch.float64, device=device)
    running_loss = torch.zeros((), dtype=torch.float64, device=device)  # mean loss since the last log row
    running_count = 0
    history: dict[str, list] = {"steps": [], "bins": [], "transitions": []}
    step = 0
    first_loss: float | None = (
        None  # the loss of step 1: what a spike in the first log rows is measured against
    )

    state = _read_checkpoint(ckpt_path, device)
    if state is not None:
        if state.get("fingerprint") == fingerprint:
            net.load_state_dict(state["net"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            strategy.load_state_dict(state["strategy"])
            torch.set_rng_state(state["rng"]["torch"])
            if device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
            for name, g in gens.items():
                g.set_state(state["rng"][name].cpu())
            bin_sum.copy_(state["bin_sum"])
            bin_count.copy_(state["bin_count"])
            running_loss.copy_(state["running"][0])
            running_count = int(state["running"][1])
            history = state["history"]
            step = int(state["step"])
            first_loss = state.get("first_loss")
        else:
            tqdm.write(f"{ckpt_path}: written by another configuration; starting from step 0")
    resumed_from = step

    def save_checkpoint() -> None:
        if rank != 0:
            return
        rng = {"torch": torch.get_rng_state(), **{name: g.get_state() for name, g in gens.items()}}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        atomic_torch_save(
            {
                "fingerprint": fingerprint,
                "step": step,
                "net": net.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "strategy": strategy.state_dict(),
                "rng": rng,
                "bin_sum": bin_sum,
                "bin_count": bin_count,
                "running": (running_loss, running_count),
                "history": history,
                "first_loss": first_loss,
            },
            ckpt_path,
        )

    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    snapshot_set = frozenset(snapshot_steps)
    ones = torch.ones(batch_size, dtype=torch.float64, device=device)
    net.train()
    bar = tqdm(total=iterations, initial=step, desc="train", disable=not progress, mininterval=2.0)
    completed = True
    while step < iterations:
        # The global batch is drawn on every rank; each rank trains on its slice (see module docstring).
        rows = torch.randint(n_rows, (batch_size,), generator=gens["data"], device=images.device)
        if hflip:
            flip = torch.rand(batch_size, generator=gens["data"], device=images.device) < 0.5
        rows = rows[local]
        idx = rows if condition_image is None else condition_image[rows]
        x0 = images[idx]
        if hflip:
            x0 = torch.where(flip[local, None, None, None], x0.flip(-1), x0)
        x0 = x0.to(device, non_blocking=True)
        if labels is None:
            y = None
        elif condition_image is None:
            y = labels[idx].to(device, non_blocking=True)
        else:
            # Caption tables can be large, so they may stay on the host while the images are on the device.
            y = labels[rows.to(labels.device)].to(device, non_blocking=True)
        strategy.before_step(step, optimizer)
        t_all = strategy.sample(batch_size, gens["timesteps"], device=device)
        noise = torch.randn(
            (batch_size, *x0.shape[1:]), generator=gens["noise"], device=device, dtype=x0.dtype
        )
        t, noise = t_all[local], noise[local]
        with autocast:
            per_sample = denoising_loss(denoiser, x0, t, noise, y, weight=strategy.weights(t))
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        optimizer.step()
        ema.update_parameters(net)
        step += 1

        detached = per_sample.detach()
        if distributed:
            parts = [torch.empty_like(detached) for _ in range(world)]
            dist.all_gather(parts, detached)
            detached = torch.cat(parts)
        strategy.observe(step, t_all, detached)
        bins = intervals.index(schedule, t_all)
        bin_sum.index_add_(0, bins, detached.to(torch.float64))
        bin_count.index_add_(0, bins, ones)
        running_loss += detached.to(torch.float64).mean()
        running_count += 1
        if first_loss is None and loss_spike_factor is not None:
            first_loss = running_loss.item() / running_count  # one host sync, at the first step only

        if step % log_every == 0 or step == iterations:
            stage = strategy.stage
            history["transitions"] = strategy.transitions()
            sums, counts = bin_sum.tolist(), bin_count.tolist()
            for b in range(num_bins):
                history["bins"].append(
                    {
                        "step": step,
                        "bin": b,
                        "count": int(counts[b]),
                        "loss": sums[b] / counts[b] if counts[b] else None,  # no sample in this bin
                    }
                )
            mean_loss = running_loss.item() / max(running_count, 1)
            _check_loss(step, mean_loss, _spike_reference(first_loss, history["steps"]), loss_spike_factor)
            history["steps"].append({"step": step, "loss": mean_loss, "stage": stage})
            bin_sum.zero_()
            bin_count.zero_()
            running_loss.zero_()
            running_count = 0
            bar.set_postfix(loss=f"{mean_loss:.4f}", stage=stage, refresh=False)
        bar.update(1)
        # Before the checkpoint of the same step: a run resumed from a checkpoint past a snapshot step
        # never revisits it, so that snapshot must already be on disk.
        saves = (on_snapshot is not None and step in snapshot_set) or step % checkpoint_every == 0
        if saves or step == iterations:
            _check_weights(step, net, ema.module)
        if on_snapshot is not None and rank == 0 and step in snapshot_set:
            on_snapshot(step, net, ema.module)
        if step % checkpoint_every == 0 or step == iterations:
            save_checkpoint()
        stop_requested = should_stop is not None and should_stop()
        if distributed and should_stop is not None:  # every rank stops at the same step
            flag = torch.tensor([float(stop_requested)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop_requested = bool(flag.item())
        if step < iterations and (stop_requested or (stop_after is not None and step >= stop_after)):
            if step % checkpoint_every:
                _check_weights(step, net, ema.module)
                save_checkpoint()
            completed = False
            break
    bar.close()
    return TrainResult(
        net=net, ema=ema.module, step=step, completed=completed, resumed_from=resumed_from, history=history
    )
