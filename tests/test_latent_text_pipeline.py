"""The coco_t2i path on a small stand-in, through the real pipeline: an image folder, pre-computed caption
embeddings in Parquet, a VAE loaded from a local directory (a tiny random one saved here), encode_latents,
a text-conditional DiT trained in latent space, and sample decoding back to images of the data set's size.

The preset itself (configs/coco_t2i.yaml) is the starting point; only sizes and paths are scaled down.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffusion_curriculum.captions import CaptionEmbeddings, read_captions, write_captions
from diffusion_curriculum.stages.params import compose

from conftest import REPO, run_cli
from tiny_vae import save_tiny_vae

pytestmark = pytest.mark.e2e

NUM_IMAGES, IMAGE_SIZE, TOKENS, TEXT_DIM = 24, 16, 3, 8
SAMPLE_TARGETS = [
    "results/samples/vanilla/seed0/step6/samples.npz",
    "results/samples/stitch/expert1/samples.npz",
]


def _image_folder(root):
    """Flat folder (unlabeled, as MS-COCO): half the images bright on the left, half on the right."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        img = rng.integers(0, 60, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        half = slice(0, IMAGE_SIZE // 2) if i % 2 == 0 else slice(IMAGE_SIZE // 2, IMAGE_SIZE)
        img[:, half] += 180
        Image.fromarray(img).save(root / f"{i:03d}.png")


def _captions(path):
    """Two captions per image, from its side; the last row (image -1) is the empty caption."""
    rng = np.random.default_rng(1)
    side = rng.normal(size=(2, 2, TOKENS, TEXT_DIM)).astype(np.float32)  # [side, caption]
    rows = [(i, side[i % 2, c]) for i in range(NUM_IMAGES) for c in range(2)]
    write_captions(
        CaptionEmbeddings(
            embeddings=np.stack([e for _, e in rows]),
            image_index=np.array([i for i, _ in rows]),
            null=np.zeros((TOKENS, TEXT_DIM), dtype=np.float32),
        ),
        path,
    )


def _stand_in_config(pipeline):
    cfg = compose(REPO / "configs" / "coco_t2i.yaml")
    smoke = compose(REPO / "configs" / "smoke.yaml")
    cfg["study"] = {"methods": ["vanilla"], "seeds": [0]}
    cfg["data"].update(
        path="stand_in/images", captions_path="stand_in/captions.parquet", image_size=IMAGE_SIZE
    )
    cfg["latents"].update(vae="stand_in/vae", device="cpu")
    cfg["model"]["name"] = "DiT-tiny/2"  # 16x16 images -> 8x8x4 latents -> 16 tokens
    cfg["curriculum"]["num_clusters"] = 2
    cfg["experts"].update(intervals=[1, 2], iterations=4, batch_size=4, log_every=1, stitch_intervals=[1])
    cfg["experts"]["device"] = "cpu"
    # Four-step experts leave the fitted step too few rows (a params error); a band reads any length.
    cfg["convergence"] = {**smoke["convergence"], "band": "decrease"}
    cfg["kl"] = smoke["kl"]
    cfg["train"].update(iterations=6, snapshots=[6], batch_size=4, checkpoint_every=3, log_every=2)
    cfg["train"].update(compile=False, data_parallel=1, device="cpu")
    cfg["sample"].update(steps=5, num_samples=6, batch_size=6, device="cpu")
    cfg["features"] = smoke["features"]
    (pipeline / "configs" / "stand_in.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def test_text_to_image_on_latents_through_the_pipeline(pipeline_dir):
    stand_in = pipeline_dir / "stand_in"
    _image_folder(stand_in / "images")
    _captions(stand_in / "captions.parquet")
    save_tiny_vae(stand_in / "vae")
    cfg = _stand_in_config(pipeline_dir)

    command = ["snakemake", *SAMPLE_TARGETS, "--cores", "2", "--configfile", "configs/stand_in.yaml"]
    run_cli(command, pipeline_dir)

    encoded = json.loads((pipeline_dir / "data" / "encoded" / "manifest.json").read_text())
    assert encoded["kind"] == "latents" and encoded["shape"] == [4, IMAGE_SIZE // 2, IMAGE_SIZE // 2]
    assert encoded["encoding"]["vae"] == "stand_in/vae"
    assert encoded["encoding"]["image_shape"] == [IMAGE_SIZE, IMAGE_SIZE, 3]
    prepared = read_captions(pipeline_dir / "data" / "prepared" / "captions.parquet", NUM_IMAGES)
    assert (len(prepared), prepared.tokens, prepared.dim) == (2 * NUM_IMAGES, TOKENS, TEXT_DIM)
    assert prepared.null is not None

    for target in SAMPLE_TARGETS:
        samples = np.load(pipeline_dir / target)
        # Decoded by the VAE: pixels at the data set's size, not latents.
        assert samples["images"].dtype == np.uint8
        assert samples["images"].shape == (cfg["sample"]["num_samples"], IMAGE_SIZE, IMAGE_SIZE, 3)
        assert samples["caption_images"].shape == (cfg["sample"]["num_samples"],)
        assert set(samples["caption_images"]) <= set(range(NUM_IMAGES))
        settings = json.loads((pipeline_dir / target).with_name("settings.json").read_text())
        assert settings["decoded_by"] == "stand_in/vae"

    model = torch.load(
        pipeline_dir / "results/train/vanilla/seed0/model.pt", map_location="cpu", weights_only=True
    )
    assert (model["arch"]["text_dim"], model["arch"]["text_tokens"], model["arch"]["num_classes"]) == (
        TEXT_DIM,
        TOKENS,
        0,
    )
    assert model["data"]["kind"] == "latents"
