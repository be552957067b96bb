"""Tests of the first-order score-based KL estimator (``kl_score``).

Exact references: Gaussian data (every marginal Gaussian, closed-form KL), a Gaussian mixture (exact
marginal log-densities, the KL by Monte Carlo) and the 1-D first-order formula beta^2 (1 - v)^2 / (4 v^2).
The estimator gets the exact score of the marginals (``gaussian_mixture_score`` in
``tests/gaussian_mixture.py``), so what is tested is the expansion, the sampling, the autograd divergence
and the two-probe product.

Validation table, 3-component mixture in D = 256 (test_mixture_matches_exact_marginals; M = 16000
estimator samples, N = 20000 reference samples).  The reference is E[log p_{t-1} - log p_t] plus a
zero-mean control variate, so it stays unbiased while its SE drops ~100-fold; "plain MC" is the log-ratio
alone on the same N draws (relative SE sqrt(2 / (N KL)): useless at t = 1, 10 and 500, so the test only
checks it agrees with the reference within 3 of its own SEs):

    t    reference    ref. SE         plain MC (SE)          estimate (SE)        rel. error
    1    1.9312e-04   1.0e-06 (0.5%)  -1.17e-04 (1.4e-04)    1.9359e-04 (1.5%)    +0.2%
    10   1.1220e-03   6.0e-06 (0.5%)   3.29e-04 (3.4e-04)    1.1305e-03 (1.5%)    +0.8%
    100  6.6009e-03   2.3e-05 (0.3%)   5.70e-03 (8.0e-04)    6.6885e-03 (1.3%)    +1.3%
    500  1.0341e-04   1.7e-07 (0.2%)   1.80e-04 (1.0e-04)    1.0209e-04 (1.4%)    -1.3%

rms(g) there is 0.02 / 0.05 / 0.12 / 0.01, well inside the expansion.  Whole file: ~7 s on one thread.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from diffusion_curriculum.kl import default_timesteps
from diffusion_curriculum.kl_score import estimate_kl_score, relative_density_change
from diffusion_curriculum.schedules import make_schedule

from gaussian_mixture import gaussian_mixture_log_density, gaussian_mixture_score

COLUMNS = [
    "t", "t_prev", "unit", "kl", "kl_stderr", "kl_first_order_ok",
    "g_mean", "g_mean_stderr", "score_consistent",
]  # fmt: skip
VP_TIMES = (1, 10, 100, 500)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_kl(mu: torch.Tensor, var: torch.Tensor, schedule, timesteps) -> np.ndarray:
    """Exact D_KL(p_{t_prev} || p_t) for y ~ N(mu, diag(var)), per consecutive pair of ``timesteps``."""
    alpha, sigma = schedule.alpha_sigma(torch.as_tensor(timesteps))
    mean = alpha[:, None] * mu
    v = alpha[:, None] ** 2 * var + sigma[:, None] ** 2
    m1, v1, m2, v2 = mean[:-1], v[:-1], mean[1:], v[1:]
    return (0.5 * ((v2 / v1).log() + (v1 + (m1 - m2) ** 2) / v2 - 1.0)).sum(1).numpy()


def gaussian_problem(dim: int, num: int, seed: int, var_range=(0.1, 1.0)):
    """Diagonal Gaussian data: (mu, var, num exact samples, exact one-component mixture score params)."""
    g = gen(seed)
    mu = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    lo, hi = var_range
    var = lo + (hi - lo) * torch.rand(dim, generator=g, dtype=torch.float64)
    data = mu + var.sqrt() * torch.randn(num, dim, generator=g, dtype=torch.float64)
    return mu, var, data


def one_pair(score_fn, data, schedule, t_prev, t, num_samples, seed, **kwargs) -> pd.Series:
    df = estimate_kl_score(score_fn, data, schedule, [t_prev, t], num_samples, generator=gen(seed), **kwargs)
    assert len(df) == 1
    return df.iloc[0]


# --- Gaussian data, VP ----------------------------------------------------------------------------------
# Measured relative errors (estimate / closed form - 1) at t = 1, 10, 100, 500:
#   D = 4  (M = 20000): +0.2 %, -0.0 %, -0.3 %, +1.2 %   (SE 2.1, 2.1, 2.1, 1.2 %)
#   D = 64 (M = 8000):  +0.9 %, +1.4 %, +0.8 %, -3.6 %   (SE 1.9, 1.9, 1.8, 1.5 %)


@pytest.mark.parametrize(("dim", "num_samples"), [(4, 20000), (64, 8000)])
def test_gaussian_data_matches_closed_form_vp(dim, num_samples):
    schedule = make_schedule("vp")
    mu, var, data = gaussian_problem(dim, num_samples, seed=0)
    score = gaussian_mixture_score(mu[None], var[None], torch.ones(1), schedule)
    for t in VP_TIMES:
        row = one_pair(score, data, schedule, t - 1, t, num_samples, seed=1, batch_size=num_samples)
        ref = gaussian_kl(mu, var, schedule, [t - 1, t])[0]
        assert row.kl_first_order_ok and row.score_consistent
        assert abs(row.kl / ref - 1) < 0.10, (dim, t, row.kl, ref)
        assert row.kl_stderr / ref < 0.035  # the 10 % is >= 3 standard errors


# --- Gaussian mixture, VP, against the exact marginals ---------------------------------------------------
MIX_DIM = 256
MIX_VARIANCES = torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)
MIX_WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def mixture_means() -> torch.Tensor:
    # |mu_j - mu_k| ~ 11 against component sds <= 0.45: separated at small t, overlapping by VP t = 500
    # (alpha ~ 0.28), where the posterior couples the coordinates and Hutchinson's noise matters.
    return 0.5 * torch.randn(3, MIX_DIM, generator=gen(0), dtype=torch.float64)


def sample_mixture(means: torch.Tensor, num: int, g: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(MIX_WEIGHTS, num, replacement=True, generator=g)
    noise = torch.randn(num, means.shape[1], generator=g, dtype=torch.float64)
    return means[k] + MIX_VARIANCES[k].sqrt()[:, None] * noise


def mixture_laplacian_ratio(x: torch.Tensor, t: int, means: torch.Tensor, schedule) -> torch.Tensor:
    """Lap p_t / p_t in closed form: sum_k w_k(x) (|x - alpha mu_k|^2 / V_k^2 - D / V_k)."""
    alpha, sigma = schedule.alpha_sigma(torch.tensor(t))
    var = alpha**2 * MIX_VARIANCES + sigma**2
    d2 = (x[:, None, :] - alpha * means).square().sum(-1)
    log_comp = MIX_WEIGHTS.log() - 0.5 * (d2 / var + x.shape[1] * torch.log(2 * math.pi * var))
    post = torch.softmax(log_comp, dim=1)
    return (post * (d2 / var**2 - x.shape[1] / var)).sum(1)


def mixture_reference(means, schedule, t: int, num: int, seed: int, chunk: int = 5000):
    """D_KL(p_{t-1} || p_t) = E_{p_{t-1}}[log p_{t-1} - log p_t] with the exact mixture log-densities.

    Returns (reference, its SE, plain MC, its SE).  The plain log-ratio has variance ~2 KL, i.e. a relative
    SE of sqrt(2 / (N KL)): 32 % at t = 1 even with N = 2e5.  The reference adds the control variate g
    (first-order p_t / p_{t-1} - 1, with the closed-form Laplacian, not autograd), whose mean under
    p_{t-1} is exactly 0 (integration by parts), so the sum stays unbiased while its variance drops to
    ~KL^2 (relative SE ~ sqrt(2 / N)).  Same seed for every t: common random numbers.
    """
    g = gen(seed)
    a0, s0 = schedule.alpha_sigma(torch.tensor(t - 1))
    a1, s1 = schedule.alpha_sigma(torch.tensor(t))
    c = a1 / a0
    delta, gamma = 0.5 * (c**2 - 1), s1**2 - c**2 * s0**2
    score = gaussian_mixture_score(means, MIX_VARIANCES, MIX_WEIGHTS, schedule)
    log_ratio, control = [], []
    for _ in range(0, num, chunk):
        x = a0 * sample_mixture(means, chunk, g) + s0 * torch.randn(
            chunk, MIX_DIM, generator=g, dtype=torch.float64
        )
        log_ratio.append(
            gaussian_mixture_log_density(x, t - 1, means, MIX_VARIANCES, MIX_WEIGHTS, schedule)
            - gaussian_mixture_log_density(x, t, means, MIX_VARIANCES, MIX_WEIGHTS, schedule)
        )
        s = score(x, torch.full((chunk,), t - 1))
        lap = mixture_laplacian_ratio(x, t - 1, means, schedule)
        control.append(-delta * (MIX_DIM + (x * s).sum(1)) + 0.5 * gamma * lap)
    log_ratio, control = torch.cat(log_ratio), torch.cat(control)
    n = log_ratio.numel()
    with_cv = log_ratio + control
    return (
        with_cv.mean().item(),
        with_cv.std().item() / math.sqrt(n),
        log_ratio.mean().item(),
        log_ratio.std().item() / math.sqrt(n),
    )


def test_mixture_matches_exact_marginals():
    schedule = make_schedule("vp")
    means = mixture_means()
    score = gaussian_mixture_score(means, MIX_VARIANCES, MIX_WEIGHTS, schedule)
    num_samples = 16000
    data = sample_mixture(means, num_samples, gen(2))
    for t in VP_TIMES:
        ref, ref_se, plain, plain_se = mixture_reference(means, schedule, t, 20000, seed=5)
        row = one_pair(score, data, schedule, t - 1, t, num_samples, seed=3, batch_size=4000)
        assert ref_se / ref < 0.03, (t, ref, ref_se)
        assert abs(plain - ref) < 3 * plain_se, (t, plain, plain_se, ref)  # the control variate has mean 0
        assert row.kl_first_order_ok
        assert abs(row.kl / ref - 1) < 0.10, (t, row.kl, ref)


# --- the first-order formula in 1-D ---------------------------------------------------------------------
def test_one_dimensional_gaussian_matches_analytic_first_order():
    """N(0, v0) data: p_{t-1} = N(0, V), and D_KL ~ beta_t^2 (1 - V)^2 / (4 V^2)."""
    schedule = make_schedule("vp")
    num_samples = 50000
    v0 = 0.05
    data = math.sqrt(v0) * torch.randn(num_samples, 1, generator=gen(0), dtype=torch.float64)
    score = gaussian_mixture_score(torch.zeros(1, 1), torch.tensor([v0]), torch.ones(1), schedule)
    for t in (1, 50, 300):
        alpha, sigma = schedule.alpha_sigma(torch.tensor(t - 1))
        var = (alpha**2 * v0 + sigma**2).item()
        beta = schedule.betas[t].item()
        analytic = beta**2 * (1 - var) ** 2 / (4 * var**2)
        exact = gaussian_kl(torch.zeros(1), torch.tensor([v0]), schedule, [t - 1, t])[0]
        # the formula is the exact KL's leading term (relative difference ~ beta / V: 0.3 %, 1.7 %, 0.5 %)
        assert abs(analytic / exact - 1) < 0.03
        row = one_pair(score, data, schedule, t - 1, t, num_samples, seed=1, batch_size=num_samples)
        # g^2 has a relative sd of sqrt(56) / 2 ~ 3.7 per sample: SE ~1.7 %, so 7 % is ~4 SE.  Measured:
        # +2.4 %, +0.7 %, +1.3 %.
        assert abs(row.kl / analytic - 1) < 0.07, (t, row.kl, analytic)


# --- the two-probe product ------------------------------------------------------------------------------
def test_two_probe_product_is_unbiased_and_a_squared_single_probe_is_not():
    """A correlated Gaussian, s = -P (x - m): div s = -tr P exactly, but v^T P v has variance
    2 (|P|_F^2 - sum P_ii^2) > 0, which squaring one probe's g adds to E[g^2].  Measured, relative to
    E[g^2]: two probes -0.4 % (SE 0.8 %); one probe squared +53.7 % (SE 1.2 %; predicted +55.0 %)."""
    dim, num = 16, 20000
    g = gen(0)
    b = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    cov = b @ b.T / dim + 0.2 * torch.eye(dim, dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    mean = torch.randn(dim, generator=g, dtype=torch.float64)
    x = mean + torch.randn(num, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    probes = (2 * torch.randint(0, 2, (2, num, dim), generator=g) - 1).to(torch.float64)

    def score_fn(x, t):
        return -(x - mean) @ prec

    gamma = 1e-3
    delta = -gamma / 2
    g1, g2 = relative_density_change(score_fn, x, torch.zeros(num), delta, gamma, probes)
    s = score_fn(x, None)
    exact = -delta * (dim + (x * s).sum(1)) + 0.5 * gamma * (s.square().sum(1) - prec.trace())

    def mean_se(v: torch.Tensor) -> tuple[float, float]:
        return v.mean().item(), v.std().item() / math.sqrt(v.numel())

    target = exact.square().mean().item()
    diff, diff_se = mean_se(g1 * g2 - exact.square())  # paired: same x
    assert abs(diff) < 4 * diff_se, (diff, diff_se)
    assert abs(diff) < 0.02 * target
    bias, bias_se = mean_se(g1.square() - exact.square())
    expected_bias = (gamma / 2) ** 2 * 2 * (prec.square().sum() - prec.diagonal().square().sum()).item()
    assert bias > 10 * bias_se and bias > 0.2 * target, (bias, bias_se, target)
    assert abs(bias / expected_bias - 1) < 0.1


# --- EDM and flow: the general c / gamma step -------------------------------------------------------------
# Measured relative errors, D = 16, 100-point default grid, pairs starting at units 0.105 / 0.305 / 0.505:
#   EDM  (sigma 0.067 -> 0.071, 0.163 -> 0.169, 0.306 -> 0.315): +1.2 %, +2.2 %, +3.5 %   (SE ~1.3 %)
#   flow (t 0.105 -> 0.115, 0.305 -> 0.315, 0.505 -> 0.515):      -1.0 %, +2.6 %, +1.2 %   (SE ~1.2 %)
# On that grid the error grows with the step: EDM +10 % at unit 0.855 (rms g 0.27), +56 % at 0.975 (rms g
# 1.2, flagged); flow stays within 5 % up to t = 0.985 thanks to delta = (c^2 - 1) / 2.
@pytest.mark.parametrize("framework", ["edm", "flow"])
def test_continuous_schedules_match_closed_form(framework):
    schedule = make_schedule(framework)
    num_samples = 20000
    mu, var, data = gaussian_problem(16, num_samples, seed=0, var_range=(0.05, 0.25))
    score = gaussian_mixture_score(mu[None], var[None], torch.ones(1), schedule)
    grid = default_timesteps(schedule, 100)
    for i in (10, 30, 50):
        pair = [grid[i].item(), grid[i + 1].item()]
        row = one_pair(score, data, schedule, *pair, num_samples, seed=1, batch_size=num_samples)
        ref = gaussian_kl(mu, var, schedule, pair)[0]
        assert row.kl_first_order_ok
        assert abs(row.kl / ref - 1) < 0.10, (framework, pair, row.kl, ref)


def test_first_order_flag_marks_steps_large_against_the_data_spread():
    """VP t = 1 on data with variance 1e-6 (a thin support): gamma = beta_1 ~ 1.2e-4 is about the noised
    variance sigma_0^2 + 1e-6 ~ 1e-4, so the expansion fails and the row says so; at t = 500 it holds."""
    schedule = make_schedule("vp")
    mu, var, data = gaussian_problem(64, 2000, seed=0, var_range=(1e-6, 1e-6))
    score = gaussian_mixture_score(mu[None], var[None], torch.ones(1), schedule)
    df = estimate_kl_score(score, data, schedule, [0, 1, 499, 500], 2000, generator=gen(1), batch_size=2000)
    assert df.kl_first_order_ok.tolist() == [False, False, True]


# --- interface -------------------------------------------------------------------------------------------
def small_problem():
    schedule = make_schedule("vp")
    means = torch.randn(2, 6, generator=gen(0), dtype=torch.float64)
    variances = torch.tensor([0.3, 0.6], dtype=torch.float64)
    weights = torch.tensor([0.4, 0.6], dtype=torch.float64)
    data = torch.randn(50, 2, 3, generator=gen(1), dtype=torch.float64)  # flattened to D = 6
    return schedule, gaussian_mixture_score(means, variances, weights, schedule), data


def test_columns_reproducibility_and_batch_size():
    schedule, score, data = small_problem()
    ts = [0, 10, 200, 999]
    a = estimate_kl_score(score, data, schedule, ts, 64, generator=gen(3), batch_size=64)
    b = estimate_kl_score(score, data, schedule, ts, 64, generator=gen(3), batch_size=64)
    c = estimate_kl_score(score, data, schedule, ts, 64, generator=gen(3), batch_size=7)
    d = estimate_kl_score(score, data, schedule, ts, 64, generator=gen(4), batch_size=64)
    assert list(a.columns) == COLUMNS
    assert a.t.tolist() == [10, 200, 999] and a.t_prev.tolist() == [0, 10, 200]
    np.testing.assert_allclose(a.unit, np.array([10, 200, 999]) / 1000)
    assert a.kl_first_order_ok.dtype == bool
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c, check_exact=False, rtol=1e-12)
    assert not np.allclose(a.kl, d.kl)
    assert (a.kl_stderr > 0).all()
    # no_grad around the call does not break the divergence
    with torch.no_grad():
        e = estimate_kl_score(score, data, schedule, ts, 64, generator=gen(3), batch_size=64)
    pd.testing.assert_frame_equal(a, e)


def test_default_timesteps_of_a_continuous_schedule():
    schedule = make_schedule("edm")
    mu, var, data = gaussian_problem(3, 20, seed=0)
    score = gaussian_mixture_score(mu[None], var[None], torch.ones(1), schedule)
    df = estimate_kl_score(score, data, schedule, num_samples=8, generator=gen(0), grid_points=5)
    np.testing.assert_allclose(df.unit, [0.2, 0.4, 0.6, 0.8])  # pair midpoints in u
    np.testing.assert_allclose(df.t_prev, default_timesteps(schedule, 5)[:-1].numpy())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"score_fn": "not a function"}, "score_fn"),
        ({"score_fn": lambda x, t: x[:, :1]}, "score_fn"),
        ({"score_fn": lambda x, t: -x.detach()}, "score_fn"),
        ({"score_fn": lambda x, t: (-x).tolist()}, "score_fn"),
        ({"num_samples": 1}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"timesteps": [5, 3]}, "timesteps"),
        ({"timesteps": [0, 1000]}, "timesteps"),
        ({"timesteps": [1]}, "timesteps"),
        ({"timesteps": [0.5, 1.5]}, "timesteps"),
        ({"batch_size": 0}, "batch_size"),
        ({"grid_points": 1}, "grid_points"),
        ({"data": torch.zeros(5)}, "data"),
        ({"data": torch.zeros(5, 2, dtype=torch.long)}, "data"),
        ({"schedule": "vp"}, "schedule"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, name):
    schedule, score, data = small_problem()
    args = {"score_fn": score, "data": data, "schedule": schedule, "timesteps": [0, 1], "num_samples": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        estimate_kl_score(**args)


def test_flow_timestep_without_signal_is_rejected():
    schedule = make_schedule("flow")
    _, _, data = small_problem()
    with pytest.raises(ValueError, match="timesteps"):
        estimate_kl_score(lambda x, t: -x, data, schedule, [0.5, 1.0], 4)


# --- the mixture helpers -------------------------------------------------------------------------------
def test_mixture_density_and_score_against_torch_distributions():
    schedule = make_schedule("vp")
    g = gen(0)
    means = torch.randn(3, 5, generator=g, dtype=torch.float64)
    variances = torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.1  # diagonal components
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)  # normalised by the helpers
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (40,), generator=g)
    alpha, sigma = schedule.alpha_sigma(t)
    comp = torch.distributions.Independent(
        torch.distributions.Normal(
            alpha[:, None, None] * means,
            (alpha[:, None, None] ** 2 * variances + sigma[:, None, None] ** 2).sqrt(),
        ),
        1,
    )
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=weights.expand(40, 3) / 6), comp
    )
    got = gaussian_mixture_log_density(x, t, means, variances, weights, schedule)
    torch.testing.assert_close(got, mix.log_prob(x), rtol=1e-12, atol=1e-12)
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(mix.log_prob(xr).sum(), xr)
    score = gaussian_mixture_score(means, variances, weights, schedule)
    torch.testing.assert_close(score(x, t), auto, rtol=1e-10, atol=1e-12)
    # isotropic components given as (K,) and a scalar time
    iso = gaussian_mixture_log_density(x, 7, means, variances[:, 0], weights, schedule)
    full = gaussian_mixture_log_density(
        x, torch.full((40,), 7), means, variances[:, :1].expand(3, 5), weights, schedule
    )
    torch.testing.assert_close(iso, full)
    with pytest.raises(ValueError, match="variances"):
        gaussian_mixture_score(means, variances[:, :2], weights, schedule)
    with pytest.raises(ValueError, match="weights"):
        gaussian_mixture_score(means, variances, -weights, schedule)


def test_consistency_check_flags_a_wrong_score():
    """E[g] = 0 for the true score; a model error shifts it (at the Gaussian end by beta/2 E|e|^2) and
    inflates the KL, and the check says so while the exact score passes it."""
    schedule = make_schedule("vp")
    mu, var, data = gaussian_problem(16, 4000, seed=3)
    exact = gaussian_mixture_score(mu[None], var[None], torch.ones(1), schedule)

    def off_by_a_little(x, t):
        return exact(x, t) + 0.3

    rows = {
        name: one_pair(fn, data, schedule, 899, 900, 4000, seed=4, batch_size=4000)
        for name, fn in (("exact", exact), ("wrong", off_by_a_little))
    }
    assert rows["exact"].score_consistent and not rows["wrong"].score_consistent
    assert rows["wrong"].g_mean > 5 * rows["wrong"].g_mean_stderr
    assert rows["wrong"].kl > 2 * rows["exact"].kl
