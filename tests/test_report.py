"""Tests of diffusion_curriculum.report: statistics over seeds, tables, figures and reports."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage
from scipy import stats as sps

from diffusion_curriculum import report
from diffusion_curriculum.report import figures

T975_2 = 4.302652729911275  # t_{0.975, 2 dof}


def metric_rows(method, metric, values_by_seed, step=1000):
    return [
        {"method": method, "seed": seed, "step": step, "metric": metric, "value": value}
        for seed, value in values_by_seed.items()
    ]


def curve_rows(method, seed, curve, metric="fid"):
    return [
        {"method": method, "seed": seed, "step": s, "metric": metric, "value": v} for s, v in curve.items()
    ]


# --------------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------------


def test_summarize_mean_and_t_interval_by_hand():
    metrics = pd.DataFrame(
        metric_rows("vanilla", "fid", {0: 1.0, 1: 2.0, 2: 3.0})
        + metric_rows("dtd", "fid", {0: 0.5, 1: 1.0, 2: 2.5})
    )
    out = report.summarize(metrics).set_index("method")
    row = out.loc["vanilla"]
    assert row["n"] == 3 and row["mean"] == pytest.approx(2.0) and row["std"] == pytest.approx(1.0)
    assert pytest.approx(sps.t.ppf(0.975, 2)) == T975_2
    assert row["ci"] == pytest.approx(T975_2 / math.sqrt(3)) and row["ci"] == pytest.approx(2.4841, abs=1e-4)
    assert row["better"] == "lower" and row["step"] == 1000
    # the baseline compared with itself: zero difference, no interval
    assert row["diff_mean"] == 0.0 and math.isnan(row["diff_ci"]) and row["n_pairs"] == 3
    # paired differences -0.5, -1.0, -0.5: mean -2/3, sd 0.2887
    d = np.array([-0.5, -1.0, -0.5])
    dtd = out.loc["dtd"]
    assert dtd["diff_mean"] == pytest.approx(d.mean())
    assert dtd["diff_ci"] == pytest.approx(T975_2 * d.std(ddof=1) / math.sqrt(3))
    # a 90% interval is narrower
    narrow = report.summarize(metrics, confidence=0.90).set_index("method").loc["vanilla", "ci"]
    assert narrow == pytest.approx(sps.t.ppf(0.95, 2) / math.sqrt(3))


def test_summarize_pairs_only_matching_seeds():
    metrics = pd.DataFrame(
        metric_rows("vanilla", "fid", {0: 10.0, 1: 12.0, 2: 11.0, 5: 100.0})
        + metric_rows("dtd", "fid", {0: 9.0, 1: 10.0, 2: 11.0, 7: -50.0})
    )
    dtd = report.summarize(metrics).set_index("method").loc["dtd"]
    assert dtd["n"] == 4 and dtd["mean"] == pytest.approx((9 + 10 + 11 - 50) / 4)  # own side: all seeds
    d = np.array([-1.0, -2.0, 0.0])  # seeds 0, 1, 2 only
    assert dtd["n_pairs"] == 3
    assert dtd["diff_mean"] == pytest.approx(d.mean())
    assert dtd["diff_std"] == pytest.approx(d.std(ddof=1))


def test_summarize_single_seed_has_no_interval():
    metrics = pd.DataFrame(
        metric_rows("vanilla", "fid", {0: 10.0, 1: 12.0}) + metric_rows("dtd", "fid", {1: 9.0})
    )
    out = report.summarize(metrics).set_index("method")
    dtd = out.loc["dtd"]
    assert dtd["n"] == 1 and dtd["mean"] == 9.0
    assert math.isnan(dtd["std"]) and math.isnan(dtd["ci"])
    assert dtd["n_pairs"] == 1 and dtd["diff_mean"] == pytest.approx(-3.0) and math.isnan(dtd["diff_ci"])
    assert not math.isnan(out.loc["vanilla", "ci"])


def test_summarize_missing_baseline_names_it_and_the_methods():
    metrics = pd.DataFrame(metric_rows("dtd", "fid", {0: 1.0}) + metric_rows("speed", "fid", {0: 2.0}))
    with pytest.raises(ValueError, match=r"'vanilla'.*\['dtd', 'speed'\]"):
        report.summarize(metrics)
    assert report.summarize(metrics, baseline=None)["diff_mean"].isna().all()


def test_summarize_takes_each_methods_final_step_and_a_given_step():
    rows = curve_rows("vanilla", 0, {500: 30.0, 1000: 20.0})
    rows += curve_rows("vanilla", 1, {500: 32.0, 1000: 22.0})
    rows += curve_rows("dtd", 0, {500: 25.0, 1000: 15.0})
    rows += curve_rows("dtd", 1, {500: 27.0})  # seed 1 unfinished: no final snapshot
    out = report.summarize(pd.DataFrame(rows)).set_index("method")
    assert out.loc["dtd", "step"] == 1000 and out.loc["dtd", "n"] == 1 and out.loc["dtd", "mean"] == 15.0
    at = report.summarize(pd.DataFrame(rows), step=500).set_index("method")
    assert at.loc["dtd", "n"] == 2 and at.loc["dtd", "mean"] == pytest.approx(26.0)
    assert at.loc["dtd", "diff_mean"] == pytest.approx(-5.0)
    with pytest.raises(ValueError, match="step 123"):
        report.summarize(pd.DataFrame(rows), step=123)


def test_summarize_nan_at_final_step_is_not_replaced_by_an_earlier_snapshot():
    rows = curve_rows("vanilla", 0, {500: 30.0, 1000: float("nan")})
    rows += curve_rows("vanilla", 1, {500: 31.0, 1000: 20.0})
    row = report.summarize(pd.DataFrame(rows)).iloc[0]
    assert row["step"] == 1000 and row["n"] == 1 and row["mean"] == 20.0


def test_summarize_directions_order_and_bad_input():
    rows = []
    for metric, value in [("recall", 0.4), ("is_std", 0.1), ("fid", 10.0), ("precision", 0.6)]:
        rows += metric_rows("vanilla", metric, {0: value, 1: value})
    out = report.summarize(pd.DataFrame(rows))
    assert list(out["metric"]) == ["fid", "is_std", "precision", "recall"]
    better = dict(zip(out["metric"], out["better"], strict=True))
    assert pd.isna(better.pop("is_std"))  # a spread over splits: neither side is better
    assert better == {"fid": "lower", "precision": "higher", "recall": "higher"}
    with pytest.raises(ValueError, match="repeated"):
        report.summarize(pd.DataFrame(rows + rows[:1]))
    with pytest.raises(ValueError, match="lacks columns \\['value'\\]"):
        report.summarize(pd.DataFrame(rows).drop(columns="value"))


# --------------------------------------------------------------------------------------------------
# iterations to reach the baseline
# --------------------------------------------------------------------------------------------------


def test_first_crossing_interpolates_between_snapshots():
    expected = 250 + 250 * 10 / 12  # 458.33: 20 -> 8 between steps 250 and 500 crosses 10 at 10/12
    assert report.first_crossing([250, 500, 750], [20.0, 8.0, 5.0], 10.0) == pytest.approx(expected)
    assert report.first_crossing([500, 250], [8.0, 20.0], 10.0) == pytest.approx(expected)  # unsorted
    assert report.first_crossing([250, 500], [9.0, 5.0], 10.0) == 250.0  # already there at the first snapshot
    assert math.isnan(report.first_crossing([250, 500], [20.0, 11.0], 10.0))
    assert math.isnan(report.first_crossing([250, 500], [20.0, 8.0], float("nan")))
    # higher is better (e.g. IS): 4 -> 8 crosses 7 three quarters of the way
    assert report.first_crossing([0, 100], [4.0, 8.0], 7.0, lower_is_better=False) == pytest.approx(75.0)
    # a NaN snapshot is skipped, not read as reaching the target
    with_nan = report.first_crossing([250, 375, 500], [20.0, float("nan"), 8.0], 10.0)
    assert with_nan == pytest.approx(expected)


def reach_table_input():
    rows = curve_rows("vanilla", 0, {250: 40.0, 500: 20.0, 750: 12.0, 1000: 10.0})
    rows += curve_rows("vanilla", 1, {250: 42.0, 500: 22.0, 750: 14.0, 1000: 12.0})
    rows += curve_rows("dtd", 0, {250: 20.0, 500: 8.0, 750: 7.0, 1000: 6.0})  # reaches 10 at 458.33
    rows += curve_rows("dtd", 1, {250: 20.0, 500: 12.0, 750: 10.0, 1000: 9.0})  # reaches 12 at 500
    rows += curve_rows("anti_cl", 0, {250: 50.0, 500: 30.0, 750: 20.0, 1000: 15.0})  # never
    rows += curve_rows("anti_cl", 1, {250: 50.0, 500: 30.0, 750: 20.0, 1000: 13.0})
    rows += curve_rows("dtd", 9, {250: 1.0})  # no baseline for seed 9: unpaired, ignored
    return pd.DataFrame(rows)


def test_reach_steps_are_paired_per_seed():
    per_seed = report.reach_steps(reach_table_input()).set_index(["method", "seed"])
    assert (("dtd", 9)) not in per_seed.index
    assert per_seed.loc[("dtd", 0), "target"] == 10.0 and per_seed.loc[("dtd", 1), "target"] == 12.0
    assert per_seed.loc[("dtd", 0), "reach_step"] == pytest.approx(250 + 250 * 10 / 12)
    assert per_seed.loc[("dtd", 1), "reach_step"] == pytest.approx(500.0)
    assert per_seed.loc[("dtd", 0), "speedup"] == pytest.approx(1000 / 458.3333, rel=1e-5)
    assert per_seed.loc[("vanilla", 0), "reach_step"] == 1000.0
    assert per_seed.loc[["anti_cl"], "reach_step"].isna().all()


def test_iterations_to_reach_mean_ci_and_speedup():
    out = report.iterations_to_reach(reach_table_input()).set_index("method")
    steps = np.array([250 + 250 * 10 / 12, 500.0])
    dtd = out.loc["dtd"]
    assert dtd["n_seeds"] == 2 and dtd["n_reached"] == 2 and dtd["baseline_step"] == 1000
    assert dtd["step_mean"] == pytest.approx(steps.mean())
    half = sps.t.ppf(0.975, 1) * steps.std(ddof=1) / math.sqrt(2)
    assert dtd["step_ci"] == pytest.approx(half)
    assert dtd["speedup"] == pytest.approx(1000 / steps.mean())
    assert dtd["speedup_low"] == pytest.approx(1000 / (steps.mean() + half))
    assert dtd["speedup_high"] == pytest.approx(1000 / (steps.mean() - half))
    assert dtd["speedup_low"] < dtd["speedup"] < dtd["speedup_high"]
    anti = out.loc["anti_cl"]
    assert anti["n_reached"] == 0 and math.isnan(anti["step_mean"]) and math.isnan(anti["speedup"])
    assert out.loc["vanilla", "speedup"] == pytest.approx(1.0)
    assert list(out.index) == ["vanilla", "dtd", "anti_cl"]


def test_iterations_to_reach_errors_name_the_problem():
    data = reach_table_input()
    with pytest.raises(ValueError, match="metric 'kid'.*fid"):
        report.iterations_to_reach(data, metric="kid")
    with pytest.raises(ValueError, match="lower_is_better"):
        report.iterations_to_reach(data.assign(metric="sharpness"), metric="sharpness")
    with pytest.raises(ValueError, match="'speed'.*anti_cl"):
        report.iterations_to_reach(data, baseline="speed")


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------


def test_format_value_interval_rounds_like_the_rows_beside_it():
    assert report.format_value_interval(5.287, 4.454, 6.12) == "5.29 [4.45, 6.12]"
    assert report.format_value_interval(0.955, 0.9427, 0.9673) == "0.955 [0.943, 0.967]"
    assert report.format_value_interval(-1.254, -1.441, -1.067) == "-1.25 [-1.44, -1.07]"
    # No width (a single set) shows the value alone, never a false interval.
    assert report.format_value_interval(8.123456, 8.123456, 8.123456) == "8.123"
    assert report.format_value_interval(float("nan"), 1.0, 2.0) == "—"


def test_format_mean_ci():
    assert report.format_mean_ci(12.3456, 0.4231) == "12.35 ± 0.42"
    assert report.format_mean_ci(123.4, 12.3) == "123 ± 12"
    assert report.format_mean_ci(0.01234, 0.00211) == "0.0123 ± 0.0021"
    assert report.format_mean_ci(12.3456, 0.4, significant=1) == "12.3 ± 0.4"
    assert report.format_mean_ci(-1.5, 0.25, signed=True) == "-1.50 ± 0.25"
    assert report.format_mean_ci(1.5, 0.25, signed=True) == "+1.50 ± 0.25"
    assert report.format_mean_ci(12.3456, float("nan")) == "12.35 ± n/a"
    assert report.format_mean_ci(float("nan"), 1.0) == "—"
    assert report.format_mean_ci(2.0, 0.5, decimals=3) == "2.000 ± 0.500"


def test_markdown_table():
    df = pd.DataFrame({"method": ["vanilla", "a|b"], "fid": [12.3456, float("nan")], "n": [3, 1]})
    lines = report.markdown_table(df, floatfmt=".2f").splitlines()
    assert len(lines) == 4
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells == ["method", "fid", "n"]
    assert re.fullmatch(r"\| -+ \| -+: \| -+: \|", lines[1])  # text left, numbers right-aligned
    assert "12.35" in lines[2] and "—" in lines[3] and "a\\|b" in lines[3]
    assert len({len(line) for line in lines}) == 1  # padded columns line up
    indexed = report.markdown_table(df.set_index("method"), index=True, floatfmt={"fid": ".1f"})
    assert indexed.splitlines()[0].split("|")[1].strip() == "method" and "12.3 " in indexed


def test_results_table_cells():
    metrics = pd.DataFrame(
        metric_rows("vanilla", "fid", {0: 1.0, 1: 2.0, 2: 3.0})
        + metric_rows("dtd", "fid", {0: 0.5, 1: 1.0, 2: 2.5})
        + metric_rows("vanilla", "is_std", {0: 0.1, 1: 0.2, 2: 0.3})
        + metric_rows("dtd", "is_std", {0: 0.1, 1: 0.2, 2: 0.3})
    )
    table = report.results_table(report.summarize(metrics))
    assert list(table.columns) == ["seeds", "FID ↓", "Δ FID vs vanilla"]  # is_std: no direction, left out
    assert table.loc["vanilla", "FID ↓"] == "2.0 ± 2.5"
    assert table.loc["vanilla", "Δ FID vs vanilla"] == "—"
    assert table.loc["dtd", "Δ FID vs vanilla"].startswith("-0.67 ± ")
    md = report.markdown_table(table, index=True)
    assert "| dtd " in md and "2.0 ± 2.5" in md


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------


def check_png(path, min_size=(300, 200)):
    assert path.is_file() and path.stat().st_size > 1000
    with PILImage.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        img.verify()
        return img.size


def synthetic_metrics(methods=("vanilla", "dtd", "naive_cl"), seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    rows = []
    for k, method in enumerate(methods):
        for seed in seeds:
            for step in (250, 500, 750, 1000):
                fid = 20 + 100 * np.exp(-step / (300 - 40 * k)) + rng.normal(0, 1)
                rows += curve_rows(method, seed, {step: fid})
                rows += curve_rows(method, seed, {step: 0.7 - fid / 500}, metric="precision")
    return pd.DataFrame(rows)


def synthetic_runs(methods=("vanilla", "dtd"), seeds=(0, 1), num_bins=6, nan_method=None):
    rng = np.random.default_rng(1)
    bins, log, moves = [], [], []
    for method in methods:
        for seed in seeds:
            steps = [40, 90, 150] if method != "vanilla" else []
            for k, s in enumerate(steps):
                move = {"method": method, "seed": seed, "step": s + seed, "from_stage": k, "to_stage": k + 1}
                moves.append(move)
            for step in range(20, 201, 20):
                stage = sum(s + seed <= step for s in steps)
                log.append({"method": method, "seed": seed, "step": step, "loss": 0.1, "stage": stage})
                for b in range(num_bins):
                    count = int(rng.integers(1, 50)) if b >= num_bins - 1 - stage or not steps else 0
                    loss = 0.02 + 0.5 * np.exp(-b) if count else np.nan
                    if method == nan_method:
                        loss = np.nan
                    bins.append(
                        {"method": method, "seed": seed, "step": step, "bin": b, "count": count, "loss": loss}
                    )
    return pd.DataFrame(bins), pd.DataFrame(log), pd.DataFrame(moves)


def test_plot_metric_vs_iterations(tmp_path):
    metrics = synthetic_metrics()
    width, height = check_png(report.plot_metric_vs_iterations(metrics, tmp_path / "fid.png", "fid"))
    assert (width, height) == (round(7.5 * figures.DPI), round(4.8 * figures.DPI))
    check_png(report.plot_metric_vs_iterations(metrics, tmp_path / "sub" / "precision.png", "precision"))
    one = metrics[(metrics["method"] == "dtd") & (metrics["seed"] == 0)]  # one method, one seed
    check_png(report.plot_metric_vs_iterations(one, tmp_path / "one.png", "fid"))
    with pytest.raises(ValueError, match="'kid'.*'fid', 'precision'"):
        report.plot_metric_vs_iterations(metrics, tmp_path / "kid.png", "kid")
    assert not (tmp_path / "kid.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fid.png", "one.png", "sub"]  # no temp files left


def test_plot_loss_bins(tmp_path):
    bins, _, _ = synthetic_runs(methods=("vanilla", "dtd", "naive_cl"), nan_method="naive_cl")
    check_png(report.plot_loss_bins(bins, tmp_path / "bins.png"))
    single = bins[(bins["method"] == "dtd") & (bins["seed"] == 0)]
    check_png(report.plot_loss_bins(single, tmp_path / "single.png", log_y=True))
    all_nan = bins[bins["method"] == "naive_cl"]
    check_png(report.plot_loss_bins(all_nan, tmp_path / "nan.png"))


def test_plot_curriculum_timeline(tmp_path):
    _, log, moves = synthetic_runs()
    check_png(report.plot_curriculum_timeline(log, moves, tmp_path / "timeline.png"))
    # no transitions at all (an empty table without columns, or None): stages from the log alone
    check_png(report.plot_curriculum_timeline(log, pd.DataFrame(), tmp_path / "from_log.png"))
    vanilla = log[log["method"] == "vanilla"]
    empty = pd.DataFrame(columns=["method", "seed", "step", "from_stage", "to_stage"])
    check_png(report.plot_curriculum_timeline(vanilla, empty, tmp_path / "flat.png"))
    one_seed = log[(log["method"] == "dtd") & (log["seed"] == 0)]
    check_png(report.plot_curriculum_timeline(one_seed, None, tmp_path / "one.png"))


def test_stage_path_uses_exact_transition_steps():
    log = pd.DataFrame({"step": [50, 100, 150], "stage": [0, 1, 2]})
    moves = pd.DataFrame({"step": [37, 120], "from_stage": [0, 1], "to_stage": [1, 2]})
    steps, stages = figures._stage_path(log, moves)
    assert steps.tolist() == [0, 37, 120, 150] and stages.tolist() == [0, 1, 2, 2]
    held = figures._held(steps, stages, np.array([-1.0, 0, 36, 37, 119, 150, 151]))
    assert held[1:6].tolist() == [0, 0, 1, 1, 2] and np.isnan(held[[0, 6]]).all()


def test_plot_kl_and_convergence(tmp_path):
    t = np.arange(1, 201)
    kl = pd.DataFrame({"t": t, "unit": t / 200, "kl": np.exp(-t / 20), "kl_stderr": 0.1 * np.exp(-t / 20)})
    kl.loc[150, "kl"] = -1e-6  # a noisy non-positive estimate cannot go on a log axis
    check_png(report.plot_kl(kl, tmp_path / "kl.png"))
    check_png(report.plot_kl(kl.drop(columns="kl_stderr"), tmp_path / "kl_unit.png", x="unit"))
    n = np.arange(1, 21)
    conv = pd.DataFrame(
        {
            "interval": n,
            "unit_low": (n - 1) / 20,
            "unit_high": n / 20,
            "oscillation_onset": 2000 - 50.0 * n,
            "plateau_step": 3000 - 80.0 * n,
            "final_loss": 0.1,
        }
    )
    conv.loc[0, "plateau_step"] = np.nan
    check_png(report.plot_convergence(conv, tmp_path / "conv.png"))
    check_png(report.plot_convergence(conv.drop(columns="plateau_step"), tmp_path / "conv1.png"))
    with pytest.raises(ValueError, match="none of the measures"):
        report.plot_convergence(conv[["interval", "final_loss"]], tmp_path / "bad.png")


def test_method_colors_are_fixed_and_stable():
    assert report.method_color("dtd") == report.METHOD_COLORS["dtd"]
    assert report.method_color("my_new_method") == report.method_color("my_new_method")
    assert len(set(report.METHOD_COLORS.values())) == len(report.METHOD_COLORS)
    assert report.method_order(["zeta", "dtd", "vanilla", "alpha"]) == ["vanilla", "dtd", "alpha", "zeta"]


# --------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------


def test_html_report_is_self_contained(tmp_path):
    metrics = synthetic_metrics()
    png = report.plot_metric_vs_iterations(metrics, tmp_path / "fid.png")
    table = report.results_table(report.summarize(metrics))
    sections = [
        ("Results", ["Mean ± 95% CI over **3 seeds**; `Δ` is paired. <script>alert(1)</script>", table]),
        ("Curves", [report.Image(png, caption="FID vs iterations"), "- one\n- two"]),
        ("Raw", [report.Table(pd.DataFrame({"x": [1.23456]}), caption="raw", floatfmt=".2f")]),
    ]
    path = report.write_html_report(tmp_path / "out" / "report.html", "Comparison", sections)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    assert text.count("data:image/png;base64,") == 1
    for target in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text, flags=re.I):
        assert not re.match(r"(https?:)?//", target, flags=re.I), target
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert "&lt;script&gt;" in text  # text items are escaped, not injected
    assert "<strong>3 seeds</strong>" in text and "<code>Δ</code>" in text and "<li>two</li>" in text
    assert table.loc["dtd", "FID ↓"] in text and "1.23" in text and "1.2346" not in text
    assert "<caption>raw</caption>" in text and "<figcaption>FID vs iterations</figcaption>" in text
    # rebuilding gives the same bytes (no timestamps): the workflow sees no spurious change
    again = report.write_html_report(tmp_path / "again.html", "Comparison", sections)
    assert again.read_text(encoding="utf-8") == text


def test_html_report_rejects_what_it_cannot_embed(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        report.write_html_report(tmp_path / "r.html", "t", [("s", [fake])])
    with pytest.raises(TypeError, match="not supported"):
        report.write_html_report(tmp_path / "r.html", "t", [("s", [42])])
    assert not (tmp_path / "r.html").exists()


def test_markdown_report_links_images_relatively(tmp_path):
    metrics = synthetic_metrics(methods=("vanilla",), seeds=(0,))
    png = report.plot_metric_vs_iterations(metrics, tmp_path / "figures" / "fid.png")
    table = pd.DataFrame({"method": ["vanilla"], "fid": [12.345]})
    path = report.write_markdown_report(
        tmp_path / "results.md", "Results", [("Table", [table, report.Image(png, caption="FID")])]
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Results\n") and "## Table" in text
    assert "![FID](figures/fid.png)" in text and "*FID*" in text
    assert "| vanilla | 12.35 |" in text


def test_a_list_right_after_a_paragraph_line_renders_as_a_list():
    from diffusion_curriculum.report.html import markdown_to_html

    text = "Sample quality:\n- FID: **13.4**\n- class agreement 0.95\n  over 3 seeds\n\nNext."
    html = markdown_to_html(text)
    assert html == (
        "<p>Sample quality:</p>\n"
        "<ul><li>FID: <strong>13.4</strong></li><li>class agreement 0.95 over 3 seeds</li></ul>\n"
        "<p>Next.</p>"
    )


def test_the_clusters_choice_reads_as_words():
    from diffusion_curriculum.report.tables import describe_clusters

    assert describe_clusters({"order": "paper", "rule": "uniform"}) == (
        "Equal cells of the unit interval (the paper), ordered from the highest noise (easiest) to the "
        "lowest, as in the paper."
    )
    measured = {"rule": "difficulty", "order": "measured", "signal": "kl", "column": "kl"}
    text = describe_clusters({**measured, "source": "kl.parquet", "kl_estimator": "score", "extra": 1})
    assert "measured by the score KL estimate (column `kl` of `kl.parquet`)" in text
    assert text.endswith("easiest first, extra: 1.") and "{" not in text


def test_provenance_names_the_commit_the_params_hash_and_the_versions(tmp_path):
    import hashlib
    import subprocess

    from diffusion_curriculum.report.provenance import collect_provenance, provenance_markdown

    params = tmp_path / "params.yaml"
    params.write_text("train: {lr: 0.001}\n")
    outside = collect_provenance(params, code_folder=tmp_path)
    assert outside["commit"] is None  # not a git checkout
    assert outside["params_sha256"] == hashlib.sha256(params.read_bytes()).hexdigest()
    assert outside["packages"]["torch"] and outside["packages"]["numpy"]

    for args in (
        ["init", "-q"],
        ["add", "params.yaml"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=tmp_path, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    assert collect_provenance(params, code_folder=tmp_path)["commit"] == head
    params.write_text("train: {lr: 0.002}\n")
    record = collect_provenance(params, code_folder=tmp_path)
    assert record["commit"] == head + "-dirty"
    text = provenance_markdown(record)
    assert f"`{head}-dirty`" in text and "params.yaml" in text and "torch " in text


@pytest.mark.parametrize(("n", "paired"), [(3, True), (5, True), (8, False)])
def test_a_difference_of_the_minimum_detectable_size_is_detected_with_the_stated_power(n, paired):
    """Monte Carlo: t tests on normal data whose true difference is the minimum detectable difference
    reject in 80% of draws (the stated power), and in 5% when there is no difference."""
    from diffusion_curriculum.report.stats import minimum_detectable_difference, seeds_needed

    delta = minimum_detectable_difference(2.0, n, paired=paired)
    rng = np.random.default_rng(n)
    reps = 20_000
    for true, expected in ((delta, 0.8), (0.0, 0.05)):
        if paired:
            diffs = rng.normal(true, 2.0, size=(reps, n))
            p = sps.ttest_1samp(diffs, 0.0, axis=1).pvalue
        else:
            a, b = rng.normal(0.0, 2.0, size=(reps, n)), rng.normal(true, 2.0, size=(reps, n))
            p = sps.ttest_ind(a, b, axis=1).pvalue
        assert abs((p < 0.05).mean() - expected) < 0.012
    assert seeds_needed(2.0, delta, paired=paired) == n
    assert math.isnan(minimum_detectable_difference(2.0, 1))
