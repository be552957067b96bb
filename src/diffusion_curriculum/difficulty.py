"""Denoising-task difficulty: convergence points of per-interval expert models, and the clustering of
timesteps into curriculum clusters.

Paper: "Denoising Task Difficulty-based Curriculum for Training Diffusion Models" (arXiv 2403.10348),
appendix B (experts M_i trained only on the timesteps of interval C_i, and the iteration at which their
loss starts to oscillate) and appendix C (the KL divergence D_KL(p_{t-1} || p_t) across t).

**(A) Convergence.**  Each expert's loss curve is a table with columns ``step`` and ``loss`` (one row per
logged step).  :func:`oscillation_onset` is the paper's measure (the loss increases counted after step
100); :func:`plateau_step` is a noise-robust alternative (the step from which a moving median of the
loss stays within a relative tolerance of its final plateau).  :func:`convergence_table` applies both
to all N experts.

**(B) Clustering.**  :func:`cluster_intervals` turns a rule into :class:`~.timesteps.base.Intervals`
(cells of the schedule's unit interval u, C_1 = lowest noise):

* ``uniform``       N equal cells of u (the paper's intervals),
* ``snr``           equal ranges of log-SNR between the schedule's extreme timesteps,
* ``edm_quantile``  quantiles of EDM's log-normal density of sigma,
* ``difficulty``    equal shares of a measured difficulty (the KL curve, or a convergence table).

:func:`curriculum_document` writes the ``curriculum.json`` document with a record of how the boundaries
were chosen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy.special import ndtri

from .schedules import EDMSchedule, FlowSchedule, NoiseSchedule
from .timesteps.base import BELOW_ONE, Intervals

__all__ = [
    "RULES",
    "ORDERS",
    "CONVERGENCE_COLUMNS",
    "Oscillation",
    "oscillation_onset",
    "plateau_step",
    "convergence_table",
    "cumulative_difficulty",
    "cluster_intervals",
    "curriculum_document",
]

RULES = ("uniform", "snr", "edm_quantile", "difficulty")
ORDERS = ("paper", "measured")
CONVERGENCE_COLUMNS = (
    "interval",
    "unit_low",
    "unit_high",
    "increases_after_start",
    "oscillation_onset",
    "plateau_step",
    "final_loss",
)


# ----------------------------------------------------------------------------------------------------
# (A) Convergence points of loss curves.


def _curve_arrays(steps, losses, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies of a loss curve; ``where`` prefixes error messages (e.g. 'interval 3: ')."""
    steps = np.asarray(steps, dtype=np.float64).reshape(-1)
    losses = np.asarray(losses, dtype=np.float64).reshape(-1)
    if steps.size == 0 or losses.size == 0:
        raise ValueError(f"{where}column 'step'/'loss' is empty: the loss curve has no rows")
    if steps.size != losses.size:
        raise ValueError(f"{where}column 'step' has {steps.size} values but column 'loss' has {losses.size}")
    for name, values in (("step", steps), ("loss", losses)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"{where}column {name!r} has {int(bad.sum())} non-finite value(s) "
                f"(first at row {int(np.argmax(bad))})"
            )
    back = np.diff(steps) <= 0
    if back.any():
        j = int(np.argmax(back))
        raise ValueError(
            f"{where}column 'step' must be strictly increasing, but step {steps[j + 1]:g} follows "
            f"{steps[j]:g} (row {j + 1}); sort the log and drop repeated steps (e.g. from a resumed run)"
        )
    return steps, losses


class Oscillation(NamedTuple):
    """Result of :func:`oscillation_onset`: ``onset`` (a step, NaN when the loss never rose often enough)
    and ``increases`` (the paper's raw count of loss increases after ``start``)."""

    onset: float
    increases: int


