"""Statistics over seeds: final-step summaries, paired differences to a baseline, iterations to reach it.

Everything here takes long tables (pandas DataFrames) and returns DataFrames; nothing knows about
configuration files or pipeline paths.

Input schema
------------
*metrics* is one row per evaluated snapshot and metric, with columns ``method`` (str), ``seed`` (int),
``step`` (int, the training iteration of the snapshot), ``metric`` (str: ``class_agreement``, ``fid``,
``kid``, ``is_mean``, ``is_std``, ``precision``, ``recall``, or any other name) and ``value`` (float).  Each
(method, seed, step, metric) must occur at most once.  NaN values (a failed evaluation is not a
measurement) never enter a statistic and ``n`` counts the finite values that did; they still count as
snapshots, so a run's final step is its last snapshot in the table whatever its values.

Confidence intervals
--------------------
A confidence interval is given by its half-width: ``t_{(1+c)/2, n-1} * s / sqrt(n)`` with ``s`` the sample
standard deviation (``ddof=1``) of the ``n`` values and ``c`` the confidence (0.95 by default), i.e.
Student's t interval of a mean over seeds (:mod:`diffusion_curriculum.confidence`, which the floor's
interval shares).  With fewer than two values there is no estimate of the spread and the half-width is
NaN: no interval is invented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..confidence import mean_ci, t_half_width

__all__ = [
    "METRIC_COLUMNS",
    "METRIC_ORDER",
    "METRIC_LABELS",
    "better_direction",
    "metric_label",
    "t_half_width",
    "mean_ci",
    "summarize",
    "first_crossing",
    "reach_steps",
    "iterations_to_reach",
    "LowNoiseContrast",
    "low_noise_contrast",
    "minimum_detectable_difference",
    "seeds_needed",
    "holm",
    "paired_tests",
    "detectable_differences",
    "curve_areas",
    "AREA_SUFFIX",
    "REACH_METRIC",
    "reach_as_metric",
    "Comparison",
    "compare_methods",
    "TESTED_METRICS",
    "SIGNIFICANCE",
]

METRIC_COLUMNS = ("method", "seed", "step", "metric", "value")

# Canonical order of the metrics in tables; unknown metrics follow in order of appearance.
METRIC_ORDER = ("class_agreement", "fid", "kid", "is_mean", "is_std", "precision", "recall")

# reach_as_metric names the steps a run needs to reach the baseline's final FID (fewer is better).
REACH_METRIC = "steps_to_baseline_fid"

# "lower" / "higher" is better; metrics without an entry (is_std: a spread over splits) have no direction.
_DIRECTION = {
    "fid": "lower",
    "kid": "lower",
    "is_mean": "higher",
    "is": "higher",
    "precision": "higher",
    "recall": "higher",
    "class_agreement": "higher",
    REACH_METRIC: "lower",
}

# curve_areas names the mean of a metric over training "<metric>_area"; it is better in the same direction.
AREA_SUFFIX = "_area"

METRIC_LABELS = {
    "fid": "FID",
    "kid": "KID",
    "is_mean": "IS",
    "is": "IS",
    "is_std": "IS std",
    "precision": "precision",
    "recall": "recall",
    "class_agreement": "class agreement",
    REACH_METRIC: "steps to reach baseline's final FID",
}


def better_direction(metric: str) -> str | None:
    """``"lower"`` (FID, KID), ``"higher"`` (IS, precision, recall) or ``None`` when no side is better;
    a curve's mean over training (``fid_area``) is better in its metric's direction."""
    if metric.endswith(AREA_SUFFIX) and metric not in _DIRECTION:
        return _DIRECTION.get(metric.removesuffix(AREA_SUFFIX))
    return _DIRECTION.get(metric)


def metric_label(metric: str) -> str:
    """Display name of a metric (``fid`` -> ``FID``, ``fid_area`` -> ``FID, mean over training``);
    unknown names are returned unchanged."""
    if metric.endswith(AREA_SUFFIX) and metric not in METRIC_LABELS:
        base = metric.removesuffix(AREA_SUFFIX)
        return f"{METRIC_LABELS.get(base, base)}, mean over training"
    return METRIC_LABELS.get(metric, metric)


def _lower_is_better(metric: str, lower_is_better: bool | None) -> bool:
    if lower_is_better is not None:
        return bool(lower_is_better)
    direction = better_direction(metric)
    if direction is None:
        raise ValueError(
            f"metric {metric!r} has no known better direction; pass lower_is_better=True or False "
            f"(known: {', '.join(sorted(_DIRECTION))})"
        )
    return direction == "lower"


def _t_test_power(ncp: float, df: int, alpha: float) -> float:
    critical = sps.t.ppf(1.0 - alpha / 2.0, df)
    power = float(sps.nct.sf(critical, df, ncp) + sps.nct.cdf(-critical, df, ncp))
    # SciPy's noncentral t gives NaN far in its tail, where the power is 1 (or 0) to float precision.
    return power if math.isfinite(power) else float(ncp > critical)


def _scale(std: float, n: int, paired: bool) -> tuple[float, int]:
    # The standard error of the compared difference and the t test's degrees of freedom.
    return (std / math.sqrt(n), n - 1) if paired else (std * math.sqrt(2.0 / n), 2 * (n - 1))


def minimum_detectable_difference(
    std: float, n: int, *, alpha: float = 0.05, power: float = 0.8, paired: bool = True
) -> float:
    """The smallest true difference a two-sided t test at level ``alpha`` detects with probability
    ``power``, with ``n`` seeds per method and seed-to-seed standard deviation ``std``.

    ``paired`` (methods compared seed by seed): ``std`` is that of the per-seed differences, df = n - 1;
    otherwise two independent groups of ``n`` with a common ``std``, df = 2(n - 1).  Exact under
    normality: the power is the noncentral t's tail mass beyond the critical values, solved for the
    noncentrality.  NaN when ``n < 2`` or ``std`` is not finite.
    """
    if not (0.0 < alpha < 1.0 and alpha < power < 1.0):
        raise ValueError(f"need 0 < alpha < power < 1, got alpha {alpha!r}, power {power!r}")
    if n < 2 or not math.isfinite(std):
        return math.nan
    scale, df = _scale(std, n, paired)
    if scale == 0.0:
        return 0.0
    from scipy.optimize import brentq

    high = 1.0
    while _t_test_power(high, df, alpha) < power:
        high *= 2.0
    ncp = brentq(lambda c: _t_test_power(c, df, alpha) - power, 0.0, high, xtol=1e-10)
    return float(ncp * scale)


def seeds_needed(
    std: float,
    difference: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    paired: bool = True,
    max_seeds: int = 1000,
) -> int | None:
    """The fewest seeds per method with which :func:`minimum_detectable_difference` is at most
    ``|difference|``; None when more than ``max_seeds`` would be needed (or nothing is measurable)."""
    if not (math.isfinite(std) and math.isfinite(difference)) or difference == 0.0:
        return None
    for n in range(2, max_seeds + 1):
        if minimum_detectable_difference(std, n, alpha=alpha, power=power, paired=paired) <= abs(difference):
            return n
    return None


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (Holm 1979): sorted ascending, the i-th
    smallest (0-based, of m) becomes ``max_{j <= i} min(1, (m - j) p_(j))``.  Rejecting where the adjusted
    value is below alpha controls the family-wise error rate at alpha under any dependence.  NaN entries
    are not tests: they stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return adjusted
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[finite].tolist()}")
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def _paired_p(diff_mean: float, diff_std: float, n: int) -> float:
    # Two-sided one-sample t test of the per-seed differences against 0.
    if n < 2 or not (math.isfinite(diff_mean) and math.isfinite(diff_std)):
        return math.nan
    if diff_std == 0.0:
        return 1.0 if diff_mean == 0.0 else 0.0
    t = diff_mean / (diff_std / math.sqrt(n))
    return float(2.0 * sps.t.sf(abs(t), n - 1))


TEST_COLUMNS = [
    "method",
    "metric",
    "n_pairs",
    "diff_mean",
    "diff_ci",
    "p_value",
    "p_holm",
    "significant",
    "mdd",
]


def paired_tests(summary: pd.DataFrame, *, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """Each method against the baseline, per metric, from :func:`summarize`'s paired differences.

    ``p_value``: two-sided paired t test over seeds (the per-seed differences against 0); ``p_holm``:
    Holm-adjusted over the methods compared on that metric (one family per metric: a reader asks of
    each metric which methods differ from the baseline); ``significant``: ``p_holm < alpha``; ``mdd``:
    the difference this test would detect with probability ``power`` at level ``alpha``, from the
    method's own paired spread (:func:`minimum_detectable_difference`).  The baseline's rows are left
    out; a method with fewer than two pairs gets NaN and is no test.
    """
    _require_columns(summary, ["method", "metric", "baseline", "n_pairs", "diff_mean", "diff_std"], "summary")
    rows = summary[summary["method"] != summary["baseline"]]
    out = pd.DataFrame(
        {
            "method": rows["method"].to_numpy(),
            "metric": rows["metric"].to_numpy(),
            "n_pairs": rows["n_pairs"].to_numpy(dtype=int),
            "diff_mean": rows["diff_mean"].to_numpy(dtype=float),
            "diff_ci": rows["diff_ci"].to_numpy(dtype=float),
            "p_value": [_paired_p(r.diff_mean, r.diff_std, r.n_pairs) for r in rows.itertuples()],
            "mdd": [
                minimum_detectable_difference(r.diff_std, r.n_pairs, alpha=alpha, power=power)
                if r.n_pairs >= 2
                else math.nan
                for r in rows.itertuples()
            ],
        }
    )
    out["p_holm"] = np.nan
    for _, index in out.groupby("metric", sort=False).groups.items():
        out.loc[index, "p_holm"] = holm(out.loc[index, "p_value"])
    out["significant"] = out["p_holm"] < alpha
    return out[TEST_COLUMNS].reset_index(drop=True)


def detectable_differences(summary: pd.DataFrame, *, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """Per metric, the smallest difference to the baseline this study detects with probability
    ``power`` by a paired t test at level ``alpha``: :func:`minimum_detectable_difference` with the
    seed-to-seed spread of the paired differences pooled over the compared methods (root mean square of
    their ``diff_std``; each has ``n_pairs - 1`` degrees of freedom, so with equal seed counts this is
    the pooled variance) and the most common ``n_pairs``.  With the spread of the baseline itself
    (``std``) next to it: what an unpaired comparison would face.

    Returns:
        Columns ``metric, n_pairs, diff_std, mdd, mdd_relative`` (the mdd as a share of the baseline's
        mean) and ``baseline_mean``.
    """
    _require_columns(summary, ["method", "metric", "baseline", "n_pairs", "diff_std", "mean"], "summary")
    rows = []
    for metric in _metric_order(summary["metric"]):
        of_metric = summary[summary["metric"] == metric]
        compared = of_metric[(of_metric["method"] != of_metric["baseline"]) & (of_metric["n_pairs"] >= 2)]
        base = of_metric[of_metric["method"] == of_metric["baseline"]]
        base_mean = float(base["mean"].iloc[0]) if len(base) else math.nan
        spread = compared["diff_std"].to_numpy(dtype=float)
        spread = spread[np.isfinite(spread)]
        if spread.size == 0:
            n, std, mdd = 0, math.nan, math.nan
        else:
            n = int(compared["n_pairs"].mode().iloc[0])
            std = float(np.sqrt(np.mean(spread**2)))
            mdd = minimum_detectable_difference(std, n, alpha=alpha, power=power)
        relative = mdd / abs(base_mean) if math.isfinite(mdd) and base_mean not in (0.0,) else math.nan
        rows.append(
            {
                "metric": metric,
                "n_pairs": n,
                "diff_std": std,
                "mdd": mdd,
                "baseline_mean": base_mean,
                "mdd_relative": relative,
            }
        )
    return pd.DataFrame(
        rows, columns=["metric", "n_pairs", "diff_std", "mdd", "baseline_mean", "mdd_relative"]
    )


def curve_areas(metrics: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """The area under each run's metric-versus-iterations curve, as the curve's mean over training:
    the trapezoid rule over its snapshots divided by the step range they span.  One number per run
    that rewards reaching a value early as well as the final value (a faster method has a lower FID
    area at equal final FID).  Returned as rows of the metrics table (``metric = <name>_area``, ``step``
    = the run's last snapshot), so :func:`summarize` and :func:`paired_tests` treat it like any metric.
    Runs with fewer than two finite snapshots get no row."""
    frame = _metrics_frame(metrics)
    rows = []
    for name in names:
        of_metric = frame[(frame["metric"] == name) & np.isfinite(frame["value"])]
        for (method, seed), curve in of_metric.groupby(["method", "seed"], sort=False):
            curve = curve.sort_values("step")
            steps, values = curve["step"].to_numpy(float), curve["value"].to_numpy(float)
            if steps.size < 2:
                continue
            area = float(np.sum((values[1:] + values[:-1]) / 2.0 * np.diff(steps)))
            rows.append(
                {
                    "method": method,
                    "seed": int(seed),
                    "step": int(steps[-1]),
                    "metric": name + AREA_SUFFIX,
                    "value": area / float(steps[-1] - steps[0]),
                }
            )
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} table lacks columns {missing}; it has {list(frame.columns)}")


def _metrics_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """Validated copy of a metrics table: typed columns, no duplicate keys (NaN values are kept, so that
    a failed evaluation at the final step does not silently make an earlier snapshot "final")."""
    _require_columns(metrics, METRIC_COLUMNS, "metrics")
    frame = metrics.loc[:, list(METRIC_COLUMNS)].copy()
    frame["method"] = frame["method"].astype(str)
    frame["metric"] = frame["metric"].astype(str)
    frame["seed"] = frame["seed"].astype(int)
    frame["step"] = frame["step"].astype(int)
    frame["value"] = frame["value"].astype(float)
    keys = ["method", "seed", "step", "metric"]
    dup = frame.duplicated(keys, keep=False)
    if dup.any():
        example = frame.loc[dup, keys].drop_duplicates().head(3).to_dict("records")
        raise ValueError(f"metrics table has {int(dup.sum())} rows with a repeated {keys}, e.g. {example}")
    return frame


def _method_order(methods: Iterable[str], baseline: str | None) -> list[str]:
    order = list(dict.fromkeys(methods))
    if baseline in order:
        order.remove(baseline)
        order.insert(0, baseline)
    return order


def _metric_order(metrics: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(metrics))
    return [m for m in METRIC_ORDER if m in present] + [m for m in present if m not in METRIC_ORDER]


def _check_baseline(methods: Sequence[str], baseline: str, what: str = "metrics") -> None:
    if baseline not in methods:
        raise ValueError(
            f"baseline method {baseline!r} is not in the {what} table; methods present: {sorted(methods)}"
        )


# --------------------------------------------------------------------------------------------------
# Final-step summary
# --------------------------------------------------------------------------------------------------


SUMMARY_COLUMNS = [
    "method",
    "metric",
    "step",
    "n",
    "mean",
    "std",
    "ci",
    "better",
    "baseline",
    "n_pairs",
    "diff_mean",
    "diff_std",
    "diff_ci",
]


def summarize(
    metrics: pd.DataFrame,
    baseline: str | None = "vanilla",
    confidence: float = 0.95,
    step: int | None = None,
) -> pd.DataFrame:
    """Mean, spread and confidence interval over seeds of every method x metric, and the paired
    difference to ``baseline``.

    Each method is taken at its *final step* -- the largest ``step`` of that method in the table -- or at
    ``step`` when given (methods without a snapshot at ``step`` are then left out).  Seeds without a row
    at that step do not count (an unfinished run is not mixed in with an earlier snapshot).

    The difference to the baseline is **paired over seeds**: for every seed that has a finite value for
    both the method (at its final step) and the baseline (at the baseline's final step), ``d = method -
    baseline``; ``diff_mean`` is the mean of these ``d``, ``diff_ci`` the half-width of Student's t
    interval of that mean (``n_pairs - 1`` degrees of freedom) and ``n_pairs`` their number.  Seeds
    present on one side only are ignored for the difference (but do count in ``n``/``mean`` of their
    own side).  Pairing removes the seed-to-seed variation both runs share (data order, initial weights
    when the seed fixes them), so the interval of the difference is usually much narrower than the
    intervals of the two means.  The baseline's own rows have ``diff_mean = 0``, ``n_pairs = n`` and
    ``diff_std = diff_ci = NaN`` (a method compared with itself is not a measurement).

    Args:
        metrics: long table, see the module docstring.
        baseline: the method to compare with; ``None`` leaves the ``diff_*`` columns NaN.
        confidence: confidence level of every interval.
        step: evaluate every method at this training step instead of at its final step.

    Returns:
        One row per method x metric (baseline first, then methods in order of appearance; metrics in
        :data:`METRIC_ORDER`) with columns ``method, metric, step, n, mean, std, ci, better, baseline,
        n_pairs, diff_mean, diff_std, diff_ci``.  ``ci`` / ``diff_ci`` are half-widths (NaN when fewer
        than two values); ``better`` is ``"lower"``, ``"higher"`` or ``None``.

    Raises:
        ValueError: a column is missing, a key is repeated, ``baseline`` is not in the table (the message
            names it and the methods present) or has no snapshot at ``step``, or no method has ``step``.
    """
    frame = _metrics_frame(metrics)
    methods = list(dict.fromkeys(frame["method"]))
    if baseline is not None:
        _check_baseline(methods, baseline)
    if step is None:
        final = frame.groupby("method")["step"].transform("max")
        at = frame[frame["step"] == final]
    else:
        at = frame[frame["step"] == int(step)]
        if at.empty:
            steps = sorted(set(frame["step"]))
            raise ValueError(f"no method has a snapshot at step {step}; steps present: {steps}")
        if baseline is not None and baseline not in set(at["method"]):
            raise ValueError(
                f"baseline {baseline!r} has no snapshot at step {step}; its steps: "
                f"{sorted(set(frame.loc[frame.method == baseline, 'step']))}"
            )

    base = at[at["method"] == baseline] if baseline is not None else at.iloc[0:0]
    rows = []
    for method in _method_order(at["method"], baseline):
        of_method = at[at["method"] == method]
        for metric in _metric_order(of_method["metric"]):
            values = of_method[of_method["metric"] == metric].set_index("seed")["value"]
            n, mean, std, half = mean_ci(values, confidence)
            row = {
                "method": method,
                "metric": metric,
                "step": int(of_method["step"].iloc[0]),
                "n": n,
                "mean": mean,
                "std": std,
                "ci": half,
                "better": better_direction(metric),
                "baseline": baseline,
                "n_pairs": 0,
                "diff_mean": math.nan,
                "diff_std": math.nan,
                "diff_ci": math.nan,
            }
            if baseline is not None and method == baseline:
                row.update(n_pairs=n, diff_mean=0.0 if n else math.nan)
            elif baseline is not None:
                ref = base[base["metric"] == metric].set_index("seed")["value"]
                common = values.index.intersection(ref.index)
                diffs = values.loc[common] - ref.loc[common]
                n_pairs, d_mean, d_std, d_half = mean_ci(diffs, confidence)
                row.update(n_pairs=n_pairs, diff_mean=d_mean, diff_std=d_std, diff_ci=d_half)
            rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# --------------------------------------------------------------------------------------------------
# Iterations to reach the baseline
# --------------------------------------------------------------------------------------------------


def first_crossing(
    steps: Sequence[float], values: Sequence[float], target: float, lower_is_better: bool = True
) -> float:
    """First step at which a curve known at snapshot ``steps`` reaches ``target``.

    The curve is taken as piecewise linear between snapshots (NaN values are dropped).  If snapshot ``i``
    is the first with ``value <= target`` (``>=`` when higher is better), the answer is the step where the
    segment from snapshot ``i-1`` to ``i`` crosses ``target``::

        s_{i-1} + (s_i - s_{i-1}) * (v_{i-1} - target) / (v_{i-1} - v_i)

    If the first snapshot already reaches the target its step is returned (nothing is known before it, so
    this is an upper bound).  NaN if the curve never reaches ``target`` or ``target`` is NaN.
    """
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    if s.size == 0 or not math.isfinite(target):
        return math.nan
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    reached = v <= target if lower_is_better else v >= target
    if not reached.any():
        return math.nan
    i = int(np.argmax(reached))
    if i == 0:
        return float(s[0])
    s0, s1, v0, v1 = s[i - 1], s[i], v[i - 1], v[i]
    return float(s0 + (s1 - s0) * (v0 - target) / (v0 - v1))


def _speedup(baseline_step: float, step: float) -> float:
    if not math.isfinite(step):
        return math.nan
    return math.inf if step <= 0 else float(baseline_step) / step


def _metric_rows(metrics: pd.DataFrame, metric: str, baseline: str) -> pd.DataFrame:
    frame = _metrics_frame(metrics)
    _check_baseline(list(dict.fromkeys(frame["method"])), baseline)
    rows = frame[frame["metric"] == metric]
    if rows.empty:
        raise ValueError(
            f"metrics table has no rows for metric {metric!r}; metrics present: "
            f"{sorted(set(frame['metric']))}"
        )
    if not (rows["method"] == baseline).any():
        raise ValueError(f"baseline {baseline!r} has no {metric!r} values")
    return rows


def reach_steps(
    metrics: pd.DataFrame,
    baseline: str = "vanilla",
    metric: str = "fid",
    lower_is_better: bool | None = None,
) -> pd.DataFrame:
    """Per method and seed: the training step at which ``metric`` first reaches the baseline's final value.

    Paired over seeds: the target of seed ``k`` is the baseline's value for seed ``k`` at the baseline's
    final step (its largest step for this metric).  The step is found by :func:`first_crossing`, i.e. by
    linear interpolation between the two snapshots around the first one that reaches the target.  Seeds
    without a baseline value at that step are left out.  The baseline's own rows say when the baseline
    first reached its final value (at the latest, its final step).

    Returns:
        Columns ``method, seed, target, baseline_step, reach_step, speedup`` with ``speedup =
        baseline_step / reach_step`` (NaN when never reached).
    """
    lower = _lower_is_better(metric, lower_is_better)
    rows = _metric_rows(metrics, metric, baseline)
    base = rows[rows["method"] == baseline]
    baseline_step = int(base["step"].max())
    targets = base[base["step"] == baseline_step].set_index("seed")["value"]
    out = []
    for method in _method_order(rows["method"], baseline):
        of_method = rows[rows["method"] == method]
        for seed, curve in of_method.groupby("seed", sort=True):
            target = float(targets.get(seed, math.nan))
            if not math.isfinite(target):
                continue  # no baseline value for this seed: nothing to pair with
            step = first_crossing(curve["step"], curve["value"], target, lower)
            out.append(
                {
                    "method": method,
                    "seed": int(seed),
                    "target": target,
                    "baseline_step": baseline_step,
                    "reach_step": step,
                    "speedup": _speedup(baseline_step, step),
                }
            )
    columns = ["method", "seed", "target", "baseline_step", "reach_step", "speedup"]
    return pd.DataFrame(out, columns=columns)


def iterations_to_reach(
    metrics: pd.DataFrame,
    baseline: str = "vanilla",
    metric: str = "fid",
    confidence: float = 0.95,
    lower_is_better: bool | None = None,
) -> pd.DataFrame:
    """Per method: how many training steps it needs to match the baseline's final ``metric``, over seeds.

    The per-seed steps come from :func:`reach_steps` (paired over seeds, linear interpolation between
    snapshots).  ``step_mean`` / ``step_std`` / ``step_ci`` are taken over the seeds that *did* reach the
    target -- a conditional mean; ``n_reached`` out of ``n_seeds`` says how many did, and all three are NaN
    when none did.  ``speedup = baseline_step / step_mean`` and its interval ``[speedup_low,
    speedup_high]`` is the image of the step interval ``step_mean -/+ step_ci`` under that (monotone)
    map -- so it is asymmetric, and its upper end is ``inf`` when the step interval reaches zero.

    Returns:
        One row per method (baseline first) with columns ``method, metric, baseline_step, n_seeds,
        n_reached, step_mean, step_std, step_ci, speedup, speedup_low, speedup_high``.
    """
    per_seed = reach_steps(metrics, baseline, metric, lower_is_better)
    baseline_step = int(per_seed["baseline_step"].iloc[0]) if len(per_seed) else math.nan
    out = []
    for method in _method_order(per_seed["method"], baseline):
        steps = per_seed.loc[per_seed["method"] == method, "reach_step"]
        n_reached, mean, std, half = mean_ci(steps, confidence)
        low = _speedup(baseline_step, mean + half) if math.isfinite(half) else math.nan
        high = _speedup(baseline_step, mean - half) if math.isfinite(half) else math.nan
        out.append(
            {
                "method": method,
                "metric": metric,
                "baseline_step": baseline_step,
                "n_seeds": int(steps.size),
                "n_reached": n_reached,
                "step_mean": mean,
                "step_std": std,
                "step_ci": half,
                "speedup": _speedup(baseline_step, mean),
                "speedup_low": low,
                "speedup_high": high,
            }
        )
    return pd.DataFrame(out)


def reach_as_metric(per_seed: pd.DataFrame, name: str = REACH_METRIC) -> pd.DataFrame:
    """:func:`reach_steps`' per-seed steps as rows of the metrics table (``metric = name``, ``step`` =
    the baseline's final step), so that :func:`summarize` and :func:`paired_tests` compare them seed by
    seed with the baseline's own: a claim like "20 % fewer iterations" becomes a paired difference in
    steps.  A run that never reached the target has a NaN value and drops out of the statistics."""
    _require_columns(per_seed, ["method", "seed", "baseline_step", "reach_step"], "reach")
    return pd.DataFrame(
        {
            "method": per_seed["method"].astype(str).to_numpy(),
            "seed": per_seed["seed"].astype(int).to_numpy(),
            "step": per_seed["baseline_step"].astype(int).to_numpy(),
            "metric": name,
            "value": per_seed["reach_step"].astype(float).to_numpy(),
        },
        columns=list(METRIC_COLUMNS),
    )


class LowNoiseContrast(NamedTuple):
    """Result of :func:`low_noise_contrast` (values in the unit of the curve)."""

    low_mean: float  # mean over the lowest-noise fraction of the points
    rest_mean: float  # mean over the other points
    difference: float  # low_mean - rest_mean
    stderr: float  # conservative standard error of the difference
    z: float
    p_one_sided: float  # P(difference this large | no excess at low noise)


def low_noise_contrast(
    unit: Sequence[float], values: Sequence[float], stderr: Sequence[float], fraction: float = 0.1
) -> LowNoiseContrast:
    """Is a per-timestep curve higher at low noise?  The mean over the ``fraction`` of the points nearest
    the data end (smallest ``unit``) minus the mean over the rest, with a one-sided z-test.

    The points of a curve estimated with common random numbers share their draws, so their errors are
    correlated by an unknown amount.  The standard error of each block mean is therefore taken as the
    mean of its points' standard errors (the value for perfectly correlated errors, the largest possible),
    and the two blocks' errors are added (again the perfectly correlated case): the test is conservative.
    """
    unit, values, stderr = (np.asarray(v, dtype=np.float64) for v in (unit, values, stderr))
    if not (unit.shape == values.shape == stderr.shape) or unit.ndim != 1:
        raise ValueError(f"unit, values and stderr must be 1-D of one length, got {unit.shape}, "
                         f"{values.shape}, {stderr.shape}")  # fmt: skip
    keep = np.isfinite(unit) & np.isfinite(values) & np.isfinite(stderr)
    if keep.sum() < 2:
        raise ValueError(f"need at least two finite points, got {int(keep.sum())}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    order = np.argsort(unit[keep], kind="stable")
    v, se = values[keep][order], stderr[keep][order]
    cut = min(len(v) - 1, max(1, int(round(fraction * len(v)))))
    low, rest = float(v[:cut].mean()), float(v[cut:].mean())
    error = float(se[:cut].mean() + se[cut:].mean())
    difference = low - rest
    z = difference / error if error > 0 else math.copysign(math.inf, difference) if difference else 0.0
    return LowNoiseContrast(low, rest, difference, error, z, float(sps.norm.sf(z)))


# The metrics each method is tested on against the baseline (Holm over the methods, per metric), fixed
# before any comparison was read: the two sample-quality readings at the final step, KID (unbiased at any
# sample count), the FID and class-agreement curves' means over training, and the steps to reach the
# baseline's final FID.
TESTED_METRICS = ("class_agreement", "fid", "kid", "fid" + AREA_SUFFIX, "class_agreement" + AREA_SUFFIX,
                  REACH_METRIC)  # fmt: skip
SIGNIFICANCE = 0.05


class Comparison(NamedTuple):
    """Result of :func:`compare_methods`."""

    summary: pd.DataFrame  # summarize() of the snapshot metrics and the derived ones
    reach: pd.DataFrame  # iterations_to_reach(), per method
    tests: pd.DataFrame  # paired_tests() of the tested metrics
    detectable: pd.DataFrame  # detectable_differences() of the tested metrics


def compare_methods(
    metrics: pd.DataFrame,
    baseline: str,
    confidence: float = 0.95,
    curve_metrics: Sequence[str] = ("fid", "class_agreement"),
    tested: Sequence[str] = TESTED_METRICS,
    alpha: float = SIGNIFICANCE,
) -> Comparison:
    """The whole comparison of a study: the final-step summary with the curves' means over training
    (:func:`curve_areas`) and the steps to reach the baseline's final FID (:func:`reach_as_metric`)
    added as metrics, the paired tests of the ``tested`` metrics against ``baseline`` and the minimum
    detectable differences.  Without FID values there are no steps to reach."""
    derived = [curve_areas(metrics, curve_metrics)]
    has_fid = (metrics["metric"] == "fid").any()
    reach = (
        iterations_to_reach(metrics, baseline=baseline, confidence=confidence) if has_fid else pd.DataFrame()
    )
    if has_fid:
        derived.append(reach_as_metric(reach_steps(metrics, baseline=baseline)))
    frames = [f for f in (metrics, *derived) if len(f)]
    summary = summarize(pd.concat(frames, ignore_index=True), baseline=baseline, confidence=confidence)
    of_tested = summary[summary["metric"].isin(tested)]
    return Comparison(
        summary,
        reach,
        paired_tests(of_tested, alpha=alpha),
        detectable_differences(of_tested, alpha=alpha),
    )
