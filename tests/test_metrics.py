"""Evaluation metrics on scikit-learn's bundled 8x8 digits, with a random-projection stand-in extractor.

The real Inception weights cannot be downloaded here, so the Inception path is checked with a tiny
TorchScript stand-in saved under clean-fid's file name.
"""

import urllib.request

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from diffusion_curriculum import metrics
from diffusion_curriculum.distances import feature_stats, frechet_distance
from diffusion_curriculum.metrics import (
    DomainFeatures,
    compute_metrics,
    extract_features,
    inception_extractor,
    inception_score,
    kid_from_features,
    precision_recall,
    reference_stats,
)

torch.set_num_threads(1)

SIZE, DIM, CLASSES = 8, 24, 10


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """1797 grey 8x8 digits as uint8 NHW, shuffled so halves are exchangeable."""
    images = (load_digits().images * (255 / 16)).round().astype(np.uint8)
    return images[np.random.default_rng(0).permutation(len(images))]


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID of two feature sets: the Fréchet distance of their Gaussian fits."""
    return frechet_distance(*feature_stats(feats1), *feature_stats(feats2))


def _weights(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) / shape[0] ** 0.5


PROJ = _weights(1, SIZE * SIZE, DIM)
HEAD = _weights(2, DIM, CLASSES) * 20  # large so that some predictions are confident


def projection_extractor(x: torch.Tensor) -> torch.Tensor:
    """Stand-in extractor: grey value in [-1, 1], flattened, through a fixed random projection."""
    grey = x.mean(dim=1) / 127.5 - 1
    return grey.flatten(1) @ PROJ


class ProjectionNet(nn.Module):
    """A classifier with the interface DomainFeatures expects, whose features are the same projection."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ PROJ

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.features(x)) @ HEAD


def test_fid_self_halves_noise(digits):
    feats = extract_features(digits, projection_extractor)
    half = len(feats) // 2
    scale = np.trace(np.cov(feats, rowvar=False))
    noise = np.random.default_rng(3).integers(0, 256, digits.shape, dtype=np.uint8)
    fid_self = fid_from_features(feats, feats)
    fid_halves = fid_from_features(feats[:half], feats[half:])
    fid_noise = fid_from_features(feats, extract_features(noise, projection_extractor))
    assert abs(fid_self) < 1e-6 * scale
    assert 0 < fid_halves < 0.1 * scale
    assert fid_noise > 20 * fid_halves


def test_kid_self_and_noise(digits):
    feats = extract_features(digits, projection_extractor)
    half = len(feats) // 2
    noise = np.random.default_rng(4).integers(0, 256, digits.shape, dtype=np.uint8)
    kid_self = kid_from_features(feats, feats, num_subsets=10)
    kid_halves = kid_from_features(feats[:half], feats[half:], num_subsets=10)
    kid_noise = kid_from_features(feats, extract_features(noise, projection_extractor), num_subsets=10)
    # Unbiased MMD^2 on two random subsets: zero in expectation, so only sampling noise remains.
    assert abs(kid_self) < 1e-2 * kid_noise
    assert abs(kid_halves) < 1e-2 * kid_noise
    # Seeded and side-effect free on NumPy's global generator.
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    assert kid_from_features(feats[:half], feats[half:], num_subsets=10) == kid_halves
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_precision_recall(digits):
    feats = extract_features(digits, projection_extractor)
    assert precision_recall(feats, feats, k=3) == (1.0, 1.0)
    shifted = extract_features(np.roll(digits, 3, axis=2), projection_extractor)
    precision, recall = precision_recall(feats, shifted, k=3)
    assert precision < 0.9 and recall < 0.9
    # Chunking is an implementation detail.
    assert precision_recall(feats, shifted, k=3, chunk=100) == (precision, recall)
    # Fakes covering only some classes keep precision high but lose recall.
    labels = load_digits().target[np.random.default_rng(0).permutation(len(digits))]
    p_few, r_few = precision_recall(feats, feats[labels < 3], k=3)
    assert p_few == 1.0 and r_few < 0.5


