"""Encode images to latents (and back) with a pretrained VAE, for diffusion in latent space.

A :class:`LatentCodec` wraps a ``diffusers.AutoencoderKL`` loaded from a local directory: either a bare VAE
folder (``config.json`` plus ``diffusion_pytorch_model.safetensors``) or a full diffusers pipeline folder
such as Stable Diffusion, whose VAE lies in ``vae/``.  Nothing is ever downloaded (``local_files_only``),
so a pipeline run depends only on files it can hash: :meth:`LatentCodec.fingerprint` lets manifests
record which VAE produced a set of latents.

Latents are stored as ``(z - shift_factor) * scaling_factor``, ``z`` being the encoder's posterior.  The
scaling factor follows Rombach et al. 2022 (sec. 4.3.2, D.1): it brings the latents to roughly unit
variance, which the noise schedules assume of the data (DiT reuses Stable Diffusion's 0.18215).  Newer
VAEs (SD3, FLUX) also shift the latents to zero mean; VAEs without ``shift_factor`` get 0.  Per-channel
``latents_mean``/``latents_std`` found in some configs are not applied: encode and decode stay exact
inverses of each other either way.

:func:`encode_dataset` turns a pixel :class:`~diffusion_curriculum.data.ImageDataset` into a latent one
that the rest of the library (subsetting, Parquet storage, training) handles like any other data set.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data
from .errors import InputFileError

__all__ = ["LatentCodec", "encode_dataset", "latent_decoder"]

_CONFIG = "config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_POSTERIORS = ("mean", "sample")
_HASH_CHUNK = 1 << 20


class LatentCodec:
    """A frozen ``AutoencoderKL`` with the scaling convention above; build it with :meth:`from_directory`."""

    def __init__(self, vae: Any, path: Path, vae_dir: Path, device: torch.device) -> None:
        self.vae = vae
        self.path = path  # as given to from_directory
        self.vae_dir = vae_dir  # the directory actually loaded: ``path`` or ``path/vae``
        self.device = device
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        shift = config.get("shift_factor")
        self.shift_factor = 0.0 if shift is None else float(shift)
        self.image_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        # Every down block but the last halves the resolution.
        self.downsample = 2 ** (len(config.block_out_channels) - 1)

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LatentCodec:
        """Load the VAE in ``path`` (a VAE folder, or a pipeline folder with a ``vae/`` subfolder)."""
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(
                f"VAE directory does not exist: {root} (expected a diffusers AutoencoderKL folder with "
                f"{_CONFIG}, or a pipeline folder with vae/{_CONFIG})"
            )
        folder = root / "vae" if (root / "vae" / _CONFIG).is_file() else root
        config_file = folder / _CONFIG
        if not config_file.is_file():
            raise FileNotFoundError(
                f"no {_CONFIG} in VAE directory {root}: expected a diffusers AutoencoderKL folder "
                f"({_CONFIG} and diffusion_pytorch_model.safetensors) or a pipeline folder with vae/{_CONFIG}"
            )
        try:
            class_name = json.loads(config_file.read_text()).get("_class_name")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise ValueError(f"cannot read VAE config {config_file}: {exc}") from exc
        if class_name != "AutoencoderKL":
            raise ValueError(
                f"VAE at {folder} must be an AutoencoderKL, but its {_CONFIG} says {class_name!r}"
            )
        if not _weight_files(folder):
            # diffusers' own message for this is an OSError that suggests connecting to the hub.
            raise FileNotFoundError(f"no weights (*.safetensors or *.bin) in VAE directory {folder}")

        from diffusers import AutoencoderKL  # slow to import (seconds), and only latent runs need it

        # low_cpu_mem_usage=False: the default wants `accelerate` and logs a warning on every load without it.
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
        device = torch.device(device)
        vae = vae.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        return cls(vae, root, folder, device)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(C, H, W)`` of images -> ``(latent_channels, H // downsample, W // downsample)``."""
        c, h, w = (int(s) for s in image_shape)
        if c != self.image_channels:
            raise ValueError(f"the VAE at {self.path} takes {self.image_channels}-channel images, got {c}")
        if h % self.downsample or w % self.downsample:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the VAE's downsampling factor {self.downsample}"
            )
        return self.latent_channels, h // self.downsample, w // self.downsample

    def encode(
        self,
        images: torch.Tensor,
        *,
        batch_size: int = 64,
        posterior: str = "mean",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Float images ``(N, C, H, W)`` in ``[-1, 1]`` -> scaled float32 latents on the CPU.

        ``posterior="mean"`` takes the posterior mean (deterministic); ``"sample"`` draws from the
        posterior with ``generator``.  All the noise is drawn up front in one call, so the draw does not
        depend on ``batch_size``.
        """
        _check_batch_size(batch_size)
        if posterior not in _POSTERIORS:
            raise ValueError(f"posterior must be one of {_POSTERIORS}, got {posterior!r}")
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            # uint8 pixels would pass as values up to 255; data.to_training_tensor maps them to [-1, 1].
            raise ValueError(f"images must be floats in [-1, 1], got dtype {images.dtype}")
        shape = (images.shape[0], *self.latent_shape(images.shape[1:]))
        if posterior == "sample":
            noise_device = generator.device if generator is not None else torch.device("cpu")
            out = torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32).cpu()
        else:
            out = torch.empty(shape, dtype=torch.float32)
        with torch.no_grad():
            for start in range(0, shape[0], batch_size):
                stop = min(start + batch_size, shape[0])
                x = images[start:stop].to(device=self.device, dtype=torch.float32)
                dist = self.vae.encode(x).latent_dist
                z = dist.mode()
                if posterior == "sample":
                    z = z + dist.std * out[start:stop].to(self.device)
                out[start:stop] = ((z - self.shift_factor) * self.scaling_factor).float().cpu()
        return out

    def decode(self, latents: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Scaled latents ``(N, latent_channels, h, w)`` -> float32 images in ``[-1, 1]`` on the CPU."""
        _check_batch_size(batch_size)
        latents = torch.as_tensor(latents)
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be (N, {self.latent_channels}, h, w) for the VAE at {self.path}, "
                f"got shape {tuple(latents.shape)}"
            )
        n, _, h, w = latents.shape
        out = torch.empty((n, self.image_channels, h * self.downsample, w * self.downsample))
        with torch.no_grad():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                z = latents[start:stop].to(device=self.device, dtype=torch.float32)
                z = z / self.scaling_factor + self.shift_factor
                # The decoder overshoots [-1, 1]; clamping matches what image files can hold.
                out[start:stop] = self.vae.decode(z).sample.clamp(-1.0, 1.0).float().cpu()
        return out

    def fingerprint(self) -> str:
        """SHA-256 over ``config.json`` and the weight files in :attr:`vae_dir`: names, sizes, contents."""
        digest = hashlib.sha256()
        for file in [self.vae_dir / _CONFIG, *_weight_files(self.vae_dir)]:
            # Name and size delimit the files, so moving bytes from one file to the next changes the hash.
            digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
            with open(file, "rb") as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
        return digest.hexdigest()


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))


