"""Parquet storage: datasets as one row per sample, their content hash and manifest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileError
from ..io import atomic_path
from .dataset import ImageDataset

__all__ = ["content_hash", "dataset_manifest", "read_parquet", "write_parquet"]

# Key of the JSON blob stored in the Parquet schema metadata; versioned so the layout can evolve.
_PARQUET_META_KEY = b"diffusion_curriculum.dataset"
_PARQUET_FORMAT_VERSION = 1
_HASH_DOMAIN = b"diffusion_curriculum.dataset/v1\n"


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
            raise InputFileError(file, "has null images")
        _, off_buf, data_buf = chunk.buffers()
        # binary has int32 offsets, large_binary int64; accept both so other writers' files also load.
        off_dtype = np.int64 if chunk.type.equals(pa.large_binary()) else np.int32
        offsets = np.frombuffer(off_buf, dtype=off_dtype)[chunk.offset : chunk.offset + len(chunk) + 1]
        if np.any(np.diff(offsets) != per_sample):
            raise InputFileError(file, f"has image values that are not {per_sample} bytes long")
        if len(chunk):
            parts.append(np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]])
    data = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint8)
    if data.size != n * per_sample:
        raise InputFileError(file, f"holds {data.size} image bytes, expected {n * per_sample}")
    return data


def read_parquet(path: str | os.PathLike[str]) -> ImageDataset:
    """Read a dataset written by :func:`write_parquet`, reconstructing the exact arrays and dtypes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = Path(path)
    if not file.exists():
        raise InputFileError(file, "Parquet dataset not found")
    try:
        table = pq.read_table(file)
    except Exception as exc:
        raise InputFileError(file, f"not a readable Parquet table ({type(exc).__name__}: {exc})") from exc

    raw_meta = (table.schema.metadata or {}).get(_PARQUET_META_KEY)
    if raw_meta is None:
        raise InputFileError(file, "was not written by write_parquet (no dataset metadata)")
    try:
        meta = json.loads(raw_meta)
        shape = tuple(int(s) for s in meta["shape"])
        dtype = np.dtype(meta["dtype"])
        kind, source, count = meta["kind"], meta["source"], int(meta["count"])
        num_classes = int(meta["num_classes"])
    except Exception as exc:
        raise InputFileError(file, f"has malformed dataset metadata: {exc}") from exc
    if meta.get("format_version") != _PARQUET_FORMAT_VERSION:
        raise InputFileError(file, f"has unsupported format_version {meta.get('format_version')!r}")
    if set(table.column_names) != {"image", "label"}:
        raise InputFileError(file, f"has columns {table.column_names}, expected image and label")
    image_type = table.schema.field("image").type
    if image_type not in (pa.binary(), pa.large_binary()):
        raise InputFileError(file, f"has image column of type {image_type}, expected binary")
    n = table.num_rows
    if n != count:
        raise InputFileError(file, f"has {n} rows but its metadata says {count}")

    per_sample = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = _column_bytes(table.column("image"), n, per_sample, file)
    # Stored little-endian; .astype to the native dtype is a no-op on little-endian machines.
    images = data.view(dtype.newbyteorder("<")).reshape((n, *shape)).astype(dtype)
    labels = table.column("label").to_numpy().astype(np.int64)
    try:
        return ImageDataset(images, labels, num_classes, source, kind)
    except ValueError as exc:
        raise InputFileError(file, f"holds an invalid dataset: {exc}") from exc
