"""Samplers against an analytic oracle.

For Gaussian data x_0 ~ N(mu, s^2 I) the optimal denoiser is known in closed form,

    E[x_0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu),

so a correct sampler driven by it must return N(mu, s^2) samples, up to (a) its own discretisation error,
which we know, and (b) Monte-Carlo error.  Tolerances below are built from those two parts:

* Monte-Carlo: N iid scalar outputs (samples x dims, pooled; the oracle is isotropic) have standard
  errors sqrt(v / N) for the mean and v sqrt(2 / (N - 1)) for the variance.  We allow 4.5 of them: with
  a fixed seed the test is deterministic anyway, and 4.5 sd keeps it passing for any seed (two-sided
  p ~ 7e-6 per check) while staying tight (N = 65536: 0.9% of s for the mean, 2.5% for the variance).
* Discretisation: every sampler here is an affine map of Gaussian noise when the denoiser is affine, so
  its output law is computable exactly -- by propagating (mean, var) through the DDPM chain
  (``_ddpm_law``), or for the deterministic samplers by pushing the noise values 0 and 1 through
  (``_probe``).  Those exact laws are checked for the expected discretisation error and convergence
  order, and the Monte-Carlo samples are checked against them or against (mu, s^2) plus that error.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_curriculum.samplers import (
    SAMPLERS,
    ddim_sample,
    ddpm_sample,
    euler_sample,
    guided_x0_fn,
    heun_sample,
    ode_time_steps,
    respaced_betas,
    sample,
    stitched_denoiser,
    vp_timesteps,
)
from diffusion_curriculum.schedules import EDMSchedule, FlowSchedule, VPSchedule, broadcast_to

MU, S = 0.3, 0.5
SHAPE = (16384, 4)  # N = 65536 scalar draws
N_MC = SHAPE[0] * SHAPE[1]
K_SD = 4.5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors (~65k floats) gain little from intra-op threads, and on a busy 2-core machine
    # OpenMP's spinning threads make them 10-20x slower; restore the setting for other modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussian_x0_fn(schedule, mu=MU, s=S, calls=None):
    """The Bayes-optimal x_0 predictor for N(mu, s^2) data; records (t, batch) per call if asked."""

    def x0_fn(x, t):
        if calls is not None:
            calls.append((t.clone(), x.shape[0]))
        alpha, sigma = schedule.alpha_sigma(t)
        gain = alpha * s**2 / (alpha**2 * s**2 + sigma**2)  # float64, finite at flow's alpha = 0
        return mu + broadcast_to(gain, x) * (x - broadcast_to(alpha, x) * mu)

    return x0_fn


def _mc_check(x, mean, var, mean_slack=0.0, var_slack=0.0):
    """Sample mean/variance of x against (mean, var) within K_SD standard errors plus the given slack."""
    assert torch.isfinite(x).all()
    n = x.numel()
    m_hat, v_hat = x.double().mean().item(), x.double().var().item()
    se_m, se_v = math.sqrt(var / n), var * math.sqrt(2.0 / (n - 1))
    assert abs(m_hat - mean) <= K_SD * se_m + mean_slack, (m_hat, mean, se_m)
    assert abs(v_hat - var) <= K_SD * se_v + var_slack, (v_hat, var, se_v)


def _probe(sampler, schedule, mu=MU, s=S, **kw):
    """Exact (mean, variance) of a deterministic sampler's output for N(0, 1) input noise.

    With the affine oracle the sampler is x_out = a z + b per coordinate, so noise 0 gives b and noise 1
    gives a + b; the output law is N(b, a^2) with no Monte-Carlo error.
    """
    out = sampler(gaussian_x0_fn(schedule, mu, s), schedule, torch.tensor([[0.0], [1.0]]), **kw).double()
    b, a = out[0, 0].item(), (out[1, 0] - out[0, 0]).item()
    return b, a * a


def _ddpm_law(schedule, steps, variance, mu=MU, s=S):
    """Exact (mean, variance) of DDPM's output, written independently of the sampler from Ho et al. eq. 7
    on the respaced chain (Nichol & Dhariwal 2021): each step is x <- A x + B + N(0, q)."""
    T = schedule.num_timesteps
    kept = [round(i * (T - 1) / (steps - 1)) for i in range(steps)]
    abar = [schedule.alphas_cumprod[k].item() for k in kept]
    m, v = 0.0, 1.0  # the chain starts from N(0, 1) at t = T-1
    for i in reversed(range(steps)):
        ab, ab_prev = abar[i], (abar[i - 1] if i > 0 else 1.0)
        beta = 1.0 - ab / ab_prev
        gain = math.sqrt(ab) * s**2 / (ab * s**2 + 1.0 - ab)  # x0_hat = mu + gain (x - sqrt(ab) mu)
        c_x0 = math.sqrt(ab_prev) * beta / (1.0 - ab)
        c_xt = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab)
        A, B = c_x0 * gain + c_xt, c_x0 * mu * (1.0 - gain * math.sqrt(ab))
        q = 0.0 if i == 0 else (beta * (1.0 - ab_prev) / (1.0 - ab) if variance == "small" else beta)
        m, v = A * m + B, A * A * v + q
    return m, v


# ---------------------------------------------------------------------------------------------------
# DDPM


# Relative variance error of the exact DDPM chain for s = 0.5 (from _ddpm_law: beta-tilde under-, beta
# over-disperses; both vanish as steps -> infinity), rounded up; (lower, upper) bounds on var/s^2 - 1.
DDPM_BANDS = {
    ("linear", 250, "small"): (-0.060, -0.050),
    ("linear", 250, "large"): (0.010, 0.016),
    ("linear", 1000, "small"): (-0.018, -0.013),
    ("linear", 1000, "large"): (0.002, 0.004),
    ("cosine", 250, "small"): (-0.034, -0.026),
    ("cosine", 250, "large"): (0.005, 0.009),
    ("cosine", 1000, "small"): (-0.010, -0.006),
    ("cosine", 1000, "large"): (0.001, 0.0025),
}


@pytest.mark.parametrize(("beta_schedule", "steps", "variance"), list(DDPM_BANDS))
def test_ddpm_matches_gaussian_moments(beta_schedule, steps, variance):
    schedule = VPSchedule(beta_schedule=beta_schedule)
    law_mean, law_var = _ddpm_law(schedule, steps, variance)
    lo, hi = DDPM_BANDS[(beta_schedule, steps, variance)]
    assert lo <= law_var / S**2 - 1 <= hi
    # Mean: only the N(0, 1) start misses sqrt(alpha_bar(T-1)) mu (linear: 0.0064 mu), shrunk by the chain.
    assert abs(law_mean - MU) < 1e-3
    g = torch.Generator().manual_seed(10)
    x = ddpm_sample(gaussian_x0_fn(schedule), schedule, SHAPE, steps=steps, generator=g, variance=variance)
    assert x.dtype == torch.float32 and x.shape == SHAPE
    _mc_check(x, law_mean, law_var)


@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_ddpm_large_variance_is_exact_for_unit_variance_data(beta_schedule):
    # For Var(x_0) = 1 the true reverse-step variance is exactly beta (Ho et al. 2020, sec. 3.2), so the
    # "large" chain has no discretisation error at any spacing: this checks the respacing independently
    # of _ddpm_law's bands.
    schedule = VPSchedule(beta_schedule=beta_schedule)
    law_mean, law_var = _ddpm_law(schedule, 50, "large", mu=MU, s=1.0)
    assert law_var == pytest.approx(1.0, abs=1e-4) and law_mean == pytest.approx(MU, abs=1e-4)
    g = torch.Generator().manual_seed(11)
    x = ddpm_sample(gaussian_x0_fn(schedule, s=1.0), schedule, SHAPE, steps=50, generator=g, variance="large")
    _mc_check(x, MU, 1.0)


def test_ddpm_visits_respaced_timesteps_once_each_descending():
    schedule = VPSchedule()
    calls = []
    ddpm_sample(gaussian_x0_fn(schedule, calls=calls), schedule, (3, 2), steps=250)
    ts = [t for t, _ in calls]
    assert len(ts) == 250 and all(t.dtype == torch.long and t.shape == (3,) for t in ts)
    visited = [int(t[0]) for t in ts]
    assert visited == [round(i * 999 / 249) for i in reversed(range(250))]
    assert visited[0] == 999 and visited[-1] == 0
    calls.clear()
    ddpm_sample(gaussian_x0_fn(schedule, calls=calls), schedule, (3, 2), steps=1000)
    assert [int(t[0]) for t, _ in calls] == list(range(999, -1, -1))


def test_respacing_keeps_the_marginals():
    schedule = VPSchedule(beta_schedule="cosine")
    full = vp_timesteps(schedule, 1000)
    assert torch.equal(full, torch.arange(1000))
    torch.testing.assert_close(respaced_betas(schedule, full), schedule.betas, rtol=1e-9, atol=1e-12)
    kept = vp_timesteps(schedule, 37)
    assert kept.unique().numel() == 37 and kept[0] == 0 and kept[-1] == 999
    # The respaced chain's cumulative product reproduces alpha_bar at every kept step.
    abar = torch.cumprod(1.0 - respaced_betas(schedule, kept), dim=0)
    torch.testing.assert_close(abar, schedule.alphas_cumprod[kept], rtol=1e-10, atol=0)
    assert vp_timesteps(schedule, 1).tolist() == [999]
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="steps"):
            vp_timesteps(schedule, bad)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_last_step_adds_no_noise_and_clips(variance):
    schedule = VPSchedule()

    def const(x, t):
        return torch.full_like(x, 7.0)

    x = ddpm_sample(
        const, schedule, (64, 3), steps=20, generator=torch.Generator().manual_seed(0), variance=variance
    )
    # The last step returns the posterior mean at t = 0, which is x0_hat itself.
    torch.testing.assert_close(x, torch.full_like(x, 7.0), rtol=0, atol=1e-5)
    x = ddpm_sample(
        const,
        schedule,
        (64, 3),
        steps=20,
        generator=torch.Generator().manual_seed(0),
        variance=variance,
        clip_x0=1.0,
    )
    torch.testing.assert_close(x, torch.ones_like(x), rtol=0, atol=1e-6)


def test_ddpm_rejects_bad_variance():
    with pytest.raises(ValueError, match="'fixed'"):
        ddpm_sample(gaussian_x0_fn(VPSchedule()), VPSchedule(), (2, 2), steps=5, variance="fixed")


# ---------------------------------------------------------------------------------------------------
# DDIM, Euler, Heun: exact output laws, convergence order, Monte-Carlo moments


def _ode_law(schedule, mu=MU, s=S, spacing=None):
    """Output law of the *exact* probability-flow ODE started from the prior the samplers use.

    In x~ = x / alpha, sigma~ = sigma / alpha the ODE for N(mu, s^2) data reads
    d(x~ - mu)/d sigma~ = sigma~ / (s^2 + sigma~^2) (x~ - mu), so x~ - mu scales with
    sqrt(s^2 + sigma~^2) and x_0 = mu + s (x~_start - mu) / sqrt(s^2 + sigma~_start^2).  The samplers start
    from x~ = sigma~_start z (EDM, flow with Karras spacing: sigma~_start = sigma_max = 80) or
    x = z (VP, t = T-1), dropping alpha mu; only flow from t = 1 (sigma~ = inf) is an exact start.
    """
    if isinstance(schedule, FlowSchedule) and spacing != "karras":
        return mu, s**2
    if isinstance(schedule, VPSchedule):
        ab = schedule.alphas_cumprod[-1].item()
        sig0, prior_var = math.sqrt((1.0 - ab) / ab), 1.0 / ab
    else:
        sig0 = 80.0
        prior_var = sig0**2
    c = s / math.sqrt(s**2 + sig0**2)
    return mu - c * mu, c * c * prior_var


DETERMINISTIC = {
    # name: (sampler, schedule factory, sampler keywords, order)
    "ddim-linear": (ddim_sample, lambda: VPSchedule(beta_schedule="linear"), {}, 1),
    "ddim-cosine": (ddim_sample, lambda: VPSchedule(beta_schedule="cosine"), {}, 1),
    "euler-edm": (euler_sample, EDMSchedule, {}, 1),
    "heun-edm": (heun_sample, EDMSchedule, {}, 2),
    "euler-flow": (euler_sample, FlowSchedule, {}, 1),
    "heun-flow": (heun_sample, FlowSchedule, {}, 2),
    "euler-flow-karras": (euler_sample, FlowSchedule, {"spacing": "karras"}, 1),
    "heun-flow-karras": (heun_sample, FlowSchedule, {"spacing": "karras"}, 2),
}


@pytest.mark.parametrize("name", list(DETERMINISTIC))
@pytest.mark.parametrize(("mu", "s"), [(MU, S), (-1.0, 2.0)])
def test_deterministic_samplers_converge_at_their_order(name, mu, s):
    sampler, make, kw, order = DETERMINISTIC[name]
    schedule = make()
    law_mean, law_var = _ode_law(schedule, mu, s, kw.get("spacing"))
    n = 120 if name.startswith("ddim") else 40
    errors = []
    for steps in (n, 2 * n):
        mean, var = _probe(sampler, schedule, mu, s, steps=steps, **kw)
        errors.append(abs(var / law_var - 1))
        # All these maps move x - alpha mu homogeneously, so the mean's only error is the prior's offset
        # (law_mean - mu), scaled by the sampler's slope: off from the law by < that offset x the sd error.
        assert abs(mean - law_mean) <= abs(law_mean - mu) * errors[-1] + 1e-5
    # Doubling the steps divides the error by 2^order (Euler/DDIM first order, Heun second order).
    ratio = errors[0] / errors[1]
    assert 2**order * 0.8 <= ratio <= 2**order * 1.3, (errors, ratio)
    assert errors[1] < (0.08 if order == 1 else 0.006)


# (sampler, schedule, keywords, |var / law_var - 1| of the exact sampler at these steps, from _probe
# and rounded up: first-order samplers need hundreds of steps to get within ~1.5% for s = 0.5).
MC_CASES = {
    "ddim-linear-1000": (ddim_sample, lambda: VPSchedule(beta_schedule="linear"), {"steps": 1000}, 0.008),
    "ddim-cosine-250": (ddim_sample, lambda: VPSchedule(beta_schedule="cosine"), {"steps": 250}, 0.015),
    "euler-edm-400": (euler_sample, EDMSchedule, {"steps": 400}, 0.016),
    "heun-edm-80": (heun_sample, EDMSchedule, {"steps": 80}, 0.006),
    "euler-flow-200": (euler_sample, FlowSchedule, {"steps": 200}, 0.017),
    "heun-flow-40": (heun_sample, FlowSchedule, {"steps": 40}, 0.003),
    "heun-flow-karras-40": (heun_sample, FlowSchedule, {"steps": 40, "spacing": "karras"}, 0.006),
}


@pytest.mark.parametrize("name", list(MC_CASES))
def test_deterministic_samplers_match_gaussian_moments(name):
    sampler, make, kw, band = MC_CASES[name]
    schedule = make()
    law_mean, law_var = _ode_law(schedule, spacing=kw.get("spacing"))
    # The exact ODE is off (mu, s^2) only through the truncated prior: < 0.002 in mean, < 1e-4 in var.
    assert abs(law_mean - MU) < 2e-3 and abs(law_var / S**2 - 1) < 1e-4
    _, probe_var = _probe(sampler, schedule, **kw)
    assert abs(probe_var / law_var - 1) <= band
    g = torch.Generator().manual_seed(12)
    x = sampler(gaussian_x0_fn(schedule), schedule, SHAPE, generator=g, **kw)
    assert x.dtype == torch.float32 and x.shape == SHAPE
    _mc_check(x, law_mean, law_var, var_slack=band * law_var)


def test_ddim_eta_one_is_ddpm_small():
    # Song et al. 2021, sec. 4.1: eta = 1 makes each DDIM step the DDPM posterior with beta tilde, on any
    # sub-sequence; both draw one normal per non-final step, so equal seeds give equal paths.
    schedule = VPSchedule(beta_schedule="cosine")
    fn = gaussian_x0_fn(schedule)
    a = ddim_sample(fn, schedule, (256, 4), steps=60, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = ddpm_sample(fn, schedule, (256, 4), steps=60, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    c = ddim_sample(fn, schedule, (256, 4), steps=60, eta=0.0, generator=torch.Generator().manual_seed(5))
    assert (a - c).abs().max() > 0.05


def test_euler_is_invariant_between_edm_and_flow():
    # Flow with Karras spacing visits the same noise levels sigma/alpha as EDM; Euler in t for the linear
    # interpolant is Euler in (x/alpha, sigma/alpha), so both runs are the same map of the noise.
    noise = torch.randn(512, 3, generator=torch.Generator().manual_seed(6))
    edm, flow = EDMSchedule(), FlowSchedule()
    a = euler_sample(gaussian_x0_fn(edm), edm, noise, steps=25)
    b = euler_sample(gaussian_x0_fn(flow), flow, noise, steps=25, spacing="karras")
    torch.testing.assert_close(a, b, rtol=0, atol=2e-4)


def test_ode_samplers_call_counts_and_times():
    edm = EDMSchedule()
    calls = []
    euler_sample(gaussian_x0_fn(edm, calls=calls), edm, (5, 2), steps=18)
    assert len(calls) == 18
    assert calls[0][0].dtype == torch.float64 and calls[0][0].shape == (5,)
    assert calls[0][0][0].item() == pytest.approx(80.0) and calls[-1][0][0].item() == pytest.approx(0.002)
    calls.clear()
    heun_sample(gaussian_x0_fn(edm, calls=calls), edm, (5, 2), steps=18)
    assert len(calls) == 2 * 18 - 1  # no correction on the step to sigma = 0
    assert min(t[0].item() for t, _ in calls) == pytest.approx(0.002)
    flow = FlowSchedule()
    calls.clear()
    heun_sample(gaussian_x0_fn(flow, calls=calls), flow, (5, 2), steps=4)
    assert [round(t[0].item(), 12) for t, _ in calls] == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]


def test_karras_time_steps():
    n, rho = 18, 7.0
    hi, lo = 80.0 ** (1 / rho), 0.002 ** (1 / rho)
    expected = [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)] + [0.0]
    ts = ode_time_steps(EDMSchedule(), n)
    torch.testing.assert_close(ts, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    flow = ode_time_steps(FlowSchedule(), n, spacing="karras")
    expected_t = [sg / (1 + sg) for sg in expected]
    torch.testing.assert_close(flow, torch.tensor(expected_t, dtype=torch.float64), rtol=1e-12, atol=0)
    assert ode_time_steps(FlowSchedule(), 4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert ode_time_steps(EDMSchedule(), 1).tolist() == [80.0, 0.0]
    with pytest.raises(ValueError, match="'uniform'"):
        ode_time_steps(EDMSchedule(), 10, spacing="uniform")
    with pytest.raises(ValueError, match="'cubic'"):
        ode_time_steps(FlowSchedule(), 10, spacing="cubic")


def test_noise_tensor_or_shape_with_generator():
    flow = FlowSchedule()
    fn = gaussian_x0_fn(flow)
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(9))
    a = heun_sample(fn, flow, noise, steps=5)
    b = heun_sample(fn, flow, (8, 3), steps=5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    c = heun_sample(fn, flow, noise.double(), steps=5, progress=True)
    assert c.dtype == torch.float32 and torch.equal(a, c)


# ---------------------------------------------------------------------------------------------------
# classifier-free guidance


class FakeDenoiser:
    """D(x, t, y) = (1 + y) x + t, with null class NULL where ``force_drop_ids`` is set; records calls."""

    NULL = 10

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y, *, force_drop_ids=None):
        drop = None if force_drop_ids is None else force_drop_ids.clone()
        self.calls.append((x.shape[0], None if y is None else y.clone(), drop))
        if y is None:
            return x + broadcast_to(t, x)
        if force_drop_ids is not None:
            y = torch.where(force_drop_ids, self.NULL, y)
        return broadcast_to(1.0 + y.to(x.dtype), x) * x + broadcast_to(t, x)


def test_cfg_scale_one_is_the_conditional_model():
    den = FakeDenoiser()
    x, t, y = torch.randn(4, 3), torch.rand(4, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    out = guided_x0_fn(den, y, scale=1.0)(x, t)
    assert len(den.calls) == 1 and den.calls[0][0] == 4 and torch.equal(den.calls[0][1], y)
    assert den.calls[0][2] is None
    torch.testing.assert_close(out, den(x, t, y))
    den.calls.clear()
    out = guided_x0_fn(den, None, scale=4.0)(x, t)
    assert len(den.calls) == 1 and den.calls[0] == (4, None, None)
    torch.testing.assert_close(out, x + broadcast_to(t, x))


@pytest.mark.parametrize("scale", [0.0, 2.5, -1.0])
def test_cfg_extrapolates_in_one_batched_call(scale):
    den = FakeDenoiser()
    x, t, y = torch.randn(4, 3), torch.rand(4, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    out = guided_x0_fn(den, y, scale=scale)(x, t)
    assert len(den.calls) == 1
    batch, labels, drop = den.calls[0]
    # Both halves carry the labels; the network drops them to its own null where force_drop_ids says so.
    assert batch == 8 and labels.tolist() == [0, 1, 2, 3] * 2
    assert drop.tolist() == [False] * 4 + [True] * 4
    cond = (1.0 + y.float())[:, None] * x + t.float()[:, None]
    uncond = 11.0 * x + t.float()[:, None]
    torch.testing.assert_close(out, uncond + scale * (cond - uncond), rtol=1e-5, atol=1e-5)
    # A scalar label is broadcast over the batch.
    den.calls.clear()
    guided_x0_fn(den, torch.tensor(2), scale=scale)(x, t)
    assert den.calls[0][1].tolist() == [2] * 8
    # The guided function keeps no state between calls: the same inputs give the same result again.
    torch.testing.assert_close(guided_x0_fn(den, y, scale=scale)(x, t), out)


def test_cfg_passes_caption_embeddings_and_drops_them_in_the_network():
    calls = []

    def den(x, t, y, *, force_drop_ids=None):
        calls.append((y.clone(), force_drop_ids.clone()))
        # "null caption" = zeros; the output is the caption's mean times x.
        y = torch.where(force_drop_ids[:, None, None], torch.zeros_like(y), y)
        return y.mean(dim=(1, 2))[:, None] * x

    x, t, y = torch.randn(3, 2), torch.rand(3, dtype=torch.float64), torch.randn(3, 4, 5)
    out = guided_x0_fn(den, y, scale=3.0)(x, t)
    ((captions, drop),) = calls
    assert torch.equal(captions, torch.cat([y, y])) and drop.tolist() == [False] * 3 + [True] * 3
    torch.testing.assert_close(out, 3.0 * y.mean(dim=(1, 2))[:, None] * x)


def test_stitched_denoiser_splits_force_drop_ids_with_the_batch():
    vp = VPSchedule()
    calls = {"base": [], "expert": []}

    def record(name):
        def denoise(x, t, y, *, force_drop_ids=None):
            calls[name].append((y.tolist(), force_drop_ids.tolist()))
            return torch.full_like(x, float(name == "expert"))

        return denoise

    stitched = stitched_denoiser(record("base"), record("expert"), vp, 0.25, 0.5)
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 2, 3])
    t = torch.tensor([100, 300, 600, 400])
    drop = torch.tensor([False, True, False, True])
    out = stitched(x, t, y, force_drop_ids=drop)
    assert out[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert calls["base"][-1] == ([0, 1, 2, 3], [False, True, False, True])
    assert calls["expert"][-1] == ([1, 3], [True, True])


def test_cfg_drives_a_sampler_one_call_per_step():
    den = FakeDenoiser()
    edm = EDMSchedule()
    y = torch.zeros(6, dtype=torch.long)
    x = sample(guided_x0_fn(den, y, scale=2.0), edm, (6, 2), "euler", steps=7)
    assert len(den.calls) == 7 and all(batch == 12 for batch, _, _ in den.calls)
    assert torch.isfinite(x).all()


# ---------------------------------------------------------------------------------------------------
# dispatcher


def test_sample_dispatches_by_name():
    vp = VPSchedule()
    fn = gaussian_x0_fn(vp)
    a = sample(fn, vp, (32, 2), "ddim", steps=20, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(fn, vp, (32, 2), steps=20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    a = sample(fn, vp, (32, 2), "ddpm", 20, torch.Generator().manual_seed(1), variance="large")
    b = ddpm_sample(fn, vp, (32, 2), steps=20, generator=torch.Generator().manual_seed(1), variance="large")
    assert torch.equal(a, b)
    assert set(SAMPLERS) == {"ddpm", "ddim", "euler", "heun"}


def test_sample_rejects_unknown_sampler_naming_it_and_the_allowed():
    with pytest.raises(ValueError, match="'dpm_solver'") as info:
        sample(gaussian_x0_fn(VPSchedule()), VPSchedule(), (2, 2), "dpm_solver", steps=10)
    for name in SAMPLERS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("ddpm", EDMSchedule()), ("ddim", FlowSchedule()), ("euler", VPSchedule()), ("heun", VPSchedule())],
)
def test_sample_rejects_sampler_schedule_mismatch(sampler, schedule):
    with pytest.raises(ValueError, match=f"'{sampler}'.*{type(schedule).__name__}"):
        sample(gaussian_x0_fn(schedule), schedule, (2, 2), sampler, steps=10)
