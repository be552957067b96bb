"""Stage aggregate: the comparison table, the figures and one offline report of the whole study.

Reads every run's metrics (one JSON per method x seed x snapshot step), training logs, the observational
study's outputs (KL curve, convergence table, stitched experts) and the curriculum, and writes into
``--out-dir``:

* ``summary.md`` and ``summary.parquet``: every method x metric at the final step, mean ± CI over seeds
  and the paired difference to ``report.baseline``; iterations to reach the baseline's final FID;
* ``metrics.json``: the headline numbers as a DVC metric (``dvc metrics diff`` compares them);
* ``fid_vs_iterations.png`` (FID and class agreement, with the real-data floor), ``samples.png`` (a
  grid per method beside real images), ``loss_bins.png``, ``curriculum_timeline.png``, ``kl.png`` (both
  estimators and the mixture estimator's null), ``convergence.png``;
* ``findings.md``: what the observational study found here, in sentences computed from the data;
* ``report.html``: all of it in one self-contained file (no network needed to view it) and
  ``report.md``, the same with the figures linked.

It reads ``study`` (which runs), ``train.snapshots``, ``experts`` (which stitched runs) and ``report``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from diffusion_curriculum import report
from diffusion_curriculum.difficulty import NOT_CONVERGED, convergence_trend
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_npz,
    read_parquet_frame,
)

from . import _cli, params

METRICS = ("class_agreement", "fid", "kid", "is_mean", "is_std", "precision", "recall")
# The metrics drawn against training iterations (those a run lacks are left out).
CURVE_METRICS = ("fid", "class_agreement")
FLOOR_NAME = "real data (floor)"
# Fraction of the timesteps, from the low-noise end, compared with the rest in the KL finding.
LOW_NOISE_FRACTION = 0.1
# Fewest score-estimator pairs inside the first-order range for the low-noise contrast to be computed.
MIN_SCORE_PAIRS = 10


def _read_json(path: Path, writer: str) -> dict:
    return read_json(path, hint=f"written by {writer}")


def _read_parquet(path: Path, writer: str) -> pd.DataFrame:
    return read_parquet_frame(path, hint=f"written by {writer}")


def collect_metrics(metrics_dir: Path, methods, seeds, steps) -> pd.DataFrame:
    rows = []
    for method in methods:
        for seed in seeds:
            for step in steps:
                record = _read_json(metrics_dir / method / f"seed{seed}" / f"step{step}.json", "evaluate")
                # null is how JSON holds a value that was not finite: it stays NaN, never a statistic.
                rows += [
                    {"method": method, "seed": seed, "step": step, "metric": m, "value": _number(record[m])}
                    for m in METRICS
                    if m in record
                ]
    return pd.DataFrame(rows)


def collect_run_tables(train_dir: Path, methods, seeds) -> dict[str, pd.DataFrame]:
    tables: dict[str, list[pd.DataFrame]] = {"loss_bins": [], "train_log": [], "transitions": []}
    for method in methods:
        for seed in seeds:
            for name in tables:
                frame = _read_parquet(train_dir / method / f"seed{seed}" / f"{name}.parquet", "train")
                tables[name].append(frame.assign(method=method, seed=seed))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in tables.items()}


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
            f"- {settled} of {total} experts settled on a plateau (within `convergence.tolerance` of the "
            f"mean of their last steps): {NOT_CONVERGED}; no trend of either measure is read."
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


def _contrast_sentence(name: str, c: report.LowNoiseContrast) -> str:
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
        contrast = report.low_noise_contrast(kl["unit"], effect, error, LOW_NOISE_FRACTION)
        lines.append("- " + _contrast_sentence("Mixture estimate minus its null", contrast))
    else:
        contrast = report.low_noise_contrast(kl["unit"], kl["kl"], kl["kl_stderr"], LOW_NOISE_FRACTION)
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
        contrast = report.low_noise_contrast(
            valid["unit"], valid["kl"], valid["kl_stderr"], LOW_NOISE_FRACTION
        )
        lines.append("- " + _contrast_sentence(name, contrast))
    return lines


def stitch_table(
    metrics_dir: Path, intervals, base: dict[str, float], convergence: pd.DataFrame
) -> pd.DataFrame:
    rows = []
    bounds = convergence.set_index("interval")
    for i in intervals:
        record = _read_json(metrics_dir / "stitch" / f"expert{i}.json", "stitch_eval")
        row = {
            "interval": i,
            "unit_low": float(bounds.loc[i, "unit_low"]),
            "unit_high": float(bounds.loc[i, "unit_high"]),
        }
        for metric in ("fid", "class_agreement"):
            if record.get(metric) is not None and metric in base:
                row[metric] = float(record[metric])
                row[f"{metric}_change_vs_base"] = float(record[metric]) - base[metric]
        rows.append(row)
    return pd.DataFrame(rows)


def read_grid(path: Path, writer: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = read_npz(path, hint=f"written by {writer}", keys=("images",))
    images = arrays["images"]
    labels = arrays.get("labels", np.full(len(images), -1))
    if images.dtype != np.uint8:
        raise InputFileError(path, f"samples are not decoded images (dtype {images.dtype}); no grid drawn")
    return images, labels


def separation(
    summary: pd.DataFrame,
    floor: dict[str, float],
    floor_interval: dict[str, tuple[float, float]],
    baseline: str,
    confidence: float,
) -> list[str]:
    """Does each metric tell the baseline's final samples from real data at this sample count?  Its
    interval over seeds against the floor's bootstrap interval (or the floor's value, lacking one)."""
    lines = []
    for metric in ("class_agreement", "fid", "kid"):
        if metric not in floor:
            continue
        rows = summary[(summary["method"] == baseline) & (summary["metric"] == metric)]
        if rows.empty:
            continue
        mean, half = float(rows["mean"].iloc[0]), float(rows["ci"].iloc[0])
        label = report.metric_label(metric)
        low, high = floor_interval.get(metric, (floor[metric], floor[metric]))
        real = f"real data {floor[metric]:.4g} [{low:.4g}, {high:.4g}]"
        if not math.isfinite(half):
            lines.append(f"- {label}: {baseline} {mean:.4g} (one seed, no interval), {real}.")
            continue
        apart = mean + half < low or mean - half > high
        verdict = (
            "separated from the floor" if apart else "**not** separated from the floor at this sample count"
        )
        lines.append(
            f"- {label}: {baseline} {mean:.4g} ± {half:.2g} ({confidence:.0%} interval over seeds), "
            f"{real} (95% bootstrap interval): {verdict}."
        )
    return lines


def headline_metrics(summary: pd.DataFrame, reach: pd.DataFrame, floor: dict) -> dict:
    """``{method: {metric: mean, metric_ci: half-width, ...}, "floor": {metric: value}}`` for
    ``dvc metrics diff``."""
    out: dict[str, dict] = {"floor": {m: _finite(v) for m, v in floor.items()}}
    for row in summary.itertuples():
        entry = out.setdefault(row.method, {})
        entry[row.metric] = _finite(row.mean)
        entry[f"{row.metric}_ci"] = _finite(row.ci)
        if row.metric in ("fid", "is_mean", "class_agreement"):
            entry[f"{row.metric}_diff_vs_baseline"] = _finite(row.diff_mean)
    for row in reach.itertuples():
        out.setdefault(row.method, {})["steps_to_baseline_fid"] = _finite(row.step_mean)
        out[row.method]["speedup_vs_baseline"] = _finite(row.speedup)
    return out


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("aggregate", __doc__)
    ap.add_argument("--train-dir", required=True, help="holds {method}/seed{seed}/ of the train stage")
    ap.add_argument(
        "--metrics-dir", required=True, help="holds the evaluate, evaluate_floor and stitch_eval JSONs"
    )
    ap.add_argument("--samples-dir", required=True, help="holds {method}/seed{seed}/step{step}/samples.npz")
    ap.add_argument("--features-dir", required=True, help="holds feature_net.json and floor.npz")
    ap.add_argument("--kl", required=True, help="kl.parquet written by estimate_kl")
    ap.add_argument("--kl-score", required=True, help="kl_score.parquet written by estimate_kl_score")
    ap.add_argument("--convergence", required=True, help="convergence.parquet written by convergence")
    ap.add_argument("--curriculum", required=True, help="curriculum.json written by cluster_difficulty")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "study", "train", "experts", "report")
    methods, seeds = cfg["study"]["methods"], cfg["study"]["seeds"]
    steps = cfg["train"]["snapshots"]
    baseline, confidence = cfg["report"]["baseline"], cfg["report"]["confidence"]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    features_dir = Path(args.features_dir)

    metrics = collect_metrics(Path(args.metrics_dir), methods, seeds, steps)
    samples_per_set = _read_json(
        Path(args.metrics_dir) / methods[0] / f"seed{seeds[0]}" / f"step{max(steps)}.json", "evaluate"
    )["num_samples"]
    floor_record = _read_json(Path(args.metrics_dir) / "floor.json", "evaluate_floor")
    floor = {m: _number(floor_record[m]) for m in METRICS if floor_record.get(m) is not None}
    floor_interval = {
        m: (_number(floor_record[f"{m}_low"]), _number(floor_record[f"{m}_high"]))
        for m in floor
        if floor_record.get(f"{m}_low") is not None and floor_record.get(f"{m}_high") is not None
    }
    runs = collect_run_tables(Path(args.train_dir), methods, seeds)
    kl = _read_parquet(Path(args.kl), "estimate_kl")
    kl_score = _read_parquet(Path(args.kl_score), "estimate_kl_score")
    convergence = _read_parquet(Path(args.convergence), "convergence")
    curriculum = _read_json(Path(args.curriculum), "cluster_difficulty")
    feature_net = _read_json(features_dir / "feature_net.json", "feature_net")

    summary = report.summarize(metrics, baseline=baseline, confidence=confidence)
    reach = report.iterations_to_reach(metrics, baseline=baseline, confidence=confidence)
    with atomic_path(out / "summary.parquet") as tmp:
        summary.to_parquet(tmp, index=False)
    atomic_write_json(headline_metrics(summary, reach, floor), out / "metrics.json")

    final = max(steps)
    real = read_grid(features_dir / "floor.npz", "fid_ref")
    grids = {f"real images (held out, {len(real[0])})": real}
    for method in methods:
        path = Path(args.samples_dir) / method / f"seed{seeds[0]}" / f"step{final}" / "samples.npz"
        grids[f"{method} (seed {seeds[0]}, step {final})"] = read_grid(path, "sample")
    figures = {
        "fid": report.plot_metric_vs_iterations(
            metrics,
            out / "fid_vs_iterations.png",
            CURVE_METRICS,
            confidence=confidence,
            baseline=baseline,
            floor=floor,
            floor_interval=floor_interval,
        ),
        "samples": report.plot_sample_grids(grids, out / "samples.png"),
        "loss_bins": report.plot_loss_bins(runs["loss_bins"], out / "loss_bins.png"),
        "timeline": report.plot_curriculum_timeline(
            runs["train_log"], runs["transitions"], out / "curriculum_timeline.png"
        ),
        "kl": report.plot_kl(kl, out / "kl.png", score=kl_score),
        "convergence": report.plot_convergence(convergence, out / "convergence.png"),
    }

    base = cfg["experts"]["stitch_base"]
    base_rows = metrics[
        (metrics["method"] == base["method"]) & (metrics["seed"] == base["seed"]) & (metrics["step"] == final)
    ]
    base_metrics = {r.metric: float(r.value) for r in base_rows.itertuples()}
    stitched = stitch_table(
        Path(args.metrics_dir), cfg["experts"]["stitch_intervals"], base_metrics, convergence
    )

    n_seeds = len(seeds)
    table = report.with_reference_row(report.results_table(summary), FLOOR_NAME, floor, floor_interval)
    reach_view = report.reach_table(reach)
    findings = [
        f"Sample quality against real data (`{baseline}`, step {final}, {int(floor_record['num_samples'])} "
        "samples per set):",
        *separation(summary, floor, floor_interval, baseline, confidence),
        "",
        "Convergence of the per-interval experts (appendix B):",
        *convergence_finding(convergence),
        "",
        "KL divergence between consecutive marginals (appendix C):",
        *kl_finding(kl, kl_score),
    ]
    if feature_net.get("trained"):
        findings += [
            "",
            f"Feature space of FID/KID/precision/recall: the domain classifier (held-out accuracy "
            f"{feature_net['test_accuracy']:.1%} on {feature_net['num_test']} images), whose class decisions "
            "also give the class agreement.",
        ]
    else:
        findings += ["", "Feature space of FID/KID/precision/recall: clean-fid's Inception-v3."]
    atomic_write_text(out / "findings.md", "\n".join(findings) + "\n")

    ci = f"{confidence:.0%}"
    summary_md = [
        "# Comparison at the final step",
        "",
        f"Mean ± {ci} Student-t interval over {n_seeds} seed(s); Δ is the difference to `{baseline}`, "
        f"paired over seeds.  `{FLOOR_NAME}`: the same metrics on {int(floor_record['num_samples'])} "
        "held-out real images, what a perfect model would score at this sample count"
        + (
            f" (fewer than the {samples_per_set} of a sample set: FID and KID read high, an upper bound)."
            if int(floor_record["num_samples"]) < samples_per_set
            else "."
        ),
        "",
        report.markdown_table(table, index=True),
        "",
        f"# Iterations to reach `{baseline}`'s final FID",
        "",
        report.markdown_table(reach_view, index=True),
        "",
    ]
    atomic_write_text(out / "summary.md", "\n".join(summary_md))

    curriculum_view = pd.DataFrame(
        {
            "cluster": np.arange(1, curriculum["num_clusters"] + 1),
            "unit_low": curriculum["unit_edges"][:-1],
            "unit_high": curriculum["unit_edges"][1:],
            "position_easy_to_hard": [
                curriculum["order_easy_to_hard"].index(i) + 1 for i in range(curriculum["num_clusters"])
            ],
        }
    )
    stitch_caption = (
        f"Expert i denoises inside its interval and {base['method']} (seed {base['seed']}, step {final}: "
        + ", ".join(
            f"{report.metric_label(m)} {v:.4g}"
            for m, v in base_metrics.items()
            if m in ("fid", "class_agreement")
        )
        + ") elsewhere"
    )
    sections = [
        (
            "Results",
            [
                f"Final step ({final} iterations); mean ± {ci} interval over {n_seeds} seed(s); "
                f"Δ paired over seeds against `{baseline}`; the last row is held-out real data (the floor).",
                report.Table(table, index=True),
                report.Table(reach_view, caption=f"Iterations to reach {baseline}'s final FID", index=True),
                figures["fid"],
                report.Image(figures["samples"], caption="Samples at the final step beside real images"),
            ],
        ),
        ("Training dynamics", [figures["loss_bins"], figures["timeline"]]),
        (
            "Why low noise is hard: the observational study",
            [
                "\n".join(findings),
                figures["kl"],
                figures["convergence"],
                report.Table(stitched, caption=stitch_caption),
            ],
        ),
        (
            "Curriculum clusters",
            [
                f"Rule `{curriculum.get('rule')}`; chosen by {json.dumps(curriculum.get('chosen_by', {}))}.",
                report.Table(curriculum_view),
            ],
        ),
    ]
    title = "diffusion-curriculum: " + " vs ".join(methods)
    report.write_html_report(out / "report.html", title, sections)
    report.write_markdown_report(out / "report.md", title, sections)
    print(f"aggregate: {len(methods)} methods x {n_seeds} seeds x {len(steps)} steps -> {out}")


if __name__ == "__main__":
    _cli.run(main)
