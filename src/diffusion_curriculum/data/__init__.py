"""Datasets: loading, subsetting, Parquet storage and conversion to training tensors.

Array conventions (one of each, everywhere in the library):

* **pixels**  -- ``ImageDataset.images`` is ``uint8`` with shape ``(N, H, W, C)`` (channels last, as image
  files and PIL store them), ``C`` is 1 or 3, values 0..255.
* **latents** -- ``ImageDataset.images`` is ``float32`` with shape ``(N, C, H, W)`` (channels first, as
  the autoencoder produced them), any finite values.
* **labels**  -- always an ``int64`` array of shape ``(N,)``.  Labeled data has ``num_classes = K > 0`` and
  labels in ``0..K-1``; unlabeled data has ``num_classes = 0`` and every label ``-1``.  (Using ``-1``
  instead of ``None`` keeps the Parquet column and the subsetting code free of special cases.)

The network sees ``(N, C, H, W)`` float tensors: :func:`to_training_tensor` scales pixels to ``[-1, 1]``
and passes latents through; :func:`to_uint8_images` maps generated ``[-1, 1]`` images back to pixels.

The package is three modules around one container (:mod:`.dataset`): :mod:`.loaders` (sources by name,
never downloading anything), :mod:`.transforms` (subset, resize, channels, tensors) and :mod:`.storage`
(Parquet, content hash, manifest).  Everything is re-exported here, so callers write
``from diffusion_curriculum import data; data.read_parquet(...)``.
"""

from .dataset import LATENTS, PIXELS, ImageDataset
from .loaders import (
    IMAGE_EXTENSIONS,
    SOURCES,
    load_cifar10,
    load_dataset,
    load_image_folder,
    load_latents,
    load_mnist_embedded,
    load_sklearn_digits,
)
from .storage import content_hash, dataset_manifest, read_parquet, write_parquet
from .transforms import (
    convert_channels,
    image_grid,
    preview_grid,
    resize_images,
    subset,
    to_training_tensor,
    to_uint8_images,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "LATENTS",
    "PIXELS",
    "SOURCES",
    "ImageDataset",
    "content_hash",
    "convert_channels",
    "image_grid",
    "dataset_manifest",
    "load_cifar10",
    "load_dataset",
    "load_image_folder",
    "load_latents",
    "load_mnist_embedded",
    "load_sklearn_digits",
    "preview_grid",
    "read_parquet",
    "resize_images",
    "subset",
    "to_training_tensor",
    "to_uint8_images",
    "write_parquet",
]
