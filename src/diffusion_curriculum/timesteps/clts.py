"""``clts``: curriculum timestep schedule, optionally with momentum decay and learning-rate compensation.

Xu, Mi, Wang & Chen, "Towards Faster Training of Diffusion Models: An Inspiration of A Consistency
Phenomenon" (arXiv 2404.07946; ``seeds/003``).  The paper's abstract names the two ideas — a timestep
schedule that "gradually reduces the training frequency of easier timesteps" (high noise is easy for an
ε-predictor) and a decay of the momentum coefficient during training with learning-rate compensation —
but the exact formulas are not available here, so the ones below are this library's, chosen to be simple,
exactly sampleable and documented; every constant is a parameter.
"""

from __future__ import annotations

import math

import torch

from ..schedules import NoiseSchedule
from .base import BELOW_ONE, Intervals, TimestepStrategy, as_device, unit_draw

__all__ = ["CLTS"]


class CLTS(TimestepStrategy):
    """``clts``: a truncated-exponential density over the unit interval whose slope moves from the
    high-noise end toward the low-noise end as training progresses.

    Density at step k (k = optimisation steps completed), with u in [0, 1) the framework's unit
    coordinate (u -> 0 low noise, u -> 1 high noise) and t = from_unit(u):

        p_k(u) = lambda_k exp(-lambda_k u) / (1 - exp(-lambda_k))       (uniform when lambda_k = 0)
        lambda_k = lambda_start + (lambda_end - lambda_start) min(k / total_steps, 1)

    so p_k(0) / p_k(1) = exp(lambda_k): lambda < 0 favours high noise (easy), lambda > 0 low noise (hard).
    The defaults start mildly easy-biased (lambda_start = -1: the high-noise end drawn e ~ 2.7x as often
    as the low-noise end, a curriculum's easy start) and end hard-biased (lambda_end = 2: the high-noise
    end drawn e^2 ~ 7.4x less often), the paper's "gradually reduces the training frequency of easier
    timesteps".  One log-linear density family keeps the schedule one number per step and makes sampling
    exact by inverting the CDF F_k(u) = (1 - exp(-lambda_k u)) / (1 - exp(-lambda_k)):

        u = -log1p(r expm1(-lambda_k)) / lambda_k,   r ~ U[0, 1).

    Momentum decay (``momentum_decay: true``), applied in ``before_step`` to every AdamW param group:

        beta1(k) = beta1_end + (beta1_start - beta1_end) (1 + cos(pi min(k / decay_steps, 1))) / 2

    (cosine from beta1_start to beta1_end over ``decay_steps``, default ``total_steps``; beta2 is left
    alone), and with ``lr_compensation: true`` the learning rate of each group becomes

        lr(k) = lr_0 sqrt( (1 - beta1_start)(1 + beta1(k)) / ((1 + beta1_start)(1 - beta1(k))) )

    with lr_0 the group's learning rate when the strategy first saw the optimiser (kept in the state, so a
    resumed run does not mistake an already compensated rate for lr_0).  Why this rule: Adam's first
    moment is a *normalised* average, m <- beta1 m + (1 - beta1) g, so for a steady gradient the mean
    update lr E[m] / sqrt(v) does not depend on beta1 — unlike heavy-ball SGD, where the step is
    lr / (1 - beta) and lowering beta would call for a larger lr.  What beta1 changes in Adam is the
    averaging of gradient noise: for i.i.d. noise of variance s^2, Var[m] = s^2 (1 - beta1) / (1 + beta1).
    Lowering beta1 shortens the optimiser's memory (less overshoot on the smooth loss landscape the paper
    describes) but makes each update noisier; the factor above keeps the update's noise standard
    deviation, lr sqrt((1 - beta1)/(1 + beta1)), at its beta1_start value.  (Adam's bias correction
    1 - beta1^k uses the current beta1; after the first few dozen steps it is 1 to within 1e-4, so a
    change of beta1 needs no further correction.)  With the defaults (0.9 -> 0.5) the factor ends at
    sqrt(0.15 / 0.95) ~ 0.40.

    Parameters: total_steps (required: the run length that the density's progress is measured
    against), lambda_start (-1.0), lambda_end (2.0), momentum_decay (False), beta1_start (0.9),
    beta1_end (0.5), decay_steps (None = total_steps), lr_compensation (True).
    """

    name = "clts"

    def __init__(
        self,
        schedule: NoiseSchedule,
        intervals: Intervals,
        *,
        total_steps: int,
        lambda_start: float = -1.0,
        lambda_end: float = 2.0,
        momentum_decay: bool = False,
        beta1_start: float = 0.9,
        beta1_end: float = 0.5,
        decay_steps: int | None = None,
        lr_compensation: bool = True,
    ):
        super().__init__(schedule, intervals)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        if decay_steps is None:
            decay_steps = total_steps
        if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1:
            raise ValueError(f"decay_steps must be an integer >= 1 or null, got {decay_steps!r}")
        for key, value in (("beta1_start", beta1_start), ("beta1_end", beta1_end)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {value!r}")
        self.total_steps = total_steps
        self.lambda_start = float(lambda_start)
        self.lambda_end = float(lambda_end)
        self.momentum_decay = bool(momentum_decay)
        self.beta1_start = float(beta1_start)
        self.beta1_end = float(beta1_end)
        self.decay_steps = decay_steps
        self.lr_compensation = bool(lr_compensation)
        self._step = 0
        self._base_lrs: list[float] | None = None

    def rate(self, step: int) -> float:
        """lambda_k of the density p_k(u) ∝ exp(-lambda_k u)."""
        progress = min(max(step, 0) / self.total_steps, 1.0)
        return self.lambda_start + (self.lambda_end - self.lambda_start) * progress

    def beta1(self, step: int) -> float:
        progress = min(max(step, 0) / self.decay_steps, 1.0)
        return self.beta1_end + (self.beta1_start - self.beta1_end) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    def lr_factor(self, step: int) -> float:
        if not self.lr_compensation:
            return 1.0
        b0, b = self.beta1_start, self.beta1(step)
        return math.sqrt((1.0 - b0) * (1.0 + b) / ((1.0 + b0) * (1.0 - b)))

    def before_step(self, step, optimizer):
        self._step = int(step)
        if not self.momentum_decay:
            return
        groups = optimizer.param_groups
        if self._base_lrs is None:
            self._base_lrs = [float(g["lr"]) for g in groups]
        if len(self._base_lrs) != len(groups):
            raise ValueError(
                f"clts momentum decay: the optimiser has {len(groups)} param groups, the strategy's state "
                f"{len(self._base_lrs)}"
            )
        beta1, factor = self.beta1(step), self.lr_factor(step)
        for group, base in zip(groups, self._base_lrs, strict=True):
            group["betas"] = (beta1, group["betas"][1])
            if isinstance(group["lr"], torch.Tensor):  # a tensor lr (capturable optimisers) keeps its type
                group["lr"].fill_(base * factor)
            else:
                group["lr"] = base * factor

    def observe(self, step, t, loss):
        self._step = int(step)

    def sample(self, batch, generator, device=None):
        r = unit_draw(batch, generator, as_device(device))
        lam = self.rate(self._step)
        # lambda -> 0 is the uniform density; the closed form would divide 0 by 0 there.
        u = r if abs(lam) < 1e-12 else (-torch.log1p(r * math.expm1(-lam)) / lam).clamp_(0.0, BELOW_ONE)
        return self.schedule.from_unit(u)

    def state_dict(self) -> dict:
        return {"step": self._step, "base_lrs": None if self._base_lrs is None else list(self._base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"step", "base_lrs"}:
            raise ValueError(
                f"strategy {self.name!r}: state keys {sorted(state)} are not ['base_lrs', 'step']"
            )
        self._step = int(state["step"])
        self._base_lrs = None if state["base_lrs"] is None else [float(v) for v in state["base_lrs"]]
