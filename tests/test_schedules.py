"""Properties of the noise schedules: monotonicity, endpoints, inverse maps, training densities."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_curriculum.schedules import (
    EDMSchedule,
    FlowSchedule,
    VPSchedule,
    broadcast_to,
    make_schedule,
)

ALL = {
    "vp-linear": lambda: VPSchedule(beta_schedule="linear"),
    "vp-cosine": lambda: VPSchedule(beta_schedule="cosine"),
    "edm": EDMSchedule,
    "flow": FlowSchedule,
}


def _grid(schedule) -> torch.Tensor:
    """Times spanning each schedule's range, ascending (low noise first), endpoints included where finite."""
    if isinstance(schedule, VPSchedule):
        return torch.arange(schedule.num_timesteps)
    if isinstance(schedule, EDMSchedule):
        return torch.logspace(
            math.log10(schedule.sigma_min), math.log10(schedule.sigma_max), 400, dtype=torch.float64
        )
    # flow: alpha = 0 at t = 1 makes the SNR exactly 0 there; keep it in (0, 1) for the strict checks.
    return torch.linspace(1e-4, 1 - 1e-4, 400, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------
# VP alpha_bar


@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_alpha_bar_strictly_decreasing_in_unit_interval(beta_schedule):
    abar = VPSchedule(beta_schedule=beta_schedule).alphas_cumprod
    assert abar.shape == (1000,)
    assert bool((abar > 0).all()) and bool((abar < 1).all())
    assert bool((abar[1:] < abar[:-1]).all())


def test_linear_endpoints():
    s = VPSchedule(beta_schedule="linear")
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    # t = 0 is already one noising step: alpha_bar[0] = 1 - beta_0.
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)
    # Ho et al.'s schedule ends at alpha_bar ~ 4e-5 (SNR ~ 4e-5): close to pure noise, not exactly.
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.036e-5, rel=1e-3)


