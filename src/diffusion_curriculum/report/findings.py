"""The observational study's findings and the sample-quality reading, as sentences computed from the
data: does a metric separate the baseline from real data, do lower-noise intervals converge later,
is the KL between consecutive marginals larger at low noise (against the estimator's null)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..difficulty import NOT_CONVERGED, convergence_trend
from .stats import (
    SIGNIFICANCE,
    Comparison,
    LowNoiseContrast,
    better_direction,
    low_noise_contrast,
    metric_label,
)
from .tables import format_mean_ci, format_value_interval

# Fraction of the timesteps, from the low-noise end, compared with the rest in the KL finding.
LOW_NOISE_FRACTION = 0.1
# Fewest score-estimator pairs inside the first-order range for the low-noise contrast to be computed.
MIN_SCORE_PAIRS = 10


def convergence_finding(convergence: pd.DataFrame) -> list[str]:
    """Does a lower-noise interval converge later (the paper's appendix B)?  Spearman's rho between the
    interval number (1 = lowest noise) and each convergence measure (the claim predicts rho < 0), read
    only when at least three quarters of the experts settled on a plateau: the step at which an expert
    that is still falling stops falling measurably is no convergence point
    (:func:`diffusion_curriculum.difficulty.convergence_trend`)."""
    total, settled = len(convergence), int(convergence["settled"].sum())
    plateau = convergence_trend(convergence, "plateau_step")
    if plateau.verdict == NOT_CONVERGED:
        return [
            f"- {settled} of {total} experts settled on a plateau (made all but `convergence.tolerance` of "
            f"their fall, as `convergence.band` reads it): {NOT_CONVERGED}; no trend of either "
            "measure is read."
        ]
    lines = []
    for column, label in (("oscillation_onset", "oscillation onset"), ("plateau_step", "plateau step")):
        trend = convergence_trend(convergence, column)
        measured = f"{trend.settled} of {trend.intervals} intervals have one"
        if math.isnan(trend.rho):
            lines.append(f"- {label}: {measured}: {trend.verdict}.")
        else:
            lines.append(
                f"- {label}: {measured}; Spearman rho(interval, step) = {trend.rho:+.2f} "
                f"(p = {trend.p:.2g}): {trend.verdict}."
            )
    return lines


def _contrast_sentence(name: str, c: LowNoiseContrast) -> str:
    survives = c.difference > 0 and c.p_one_sided < 0.05
    verdict = "the claim holds here" if survives else "the claim does **not** survive here"
    return (
        f"{name}: mean over the {LOW_NOISE_FRACTION:.0%} lowest-noise pairs {c.low_mean:.4g} nats, over the "
        f"rest {c.rest_mean:.4g} (difference {c.difference:+.3g} ± {c.stderr:.2g}, z = {c.z:.2f}, "
        f"one-sided p = {c.p_one_sided:.2g}): {verdict}."
    )


def kl_finding(kl: pd.DataFrame, score: pd.DataFrame | None) -> list[str]:
    """Is D_KL(p_{t-1} || p_t) larger at small t (the paper's Fig. 2)?  Read against the estimator's null
    (the mixture estimator on data-free Gaussian reference data) and by the score estimator."""
    values = kl["kl"].to_numpy(dtype=float)
    lines = [
        f"- The mixture estimator (eq. 1-2, the paper's): {np.mean(values <= 0):.0%} of its {len(values)} "
        "estimates are ≤ 0, i.e. below its Monte-Carlo error around a KL near zero."
    ]
    if "kl_null" in kl:
        ordered = kl.sort_values("unit")
        cut = max(1, int(round(LOW_NOISE_FRACTION * len(ordered))))
        low = ordered.iloc[:cut]
        share = low["kl_null"].mean() / low["kl"].mean() if low["kl"].mean() > 0 else float("nan")
        lines.append(
            f"- Its null, the same estimator with the same D, L, M and draws on an isotropic Gaussian with "
            f"the data's variance (whose true KL there is {low['kl_null_exact'].mean():.3g} nats), gives "
            f"{low['kl_null'].mean():.4g} nats over the lowest-noise pairs: {share:.0%} of the data's "
            f"{low['kl'].mean():.4g} nats there is the estimator's own term, not the data."
        )
        effect = kl["kl"] - kl["kl_null"]
        error = np.hypot(kl["kl_stderr"], kl["kl_null_stderr"])
        contrast = low_noise_contrast(kl["unit"], effect, error, LOW_NOISE_FRACTION)
        lines.append("- " + _contrast_sentence("Mixture estimate minus its null", contrast))
    else:
        contrast = low_noise_contrast(kl["unit"], kl["kl"], kl["kl_stderr"], LOW_NOISE_FRACTION)
        lines.append("- " + _contrast_sentence("Mixture estimate (no null available)", contrast))
    if score is None or not len(score):
        lines.append("- Score estimator: not run (kl.score.source: none).")
        return lines
    valid = score[score["kl_first_order_ok"].astype(bool) & score["score_consistent"].astype(bool)]
    name = (
        f"Score estimator ({len(valid)} of {len(score)} pairs both inside its first-order range and with a "
        "consistent score, E[g] = 0 within 3 standard errors)"
    )
    if len(valid) < MIN_SCORE_PAIRS:
        lines.append(
            f"- {name}: too few pairs for a test; the expansion in beta_t does not hold where the step is "
            "not small against the noised data's variance in its thinnest directions."
        )
    else:
        contrast = low_noise_contrast(valid["unit"], valid["kl"], valid["kl_stderr"], LOW_NOISE_FRACTION)
        lines.append("- " + _contrast_sentence(name, contrast))
    return lines


def floor_difference(
    mean: float, std: float, n: int, floor: float, floor_half: float, floor_sets: int, confidence: float
) -> tuple[float, float, float, float]:
    """The baseline's mean minus the floor's, with Welch's ``confidence`` interval: ``(difference, low,
    high, df)``.  The baseline's standard error comes from its ``n`` seeds (``std``), the floor's from its
    interval over ``floor_sets`` sets (half-width = t * SE).  NaN where either has no spread."""
    if n < 2 or floor_sets < 2 or not (math.isfinite(std) and math.isfinite(floor_half)):
        return mean - floor, math.nan, math.nan, math.nan
    q = 0.5 + confidence / 2
    se_base = std / math.sqrt(n)
    se_floor = floor_half / float(sps.t.ppf(q, floor_sets - 1))
    variance = se_base**2 + se_floor**2
    df = variance**2 / (se_base**4 / (n - 1) + se_floor**4 / (floor_sets - 1))
    half = float(sps.t.ppf(q, df)) * math.sqrt(variance)
    difference = mean - floor
    return difference, difference - half, difference + half, df


def separation(
    summary: pd.DataFrame,
    floor: dict[str, float],
    floor_interval: dict[str, tuple[float, float]],
    baseline: str,
    confidence: float,
    floor_sets: int = 0,
) -> list[str]:
    """Does each metric tell the baseline's final samples from real data at this sample count?  Its
    interval over seeds against the floor's interval over its real sets (or the floor's value, lacking
    one); where the two overlap, the difference itself with Welch's interval (non-overlapping intervals
    are a stricter test than the difference's)."""
    lines = []
    for metric in ("class_agreement", "fid", "kid"):
        if metric not in floor:
            continue
        rows = summary[(summary["method"] == baseline) & (summary["metric"] == metric)]
        if rows.empty:
            continue
        row = rows.iloc[0]
        mean, half = float(row["mean"]), float(row["ci"])
        label = metric_label(metric)
        low, high = floor_interval.get(metric, (floor[metric], floor[metric]))
        real = f"real data {format_value_interval(floor[metric], low, high)}"
        if not math.isfinite(half):
            lines.append(f"- {label}: {baseline} {mean:.4g} (one seed, no interval), {real}.")
            continue
        if mean + half < low or mean - half > high:
            verdict = "separated from the floor (the intervals do not overlap)"
        else:
            diff, d_low, d_high, df = floor_difference(
                mean,
                float(row["std"]),
                int(row["n"]),
                floor[metric],
                (high - low) / 2,
                floor_sets,
                confidence,
            )
            apart = math.isfinite(d_low) and (d_low > 0 or d_high < 0)
            verdict = (
                f"the intervals overlap, but the difference {diff:+.3g} [{d_low:+.3g}, {d_high:+.3g}] "
                f"(Welch, df {df:.1f}) excludes 0: separated from the floor"
                if apart
                else "**not** separated from the floor at this sample count (the intervals overlap"
                + (
                    f", and the difference {diff:+.3g} [{d_low:+.3g}, {d_high:+.3g}] holds 0)"
                    if math.isfinite(d_low)
                    else ")"
                )
            )
        lines.append(
            f"- {label}: {baseline} {format_mean_ci(mean, half)} ({confidence:.0%} interval over seeds), "
            f"{real} ({confidence:.0%} interval over {floor_sets} disjoint sets of real images): {verdict}."
        )
    return lines


