"""Resumable checkpoints: what they hold, when they (and the snapshots) are written, and resuming.

A checkpoint holds everything that decides the future of a run: network, EMA, optimiser, every RNG
(global, CUDA, and the data, timestep and noise streams), the strategy's state, the step and the log so
far, so a run stopped at step k and resumed ends bitwise equal to an uninterrupted one on CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputFileError, TrainingDiverged
from ..io import atomic_torch_save, read_torch
from ..timesteps import TimestepStrategy
from .losslog import LossLog
from .step import Trainable

CHECKPOINT_NAME = "checkpoint.pt"


def read_checkpoint(path: Path, device: torch.device, stacklevel: int = 2) -> dict | None:
    """The resumable state in ``path``, or None when there is none.  A file that cannot be read (truncated
    by a full disk, emptied, overwritten) is moved aside with a warning naming it, and the run starts from
    step 0: a damaged checkpoint must not block its job on every retry.  The warning points at the
    caller ``stacklevel`` frames up (1: the caller of this function)."""
    if not path.exists():
        return None
    try:
        state = read_torch(path, map_location=device)
        if not isinstance(state, dict) or "step" not in state or "fingerprint" not in state:
            raise InputFileError(path, "not a training checkpoint (no step or fingerprint)")
    except InputFileError as err:
        aside = path.with_name(f"{path.name}.unreadable")
        path.replace(aside)
        warnings.warn(
            f"{path}: unreadable checkpoint ({err.problem}); moved to {aside.name}, training starts from "
            "step 0",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )
        return None
    return state


def check_weights(step: int, net: nn.Module, ema: nn.Module) -> None:
    """Raise :class:`TrainingDiverged` when a weight of ``net`` or ``ema`` is not finite.  Called before
    anything is saved, so a diverged run never overwrites its last good checkpoint or publishes a model.
    One host sync per network; the names are looked up only once something is wrong."""
    for name, module in (("network", net), ("EMA", ema)):
        tensors = list(module.parameters())
        if bool(torch.stack([torch.isfinite(p).all() for p in tensors]).all()):
            continue
        bad = [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]
        raise TrainingDiverged(
            f"training diverged at step {step}: {len(bad)} {name} weight tensor(s) are not finite "
            f"(first: {bad[0]}); the last good checkpoint is kept"
        )


def rng_state(generators: dict[str, torch.Generator], device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG (and CUDA's on a CUDA device) and every stream's generator state."""
    state = {"torch": torch.get_rng_state(), **{name: g.get_state() for name, g in generators.items()}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    for name, g in generators.items():
        g.set_state(state[name].cpu())


class Checkpointer:
    """Writes and restores the resumable checkpoint of one run (``path``), and the snapshots.

    The checkpoint is written every ``checkpoint_every`` steps, at the last step (``iterations``) and
    when the run stops early, by rank 0 only; weights are checked to be finite before anything is saved.
    ``on_snapshot(step, net, ema)`` runs on rank 0 after each step of ``snapshot_steps``, before that
    step's checkpoint: a run resumed from a checkpoint past a snapshot step never revisits it, so the
    snapshot must already be on disk.  A checkpoint with another ``fingerprint`` is not resumed.
    """

    def __init__(
        self,
        path: Path,
        *,
        parts: Trainable,
        strategy: TimestepStrategy,
        generators: dict[str, torch.Generator],
        log: LossLog,
        device: torch.device,
        fingerprint: str = "",
        rank: int = 0,
        iterations: int,
        checkpoint_every: int,
        snapshot_steps: tuple[int, ...] | list[int] = (),
        on_snapshot: Callable[[int, nn.Module, nn.Module], None] | None = None,
    ):
        self.path, self.parts, self.strategy, self.generators, self.log = (
            path,
            parts,
            strategy,
            generators,
            log,
        )
        self.device, self.fingerprint, self.rank = device, fingerprint, rank
        self.iterations, self.checkpoint_every = iterations, checkpoint_every
        self.snapshot_steps = frozenset(snapshot_steps) if on_snapshot is not None else frozenset()
        self.on_snapshot = on_snapshot

    def state_dict(self, step: int) -> dict:
        """The checkpoint of the run after ``step`` steps (its format: resumable by older code)."""
        return {
            "fingerprint": self.fingerprint,
            "step": step,
            "net": self.parts.net.state_dict(),
            "ema": self.parts.ema.state_dict(),
            "optimizer": self.parts.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": rng_state(self.generators, self.device),
            **self.log.state_dict(),
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore every part from ``state``; returns its step."""
        self.parts.net.load_state_dict(state["net"])
        self.parts.ema.load_state_dict(state["ema"])
        self.parts.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy"])
        set_rng_state(state["rng"], self.generators, self.device)
        self.log.load_state_dict(state)
        return int(state["step"])

    def restore(self) -> int:
        """Resume from the checkpoint on disk when there is one of this configuration: the step to
        continue from (0 for a fresh start)."""
        state = read_checkpoint(self.path, self.device, stacklevel=3)
        if state is None:
            return 0
        if state.get("fingerprint") != self.fingerprint:
            tqdm.write(f"{self.path}: written by another configuration; starting from step 0")
            return 0
        return self.load_state_dict(state)

    def save(self, step: int) -> None:
        if self.rank == 0:
            atomic_torch_save(self.state_dict(step), self.path)

    def check_weights(self, step: int) -> None:
        check_weights(step, self.parts.net, self.parts.ema.module)

    def after_step(self, step: int) -> None:
        """The weight check, snapshot and checkpoint due after ``step``."""
        snapshot = step in self.snapshot_steps
        checkpoint = step % self.checkpoint_every == 0 or step == self.iterations
        if snapshot or checkpoint:
            self.check_weights(step)
        if snapshot and self.rank == 0:
            self.on_snapshot(step, self.parts.net, self.parts.ema.module)
        if checkpoint:
            self.save(step)

    def stop(self, step: int) -> None:
        """The checkpoint of a run stopped early after ``step`` (unless :meth:`after_step` just wrote it)."""
        if step % self.checkpoint_every:
            self.check_weights(step)
            self.save(step)
