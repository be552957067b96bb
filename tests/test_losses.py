"""Parameterisations: the target each network predicts turns back into the exact x_0, and the loss
of a perfect prediction is zero."""

import pytest
import torch
from torch import nn

from diffusion_curriculum.losses import Denoiser, check_prediction, denoising_loss
from diffusion_curriculum.schedules import broadcast_to, make_schedule

CASES = [
    ("vp", "eps"),
    ("vp", "v"),
    ("vp", "x0"),
    ("edm", "edm"),
    ("edm", "eps"),
    ("edm", "x0"),
    ("flow", "flow"),
    ("flow", "eps"),
    ("flow", "x0"),
]


class OracleNet(nn.Module):
    """Returns the exact target of its parameterisation for the x_0 and noise it was given."""

    def __init__(self, schedule, prediction, x0, noise, t):
        super().__init__()
        self.schedule, self.prediction = schedule, prediction
        self.x0, self.noise, self.t = x0, noise, t

    def forward(self, x, model_t, y=None):
        alpha, sigma = self.schedule.alpha_sigma(self.t)
        a, s = broadcast_to(alpha, x), broadcast_to(sigma, x)
        x0, eps = self.x0, self.noise
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        if self.prediction == "v":
            return a * eps - s * x0
        if self.prediction == "flow":
            return eps - x0
        sd = self.schedule.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        x_t = x0 + s * eps
        return (x0 - c_skip * x_t) / c_out


def _batch(schedule, n=6):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64)
    u = torch.linspace(0.05, 0.95, n, dtype=torch.float64)
    return x0, noise, schedule.from_unit(u)


@pytest.mark.parametrize(("framework", "prediction"), CASES)
def test_perfect_prediction_recovers_x0_and_has_zero_loss(framework, prediction):
    schedule = make_schedule(framework)
    x0, noise, t = _batch(schedule)
    denoiser = Denoiser(OracleNet(schedule, prediction, x0, noise, t), schedule, prediction)
    x_t = schedule.add_noise(x0, t, noise)
    torch.testing.assert_close(denoiser(x_t, t), x0, rtol=1e-6, atol=1e-6)
    assert denoising_loss(denoiser, x0, t, noise).abs().max() < 1e-10


def test_edm_loss_is_lambda_weighted_x0_error():
    schedule = make_schedule("edm")
    x0, noise, t = _batch(schedule)
    net = nn.Conv2d(2, 2, 1).double()
    denoiser = Denoiser(lambda x, mt, y=None: net(x), schedule, "edm")  # type: ignore[arg-type]
    x_t = schedule.add_noise(x0, t, noise)
    sd = schedule.sigma_data
    lam = (t**2 + sd**2) / (t * sd) ** 2
    expected = lam * (denoiser(x_t, t) - x0).square().flatten(1).mean(1)
    torch.testing.assert_close(denoising_loss(denoiser, x0, t, noise), expected.float(), rtol=1e-5, atol=1e-6)


def test_loss_is_per_sample_and_weighted():
    schedule = make_schedule("vp")
    x0, noise, t = _batch(schedule)
    net = nn.Conv2d(2, 2, 1).double()
    denoiser = Denoiser(lambda x, mt, y=None: net(x), schedule, "eps")  # type: ignore[arg-type]
    plain = denoising_loss(denoiser, x0, t, noise)
    weight = torch.arange(1, 7, dtype=torch.float64)
    assert plain.shape == (6,)
    torch.testing.assert_close(denoising_loss(denoiser, x0, t, noise, weight=weight), plain * weight.float())


@pytest.mark.parametrize(
    ("framework", "prediction"), [("edm", "v"), ("vp", "edm"), ("flow", "v"), ("vp", "flow")]
)
def test_mismatched_parameterisation_is_rejected_by_name(framework, prediction):
    with pytest.raises(ValueError, match=prediction):
        check_prediction(make_schedule(framework), prediction)


@pytest.mark.parametrize(("framework", "prediction"), [("vp", "eps"), ("edm", "edm")])
def test_force_drop_ids_reaches_the_network_only_when_given(framework, prediction):
    schedule = make_schedule(framework)
    x0, noise, t = _batch(schedule)
    calls = []

    def net(x, model_t, y=None, **kw):
        calls.append(kw)
        return x

    denoiser = Denoiser(net, schedule, prediction)
    x_t = schedule.add_noise(x0, t, noise)
    drop = torch.tensor([True, False] * 3)
    guided = denoiser(x_t, t, None, force_drop_ids=drop)
    assert torch.equal(calls[-1]["force_drop_ids"], drop)
    plain = denoiser(x_t, t)
    assert calls[-1] == {}  # networks without the keyword keep working
    torch.testing.assert_close(guided, plain)
    denoiser.raw(x_t, t, force_drop_ids=drop)
    assert torch.equal(calls[-1]["force_drop_ids"], drop)