def oscillation_onset(steps, losses, start: float = 100, min_increases: int = 1) -> Oscillation:
    """The paper's convergence point: the step at which the loss starts to oscillate (appendix B).

    The paper (arXiv 2403.10348, appendix B): *"we additionally plotted the iterations of each timestep
    interval when their loss values start to oscillate. We measured this by counting the number of
    times the loss value increased after the step reached 100."*  With logged steps s_0 < s_1 < ... and
    losses L_j, an **increase** is a pair of consecutive logged points with

        L_j > L_{j-1}   and   s_{j-1} >= start,

    i.e. both points lie after the step reached ``start`` (strictly greater: a flat stretch is not an
    increase).  ``increases`` is their number (the paper's raw count).  The text plots an *iteration*,
    not the count, so the count has to be read as a counter running along the curve; the most faithful
    reading is that the loss "starts to oscillate" where that counter first ticks, i.e. where the loss
    stops falling monotonically.  Hence

        onset = s_{j*-1},   j* = the j of the ``min_increases``-th increase (default: the first),

    the last logged step before the loss went up: for ``min_increases = 1`` the loss has fallen
    monotonically from ``start`` to ``onset``, so ``onset`` is the minimum the descent reached -- the
    "converged point" of the paper's Fig. A.  A curve that decreases until step 500 and then alternates
    up and down has onset 500.  ``min_increases > 1`` ignores the first few rises (a less noise-prone
    variant; not the paper's).  onset is NaN when fewer than ``min_increases`` increases occur.

    The count is taken on the values as logged: when a log row is already a mean over a logging window
    (as in this project's training logs), that averaging is the only smoothing.  For raw per-iteration
    losses the first rise comes within a few steps of ``start`` (mini-batch noise); use
    :func:`plateau_step` for a noise-robust measure.
    """
    steps, losses = _curve_arrays(steps, losses)
    if int(min_increases) != min_increases or min_increases < 1:
        raise ValueError(f"min_increases must be an integer >= 1, got {min_increases!r}")
    after_start = steps[:-1] >= start
    rises = (losses[1:] > losses[:-1]) & after_start
    count = int(rises.sum())
    if count < min_increases:
        return Oscillation(onset=math.nan, increases=count)
    j_prev = int(np.flatnonzero(rises)[int(min_increases) - 1])  # index of s_{j*-1}
    return Oscillation(onset=float(steps[j_prev]), increases=count)


def _default_window(n: int) -> int:
    # ~5% of the curve: long enough that the median's noise is well below a 1% tolerance for typical
    # curves, short enough that it follows the decay; odd so that the window is centred on a point.
    w = max(1, round(0.05 * n))
    return w if w % 2 else w + 1


def _tail_mask(steps: np.ndarray, final_fraction: float) -> np.ndarray:
    if not 0 < final_fraction <= 1:
        raise ValueError(f"final_fraction must be in (0, 1], got {final_fraction!r}")
    cut = steps[-1] - final_fraction * (steps[-1] - steps[0])
    return steps >= cut  # by step, not by row, so that irregular logging does not shift the plateau


def plateau_step(
    steps,
    losses,
    tolerance: float = 0.01,
    window: int | None = None,
    final_fraction: float = 0.1,
    atol: float = 0.0,
) -> float:
    """A noise-robust convergence point: the first logged step from which the smoothed loss stays within
    ``tolerance`` (relative) of its final plateau.

        plateau = mean of the raw losses over the last ``final_fraction`` of the step range,
        m_j     = centred moving median of the losses over ``window`` logged points,
        plateau_step = min{ s_i : |m_j - plateau| <= tolerance * |plateau| + atol  for all j >= i }.

    Smoothing: a *centred moving median* rather than an EMA.  An EMA is causal and lags the curve by
    about its time constant, which moves every convergence point later by an amount that depends on the
    smoothing, not on the data; a centred median has no lag, returns a monotone curve unchanged (away
    from the ends), and ignores isolated loss spikes that would drag a mean.  ``window`` is in logged
    points (default: ~5% of the curve, odd); windows shrink at the ends of the curve.  The plateau is
    the plain mean of the raw tail (its best estimate when the tail is flat; make ``final_fraction``
    cover only the flat part).  NaN when even the smoothed last point is outside the band (the curve has
    not settled within the run).  For a plateau at 0 the relative band is empty: pass ``atol``.
    """
    steps, losses = _curve_arrays(steps, losses)
    if not tolerance >= 0 or not atol >= 0:
        raise ValueError(f"tolerance and atol must be >= 0, got {tolerance!r}, {atol!r}")
    n = steps.size
    window = _default_window(n) if window is None else int(window)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    plateau = float(losses[_tail_mask(steps, final_fraction)].mean())
    smooth = pd.Series(losses).rolling(window, center=True, min_periods=1).median().to_numpy()
    inside = np.abs(smooth - plateau) <= tolerance * abs(plateau) + atol
    outside = np.flatnonzero(~inside)
    if outside.size == 0:
        return float(steps[0])
    first_settled = int(outside[-1]) + 1
    return float(steps[first_settled]) if first_settled < n else math.nan