def encode_dataset(
    dataset: data.ImageDataset,
    codec: LatentCodec,
    *,
    batch_size: int = 64,
    posterior: str = "mean",
    seed: int = 0,
) -> data.ImageDataset:
    """Encode a pixel data set into a latent one (float32 NCHW) with the same labels and classes.

    ``seed`` only matters for ``posterior="sample"``.
    """
    if dataset.kind != data.PIXELS:
        raise ValueError(f"encode_dataset needs a {data.PIXELS!r} data set, got {dataset.kind!r}")
    if dataset.channels != codec.image_channels:
        raise ValueError(
            f"data set {dataset.source!r} has {dataset.channels} channel(s) but the VAE at {codec.path} "
            f"takes {codec.image_channels}; set data.channels: {codec.image_channels} to convert them "
            f"(or call data.convert_channels)"
        )
    x, _ = data.to_training_tensor(dataset)
    generator = torch.Generator().manual_seed(seed) if posterior == "sample" else None
    latents = codec.encode(x, batch_size=batch_size, posterior=posterior, generator=generator)
    return data.ImageDataset(
        np.ascontiguousarray(latents.numpy()),
        dataset.labels.copy(),
        dataset.num_classes,
        f"{dataset.source}+vae",
        data.LATENTS,
    )


def latent_decoder(
    manifest: dict | None, model_path: str | os.PathLike[str], model_data: dict, device: str
) -> LatentCodec | None:
    """The VAE that encoded a model's training data (``manifest``: encode_latents' ``manifest.json``;
    ``model_data``: the model file's ``data``), or None for pixel models and for latents given without
    a VAE.  A manifest of other data, or a VAE that changed since, raises ``InputFileError``."""
    if manifest is None or model_data["kind"] != data.LATENTS:
        return None
    if manifest["sha256"] != model_data["sha256"]:
        raise InputFileError(model_path, "was trained on other data than the --encoding manifest describes")
    encoding = manifest["encoding"]
    if encoding is None:
        return None
    codec = LatentCodec.from_directory(encoding["vae"], device=device)
    if codec.fingerprint() != encoding["fingerprint"]:
        raise InputFileError(
            encoding["vae"], "is not the VAE that encoded the training data; rerun encode_latents"
        )
    return codec
