"""Loss weightings over the framework's own timestep density: ``min_snr`` and ``p2``.

Both papers state their weight for one loss (Min-SNR: for x0, ε and v targets; P2: for the ε-MSE
L_simple).  :func:`diffusion_curriculum.losses.denoising_loss` computes the MSE of the network's *own*
target, so the weight is converted with c(t), the factor between the x0 error and the target's error,
||x0_hat - x0||^2 = c(t) ||out - target||^2:

    eps: c = sigma^2 / alpha^2 = 1 / SNR      v (VP): c = sigma^2 = 1 / (1 + SNR)      x0: c = 1
    flow (x_t = (1 - t) x0 + t eps, target eps - x0): c = sigma^2 = t^2
    edm (target F, D = c_skip x + c_out F): c = c_out^2 = sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2)
"""

from __future__ import annotations

import torch

from ..losses import check_prediction
from ..schedules import NoiseSchedule
from .base import DeviceTables, Intervals, TimestepStrategy

__all__ = ["MinSNR", "P2", "x0_error_factor"]


def x0_error_factor(schedule: NoiseSchedule, prediction: str, t: torch.Tensor) -> torch.Tensor:
    """c(t) = ||x0 error||^2 / ||error of the prediction's own target||^2 (see the module docstring)."""
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = alpha.to(torch.float64), sigma.to(torch.float64)
    if prediction == "eps":
        return (sigma / alpha).square()
    if prediction == "x0":
        return torch.ones_like(sigma)
    if prediction in ("v", "flow"):
        return sigma.square()
    sd = schedule.sigma_data  # edm
    return (sigma * sd).square() / (sigma.square() + sd**2)


class _SNRWeighted(TimestepStrategy):
    """Vanilla sampling with a weight that is a function of t; discrete schedules look it up in a table
    (built once, copied to each device once), continuous ones evaluate it in closed form."""

    def __init__(self, schedule: NoiseSchedule, intervals: Intervals, prediction: str):
        super().__init__(schedule, intervals)
        check_prediction(schedule, prediction)
        self.prediction = prediction
        self._tables = DeviceTables()
        if schedule.discrete:
            t = torch.arange(schedule.num_timesteps)
            self._tables.add("weights", self.weight_of(t).to(torch.float32))

    def weight_of(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, batch, generator, device=None):
        return self.schedule.sample_t(batch, generator=generator, device=device)

    def weights(self, t):
        if self.schedule.discrete:
            return self._tables.get("weights", t.device)[t]
        return self.weight_of(t).to(torch.float32)


class MinSNR(_SNRWeighted):
    """``min_snr``: Min-SNR-gamma weighting (Hang et al., "Efficient Diffusion Training via Min-SNR
    Weighting Strategy", ICCV 2023), t from the framework's own density.

    In x0 terms the weight is min(SNR, gamma); for the network's own target (module docstring)

        eps: min(SNR, gamma) / SNR        v: min(SNR, gamma) / (SNR + 1)        x0: min(SNR, gamma)
        flow: min(SNR, gamma) t^2         edm: min(SNR, gamma) c_out^2

    (the eps form is evaluated as min(1, gamma / SNR), which is 1 rather than 0/0 at SNR = 0).
    Parameters: gamma (5.0, the paper's choice), prediction ("eps"; must match the training's).
    """

    name = "min_snr"

    def __init__(
        self, schedule: NoiseSchedule, intervals: Intervals, *, gamma: float = 5.0, prediction: str = "eps"
    ):
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        self.gamma = float(gamma)
        super().__init__(schedule, intervals, prediction)

    def weight_of(self, t):
        snr = self.schedule.snr(t).to(torch.float64)
        if self.prediction == "eps":
            return (self.gamma / snr).clamp(max=1.0)
        return snr.clamp(max=self.gamma) * x0_error_factor(self.schedule, self.prediction, t)


class P2(_SNRWeighted):
    """``p2``: perception-prioritised weighting (Choi et al., "Perception Prioritized Training of Diffusion
    Models", CVPR 2022), t from the framework's own density.

    On the ε-MSE (L_simple, lambda_t = 1) the weight is

        w_eps(t) = 1 / (k + SNR(t))^gamma,

    and for another target w = w_eps SNR c(t) (module docstring; ||eps error||^2 = SNR ||x0 error||^2).
    The paper sets k = 1 and gamma in {0.5, 1}; gamma = 1 is the default here.  Weights are not
    renormalised (as in the paper: they shrink the loss at high SNR).
    Parameters: k (1.0), gamma (1.0), prediction ("eps").
    """

    name = "p2"

    def __init__(
        self,
        schedule: NoiseSchedule,
        intervals: Intervals,
        *,
        k: float = 1.0,
        gamma: float = 1.0,
        prediction: str = "eps",
    ):
        if not k > 0 or not gamma >= 0:
            raise ValueError(f"p2 needs k > 0 and gamma >= 0, got k={k!r}, gamma={gamma!r}")
        self.k = float(k)
        self.gamma = float(gamma)
        super().__init__(schedule, intervals, prediction)

    def weight_of(self, t):
        snr = self.schedule.snr(t).to(torch.float64)
        w_eps = (self.k + snr).pow(-self.gamma)
        if self.prediction == "eps":
            return w_eps
        return w_eps * snr * x0_error_factor(self.schedule, self.prediction, t)
