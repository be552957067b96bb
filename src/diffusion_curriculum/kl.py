"""Monte-Carlo estimate of D_KL(p_{t-1} || p_t) between consecutive diffusion marginals (eq. 1-2 of
``seeds/002``).

The data are the finite set of L samples y_j (flattened, in model space): p_t is the mixture
(1/L) sum_j N(alpha_t y_j, sigma_t^2 I) and the KL is the mean log-ratio log p_{t-1}(x_i) - log p_t(x_i)
over M samples x_i = alpha_{t-1} y_{k(i)} + sigma_{t-1} eps_i.  :func:`estimate_kl` returns one row per
pair of consecutive ``timesteps`` with the estimate and its standard error.

What a caller needs to know:

* ``exclude_self=False`` (the default, the paper's choice) keeps each x_i's own image in the mixture.  The
  estimate is then a true, non-negative KL of the noised empirical distribution; at small t it is
  dominated by the data-independent own-component term D/2 (r - 1 - log r), r = sigma_{t-1}^2 /
  sigma_t^2, so read it against the same estimator on :func:`gaussian_reference` data (exact value:
  :func:`gaussian_kl`).  ``True`` (leave-one-out) gives large negative values at small t.
* ``common_noise=True`` (the default) reuses the same draws for every pair: a smooth curve whose errors
  are correlated across t (do not average ``kl_stderr`` over t).
* ``chunk_size`` bounds memory; float32 is as accurate as float64 here, but keep TF32 matmuls off.
* ``generator`` makes a run reproducible; ``timesteps`` may be any ascending times.

The derivation (the distance expansion that avoids cancellation at small t, the cost of one Gram product
per draw, the argument for keeping the own image, the precision measurements) is in
``docs/kl_mixture_estimator.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch

from .schedules import NoiseSchedule

__all__ = ["estimate_kl", "default_timesteps", "gaussian_reference", "gaussian_kl", "pair_units"]

# Exponent entries (pairs x samples x components) materialised at once: 128 MiB in float64.
_BATCH_ELEMENTS = 1 << 24


def default_timesteps(schedule: NoiseSchedule, num_points: int = 100) -> torch.Tensor:
    """The native times :func:`estimate_kl` uses when none are given, ascending.

    VP: every discrete timestep 0..T-1 (so the pairs are (t-1, t) for t = 1..T-1).  Continuous schedules
    (EDM, flow): the cell midpoints ``u = (k + 1/2) / num_points`` of the unit interval mapped through
    ``schedule.from_unit``, i.e. equal steps of the framework's training density.
    """
    if schedule.discrete:
        return torch.arange(schedule.num_timesteps)
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}")
    u = (torch.arange(num_points, dtype=torch.float64) + 0.5) / num_points
    return schedule.from_unit(u)


def pair_units(schedule: NoiseSchedule, times: torch.Tensor) -> torch.Tensor:
    """Where on the unit interval each consecutive pair (times[k-1], times[k]) is reported (float64).

    Discrete schedules (VP): ``to_unit(t)`` of the later step, since D_KL(p_{t-1} || p_t) is the
    difficulty of timestep t (the paper's labelling; pairs are one step apart).  Continuous schedules
    (EDM, flow): the midpoint of the pair in u, (to_unit(t_prev) + to_unit(t)) / 2, because the pair
    measures the difficulty of the whole step between them.  Labelling a continuous pair with its later
    end shifts every sample of the difficulty density by half a grid step towards high noise; on the
    100-point grid that overweighted the lowest-noise equal-share cluster (0.0545 of the total instead
    of 0.0526 on EDM).
    """
    u = schedule.to_unit(times).to(torch.float64)
    if schedule.discrete:
        return u[1:]
    return 0.5 * (u[:-1] + u[1:])


def estimate_kl(
    data: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor | Sequence[float] | None = None,
    num_samples: int = 5000,
    *,
    exclude_self: bool = False,
    common_noise: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    chunk_size: int = 1024,
    dtype: torch.dtype = torch.float64,
) -> pd.DataFrame:
    """Estimate D_KL(p_{t_prev} || p_t) for each pair of consecutive ``timesteps`` (eq. 1-2, ``seeds/002``).

    Args:
        data: (L, ...) floating tensor, L data samples in model space (each is flattened to D values).
        schedule: the forward process x_t = alpha(t) x_0 + sigma(t) eps.
        timesteps: native times, strictly ascending, at least two; pairs are consecutive entries.  Default
            :func:`default_timesteps` (all VP timesteps, or 100 unit-interval midpoints for EDM / flow).
        num_samples: M, the number of x_i ~ p_{t_prev} averaged in (1).
        exclude_self: leave each sample's own x_0 out of both mixtures (see the module docstring; the
            default ``False`` is the paper's estimator).
        common_noise: reuse the same data indices and noise for every pair (common random numbers).
        generator: source of the data indices and the noise (draws happen on its device).
        device: where to compute; default ``data.device``.
        chunk_size: edge of the (samples x components) blocks that bound memory; results do not depend
            on it beyond rounding.
        dtype: torch.float64 (default) or torch.float32, the precision of every M x L quantity.

    Returns:
        DataFrame, one row per pair, with columns ``t`` (native time of the later marginal p_t),
        ``t_prev``, ``unit`` (the pair's place on the unit interval, :func:`pair_units`: the later
        step for VP, the midpoint in u for EDM and flow), ``kl`` (nats) and ``kl_stderr`` (the Monte-Carlo
        standard error of ``kl`` over the M samples; NaN when M = 1).
    """
    if not isinstance(data, torch.Tensor) or data.ndim < 2:
        shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"data must be a tensor of shape (L, ...) with at least 2 dimensions, got {shape}")
    if not data.is_floating_point():
        raise ValueError(f"data must be a floating tensor in model space, got dtype {data.dtype}")
    num_data = data.shape[0]
    if num_data < (2 if exclude_self else 1) or data[0].numel() < 1:
        raise ValueError(
            f"data needs at least {2 if exclude_self else 1} non-empty samples "
            f"(exclude_self={exclude_self}), got shape {tuple(data.shape)}"
        )
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    times = _check_timesteps(schedule, timesteps)
    device = data.device if device is None else torch.device(device)
    ys = data.detach().reshape(num_data, -1).to(device=device, dtype=dtype)
    if not torch.isfinite(ys).all():
        raise ValueError("data contains NaN or inf")
    dim = ys.shape[1]

    alpha, sigma = (v.to(torch.float64) for v in schedule.alpha_sigma(times))
    a, s = alpha[:-1], sigma[:-1]  # the samples x_i and the marginal p_{t-1}
    b, sig = alpha[1:], sigma[1:]  # the marginal p_t
    num_pairs = a.numel()
    coef = _exponent_coefficients(a, s, b, sig).to(device=device, dtype=dtype)  # (2P, 5)

    rng_device = generator.device if generator is not None else device
    idx = _sample_indices(num_data, num_samples, generator, rng_device).to(device)
    norms_y = ys.square().sum(1)

    def draw_noise() -> tuple[torch.Tensor, torch.Tensor]:
        # Drawn in float64 whatever ``dtype`` is, so float32 and float64 runs see the same numbers.
        eps = torch.randn(num_samples, dim, generator=generator, device=rng_device, dtype=torch.float64)
        eps = eps.to(device=device, dtype=dtype)
        return eps, eps.to(torch.float64).square().sum(1)

    if common_noise:
        eps, norms_eps = draw_noise()
        lse = _mixture_logsumexp(ys, norms_y, idx, eps, coef, exclude_self, chunk_size)
        norms_eps = norms_eps.expand(num_pairs, -1)
    else:
        rows, norm_rows = [], []
        for p in range(num_pairs):
            eps, n_e = draw_noise()
            rows.append(
                _mixture_logsumexp(ys, norms_y, idx, eps, coef[[p, num_pairs + p]], exclude_self, chunk_size)
            )
            norm_rows.append(n_e)
        lse = torch.cat([torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])])
        norms_eps = torch.stack(norm_rows)

    # Add back what was taken out of the logsumexp (float64; the log L terms cancel).
    a, s, sig = (v.to(device) for v in (a, s, sig))
    shrink = (sig.square() - s.square()) / sig.square()  # 1 - s^2 / sigma_t^2
    log_ratio = (
        lse[:num_pairs].to(torch.float64)
        - lse[num_pairs:].to(torch.float64)
        - 0.5 * norms_eps * shrink[:, None]
        + (dim * (sig.log() - s.log()))[:, None]
    )
    kl = log_ratio.mean(1)
    if num_samples > 1:
        stderr = log_ratio.std(1) / math.sqrt(num_samples)
    else:
        stderr = torch.full_like(kl, float("nan"))
    t_out = times.cpu()
    return pd.DataFrame(
        {
            "t": t_out[1:].numpy(),
            "t_prev": t_out[:-1].numpy(),
            "unit": pair_units(schedule, t_out).numpy(),
            "kl": kl.cpu().numpy(),
            "kl_stderr": stderr.cpu().numpy(),
        }
    )


def gaussian_reference(data: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Data-free stand-ins for ``data``: as many draws of N(mean, v I), in float64, where mean is the
    data's per-dimension mean and v its variance averaged over dimensions.

    :func:`estimate_kl` on these draws, with the same L, M and generator seed as on the data, gives the
    estimator's *null*: what it reports at this D, L and M for data without structure.  At small t that is
    the own-component term ``D/2 (r - 1 - log r)`` (see the module docstring), although the reference's
    true KL (:func:`gaussian_kl`) is tiny there; only the excess of the data's estimate over the null is
    evidence about the data.
    """
    flat = data.detach().reshape(data.shape[0], -1).to(torch.float64)
    mean, variance = flat.mean(0), flat.var(0).mean()
    device = generator.device if generator is not None else flat.device
    noise = torch.randn(flat.shape, generator=generator, device=device, dtype=torch.float64)
    return mean + variance.sqrt() * noise.to(flat.device)


def gaussian_kl(
    mean: torch.Tensor, variance: torch.Tensor, schedule: NoiseSchedule, timesteps
) -> torch.Tensor:
    """Exact D_KL(p_{t_prev} || p_t) per consecutive pair of ``timesteps`` for data ~ N(mean, diag(variance))
    (``mean`` per dimension, ``variance`` per dimension or one number): every marginal is then the Gaussian
    N(alpha_t mean, alpha_t^2 variance + sigma_t^2), float64, shape (P,)."""
    times = _check_timesteps(schedule, timesteps)
    alpha, sigma = (v.to(torch.float64)[:, None] for v in schedule.alpha_sigma(times))
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    variance = torch.as_tensor(variance, dtype=torch.float64).reshape(1, -1)
    m, v = alpha * mean, alpha.square() * variance + sigma.square()
    m1, v1, m2, v2 = m[:-1], v[:-1], m[1:], v[1:]
    per_dim = 0.5 * ((v2 / v1).log() + (v1 + (m1 - m2).square()) / v2 - 1.0)
    return per_dim.sum(1)  # broadcasting gives (P, D): mean holds every dimension


def _check_timesteps(schedule: NoiseSchedule, timesteps) -> torch.Tensor:
    """Validated native times on the CPU: int64 for discrete schedules, float64 otherwise."""
    if timesteps is None:
        return default_timesteps(schedule).cpu()
    t = torch.as_tensor(timesteps).detach().cpu()
    if t.ndim != 1 or t.numel() < 2:
        raise ValueError(f"timesteps must be a 1-D sequence of at least 2 times, got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"timesteps must be real numbers, got dtype {t.dtype}")
    t64 = t.to(torch.float64)
    if not torch.isfinite(t64).all():
        raise ValueError("timesteps must be finite")
    if not (t64[1:] > t64[:-1]).all():
        raise ValueError(f"timesteps must be strictly ascending, got {t.tolist()[:8]}...")
    if schedule.discrete:
        last = schedule.num_timesteps - 1
        if (t64 != t64.round()).any() or t64[0] < 0 or t64[-1] > last:
            raise ValueError(f"timesteps of a discrete schedule must be integers in [0, {last}]")
        return t64.long()
    _, sigma = schedule.alpha_sigma(t64)
    if not (sigma > 0).all() or not torch.isfinite(sigma).all():
        raise ValueError("timesteps must have a finite noise level sigma(t) > 0 (flow: t > 0; EDM: t > 0)")
    return t64


def _sample_indices(num_data: int, num_samples: int, generator, device) -> torch.Tensor:
    """k(i): concatenated random permutations of 0..L-1, cut to M (no repeats while M <= L)."""
    perms = [
        torch.randperm(num_data, generator=generator, device=device)
        for _ in range(-(-num_samples // num_data))
    ]
    return torch.cat(perms)[:num_samples]


def _exponent_coefficients(a, s, b, sig) -> torch.Tensor:
    """(2P, 5) coefficients of [D, F, H, |y_k|^2, |y_j|^2] in -(d_ij - s^2 |eps_i|^2) / (2 sigma^2).

    Rows 0..P-1 evaluate p_{t-1} (b = a, sigma = s), rows P..2P-1 evaluate p_t.
    """

    def rows(a, s, b, sig):
        delta, var2 = a - b, 2.0 * sig.square()
        return torch.stack(
            [
                -a * b / var2,
                -2.0 * s * a / var2,
                -2.0 * s * delta / var2,
                -delta * a / var2,
                delta * b / var2,
            ],
            dim=1,
        )

    return torch.cat([rows(a, s, a, s), rows(a, s, b, sig)])


def _mixture_logsumexp(ys, norms_y, idx, eps, coef, exclude_self: bool, chunk: int) -> torch.Tensor:
    """(R, M): logsumexp over components j of the reduced exponents, for every coefficient row."""
    num_data, num_samples, num_rows = ys.shape[0], idx.numel(), coef.shape[0]
    out = torch.full((num_rows, num_samples), -math.inf, dtype=ys.dtype, device=ys.device)
    for r0 in range(0, num_samples, chunk):
        k = idx[r0 : r0 + chunk]
        y_k, e = ys[k], eps[r0 : r0 + chunk]
        n = k.numel()
        n_k = norms_y[k]
        own = (e * y_k).sum(1)  # eps_i . y_k(i)
        lhs = torch.cat([y_k, e])
        for c0 in range(0, num_data, chunk):
            y_c, n_c = ys[c0 : c0 + chunk], norms_y[c0 : c0 + chunk]
            m = y_c.shape[0]
            is_own = k[:, None] == torch.arange(c0, c0 + m, device=ys.device)[None, :]
            gram = lhs @ y_c.T  # [Y_k; E] Y_c^T: (2n, m)
            mats = torch.empty(5, n, m, dtype=ys.dtype, device=ys.device)
            torch.sub(n_k[:, None] + n_c[None, :], gram[:n], alpha=2.0, out=mats[0])
            mats[0].clamp_(min=0.0).masked_fill_(is_own, 0.0)  # D_kj
            mats[2] = gram[n:]  # H_ij
            torch.sub(own[:, None], mats[2], out=mats[1]).masked_fill_(is_own, 0.0)  # F_ij
            mats[3] = n_k[:, None]
            mats[4] = n_c[None, :]
            flat = mats.view(5, -1)
            step = max(1, _BATCH_ELEMENTS // (n * m))
            for q0 in range(0, num_rows, step):
                expo = (coef[q0 : q0 + step] @ flat).view(-1, n, m)
                if exclude_self:
                    expo.masked_fill_(is_own, -math.inf)
                acc = out[q0 : q0 + step, r0 : r0 + n]
                acc.copy_(torch.logaddexp(acc, torch.logsumexp(expo, dim=-1)))
    return out