def comparison_finding(
    tests: pd.DataFrame, detectable: pd.DataFrame, baseline: str, alpha: float = 0.05
) -> list[str]:
    """Which methods differ from the baseline, metric by metric: the paired t test over seeds with
    Holm's correction over the methods (:func:`~diffusion_curriculum.report.stats.paired_tests`); where
    none does, the difference this study could have detected, so that "no difference" is read as "none
    larger than this"."""
    mdd = detectable.set_index("metric")["mdd"] if len(detectable) else pd.Series(dtype=float)
    lines = []
    for metric, rows in tests.groupby("metric", sort=False):
        label = metric_label(metric)
        hits = rows[rows["significant"]]
        detectable_text = (
            f"at this power a difference must be about {mdd[metric]:.3g} or larger to be found (80% power)"
            if metric in mdd.index and math.isfinite(mdd[metric])
            else "no detectable difference could be computed"
        )
        if hits.empty:
            lines.append(f"- {label}: no method differs from `{baseline}` (Holm-adjusted p ≥ {alpha:g}); "
                         f"{detectable_text}.")  # fmt: skip
            continue
        lower = better_direction(metric) == "lower"
        parts = []
        for r in hits.itertuples():
            better = (r.diff_mean < 0) == lower
            parts.append(
                f"`{r.method}` {'better' if better else 'worse'} by {abs(r.diff_mean):.3g} ± {r.diff_ci:.2g} "
                f"(p_Holm = {r.p_holm:.2g})"
            )
        rest = sorted(set(rows["method"]) - set(hits["method"]))
        tail = (
            f"; the others ({', '.join(f'`{m}`' for m in rest)}) do not differ, {detectable_text}"
            if rest
            else ""
        )
        lines.append(f"- {label}: " + ", ".join(parts) + tail + ".")
    return lines


