"""The dataset container: images (or latents) with integer labels, validated on construction.

The array conventions it enforces are listed in :mod:`diffusion_curriculum.data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LATENTS", "PIXELS", "ImageDataset"]

PIXELS = "pixels"
LATENTS = "latents"


@dataclass
class ImageDataset:
    """Images (or latents) with integer labels.

    Attributes:
        images: ``uint8 (N, H, W, C)`` when ``kind == "pixels"``; ``float32 (N, C, H, W)`` when
            ``kind == "latents"``.
        labels: ``int64 (N,)``; class indices ``0..num_classes-1``, or all ``-1`` when unlabeled.
        num_classes: number of classes, ``0`` for unlabeled data.
        source: free-form provenance string, e.g. ``"mnist"`` or ``"image_folder:/data/faces"``.
        kind: ``"pixels"`` or ``"latents"``.

    The constructor validates all of the above and raises ``ValueError`` on any mismatch, so a dataset
    that exists is a dataset that follows the conventions.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    source: str
    kind: str = PIXELS

    def __post_init__(self) -> None:
        if self.kind not in (PIXELS, LATENTS):
            raise ValueError(f"kind must be {PIXELS!r} or {LATENTS!r}, got {self.kind!r}")
        images = np.asarray(self.images)
        if images.ndim != 4:
            raise ValueError(f"images must be 4-D, got shape {images.shape}")
        if self.kind == PIXELS:
            if images.dtype != np.uint8:
                raise ValueError(f"pixel images must be uint8 (N,H,W,C), got dtype {images.dtype}")
            if images.shape[-1] not in (1, 3):
                raise ValueError(f"pixel images must be (N,H,W,C) with C in (1, 3), got shape {images.shape}")
        elif images.dtype != np.float32:
            raise ValueError(f"latents must be float32 (N,C,H,W), got dtype {images.dtype}")
        self.images = images

        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        self.labels = labels.astype(np.int64, copy=False)

        self.num_classes = int(self.num_classes)
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.num_classes == 0:
            if np.any(self.labels != -1):
                raise ValueError("unlabeled data (num_classes=0) must have every label equal to -1")
        elif self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1}, got range "
                f"{self.labels.min()}..{self.labels.max()}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labeled(self) -> bool:
        """Whether the dataset carries class labels."""
        return self.num_classes > 0

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(H, W, C)`` for pixels, ``(C, H, W)`` for latents."""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def channels(self) -> int:
        """Number of channels, whatever the layout."""
        return int(self.images.shape[-1] if self.kind == PIXELS else self.images.shape[1])

    @property
    def resolution(self) -> tuple[int, int]:
        """Spatial size ``(H, W)``, whatever the layout."""
        s = self.images.shape
        return (int(s[1]), int(s[2])) if self.kind == PIXELS else (int(s[2]), int(s[3]))

    def class_counts(self) -> list[int]:
        """Number of samples per class (empty list for unlabeled data)."""
        if not self.labeled:
            return []
        return np.bincount(self.labels, minlength=self.num_classes).astype(int).tolist()

    def select(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """Return a new dataset holding the samples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.images[idx], self.labels[idx], self.num_classes, self.source, self.kind)
