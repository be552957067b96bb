"""The domain feature network learns the embedded digits and plugs into the metrics as an extractor."""

import numpy as np

from diffusion_curriculum import data
from diffusion_curriculum.feature_net import FeatureNet, train_feature_net
from diffusion_curriculum.metrics import DomainFeatures, compute_metrics


def test_feature_net_classifies_held_out_digits_and_serves_fid():
    digits = data.load_mnist_embedded()
    x, y = data.to_training_tensor(digits)
    # Two epochs (the stage's default is 4) already separate the digits; they halve the test's time.
    net, report = train_feature_net(x, y, digits.num_classes, seed=0, epochs=2)
    assert report.num_test == 1000 and report.test_accuracy > 0.9, report

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
