"""Conditional generation end to end: on a toy data set where the condition decides the image, a small DiT
trained with ``train_loop`` and sampled with DDIM and classifier-free guidance draws the requested class.

The data: 8x8 single-channel images, four classes, class q bright (+1) in quadrant q and dark (-1)
elsewhere, plus a little noise.  A sample's class is read back as its brightest quadrant.  Both runs
use the same recipe; they differ only in the condition:

* class labels, with the null class for guidance;
* synthetic caption embeddings (T = 4 tokens, D = 16), two random "captions" per class, every image
  captioned by both captions of its class, and a fixed null caption -- written to and read back from
  Parquet (``write_captions`` / ``read_captions``), and sampled through ``sampling_captions``.

Iterations: about twice what first reaches 0.9 accuracy on the seeds tried (class labels ~300, captions
~150), so the test has margin; each run takes ~15 s on one CPU thread.
"""

import numpy as np
import pytest
import torch

from diffusion_curriculum import samplers
from diffusion_curriculum.captions import CaptionEmbeddings, read_captions, sampling_captions, write_captions
from diffusion_curriculum.losses import Denoiser
from diffusion_curriculum.models import create_model
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import Intervals, make_strategy
from diffusion_curriculum.training import train_loop

NUM_IMAGES, NUM_SAMPLES = 256, 64
TOKENS, TEXT_DIM = 4, 16
GUIDANCE = 3.0
NET = {"input_size": 8, "in_channels": 1, "depth": 2, "hidden_size": 64, "num_heads": 4}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 8, 8) images and their classes 0..3 (balanced): class q is bright in quadrant q."""
    classes = torch.arange(n) % 4
    x = -torch.ones(n, 1, 8, 8)
    for q in range(4):
        row, col = divmod(q, 2)
        x[classes == q, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] = 1.0
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x + 0.1 * noise, classes


def brightest_quadrant(x: torch.Tensor) -> torch.Tensor:
    """The class a sample shows: (B, 1, 8, 8) -> (B,) index row * 2 + col of its brightest quadrant."""
    return x.reshape(-1, 2, 4, 2, 4).mean(dim=(2, 4)).reshape(-1, 4).argmax(dim=1)


def train(tmp_path, net, images, labels, iterations, seed, **condition):
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(5)
    result = train_loop(
        net=net,
        schedule=schedule,
        prediction="eps",
        strategy=make_strategy("vanilla", schedule, intervals),
        intervals=intervals,
        images=images,
        labels=labels,
        run_dir=tmp_path,
        iterations=iterations,
        batch_size=32,
        lr=5e-3,
        ema_decay=0.0,  # the EMA would lag behind so short a run; this samples from the last weights
        log_every=iterations,
        checkpoint_every=iterations,
        seed=seed,
        progress=False,
        **condition,
    )
    return Denoiser(result.net.eval(), schedule, "eps")


def guided_samples(denoiser: Denoiser, y: torch.Tensor, seed: int) -> torch.Tensor:
    x0_fn = samplers.guided_x0_fn(denoiser, y, scale=GUIDANCE)
    noise = (len(y), 1, 8, 8)
    generator = torch.Generator().manual_seed(seed)
    return samplers.ddim_sample(x0_fn, denoiser.schedule, noise, steps=20, generator=generator, clip_x0=1.0)


@pytest.mark.parametrize("seed", [0])
def test_class_conditional_dit_draws_the_requested_class(tmp_path, seed):
    torch.manual_seed(seed)
    images, classes = quadrant_images(NUM_IMAGES, seed)
    net = create_model("DiT-tiny/2", num_classes=4, class_dropout=0.1, **NET)
    denoiser = train(tmp_path, net, images, classes, iterations=500, seed=seed)
    wanted = torch.arange(NUM_SAMPLES) % 4
    accuracy = (brightest_quadrant(guided_samples(denoiser, wanted, seed)) == wanted).float().mean().item()
    assert accuracy >= 0.9, accuracy


def synthetic_captions(classes: torch.Tensor, seed: int) -> CaptionEmbeddings:
    """Two random captions (T x D) per class; each image has both captions of its class; a random null."""
    rng = np.random.default_rng(seed)
    per_class = rng.normal(size=(4, 2, TOKENS, TEXT_DIM)).astype(np.float32)
    n = len(classes)
    embeddings = np.concatenate([per_class[classes.numpy(), j] for j in range(2)])
    image_index = np.concatenate([np.arange(n), np.arange(n)])
    null = rng.normal(size=(TOKENS, TEXT_DIM)).astype(np.float32)
    return CaptionEmbeddings(embeddings, image_index, null)


@pytest.mark.parametrize("seed", [0])
def test_text_conditional_dit_draws_the_captioned_class(tmp_path, seed):
    torch.manual_seed(seed)
    images, classes = quadrant_images(NUM_IMAGES, seed)
    write_captions(synthetic_captions(classes, seed), tmp_path / "captions.parquet")
    captions = read_captions(tmp_path / "captions.parquet", NUM_IMAGES)
    assert captions.null is not None and (captions.tokens, captions.dim) == (TOKENS, TEXT_DIM)

    net = create_model(
        "DiT-tiny/2",
        class_dropout=0.1,
        text_dim=captions.dim,
        text_tokens=captions.tokens,
        text_null=torch.from_numpy(captions.null),
        **NET,
    )
    labels = torch.from_numpy(captions.embeddings)
    condition_image = torch.from_numpy(captions.image_index)
    denoiser = train(
        tmp_path / "run", net, images, labels, iterations=300, seed=seed, condition_image=condition_image
    )

    embeddings, image_index = sampling_captions(captions, NUM_SAMPLES, seed)
    wanted = classes[torch.from_numpy(image_index)]
    assert set(wanted.tolist()) == {0, 1, 2, 3}
    samples = guided_samples(denoiser, torch.from_numpy(embeddings), seed)
    accuracy = (brightest_quadrant(samples) == wanted).float().mean().item()
    assert accuracy >= 0.9, accuracy
