"""Transforms: subsetting, resizing and channel conversion, and the conversion to and from tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from .dataset import PIXELS, ImageDataset

__all__ = [
    "convert_channels",
    "image_grid",
    "preview_grid",
    "resize_images",
    "subset",
    "to_training_tensor",
    "to_uint8_images",
]


def subset(dataset: ImageDataset, max_images: int | None, seed: int = 0) -> ImageDataset:
    """At most ``max_images`` samples, class-balanced when labeled, deterministic given ``seed``.

    Labeled data: classes take turns (in a seed-dependent order) contributing a random, not yet chosen
    sample, so class counts differ by at most one unless a class runs out, whose share then goes to the
    others.  Unlabeled data: a uniform random subset.  Selected samples keep their original order.
    ``max_images=None`` or ``>= len(dataset)`` returns the dataset unchanged.
    """
    n = len(dataset)
    if max_images is None or max_images >= n:
        return dataset
    if int(max_images) != max_images or max_images < 1:
        raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
    m = int(max_images)
    rng = np.random.default_rng(seed)
    if not dataset.labeled:
        chosen = rng.choice(n, size=m, replace=False)
    else:
        # Rank every sample within its class by a random permutation; ordering by (rank, class priority)
        # interleaves the classes round-robin, and the first m of that order is a balanced subset.
        order = rng.permutation(n)
        labels = dataset.labels[order]
        rank = np.empty(n, dtype=np.int64)
        for c in range(dataset.num_classes):
            members = np.flatnonzero(labels == c)
            rank[members] = np.arange(members.size)
        priority = rng.permutation(dataset.num_classes)[labels]
        chosen = order[np.lexsort((priority, rank))[:m]]
    return dataset.select(np.sort(chosen))


def resize_images(dataset: ImageDataset, image_size: int) -> ImageDataset:
    """Resize square pixel images to ``image_size`` x ``image_size`` (Lanczos); a no-op if already so.

    Used e.g. to scale MNIST's 28x28 up to 32x32 for U-Nets that halve the resolution several times.
    """
    if dataset.kind != PIXELS:
        raise ValueError("resize_images only applies to pixel datasets, not latents")
    h, w = dataset.resolution
    if h != w:
        raise ValueError(f"resize_images expects square images, got {h}x{w}")
    if h == image_size:
        return dataset
    from PIL import Image

    c = dataset.channels
    out = np.empty((len(dataset), image_size, image_size, c), dtype=np.uint8)
    for i, img in enumerate(dataset.images):
        pil = Image.fromarray(img[..., 0] if c == 1 else img)
        out[i] = np.asarray(pil.resize((image_size, image_size), Image.Resampling.LANCZOS)).reshape(
            image_size, image_size, c
        )
    return ImageDataset(out, dataset.labels, dataset.num_classes, dataset.source, PIXELS)


def convert_channels(dataset: ImageDataset, channels: int) -> ImageDataset:
    """Convert pixel images to 1 (ITU-R 601 luma, as PIL's "L") or 3 (gray replicated) channels."""
    if dataset.kind != PIXELS:
        raise ValueError("convert_channels only applies to pixel datasets, not latents")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if dataset.channels == channels:
        return dataset
    if channels == 3:
        images = np.repeat(dataset.images, 3, axis=-1)
    else:
        rgb = dataset.images.astype(np.uint32)
        # Integer weights summing to 1000 reproduce PIL's RGB->L conversion without float drift.
        luma = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000
        images = luma.astype(np.uint8)[..., None]
    return ImageDataset(images, dataset.labels, dataset.num_classes, dataset.source, PIXELS)


# --------------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------------


def to_training_tensor(dataset: ImageDataset) -> tuple[Any, Any]:
    """``(x, y)`` for training: ``x`` float32 ``(N, C, H, W)``, ``y`` int64 ``(N,)`` or ``None`` if unlabeled.

    Pixels are mapped linearly from 0..255 to ``[-1, 1]``; latents are copied unchanged.
    """
    import torch

    if dataset.kind == PIXELS:
        # from_numpy warns on read-only arrays (e.g. memory-mapped); the float conversion copies anyway.
        images = dataset.images if dataset.images.flags.writeable else dataset.images.copy()
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32)
        x = (x / 127.5 - 1.0).contiguous()
    else:
        # Copy so that in-place ops on the tensor cannot silently modify the dataset.
        x = torch.from_numpy(dataset.images.copy())
    y = torch.from_numpy(dataset.labels.copy()) if dataset.labeled else None
    return x, y


def to_uint8_images(x: Any) -> np.ndarray:
    """Inverse of :func:`to_training_tensor` for pixels: ``(N, C, H, W)`` in ``[-1, 1]`` -> uint8 NHWC.

    Values are rounded to the nearest level and clipped to 0..255 (samples overshoot the range slightly).
    Non-finite values raise ``ValueError``: a NaN image means the model diverged, which must not be
    silently turned into grey pixels that still produce a metric.
    """
    import torch

    t = torch.as_tensor(x).detach()
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, C, H, W) with C in (1, 3), got {tuple(t.shape)}")
    t = t.to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError("images contain NaN or infinite values")
    levels = ((t + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return levels.permute(0, 2, 3, 1).contiguous().numpy()


def image_grid(images: np.ndarray, columns: int = 10):
    """Tile NHWC uint8 images into one picture (a ``PIL.Image``)."""
    from PIL import Image

    n, h, w, c = images.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, columns)
        canvas[r * h : (r + 1) * h, q * w : (q + 1) * w] = img
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def preview_grid(x: Any, pixels: bool, count: int = 100, columns: int = 10):
    """The first ``count`` generated samples ``x`` (N, C, H, W) as one picture: ``pixels`` (in
    ``[-1, 1]``) as they are, latents by their first three channels, each rescaled to its own range."""
    import torch

    x = torch.as_tensor(x)[:count]
    if not pixels:
        x = x[:, :3]
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = 2 * (x - lo) / (hi - lo).clamp_min(1e-8) - 1
    return image_grid(to_uint8_images(x), columns)