def null_finding(tests: pd.DataFrame, null_methods: list[str], baseline: str) -> list[str]:
    """The A/A null: each replicate of the baseline on other random streams, tested against it like any
    method.  No difference exists there, so each significant metric is a false positive of the tests
    (about 5% of the metrics by chance before Holm's correction, fewer after it)."""
    lines = []
    for method in null_methods:
        rows = tests[tests["method"] == method]
        hits = rows[rows["significant"]]
        found = (
            "none is significant after Holm"
            if hits.empty
            else f"{len(hits)} significant after Holm where no difference exists (false positives: "
            + ", ".join(f"{metric_label(r.metric)}, p_Holm = {r.p_holm:.2g}" for r in hits.itertuples())
            + ")"
        )
        smallest = rows["p_value"].min() if len(rows) else math.nan
        lines.append(
            f"- `{method}` is `{baseline}` again on other random streams (an A/A null): of {len(rows)} "
            f"tested metrics, {found}; smallest unadjusted p = {smallest:.2g}."
        )
    return lines


def feature_space_finding(feature_net: dict) -> str:
    """Which feature space FID, KID and precision/recall were computed in (feature_net's record)."""
    if feature_net.get("trained"):
        return (
            f"Feature space of FID/KID/precision/recall: the domain classifier (held-out accuracy "
            f"{feature_net['test_accuracy']:.1%} on {feature_net['num_test']} images), whose class decisions "
            "also give the class agreement."
        )
    return "Feature space of FID/KID/precision/recall: clean-fid's Inception-v3."


def study_findings(
    comparison: Comparison,
    floor: dict[str, float],
    floor_interval: dict[str, tuple[float, float]],
    *,
    convergence: pd.DataFrame,
    kl: pd.DataFrame,
    kl_score: pd.DataFrame | None,
    feature_net: dict,
    baseline: str,
    confidence: float,
    final: int,
    num_floor: int,
    num_floor_sets: int = 0,
    floor_class_matched: bool = False,
    null_methods: list[str] = (),
) -> list[str]:
    """``findings.md``'s lines: sample quality against the floor (whose real sets hold the samples'
    classes with ``floor_class_matched``), the methods against the baseline (and the A/A null arms,
    ``null_methods``, apart), the experts' convergence, the KL curve, and the feature space the metrics
    live in."""
    num_seeds = int(comparison.summary.loc[comparison.summary["method"] == baseline, "n"].max())
    tests = comparison.tests
    methods_tests = tests[~tests["method"].isin(null_methods)] if len(tests) else tests
    null = (
        ["", "The tests where no difference exists:", *null_finding(tests, list(null_methods), baseline)]
        if len(null_methods) and len(tests)
        else []
    )
    return [
        f"Sample quality against real data (`{baseline}`, step {final}, {num_floor} samples per set"
        + ("; each real set holds the classes a sample set requests):" if floor_class_matched else "):"),
        *separation(comparison.summary, floor, floor_interval, baseline, confidence, num_floor_sets),
        "",
        f"The methods against `{baseline}` ({num_seeds} seeds, paired; Holm over the methods):",
        *comparison_finding(methods_tests, comparison.detectable, baseline, alpha=SIGNIFICANCE),
        *null,
        "",
        "Convergence of the per-interval experts (appendix B):",
        *convergence_finding(convergence),
        "",
        "KL divergence between consecutive marginals (appendix C):",
        *kl_finding(kl, kl_score),
        "",
        feature_space_finding(feature_net),
    ]