def _curves_by_interval(curves) -> dict[int, pd.DataFrame]:
    if isinstance(curves, pd.DataFrame):
        if "interval" not in curves.columns:
            raise ValueError(
                "the long loss table needs a column 'interval' (1..N) beside 'step' and 'loss'; "
                f"got columns {list(curves.columns)}"
            )
        if curves["interval"].isna().any():
            raise ValueError("column 'interval' has missing values")
        return {int(k): g.drop(columns="interval") for k, g in curves.groupby("interval", sort=True)}
    if isinstance(curves, Mapping):
        return {int(k): v for k, v in curves.items()}
    raise TypeError(f"curves must be a mapping interval -> DataFrame or a long DataFrame, got {type(curves)}")


def convergence_table(
    curves: Mapping[int, pd.DataFrame] | pd.DataFrame,
    intervals: Intervals,
    *,
    start: float = 100,
    min_increases: int = 1,
    tolerance: float = 0.01,
    window: int | None = None,
    final_fraction: float = 0.1,
) -> pd.DataFrame:
    """Convergence points of the N expert models, one row per interval (appendix B of arXiv 2403.10348).

    ``curves``: expert i's loss curve (columns ``step``, ``loss``) by interval number i = 1..N
    (1 = C_1, the lowest noise), either as a mapping or as one long table with a column ``interval``.
    Every interval of ``intervals`` must have a curve.  Columns of the result:

    * ``interval``, ``unit_low``, ``unit_high``  the interval and its cell [unit_low, unit_high) of u,
    * ``increases_after_start``, ``oscillation_onset``  :func:`oscillation_onset` (count and step),
    * ``plateau_step``  :func:`plateau_step`,
    * ``final_loss``  the plateau level: mean loss over the last ``final_fraction`` of the steps.

    Bad input (a missing column, an empty curve, non-increasing steps, non-finite values, an interval
    outside 1..N or missing) raises ValueError naming the interval and the column.
    """
    by_interval = _curves_by_interval(curves)
    n = intervals.num
    unknown = sorted(k for k in by_interval if not 1 <= k <= n)
    if unknown:
        raise ValueError(f"interval(s) {unknown} outside 1..{n} (column 'interval'; 1 = C_1, lowest noise)")
    missing = [k for k in range(1, n + 1) if k not in by_interval]
    if missing:
        raise ValueError(f"no loss curve for interval(s) {missing} of 1..{n}")
    rows = []
    for i in range(1, n + 1):
        where = f"interval {i}: "
        frame = by_interval[i]
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{where}expected a DataFrame with columns 'step' and 'loss', got {type(frame)}")
        for col in ("step", "loss"):
            if col not in frame.columns:
                raise ValueError(f"{where}missing column {col!r} (got columns {list(frame.columns)})")
        if len(frame) == 0:
            raise ValueError(f"{where}column 'loss' is empty: the loss curve has no rows")
        steps, losses = _curve_arrays(frame["step"].to_numpy(), frame["loss"].to_numpy(), where)
        osc = oscillation_onset(steps, losses, start=start, min_increases=min_increases)
        rows.append(
            {
                "interval": i,
                "unit_low": intervals.unit_edges[i - 1],
                "unit_high": intervals.unit_edges[i],
                "increases_after_start": osc.increases,
                "oscillation_onset": osc.onset,
                "plateau_step": plateau_step(
                    steps, losses, tolerance=tolerance, window=window, final_fraction=final_fraction
                ),
                "final_loss": float(losses[_tail_mask(steps, final_fraction)].mean()),
            }
        )
    return pd.DataFrame(rows, columns=list(CONVERGENCE_COLUMNS))


