"""The seeded random streams of a run, and the batches drawn from the data stream."""

from __future__ import annotations

import numpy as np
import torch

STREAMS = ("data", "timesteps", "noise")


def make_generators(seed: int, data_device, device) -> dict[str, torch.Generator]:
    """One generator per stream (``STREAMS``), seeded from ``seed``.

    Independent streams, so that e.g. a strategy drawing a different number of values does not shift
    which images or which noise the run sees.  The data stream lives with the images."""
    seeds = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(len(STREAMS)))
    devices = (data_device, device, device)
    return {
        name: torch.Generator(device=where).manual_seed(value)
        for name, where, value in zip(STREAMS, devices, seeds, strict=True)
    }


def check_captions(labels: torch.Tensor | None, condition_image: torch.Tensor, n_images: int) -> None:
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


def rank_slice(batch_size: int, rank: int, world: int) -> slice:
    """The part of a global batch of ``batch_size`` that data-parallel ``rank`` of ``world`` trains on."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world} data-parallel ranks")
    return slice(rank * batch_size // world, (rank + 1) * batch_size // world)


class BatchSource:
    """Draws each step's global batch from the data stream and hands out this rank's slice of it.

    Every rank draws the rows (and flips) of the whole batch, so the stream advances alike everywhere and
    the ranks' slices together are exactly the batch one process would train on.  Rows are images, or
    with ``condition_image`` captions, each standing for its image: an image is then drawn in proportion
    to its number of captions.  Per step the stream yields ``batch_size`` row indices, then with ``hflip``
    ``batch_size`` uniforms (a flip where < 0.5).

    images: (N, C, H, W) float, on any device; labels: (N,) class ids, (K, T, D) caption embeddings with
    ``condition_image`` (K,) image rows (already checked by :func:`check_captions`), or None.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        condition_image: torch.Tensor | None,
        *,
        batch_size: int,
        generator: torch.Generator,
        local: slice = slice(None),
        hflip: bool = False,
        device: str | torch.device = "cpu",
    ):
        self.images, self.labels = images, labels
        self.condition_image = None if condition_image is None else condition_image.to(images.device)
        self.num_rows = images.shape[0] if condition_image is None else condition_image.shape[0]
        self.batch_size, self.generator, self.local = batch_size, generator, local
        self.hflip, self.device = hflip, torch.device(device)

    def draw_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The global batch's rows (batch_size,) and flip mask (None without ``hflip``)."""
        where = self.images.device
        rows = torch.randint(self.num_rows, (self.batch_size,), generator=self.generator, device=where)
        flip = None
        if self.hflip:
            flip = torch.rand(self.batch_size, generator=self.generator, device=where) < 0.5
        return rows, flip

    def draw(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's images x0 (B/world, C, H, W) and conditions (None when unconditional), on the
        training device."""
        rows, flip = self.draw_rows()
        rows = rows[self.local]
        idx = rows if self.condition_image is None else self.condition_image[rows]
        x0 = self.images[idx]
        if flip is not None:
            x0 = torch.where(flip[self.local, None, None, None], x0.flip(-1), x0)
        x0 = x0.to(self.device, non_blocking=True)
        if self.labels is None:
            y = None
        elif self.condition_image is None:
            y = self.labels[idx].to(self.device, non_blocking=True)
        else:
            # Caption tables can be large, so they may stay on the host while the images are on the device.
            y = self.labels[rows.to(self.labels.device)].to(self.device, non_blocking=True)
        return x0, y
