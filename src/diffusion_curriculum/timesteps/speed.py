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
    """``speed``: SpeeD's asymmetric timestep density around a threshold tau and its loss weights, in two
    variants: ``variant: paper`` (default), the method as the paper describes it, and
    ``variant: official``, what the authors' released training configurations actually ran.

    **paper** (any framework; u in [0, 1), u -> 0 low noise; t = from_unit(u)):

        p(u) = a for u < tau,  b for u >= tau,   a = k b,   b = 1 / (k tau + 1 - tau).

    SpeeD splits the process into an acceleration, a deceleration and a *convergence* area; in the last
    one (high noise, x_t already close to pure noise) the process barely changes, the loss is nearly
    constant and training there is wasted, so those timesteps are drawn k times less often (k < 1 gives
    the mirror image, more weight above tau).

    ``tau``: a unit-interval value in (0, 1), or ``"auto"`` (default): the start of the convergence area,
    the smallest grid u beyond which the slope of the unit-variance noise level
    s(u) = sqrt(g(u)) = (1 + SNR)^(-1/2) stays below ``auto_slope`` per unit u.  This is the authors'
    rule for their ``meaningful_steps`` (first t with d sqrt(1 - alpha_bar_t)/dt < 1e-4 at T = 1000, i.e.
    0.1 per unit u) written in unit coordinates: u = 0.641 for the linear VP schedule, 0.958 for the
    cosine one, 0.92 for flow.  EDM has no such area -- its log-normal density already spends its draws
    where the noise level moves (ds/du stays above ~0.4 everywhere) -- so ``"auto"`` refuses it.

    ``dual: true`` (off by default: the paper describes only the asymmetric density): the first
    ceil(B/2) draws u come from p and the rest are their reflections about tau, u' = tau - u for u < tau,
    u' = u - tau for u >= tau, so every batch pairs a timestep with a partner at the same distance from
    the threshold.  The batch's marginal density is (p + p')/2 with
    p'(u) = a 1[0 < u <= tau] + b 1[0 <= u < 1 - tau] (exactly for even B).

    Weighting (``weighting``):

    * ``"change"`` (default), change-aware weighting: with r(u) = |d g / d u| the rate at which the
      noise fraction g changes per unit of the framework's time,
          w(u) ∝ lambda r(u) + (1 - lambda) E_p[r],    lambda = ``weight_lambda`` (0.5),
      normalised so that E_p[w] = 1 under the sampling density (the marginal one when ``dual``).  The
      paper states the principle (weight by the rate of change of the process) but not one formula; g
      is the noise variance it plots, normalised across frameworks, and the (1 - lambda) floor keeps
      every timestep trained.
    * ``"p2"``: P2 weights 1/(1 + SNR) (Choi et al. 2022, k = 1, gamma = 1), normalised the same way.
    * ``"none"``: unit weights.

    r(u) is a central difference: over neighbouring timesteps for discrete schedules (times T), with step
    1e-5 in u for continuous ones.

    **official** (discrete VP schedules only): ``Speed_IDDPM`` of NUS-HPC-AI-Lab/SpeeD
    (``speed/diffusion/speed/__init__.py``), the class every released SpeeD configuration instantiates
    (``configs/ablation/base.yaml``: k = 5, lam = 0.6, tau = 700, weighting and sampling ``ours``;
    ``configs/comparison/*/faster.yaml``: the same with k = 2).  The repository's other SpeeD sampler,
    ``SpeeDiffusion`` in ``speed/diffusion/speed/speed.py`` (probabilities tanh(1e6 (ds/dt - 1e-4)) + 1.5
    and P2 weights), cannot be imported (it imports a ``.respace`` module that does not exist beside it)
    and produced none of the paper's results.  With T timesteps, tau_T = round(tau T) and
    m = (first t with gradient(sqrt(1 - alpha_bar))_t < auto_slope / T) + 1, the code's
    ``meaningful_steps`` (642 for linear VP at T = 1000):

    * density: P(t) ∝ k for t < tau_T, 1 for t >= tau_T (a fixed threshold; ``tau`` must be a number,
      0.7 for the configurations' 700);
    * ``dual: true`` (their ``sampling: ours``): floor(B/2) + 1 draws from P, then the reflections
      t' = m - t (t < m) or t - m (t >= m) of the first B - floor(B/2) - 1 of them; ``dual: false`` is
      their ``no_dual``;
    * ``weighting: change`` (their ``ours``): with r_t = gradient(1 - alpha_bar)_t,
          w_t = (1 - lambda) + (2 lambda - 1) (r_t - min r) / (max r - min r)  for t < tau_T,  1 otherwise,
      i.e. rescaled to [0.4, 0.6] below the threshold for lambda = 0.6, not normalised;
      ``weighting: p2``: 1/(1 + SNR_t), not normalised; ``none``: unit weights.

    The reference's own inconsistencies, reproduced as they are (they are what produced the results):
    the reflection point m (642) is not the density's threshold tau_T (700), so the reflected half is
    not mirrored about the density's step and never lands above m (duals lie in [0, m]); the split is
    floor(B/2) + 1 direct draws and one reflection fewer (5 + 3 for B = 8), so the marginal is
    (h P + (B - h) P') / B with h = floor(B/2) + 1, not the even mixture; the weights are min-max rescaled
    over *all* T steps but used only below tau_T, and jump from at most 0.6 to 1 at tau_T; their mean is
    not 1, which lowers the loss scale (and the effective learning rate) compared with unit weights; with
    the class's default ``lam = 5`` (used by configurations that do not set it) the weights would run
    from -4 to 5, negative below the threshold (set ``weight_lambda`` in [0, 1]); if the noise level never
    flattens, ``argmax`` finds no flat step and m = 1.  Their weights multiply only the MSE term (the
    learned-variance VB term stays unweighted); this package has no learned variance, so they weight the
    whole per-sample loss.  :meth:`unit_cdf` / :meth:`unit_pdf` give the large-batch marginal (P + P')/2;
    :meth:`official_pmf` gives the marginal of any batch size.

    Parameters: variant ("paper"), k (5.0), tau ("auto"), auto_slope (0.1), dual (False),
    weighting ("change"), weight_lambda (0.5).
    """

    name = "speed"

    def __init__(
        self,
        schedule: NoiseSchedule,
        intervals: Intervals,
        *,
        variant: str = "paper",
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
        if variant not in ("paper", "official"):
            raise ValueError(f"variant must be 'paper' or 'official', got {variant!r}")
        if variant == "official":
            if not schedule.discrete:
                raise ValueError(
                    "speed: variant 'official' reproduces SpeeD's Speed_IDDPM, which exists only for "
                    f"discrete VP schedules, not {schedule.name!r}; use variant 'paper'"
                )
            if tau == "auto":
                raise ValueError(
                    "speed: variant 'official' uses a fixed density threshold (SpeeD's configurations: "
                    "700 of 1000 steps); give tau as a number, e.g. 0.7"
                )
        if tau == "auto":
            tau = self.auto_tau(schedule, auto_slope)
        elif isinstance(tau, str) or not 0.0 < tau < 1.0:
            raise ValueError(f"tau must be 'auto' or a unit-interval value in (0, 1), got {tau!r}")
        self.variant = variant
        self.k = float(k)
        self.tau = float(tau)
        self.dual = bool(dual)
        self.weighting = weighting
        self.weight_lambda = float(weight_lambda)
        self._tables = DeviceTables()
        if variant == "official":
            T = schedule.num_timesteps
            self.tau_steps = min(max(round(self.tau * T), 1), T - 1)
            self.tau = self.tau_steps / T  # the density's step lies on a cell edge
            self.meaningful_steps = self.official_meaningful_steps(schedule, auto_slope)
        self.b = 1.0 / (self.k * self.tau + 1.0 - self.tau)
        self.a = self.k * self.b
        if variant == "official":
            if weighting != "none":
                self._tables.add("weights", self._official_weights().to(torch.float32))
        elif weighting != "none":
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

    @staticmethod
    def official_meaningful_steps(schedule: NoiseSchedule, slope: float = 0.1) -> int:
        """SpeeD's ``meaningful_steps``: 1 + the first t at which the central-difference slope of
        sqrt(1 - alpha_bar_t) per step is below ``slope`` / T (1e-4 at T = 1000); 1 when there is none
        (``np.argmax`` of an all-False array is 0)."""
        g = noise_fraction(schedule, torch.arange(schedule.num_timesteps))
        flat = torch.gradient(g.sqrt())[0] < slope / schedule.num_timesteps
        return int(torch.argmax(flat.to(torch.uint8))) + 1

    def _official_weights(self) -> torch.Tensor:
        """Per-timestep weights of Speed_IDDPM (float64, not normalised)."""
        g = noise_fraction(self.schedule, torch.arange(self.schedule.num_timesteps))  # 1 - alpha_bar
        if self.weighting == "p2":
            return g
        r = torch.gradient(g)[0]
        low = 1.0 - self.weight_lambda
        w = low + (1.0 - 2.0 * low) * (r - r.min()) / (r.max() - r.min())
        w[self.tau_steps :] = 1.0
        return w

    def official_pmf(self, batch: int | None = None) -> torch.Tensor:
        """``variant: official``: the (T,) probabilities of one batch position's timestep, averaged over
        a batch of ``batch`` (None: the large-batch limit (P + P')/2), float64."""
        T, m = self.schedule.num_timesteps, self.meaningful_steps
        t = torch.arange(T)
        direct = torch.where(t < self.tau_steps, self.k, 1.0).to(torch.float64)
        direct /= direct.sum()
        if not self.dual:
            return direct
        mirror = torch.where(t < m, m - t, t - m)
        reflected = torch.zeros(T, dtype=torch.float64).index_add_(0, mirror, direct)
        share = 0.5 if batch is None else min(batch // 2 + 1, batch) / batch
        return share * direct + (1.0 - share) * reflected

    # -- the sampling density (marginal over the batch) -----------------------------------------------

    def _cdf_p(self, u):
        return self.a * u.clamp(max=self.tau) + self.b * (u - self.tau).clamp(min=0.0)

    def unit_cdf(self, u: torch.Tensor) -> torch.Tensor:
        """CDF of the batch's marginal density in unit space (with ``dual``, the mixture (p + p')/2)."""
        u = torch.as_tensor(u, dtype=torch.float64).clamp(0.0, 1.0)
        if self.variant == "official":
            T = self.schedule.num_timesteps
            cum = torch.cat([torch.zeros(1, dtype=torch.float64), self.official_pmf().cumsum(0)])
            cell = (u * T).floor().clamp(max=T - 1).long()
            return cum[cell] + (u * T - cell) * (cum[cell + 1] - cum[cell])
        if not self.dual:
            return self._cdf_p(u)
        mirrored = self.a * u.clamp(max=self.tau) + self.b * u.clamp(max=1.0 - self.tau)
        return 0.5 * (self._cdf_p(u) + mirrored)

    def unit_pdf(self, u: torch.Tensor) -> torch.Tensor:
        u = torch.as_tensor(u, dtype=torch.float64)
        if self.variant == "official":
            T = self.schedule.num_timesteps
            return self.official_pmf()[(u * T).floor().clamp(0, T - 1).long()] * T
        p = torch.where(u < self.tau, self.a, self.b)
        if not self.dual:
            return p
        mirrored = self.a * ((u > 0) & (u <= self.tau)) + self.b * ((u >= 0) & (u < 1.0 - self.tau))
        return 0.5 * (p + mirrored)

    def sample(self, batch, generator, device=None):
        device = as_device(device)
        if self.variant == "official":
            return self._sample_official(batch, generator, device)
        draws = (batch + 1) // 2 if self.dual else batch
        r = unit_draw(draws, generator, device)
        head = self.a * self.tau  # probability mass below tau
        u = torch.where(r < head, r / self.a, self.tau + (r - head) / self.b).clamp_(max=BELOW_ONE)
        if self.dual:
            u = torch.cat([u, torch.where(u < self.tau, self.tau - u, u - self.tau)])[:batch]
        return self.schedule.from_unit(u)

    def _sample_official(self, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        draws = min(batch // 2 + 1, batch) if self.dual else batch
        r = unit_draw(draws, generator, device)
        head = self.a * self.tau  # probability mass below the threshold
        u = torch.where(r < head, r / self.a, self.tau + (r - head) / self.b).clamp_(max=BELOW_ONE)
        t = self.schedule.from_unit(u)  # P(t) ∝ k below tau_steps, 1 above (tau is a cell edge)
        if self.dual:
            m = self.meaningful_steps
            t = torch.cat([t, torch.where(t < m, m - t, t - m)])[:batch]
        return t

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
        if self.variant == "official":
            return self._tables.get("weights", t.device)[t]
        if self.schedule.discrete:
            return self._tables.get("weights", t.device)[t]
        return (self._raw_weight(t) / self._norm).to(torch.float32)
