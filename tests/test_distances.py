"""The Fréchet distance, checked with NumPy and SciPy alone (no PyTorch): ``.ci/run`` also runs this file
on the newest supported Python with the newest SciPy, where clean-fid's ``sqrtm(disp=...)`` no longer exists.
"""

import numpy as np
import pytest
import scipy.linalg

from diffusion_curriculum.distances import feature_stats, frechet_distance


def test_frechet_distance_matches_the_textbook_formula_and_the_sqrtm_route():
    """Commuting (diagonal) covariances have the closed form |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2; full
    covariances the sqrtm route clean-fid takes (which needs SciPy < 1.18 for its disp argument); a singular
    covariance gives a finite distance, and identical Gaussians zero."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 2.0, 16), rng.uniform(0.1, 2.0, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    textbook = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(textbook, rel=1e-10)

    f1, f2 = rng.standard_normal((300, 32)), rng.standard_normal((300, 32)) @ rng.standard_normal((32, 32))
    stats1, stats2 = feature_stats(f1), feature_stats(f2)
    ours = frechet_distance(*stats1, *stats2)
    covmean = scipy.linalg.sqrtm(stats1[1] @ stats2[1])  # the textbook route, for comparison
    diff = stats1[0] - stats2[0]
    direct = diff @ diff + np.trace(stats1[1] + stats2[1]) - 2 * np.trace(covmean.real)
    assert ours == pytest.approx(direct, rel=1e-9)

    singular = np.diag(np.r_[np.ones(8), np.zeros(8)])
    assert np.isfinite(frechet_distance(mu1, singular, mu2, singular))
    assert frechet_distance(mu1, singular, mu1, singular) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(mu1, np.eye(16), mu2[:8], np.eye(8))
