"""Fixed timestep densities from other frameworks: ``logit_normal`` (SD3) and ``edm_lognormal`` (EDM)."""

from __future__ import annotations

import torch

from ..schedules import NoiseSchedule
from .base import BELOW_ONE, Intervals, TimestepStrategy, as_device

__all__ = ["LogitNormal", "EDMLogNormal"]


class LogitNormal(TimestepStrategy):
    """``logit_normal``: logit-normal density (Esser et al., "Scaling Rectified Flow Transformers for
    High-Resolution Image Synthesis", SD3, 2024), placed on the framework's unit interval:

        u = sigmoid(m + s z),  z ~ N(0, 1),   t = schedule.from_unit(u).

    In SD3 the density is over the rectified-flow time (x_t = (1 - t) x0 + t eps), which is this
    library's flow t up to t_min, so on ``flow`` this is SD3's sampler.  On VP it is logit-normal over
    t / T (then floored to a discrete step); on EDM it is logit-normal over the log-normal training CDF
    (a density that concentrates on EDM's own median noise level).  For the same density *in noise
    level* on every framework use ``edm_lognormal`` with P_mean = m, P_std = s: for the linear
    interpolant sigma_edm = t / (1 - t), so logit(t) = ln sigma_edm and the two coincide on flow.
    Parameters: m (0.0), s (1.0).
    """

    name = "logit_normal"

    def __init__(self, schedule: NoiseSchedule, intervals: Intervals, *, m: float = 0.0, s: float = 1.0):
        super().__init__(schedule, intervals)
        if not s > 0:
            raise ValueError(f"s must be > 0, got {s!r}")
        self.m = float(m)
        self.s = float(s)

    def sample(self, batch, generator, device=None):
        z = torch.randn(batch, generator=generator, dtype=torch.float64, device=as_device(device))
        u = torch.sigmoid(self.m + self.s * z).clamp_(max=BELOW_ONE)
        return self.schedule.from_unit(u)


class EDMLogNormal(TimestepStrategy):
    """``edm_lognormal``: EDM's training density of noise levels (Karras et al., "Elucidating the Design
    Space of Diffusion-Based Generative Models", 2022),

        ln sigma ~ N(P_mean, P_std^2),   t = schedule.t_from_edm_sigma(sigma),

    with sigma the variance-exploding noise level sigma(t) / alpha(t) = SNR^(-1/2).  EDM: t = sigma (the
    same density as ``vanilla`` with EDM's defaults); VP: the nearest discrete step in log-SNR (sigma
    beyond the schedule's range lands on t = 0 or T - 1); flow: t = sigma / (1 + sigma).
    Parameters: p_mean (-1.2), p_std (1.2).
    """

    name = "edm_lognormal"

    def __init__(
        self, schedule: NoiseSchedule, intervals: Intervals, *, p_mean: float = -1.2, p_std: float = 1.2
    ):
        super().__init__(schedule, intervals)
        if not p_std > 0:
            raise ValueError(f"p_std must be > 0, got {p_std!r}")
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)

    def sample(self, batch, generator, device=None):
        z = torch.randn(batch, generator=generator, dtype=torch.float64, device=as_device(device))
        return self.schedule.t_from_edm_sigma((self.p_mean + self.p_std * z).exp())
