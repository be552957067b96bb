"""The model file: what train and train_expert write (``model.pt``, the snapshots) and what sampling and
the score estimator read back.

A model file is a dict (``torch.save``) holding everything needed to rebuild the denoiser without the
params file: ``format`` (:data:`MODEL_FORMAT`, checked on reading), ``arch`` (the arguments of
:func:`~diffusion_curriculum.models.create_model`), ``schedule`` (those of
:func:`~diffusion_curriculum.schedules.make_schedule`), ``prediction``, ``data`` (``kind`` and the
training data's ``sha256``), ``method``, ``seed``, ``step``, the trained weights ``net`` and their EMA
``ema``; an expert's adds its ``interval`` (``index``, ``unit_low``, ``unit_high``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from . import data
from .errors import InputFileError
from .io import read_torch
from .losses import Denoiser
from .models import create_model
from .schedules import make_schedule

# Version of the layout above; a reader refuses any other (bump it when the layout changes).
MODEL_FORMAT = 1
MODEL_KEYS = ("arch", "net", "ema", "schedule", "prediction")
WRITERS = "written by train or train_expert"
SNAPSHOT_DIR = "snapshots"  # step{N}.pt for every snapshot step N, in the model file's format


def model_arch(name: str, images: torch.Tensor, conditioning: dict, class_dropout: float) -> dict:
    """``create_model`` arguments for the network ``name`` on ``images`` (N, C, H, W), stored in every
    model file; ``conditioning`` holds ``num_classes``, ``text_dim`` and ``text_tokens``."""
    return {
        "name": name,
        "input_size": images.shape[-1],
        "in_channels": images.shape[1],
        **conditioning,
        "class_dropout": class_dropout,
    }


def model_file(
    *, arch: dict, schedule: dict, prediction: str, data: dict, method: str, seed: int, step: int,
    net: torch.nn.Module, ema: torch.nn.Module, **extra,
) -> dict:  # fmt: skip
    """What sample and the other readers of a model need to rebuild it (model.pt, snapshots, experts)."""
    return {
        "format": MODEL_FORMAT,
        "arch": arch,
        "schedule": schedule,
        "prediction": prediction,
        "data": data,
        "method": method,
        "seed": seed,
        "step": step,
        "net": net.state_dict(),
        "ema": ema.state_dict(),
        **extra,
    }


def read_model_file(path: str | Path) -> dict:
    """The model file at ``path``; an unreadable file, a missing key or another format version raises
    :class:`~diffusion_curriculum.errors.InputFileError` naming it."""
    record = read_torch(path, hint=WRITERS, keys=MODEL_KEYS)
    found = record.get("format")
    if found != MODEL_FORMAT:
        raise InputFileError(
            path, f"model file format {found!r} is not {MODEL_FORMAT} (another version wrote it; rerun train)"
        )
    return record


def load_denoiser(path: str | Path, use_ema: bool, device: str) -> tuple[Denoiser, dict]:
    """The denoiser in the model file at ``path`` (its EMA weights with ``use_ema``), in eval mode on
    ``device``, and the file's dict."""
    record = read_model_file(path)
    net = create_model(**record["arch"])
    net.load_state_dict(record["ema" if use_ema else "net"])
    net.eval().to(device)
    return Denoiser(net, make_schedule(**record["schedule"]), record["prediction"]), record


def load_expert(path: str | Path, use_ema: bool, device: str) -> tuple[Denoiser, dict]:
    """An expert's denoiser (train_expert's model file, which records its ``interval``)."""
    denoiser, record = load_denoiser(path, use_ema, device)
    if "interval" not in record:
        raise InputFileError(path, "is not an expert's model file (no interval; written by train_expert)")
    return denoiser, record


def official_dit(
    path: str | Path, class_dropout: float, schedule: dict, device: str
) -> tuple[Denoiser, dict]:
    """An official DiT checkpoint (facebookresearch/DiT's state dict) as an eps-predicting denoiser on
    the VP ``schedule`` (``make_schedule`` arguments), with a stand-in for a model file's metadata; the
    network's registered size is ``record["arch"]["name"]`` (None for an unregistered one)."""
    from .models.dit import load_dit_checkpoint

    try:
        net = load_dit_checkpoint(path, class_dropout=class_dropout)
    except InputFileError:
        raise
    except ValueError as err:  # the state dict is readable but not DiT's: name the file
        raise InputFileError(path, str(err)) from None
    arch = {
        "name": getattr(net, "model_name", None),
        "input_size": net.input_size[0],
        "in_channels": net.in_channels,
        "num_classes": net.num_classes,
    }
    record = {
        "arch": arch,
        "schedule": schedule,
        "prediction": "eps",
        "data": {"kind": data.LATENTS, "sha256": None},
        "step": None,
        "method": "official",
        "seed": None,
    }
    return Denoiser(net.to(device), make_schedule(**schedule), "eps"), record


def snapshot_name(step: int) -> str:
    return f"step{step}.pt"


def publish_snapshots(pending: Path, target: Path, steps: list[int]) -> None:
    """Move the snapshots of ``steps`` from ``pending`` into ``target`` as one directory, replacing any
    older one (a reader never sees a half-published set)."""
    missing = [s for s in steps if not (pending / snapshot_name(s)).is_file()]
    if missing:
        raise FileNotFoundError(f"snapshots for steps {missing} are missing from {pending}")
    staging = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for step in steps:
        os.replace(pending / snapshot_name(step), staging / snapshot_name(step))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
