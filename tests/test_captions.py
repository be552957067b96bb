"""Caption embeddings in Parquet (diffusion_curriculum.captions): the round trip, the two embedding forms,
the null row, and an error naming the file and the problem for every way a user's file can be wrong."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffusion_curriculum.captions import (
    NULL_IMAGE,
    CaptionEmbeddings,
    read_captions,
    sampling_captions,
    write_captions,
)
from diffusion_curriculum.errors import InputFileError


def make_captions(tokens: int, dim: int = 5, per_image: int = 2, num_images: int = 4, null: bool = True):
    rng = np.random.default_rng(tokens)
    k = per_image * num_images
    return CaptionEmbeddings(
        rng.normal(size=(k, tokens, dim)).astype(np.float32),
        np.tile(np.arange(num_images), per_image),
        rng.normal(size=(tokens, dim)).astype(np.float32) if null else None,
    )


def write_user_file(path, image, embedding, **extra):
    """A Parquet file as a user would write it: Python lists, Arrow infers the types."""
    pq.write_table(
        pa.table({"image": pa.array(image, type=pa.int64()), "embedding": embedding, **extra}), path
    )
    return path


# --------------------------------------------------------------------------- round trip and forms


@pytest.mark.parametrize("tokens", [1, 4])
@pytest.mark.parametrize("null", [True, False])
def test_write_read_round_trip_is_exact(tmp_path, tokens, null):
    captions = make_captions(tokens, null=null)
    write_captions(captions, tmp_path / "c.parquet")
    back = read_captions(tmp_path / "c.parquet", num_images=4)
    assert back.embeddings.dtype == np.float32 and back.image_index.dtype == np.int64
    np.testing.assert_array_equal(back.embeddings, captions.embeddings)
    np.testing.assert_array_equal(back.image_index, captions.image_index)
    if null:
        np.testing.assert_array_equal(back.null, captions.null)
    else:
        assert back.null is None
    assert (back.tokens, back.dim, len(back)) == (tokens, 5, 8)


def test_written_types_are_the_documented_ones(tmp_path):
    write_captions(make_captions(1), tmp_path / "pooled.parquet")
    write_captions(make_captions(3), tmp_path / "sequence.parquet")
    pooled = pq.read_table(tmp_path / "pooled.parquet")
    sequence = pq.read_table(tmp_path / "sequence.parquet")
    assert pooled.schema.field("embedding").type == pa.list_(pa.float32())
    assert sequence.schema.field("embedding").type == pa.list_(pa.list_(pa.float32()))
    assert pooled.schema.field("image").type == pa.int64()
    assert pooled.column("image").to_pylist()[-1] == NULL_IMAGE  # the null row is the last one


def test_user_pooled_and_sequence_files_with_extra_columns(tmp_path):
    pooled = write_user_file(
        tmp_path / "pooled.parquet",
        [1, 0, -1, 1],
        [[1.0, 2.0], [3.0, 4.0], [0.0, 0.5], [5.0, 6.0]],
        caption=["a", "b", "", "c"],  # other columns, e.g. the text itself, are ignored
    )
    captions = read_captions(pooled, num_images=2)
    assert captions.embeddings.shape == (3, 1, 2)
    np.testing.assert_array_equal(captions.image_index, [1, 0, 1])  # file order, null row removed
    np.testing.assert_array_equal(captions.embeddings[:, 0], [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(captions.null, [[0.0, 0.5]])

    sequence = write_user_file(
        tmp_path / "sequence.parquet",
        [0, 1],
        [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[7.0, 8.0, 9.0], [1.0, 1.0, 1.0]]],
    )
    captions = read_captions(sequence, num_images=2)
    assert captions.embeddings.shape == (2, 2, 3) and captions.null is None
    np.testing.assert_array_equal(captions.embeddings[0], [[1, 2, 3], [4, 5, 6]])


def test_float64_and_fixed_size_lists_are_accepted(tmp_path):
    values = pa.array(np.arange(6, dtype=np.float64))
    path = tmp_path / "fixed.parquet"
    pq.write_table(
        pa.table({"image": pa.array([0, 1, 2]), "embedding": pa.FixedSizeListArray.from_arrays(values, 2)}),
        path,
    )
    captions = read_captions(path, num_images=3)
    assert captions.embeddings.dtype == np.float32
    np.testing.assert_array_equal(captions.embeddings[:, 0], [[0, 1], [2, 3], [4, 5]])


# --------------------------------------------------------------------------- errors name the file and problem


def _error(path, num_images, exc=ValueError):
    with pytest.raises(exc) as info:
        read_captions(path, num_images)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.parquet", 1, InputFileError)


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_text("not parquet")
    assert "not a readable Parquet table" in _error(path, 1, InputFileError)


@pytest.mark.parametrize("column", ["image", "embedding"])
def test_missing_column(tmp_path, column):
    table = {"image": pa.array([0], type=pa.int64()), "embedding": [[1.0]]}
    del table[column]
    pq.write_table(pa.table(table), tmp_path / "c.parquet")
    message = _error(tmp_path / "c.parquet", 1)
    assert f"no column '{column}'" in message


def test_wrong_column_types(tmp_path):
    path = write_user_file(tmp_path / "c.parquet", [0], [1.0])
    assert "list<float>" in _error(path, 1)
    pq.write_table(pa.table({"image": ["zero"], "embedding": [[1.0]]}), tmp_path / "s.parquet")
    assert "'image' must hold integers" in _error(tmp_path / "s.parquet", 1)


@pytest.mark.parametrize(
    ("embedding", "what"),
    [
        ([[1.0, 2.0], [3.0]], "embeddings have lengths [1, 2]"),
        ([[[1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]], "token sequences have lengths [1, 2]"),
        ([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0]]], "token embeddings have lengths [1, 2]"),
    ],
)
def test_ragged_embeddings(tmp_path, embedding, what):
    message = _error(write_user_file(tmp_path / "c.parquet", [0, 1], embedding), 2)
    assert "ragged" in message and what in message and "row 1" in message


def test_image_index_out_of_range(tmp_path):
    path = write_user_file(tmp_path / "c.parquet", [0, 1, 2, 7], [[1.0]] * 4)
    message = _error(path, 3)
    assert "outside 0..2" in message and "[7]" in message
    path = write_user_file(tmp_path / "n.parquet", [0, -2], [[1.0]] * 2)
    assert "[-2]" in _error(path, 1)


def test_more_than_one_null_row(tmp_path):
    path = write_user_file(tmp_path / "c.parquet", [0, -1, -1], [[1.0]] * 3)
    message = _error(path, 1)
    assert "2 null-caption rows" in message and "at most one" in message


def test_images_without_caption_are_counted_and_listed(tmp_path):
    path = write_user_file(tmp_path / "c.parquet", [0, 0, 3, -1], [[1.0]] * 4)
    message = _error(path, 10)
    assert "8 of the 10 images have no caption" in message and "[1, 2, 4, 5, 6]" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values(tmp_path, bad):
    path = write_user_file(tmp_path / "c.parquet", [0, 1], [[1.0, 2.0], [3.0, bad]])
    message = _error(path, 2)
    assert "non-finite" in message and "row 1" in message


def test_null_values(tmp_path):
    path = write_user_file(tmp_path / "c.parquet", [0, 1], [[1.0, None], [3.0, 4.0]])
    assert "null values" in _error(path, 2)
    path = write_user_file(tmp_path / "r.parquet", [0, 1], [[1.0, 2.0], None])
    assert "null rows" in _error(path, 2)


# --------------------------------------------------------------------------- the dataclass


def test_dataclass_validation():
    good = np.zeros((2, 1, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\(K, T, D\)"):
        CaptionEmbeddings(np.zeros((2, 3), dtype=np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"image_index must have shape \(2,\)"):
        CaptionEmbeddings(good, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=">= 0"):
        CaptionEmbeddings(good, np.array([0, -1]))
    with pytest.raises(ValueError, match="integers"):
        CaptionEmbeddings(good, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="non-finite"):
        CaptionEmbeddings(np.full((2, 1, 3), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"null embedding must have shape \(T, D\) = \(1, 3\)"):
        CaptionEmbeddings(good, np.array([0, 1]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="null embedding have 1 non-finite"):
        CaptionEmbeddings(good, np.array([0, 1]), np.array([[0.0, np.inf, 0.0]]))
    # float64 in, float32 stored.
    assert CaptionEmbeddings(good.astype(np.float64), np.array([0, 1])).embeddings.dtype == np.float32


# --------------------------------------------------------------------------- sampling captions


def test_sampling_captions_is_reproducible_and_cycles_a_permutation():
    captions = make_captions(2)  # 8 captions
    a_emb, a_idx = sampling_captions(captions, 20, seed=3)
    b_emb, b_idx = sampling_captions(captions, 20, seed=3)
    np.testing.assert_array_equal(a_emb, b_emb)
    np.testing.assert_array_equal(a_idx, b_idx)
    assert a_emb.shape == (20, 2, 5) and a_emb.dtype == np.float32 and a_idx.shape == (20,)
    # The first 8 are a permutation of all captions; then the same order repeats.
    rows = [int(np.flatnonzero((captions.embeddings == e).all(axis=(1, 2)))[0]) for e in a_emb]
    assert sorted(rows[:8]) == list(range(8)) and rows[8:16] == rows[:8] and rows[16:] == rows[:4]
    np.testing.assert_array_equal(a_idx, captions.image_index[rows])
    other, _ = sampling_captions(captions, 20, seed=4)
    assert not np.array_equal(other, a_emb)
    assert sampling_captions(captions, 0, seed=0)[0].shape == (0, 2, 5)
    with pytest.raises(ValueError, match=">= 0"):
        sampling_captions(captions, -1, seed=0)
