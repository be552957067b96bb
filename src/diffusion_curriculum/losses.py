"""Network parameterisations and the per-sample (unreduced) denoising loss.

A raw network ``net(x, model_time, y)`` predicts one of

* ``eps``  the noise (DDPM),
* ``v``    alpha * eps - sigma * x_0 (Salimans & Ho 2022; variance-preserving schedules only),
* ``x0``   the clean sample,
* ``flow`` the velocity d x_t / d t = eps - x_0 of the linear interpolant,
* ``edm``  F in EDM's preconditioning D(x; s) = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022).

:class:`Denoiser` wraps the network so that every sampler sees one thing, the x_0 prediction, and
:func:`denoising_loss` returns one loss value per sample so that timestep strategies can weight,
bin and observe it.
"""

from __future__ import annotations

import torch
from torch import nn

from .schedules import EDMSchedule, FlowSchedule, NoiseSchedule, VPSchedule, broadcast_to

PREDICTIONS = ("eps", "v", "x0", "flow", "edm")

__all__ = ["PREDICTIONS", "Denoiser", "denoising_loss", "check_prediction"]


def check_prediction(schedule: NoiseSchedule, prediction: str) -> None:
    """Reject parameterisations that do not fit the schedule, naming both."""
    allowed = {
        VPSchedule: ("eps", "v", "x0"),
        EDMSchedule: ("edm", "eps", "x0"),
        FlowSchedule: ("flow", "eps", "x0"),
    }[type(schedule)]
    if prediction not in allowed:
        raise ValueError(
            f"prediction {prediction!r} does not fit the {schedule.name!r} schedule; use one of {allowed}"
        )


class Denoiser(nn.Module):
    """x_0 predictor built from a raw network under a parameterisation."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, prediction: str):
        super().__init__()
        check_prediction(schedule, prediction)
        self.net = net
        self.schedule = schedule
        self.prediction = prediction

    def _edm_coefficients(self, sigma: torch.Tensor):
        sd = self.schedule.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1.0 / (sigma**2 + sd**2).sqrt()
        return c_skip, c_out, c_in

    def raw(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network's output in its own parameterisation (EDM: F with c_in applied to the input).

        ``force_drop_ids`` (B,) bool reaches the network only when given (classifier-free guidance), so
        networks without that keyword still work unguided.
        """
        model_t = self.schedule.model_time(t)
        net_in = x_t
        if self.prediction == "edm":
            _, _, c_in = self._edm_coefficients(t.to(torch.float64))
            net_in = broadcast_to(c_in, x_t) * x_t
        if force_drop_ids is None:
            return self.net(net_in, model_t, y)
        return self.net(net_in, model_t, y, force_drop_ids=force_drop_ids)

    def to_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Convert a raw output to the x_0 prediction."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        a, s = broadcast_to(alpha, x_t), broadcast_to(sigma, x_t)
        if self.prediction == "x0":
            return out
        if self.prediction == "eps":
            return (x_t - s * out) / a
        if self.prediction == "v":
            return a * x_t - s * out
        if self.prediction == "flow":
            return x_t - s * out  # for the linear interpolant sigma(t) = t
        c_skip, c_out, _ = self._edm_coefficients(t.to(torch.float64))
        return broadcast_to(c_skip, x_t) * x_t + broadcast_to(c_out, x_t) * out

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.to_x0(self.raw(x_t, t, y, force_drop_ids=force_drop_ids), x_t, t)


def denoising_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    y: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unreduced loss, shape (B,): mean squared error of the network's own target over all non-batch
    dimensions, times EDM's lambda(sigma) for ``edm``, times the optional per-sample ``weight``."""
    schedule = denoiser.schedule
    x_t = schedule.add_noise(x0, t, noise)
    out = denoiser.raw(x_t, t, y)
    prediction = denoiser.prediction
    if prediction == "eps":
        target = noise
    elif prediction == "x0":
        target = x0
    elif prediction == "v":
        alpha, sigma = schedule.alpha_sigma(t)
        target = broadcast_to(alpha, x0) * noise - broadcast_to(sigma, x0) * x0
    elif prediction == "flow":
        target = noise - x0
    else:
        # EDM: lambda(sigma) ||D - x_0||^2 equals ||F - F_target||^2 with F_target = (x_0 - c_skip x)/c_out.
        c_skip, c_out, _ = denoiser._edm_coefficients(t.to(torch.float64))
        target = (x0 - broadcast_to(c_skip, x0) * x_t) / broadcast_to(c_out, x0)
    loss = (out.float() - target.float()).square().flatten(1).mean(dim=1)
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    return loss
