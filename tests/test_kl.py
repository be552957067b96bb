"""Tests of the Monte-Carlo estimator of the KL between consecutive diffusion marginals (``kl``).

Reference values come from two exact cases:

* Gaussian data y ~ N(mu, diag(sd^2)): every marginal is Gaussian, p_t = N(alpha_t mu, alpha_t^2 sd^2 +
  sigma_t^2), so D_KL(p_{t-1} || p_t) has a closed form (:func:`gaussian_kl`).  The estimator replaces p_t
  by an L-component mixture, so it matches only where sigma_t is large against the data's
  nearest-neighbour spacing; the data are *moment-matched* samples (exact mean and covariance) so that the
  comparison measures the estimator, not the sampling noise of the data's first two moments.
* Small sigma (VP t = 1): each x_i's own component dominates both mixtures (self included), and the
  estimate is the KL between two Gaussians centred on the same image.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from diffusion_curriculum.difficulty import cluster_intervals
from diffusion_curriculum.kl import (
    default_timesteps,
    estimate_kl,
    gaussian_kl,
    gaussian_reference,
    pair_units,
)
from diffusion_curriculum.schedules import make_schedule

COLUMNS = ["t", "t_prev", "unit", "kl", "kl_stderr"]


def gaussian_kl_ref(mu: torch.Tensor, sd: torch.Tensor, schedule, timesteps) -> np.ndarray:
    """Exact D_KL(p_{t_prev} || p_t) for y ~ N(mu, diag(sd^2)), per consecutive pair of ``timesteps``."""
    alpha, sigma = schedule.alpha_sigma(torch.as_tensor(timesteps))
    mean = alpha[:, None] * mu
    var = alpha[:, None] ** 2 * sd**2 + sigma[:, None] ** 2
    m1, v1, m2, v2 = mean[:-1], var[:-1], mean[1:], var[1:]
    return (0.5 * ((v2 / v1).log() + (v1 + (m1 - m2) ** 2) / v2 - 1.0)).sum(1).numpy()


def moment_matched_gaussian(num: int, mu: torch.Tensor, sd: torch.Tensor, seed: int) -> torch.Tensor:
    """``num`` samples whose empirical mean is exactly mu and covariance exactly diag(sd^2)."""
    z = torch.randn(num, mu.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / num)
    z = torch.linalg.solve_triangular(chol, z.T, upper=False).T
    return mu + sd * z


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_matches_brute_force_with_the_same_draws():
    """The Gram-matrix evaluation equals a direct evaluation of eq. (1)-(2) with the same x_i.

    The draws are documented: k(i) from ``torch.randperm(L)`` (then eps ~ N(0, I) in float64), so the test
    rebuilds the x_i and evaluates every Gaussian density directly, at small t (own component dominates),
    moderate and large t, with and without the own component.
    """
    schedule = make_schedule("vp")
    num_data, num_samples, dim = 50, 40, 7
    data = torch.rand(num_data, dim, generator=gen(0), dtype=torch.float64) * 2 - 1
    ts = torch.tensor([0, 1, 2, 10, 100, 500, 999])
    alpha, sigma = schedule.alpha_sigma(ts)
    for exclude_self in (False, True):
        got = estimate_kl(
            data, schedule, ts, num_samples, exclude_self=exclude_self, generator=gen(1), chunk_size=16
        )
        g = gen(1)
        k = torch.randperm(num_data, generator=g)[:num_samples]
        eps = torch.randn(num_samples, dim, generator=g, dtype=torch.float64)

        def log_p(x, a, s, k=k, exclude_self=exclude_self):
            d2 = (x[:, None, :] - a * data[None]).square().sum(-1)
            logits = -d2 / (2 * s**2)
            if exclude_self:
                logits[torch.arange(num_samples), k] = -math.inf
            n = num_data - int(exclude_self)
            return torch.logsumexp(logits, 1) - math.log(n) - dim / 2 * torch.log(2 * math.pi * s**2)

        expected = []
        for p in range(len(ts) - 1):
            x = alpha[p] * data[k] + sigma[p] * eps
            expected.append((log_p(x, alpha[p], sigma[p]) - log_p(x, alpha[p + 1], sigma[p + 1])).mean())
        np.testing.assert_allclose(got.kl.to_numpy(), torch.stack(expected).numpy(), rtol=1e-9, atol=1e-12)


def test_gaussian_data_matches_closed_form():
    """Estimate within 5 % of the exact Gaussian KL at moderate/large t (VP linear, T = 1000).

    D = 4, sd in [0.15, 0.5], L = 2000 moment-matched samples, M = 16000.  The pairs (100, 200) and
    (200, 400) have sigma_t = 0.32 ... 0.90, comparable to the data spread; exact KL 0.47 and 0.43 nats,
    Monte-Carlo standard error ~1.3 % of that, so 5 % is a >3.5-sigma bound (observed here: +0.01 % and
    -1.1 %; over four other seeds at most 2.5 %).
    """
    schedule = make_schedule("vp", beta_schedule="linear", num_timesteps=1000)
    mu = torch.linspace(0.6, -0.4, 4, dtype=torch.float64)
    sd = torch.linspace(0.15, 0.5, 4, dtype=torch.float64)
    ts = [100, 200, 400]
    data = moment_matched_gaussian(2000, mu, sd, seed=0)
    df = estimate_kl(data, schedule, ts, 16_000, generator=gen(7))
    exact = gaussian_kl_ref(mu, sd, schedule, ts)
    assert list(df.columns) == COLUMNS
    assert df.t.tolist() == [200, 400] and df.t_prev.tolist() == [100, 200]
    np.testing.assert_allclose(df.unit, [0.2, 0.4])
    rel = (df.kl.to_numpy() - exact) / exact
    assert np.all(np.abs(rel) < 0.05), (rel, df)
    assert np.all(df.kl_stderr.to_numpy() < 0.02 * exact), df  # the reported error is as small as claimed


def test_gaussian_data_matches_closed_form_edm():
    """Same check on the EDM (variance-exploding) schedule: p_sigma = N(mu, sd^2 + sigma^2).

    sigma 0.5 -> 1.0, exact KL 0.91 nats, L = 1000, M = 8000: standard error ~1.2 %, observed error +1.4 %
    (over four seeds: at most 1.7 %).
    """
    schedule = make_schedule("edm")
    mu = torch.linspace(0.6, -0.4, 4, dtype=torch.float64)
    sd = torch.linspace(0.15, 0.5, 4, dtype=torch.float64)
    ts = [0.5, 1.0]
    data = moment_matched_gaussian(1000, mu, sd, seed=0)
    df = estimate_kl(data, schedule, ts, 8000, generator=gen(3))
    exact = gaussian_kl_ref(mu, sd, schedule, ts)
    rel = (df.kl.to_numpy() - exact) / exact
    assert np.all(np.abs(rel) < 0.05), (rel, exact, df)


def test_error_shrinks_with_number_of_data_samples():
    """The finite-L error is a positive bias that vanishes as L grows, fastest at large sigma.

    VP linear, D = 2, M = 2000, pairs (10,20) (20,40) (40,80) (80,160), sigma_t from 0.05 to 0.49
    against sd in [0.15, 0.5].  The mixture of L near-deltas over-estimates the KL wherever sigma_t is
    below the data's nearest-neighbour spacing ~ sd L^(-1/D).  Observed relative errors (``pytest -s``
    prints this table; these seeds, M = 2000):

        L      (10,20)  (20,40)  (40,80)  (80,160)  mean |rel|
        100    +17.45   +1.529   +0.158   -0.047    4.80
        1000   +1.198   +0.106   -0.009   -0.037    0.34
        8000   +0.383   -0.003   -0.017   -0.011    0.10

    At the smallest t the bias falls ~15x from L = 100 to 1000 and ~3x more to 8000; at sigma_t >= 0.14
    it is already below the Monte-Carlo error of M = 2000 samples (5-15 % of these KLs) at L = 1000, and
    the error stops shrinking with L.
    """
    schedule = make_schedule("vp")
    mu = torch.tensor([0.6, -0.4], dtype=torch.float64)
    sd = torch.tensor([0.15, 0.5], dtype=torch.float64)
    ts = [10, 20, 40, 80, 160]
    exact = gaussian_kl_ref(mu, sd, schedule, ts)
    sizes = [100, 1000, 8000]
    rows = {}
    for num_data in sizes:
        data = moment_matched_gaussian(num_data, mu, sd, seed=num_data)
        df = estimate_kl(data, schedule, ts, 2000, generator=gen(11))
        rows[num_data] = (df.kl.to_numpy() - exact) / exact
    table = pd.DataFrame(rows, index=[f"({a},{b})" for a, b in zip(ts[:-1], ts[1:], strict=True)]).T
    table["mean |rel|"] = table.abs().mean(axis=1)
    print("\nrelative error of the KL estimate vs closed form (rows: L, columns: (t_prev, t))")
    print(table.to_string(float_format=lambda v: f"{v:+.3f}"))
    err = np.abs(np.stack([rows[n] for n in sizes]))
    # Smallest t: bias dominates, strictly decreasing in L, and at least 10x smaller at L = 8000.
    assert err[0, 0] > err[1, 0] > err[2, 0]
    assert err[2, 0] < 0.1 * err[0, 0]
    assert err[2, 1] < 0.5 * err[0, 1]
    assert err[2].mean() < 0.5 * err[0].mean()
    assert np.all(rows[100][:2] > 0)  # the finite-L bias is positive (the KL of empirical marginals)


def test_high_dimensional_small_t_is_finite_and_matches_the_own_component_limit():
    """784-dimensional data at VP t = 1 (sigma ~ 0.01): finite, positive, equal to the Gaussian limit.

    Other components are ~1e6 nats away, so with self included the estimate must be the KL between
    N(alpha_0 y, sigma_0^2 I) and N(alpha_1 y, sigma_1^2 I), averaged over y: D/2 (r - 1 - log r) +
    (alpha_0 - alpha_1)^2 |y|^2 / (2 sigma_1^2), r = sigma_0^2 / sigma_1^2 (~ 95 nats in 784 dims).
    """
    schedule = make_schedule("vp", num_timesteps=1000)
    data = torch.rand(256, 1, 28, 28, generator=gen(0)) * 2 - 1  # float32 input, like a loaded dataset
    for dtype in (torch.float64, torch.float32):
        df = estimate_kl(data, schedule, [0, 1, 2, 3], 256, generator=gen(1), dtype=dtype)
        values = df[["kl", "kl_stderr"]].to_numpy()
        assert np.isfinite(values).all(), df
        assert np.all(df.kl + 4 * df.kl_stderr >= 0), df
        alpha, sigma = schedule.alpha_sigma(torch.tensor([0, 1]))
        r = sigma[0] ** 2 / sigma[1] ** 2
        norms = data.double().flatten(1).square().sum(1).mean()
        limit = 784 / 2 * (r - 1 - r.log()) + (alpha[0] - alpha[1]) ** 2 * norms / (2 * sigma[1] ** 2)
        assert abs(df.kl[0] - limit.item()) < 4 * df.kl_stderr[0], (df, limit)
        assert df.kl[0] > 50


def test_float32_agrees_with_float64():
    """The expansion has no large cancelling terms: float32 tracks float64 from t = 1 to late t."""
    schedule = make_schedule("vp")
    data = torch.rand(64, 784, generator=gen(2), dtype=torch.float64) * 2 - 1
    ts = [0, 1, 10, 100, 500, 998]
    ref = estimate_kl(data, schedule, ts, 64, generator=gen(3))
    low = estimate_kl(data, schedule, ts, 64, generator=gen(3), dtype=torch.float32)
    np.testing.assert_allclose(low.kl, ref.kl, rtol=1e-4)


def test_exclude_self_matters_only_at_small_t():
    """Own component in or out: same answer at large t, opposite signs at small t.

    Observed (D = 2, sd = 0.5, L = M = 500): at (t_prev, t) = (1, 2) self included gives +0.06 nats,
    self excluded -4.3 (a leave-one-out density: the nearest *other* point is many sigma away and the
    narrower p_{t-1} penalises it more); in 784 dimensions at t = 1 the excluded value is ~ -1e6.  At
    (200, 400) both give 0.12 nats, 1.3 % apart (an O(1/L) difference).
    """
    schedule = make_schedule("vp")
    data = torch.randn(500, 2, generator=gen(0), dtype=torch.float64) * 0.5
    ts = [1, 2, 200, 400]
    incl = estimate_kl(data, schedule, ts, 500, generator=gen(1))
    excl = estimate_kl(data, schedule, ts, 500, exclude_self=True, generator=gen(1))
    assert np.isfinite(excl[["kl", "kl_stderr"]].to_numpy()).all()
    # small t: included is a (positive) KL, excluded is far negative
    assert incl.kl[0] > 3 * incl.kl_stderr[0]
    assert excl.kl[0] < -5 * excl.kl_stderr[0]
    # large t: the two agree to a few percent
    assert abs(incl.kl[2] - excl.kl[2]) < 0.05 * incl.kl[2], (incl, excl)

    wide = torch.rand(32, 784, generator=gen(4), dtype=torch.float64) * 2 - 1
    excl_wide = estimate_kl(wide, schedule, [0, 1], 32, exclude_self=True, generator=gen(5))
    assert np.isfinite(excl_wide.kl[0]) and excl_wide.kl[0] < -1e4


def test_chunking_does_not_change_the_result():
    """Block sizes that split samples and components (and M > L, several permutations) give the same KL."""
    schedule = make_schedule("vp")
    data = torch.randn(37, 3, 5, generator=gen(0), dtype=torch.float64)
    ts = [0, 1, 5, 50, 300, 900]
    for exclude_self in (False, True):
        whole = estimate_kl(
            data, schedule, ts, 90, exclude_self=exclude_self, generator=gen(1), chunk_size=4096
        )
        for chunk in (1, 7, 32):
            part = estimate_kl(
                data, schedule, ts, 90, exclude_self=exclude_self, generator=gen(1), chunk_size=chunk
            )
            np.testing.assert_allclose(part.kl, whole.kl, rtol=1e-6, atol=1e-12)
            np.testing.assert_allclose(part.kl_stderr, whole.kl_stderr, rtol=1e-6, atol=1e-12)


def test_independent_noise_per_pair():
    """``common_noise=False`` draws fresh noise per pair: different numbers, same estimate within error."""
    schedule = make_schedule("vp")
    data = torch.randn(200, 2, generator=gen(0), dtype=torch.float64) * 0.5
    ts = [100, 200, 300]
    common = estimate_kl(data, schedule, ts, 4000, generator=gen(1))
    fresh = estimate_kl(data, schedule, ts, 4000, common_noise=False, generator=gen(1))
    assert not np.allclose(common.kl, fresh.kl)
    se = np.hypot(common.kl_stderr, fresh.kl_stderr)
    assert np.all(np.abs(common.kl - fresh.kl) < 4 * se), (common, fresh)
    # The first pair uses the first draw in both modes.
    assert common.kl[0] == pytest.approx(fresh.kl[0], rel=1e-12)


def test_default_grids_of_all_schedules():
    """Default times: every VP pair (T-1 rows); 100-point unit grids for EDM and flow.  Finite, >= 0."""
    data = torch.rand(48, 8, generator=gen(0)) * 2 - 1
    vp = make_schedule("vp", num_timesteps=1000)
    df = estimate_kl(data, vp, num_samples=48, generator=gen(1))
    assert len(df) == 999 and df.t.tolist() == list(range(1, 1000))
    assert (df.t - df.t_prev == 1).all()
    assert np.isfinite(df[["kl", "kl_stderr"]].to_numpy()).all()
    for name in ("edm", "flow"):
        schedule = make_schedule(name)
        df = estimate_kl(data, schedule, num_samples=48, generator=gen(1))
        assert len(df) == 99, name
        # Each pair is labelled at its midpoint in u: between (k - 1/2) / 100 and (k + 1/2) / 100.
        np.testing.assert_allclose(df.unit, np.arange(1, 100) / 100, rtol=1e-9)
        np.testing.assert_allclose(df.t, default_timesteps(schedule)[1:].numpy())
        values = df[["kl", "kl_stderr"]].to_numpy()
        assert np.isfinite(values).all(), name
        # Non-negative up to Monte-Carlo noise.  With common random numbers the noise is correlated
        # across t, so whole runs of tiny mid-grid KLs (~0.003 nats, stderr ~0.01 at M = 48) can dip
        # below zero together; counting negative entries would not be a fair test.
        assert np.all(df.kl + 4 * df.kl_stderr >= 0), (name, df)
        assert df.kl.iloc[0] > 4 * df.kl_stderr.iloc[0], (name, df)  # the low-noise end: a clear KL


def test_bad_input_names_the_argument():
    vp = make_schedule("vp", num_timesteps=1000)
    data = torch.randn(10, 3)
    cases = [
        (dict(data=torch.randn(10)), "data"),
        (dict(data=torch.arange(30).reshape(10, 3)), "data"),
        (dict(data=torch.full((10, 3), math.nan)), "data"),
        (dict(data=torch.randn(1, 3), exclude_self=True), "data"),
        (dict(num_samples=0), "num_samples"),
        (dict(num_samples=2.5), "num_samples"),
        (dict(timesteps=[5, 3, 7]), "timesteps"),
        (dict(timesteps=[3, 3]), "timesteps"),
        (dict(timesteps=[4]), "timesteps"),
        (dict(timesteps=torch.zeros(2, 2)), "timesteps"),
        (dict(timesteps=[0, 1000]), "timesteps"),
        (dict(timesteps=[0.5, 1.0]), "timesteps"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(dtype=torch.float16), "dtype"),
    ]
    for override, name in cases:
        kwargs = dict(data=data, schedule=vp, timesteps=[0, 1, 2], num_samples=4) | override
        with pytest.raises(ValueError, match=name):
            estimate_kl(**kwargs)
    with pytest.raises(ValueError, match="timesteps"):  # sigma(0) = 0 for the flow interpolant
        estimate_kl(data, make_schedule("flow"), [0.0, 0.5], 4)
    with pytest.raises(ValueError, match="num_points"):
        default_timesteps(make_schedule("edm"), num_points=1)


def test_closed_form_gaussian_kl_matches_the_reference_formula():
    schedule = make_schedule("vp")
    mu, sd = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64), torch.full((16,), 0.4, dtype=torch.float64)
    ts = [0, 1, 10, 11, 500, 501]
    np.testing.assert_allclose(
        gaussian_kl(mu, sd**2, schedule, ts).numpy(), gaussian_kl_ref(mu, sd, schedule, ts)
    )
    # One variance for every dimension broadcasts like the per-dimension form.
    np.testing.assert_allclose(
        gaussian_kl(mu, torch.tensor(0.16), schedule, ts), gaussian_kl(mu, sd**2, schedule, ts)
    )


def test_null_of_the_mixture_estimator_is_its_own_component_term():
    """The estimator's null: on data-free Gaussian reference data of the same D, L and M it reports, at VP
    t = 1, the own-component KL D/2 (r - 1 - log r) + ... (~0.12 D nats), although the reference's true KL
    there is ~1e-3 of that; at large t (sigma far above the nearest-neighbour spacing) both agree."""
    schedule = make_schedule("vp")
    data = torch.rand(200, 256, generator=gen(5), dtype=torch.float64) * 2 - 1
    reference = gaussian_reference(data, gen(6))
    assert reference.shape == data.shape
    assert abs(reference.var(0).mean().item() - data.var(0).mean().item()) < 0.02
    torch.testing.assert_close(reference.mean(0), data.mean(0), atol=0.25, rtol=0)
    ts = [0, 1, 990, 991]
    null = estimate_kl(reference, schedule, ts, 200, generator=gen(7))
    exact = gaussian_kl(reference.mean(0), reference.var(0).mean(), schedule, ts).numpy()
    alpha, sigma = schedule.alpha_sigma(torch.tensor([0, 1]))
    r = (sigma[0] ** 2 / sigma[1] ** 2).item()
    norms = reference.square().sum(1).mean().item()
    own = 256 / 2 * (r - 1 - math.log(r)) + (alpha[0] - alpha[1]).item() ** 2 * norms / (
        2 * sigma[1].item() ** 2
    )
    assert abs(null.kl[0] - own) < 4 * null.kl_stderr[0], (null, own)
    assert exact[0] < 1e-3 * null.kl[0]
    assert abs(null.kl[2] - exact[2]) < 4 * null.kl_stderr[2] + 0.05 * exact[2], (null, exact)


@pytest.mark.parametrize("name", ["edm", "flow"])
def test_midpoint_labels_give_equal_shares_on_a_steep_curve(name):
    """A pair's KL is the difficulty of the step between its two times; labelled at the later end, the
    density samples sit half a step towards high noise and the equal-share clusters shift."""
    schedule = make_schedule(name)
    times = default_timesteps(schedule)
    u = schedule.to_unit(times).numpy()
    lam = 8.0  # difficulty density proportional to exp(-8 u): steep at low noise
    cdf = lambda x: (1 - np.exp(-lam * x)) / (1 - np.exp(-lam))  # noqa: E731
    curve = pd.DataFrame({"unit": pair_units(schedule, times).numpy(), "kl": np.diff(cdf(u))})
    np.testing.assert_allclose(curve.unit, np.arange(1, 100) / 100, rtol=1e-9)
    edges = np.array(cluster_intervals("difficulty", 20, schedule, curve, density_floor=0.0).unit_edges)
    share = np.diff(cdf(edges))
    # Inner clusters hold 1/20 of the true difficulty to within 1e-3 (later-end labels: 1.5e-3); the
    # lowest-noise one, extrapolated below the first label, 0.0526 (later-end labels: 0.0545).
    assert np.abs(share[1:] - 0.05).max() < 1e-3
    assert share[0] == pytest.approx(0.0526, abs=5e-4)