def test_inception_score_bounds():
    one_hot = np.tile(np.eye(CLASSES), (20, 1))  # each split of 20 rows holds every class twice
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(CLASSES) and std == pytest.approx(0, abs=1e-9)
    same = np.tile(np.random.default_rng(5).dirichlet(np.ones(CLASSES)), (200, 1))
    mean, std = inception_score(same, splits=10)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0, abs=1e-9)


def test_domain_features_match_plain_path(digits):
    domain = DomainFeatures(ProjectionNet(), in_channels=1, image_size=SIZE)
    plain = extract_features(digits, projection_extractor)
    wrapped = extract_features(digits, domain)
    np.testing.assert_allclose(wrapped, plain, rtol=1e-6, atol=1e-6)
    # RGB input from clean-fid at another size is accepted and resized to the classifier's size.
    assert domain(torch.full((2, 3, 299, 299), 255.0)).shape == (2, DIM)

    fake = np.roll(digits[:600], 1, axis=1)
    kw = {"kid_subsets": 5, "kid_subset_size": 300}
    by_plain = compute_metrics(digits, fake, projection_extractor, **kw)
    by_domain = compute_metrics(digits, fake, domain, probs_fn=domain.probs, **kw)
    for key in ("fid", "kid", "precision", "recall"):
        assert by_domain[key] == pytest.approx(by_plain[key], rel=1e-4, abs=1e-6), key
    assert 1.0 < by_domain["is_mean"] <= CLASSES and by_domain["is_std"] >= 0
    assert set(by_plain) == {"fid", "kid", "precision", "recall"}


def test_cached_reference_and_rgb(digits):
    ref = reference_stats(digits, projection_extractor, batch_size=500)
    fake = digits[::-1][:400]
    kw = {"kid_subsets": 5, "kid_subset_size": 300, "batch_size": 128}
    direct = compute_metrics(digits, fake, projection_extractor, **kw)
    cached = compute_metrics(None, fake, projection_extractor, reference=ref, **kw)
    assert cached == direct
    # Grey NHW, NHW1 and replicated NHW3 uint8 or float are the same images.
    rgb = np.repeat(fake[..., None], 3, axis=-1)
    for variant in (fake[..., None], rgb, rgb.astype(np.float32)):
        assert compute_metrics(None, variant, projection_extractor, reference=ref, **kw) == direct
    with pytest.raises(ValueError, match="reference"):
        compute_metrics(None, fake, projection_extractor)


def test_inception_extractor_missing_file(tmp_path):
    missing = tmp_path / "nope" / "inception.pt"
    with pytest.raises(FileNotFoundError, match="inception.pt") as err:
        inception_extractor(missing)
    assert "/tmp/inception-2015-12-05.pt" in str(err.value)


