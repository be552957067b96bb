"""``speed``: SpeeD's asymmetric timestep sampling and change-aware weighting.

Wang, Zhou, Shi, Yuan, Shang, Peng, Zhang & You, "A Closer Look at Time Steps is Worthy of Triple
Speed-Up for Diffusion Model Training" (arXiv 2405.17403, 2024).
"""

from __future__ import annotations

import torch

from ..schedules import NoiseSchedule
from .base import (
    BELOW_ONE,
    DeviceTables,
    Intervals,
    TimestepStrategy,
    as_device,
    expectation_under,
    unit_draw,
)

__all__ = ["SpeeD", "noise_fraction"]


def noise_fraction(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """g(t) = sigma^2 / (alpha^2 + sigma^2) = 1 / (1 + SNR(t)): the noise variance of the process
    rescaled to unit total variance (1 - alpha_bar_t for VP), comparable across frameworks."""
    return 1.0 / (1.0 + schedule.snr(t).to(torch.float64))


class SpeeD(TimestepStrategy):
    """``speed``: piecewise-constant density over the unit interval, k times higher below a threshold tau
    than above it, and loss weights proportional to how fast the process changes.

    Sampling (u in [0, 1), u -> 0 low noise; t = from_unit(u)):

        p(u) = a for u < tau,  b for u >= tau,   a = k b,   b = 1 / (k tau + 1 - tau).

    SpeeD splits the process into an acceleration, a deceleration and a *convergence* area; in the last
    one (high noise, x_t already close to pure noise) the process barely changes, the loss is nearly
    constant and training there is wasted, so those timesteps are drawn k times less often.  This is the
    side the official code favours (its per-timestep probabilities are tanh(.) + 1.5, i.e. 2.5 below the
    threshold and 0.5 above: k = 5, the default); k < 1 gives the mirror image, more weight above tau.

    ``tau``: a unit-interval value in (0, 1), or ``"auto"`` (default): the start of the convergence area,
    the smallest grid u beyond which the slope of the unit-variance noise level
    s(u) = sqrt(g(u)) = (1 + SNR)^(-1/2) stays below ``auto_slope`` per unit u.  This is the official
    code's rule (first t with d sqrt(1 - alpha_bar_t)/dt < 1e-4 at T = 1000, i.e. 0.1 per unit u) written
    in unit coordinates: u = 0.641 for the linear VP schedule, 0.958 for the cosine one, 0.92 for flow.
    EDM has no such area — its log-normal density already spends its draws where the noise level moves
    (ds/du stays above ~0.4 everywhere) — so ``"auto"`` refuses it and tau must be given.

    ``dual: true`` (the official code's sampler; off by default because the paper describes only the
    asymmetric density): the first ceil(B/2) draws u come from p and the rest are their reflections
    about tau,  u' = tau - u for u < tau,  u' = u - tau for u >= tau  (the code's ``dual_t``), so every
    batch pairs a timestep with a partner at the same distance from the threshold.  The batch's marginal
    density is then (p + p')/2 with p'(u) = a 1[0 < u <= tau] + b 1[0 <= u < 1 - tau] (exactly for even B).

    Weighting (``weighting``):

    * ``"change"`` (default), the paper's change-aware weighting: with r(u) = |d g / d u| the rate at which
      the noise fraction g changes per unit of the framework's time,
          w(u) ∝ lambda r(u) + (1 - lambda) E_p[r],    lambda = ``weight_lambda`` (0.5),
      normalised so that E_p[w] = 1 under the sampling density (the marginal one when ``dual``), so the
      weights redistribute the loss over t without changing its overall scale.  The paper states the
      principle (weight by the rate of change of the process) but not one formula; the variance of the
      noise is the quantity it plots, g is that variance normalised across frameworks, and the
      (1 - lambda) floor keeps every timestep trained (pure r(u) would all but switch off the ends of
      the VP linear schedule, where g is flat).
    * ``"p2"``: what the official code actually applies, P2 weights 1/(1 + SNR) (Choi et al. 2022, k = 1,
      gamma = 1), normalised the same way.
    * ``"none"``: unit weights.

    r(u) is a central difference: over neighbouring timesteps for discrete schedules (times T), with step
    1e-5 in u for continuous ones.  Parameters: k (5.0), tau ("auto"), auto_slope (0.1), dual (False),
    weighting ("change"), weight_lambda (0.5).
    """

    name = "speed"

    def __init__(
        self,
        schedule: NoiseSchedule,
        intervals: Intervals,
        *,
        k: float = 5.0,
        tau: float | str = "auto",
        auto_slope: float = 0.1,
        dual: bool = False,
        weighting: str = "change",
        weight_lambda: float = 0.5,
    ):
        super().__init__(schedule, intervals)
        if not k > 0:
            raise ValueError(f"k must be > 0, got {k!r}")
        if weighting not in ("change", "p2", "none"):
            raise ValueError(f"weighting must be 'change', 'p2' or 'none', got {weighting!r}")
        if not 0.0 <= weight_lambda <= 1.0:
            raise ValueError(f"weight_lambda must be in [0, 1], got {weight_lambda!r}")
        if tau == "auto":
            tau = self.auto_tau(schedule, auto_slope)
        elif isinstance(tau, str) or not 0.0 < tau < 1.0:
            raise ValueError(f"tau must be 'auto' or a unit-interval value in (0, 1), got {tau!r}")
        self.k = float(k)
        self.tau = float(tau)
        self.dual = bool(dual)
        self.weighting = weighting
        self.weight_lambda = float(weight_lambda)
        self.b = 1.0 / (self.k * self.tau + 1.0 - self.tau)
        self.a = self.k * self.b
        self._tables = DeviceTables()
        if weighting != "none":
            self._rate_mean = expectation_under(schedule, self.unit_cdf, self.unit_pdf, self._rate)
            self._norm = expectation_under(schedule, self.unit_cdf, self.unit_pdf, self._raw_weight)
            if schedule.discrete:
                t = torch.arange(schedule.num_timesteps)
                self._tables.add("weights", (self._raw_weight(t) / self._norm).to(torch.float32))

    # -- the threshold --------------------------------------------------------------------------------

    @staticmethod
    def auto_tau(schedule: NoiseSchedule, slope: float = 0.1, grid: int = 4096) -> float:
        """Start of the convergence area: the first grid u after the last one where d s/d u >= slope,
        s = (1 + SNR)^(-1/2)."""
        if schedule.discrete:
            t = torch.arange(schedule.num_timesteps)
            u = schedule.to_unit(t)
        else:
            u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
            t = schedule.from_unit(u)
        ds = torch.gradient(noise_fraction(schedule, t).sqrt(), spacing=(u,))[0]
        steep = torch.nonzero(ds >= slope).flatten()
        if steep.numel() == 0 or int(steep[-1]) + 1 >= len(u):
            raise ValueError(
                f"speed: tau='auto' finds no convergence area on the {schedule.name!r} schedule (the "
                f"noise level's slope per unit u never stays below auto_slope={slope} up to u = 1); give "
                "tau explicitly as a unit-interval value"
            )
        return float(u[int(steep[-1]) + 1])

    # -- the sampling density (marginal over the batch) -----------------------------------------------

    def _cdf_p(self, u):
        return self.a * u.clamp(max=self.tau) + self.b * (u - self.tau).clamp(min=0.0)

    def unit_cdf(self, u: torch.Tensor) -> torch.Tensor:
        """CDF of the batch's marginal density in unit space (with ``dual``, the mixture (p + p')/2)."""
        u = torch.as_tensor(u, dtype=torch.float64).clamp(0.0, 1.0)
        if not self.dual:
            return self._cdf_p(u)
        mirrored = self.a * u.clamp(max=self.tau) + self.b * u.clamp(max=1.0 - self.tau)
        return 0.5 * (self._cdf_p(u) + mirrored)

    def unit_pdf(self, u: torch.Tensor) -> torch.Tensor:
        u = torch.as_tensor(u, dtype=torch.float64)
        p = torch.where(u < self.tau, self.a, self.b)
        if not self.dual:
            return p
        mirrored = self.a * ((u > 0) & (u <= self.tau)) + self.b * ((u >= 0) & (u < 1.0 - self.tau))
        return 0.5 * (p + mirrored)

    def sample(self, batch, generator, device=None):
        device = as_device(device)
        draws = (batch + 1) // 2 if self.dual else batch
        r = unit_draw(draws, generator, device)
        head = self.a * self.tau  # probability mass below tau
        u = torch.where(r < head, r / self.a, self.tau + (r - head) / self.b).clamp_(max=BELOW_ONE)
        if self.dual:
            u = torch.cat([u, torch.where(u < self.tau, self.tau - u, u - self.tau)])[:batch]
        return self.schedule.from_unit(u)

    # -- the weights ------------------------------------------------------------------------------------

    def _rate(self, t: torch.Tensor) -> torch.Tensor:
        """r = |d g / d u| at timesteps t."""
        sched = self.schedule
        if sched.discrete:
            g = noise_fraction(sched, torch.arange(sched.num_timesteps))
            table = torch.gradient(g)[0].abs() * sched.num_timesteps
            return table.to(t.device)[t.long()]
        u = sched.to_unit(t)
        h = 1e-5
        lo, hi = (u - h).clamp(min=0.0), (u + h).clamp(max=1.0)
        dg = noise_fraction(sched, sched.from_unit(hi)) - noise_fraction(sched, sched.from_unit(lo))
        return dg.abs() / (hi - lo)

    def _raw_weight(self, t: torch.Tensor) -> torch.Tensor:
        if self.weighting == "p2":
            return noise_fraction(self.schedule, t)
        lam = self.weight_lambda
        return lam * self._rate(t) + (1.0 - lam) * self._rate_mean

    def weights(self, t):
        if self.weighting == "none":
            return None
        if self.schedule.discrete:
            return self._tables.get("weights", t.device)[t]
        return (self._raw_weight(t) / self._norm).to(torch.float32)
