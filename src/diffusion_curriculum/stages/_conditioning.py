"""What a model is conditioned on (``model.condition``), shared by train, train_expert and sample.

``class`` uses the data set's labels; ``text`` the caption embeddings that prepare_data validated and
copied to ``captions.parquet`` (an empty table when ``data.captions_path`` is null); ``none`` neither.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion_curriculum import captions as caption_io
from diffusion_curriculum import data

from .params import ParamsError


def write_no_captions(path: Path) -> None:
    """The captions output of a data set without captions: the same columns, no rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from diffusion_curriculum.io import atomic_path

    table = pa.table(
        {"image": pa.array([], type=pa.int64()), "embedding": pa.array([], type=pa.list_(pa.float32()))}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_text_captions(path: str | Path, num_images: int, params_file: str) -> caption_io.CaptionEmbeddings:
    import pyarrow.parquet as pq

    if pq.ParquetFile(path).metadata.num_rows == 0:
        raise ParamsError(
            f"{params_file}: model.condition is text but {path} holds no captions (set data.captions_path "
            "and rerun prepare_data)"
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
    model_cfg: dict, dataset: data.ImageDataset, captions_path: str | None, params_file: str
) -> Conditioning:
    kind = model_cfg["condition"]
    if kind == "none":
        return Conditioning(arch={"num_classes": 0, "text_dim": 0, "text_tokens": 1})
    if kind == "class":
        if not dataset.labeled:
            raise ParamsError(f"{params_file}: model.condition is class but the data set has no labels")
        return Conditioning(
            arch={"num_classes": dataset.num_classes, "text_dim": 0, "text_tokens": 1},
            labels=torch.from_numpy(dataset.labels.copy()),
        )
    if captions_path is None:
        raise ParamsError(f"{params_file}: model.condition is text but no --captions file was given")
    caps = read_text_captions(captions_path, len(dataset), params_file)
    return Conditioning(
        arch={"num_classes": 0, "text_dim": caps.dim, "text_tokens": caps.tokens},
        text_null=torch.from_numpy(caps.null) if caps.null is not None else None,
        labels=torch.from_numpy(caps.embeddings),
        condition_image=torch.from_numpy(caps.image_index),
        digest=hashlib.sha256(Path(captions_path).read_bytes()).hexdigest(),
    )
