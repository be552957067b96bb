"""D_KL(p_{t_prev} || p_t) between consecutive diffusion marginals from a score model, to first order.

Unlike :mod:`.kl` (a mixture over the L data points, dominated at small t by each sample's own component)
this uses the score s = grad log p_{t_prev} of the earlier marginal.  Expanding one forward step to first
order gives p_t = p_{t_prev} (1 + g) with g = -delta (D + x.s) + (gamma/2) (div s + |s|^2), and
D_KL = 1/2 E[g^2] (for VP: beta^2 / 8 E[(D + x.s + div s + |s|^2)^2]).  :func:`estimate_kl_score`
averages it over M noised data samples, with Hutchinson's estimate of div s from two independent probes
whose product is unbiased for g^2.

What a caller needs to know:

* ``score_fn(x, t)`` must be differentiable in x (the divergence comes from autograd).
* ``kl_first_order_ok`` flags pairs where rms(g) exceeds 0.5: there the step is not small against the
  noised data's variance in its thinnest directions (VP at small t on data with a thin support) and the
  expansion does not hold.
* ``score_consistent`` checks E[g] = 0, which holds exactly for the true score; a pair that fails it
  reads the score model's error more than the data.
* The draws are common random numbers shared by every pair: a smooth curve, correlated errors.

The derivation, the choice delta = (c^2 - 1) / 2, the two-probe product and the error analysis are in
``docs/kl_score_estimator.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .kl import _check_timesteps, _sample_indices, default_timesteps, pair_units
from .schedules import NoiseSchedule, broadcast_to

__all__ = [
    "EXPERT_COLUMNS",
    "estimate_kl_score",
    "estimate_kl_with_experts",
    "expert_for",
    "relative_density_change",
    "score_of",
    "score_pairs",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# rms(g) < 0.5  <=>  mean(g1 g2) < 0.25
_MAX_MEAN_SQUARE_G = 0.25
# |mean g| within this many standard errors of 0: the score passes the consistency check.
SCORE_CONSISTENCY_Z = 3.0


def estimate_kl_score(
    score_fn: ScoreFn,
    data: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor | Sequence[float] | None = None,
    num_samples: int = 256,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 256,
    grid_points: int = 100,
) -> pd.DataFrame:
    """First-order estimate of D_KL(p_{t_prev} || p_t) for each pair of consecutive ``timesteps``.

    Args:
        score_fn: ``score_fn(x, t) -> s``: x (B, D) flattened samples at time t_prev (float64), t (B,)
            native times (int64 for VP, float64 otherwise); returns grad_x log p_t(x), shape (B, D),
            differentiable w.r.t. x (an x0-predicting network gives it by Tweedie's formula,
            s = (alpha x0_hat - x) / sigma^2).
        data: (L, ...) floating tensor of data samples y in model space (each flattened to D values).
        schedule: the forward process x_t = alpha(t) x_0 + sigma(t) eps.
        timesteps: native times, strictly ascending, at least two; pairs are consecutive entries.  Default
            :func:`.kl.default_timesteps` (every VP timestep, or ``grid_points`` unit-interval midpoints).
        num_samples: M >= 2, samples x ~ p_{t_prev} per pair.
        generator: source of the indices, the noise and the probes (draws happen on its device).
        device: where to compute; default ``data.device``.
        batch_size: samples per call of ``score_fn`` (bounds memory; results do not depend on it).
        grid_points: number of default times of a continuous schedule.

    Returns:
        DataFrame, one row per pair: ``t`` (the later time), ``t_prev``, ``unit`` (:func:`.kl.pair_units`),
        ``kl`` (nats), ``kl_stderr`` (Monte-Carlo standard error), ``kl_first_order_ok`` (see the module
        docstring), ``g_mean`` and ``g_mean_stderr`` (the mean of g over the samples) and
        ``score_consistent``: ``|g_mean| <= 3 g_mean_stderr``.  For the true score E[g] = 0 exactly
        (integration by parts), whereas an error e in the score shifts it -- at the Gaussian end of VP by
        beta/2 E|e|^2, a bias that also enters ``kl`` -- so pairs that fail the check read the model's
        error more than the data.
    """
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable, got {type(score_fn).__name__}")
    if not isinstance(data, torch.Tensor) or data.ndim < 2:
        shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"data must be a tensor of shape (L, ...) with at least 2 dimensions, got {shape}")
    if not data.is_floating_point():
        raise ValueError(f"data must be a floating tensor in model space, got dtype {data.dtype}")
    if data.shape[0] < 1 or data[0].numel() < 1:
        raise ValueError(f"data needs at least 1 non-empty sample, got shape {tuple(data.shape)}")
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    for name, value, low in (("num_samples", num_samples, 2), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 2:
        raise ValueError(f"grid_points must be an integer >= 2, got {grid_points!r}")
    times = _check_timesteps(
        schedule, default_timesteps(schedule, grid_points) if timesteps is None else timesteps
    )
    alpha, sigma = (v.to(torch.float64) for v in schedule.alpha_sigma(times))
    if not (alpha > 0).all():
        raise ValueError("timesteps must have a signal coefficient alpha(t) > 0 (flow: t < 1)")
    c = alpha[1:] / alpha[:-1]
    deltas = (0.5 * (c.square() - 1.0)).tolist()
    gammas = (sigma[1:].square() - c.square() * sigma[:-1].square()).tolist()

    device = data.device if device is None else torch.device(device)
    num_data = data.shape[0]
    ys = data.detach().reshape(num_data, -1).to(device=device, dtype=torch.float64)
    if not torch.isfinite(ys).all():
        raise ValueError("data contains NaN or inf")
    dim = ys.shape[1]
    rng_device = generator.device if generator is not None else device
    idx = _sample_indices(num_data, num_samples, generator, rng_device).to(device)
    eps = torch.randn(num_samples, dim, generator=generator, device=rng_device, dtype=torch.float64)
    eps = eps.to(device)
    # int8 keeps the common probes at 2 bytes per sample coordinate.
    probes = torch.randint(
        0, 2, (2, num_samples, dim), generator=generator, device=rng_device, dtype=torch.int8
    )
    probes = (2 * probes - 1).to(device)

    times_dev = times.to(device)
    kl, stderr, ok, g_mean, g_stderr = [], [], [], [], []
    for p in range(len(deltas)):
        prods, means = [], []
        for b0 in range(0, num_samples, batch_size):
            b1 = min(b0 + batch_size, num_samples)
            x = alpha[p].item() * ys[idx[b0:b1]] + sigma[p].item() * eps[b0:b1]
            t_batch = times_dev[p].expand(b1 - b0)
            g = relative_density_change(score_fn, x, t_batch, deltas[p], gammas[p], probes[:, b0:b1])
            prods.append(g[0] * g[1])
            means.append(0.5 * (g[0] + g[1]))
        prod, mean_g = torch.cat(prods), torch.cat(means)
        g_mean.append(mean_g.mean().item())
        g_stderr.append(mean_g.std().item() / math.sqrt(num_samples))
        mean_square = prod.mean().item()
        kl.append(0.5 * mean_square)
        stderr.append(0.5 * prod.std().item() / math.sqrt(num_samples))
        ok.append(math.isfinite(mean_square) and mean_square < _MAX_MEAN_SQUARE_G)
    return pd.DataFrame(
        {
            "t": times[1:].numpy(),
            "t_prev": times[:-1].numpy(),
            "unit": pair_units(schedule, times).numpy(),
            "kl": kl,
            "kl_stderr": stderr,
            "kl_first_order_ok": ok,
            "g_mean": g_mean,
            "g_mean_stderr": g_stderr,
            "score_consistent": [
                abs(m) <= SCORE_CONSISTENCY_Z * e for m, e in zip(g_mean, g_stderr, strict=True)
            ],
        }
    )


def relative_density_change(
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    delta: float,
    gamma: float,
    probes: torch.Tensor,
) -> torch.Tensor:
    """g(x) = p_b(x) / p_a(x) - 1 to first order, once per Hutchinson probe: (P, B) float64.

    ``g_j = -delta (D + x.s) + (gamma/2) (v_j^T (ds/dx) v_j + |s|^2)`` with s = ``score_fn(x, t)`` the
    score of p_a, x (B, D), t (B,), the step's delta = (c^2 - 1) / 2 and gamma
    (``docs/kl_score_estimator.md``), and probes (P, B, D) (Rademacher in :func:`estimate_kl_score`).
    """
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable, got {type(score_fn).__name__}")
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor of shape (B, D), got {getattr(x, 'shape', x)!r}")
    if not isinstance(probes, torch.Tensor) or probes.ndim != 3 or probes.shape[1:] != x.shape:
        shape = tuple(probes.shape) if isinstance(probes, torch.Tensor) else type(probes).__name__
        raise ValueError(f"probes must have shape (P, {x.shape[0]}, {x.shape[1]}), got {shape}")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        s = score_fn(x, t)
        if not isinstance(s, torch.Tensor) or s.shape != x.shape or not s.is_floating_point():
            got = (
                f"shape {tuple(s.shape)}, dtype {s.dtype}"
                if isinstance(s, torch.Tensor)
                else type(s).__name__
            )
            raise ValueError(f"score_fn must return a floating tensor of shape {tuple(x.shape)}, got {got}")
        if not s.requires_grad:
            raise ValueError("score_fn's output must be differentiable w.r.t. x (was it run under no_grad?)")
        s64 = s.detach().to(torch.float64)
        x64 = x.detach().to(torch.float64)
        base = -delta * (x.shape[1] + (x64 * s64).sum(1)) + 0.5 * gamma * s64.square().sum(1)
        out = []
        for j, v in enumerate(probes):
            (vjp,) = torch.autograd.grad(
                s, x, grad_outputs=v.to(s.dtype), retain_graph=j < len(probes) - 1, allow_unused=True
            )
            # A score that does not depend on x has no graph to x: zero divergence.
            div = torch.zeros_like(base) if vjp is None else (vjp.to(torch.float64) * v).sum(1)
            out.append(base + 0.5 * gamma * div)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------------
# the score of trained experts, each on its own interval

#: The columns of :func:`estimate_kl_with_experts`' table.
EXPERT_COLUMNS = [
    "t", "t_prev", "unit", "kl", "kl_stderr", "kl_first_order_ok", "g_mean", "g_mean_stderr",
    "score_consistent", "expert",
]  # fmt: skip


def score_pairs(schedule: NoiseSchedule, grid_points: int) -> list[tuple]:
    """The (t_prev, t) pairs to estimate, ascending: VP pairs (t - 1, t) for ``grid_points`` timesteps
    t spaced geometrically from 1 (the curve changes fastest near the data); continuous schedules
    consecutive points of a ``grid_points + 1`` point grid."""
    if schedule.discrete:
        last = schedule.num_timesteps - 1
        ts = np.unique(np.round(np.geomspace(1, last, grid_points)).astype(np.int64))
        return [(int(t) - 1, int(t)) for t in ts]
    times = default_timesteps(schedule, grid_points + 1).tolist()
    return list(zip(times[:-1], times[1:], strict=True))


def expert_for(experts: list, unit: float):
    """The (denoiser, interval) of ``experts`` whose interval [unit_low, unit_high) holds ``unit`` (the
    last one also holds 1)."""
    for denoiser, interval in experts:
        if interval["unit_low"] <= unit < interval["unit_high"] or (
            unit >= 1.0 and interval["unit_high"] >= 1.0
        ):
            return denoiser, interval
    raise ValueError(f"no expert covers unit time {unit:.4f}")


def score_of(denoiser, shape: tuple[int, ...]):
    """score_fn(x, t) of an x0-predicting denoiser: s = (alpha x0_hat - x) / sigma^2 (Tweedie), with the
    null condition, so s is the score of the unconditional marginal."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        images = x.to(torch.float32).reshape(-1, *shape)
        x0 = denoiser(images, t, None)
        alpha, sigma = denoiser.schedule.alpha_sigma(t)
        s = (broadcast_to(alpha, images) * x0 - images) / broadcast_to(sigma.square(), images)
        return s.reshape(x.shape[0], -1).to(x.dtype)

    return score


