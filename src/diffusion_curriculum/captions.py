"""Caption embeddings for text conditioning, computed by a text encoder elsewhere and stored in Parquet.

The library never runs a text encoder: the user embeds the captions (CLIP, T5, ...) and hands over a
Parquet file with one row per caption,

* ``image``     int64, the row of the captioned image in the prepared data set; ``-1`` marks the one
                optional *null* row, the encoder's embedding of the empty caption;
* ``embedding`` ``list<float>`` of length D (a pooled embedding, T = 1), or ``list<list<float>>`` of T
                lists of D (a token sequence, e.g. an encoder's last hidden states padded to T tokens).

Other columns (the caption text, say) are ignored.  An image may have several captions (MS-COCO has five);
every image must have at least one, so that training on captions sees the whole data set.  The null row,
when present, becomes the fixed null caption of classifier-free guidance (Ho & Salimans 2022) in
:class:`~diffusion_curriculum.models.layers.TextEmbedder`; without it the network learns one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputFileError
from .io import atomic_path

__all__ = ["NULL_IMAGE", "CaptionEmbeddings", "read_captions", "sampling_captions", "write_captions"]

#: The ``image`` value of the null (empty-caption) row.
NULL_IMAGE = -1

# How many offending rows / images an error message lists.
_SHOWN = 5


@dataclass
class CaptionEmbeddings:
    """Caption embeddings and the images they describe.

    Attributes:
        embeddings: float32 (K, T, D); T = 1 for pooled embeddings.
        image_index: int64 (K,), the data-set row of each caption's image.
        null: float32 (T, D), the encoder's embedding of the empty caption, or None.
    """

    embeddings: np.ndarray
    image_index: np.ndarray
    null: np.ndarray | None = None

    def __post_init__(self) -> None:
        embeddings = np.asarray(self.embeddings)
        if embeddings.ndim != 3 or 0 in embeddings.shape:
            raise ValueError(
                f"caption embeddings must have shape (K, T, D), all >= 1; got {embeddings.shape}"
            )
        self.embeddings = _finite_float32(embeddings, "caption embeddings")

        index = np.asarray(self.image_index)
        if index.shape != (embeddings.shape[0],):
            raise ValueError(
                f"image_index must have shape ({embeddings.shape[0]},), one image per caption; "
                f"got {index.shape}"
            )
        if not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"image_index must hold integers, got dtype {index.dtype}")
        if index.min() < 0:
            raise ValueError(f"image_index must be >= 0, got {index.min()} (caption {int(index.argmin())})")
        self.image_index = index.astype(np.int64, copy=False)

        if self.null is not None:
            null = np.asarray(self.null)
            if null.shape != embeddings.shape[1:]:
                raise ValueError(
                    f"null embedding must have shape (T, D) = {embeddings.shape[1:]}, like each caption; "
                    f"got {null.shape}"
                )
            self.null = _finite_float32(null, "null embedding")

    @property
    def tokens(self) -> int:
        """T, the embeddings per caption (1 when pooled)."""
        return int(self.embeddings.shape[1])

    @property
    def dim(self) -> int:
        """D, the size of one embedding."""
        return int(self.embeddings.shape[2])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


def _finite_float32(array: np.ndarray, what: str) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{what} must be numbers, got dtype {array.dtype}")
    # Checked after the cast: a float64 value beyond float32's range would become inf.
    array = array.astype(np.float32, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{what} have {int(bad.sum())} non-finite values (the first in row {first})")
    return array


# --------------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------------


def read_captions(path: str | os.PathLike[str], num_images: int) -> CaptionEmbeddings:
    """Read and validate the caption Parquet at ``path`` for a data set of ``num_images`` images.

    Raises InputFileError (a ValueError naming the file) for a missing file, a missing ``image``
    or ``embedding`` column, embeddings of unequal length, image values outside ``-1..num_images-1``, more
    than one null row, images without any caption, and null or non-finite values.
    """
    import pyarrow.parquet as pq

    file = Path(path)
    if not file.is_file():
        raise InputFileError(file, "caption embeddings file not found")
    try:
        table = pq.read_table(file)
    except Exception as exc:  # arrow's errors for a damaged or foreign file
        raise InputFileError(file, f"not a readable Parquet table ({type(exc).__name__}: {exc})") from exc
    missing = [name for name in ("image", "embedding") if name not in table.column_names]
    if missing:
        raise InputFileError(
            file,
            f"has no column {' or '.join(map(repr, missing))}; "
            f"it has {table.column_names}, and needs 'image' (int64) and 'embedding' (list<float>)",
        )

    image = _image_column(table.column("image"), file)
    embeddings = _embedding_column(table.column("embedding"), file)

    bad = (image < NULL_IMAGE) | (image >= num_images)
    if bad.any():
        values = np.unique(image[bad])[:_SHOWN].tolist()
        raise InputFileError(
            file,
            f"{int(bad.sum())} rows have an image outside 0..{num_images - 1} "
            f"(the {num_images} images of the data set; {NULL_IMAGE} marks the null caption), e.g. {values}",
        )
    is_null = image == NULL_IMAGE
    if is_null.sum() > 1:
        rows = np.flatnonzero(is_null)[:_SHOWN].tolist()
        raise InputFileError(
            file,
            f"has {int(is_null.sum())} null-caption rows (image = {NULL_IMAGE}, "
            f"rows {rows}...); at most one is allowed",
        )
    uncaptioned = np.flatnonzero(np.bincount(image[~is_null], minlength=num_images) == 0)
    if uncaptioned.size:
        raise InputFileError(
            file,
            f"{uncaptioned.size} of the {num_images} images have no caption "
            f"(e.g. images {uncaptioned[:_SHOWN].tolist()}); every image needs at least one",
        )
    bad_values = ~np.isfinite(embeddings)
    if bad_values.any():
        row = int(np.argwhere(bad_values)[0][0])
        raise InputFileError(
            file,
            f"has {int(bad_values.sum())} non-finite embedding values "
            f"(the first in row {row}, image {int(image[row])})",
        )
    null = embeddings[is_null][0] if is_null.any() else None
    return CaptionEmbeddings(embeddings[~is_null], image[~is_null], null)


def _image_column(column: Any, file: Path) -> np.ndarray:
    import pyarrow as pa

    if not pa.types.is_integer(column.type):
        raise InputFileError(file, f"column 'image' must hold integers (int64), got {column.type}")
    if column.null_count:
        raise InputFileError(file, f"column 'image' has {column.null_count} null values")
    return column.to_numpy().astype(np.int64)


def _embedding_column(column: Any, file: Path) -> np.ndarray:
    """The ``embedding`` column as float32 (K, T, D): T = 1 for ``list<float>``."""
    import pyarrow as pa

    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if array.null_count:
        raise InputFileError(file, f"column 'embedding' has {array.null_count} null rows")
    if not _is_list(array.type):
        raise InputFileError(
            file, f"column 'embedding' must be list<float> or list<list<float>>, got {array.type}"
        )
    k = len(array)
    if _is_list(array.type.value_type):
        tokens = _equal_lengths(array, file, "token sequences")
        inner = array.flatten()
        dim = _equal_lengths(inner, file, "token embeddings", per_row=tokens)
        values = inner.flatten()
    else:
        tokens, dim = 1, _equal_lengths(array, file, "embeddings")
        values = array.flatten()
    if not pa.types.is_floating(values.type) and not pa.types.is_integer(values.type):
        raise InputFileError(file, f"column 'embedding' holds {values.type}, not numbers")
    if values.null_count:
        raise InputFileError(file, f"column 'embedding' has {values.null_count} null values")
    if k and dim == 0:
        raise InputFileError(file, "column 'embedding' holds empty embeddings")
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(k, tokens, dim)


def _is_list(data_type: Any) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_list(data_type)
        or pa.types.is_large_list(data_type)
        or pa.types.is_fixed_size_list(data_type)
    )


def _equal_lengths(array: Any, file: Path, what: str, per_row: int = 1) -> int:
    """The common length of the lists in ``array`` (``per_row`` of them per Parquet row); ValueError
    naming the lengths and the first row that differs."""
    import pyarrow.compute as pc

    if array.null_count:
        raise InputFileError(file, f"column 'embedding' has {array.null_count} null {what}")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if lengths.size == 0:
        return 0
    odd = np.flatnonzero(lengths != lengths[0])
    if odd.size:
        raise InputFileError(
            file,
            f"column 'embedding' is ragged: {what} have lengths "
            f"{sorted(set(lengths.tolist()))[:_SHOWN]} (row 0 has {lengths[0]}, row {odd[0] // per_row} has "
            f"{lengths[odd[0]]}); all must have the same length",
        )
    return int(lengths[0])


def write_captions(captions: CaptionEmbeddings, path: str | os.PathLike[str]) -> None:
    """Store ``captions`` atomically in the format :func:`read_captions` reads (exactly, float32).

    T = 1 is written as ``list<float>`` (pooled), T > 1 as ``list<list<float>>``; the null caption, if
    any, is the last row, with image ``-1``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    embeddings, image = captions.embeddings, captions.image_index
    if captions.null is not None:
        embeddings = np.concatenate([embeddings, captions.null[None]])
        image = np.concatenate([image, [NULL_IMAGE]])
    k, tokens, dim = embeddings.shape
    values = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1), type=pa.float32())
    column = _list_array(values, k * tokens, dim)
    if tokens > 1:
        column = _list_array(column, k, tokens)
    table = pa.table({"image": pa.array(image.astype(np.int64), type=pa.int64()), "embedding": column})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _list_array(values: Any, count: int, length: int) -> Any:
    """``count`` lists of ``length`` consecutive ``values``; 64-bit offsets only when 32 bits overflow."""
    import pyarrow as pa

    offsets = np.arange(count + 1, dtype=np.int64) * length
    if offsets[-1] < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def sampling_captions(captions: CaptionEmbeddings, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``num`` captions to generate from: (embeddings float32 (num, T, D), image_index int64 (num,)).

    A random permutation of the captions (seeded by ``seed``), repeated in the same order when ``num``
    exceeds their number, so each caption is used as evenly as possible and a seed fixes the choice.
    """
    if num < 0:
        raise ValueError(f"number of sampling captions must be >= 0, got {num}")
    order = np.random.default_rng(seed).permutation(len(captions))
    rows = order[np.arange(num) % len(captions)]
    return captions.embeddings[rows], captions.image_index[rows]
