"""Noise schedules: forward noising, SNR, and the mapping between t, sigma and SNR.

Every schedule writes the noisy sample as ``x_t = alpha(t) * x_0 + sigma(t) * eps`` and exposes

* ``alpha_sigma(t)``           the two coefficients,
* ``snr(t)`` / ``log_snr(t)``  alpha^2 / sigma^2,
* ``edm_sigma(t)``             the equivalent variance-exploding noise level sigma/alpha = SNR^-1/2,
* ``t_from_edm_sigma`` / ``t_from_snr``  the inverse maps,
* ``from_unit(u)`` / ``to_unit(t)``      the framework's *training density* as a map from the unit
  interval: ``t = from_unit(u)`` with ``u ~ U[0, 1)`` is the framework's ordinary timestep sample, and
  ``to_unit`` is its CDF.  Timestep curricula partition the unit interval into N equal cells, which is
  exactly the paper's convention: uniform intervals in t for VP and flow, log-normal quantiles of sigma
  for EDM (``seeds/002``, appendix B),
* ``model_time(t)``            the scalar fed to the network's timestep embedding, spread over ~[0, 1000].

Direction convention: **small t is always low noise** (u -> 0 is the data end).  For the flow
interpolant this is the rectified-flow convention ``x_t = (1 - t) x_0 + t eps``; SiT writes the same
path with t reversed (its t = 1 - ours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .device_tables import DeviceTables

__all__ = [
    "VPSchedule",
    "EDMSchedule",
    "FlowSchedule",
    "NoiseSchedule",
    "make_schedule",
    "broadcast_to",
]


def broadcast_to(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient (B,) so it broadcasts against x (B, ...), in x's dtype."""
    return coef.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))