class _FakeInception(nn.Module):
    """Shaped like clean-fid's TorchScript Inception: a ``layers`` module giving 2048 features."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 2048, 1))
        self.head = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        feats = self.layers((x - 128) / 128).flatten(1)
        return feats if return_features else torch.softmax(self.head(feats), dim=1)


def test_inception_extractor_loads_local_file_without_download(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("clean-fid tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    torch.manual_seed(0)
    weights = tmp_path / metrics.INCEPTION_FILENAME
    torch.jit.script(_FakeInception()).save(str(weights))
    extract = inception_extractor(weights)
    images = np.repeat(load_digits().images[:4, ..., None] * 16, 3, axis=-1)
    feats = extract_features(images, extract)
    assert feats.shape == (4, 2048) and np.isfinite(feats).all()
    probs = extract.probs(metrics.images_to_tensor(images))
    assert probs.shape == (4, 1008)
    np.testing.assert_allclose(probs.sum(dim=1).numpy(), 1.0, rtol=1e-6)


def test_domain_features_as_cleanfid_custom_extractor(digits, tmp_path):
    import inspect

    from cleanfid import fid
    from PIL import Image
    from scipy import linalg

    if "disp" not in inspect.signature(linalg.sqrtm).parameters:
        # clean-fid's own compute_fid calls sqrtm(..., disp=False), which SciPy 1.18 removed; the project's
        # FID (distances.frechet_distance) does not go through it.
        pytest.skip("clean-fid's compute_fid passes sqrtm(disp=...), which this SciPy no longer takes")

    for name, images in (("a", digits[:40]), ("b", digits[:40]), ("noise", 255 - digits[:40])):
        (tmp_path / name).mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img).save(tmp_path / name / f"{i}.png")
    domain = DomainFeatures(ProjectionNet(), in_channels=1, image_size=SIZE)
    kw = {"mode": "clean", "custom_feat_extractor": domain, "device": torch.device("cpu")}
    kw |= {"num_workers": 0, "batch_size": 20, "verbose": False}
    same = fid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), **kw)
    inverted = fid.compute_fid(str(tmp_path / "a"), str(tmp_path / "noise"), **kw)
    assert abs(same) < 1e-6 and inverted > 1.0


def test_evaluate_says_why_class_agreement_is_missing():
    """Unconditional samples, or an extractor without the data set's class logits, get no class agreement
    and a reason; class-conditional samples scored by the domain classifier get their labels through."""
    from diffusion_curriculum.features import agreement_labels

    class Domain:
        num_classes = 10

    labels = np.array([0, 3, 9])
    got, why = agreement_labels(labels, Domain())
    assert why is None and got.tolist() == [0, 3, 9]
    got, why = agreement_labels(np.full(3, -1), Domain())
    assert got is None and "not drawn for a class" in why
    got, why = agreement_labels(labels, object())  # e.g. Inception: ImageNet logits, not the data's classes
    assert got is None and "features.extractor" in why
    got, why = agreement_labels(np.array([0, 12]), Domain())
    assert got is None and "class 12" in why


def test_floor_interval_over_real_sets_covers_a_fresh_real_set_s_expected_fid():
    """The floor's interval (mean over disjoint real sets, each against the other real images; Student t
    over the sets) holds the expected FID of a new real set of the same size about as often as it says:
    95% nominal, over 100 pools of Gaussian "features", against the expectation simulated with fresh
    sets and fresh references."""
    from diffusion_curriculum.distances import feature_stats, frechet_distance
    from diffusion_curriculum.stages.evaluate_floor import summarize_sets
    from diffusion_curriculum.stages.fid_ref import split_real_images

    rng = np.random.default_rng(0)
    dim, n, pool_size = 16, 200, 1000
    scale = np.linspace(0.5, 2.0, dim)

    def fid(fake, real):
        return frechet_distance(*feature_stats(real), *feature_stats(fake))

    def draw(count):
        return rng.standard_normal((count, dim)) * scale

    expected = np.mean([fid(draw(n), draw(pool_size - n)) for _ in range(400)])
    covered = 0
    for _ in range(100):
        pool = draw(pool_size)
        sets = split_real_images(pool_size, n, np.arange(pool_size))
        got = summarize_sets([{"fid": fid(pool[rows], pool[reference])} for rows, reference in sets])
        covered += got["fid_low"] <= expected <= got["fid_high"]
    assert 85 <= covered <= 100, covered


def test_summarize_sets_is_the_mean_with_its_student_t_interval():
    from scipy import stats

    from diffusion_curriculum.stages.evaluate_floor import summarize_sets

    sets = [{"fid": v, "is_std": 0.1, "class_agreement": 0.9} for v in (1.0, 2.0, 4.0)]
    sets[1]["kid"] = 0.5  # only one set has it: left out, not averaged over fewer sets
    got = summarize_sets(sets)
    half = stats.t.ppf(0.975, 2) * np.std([1, 2, 4], ddof=1) / np.sqrt(3)
    assert got["fid"] == pytest.approx(7 / 3) and got["fid_high"] - got["fid"] == pytest.approx(half)
    assert got["class_agreement_low"] == pytest.approx(0.9) and "kid" not in got
    assert "is_std_low" not in got  # a spread has no interval of its own


def test_floor_sets_and_their_references_come_from_unseen_images_and_never_overlap():
    from diffusion_curriculum.stages.fid_ref import split_real_images

    held_out = np.random.default_rng(0).permutation(1000)[:400]
    sets = split_real_images(1000, 150, held_out)
    assert len(sets) == 2  # 400 unseen images hold two disjoint sets of 150
    for floor, reference in sets:
        assert len(floor) == 150 and len(reference) == 250
        assert set(floor) | set(reference) == set(held_out) and not set(floor) & set(reference)
    assert list(sets[0][0]) == list(held_out[:150])  # the split's random order, not sorted (IS reads chunks)
    assert not set(sets[0][0]) & set(sets[1][0])
    assert len(split_real_images(1000, 10, held_out)) == 5  # at most five sets
    # A pool smaller than twice the sample count (paper scale: 50K samples of 50K images) halves.
    sets = split_real_images(1000, 300, held_out)
    assert [(len(f), len(r)) for f, r in sets] == [(200, 200), (200, 200)]
    sets = split_real_images(10, 3, None)  # no classifier: a fixed permutation of all
    assert len(sets) == 3 and all(sorted(set(f) | set(r)) == list(range(10)) for f, r in sets)


def test_class_matched_floor_sets_hold_the_classes_a_sample_set_requests():
    from diffusion_curriculum.samplers import requested_classes
    from diffusion_curriculum.stages.fid_ref import split_real_images

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    held_out = rng.permutation(600)[:300]
    requested = requested_classes(31, 3)  # 11, 10, 10 of classes 0, 1, 2
    sets = split_real_images(600, 31, held_out, labels=labels, requested=requested)
    fits = min(np.sum(labels[held_out] == c) // need for c, need in enumerate((11, 10, 10)))
    assert len(sets) == min(5, fits)
    for floor, reference in sets:
        assert list(labels[floor]) == list(requested)  # row i is an image of the class sample i asks for
        assert set(floor) | set(reference) == set(held_out) and not set(floor) & set(reference)
        assert len(reference) == 300 - 31
    assert len({int(i) for floor, _ in sets for i in floor}) == 31 * len(sets)  # disjoint sets
    # A class too scarce for two sets: the sets are drawn without regard to class, as before.
    scarce = np.where(labels == 2, 0, labels)
    scarce[held_out[:5]] = 2
    sets = split_real_images(600, 31, held_out, labels=scarce, requested=requested)
    assert list(sets[0][0]) == list(held_out[:31])


def test_class_matched_floor_sets_read_lower_and_tighter_where_features_cluster_by_class():
    """In a classifier's feature space the classes are clusters: a random set's class counts move its
    mean, which a sample set (every class as often) does not have; matched sets leave that out."""
    from diffusion_curriculum.distances import feature_stats, frechet_distance
    from diffusion_curriculum.samplers import requested_classes
    from diffusion_curriculum.stages.fid_ref import split_real_images

    rng = np.random.default_rng(1)
    num_classes, dim, n, pool_size = 10, 8, 100, 1000
    centres = rng.standard_normal((num_classes, dim)) * 3
    readings = {"random": [], "matched": []}
    for _ in range(20):
        labels = rng.integers(0, num_classes, pool_size)
        feats = centres[labels] + rng.standard_normal((pool_size, dim))
        pool = rng.permutation(pool_size)
        for name, requested in (("random", None), ("matched", requested_classes(n, num_classes))):
            for floor, reference in split_real_images(pool_size, n, pool, labels=labels, requested=requested):
                readings[name].append(
                    frechet_distance(*feature_stats(feats[floor]), *feature_stats(feats[reference]))
                )
    assert np.mean(readings["matched"]) < 0.7 * np.mean(readings["random"])
    assert np.std(readings["matched"]) < 0.7 * np.std(readings["random"])
