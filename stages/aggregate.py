"""Stage aggregate: the comparison table, the figures and one offline report of the whole study.

Reads every run's metrics (one JSON per method x seed x snapshot step), training logs, the observational
study's outputs (KL curve, convergence table, stitched experts) and the curriculum, and writes into
``--out-dir``:

* ``summary.md`` and ``summary.parquet``: every method x metric at the final step, mean ± CI over seeds
  and the paired difference to ``report.baseline``; iterations to reach the baseline's final FID;
* ``metrics.json``: the headline numbers as a DVC metric (``dvc metrics diff`` compares them);
* ``fid_vs_iterations.png``, ``loss_bins.png``, ``curriculum_timeline.png``, ``kl.png``,
  ``convergence.png``;
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
from scipy import stats as scipy_stats

from diffusion_curriculum import report
from diffusion_curriculum.io import atomic_path, atomic_write_json, atomic_write_text

from . import _cli, params

METRICS = ("fid", "kid", "is_mean", "is_std", "precision", "recall")
# Fraction of the timesteps, from the low-noise end, compared with the rest in the KL finding.
LOW_NOISE_FRACTION = 0.1


def _read_json(path: Path, writer: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (written by {writer})")
    return json.loads(path.read_text())


def _read_parquet(path: Path, writer: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (written by {writer})")
    return pd.read_parquet(path)


def collect_metrics(metrics_dir: Path, methods, seeds, steps) -> pd.DataFrame:
    rows = []
    for method in methods:
        for seed in seeds:
            for step in steps:
                record = _read_json(metrics_dir / method / f"seed{seed}" / f"step{step}.json", "evaluate")
                rows += [
                    {"method": method, "seed": seed, "step": step, "metric": m, "value": float(record[m])}
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
    interval number (1 = lowest noise) and each convergence measure; the claim predicts rho < 0."""
    lines = []
    for column, label in (("oscillation_onset", "oscillation onset"), ("plateau_step", "plateau step")):
        valid = convergence[["interval", column]].dropna()
        if len(valid) < 3:
            lines.append(f"- {label}: only {len(valid)} intervals have a value; no trend can be measured.")
            continue
        rho, p = scipy_stats.spearmanr(valid["interval"], valid[column])
        if math.isnan(rho):
            verdict = "no trend (constant values)"
        elif rho < 0 and p < 0.05:
            verdict = "lower-noise intervals converge later, as the paper reports"
        elif rho > 0 and p < 0.05:
            verdict = "lower-noise intervals converge *earlier*, against the paper's finding"
        else:
            verdict = "no significant trend at the 5% level"
        lines.append(
            f"- {label} ({len(valid)} intervals): Spearman rho(interval, step) = {rho:+.2f} "
            f"(p = {p:.2g}): {verdict}."
        )
    return lines


def kl_finding(kl: pd.DataFrame) -> list[str]:
    """Is D_KL(p_{t-1} || p_t) larger at small t (the paper's Fig. 2)?"""
    ordered = kl.sort_values("unit")
    cut = max(1, int(round(LOW_NOISE_FRACTION * len(ordered))))
    low, rest = ordered["kl"].iloc[:cut], ordered["kl"].iloc[cut:]
    rho, p = scipy_stats.spearmanr(ordered["unit"], ordered["kl"])
    ratio = low.mean() / rest.mean() if len(rest) and rest.mean() > 0 else float("inf")
    verdict = (
        "the KL is larger at low noise, as the paper reports"
        if ratio > 1 and rho < 0
        else "the KL is not larger at low noise here"
    )
    return [
        f"- mean KL over the {LOW_NOISE_FRACTION:.0%} lowest-noise timesteps: {low.mean():.4g} nats; over "
        f"the rest: {rest.mean():.4g} nats (ratio {ratio:.3g}); Spearman rho(t, KL) = {rho:+.2f} "
        f"(p = {p:.2g}): {verdict}."
    ]


def stitch_table(metrics_dir: Path, intervals, base_fid: float, convergence: pd.DataFrame) -> pd.DataFrame:
    rows = []
    bounds = convergence.set_index("interval")
    for i in intervals:
        record = _read_json(metrics_dir / "stitch" / f"expert{i}.json", "stitch_eval")
        rows.append(
            {
                "interval": i,
                "unit_low": float(bounds.loc[i, "unit_low"]),
                "unit_high": float(bounds.loc[i, "unit_high"]),
                "fid": float(record["fid"]),
                "fid_change_vs_base": float(record["fid"]) - base_fid,
            }
        )
    return pd.DataFrame(rows)


