"""The Fréchet distance and the Gaussian fit it compares, with NumPy and SciPy only.

Kept apart from :mod:`.metrics` (which needs PyTorch for its feature extractors) so that the arithmetic
every FID rests on can be checked against each new SciPy on each supported Python without installing
PyTorch (``.ci/run``).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

__all__ = ["feature_stats", "frechet_distance"]


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian fit of features: mean mu = E[f] and unbiased covariance Sigma (``np.cov``, N-1 divisor)."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, Sigma1) and N(mu2, Sigma2) (Heusel et al. 2017):

        d^2 = ||mu1 - mu2||^2 + Tr(Sigma1) + Tr(Sigma2) - 2 Tr((Sigma1 Sigma2)^{1/2}).

    Tr((S1 S2)^{1/2}) is the sum of the square roots of the eigenvalues of the symmetric positive
    semi-definite S1^{1/2} S2 S1^{1/2}, which has the eigenvalues of S1 S2: two symmetric eigensolves, no
    general matrix square root.  It is the number clean-fid computes with ``scipy.linalg.sqrtm`` (to
    ~1e-9 relative, ``tests/test_metrics.py``) without depending on sqrtm's ``disp`` argument (removed in
    SciPy 1.18), and singular covariances need no ridge: round-off below zero is clipped, not
    square-rooted into NaN.
    """
    mu1, sigma1, mu2, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}"
        )
    values, vectors = linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    inner = root1 @ sigma2 @ root1
    cross = np.sqrt(np.clip(linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)
