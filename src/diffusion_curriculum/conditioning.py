"""What a model is conditioned on: class labels, caption embeddings, or nothing.

``class`` uses the data set's labels; ``text`` the caption embeddings that prepare_data validated and
copied to ``captions.parquet`` (an empty table when the data set has no captions); ``none`` neither.
Shared by the trainers (:func:`training_conditioning`) and sampling (:func:`read_text_captions`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import captions as caption_io
from . import data
from .errors import SettingError


def write_no_captions(path: Path) -> None:
    """The captions output of a data set without captions: the same columns, no rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .io import atomic_path

    table = pa.table(
        {"image": pa.array([], type=pa.int64()), "embedding": pa.array([], type=pa.list_(pa.float32()))}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_text_captions(path: str | Path, num_images: int, source: str) -> caption_io.CaptionEmbeddings:
    """The caption embeddings of a text-conditional model; ``source`` names the setting that asked for
    text conditioning (in the error when the file holds none)."""
    import pyarrow.parquet as pq

    if pq.ParquetFile(path).metadata.num_rows == 0:
        raise SettingError(
            f"{source} is text but {path} holds no captions (prepare_data wrote it without captions)"
        )
    return caption_io.read_captions(path, num_images)


@dataclass
class Conditioning:
    """The conditioning of one training run: network arguments and what train_loop draws from."""

    arch: dict  # num_classes, text_dim, text_tokens: stored in the model file, rebuilds the network
    text_null: torch.Tensor | None = None  # the encoder's empty caption; a buffer, so not in `arch`
    labels: torch.Tensor | None = None  # (N,) class ids, or (K, T, D) caption embeddings
    condition_image: torch.Tensor | None = None  # (K,) the image of each caption
    digest: str = field(default="")  # identifies the captions for the run's fingerprint

    def to(self, device: str) -> Conditioning:
        if self.labels is not None:
            self.labels = self.labels.to(device)
        if self.condition_image is not None:
            self.condition_image = self.condition_image.to(device)
        return self


def training_conditioning(
    kind: str, dataset: data.ImageDataset, captions_path: str | None, source: str = "condition"
) -> Conditioning:
    """The conditioning ``kind`` (``none``, ``class`` or ``text``) on ``dataset``; text reads the caption
    embeddings in ``captions_path``.  ``source`` names the setting that chose ``kind`` in errors."""
    if kind == "none":
        return Conditioning(arch={"num_classes": 0, "text_dim": 0, "text_tokens": 1})
    if kind == "class":
        if not dataset.labeled:
            raise SettingError(f"{source} is class but the data set has no labels")
        return Conditioning(
            arch={"num_classes": dataset.num_classes, "text_dim": 0, "text_tokens": 1},
            labels=torch.from_numpy(dataset.labels.copy()),
        )
    if captions_path is None:
        raise SettingError(f"{source} is text but no --captions file was given")
    caps = read_text_captions(captions_path, len(dataset), source)
    return Conditioning(
        arch={"num_classes": 0, "text_dim": caps.dim, "text_tokens": caps.tokens},
        text_null=torch.from_numpy(caps.null) if caps.null is not None else None,
        labels=torch.from_numpy(caps.embeddings),
        condition_image=torch.from_numpy(caps.image_index),
        digest=hashlib.sha256(Path(captions_path).read_bytes()).hexdigest(),
    )