class NoiseSchedule:
    """Shared behaviour; subclasses define ``alpha_sigma``, ``from_unit``, ``to_unit``,
    ``t_from_edm_sigma`` and ``model_time``."""

    name: str = ""
    discrete: bool = False

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_unit(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def t_from_edm_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return alpha.square() / sigma.square()

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return 2.0 * (alpha.log() - sigma.log())

    def edm_sigma(self, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return sigma / alpha

    def t_from_snr(self, snr: torch.Tensor) -> torch.Tensor:
        return self.t_from_edm_sigma(torch.as_tensor(snr, dtype=torch.float64).rsqrt())

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0): alpha(t) x_0 + sigma(t) noise."""
        alpha, sigma = self.alpha_sigma(t)
        return broadcast_to(alpha, x0) * x0 + broadcast_to(sigma, x0) * noise

    def sample_t(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """The framework's own training density (what ``vanilla`` uses)."""
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
        return self.from_unit(u)


@dataclass
class VPSchedule(NoiseSchedule):
    """Discrete variance-preserving schedule (DDPM).  t is an integer in [0, T-1]; t = 0 is the first
    noising step, so alpha_bar[0] = 1 - beta[0] < 1.

    beta_schedule ``linear``: beta evenly spaced in [1e-4, 0.02] at T = 1000 (Ho et al. 2020); for
    other T both ends are scaled by 1000/T, the rule of ADM and DiT (``get_named_beta_schedule`` in
    openai/improved-diffusion and facebookresearch/DiT), so that the product of (1 - beta) and hence the
    end point alpha_bar[T-1] ~ 4e-5 barely depend on T.  Without it T = 100 would end at
    alpha_bar = 0.36 and sampling would start far from the prior.  For T <= 20 the scaled betas reach 1 (ADM
    then fails); they are clipped at 0.999, as the cosine schedule's are.
    ``cosine``: alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), s = 0.008, beta clipped
    at 0.999 (Nichol & Dhariwal 2021).
    """

    beta_schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    name: str = field(default="vp", init=False)
    discrete: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        T = self.num_timesteps
        if T < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {T}")
        if self.beta_schedule == "linear":
            scale = 1000.0 / T
            betas = torch.linspace(
                self.beta_start * scale, self.beta_end * scale, T, dtype=torch.float64
            ).clamp(max=0.999)
        elif self.beta_schedule == "cosine":
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + self.cosine_s) / (1 + self.cosine_s) * math.pi / 2).square()
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"beta_schedule must be 'linear' or 'cosine', got {self.beta_schedule!r}")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # log-SNR decreases strictly with t; kept ascending (negated) for searchsorted.
        self._neg_log_snr = -(self.alphas_cumprod.log() - (-self.alphas_cumprod).log1p())
        self._tables = DeviceTables()  # the loss looks alpha_bar up every step, on the training device
        self._tables.add("alphas_cumprod", self.alphas_cumprod)
        self._tables.add("neg_log_snr", self._neg_log_snr)

    def alpha_sigma(self, t):
        abar = self._tables.get("alphas_cumprod", t.device)[t.long()]
        return abar.sqrt(), (1.0 - abar).sqrt()

    def from_unit(self, u):
        T = self.num_timesteps
        u = u.to(torch.float64)
        t = (u * T).long().clamp_(0, T - 1)
        # u * T can round to just below an integer (3/49 * 49 < 3), landing one cell low; step to the
        # largest t with to_unit(t) <= u so that from_unit(to_unit(t)) == t and cell edges k/T map to k.
        t = t + ((t < T - 1) & (self.to_unit(t + 1) <= u)).long()
        return t - ((t > 0) & (self.to_unit(t) > u)).long()

    def to_unit(self, t):
        return t.to(torch.float64) / self.num_timesteps

    def t_from_edm_sigma(self, sigma):
        """Nearest discrete timestep (in log-SNR) to the given noise level."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        target = 2.0 * sigma.log()  # -log SNR
        table = self._tables.get("neg_log_snr", sigma.device)
        hi = torch.searchsorted(table, target).clamp(1, self.num_timesteps - 1)
        lo = hi - 1
        # Signed distances (table[lo] < table[hi]): target beyond either end of the table then picks that
        # end, including sigma = inf (abs() would compare inf <= inf and pick T-2).
        nearer_lo = target - table[lo] <= table[hi] - target
        return torch.where(nearer_lo, lo, hi)

    def model_time(self, t):
        return t.to(torch.float32)


@dataclass
class EDMSchedule(NoiseSchedule):
    """Variance-exploding schedule of Karras et al. (2022): x = x_0 + sigma eps, t = sigma.

    Training density: ln sigma ~ N(p_mean, p_std^2).  Sampling runs from sigma_max to sigma_min.
    """

    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name: str = field(default="edm", init=False)

    def alpha_sigma(self, t):
        t = t.to(torch.float64)
        return torch.ones_like(t), t

    def from_unit(self, u):
        # Clamp so that u in [0, 1) never maps to sigma = 0 or inf.
        u = u.to(torch.float64).clamp(1e-12, 1 - 1e-12)
        z = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
        return (self.p_mean + self.p_std * z).exp()

    def to_unit(self, t):
        z = (t.to(torch.float64).log() - self.p_mean) / self.p_std
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))

    def t_from_edm_sigma(self, sigma):
        return torch.as_tensor(sigma, dtype=torch.float64)

    def model_time(self, t):
        # ln(sigma) mapped affinely so [sigma_min, sigma_max] -> [0, 1000]; EDM's c_noise = ln(sigma)/4 is
        # the same quantity up to an affine map, spread here for a sinusoidal embedding.
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (1000.0 * (t.to(torch.float64).log() - lo) / (hi - lo)).to(torch.float32)


@dataclass
class FlowSchedule(NoiseSchedule):
    """Linear interpolant (rectified flow / SiT "Linear"): x_t = (1 - t) x_0 + t eps, t in [0, 1].

    t = 1 is pure noise.  Training density: t ~ U[t_min, 1] with t_min > 0 keeping SNR finite.
    """

    t_min: float = 1e-5
    name: str = field(default="flow", init=False)

    def alpha_sigma(self, t):
        t = t.to(torch.float64)
        return 1.0 - t, t

    def from_unit(self, u):
        return self.t_min + (1.0 - self.t_min) * u.to(torch.float64)

    def to_unit(self, t):
        return ((t.to(torch.float64) - self.t_min) / (1.0 - self.t_min)).clamp(0.0, 1.0)

    def t_from_edm_sigma(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        # sigma = inf (SNR 0) is t = 1, where sigma / (1 + sigma) would be nan.
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1.0 + sigma))

    def model_time(self, t):
        return (1000.0 * t.to(torch.float64)).to(torch.float32)


_SCHEDULES = {"vp": VPSchedule, "edm": EDMSchedule, "flow": FlowSchedule}


def make_schedule(framework: str, **kwargs) -> NoiseSchedule:
    """Build a schedule by framework name ('vp', 'edm', 'flow') with its keyword parameters."""
    try:
        cls = _SCHEDULES[framework]
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}; expected one of {sorted(_SCHEDULES)}") from None
    return cls(**kwargs)