def headline_metrics(summary: pd.DataFrame, reach: pd.DataFrame) -> dict:
    """``{method: {metric: mean, metric_ci: half-width, ...}}`` for ``dvc metrics diff``."""
    out: dict[str, dict] = {}
    for row in summary.itertuples():
        entry = out.setdefault(row.method, {})
        entry[row.metric] = _finite(row.mean)
        entry[f"{row.metric}_ci"] = _finite(row.ci)
        if row.metric in ("fid", "is_mean"):
            entry[f"{row.metric}_diff_vs_baseline"] = _finite(row.diff_mean)
    for row in reach.itertuples():
        out.setdefault(row.method, {})["steps_to_baseline_fid"] = _finite(row.step_mean)
        out[row.method]["speedup_vs_baseline"] = _finite(row.speedup)
    return out


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("--train-dir", required=True, help="holds {method}/seed{seed}/ of the train stage")
    ap.add_argument("--metrics-dir", required=True, help="holds the evaluate and stitch_eval JSONs")
    ap.add_argument("--features-dir", required=True, help="holds feature_net.json")
    ap.add_argument("--kl", required=True, help="kl.parquet written by estimate_kl")
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

    metrics = collect_metrics(Path(args.metrics_dir), methods, seeds, steps)
    runs = collect_run_tables(Path(args.train_dir), methods, seeds)
    kl = _read_parquet(Path(args.kl), "estimate_kl")
    convergence = _read_parquet(Path(args.convergence), "convergence")
    curriculum = _read_json(Path(args.curriculum), "cluster_difficulty")
    feature_net = _read_json(Path(args.features_dir) / "feature_net.json", "feature_net")

    summary = report.summarize(metrics, baseline=baseline, confidence=confidence)
    reach = report.iterations_to_reach(metrics, baseline=baseline, confidence=confidence)
    with atomic_path(out / "summary.parquet") as tmp:
        summary.to_parquet(tmp, index=False)
    atomic_write_json(headline_metrics(summary, reach), out / "metrics.json")

    figures = {
        "fid": report.plot_metric_vs_iterations(
            metrics, out / "fid_vs_iterations.png", "fid", confidence=confidence, baseline=baseline
        ),
        "loss_bins": report.plot_loss_bins(runs["loss_bins"], out / "loss_bins.png"),
        "timeline": report.plot_curriculum_timeline(
            runs["train_log"], runs["transitions"], out / "curriculum_timeline.png"
        ),
        "kl": report.plot_kl(kl, out / "kl.png"),
        "convergence": report.plot_convergence(convergence, out / "convergence.png"),
    }

    base = cfg["experts"]["stitch_base"]
    base_rows = metrics[
        (metrics["method"] == base["method"])
        & (metrics["seed"] == base["seed"])
        & (metrics["step"] == max(steps))
        & (metrics["metric"] == "fid")
    ]
    base_fid = float(base_rows["value"].iloc[0])
    stitched = stitch_table(Path(args.metrics_dir), cfg["experts"]["stitch_intervals"], base_fid, convergence)

    n_seeds = len(seeds)
    table = report.results_table(summary)
    reach_view = report.reach_table(reach)
    findings = [
        "Convergence of the per-interval experts (appendix B):",
        *convergence_finding(convergence),
        "",
        "KL divergence between consecutive marginals (appendix C):",
        *kl_finding(kl),
    ]
    if feature_net.get("trained"):
        findings += [
            "",
            f"Feature space of FID/KID/precision/recall: the domain classifier (held-out accuracy "
            f"{feature_net['test_accuracy']:.1%} on {feature_net['num_test']} images).",
        ]
    else:
        findings += ["", "Feature space of FID/KID/precision/recall: clean-fid's Inception-v3."]
    atomic_write_text(out / "findings.md", "\n".join(findings) + "\n")

    ci = f"{confidence:.0%}"
    summary_md = [
        "# Comparison at the final step",
        "",
        f"Mean ± {ci} Student-t interval over {n_seeds} seed(s); Δ is the difference to `{baseline}`, "
        "paired over seeds.",
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
    sections = [
        (
            "Results",
            [
                f"Final step ({max(steps)} iterations); mean ± {ci} interval over {n_seeds} seed(s); "
                f"Δ paired over seeds against `{baseline}`.",
                report.Table(table, index=True),
                report.Table(reach_view, caption=f"Iterations to reach {baseline}'s final FID", index=True),
                figures["fid"],
            ],
        ),
        ("Training dynamics", [figures["loss_bins"], figures["timeline"]]),
        (
            "Why low noise is hard: the observational study",
            [
                "\n".join(findings),
                figures["kl"],
                figures["convergence"],
                report.Table(
                    stitched,
                    caption=(
                        f"FID when expert i denoises inside its interval and {base['method']} "
                        f"(seed {base['seed']}, FID {base_fid:.4g}) elsewhere"
                    ),
                ),
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