def estimate_kl_with_experts(
    experts: list,
    images: torch.Tensor,
    grid_points: int,
    num_samples: int,
    *,
    shape: tuple[int, int, int],
    seed: int,
    device: str,
    batch_size: int,
) -> pd.DataFrame:
    """:func:`estimate_kl_score` at every pair of :func:`score_pairs`, each with the score of the expert
    whose interval holds the pair's earlier time.  ``experts``: (denoiser, interval) of each, on one
    schedule, for data of ``shape`` (C, H, W); every pair uses the same ``seed`` (the same data, noise
    and probes: common random numbers).  Columns :data:`EXPERT_COLUMNS` (``expert``: the interval's
    index)."""
    schedule = experts[0][0].schedule
    rows = []
    for t_prev, t in score_pairs(schedule, grid_points):
        unit = float(schedule.to_unit(torch.as_tensor(t_prev, dtype=torch.float64)))
        denoiser, interval = expert_for(experts, unit)
        table = estimate_kl_score(
            score_of(denoiser, shape),
            images,
            schedule,
            [t_prev, t],
            num_samples,
            generator=torch.Generator(device=device).manual_seed(seed),
            device=device,
            batch_size=batch_size,
        )
        rows.append(table.assign(expert=int(interval["index"])))
    return pd.concat(rows, ignore_index=True)[EXPERT_COLUMNS]
