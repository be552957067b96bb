"""Cluster curricula: ``dtd`` (the paper), ``anti_cl`` (its reverse) and ``naive_cl`` (fixed pacing).

Kim, Go, Kwon & Kim, "Denoising Task Difficulty-based Curriculum for Training Diffusion Models"
(arXiv 2403.10348, ICLR 2025; ``seeds/002``, section 4 and appendix D).

All three are *cumulative*: the timestep range only grows.  With the clusters listed from first to last
to be added as o_0, o_1, ..., o_{N-1} (``Intervals.order`` for the easy-to-hard curricula), stage
n = 0 .. N-1 draws

    u ~ Uniform(C_{o_0} ∪ ... ∪ C_{o_n}),   t = schedule.from_unit(u),

i.e. a cluster with probability proportional to its width, then u uniform inside it.  For uniform
intervals in the paper's order (o_j = C_{N-j}) this is u ~ U[(N-1-n)/N, 1).  The last stage holds every
cluster and draws exactly what ``vanilla`` draws (same values from the same generator state): the
"ordinary training over all t" that follows the curriculum.
"""

from __future__ import annotations

import math

import torch

from ..schedules import NoiseSchedule
from .base import (
    DeviceTables,
    Intervals,
    PiecewiseUniform,
    TimestepStrategy,
    as_device,
    same_device,
    unit_draw,
)

__all__ = ["DTD", "AntiCL", "NaiveCL", "TRANSITION_COLUMNS", "transition_row"]

#: Columns of a transition row: this package's step and 0-based stages, Algorithm 2's 0-based iteration
#: and curriculum index I_cur (N = the easiest cluster alone, 0 = the curriculum has ended).
TRANSITION_COLUMNS = ["step", "from_stage", "to_stage", "iteration", "from_index", "to_index"]


def transition_row(step: int, stage: int, num_stages: int) -> dict:
    """The stage change ``stage -> stage + 1`` after update ``step``, in both numberings."""
    return {
        "step": step,
        "from_stage": stage,
        "to_stage": stage + 1,
        "iteration": step - 1,
        "from_index": num_stages - stage,
        "to_index": num_stages - stage - 1,
    }


class _CumulativeCurriculum(TimestepStrategy):
    """Sampler shared by the cluster curricula: stage n is uniform over the first n + 1 clusters of
    ``cluster_order`` (in unit space)."""

    def __init__(self, schedule: NoiseSchedule, intervals: Intervals, cluster_order: tuple[int, ...]):
        super().__init__(schedule, intervals)
        n = intervals.num
        self.num_stages = n
        self.cluster_order = tuple(cluster_order)
        widths = torch.diff(intervals.edges_tensor())
        member = torch.zeros(n, n, dtype=torch.float64)
        for stage in range(n):
            member[stage, list(self.cluster_order[: stage + 1])] = 1.0
        self._density = PiecewiseUniform(intervals.unit_edges, member * widths)

    def clusters_at(self, stage: int) -> tuple[int, ...]:
        """Cluster indices (0 = C_1) sampled at ``stage``."""
        return tuple(sorted(self.cluster_order[: min(stage, self.num_stages - 1) + 1]))

    def _draw(self, batch: int, generator: torch.Generator, device: torch.device, stage) -> torch.Tensor:
        r = unit_draw(batch, generator, device)
        u = self._density.sample(r, stage)
        # The last stage covers [0, 1): use r itself so that it is bit for bit the vanilla draw (the
        # cell-by-cell inverse CDF equals r only up to rounding).
        last = self.num_stages - 1
        u = (
            torch.where(stage == last, r, u)
            if isinstance(stage, torch.Tensor)
            else (r if stage == last else u)
        )
        return self.schedule.from_unit(u)


