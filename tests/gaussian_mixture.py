"""Exact scores and log-densities of the diffusion marginals of Gaussian-mixture data.

The reference the KL estimators are tested against: for data sum_k w_k N(mu_k, diag(v_k)) every
marginal p_t is again a mixture, sum_k w_k N(alpha mu_k, alpha^2 v_k + sigma^2), so its score and
log-density are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffusion_curriculum.schedules import NoiseSchedule

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gaussian_mixture_score(
    means: torch.Tensor, variances: torch.Tensor, weights: torch.Tensor, schedule: NoiseSchedule
) -> ScoreFn:
    """Exact score_fn of the marginals of Gaussian-mixture data sum_k w_k N(mu_k, diag(v_k)).

    means (K, D); variances (K,) (isotropic components) or (K, D) (diagonal); weights (K,), positive,
    normalised here.  The marginal at t is sum_k w_k N(alpha mu_k, alpha^2 v_k + sigma^2); the score is the
    posterior-weighted sum of the component scores, in torch ops so that autograd gives its Jacobian.
    """
    params = _mixture_params(means, variances, weights)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_comp, diff, var = _mixture_terms(x, t, *params, schedule)
        post = torch.softmax(log_comp, dim=1)
        return -(post[..., None] * diff / var).sum(1)

    return score_fn


def gaussian_mixture_log_density(
    x: torch.Tensor,
    t: torch.Tensor | float,
    means: torch.Tensor,
    variances: torch.Tensor,
    weights: torch.Tensor,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """log p_t(x), (B,), for the mixture of :func:`gaussian_mixture_score`; t a scalar or (B,)."""
    log_comp, _, _ = _mixture_terms(x, t, *_mixture_params(means, variances, weights), schedule)
    return torch.logsumexp(log_comp, dim=1)


def _mixture_params(means, variances, weights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated float64 (K, D) means, (K, D or 1) variances and (K,) log-weights."""
    means = torch.as_tensor(means, dtype=torch.float64)
    if means.ndim != 2 or means.numel() == 0:
        raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
    k, d = means.shape
    variances = torch.as_tensor(variances, dtype=torch.float64)
    if variances.shape == (k,):
        variances = variances[:, None]
    if variances.ndim != 2 or variances.shape[0] != k or variances.shape[1] not in (1, d):
        raise ValueError(f"variances must have shape ({k},) or ({k}, {d}), got {tuple(variances.shape)}")
    if not (torch.isfinite(variances).all() and (variances > 0).all()):
        raise ValueError("variances must be finite and > 0")
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (k,) or not (torch.isfinite(weights).all() and (weights > 0).all()):
        raise ValueError(f"weights must be {k} finite positive numbers, got {weights.tolist()}")
    return means, variances, (weights / weights.sum()).log()


def _mixture_terms(x, t, means, variances, log_w, schedule):
    """Per-component log(w_k N_k(x)) (B, K), x - alpha mu_k (B, K, D) and the variances (B, K, D or 1)."""
    t = torch.as_tensor(t, device=x.device)
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    alpha, sigma = (v.to(dtype=x.dtype, device=x.device)[:, None, None] for v in schedule.alpha_sigma(t))
    var = alpha.square() * variances.to(x) + sigma.square()
    diff = x[:, None, :] - alpha * means.to(x)
    log_norm = torch.log(2 * math.pi * var).expand(diff.shape).sum(-1)
    log_comp = log_w.to(x) - 0.5 * ((diff.square() / var).sum(-1) + log_norm)
    return log_comp, diff, var
