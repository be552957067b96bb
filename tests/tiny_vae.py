"""A tiny randomly initialised diffusers ``AutoencoderKL`` on disk, standing in for a real VAE in tests."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_tiny_vae(
    path: str | os.PathLike[str], in_channels: int = 3, latent_channels: int = 4, seed: int = 0
) -> Path:
    """Save a ~44k-parameter AutoencoderKL (downsampling 2, 16x16 images) to ``path``; returns ``path``."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        # Seeded inside fork_rng so building one does not disturb the test's own random stream.
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=8,
            sample_size=16,
        )
    path = Path(path)
    vae.save_pretrained(path)
    return path
