"""``python -m diffusion_curriculum.stages.sample --weights``: sampling an official DiT checkpoint (a tiny
one written here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from dit_official import official_state

from diffusion_curriculum.stages import sample


def _params(tmp_path, name="DiT-tiny/2"):
    cfg = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    cfg["model"]["name"] = name
    cfg["sample"] |= {
        "sampler": "ddim",
        "steps": 3,
        "num_samples": 6,
        "batch_size": 4,
        "cfg_scale": 1.5,
        "device": "cpu",
        "precision": "fp32",
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _weights(tmp_path, seed_scale=1.0):
    # DiT-tiny/2 (depth 4, hidden 128) on 8x8x4 latents with 10 classes and learned-sigma outputs, as the
    # released ImageNet models have them.
    state = official_state(depth=4, hidden=128, patch=2, channels=4, grid=4, classes=10, learn_sigma=True)
    state = {k: v * seed_scale if k != "pos_embed" else v for k, v in state.items()}
    path = tmp_path / f"DiT-tiny-{seed_scale}.pt"
    torch.save(state, path)
    return path


def test_sample_runs_from_official_dit_weights(tmp_path):
    params_file = _params(tmp_path)
    runs = []
    for scale in (1.0, 2.0):
        out = tmp_path / f"samples{scale}"
        sample.main(
            ["--params", str(params_file), "--weights", str(_weights(tmp_path, scale)), "--out-dir", str(out)]
        )
        with np.load(out / "samples.npz") as archive:
            images, labels = archive["images"], archive["labels"]
        # No --encoding: latents are kept as float32 NCHW.
        assert images.shape == (6, 4, 8, 8) and images.dtype == np.float32 and np.isfinite(images).all()
        assert labels.tolist() == [0, 1, 2, 3, 4, 5]
        settings = json.loads((out / "settings.json").read_text())
        assert settings["official_weights"] and settings["method"] == "official"
        runs.append(images)
    assert not np.allclose(runs[0], runs[1])  # the weights are what is sampled


def test_sample_weights_must_match_the_model_section(tmp_path):
    with pytest.raises(ValueError, match="model.name"):
        sample.main(
            ["--params", str(_params(tmp_path, "DiT-S/2")), "--weights", str(_weights(tmp_path)),
             "--out-dir", str(tmp_path / "out")]
        )  # fmt: skip
    assert not (tmp_path / "out").exists()
