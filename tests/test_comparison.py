"""The study's comparison: paired t tests against the baseline, Holm's correction, the curves' means over
training, steps to reach the baseline as a paired metric, and the minimum detectable differences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from diffusion_curriculum import report
from diffusion_curriculum.report import findings as find
from diffusion_curriculum.report import readings as read
from diffusion_curriculum.report import study

STEPS = (200, 400, 600, 800, 1000)


def _study(effects: dict[str, float], seeds: int = 5, noise: float = 0.3, seed: int = 0) -> pd.DataFrame:
    """FID curves 10 + 40 * exp(-step / 250) + shift, one per method x seed, with a seed effect shared
    by every method (so pairing helps) and independent noise; class agreement likewise, decreasing."""
    rng = np.random.default_rng(seed)
    seed_effect = rng.normal(0.0, 2.0, seeds)
    rows = []
    for method, shift in effects.items():
        for s in range(seeds):
            for step in STEPS:
                fid = 10 + 40 * math.exp(-step / 250) + shift + seed_effect[s] + rng.normal(0, noise)
                agreement = 0.95 - 0.5 * math.exp(-step / 250) - shift / 100 + rng.normal(0, 0.002)
                rows += [
                    {"method": method, "seed": s, "step": step, "metric": "fid", "value": fid},
                    {
                        "method": method,
                        "seed": s,
                        "step": step,
                        "metric": "class_agreement",
                        "value": agreement,
                    },
                    {"method": method, "seed": s, "step": step, "metric": "kid", "value": fid / 1000},
                ]
    return pd.DataFrame(rows)


def test_holm_matches_the_step_down_definition():
    adjusted = report.holm([0.01, 0.04, 0.03, 0.005])
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max.
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(report.holm([np.nan, 0.2])[0]) and report.holm([np.nan, 0.2])[1] == pytest.approx(0.2)
    assert (report.holm([0.6, 0.7, 0.9]) <= 1.0).all()
    with pytest.raises(ValueError, match="p-values"):
        report.holm([1.5])


def test_paired_tests_give_scipys_paired_t_and_flag_only_real_differences():
    metrics = _study({"vanilla": 0.0, "better": -3.0, "same": 0.0})
    comparison = report.compare_methods(metrics, "vanilla")
    tests = comparison.tests.set_index(["method", "metric"])
    final = metrics[metrics["step"] == 1000]
    for method in ("better", "same"):
        a = final[(final.method == method) & (final.metric == "fid")].sort_values("seed")["value"]
        b = final[(final.method == "vanilla") & (final.metric == "fid")].sort_values("seed")["value"]
        expected = sps.ttest_rel(a.to_numpy(), b.to_numpy()).pvalue
        assert tests.loc[(method, "fid"), "p_value"] == pytest.approx(expected, rel=1e-9)
    assert bool(tests.loc[("better", "fid"), "significant"])
    assert not bool(tests.loc[("same", "fid"), "significant"])
    # Holm over the two methods: the smaller p is doubled, the larger at least as large as that.
    p = tests.xs("fid", level="metric")["p_value"]
    holm = tests.xs("fid", level="metric")["p_holm"]
    assert holm["better"] == pytest.approx(min(1.0, 2 * p["better"]))
    assert holm["same"] >= holm["better"]
    # Every tested metric is there, the derived ones included, and the baseline is never tested.
    assert set(comparison.tests["metric"]) == set(report.TESTED_METRICS)
    assert "vanilla" not in set(comparison.tests["method"])


def test_curve_areas_are_the_trapezoid_mean_over_the_snapshots():
    metrics = pd.DataFrame(
        [
            {"method": "m", "seed": 0, "step": s, "metric": "fid", "value": v}
            for s, v in [(0, 10.0), (100, 20.0), (300, 0.0)]
        ]
    )
    areas = report.curve_areas(metrics, ["fid"])
    # (10 + 20) / 2 * 100 + (20 + 0) / 2 * 200 = 1500 + 2000, over 300 steps.
    assert areas["value"].item() == pytest.approx(3500 / 300)
    assert areas["metric"].item() == "fid_area" and areas["step"].item() == 300
    assert report.better_direction("fid_area") == "lower"
    assert report.metric_label("class_agreement_area") == "class agreement, mean over training"
    single = metrics[metrics["step"] == 0]
    assert report.curve_areas(single, ["fid"]).empty


def test_a_faster_method_reaches_the_baseline_earlier_paired_by_seed():
    metrics = _study({"vanilla": 0.0, "faster": -4.0}, noise=0.05)
    comparison = report.compare_methods(metrics, "vanilla")
    tests = comparison.tests.set_index(["method", "metric"])
    reach = tests.loc[("faster", report.REACH_METRIC)]
    assert reach["diff_mean"] < -100 and bool(reach["significant"])
    area = tests.loc[("faster", "fid_area")]
    assert area["diff_mean"] == pytest.approx(-4.0, abs=0.2)


def test_detectable_differences_follow_the_paired_spread():
    metrics = _study({"vanilla": 0.0, "a": 0.0, "b": 0.0}, noise=0.5)
    comparison = report.compare_methods(metrics, "vanilla")
    detectable = comparison.detectable.set_index("metric")
    fid = comparison.summary[(comparison.summary.metric == "fid") & (comparison.summary.method != "vanilla")]
    pooled = float(np.sqrt(np.mean(fid["diff_std"] ** 2)))
    assert detectable.loc["fid", "diff_std"] == pytest.approx(pooled)
    assert detectable.loc["fid", "mdd"] == pytest.approx(
        report.stats.minimum_detectable_difference(pooled, 5)
    )
    # The seed effect (sd 2) cancels in the pairs: the detectable FID difference is near the noise's.
    assert detectable.loc["fid", "mdd"] < 2.5


def test_the_documents_carry_the_tests_and_the_detectable_differences():
    metrics = _study({"vanilla": 0.0, "better": -3.0, "same": 0.0})
    comparison = report.compare_methods(metrics, "vanilla")
    floor = {"fid": 5.0, "class_agreement": 0.96, "kid": 0.001}
    intervals = {k: (v * 0.9, v * 1.1) for k, v in floor.items()}
    views = study.comparison_views(comparison, metrics["metric"], floor, intervals, "vanilla", 0.95)
    text = study.summary_markdown(views, baseline="vanilla", confidence=0.95, num_seeds=5, num_floor=1500,
                                  num_floor_sets=5, samples_per_set=1500)  # fmt: skip
    assert "# Paired tests against `vanilla`" in text and "# Minimum detectable differences" in text
    assert "fid_area" not in views.table.columns.str.cat()  # the final-step table shows snapshot metrics
    headline = read.headline_metrics(comparison, floor, intervals)
    assert headline["floor"]["fid_low"] == pytest.approx(4.5) and headline["floor"]["fid_high"] == 5.5
    assert headline["better"]["fid_significant"] is True
    assert headline["same"]["fid_significant"] is False
    assert set(headline["minimum_detectable_difference"]) == set(report.TESTED_METRICS)
    lines = find.comparison_finding(comparison.tests, comparison.detectable, "vanilla")
    fid_line = next(line for line in lines if line.startswith("- FID:"))
    assert "`better` better by" in fid_line and "`same`" in fid_line and "or larger to be found" in fid_line


def test_an_a_a_null_arm_is_reported_as_the_tests_null():
    """A replicate of the baseline (``twin``) is tested like a method, in the Holm family; findings.md
    states its result as what the tests find where no difference exists."""
    metrics = _study({"vanilla": 0.0, "better": -3.0, "twin": 0.0})
    comparison = report.compare_methods(metrics, "vanilla")
    assert set(comparison.tests["method"]) == {"better", "twin"}
    (line,) = find.null_finding(comparison.tests, ["twin"], "vanilla")
    assert line.startswith("- `twin` is `vanilla` again on other random streams")
    assert "none is significant after Holm" in line
    planted = comparison.tests.assign(significant=comparison.tests["method"] == "twin")  # a false positive
    (line,) = find.null_finding(planted, ["twin"], "vanilla")
    assert "6 significant after Holm where no difference exists (false positives: " in line
    assert "FID, p_Holm = " in line


def test_the_floor_separation_reads_the_difference_where_the_intervals_overlap():
    """Overlapping intervals are a stricter test than the difference's own: where they overlap, the
    baseline minus the floor gets Welch's interval; the floor's standard error comes from its interval
    over its sets, and the numbers match scipy's Welch t test on the same spreads."""
    base, sets = np.array([11.0, 12.5, 14.0]), np.array([8.0, 9.0, 10.0, 7.0, 9.5])
    _, mean, std, half = report.mean_ci(base)
    _, f_mean, f_std, f_half = report.mean_ci(sets)
    diff, low, high, df = find.floor_difference(mean, std, 3, f_mean, f_half, 5, 0.95)
    welch = sps.ttest_ind(base, sets, equal_var=False)
    assert diff == pytest.approx(base.mean() - sets.mean()) and df == pytest.approx(welch.df)
    ci = welch.confidence_interval(0.95)
    assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    summary = pd.DataFrame(
        [{"method": "vanilla", "metric": "fid", "mean": mean, "std": std, "ci": half, "n": 3}]
    )
    floor, interval = {"fid": f_mean}, {"fid": (f_mean - f_half, f_mean + f_half)}
    (line,) = find.separation(summary, floor, interval, "vanilla", 0.95, floor_sets=5)
    assert mean - half < f_mean + f_half  # the intervals overlap ...
    assert "the intervals overlap, but the difference +3.8" in line and "excludes 0" in line  # ... yet apart
    (line,) = find.separation(summary.assign(mean=f_mean + 0.5), floor, interval, "vanilla", 0.95, 5)
    assert "**not** separated" in line and "holds 0" in line
