"""What a training run is made of besides its loop, shared by train and train_expert: the data, the
schedule, the conditioning and the freshly initialised network (:func:`prepare_training`), the model
files it writes, its data-parallel processes, its stop signals and its log tables."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import data
from .checkpoints import SNAPSHOT_DIR, model_arch, model_file, publish_snapshots, snapshot_name
from .conditioning import Conditioning, training_conditioning
from .io import atomic_path, atomic_torch_save
from .losses import check_prediction
from .models import create_model
from .schedules import NoiseSchedule, make_schedule

# Data sets below this size live on the GPU during training: no host copy in the step.
ON_DEVICE_BYTES = 4 * 2**30
# Signals that stop a run after its next step, with a checkpoint (SLURM's preemption and time limit).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class TrainingSetup:
    """Everything a run trains with, before the loop; ``model_file`` records a network of this run."""

    dataset: data.ImageDataset
    data_sha256: str  # the data set's content hash
    images: torch.Tensor  # (N, C, H, W) float32
    schedule: NoiseSchedule
    schedule_args: dict  # make_schedule's arguments, stored in the model file
    prediction: str
    conditioning: Conditioning
    arch: dict  # create_model's arguments, stored in the model file
    net: torch.nn.Module

    def to(self, device: str) -> TrainingSetup:
        """Small data sets (and their conditioning) move to a GPU ``device``; others stay on the host."""
        if device.startswith("cuda") and self.images.numel() * self.images.element_size() < ON_DEVICE_BYTES:
            self.images = self.images.to(device)
            self.conditioning.to(device)
        return self

    def loop_inputs(self) -> dict:
        """``train_loop``'s arguments that this set-up decides: the network, its schedule and target, the
        images and their conditions."""
        return {
            "net": self.net,
            "schedule": self.schedule,
            "prediction": self.prediction,
            "images": self.images,
            "labels": self.conditioning.labels,
            "condition_image": self.conditioning.condition_image,
        }

    def model_file(self, *, method: str, seed: int, step: int, net, ema, **extra) -> dict:
        return model_file(
            arch=self.arch,
            schedule=self.schedule_args,
            prediction=self.prediction,
            data={"kind": self.dataset.kind, "sha256": self.data_sha256},
            method=method,
            seed=seed,
            step=step,
            net=net,
            ema=ema,
            **extra,
        )


def prepare_training(
    data_path: str | Path,
    *,
    schedule: dict,
    prediction: str,
    model: str,
    condition: str,
    condition_dropout: float,
    captions_path: str | None,
    seed: int,
    condition_source: str = "condition",
) -> TrainingSetup:
    """Read the data (``prepare_data``'s Parquet), build the noise ``schedule`` (``make_schedule``
    arguments) and check ``prediction`` against it, read the ``condition`` (``none`` / ``class`` /
    ``text``, the latter from ``captions_path``), and initialise the network ``model`` from ``seed``.
    ``condition_source`` names the condition setting in errors."""
    dataset = data.read_parquet(data_path)
    images, _ = data.to_training_tensor(dataset)
    noise = make_schedule(**schedule)
    check_prediction(noise, prediction)
    conditioning = training_conditioning(condition, dataset, captions_path, condition_source)
    arch = model_arch(model, images, conditioning.arch, condition_dropout)
    torch.manual_seed(seed)
    net = create_model(**arch, text_null=conditioning.text_null)
    return TrainingSetup(
        dataset, data.content_hash(dataset), images, noise, schedule, prediction, conditioning, arch, net
    )


def relaunch_under_torchrun(ranks: int, module: str, argv: list[str] | None) -> None:
    """Replace this process by ``torchrun`` with ``ranks`` copies of ``python -m module argv`` (one per
    GPU); ``argv`` None: this process's own arguments."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    os.execv(sys.executable, [*command, "-m", module, *(sys.argv[1:] if argv is None else argv)])


def start_data_parallel(device: str) -> tuple[int, str]:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU); this rank and its device."""
    import torch.distributed as dist

    local = os.environ["LOCAL_RANK"]
    if device.startswith("cuda"):
        torch.cuda.set_device(int(local))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), (f"cuda:{local}" if device.startswith("cuda") else device)


def leave_data_parallel() -> None:
    """Leave the process group together: every rank waits for the others, then tears the group down.  A
    rank that exits with a live gloo group can abort the interpreter ("terminate called without an
    active exception") while another rank still uses it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class Snapshots:
    """The model files of a run's snapshot steps.  They wait beside the checkpoint until the run
    completes (a failed job's outputs are deleted by the workflow manager, the checkpoint directory is
    not), then move into the outputs at once; ``record(step, net, ema)`` makes a model file's dict."""

    def __init__(self, checkpoint_dir: str | Path, record) -> None:
        self.pending = Path(checkpoint_dir) / SNAPSHOT_DIR
        self.record = record

    def write(self, step: int, net: torch.nn.Module, ema: torch.nn.Module) -> None:
        self.pending.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.record(step, net, ema), self.pending / snapshot_name(step))

    def publish(self, target: Path, steps: list[int]) -> None:
        publish_snapshots(self.pending, target, steps)


class StopRequest:
    """Catches :data:`STOP_SIGNALS`; a training loop polls ``requested`` and stops with a checkpoint."""

    def __init__(self) -> None:
        self.signal: str | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._catch)

    def _catch(self, signum, _frame) -> None:
        self.signal = signal.Signals(signum).name

    def requested(self) -> bool:
        return self.signal is not None


def write_history(history: dict, out: Path, transition_columns: list[str]) -> None:
    """A run's log (``train_loop``'s ``history``) as ``loss_bins.parquet``, ``train_log.parquet`` and
    ``transitions.parquet`` in ``out``."""
    write_table(history["bins"], out / "loss_bins.parquet")
    write_table(history["steps"], out / "train_log.parquet")
    write_table(history["transitions"], out / "transitions.parquet", transition_columns)


def write_table(rows: list[dict], path: Path, columns: list[str] | None = None) -> None:
    """A list of log rows as a Parquet table (atomically); an empty one with ``columns`` keeps them, as
    integers, so readers need no special case."""
    frame = pd.DataFrame(rows, columns=columns)
    if columns and not rows:
        frame = frame.astype("int64")
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