# ----------------------------------------------------------------------------------------------------
# (B) Clustering timesteps.


def _finite_column(frame: pd.DataFrame, col: str) -> np.ndarray:
    if col not in frame.columns:
        raise ValueError(f"difficulty signal: missing column {col!r} (got columns {list(frame.columns)})")
    values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"difficulty signal: column {col!r} has {int(bad.sum())} NaN/non-finite value(s) "
            f"(first at row {int(np.argmax(bad))}); drop or fill them (e.g. a curve that never settled, "
            "or a KL that overflowed near t = 0) before clustering"
        )
    return values


def cumulative_difficulty(
    difficulty: pd.DataFrame, column: str | None = None, density_floor: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """The normalised cumulative difficulty D(u) over [0, 1] as knots (u_k, D_k), D(0) = 0, D(1) = 1,
    linear between knots.

    Two kinds of signal:

    * a **curve** with columns ``unit`` and ``column`` (default ``kl``): samples of the difficulty
      density over u.  For the KL curve of appendix C, D_KL(p_{t-1} || p_t) is the difficulty of one
      step; with every row measured over the same step width du it is proportional to the density
      (KL per unit time), and the constant cancels.  (Divide by du beforehand if rows use different
      steps.)  The density is linear between samples and constant beyond the first and last; D at the
      samples is its exact (trapezoid) integral.
    * a **convergence table** with columns ``unit_low``, ``unit_high`` and ``column`` (default
      ``plateau_step``): the measure is the difficulty of the whole interval, so the density is
      piecewise constant, measure / width, and D is exactly piecewise linear.  The cells must tile [0, 1].

    Guards: negative densities (Monte-Carlo noise of a KL estimate near 0) are clipped to 0, and then
    ``density_floor`` times the mean density is added everywhere, so that D is strictly increasing:
    its inverse is unique and no cluster can shrink to zero width where the signal is 0.  A cluster of
    width w then holds floor mass ``density_floor * w`` of a total 1 + ``density_floor``, so its share
    of the raw signal moves by at most about N * ``density_floor`` * w relative to 1/N (0.2% for the
    default 1e-4, N = 20 and the widest possible cluster).
    NaN or infinite values raise ValueError naming the column.
    """
    if not isinstance(difficulty, pd.DataFrame):
        raise TypeError(f"difficulty signal must be a DataFrame, got {type(difficulty)}")
    if not density_floor >= 0:
        raise ValueError(f"density_floor must be >= 0, got {density_floor!r}")
    if len(difficulty) == 0:
        raise ValueError("difficulty signal: the table has no rows")
    cols = set(difficulty.columns)
    if "unit" in cols:
        column = column or "kl"
        unit = _finite_column(difficulty, "unit")
        dens = _finite_column(difficulty, column)
        if (unit < 0).any() or (unit > 1).any():
            raise ValueError("difficulty signal: column 'unit' must lie in [0, 1]")
        idx = np.argsort(unit, kind="stable")
        unit, dens = unit[idx], np.clip(dens[idx], 0.0, None)
        if (np.diff(unit) == 0).any():
            raise ValueError("difficulty signal: column 'unit' has repeated values")
        # Constant extrapolation to the ends of the unit interval.
        knots = np.concatenate([[0.0], unit, [1.0]])
        dens = np.concatenate([[dens[0]], dens, [dens[-1]]])
        keep = np.concatenate([[True], np.diff(knots) > 0])
        knots, dens = knots[keep], dens[keep]
        mass = 0.5 * (dens[1:] + dens[:-1]) * np.diff(knots)
    elif {"unit_low", "unit_high"} <= cols:
        column = column or "plateau_step"
        low = _finite_column(difficulty, "unit_low")
        high = _finite_column(difficulty, "unit_high")
        measure = _finite_column(difficulty, column)
        idx = np.argsort(low, kind="stable")
        low, high, measure = low[idx], high[idx], np.clip(measure[idx], 0.0, None)
        gaps = np.abs(low[1:] - high[:-1]) > 1e-9
        if abs(low[0]) > 1e-9 or abs(high[-1] - 1.0) > 1e-9 or gaps.any() or (high <= low).any():
            raise ValueError(
                "difficulty signal: the cells [unit_low, unit_high) must tile [0, 1] without gaps or overlaps"
            )
        knots = np.concatenate([[0.0], high[:-1], [1.0]])
        mass = measure  # density measure / width integrated over its cell
    else:
        raise ValueError(
            "difficulty signal: expected a curve with columns 'unit' and 'kl' (or `column`), or a "
            f"convergence table with columns 'unit_low', 'unit_high' and a measure; got {sorted(cols)}"
        )
    total = float(mass.sum())  # = the mean density, since the knots span a unit length
    if not total > 0:
        raise ValueError(f"difficulty signal: column {column!r} has no positive difficulty to share out")
    mass = mass + density_floor * total * np.diff(knots)
    cum = np.concatenate([[0.0], np.cumsum(mass)])
    cum /= cum[-1]
    return knots, cum


def _extreme_times(schedule: NoiseSchedule) -> torch.Tensor:
    """The lowest- and highest-noise timesteps the schedule trains or samples on (finite SNR)."""
    if schedule.discrete:
        return torch.tensor([0, schedule.num_timesteps - 1])
    if isinstance(schedule, EDMSchedule):
        return schedule.t_from_edm_sigma(
            torch.tensor([schedule.sigma_min, schedule.sigma_max], dtype=torch.float64)
        )
    if isinstance(schedule, FlowSchedule):
        # t = 1 is pure noise (SNR 0, log-SNR -inf); 1 - t_min mirrors t_min, so log-SNR spans +-L.
        return torch.tensor([schedule.t_min, 1.0 - schedule.t_min], dtype=torch.float64)
    return schedule.from_unit(torch.tensor([0.0, BELOW_ONE], dtype=torch.float64))


def _units_of(schedule: NoiseSchedule, t: torch.Tensor) -> np.ndarray:
    return schedule.to_unit(t).to(torch.float64).cpu().numpy()


def _finalize_edges(rule: str, inner: np.ndarray, num: int, allow_merge: bool) -> tuple[float, ...]:
    """0, the clamped inner edges, 1; coincident edges merged (error unless ``allow_merge``)."""
    edges = np.concatenate([[0.0], np.clip(np.asarray(inner, dtype=np.float64), 0.0, 1.0), [1.0]])
    if (np.diff(edges) < 0).any():
        raise ValueError(f"rule {rule!r}: boundaries are not monotone in u: {edges.tolist()}")
    empty = np.flatnonzero(np.diff(edges) == 0)
    if empty.size:
        if not allow_merge:
            where = ", ".join(f"C_{k + 1} at u={edges[k]:.6g}" for k in empty[:5])
            raise ValueError(
                f"rule {rule!r}: only {num - empty.size} distinct cells remain of {num} clusters: "
                f"{empty.size} cell(s) have zero width ({where}{', ...' if empty.size > 5 else ''}) because "
                "two boundaries fall on the same timestep or beyond the schedule's range; use fewer "
                "clusters, or allow_merge=True to merge them"
            )
        edges = np.delete(edges, empty + 1)
        edges[-1] = 1.0
    return tuple(float(e) for e in edges)


def _measured_order(edges: tuple[float, ...], knots: np.ndarray, cum: np.ndarray) -> tuple[int, ...]:
    e = np.asarray(edges)
    density = np.diff(np.interp(e, knots, cum)) / np.diff(e)
    # Round so that float noise in equal densities does not decide the order; ties go highest noise first.
    key = np.round(density / density.max(), 9)
    idx = np.arange(len(density))
    return tuple(int(k) for k in np.lexsort((-idx, key)))


def cluster_intervals(
    rule: str,
    num_clusters: int,
    schedule: NoiseSchedule,
    difficulty: pd.DataFrame | None = None,
    *,
    column: str | None = None,
    order: str = "paper",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    log_snr_range: tuple[float, float] | None = None,
    density_floor: float = 1e-4,
    allow_merge: bool = False,
) -> Intervals:
    """Cluster the timesteps into N curriculum clusters: cells 0 = u_0 < u_1 < ... < u_N = 1 of the
    schedule's unit interval (u = schedule.to_unit(t); C_1 = [u_0, u_1) is the lowest noise).

    Rules (``Intervals.rule`` is set to the rule's name):

    * ``uniform``: u_i = i / N, the paper's intervals (uniform in t for VP and flow, log-normal
      quantiles of sigma for EDM; equals ``Intervals.uniform(N)``).
    * ``snr``: equal ranges of **log**-SNR, lambda_i = lambda_max - (i / N) (lambda_max - lambda_min),
      u_i = to_unit(t_from_snr(exp(lambda_i))).  SNR spans many orders of magnitude (about 1e4 to 4e-5
      for VP linear), so equal ranges of SNR itself would put all but one cluster at the lowest noise;
      log space is the only scale on which "equal SNR ranges" is meaningful.  lambda_max, lambda_min
      are the log-SNR of the schedule's extreme timesteps: t = 0 and T - 1 (VP), sigma_min and
      sigma_max (EDM), t_min and 1 - t_min (flow, whose t = 1 has SNR 0); ``log_snr_range`` =
      (lambda_min, lambda_max) overrides them.  On VP cosine the last step's beta is clipped at 0.999,
      which puts its log-SNR ~6.9 below its neighbour's and stretches the range: with many clusters
      the lowest levels then share a timestep (see below; or pass ``log_snr_range``).
    * ``edm_quantile``: sigma_i = exp(P_mean + P_std Phi^-1(i / N)) (EDM's log-normal training density,
      ``p_mean``, ``p_std``), u_i = to_unit(t_from_edm_sigma(sigma_i)), clamped to [0, 1].  On the EDM
      schedule with the same P_mean, P_std this is ``uniform``.
    * ``difficulty``: equal shares of measured difficulty, u_i = D^-1(i / N) with D the cumulative
      difficulty of :func:`cumulative_difficulty` (the KL curve of appendix C, or a convergence table
      and its ``column``).  Clusters are narrow where difficulty is dense.  On discrete schedules the
      edges are rounded to the timestep grid k / T so that every cluster holds whole timesteps.

    Coincident edges (two quantiles or log-SNR levels landing on the same discrete timestep, or clamped
    at an end of the schedule's range) would leave an empty cluster: that raises ValueError naming the
    empty clusters, unless ``allow_merge=True``, which drops the empty cells and returns fewer clusters.

    ``order`` (easy to hard, 0-based cluster indices):

    * ``paper``: highest noise first, [N-1, ..., 0], for every rule (for ``difficulty`` the equal-share
      boundaries already encode the difficulty; the order stays the paper's).
    * ``measured`` (needs ``difficulty``; any rule): clusters sorted by their mean difficulty *density*
      (difficulty per unit of u), lowest first.  Density rather than total: under the ``difficulty``
      rule every cluster holds the same total by construction, so totals cannot rank them, while the
      density says how much difficulty a unit of training time in the cluster meets.  Ties go highest
      noise first.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid rules: {', '.join(RULES)}")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid orders: {', '.join(ORDERS)}")
    if isinstance(num_clusters, bool) or int(num_clusters) != num_clusters or num_clusters < 1:
        raise ValueError(f"num_clusters must be an integer >= 1, got {num_clusters!r}")
    num = int(num_clusters)
    needs_signal = rule == "difficulty" or order == "measured"
    if difficulty is None and needs_signal:
        what = "rule 'difficulty'" if rule == "difficulty" else "order 'measured'"
        raise ValueError(
            f"{what} needs a difficulty signal: a KL curve (columns 'unit', 'kl') or a convergence "
            "table (columns 'unit_low', 'unit_high' and a measure)"
        )
    # The signal is read only where it is used, so a rule without one ignores what it was given.
    cdf = cumulative_difficulty(difficulty, column, density_floor) if needs_signal else None
    levels = np.arange(1, num) / num

    if rule == "uniform":
        edges = Intervals.uniform(num).unit_edges
    elif rule == "snr":
        if log_snr_range is None:
            lam = schedule.log_snr(_extreme_times(schedule)).to(torch.float64)
            lam_min, lam_max = float(lam.min()), float(lam.max())
        else:
            lam_min, lam_max = (float(v) for v in log_snr_range)
        if not (math.isfinite(lam_min) and math.isfinite(lam_max) and lam_max > lam_min):
            raise ValueError(f"rule 'snr': need a finite log-SNR range, got ({lam_min}, {lam_max})")
        lam_inner = torch.tensor(lam_max - levels * (lam_max - lam_min), dtype=torch.float64)
        inner = _units_of(schedule, schedule.t_from_snr(lam_inner.exp()))
        edges = _finalize_edges(rule, inner, num, allow_merge)
    elif rule == "edm_quantile":
        if not p_std > 0:
            raise ValueError(f"p_std must be > 0, got {p_std!r}")
        sigma = torch.tensor(np.exp(p_mean + p_std * ndtri(levels)), dtype=torch.float64)
        inner = _units_of(schedule, schedule.t_from_edm_sigma(sigma))
        edges = _finalize_edges(rule, inner, num, allow_merge)
    else:  # difficulty
        knots, cum = cdf
        inner = np.interp(levels, cum, knots)
        if schedule.discrete:
            T = schedule.num_timesteps
            inner = np.round(inner * T) / T
        edges = _finalize_edges(rule, inner, num, allow_merge)

    paper = tuple(range(len(edges) - 2, -1, -1))  # highest noise first
    ordering = _measured_order(edges, *cdf) if order == "measured" else paper
    return Intervals(unit_edges=tuple(edges), order=ordering, rule=rule)


def _jsonable(value):
    """Plain-Python copy of ``value`` (numpy scalars and arrays, tuples) for json."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def curriculum_document(intervals: Intervals, schedule: NoiseSchedule | None, how: Mapping) -> dict:
    """The ``curriculum.json`` document: ``intervals.to_json(schedule, chosen_by=...)``.

    ``chosen_by`` records how the boundaries were chosen: ``how`` (e.g. ``{"signal": "kl.parquet",
    "column": "kl", "density_floor": 1e-4, "order": "paper"}``) with ``rule`` set to the intervals'
    rule (a different ``rule`` in ``how`` is an error).  The document is plain JSON and reads back with
    ``Intervals.from_json``.
    """
    chosen_by = _jsonable(dict(how))
    if chosen_by.setdefault("rule", intervals.rule) != intervals.rule:
        raise ValueError(
            f"how['rule'] is {chosen_by['rule']!r} but the intervals' rule is {intervals.rule!r}"
        )
    try:
        json.dumps(chosen_by, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"how must be JSON-serialisable without NaN: {err}") from None
    return intervals.to_json(schedule, chosen_by=chosen_by)