class DTD(_CumulativeCurriculum):
    """``dtd``: easy-to-hard cumulative curriculum with the paper's patience pacing.

    Sampling: stage n is uniform (in unit space) over the n + 1 easiest clusters of ``intervals.order``
    (see the module docstring).  Stage indices run 0 .. N-1; N-1 holds every cluster.

    Pacing (Algorithm 1 and 2 of ``seeds/002``, appendix D).  After every optimisation step, with
    L_cur the batch's mean loss (the loss of that update):

        if L_cur < L_best:              patience <- 0;  L_best <- L_cur
        elif patience + 1 > tau_max:    stage <- stage + 1;  patience <- 0;  L_best <- +inf
        else:                           patience <- patience + 1

    Reading of the algorithm text: Algorithm 1 returns ``p_cur + 1`` in its last branch, a typo for
    tau_cur + 1 (p is never defined).  Algorithm 2 updates L_best *after* the pacing function: on a
    transition it sets L_best = inf (so the new stage's first loss becomes its best and resets the
    patience), otherwise it sets L_best = L_cur when L_cur < L_best, i.e. exactly on the steps on which
    the patience was reset.  The comparison is strict, so an equal loss counts against the patience, and
    a stage ends on the (tau_max + 1)-th consecutive step without a new best.  A NaN loss never counts as
    an improvement.  Algorithm 2 starts at I_cur = N (the easiest cluster, stage 0 here, with
    n = N - I_cur) and loops while I_cur > 0, so it makes N transitions; its last one (I_cur = 1 -> 0)
    leaves the curriculum for ordinary training over all t.  Stage N-1 already samples every t, so that
    exit changes no draw, but it is paced and recorded like the others (row ``to_stage = N``), after which
    the pacing state is frozen.

    Parameters:
        tau_max: maximum patience tau_max (200; the paper uses 400 for DiT-L/2).
        pacing_signal: ``"raw"`` (default; the paper's batch loss) or ``"ema"``: L_cur is replaced by a
            bias-corrected exponential moving average restarted at every stage,
            m_j = beta m_{j-1} + (1 - beta) L_j,  signal_j = m_j / (1 - beta^j), j = steps in this stage,
            so a new, harder stage does not inherit the easier stage's low losses.
        ema_beta: beta of the ``ema`` signal (0.9).

    Sync-free: the stage, patience, best signal, EMA and transition steps are tensors on the loss's
    device, updated with ``torch.where``; ``sample`` picks the stage's table row with ``index_select``.
    Only ``stage`` and ``transitions()`` (read at log time) copy values to the host.
    Transition rows (:meth:`transitions`), in both numberings:

    * this package's: ``step`` s = the number of updates completed when the stage changed (step s + 1
      is the first one drawn from the new stage), ``from_stage`` n -> ``to_stage`` n + 1 (0-based
      stages; ``to_stage = N`` is the exit);
    * Algorithm 2's: ``iteration`` = s - 1 (its loop iterations counted from 0: the iteration whose
      pacing call changed I_cur), ``from_index`` I_cur = N - n -> ``to_index`` N - n - 1 (the last
      row is I_cur = 1 -> 0).

    A run that completes the curriculum has N rows, as in the paper.
    """

    name = "dtd"

    def __init__(
        self,
        schedule: NoiseSchedule,
        intervals: Intervals,
        *,
        tau_max: int = 200,
        pacing_signal: str = "raw",
        ema_beta: float = 0.9,
    ):
        if isinstance(tau_max, bool) or not isinstance(tau_max, int) or tau_max < 0:
            raise ValueError(f"tau_max must be an integer >= 0, got {tau_max!r}")
        if pacing_signal not in ("raw", "ema"):
            raise ValueError(f"pacing_signal must be 'raw' or 'ema', got {pacing_signal!r}")
        if not 0.0 <= ema_beta < 1.0:
            raise ValueError(f"ema_beta must be in [0, 1), got {ema_beta!r}")
        super().__init__(schedule, intervals, self._cluster_order(intervals))
        self.tau_max = tau_max
        self.pacing_signal = pacing_signal
        self.ema_beta = float(ema_beta)
        self._consts = DeviceTables()
        self._consts.add("stage_ids", torch.arange(self.num_stages))
        self._state = self._initial_state()

    @staticmethod
    def _cluster_order(intervals: Intervals) -> tuple[int, ...]:
        return intervals.order

    def _initial_state(self) -> dict[str, torch.Tensor]:
        return {
            "stage": torch.zeros((), dtype=torch.long),
            "patience": torch.zeros((), dtype=torch.long),
            "best": torch.full((), math.inf, dtype=torch.float64),
            "ema": torch.zeros((), dtype=torch.float64),
            "ema_count": torch.zeros((), dtype=torch.long),
            # transition_steps[n]: the step after which stage n -> n + 1 happened (n = N-1: the exit,
            # Algorithm 2's I_cur = 1 -> 0); -1 = not yet.
            "transition_steps": torch.full((self.num_stages,), -1, dtype=torch.long),
        }

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The state, moved to ``device`` the first time it is used there (a one-off copy)."""
        if not same_device(self._state["stage"].device, device):
            self._state = {k: v.to(device) for k, v in self._state.items()}
        return self._state

    def sample(self, batch, generator, device=None):
        device = as_device(device)
        return self._draw(batch, generator, device, self._on(device)["stage"])

    def observe(self, step, t, loss):
        s = self._on(loss.device)
        current = loss.detach().to(torch.float64).mean()
        if self.pacing_signal == "ema":  # a configuration branch, not a data-dependent one
            count = s["ema_count"] + 1
            ema = self.ema_beta * s["ema"] + (1.0 - self.ema_beta) * current
            signal = ema / (1.0 - torch.pow(self.ema_beta, count.to(torch.float64)))
        else:
            count, ema, signal = s["ema_count"], s["ema"], current
        stage, patience, best = s["stage"], s["patience"], s["best"]
        active = s["transition_steps"][-1] < 0  # pacing is frozen once the curriculum has exited
        improved = signal < best
        advance = active & ~improved & (patience + 1 > self.tau_max)
        reset = improved | advance
        new = {
            "stage": (stage + advance.long()).clamp(max=self.num_stages - 1),  # the exit keeps N-1
            "patience": torch.where(reset, 0, patience + 1),
            "best": torch.where(advance, math.inf, torch.where(improved, signal, best)),
            "ema": torch.where(advance, 0.0, ema),
            "ema_count": torch.where(advance, 0, count),
        }
        for key, value in new.items():
            s[key] = torch.where(active, value, s[key])
        stage_ids = self._consts.get("stage_ids", loss.device)
        s["transition_steps"] = torch.where(advance & (stage_ids == stage), step, s["transition_steps"])

    @property
    def stage(self) -> int:
        return int(self._state["stage"])

    def transitions(self) -> list[dict]:
        steps = self._state["transition_steps"].tolist()
        return [transition_row(s, n, self.num_stages) for n, s in enumerate(steps) if s >= 0]

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self._state.items()}

    def load_state_dict(self, state: dict) -> None:
        expected = self._initial_state()
        if set(state) != set(expected):
            raise ValueError(f"strategy {self.name!r}: state keys {sorted(state)} are not {sorted(expected)}")
        loaded = {}
        for key, ref in expected.items():
            value = torch.as_tensor(state[key])
            if value.shape != ref.shape:
                raise ValueError(
                    f"strategy {self.name!r}: state {key!r} has shape {tuple(value.shape)}, expected "
                    f"{tuple(ref.shape)} (a checkpoint written with another number of clusters, or "
                    "before the curriculum's exit was recorded?)"
                )
            loaded[key] = value.to(ref.dtype).clone()
        device = loaded["stage"].device
        self._state = {k: v.to(device) for k, v in loaded.items()}


class AntiCL(DTD):
    """``anti_cl``: the hard-to-easy ablation of :class:`DTD` — the same cumulative sampling and patience
    pacing with the cluster order reversed (stage 0 draws only the hardest cluster, the lowest-noise C_1
    for the paper's order; clusters are added in order of decreasing difficulty).  Parameters as
    :class:`DTD`."""

    name = "anti_cl"

    @staticmethod
    def _cluster_order(intervals: Intervals) -> tuple[int, ...]:
        return tuple(reversed(intervals.order))


class NaiveCL(_CumulativeCurriculum):
    """``naive_cl``: the easy-to-hard cumulative curriculum of :class:`DTD` with fixed pacing (the paper's
    NaiveCL baseline): every stage lasts ``stage_steps`` optimisation steps,

        stage(k) = min(floor(k / stage_steps), N - 1),   k = optimisation steps completed,

    so steps 1 .. stage_steps draw from stage 0 and ordinary training over all t starts after
    (N - 1) * stage_steps steps.  ``stage_steps`` has no default: the strategy does not know the run's
    length, so choose it in the configuration (e.g. the paper's equal split of the curriculum part of a
    run, iterations * fraction / N).  The step counter arrives through ``before_step`` (and ``observe``);
    transitions are reported like :class:`DTD`'s (``step`` = the last step of the earlier stage; both
    numberings) but without an exit row: stage N-1 is ordinary training and has no end to pace.
    """

    name = "naive_cl"

    def __init__(self, schedule: NoiseSchedule, intervals: Intervals, *, stage_steps: int):
        if isinstance(stage_steps, bool) or not isinstance(stage_steps, int) or stage_steps < 1:
            raise ValueError(f"stage_steps must be an integer >= 1, got {stage_steps!r}")
        super().__init__(schedule, intervals, intervals.order)
        self.stage_steps = stage_steps
        self._step = 0

    def before_step(self, step, optimizer):
        self._step = int(step)

    def observe(self, step, t, loss):
        self._step = int(step)

    @property
    def stage(self) -> int:
        return min(self._step // self.stage_steps, self.num_stages - 1)

    def sample(self, batch, generator, device=None):
        return self._draw(batch, generator, as_device(device), self.stage)

    def transitions(self) -> list[dict]:
        return [
            transition_row(n * self.stage_steps, n - 1, self.num_stages) for n in range(1, self.stage + 1)
        ]

    def state_dict(self) -> dict:
        return {"step": self._step}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"step"}:
            raise ValueError(f"strategy {self.name!r}: state keys {sorted(state)} are not ['step']")
        self._step = int(state["step"])