def test_cosine_endpoints():
    s = VPSchedule(beta_schedule="cosine")
    assert s.alphas_cumprod[0].item() > 0.9999
    assert s.alphas_cumprod[-1].item() < 1e-6
    assert s.betas.max().item() <= 0.999
    # Away from the clipped tail alpha_bar follows f(t)/f(0) (Nichol & Dhariwal 2021, eq. 17).
    t = torch.tensor([0, 250, 500, 750], dtype=torch.float64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = f((t + 1) / 1000) / f(torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(s.alphas_cumprod[t.long()], expected, rtol=1e-10, atol=0)


def test_vp_rejects_unknown_beta_schedule():
    with pytest.raises(ValueError, match="'sigmoid'"):
        VPSchedule(beta_schedule="sigmoid")


def test_vp_rejects_too_few_timesteps():
    with pytest.raises(ValueError, match="num_timesteps"):
        VPSchedule(num_timesteps=1)


# ---------------------------------------------------------------------------------------------------
# SNR and the sigma / SNR inverse maps


@pytest.mark.parametrize("name", list(ALL))
def test_snr_strictly_decreasing(name):
    s = ALL[name]()
    t = _grid(s)
    snr = s.snr(t)
    assert bool((snr[1:] < snr[:-1]).all())
    assert bool((snr > 0).all())
    log_snr = s.log_snr(t)
    torch.testing.assert_close(log_snr, snr.log(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s.edm_sigma(t), snr.rsqrt(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_vp_round_trips_exact_on_integer_t(beta_schedule):
    s = VPSchedule(beta_schedule=beta_schedule)
    t = torch.arange(s.num_timesteps)
    assert torch.equal(s.t_from_edm_sigma(s.edm_sigma(t)), t)
    assert torch.equal(s.t_from_snr(s.snr(t)), t)


def test_vp_t_from_sigma_is_nearest_in_log_snr():
    s = VPSchedule()
    t = torch.tensor([10, 500, 900])
    lo, hi = s.log_snr(t), s.log_snr(t + 1)
    # Slightly nearer to t, then slightly nearer to t + 1, in log-SNR.
    near_t = (0.51 * lo + 0.49 * hi).mul(-0.5).exp()
    near_t1 = (0.49 * lo + 0.51 * hi).mul(-0.5).exp()
    assert torch.equal(s.t_from_edm_sigma(near_t), t)
    assert torch.equal(s.t_from_edm_sigma(near_t1), t + 1)


def test_vp_t_from_sigma_saturates_at_both_ends():
    s = VPSchedule()
    sigma = torch.tensor([0.0, 1e-9, 1e9, math.inf], dtype=torch.float64)
    assert s.t_from_edm_sigma(sigma).tolist() == [0, 0, 999, 999]
    assert s.t_from_snr(torch.tensor([math.inf, 0.0], dtype=torch.float64)).tolist() == [0, 999]


@pytest.mark.parametrize("name", ["edm", "flow"])
def test_continuous_round_trips(name):
    s = ALL[name]()
    t = _grid(s)
    torch.testing.assert_close(s.t_from_edm_sigma(s.edm_sigma(t)), t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s.t_from_snr(s.snr(t)), t, rtol=1e-9, atol=1e-12)


def test_flow_sigma_maps_cover_the_endpoints():
    s = FlowSchedule()
    sigma = torch.tensor([0.0, 1.0, math.inf], dtype=torch.float64)
    assert s.t_from_edm_sigma(sigma).tolist() == [0.0, 0.5, 1.0]
    # SNR 0 is t = 1 (pure noise), where alpha = 0.
    assert s.t_from_snr(torch.tensor([0.0], dtype=torch.float64)).tolist() == [1.0]
    assert s.snr(torch.tensor([1.0], dtype=torch.float64)).item() == 0.0


# ---------------------------------------------------------------------------------------------------
# from_unit / to_unit (training densities)


def test_edm_unit_maps_are_inverse():
    s = EDMSchedule()
    u = torch.linspace(1e-6, 1 - 1e-6, 1001, dtype=torch.float64)
    torch.testing.assert_close(s.to_unit(s.from_unit(u)), u, rtol=0, atol=1e-9)
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    torch.testing.assert_close(s.from_unit(s.to_unit(sigma)), sigma, rtol=1e-8, atol=0)
    # u = 0 must not give sigma = 0 (log -inf) nor u -> 1 sigma = inf.
    ends = s.from_unit(torch.tensor([0.0, 1.0 - 1e-16], dtype=torch.float64))
    assert bool(torch.isfinite(ends.log()).all())


def test_flow_unit_maps_are_inverse():
    s = FlowSchedule()
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(s.to_unit(s.from_unit(u)), u, rtol=0, atol=1e-12)
    assert s.from_unit(torch.tensor([0.0])).item() == pytest.approx(s.t_min)
    assert s.from_unit(torch.tensor([1.0])).item() == pytest.approx(1.0)


@pytest.mark.parametrize("T", [10, 49, 999, 1000, 4000])
def test_vp_unit_maps_are_inverse(T):
    s = VPSchedule(num_timesteps=T)
    u = torch.rand(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    back = s.to_unit(s.from_unit(u))
    # from_unit floors to the cell u falls in: to_unit(from_unit(u)) <= u < that + 1/T.
    assert bool((back <= u).all()) and bool((u - back < 1.0 / T).all())
    t = torch.arange(T)
    assert torch.equal(s.from_unit(s.to_unit(t)), t)
    # Cell boundaries u = k/T land exactly on t = k (k/T * T may round below k in floating point).
    assert torch.equal(s.from_unit(t.to(torch.float64) / T), t)
    assert s.from_unit(torch.tensor([0.0, 1.0 - 1e-12], dtype=torch.float64)).tolist() == [0, T - 1]


def test_vp_from_unit_is_uniform_over_timesteps():
    s = VPSchedule(num_timesteps=10)
    t = s.sample_t(100_000, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(t, minlength=10).double() / t.numel()
    # Multinomial sd per cell sqrt(0.1 * 0.9 / 1e5) ~ 9.5e-4; 5 sd.
    torch.testing.assert_close(freq, torch.full((10,), 0.1, dtype=torch.float64), rtol=0, atol=5e-3)


def test_edm_training_density_is_lognormal():
    s = EDMSchedule(p_mean=-1.2, p_std=1.2)
    n = 200_000
    ln_sigma = s.sample_t(n, generator=torch.Generator().manual_seed(2)).log()
    # Standard errors: p_std / sqrt(n) ~ 2.7e-3 for the mean, p_std / sqrt(2n) ~ 1.9e-3 for the sd; 5 SE.
    assert ln_sigma.mean().item() == pytest.approx(-1.2, abs=0.014)
    assert ln_sigma.std().item() == pytest.approx(1.2, abs=0.01)
    # The median is exp(p_mean): to_unit is the CDF.
    assert s.to_unit(torch.tensor([math.exp(-1.2)], dtype=torch.float64)).item() == pytest.approx(
        0.5, abs=1e-12
    )


# ---------------------------------------------------------------------------------------------------
# forward process, model time, factory


@pytest.mark.parametrize("name", list(ALL))
def test_add_noise_matches_alpha_x0_plus_sigma_eps(name):
    s = ALL[name]()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 3, 4, 4, generator=g)
    eps = torch.randn(6, 3, 4, 4, generator=g)
    t = s.sample_t(6, generator=g)
    xt = s.add_noise(x0, t, eps)
    assert xt.dtype == x0.dtype and xt.shape == x0.shape
    alpha, sigma = s.alpha_sigma(t)
    for i in range(6):
        expected = alpha[i].item() * x0[i] + sigma[i].item() * eps[i]
        torch.testing.assert_close(xt[i], expected, rtol=1e-5, atol=1e-6)
    # VP and flow are variance preserving / interpolating: alpha^2 + sigma^2 = 1 resp. alpha + sigma = 1.
    if isinstance(s, VPSchedule):
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), rtol=0, atol=1e-12)
    if isinstance(s, FlowSchedule):
        torch.testing.assert_close(alpha + sigma, torch.ones_like(alpha), rtol=0, atol=1e-12)


def test_broadcast_to_reshapes_per_sample():
    x = torch.zeros(3, 2, 5, dtype=torch.float32)
    c = broadcast_to(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), x)
    assert c.shape == (3, 1, 1) and c.dtype == torch.float32


@pytest.mark.parametrize("name", list(ALL))
def test_model_time_is_monotone_and_in_range(name):
    s = ALL[name]()
    mt = s.model_time(_grid(s))
    assert mt.dtype == torch.float32
    assert bool((mt[1:] > mt[:-1]).all())
    assert mt.min().item() >= -1e-3 and mt.max().item() <= 1000.0 + 1e-3


def test_make_schedule():
    assert isinstance(make_schedule("vp", beta_schedule="cosine"), VPSchedule)
    assert make_schedule("edm", sigma_max=10.0).sigma_max == 10.0
    assert isinstance(make_schedule("flow"), FlowSchedule)
    with pytest.raises(ValueError, match="'ve'"):
        make_schedule("ve")


@pytest.mark.parametrize("T", [50, 100, 250, 1000, 4000])
def test_linear_betas_scale_with_num_timesteps_as_in_adm(T):
    # ADM / DiT (get_named_beta_schedule): scale = 1000 / T, betas = linspace(scale 1e-4, scale 0.02, T).
    scale = 1000.0 / T
    betas = [scale * 1e-4 + (scale * 0.02 - scale * 1e-4) * i / (T - 1) for i in range(T)]
    abar_end = math.prod(1.0 - b for b in betas)
    s = VPSchedule(beta_schedule="linear", num_timesteps=T)
    torch.testing.assert_close(s.betas, torch.tensor(betas, dtype=torch.float64), rtol=1e-12, atol=0)
    assert s.alphas_cumprod[-1].item() == pytest.approx(abar_end, rel=1e-9)
    # Every T ends near pure noise (ADM: ~2e-5 at T = 100), not at 0.36 as unscaled betas would.
    assert s.alphas_cumprod[-1].item() < 1e-4


def test_linear_betas_are_clipped_where_the_scaled_ones_reach_one():
    s = VPSchedule(beta_schedule="linear", num_timesteps=10)
    assert s.betas.max().item() == 0.999
    assert bool((s.alphas_cumprod > 0).all())
