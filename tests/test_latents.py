"""LatentCodec and encode_dataset against a tiny random AutoencoderKL saved to disk (tests/tiny_vae.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_curriculum import data
from diffusion_curriculum.latents import LatentCodec, encode_dataset

from tiny_vae import save_tiny_vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny")


@pytest.fixture(scope="module")
def codec(vae_dir: Path) -> LatentCodec:
    return LatentCodec.from_directory(vae_dir)


def images(n: int = 5, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=gen) * 2 - 1


def edit_config(folder: Path, **changes) -> None:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config.update(changes)
    config_file.write_text(json.dumps(config))


def test_codec_reads_the_config_and_freezes_the_vae(codec: LatentCodec, vae_dir: Path):
    assert codec.path == vae_dir and codec.vae_dir == vae_dir
    assert (codec.image_channels, codec.latent_channels, codec.downsample) == (3, 4, 2)
    assert codec.scaling_factor == pytest.approx(0.18215)
    assert codec.shift_factor == 0.0  # saved as null
    assert not codec.vae.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in codec.vae.parameters())
    assert codec.latent_shape((3, 16, 16)) == (4, 8, 8)
    assert codec.latent_shape((3, 32, 8)) == (4, 16, 4)


def test_latent_shape_rejects_wrong_channels_and_sizes(codec: LatentCodec):
    with pytest.raises(ValueError, match=r"3-channel.*got 1"):
        codec.latent_shape((1, 16, 16))
    with pytest.raises(ValueError, match=r"15x16.*2"):
        codec.latent_shape((3, 15, 16))


def test_round_trip_keeps_shapes_dtype_and_range(codec: LatentCodec):
    x = images()
    z = codec.encode(x)
    assert z.shape == (5, 4, 8, 8) and z.dtype == torch.float32 and z.device.type == "cpu"
    y = codec.decode(z)
    assert y.shape == (5, 3, 16, 16) and y.dtype == torch.float32 and y.device.type == "cpu"
    assert y.min() >= -1.0 and y.max() <= 1.0
    with torch.no_grad():
        raw = codec.vae.decode(z / codec.scaling_factor).sample
    # The random decoder overshoots, so the range check above really tests the clamp.
    assert raw.abs().max() > 1.0
    torch.testing.assert_close(y, raw.clamp(-1, 1))


def test_posterior_mean_is_deterministic_and_scaled(codec: LatentCodec):
    x = images()
    z = codec.encode(x)
    assert torch.equal(z, codec.encode(x))
    with torch.no_grad():
        mean = codec.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(z, codec.scaling_factor * mean)


def test_posterior_sample_repeats_with_the_seed_and_varies_without(codec: LatentCodec):
    x = images()

    def draw(seed: int, batch_size: int = 64) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return codec.encode(x, posterior="sample", generator=gen, batch_size=batch_size)

    first = draw(1)
    assert torch.equal(first, draw(1))
    assert not torch.allclose(first, draw(2))
    assert not torch.allclose(first, codec.encode(x))
    # The noise is drawn in one go, so the batch size does not change the draw either.
    torch.testing.assert_close(draw(1, batch_size=2), first)


def test_batch_size_does_not_change_the_result(codec: LatentCodec):
    x = images(7)
    z = codec.encode(x, batch_size=64)
    for batch_size in (1, 3):
        torch.testing.assert_close(codec.encode(x, batch_size=batch_size), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            codec.decode(z, batch_size=batch_size), codec.decode(z), atol=1e-5, rtol=1e-5
        )


def test_shift_and_scaling_factor_from_the_config_are_honoured(tmp_path: Path):
    folder = save_tiny_vae(tmp_path / "shifted")
    edit_config(folder, shift_factor=0.5, scaling_factor=2.0)
    codec = LatentCodec.from_directory(folder)
    assert (codec.shift_factor, codec.scaling_factor) == (0.5, 2.0)
    x = images()
    z = codec.encode(x)
    with torch.no_grad():
        mean = codec.vae.encode(x).latent_dist.mean
        expected_images = codec.vae.decode(z / 2.0 + 0.5).sample.clamp(-1, 1)
    torch.testing.assert_close(z, (mean - 0.5) * 2.0)
    torch.testing.assert_close(codec.decode(z), expected_images)


def test_encode_dataset_keeps_labels_and_makes_latents(codec: LatentCodec):
    rng = np.random.default_rng(0)
    pixels = data.ImageDataset(
        rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8),
        np.array([0, 1, 2, 2, 1, 0]),
        num_classes=3,
        source="toy",
    )
    latents = encode_dataset(pixels, codec, batch_size=4)
    assert latents.kind == data.LATENTS and latents.source == "toy+vae"
    assert latents.images.dtype == np.float32 and latents.images.shape == (6, 4, 8, 8)
    assert latents.num_classes == 3 and np.array_equal(latents.labels, pixels.labels)
    x, _ = data.to_training_tensor(pixels)
    np.testing.assert_allclose(latents.images, codec.encode(x).numpy(), rtol=1e-5, atol=1e-6)

    sampled = encode_dataset(pixels, codec, posterior="sample", seed=3)
    assert np.array_equal(sampled.images, encode_dataset(pixels, codec, posterior="sample", seed=3).images)
    assert not np.allclose(sampled.images, encode_dataset(pixels, codec, posterior="sample", seed=4).images)

    unlabeled = data.ImageDataset(pixels.images, np.full(6, -1), num_classes=0, source="toy")
    assert not encode_dataset(unlabeled, codec).labeled


def test_encode_dataset_with_a_one_channel_vae(tmp_path: Path):
    codec = LatentCodec.from_directory(save_tiny_vae(tmp_path / "gray", in_channels=1, latent_channels=2))
    gray = data.ImageDataset(np.zeros((2, 8, 8, 1), dtype=np.uint8), np.full(2, -1), 0, "gray")
    assert encode_dataset(gray, codec).images.shape == (2, 2, 4, 4)


def test_encode_dataset_rejects_wrong_channels_and_latents(codec: LatentCodec):
    gray = data.ImageDataset(np.zeros((2, 16, 16, 1), dtype=np.uint8), np.full(2, -1), 0, "gray")
    with pytest.raises(ValueError, match=r"1 channel.*takes 3.*data\.channels") as info:
        encode_dataset(gray, codec)
    assert str(codec.path) in str(info.value)
    latents = data.ImageDataset(
        np.zeros((2, 4, 8, 8), dtype=np.float32), np.full(2, -1), 0, "z", data.LATENTS
    )
    with pytest.raises(ValueError, match="pixels"):
        encode_dataset(latents, codec)


def test_encode_and_decode_reject_bad_arguments(codec: LatentCodec):
    with pytest.raises(ValueError, match="posterior"):
        codec.encode(images(), posterior="mode")
    with pytest.raises(ValueError, match=r"3-channel.*got 1"):
        codec.encode(images(channels=1))
    with pytest.raises(ValueError, match="dtype"):
        codec.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        codec.encode(images(), batch_size=0)
    with pytest.raises(ValueError, match=r"\(N, 4, h, w\)"):
        codec.decode(torch.zeros(1, 3, 8, 8))


def test_pipeline_folder_loads_its_vae_subfolder(tmp_path: Path, vae_dir: Path, codec: LatentCodec):
    pipeline = tmp_path / "pipeline"
    shutil.copytree(vae_dir, pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    loaded = LatentCodec.from_directory(pipeline)
    assert loaded.path == pipeline and loaded.vae_dir == pipeline / "vae"
    x = images()
    assert torch.equal(loaded.encode(x), codec.encode(x))
    assert loaded.fingerprint() == codec.fingerprint()


def test_loading_errors_name_the_path(tmp_path: Path, vae_dir: Path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match="does-not-exist.*expected"):
        LatentCodec.from_directory(missing)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json.*empty"):
        LatentCodec.from_directory(empty)

    wrong = tmp_path / "wrong-class"
    shutil.copytree(vae_dir, wrong)
    edit_config(wrong, _class_name="UNet2DModel")
    with pytest.raises(ValueError, match="wrong-class.*UNet2DModel"):
        LatentCodec.from_directory(wrong)

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy2(vae_dir / "config.json", no_weights)
    with pytest.raises(FileNotFoundError, match="no weights.*no-weights"):
        LatentCodec.from_directory(no_weights)


def test_fingerprint_follows_the_weights(tmp_path: Path, vae_dir: Path, codec: LatentCodec):
    fingerprint = codec.fingerprint()
    assert len(fingerprint) == 64 and fingerprint == codec.fingerprint()
    assert LatentCodec.from_directory(vae_dir).fingerprint() == fingerprint
    assert LatentCodec.from_directory(save_tiny_vae(tmp_path / "same")).fingerprint() == fingerprint
    assert LatentCodec.from_directory(save_tiny_vae(tmp_path / "other", seed=1)).fingerprint() != fingerprint

    flipped = tmp_path / "flipped"
    shutil.copytree(vae_dir, flipped)
    weights = flipped / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1  # the last byte is tensor data, not the safetensors header
    weights.write_bytes(bytes(raw))
    assert LatentCodec.from_directory(flipped).fingerprint() != fingerprint
