"""The domain feature network learns the embedded digits and plugs into the metrics as an extractor."""

import re

import numpy as np
import pytest
import torch

from diffusion_curriculum import data
from diffusion_curriculum.feature_net import FeatureNet, train_feature_net
from diffusion_curriculum.metrics import DomainFeatures, class_agreement, compute_metrics


def test_feature_net_classifies_held_out_digits_and_serves_fid():
    digits = data.load_mnist_embedded()
    x, y = data.to_training_tensor(digits)
    # Two epochs (the stage's default is 4) already separate the digits; they halve the test's time.
    net, report = train_feature_net(x, y, digits.num_classes, seed=0, epochs=2)
    assert report.num_test == 1000 and report.test_accuracy > 0.9, report
    assert sorted(report.test_indices.tolist()) == sorted(set(report.test_indices.tolist()))

    extractor = DomainFeatures(net, in_channels=1, image_size=28)
    images = digits.images
    rng = np.random.default_rng(0)
    half = rng.permutation(len(images))
    a, b = images[half[:1000]], images[half[1000:2000]]
    noise = rng.integers(0, 256, size=a.shape, dtype=np.uint8)
    real = compute_metrics(a, b, extractor, probs_fn=extractor.probs, kid_subsets=10, kid_subset_size=500)
    fake = compute_metrics(a, noise, extractor, probs_fn=extractor.probs, kid_subsets=10, kid_subset_size=500)
    assert real["fid"] < 0.1 * fake["fid"]
    assert real["is_mean"] > 5 and real["precision"] > 0.8 and fake["precision"] < 0.2


def test_feature_net_needs_labels():
    try:
        FeatureNet(1, 0)
    except ValueError as err:
        assert "labelled" in str(err)
    else:
        raise AssertionError("no error for an unlabelled data set")


def test_class_agreement_is_high_on_held_out_digits_and_chance_on_noise():
    """The stage's classifier (4 epochs, 16 px as in the default run) assigns held-out real digits to their
    own class >= 95 % of the time; noise asked to show balanced classes scores about chance (1/10)."""
    digits = data.resize_images(data.load_mnist_embedded(), 16)
    x, y = data.to_training_tensor(digits)
    net, report = train_feature_net(x, y, digits.num_classes, seed=0, epochs=4)
    extractor = DomainFeatures(net, in_channels=1, image_size=16)
    assert extractor.num_classes == 10
    held_out = report.test_indices.numpy()
    real, labels = digits.images[held_out], digits.labels[held_out]
    scores = compute_metrics(
        digits.images[:1000], real, extractor, probs_fn=extractor.probs, kid_subsets=5,
        kid_subset_size=200, requested_labels=labels,
    )  # fmt: skip
    assert scores["class_agreement"] >= 0.95, scores
    noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)
    balanced = np.arange(len(noise)) % 10
    probs = extractor.probs(torch.from_numpy(noise).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1))
    chance = class_agreement(probs.numpy(), balanced)
    assert abs(chance - 0.1) < 0.05, chance


def test_class_agreement_names_bad_input():
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert class_agreement(probs, np.array([0, 1, 2, 1])) == 0.75
    for bad, word in (
        (np.array([0, 1, 2]), "one class per sample"),
        (np.array([0, 1, 3, 0]), "integers in [0, 2]"),
        (np.array([0.0, 1.0, 2.0, 0.0]), "integers"),
    ):
        with pytest.raises(ValueError, match=re.escape(word)):
            class_agreement(probs, bad)
