"""Denoising-task difficulty: convergence points of per-interval expert models, and the clustering of
timesteps into curriculum clusters.

Paper: "Denoising Task Difficulty-based Curriculum for Training Diffusion Models" (arXiv 2403.10348),
appendix B (experts M_i trained only on the timesteps of interval C_i, and the iteration at which their
loss starts to oscillate) and appendix C (the KL divergence D_KL(p_{t-1} || p_t) across t).

**(A) Convergence.**  Each expert's loss curve is a table with columns ``step`` and ``loss``: one row per
logged step, the mean loss over the steps since the previous row.  Both measures work on training steps
(a row counts for the steps it averages, and smoothing windows are in steps), so they do not depend on
the logging interval.  :func:`oscillation_onset` is the paper's measure (where the smoothed loss stops
falling after step 100); :func:`plateau_step` is the step by which the loss has settled: all but a
tolerance of its fall made, read from a fitted approach to a floor (:func:`fitted_settling_step`, whose
reading noise widens but does not move) or from bands around the smoothed curve's final plateau.
:func:`convergence_table` applies both to all N experts; :func:`convergence_trend` tests the paper's
ordering on the result.

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
from scipy.stats import spearmanr

from .schedules import EDMSchedule, FlowSchedule, NoiseSchedule
from .timesteps.base import BELOW_ONE, Intervals

__all__ = [
    "RULES",
    "ORDERS",
    "CONVERGENCE_COLUMNS",
    "Oscillation",
    "oscillation_onset",
    "plateau_step",
    "fitted_settling_step",
    "convergence_table",
    "ConvergenceTrend",
    "convergence_trend",
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
    "settled",
)


# ----------------------------------------------------------------------------------------------------
# (A) Convergence points of loss curves.

# Default smoothing window, as a fraction of the curve's step range (see :func:`plateau_step`).
DEFAULT_WINDOW_FRACTION = 0.1
# A fall of the smoothed loss smaller than this many standard errors is noise (:func:`oscillation_onset`).
ONSET_MARGIN_SE = 2.0


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


class _StepCurve(NamedTuple):
    """A logged loss curve as a piecewise-constant function of the training step.

    Row j of the log is the mean loss over the steps (bounds[j], bounds[j + 1]]; ``integral[j]`` is the
    loss summed over the steps up to ``bounds[j]``, so the mean over any span (a, b] is
    (I(b) - I(a)) / (b - a) with I linear between bounds (exact, because the loss is constant there).
    """

    bounds: np.ndarray
    integral: np.ndarray

    @classmethod
    def of(cls, steps: np.ndarray, losses: np.ndarray) -> _StepCurve:
        # Training writes the row labelled s after step s, averaging the steps since the previous row
        # (training.train_loop), so row j covers (s_{j-1}, s_j].  The first row covers as many steps as
        # the gap to the second (training's first row, at step log_every, covers steps 1..log_every), but
        # never reaches back past step 0 unless it is labelled 0 or less itself.
        first_width = steps[1] - steps[0] if steps.size > 1 else max(steps[0], 1.0)
        if steps[0] > 0:
            first_width = min(first_width, steps[0])
        bounds = np.concatenate([[steps[0] - first_width], steps])
        integral = np.concatenate([[0.0], np.cumsum(losses * np.diff(bounds))])
        return cls(bounds, integral)

    @property
    def span(self) -> float:
        return float(self.bounds[-1] - self.bounds[0])

    def mean(self, low, high) -> np.ndarray:
        """The mean loss over the steps (low, high], clipped to the curve (low < high after clipping)."""
        low = np.clip(low, self.bounds[0], self.bounds[-1])
        high = np.clip(high, self.bounds[0], self.bounds[-1])
        summed = np.interp(high, self.bounds, self.integral) - np.interp(low, self.bounds, self.integral)
        return summed / (high - low)

    def tail_mean(self, final_fraction: float) -> float:
        """The mean loss over the last ``final_fraction`` of the step range: the final plateau."""
        if not 0 < final_fraction <= 1:
            raise ValueError(f"final_fraction must be in (0, 1], got {final_fraction!r}")
        end = self.bounds[-1]
        return float(self.mean(end - final_fraction * self.span, end))

    def window_steps(self, window: float | None) -> float:
        """The smoothing window in training steps: ``window``, or 10% of the step range for None."""
        if window is None:
            return max(1.0, float(round(DEFAULT_WINDOW_FRACTION * self.span)))
        if not window >= 1:
            raise ValueError(f"window must be >= 1 training step, got {window!r}")
        return float(window)

    def step_noise(self) -> float:
        """A robust estimate of the standard deviation of one step's loss about the trend.

        For rows that average n_{j-1}, n_j, n_{j+1} steps, the second difference
        L_{j+1} - 2 L_j + L_{j-1} is noise of variance sigma^2 (1/n_{j-1} + 4/n_j + 1/n_{j+1}) plus the
        curvature of the trend (a straight trend cancels); the MAD of the scaled differences ignores the
        curved stretches while most rows are noise-dominated, and is 0 for a noiseless flat tail.
        """
        widths = np.diff(self.bounds)
        if widths.size < 3:
            return 0.0
        means = np.diff(self.integral) / widths
        variance_factor = 1 / widths[:-2] + 4 / widths[1:-1] + 1 / widths[2:]
        scaled = np.abs(np.diff(means, 2)) / np.sqrt(variance_factor)
        return 1.4826 * float(np.median(scaled))  # MAD -> standard deviation for Gaussian noise

    def smoothed(self, window: float) -> tuple[np.ndarray, np.ndarray]:
        """Every training step k of the curve and the mean loss over the ``window`` steps centred on it.

        Step k is the span (k-1, k]; its window (k - 1/2 - window/2, k - 1/2 + window/2] (steps
        k - (window-1)/2 .. k + (window-1)/2 for an odd window) shrinks at the ends of the curve.
        """
        steps = np.arange(math.floor(self.bounds[0]) + 1, math.floor(self.bounds[-1]) + 1, dtype=np.float64)
        if steps.size == 0:
            raise ValueError(f"the loss curve spans {self.span:g} steps: less than one training step")
        centre = steps - 0.5
        return steps, self.mean(centre - window / 2, centre + window / 2)


def _ties(values: np.ndarray) -> float:
    # Differences of the cumulative sum carry rounding errors; a flat stretch must still compare equal.
    return 1e-9 * float(np.abs(values).max())


class Oscillation(NamedTuple):
    """Result of :func:`oscillation_onset`: ``onset`` (a training step, NaN when the smoothed loss never
    stopped falling) and ``increases`` (the number of steps after ``start`` at which it rose)."""

    onset: float
    increases: int


def oscillation_onset(steps, losses, start: float = 100, window: float | None = None) -> Oscillation:
    """The paper's convergence point: the step at which the loss starts to oscillate (appendix B).

    The paper (arXiv 2403.10348, appendix B): *"we additionally plotted the iterations of each timestep
    interval when their loss values start to oscillate. We measured this by counting the number of
    times the loss value increased after the step reached 100."*  It plots an *iteration*, so the count
    is read as a counter running along the curve: the loss starts to oscillate where it stops falling
    and goes up and down instead.  Counted between log rows, that point depends on the logging interval
    (a row is a mean over ``log_every`` steps), and on raw mini-batch losses it comes within a few
    steps of ``start``.  Here it is taken on training steps, at the resolution of ``window`` steps:

        m_k    = the mean loss over the ``window`` training steps centred on step k (each log row
                 counting for the steps it averages, as in :func:`plateau_step`),
        margin = 2 standard errors of the difference of two disjoint window means
               = 2 sqrt(2 / window) sigma, sigma = the per-step noise (robust estimate from the rows),
        onset  = min{ k >= start : m_k <= m_j + margin  for every step j in (k, k + window] },

    the first step from ``start`` after which the smoothed loss does not fall measurably within the
    next window: its first local minimum at the window's scale, up to noise.  Wiggles faster than the
    window, or smaller than the noise of a window's mean, do not count as "still falling", so the onset
    is where the fall over one window becomes indistinguishable from the noise (earlier for noisier
    curves: the end of a slow descent cannot be resolved under noise).  On a noiseless curve
    (margin 0) a fall that stops dead at step K is found at K + window/2 if the loss then stays flat
    (the window still holds part of the descent until then), at about K if it rises again as fast as it
    fell.  onset = ``start`` means the loss was already oscillating there; NaN means it is still falling
    at the last step with a full window ahead (``end - window``).

    ``increases`` is the paper's count on the same smoothed curve: the number of training steps
    k >= ``start`` with m_{k+1} > m_k.  ``window``: in training steps; None = 10% of the step range
    (see :func:`plateau_step`).
    """
    steps, losses = _curve_arrays(steps, losses)
    curve = _StepCurve.of(steps, losses)
    width = curve.window_steps(window)
    grid, smooth = curve.smoothed(width)
    ties = _ties(smooth)
    increases = int(((np.diff(smooth) > ties) & (grid[:-1] >= start)).sum())
    ahead = math.ceil(width)
    candidates = grid.size - ahead  # steps with `ahead` steps after them
    if candidates <= 0:
        return Oscillation(onset=math.nan, increases=increases)
    # lowest_from[i] = min(smooth[i : i + ahead]); the look-ahead of step i starts at i + 1.
    lowest_from = pd.Series(smooth[::-1]).rolling(ahead).min().to_numpy()[::-1]
    margin = ONSET_MARGIN_SE * math.sqrt(2 / width) * curve.step_noise()
    ahead_low = lowest_from[1 : candidates + 1]
    turned = (smooth[:candidates] <= ahead_low + margin + ties) & (grid[:candidates] >= start)
    if not turned.any():
        return Oscillation(onset=math.nan, increases=increases)
    return Oscillation(onset=float(grid[int(np.argmax(turned))]), increases=increases)


PLATEAU_BANDS = ("plateau", "decrease", "fit")
# fitted_settling_step: a fall the exponential explains no better than a constant at this level is none.
FIT_SIGNIFICANCE = 0.05
# Fewest log rows after `start` that the fitted step reads (three parameters and their residuals).
FIT_MIN_ROWS = 8


def plateau_step(
    steps,
    losses,
    tolerance: float = 0.01,
    window: float | None = None,
    final_fraction: float = 0.1,
    atol: float = 0.0,
    band: str = "plateau",
    start: float = 0.0,
) -> float:
    """A noise-robust convergence point: the first training step from which the smoothed loss stays
    within a band around its final plateau: ``tolerance`` of the plateau (``band="plateau"``) or of the
    loss's decrease from step ``start`` to the plateau (``band="decrease"``); ``band="fit"`` reads the
    step from a fitted curve instead (:func:`fitted_settling_step`: the band measures read noise as "not
    settled" once a curve's remaining fall is inside its noise, so they are exact only on quiet curves).

        plateau = the mean loss over the last ``final_fraction`` of the step range,
        m_k     = the mean loss over the ``window`` training steps centred on step k,
        width   = tolerance * |plateau|                      (plateau)
                  tolerance * max(m_start - plateau, 0)      (decrease; m_start: m at the first step >= start)
        plateau_step = min{ k : |m_j - plateau| <= width + atol  for all steps j >= k }.

    The decrease band asks when a curve has made all but ``tolerance`` of its fall: for a + b exp(-s/tau)
    that is start + tau ln(1/tolerance), whatever the floor a.  The plateau band asks the same of a
    curve's level, so the lower the floor, the finer the loss must be resolved: a task whose loss ends
    a thousand times lower must settle a thousand times more precisely, and its per-step noise (a share
    of its own loss) rarely allows it.  Comparing tasks whose losses differ by orders of magnitude (the
    noise levels of one diffusion model) needs the decrease band.

    Steps, not log rows: a log row that averages ``log_every`` steps counts for each of those steps
    (the curve is piecewise constant between rows), so every mean above is over training steps and the
    result moves by at most about one logging interval when ``log_every`` changes.  The smoothing is a
    centred moving mean: centred, so it has no lag (an EMA moves every convergence point later by its
    time constant); a mean, because log rows are already means over their steps, so smoothing rows
    and smoothing the raw per-step losses give the same curve up to the rows cut by a window's ends.
    Windows shrink at the ends of the curve.

    ``window`` is in training steps; None = 10% of the step range, the length over which a convergence
    step is worth resolving, and of the plateau estimate itself for the default ``final_fraction``, so
    that the smoothed loss near the end is about as noisy as the plateau it is compared with.  A window
    w moves an exponential decay with time constant tau later by about w^2 / (24 tau).  With per-step
    noise sigma the smoothed loss wanders by about sigma / sqrt(w): a band much narrower than a few of
    those is left now and then however long the run, and the step comes late or not at all.  NaN when
    the smoothed loss enters the band for good only inside the last ``final_fraction`` of the run (the
    stretch that defines the plateau), or never: the curve has not settled within the run.  For a plateau
    at 0 the relative band is empty: pass ``atol``.
    """
    steps, losses = _curve_arrays(steps, losses)
    if not tolerance >= 0 or not atol >= 0:
        raise ValueError(f"tolerance and atol must be >= 0, got {tolerance!r}, {atol!r}")
    if band not in PLATEAU_BANDS:
        raise ValueError(f"band must be one of {PLATEAU_BANDS}, got {band!r}")
    if band == "fit":
        return fitted_settling_step(
            steps, losses, tolerance=tolerance, start=start, final_fraction=final_fraction
        )
    curve = _StepCurve.of(steps, losses)
    plateau = curve.tail_mean(final_fraction)
    grid, smooth = curve.smoothed(curve.window_steps(window))
    if band == "plateau":
        width = tolerance * abs(plateau)
    else:
        first = min(int(np.searchsorted(grid, start)), grid.size - 1)
        width = tolerance * max(float(smooth[first]) - plateau, 0.0)
    outside = np.flatnonzero(np.abs(smooth - plateau) > width + atol)
    if outside.size == 0:
        return float(grid[0])
    first_settled = int(outside[-1]) + 1
    # Settling only inside the tail that defines the plateau is no evidence of a plateau: every curve's
    # last steps lie near their own mean.
    tail_start = grid[-1] - final_fraction * (grid[-1] - grid[0])
    if first_settled >= grid.size or grid[first_settled] > tail_start:
        return math.nan
    return float(grid[first_settled])


class _ExponentialFit(NamedTuple):
    floor: float  # a
    fall: float  # b: the fall from `start` to the floor
    tau: float  # time constant, training steps
    cost: float  # weighted sum of squared log residuals


def _fit_exponential(x: np.ndarray, log_loss: np.ndarray, weights: np.ndarray) -> _ExponentialFit:
    """Weighted least squares of log L = log(a + b exp(-x / tau)), a, b, tau > 0 (log-parametrised), the
    best of several starting time constants."""
    from scipy.optimize import least_squares

    span = float(x[-1] - x[0]) or 1.0
    level = float(np.exp(np.average(log_loss[-max(len(x) // 10, 1) :])))
    first = float(np.exp(log_loss[0]))

    def residuals(theta):
        a, b, tau = np.exp(theta)
        return weights * (log_loss - np.log(a + b * np.exp(-x / tau)))

    # Bounds keep the search in floating-point range: floor and fall within e^30 of the loss's level,
    # tau from a thousandth of the span (a fall inside the first rows) to a hundred spans (no fall seen).
    centre = math.log(max(level, 1e-300))
    lower = [centre - 30, centre - 30, math.log(span / 1000)]
    upper = [centre + 5, centre + 10, math.log(100 * span)]
    best = None
    for tau0 in (span / 100, span / 20, span / 5, span):
        fall0 = min(max(first - level, 1e-3 * level), math.exp(centre + 9))
        theta0 = np.clip(np.log([level, fall0, tau0]), lower, upper)
        fit = least_squares(residuals, theta0, bounds=(lower, upper), method="trf", max_nfev=2000)
        cost = float(np.sum(fit.fun**2))
        if math.isfinite(cost) and (best is None or cost < best.cost):
            a, b, tau = (float(v) for v in np.exp(fit.x))
            best = _ExponentialFit(a, b, tau, cost)
    return best


def fitted_settling_step(
    steps, losses, tolerance: float = 0.01, start: float = 0.0, final_fraction: float = 0.1
) -> float:
    """The step by which the loss has made all but ``tolerance`` of its fall from step ``start``, read
    from the curve's fit rather than from the noisy curve itself.

    The rows after ``start`` are fitted, by least squares on the log of the loss (a diffusion loss's
    noise is a share of its level, so the log makes it even), each row weighted by the steps it averages,
    with an approach to a floor::

        L(s) = a + b exp(-(s - start) / tau),            step = start + tau ln(1 / tolerance).

    Noise moves the fitted tau up and down, not on average later (the band measures, which ask the noisy
    curve itself to stay inside 1% of its fall, read noise as "not settled"), and the step does not move
    with the run's length once the curve has converged.  Two other readings come from tests on the fit:

    * **flat within its noise**: when the exponential explains the rows no better than a constant (an
      F test of the extra sum of squares at :data:`FIT_SIGNIFICANCE`), the loss had already settled by
      ``start``: the step is ``start``;
    * **not settled in the run**: NaN when the fitted step lies inside the last ``final_fraction`` of
      the run or after it (as for the band measures, a curve must be seen settled for a while), or when
      the curve still falls in its second half by more than the fit allows (the residuals decline with
      log-step, one-sided test at :data:`FIT_SIGNIFICANCE`, by more than the share of the fall the
      tolerance leaves): a slower fall that the single exponential misses, so no floor is in sight.

    What noise can hide: a slow tail (a power law's) that falls less over the run's second half than
    its noise resolves looks like a floor, and is read as settled if the fitted step comes early enough.
    A flat curve's F test, like the tail test, errs at its level: a flat curve reads "settled at start"
    about 95% of the time.  Losses must be positive (mean squared errors are); ``tolerance`` in (0, 1).
    """
    from scipy import stats

    steps, losses = _curve_arrays(steps, losses)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1) for the fitted step, got {tolerance!r}")
    if np.any(losses <= 0):
        raise ValueError("the fitted step reads the log of the loss: every loss must be > 0")
    curve = _StepCurve.of(steps, losses)
    widths = np.diff(curve.bounds)
    after = curve.bounds[:-1] >= start  # rows whose steps all come after `start`
    if after.sum() < FIT_MIN_ROWS:
        raise ValueError(
            f"the fitted step needs {FIT_MIN_ROWS} log rows after start = {start:g}, got {int(after.sum())}"
        )
    x, log_loss, weights = steps[after] - start, np.log(losses[after]), np.sqrt(widths[after])
    n = x.size
    constant_cost = float(np.sum((weights * (log_loss - np.average(log_loss, weights=weights**2))) ** 2))
    if constant_cost <= 0:  # exactly flat
        return float(start)
    fit = _fit_exponential(x, log_loss, weights)
    # Extra sum of squares of 2 more parameters (b, tau) over the constant, on n - 3 residual dof.
    f_stat = ((constant_cost - fit.cost) / 2) / (fit.cost / (n - 3)) if fit.cost > 0 else math.inf
    if f_stat <= stats.f.isf(FIT_SIGNIFICANCE, 2, n - 3):
        return float(start)
    settle = float(start + fit.tau * math.log(1 / tolerance))
    if settle > steps[-1] - final_fraction * curve.span:
        return math.nan
    half = x >= x[-1] / 2
    predicted = np.log(fit.floor + fit.fall * np.exp(-x[half] / fit.tau))
    log_step = np.log1p(x[half])
    trend = stats.linregress(log_step, log_loss[half] - predicted)
    # A decline the fit misses matters when it is larger, over the second half, than the share of the
    # fall the tolerance leaves (relative to the floor, in the log's units).
    missed = -trend.slope * float(log_step[-1] - log_step[0])
    if trend.slope < 0 and trend.pvalue / 2 < FIT_SIGNIFICANCE and missed > tolerance * fit.fall / fit.floor:
        return math.nan
    return settle


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
    tolerance: float = 0.01,
    window: float | None = None,
    final_fraction: float = 0.1,
    band: str = "plateau",
) -> pd.DataFrame:
    """Convergence points of the N expert models, one row per interval (appendix B of arXiv 2403.10348).

    ``curves``: expert i's loss curve (columns ``step``, ``loss``) by interval number i = 1..N
    (1 = C_1, the lowest noise), either as a mapping or as one long table with a column ``interval``.
    Every interval of ``intervals`` must have a curve.  ``window`` (training steps) smooths both
    measures.  Columns of the result:

    * ``interval``, ``unit_low``, ``unit_high``  the interval and its cell [unit_low, unit_high) of u,
    * ``increases_after_start``, ``oscillation_onset``  :func:`oscillation_onset` (count and step; NaN
      where the onset is ``start`` itself: censored, the loss was already flat within its noise there),
    * ``plateau_step``  :func:`plateau_step` (``band``: ``fit``, ``decrease`` or ``plateau``, from
      ``start``),
    * ``final_loss``  the plateau level: mean loss over the last ``final_fraction`` of the steps,
    * ``settled``  whether ``plateau_step`` is finite (the loss settled within the run).

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
        osc = oscillation_onset(steps, losses, start=start, window=window)
        plateau = plateau_step(
            steps, losses, tolerance=tolerance, window=window, final_fraction=final_fraction, band=band,
            start=start,
        )  # fmt: skip
        rows.append(
            {
                "interval": i,
                "unit_low": intervals.unit_edges[i - 1],
                "unit_high": intervals.unit_edges[i],
                "increases_after_start": osc.increases,
                # An onset at ``start`` is censored (the loss was flat within its noise from the first
                # step looked at): it orders nothing, so it is not a measurement.
                "oscillation_onset": osc.onset if osc.onset > start else math.nan,
                "plateau_step": plateau,
                "final_loss": _StepCurve.of(steps, losses).tail_mean(final_fraction),
                "settled": math.isfinite(plateau),
            }
        )
    return pd.DataFrame(rows, columns=list(CONVERGENCE_COLUMNS))


class ConvergenceTrend(NamedTuple):
    """Result of :func:`convergence_trend`."""

    intervals: int  # rows of the table
    settled: int  # rows with a finite value of the measure
    rho: float  # Spearman's rho(interval, step) over the settled rows; NaN when no trend is measured
    p: float  # its two-sided p-value
    verdict: str


NOT_CONVERGED = "not converged at this budget"


def convergence_trend(
    table: pd.DataFrame, column: str, min_settled_fraction: float = 0.75
) -> ConvergenceTrend:
    """Does a lower-noise interval converge later (the paper's appendix B)?

    Spearman's rho between the interval number (1 = lowest noise) and ``column`` (a convergence step of
    :func:`convergence_table`) over the intervals where it is finite; the paper's claim predicts
    rho < 0.  When fewer than ``min_settled_fraction`` of the intervals have a finite value the
    verdict is exactly ``"not converged at this budget"`` and rho and p are NaN: a trend over the few
    that settled would compare the fastest experts only.
    """
    for col in ("interval", column):
        if col not in table.columns:
            raise ValueError(f"convergence table: missing column {col!r} (got columns {list(table.columns)})")
    if not 0 <= min_settled_fraction <= 1:
        raise ValueError(f"min_settled_fraction must be in [0, 1], got {min_settled_fraction!r}")
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    total, settled = len(table), int(finite.sum())
    if total == 0 or settled < min_settled_fraction * total:
        return ConvergenceTrend(total, settled, math.nan, math.nan, NOT_CONVERGED)
    if settled < 3:
        return ConvergenceTrend(total, settled, math.nan, math.nan, "too few intervals to measure a trend")
    if np.ptp(values[finite]) == 0:  # Spearman's rho is undefined (and scipy warns)
        return ConvergenceTrend(total, settled, math.nan, math.nan, "no trend (constant values)")
    rho, p = (float(x) for x in spearmanr(table["interval"].to_numpy()[finite], values[finite]))
    if rho < 0 and p < 0.05:
        verdict = "lower-noise intervals converge later, as the paper reports"
    elif rho > 0 and p < 0.05:
        verdict = "lower-noise intervals converge *earlier*, against the paper's finding"
    else:
        verdict = "no significant trend at the 5% level"
    return ConvergenceTrend(total, settled, rho, p, verdict)


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
