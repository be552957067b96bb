"""Stage aggregate: the comparison table, the figures and one offline report of the whole study.

Reads every run's metrics (one JSON per method x seed x snapshot step), training logs, the observational
study's outputs (KL curve, convergence table, stitched experts) and the curriculum, and writes into
``--out-dir``:

* ``summary.md`` and ``summary.parquet``: every method x metric at the final step, mean ± CI over seeds
  and the paired difference to ``report.baseline``; iterations to reach the baseline's final FID; each
  method's paired t test against the baseline with Holm's correction over the methods, and each
  metric's minimum detectable difference (:func:`diffusion_curriculum.report.compare_methods`);
* ``metrics.json``: the headline numbers as a DVC metric (``dvc metrics diff`` compares them);
* ``fid_vs_iterations.png`` (FID and class agreement, with the real-data floor), ``samples.png`` (a
  grid per method beside real images), ``loss_bins.png``, ``curriculum_timeline.png``, ``kl.png`` (both
  estimators and the mixture estimator's null), ``convergence.png``;
* ``findings.md``: what the observational study found here, in sentences computed from the data;
* ``plots/*.csv``: FID and class agreement versus iterations, both KL curves, the baseline's loss per
  interval, as long tables (x, series, y) for ``dvc plots show`` (``dvc.yaml``'s ``plots:``);
* ``report.html``: all of it in one self-contained file (no network needed to view it) and
  ``report.md``, the same with the figures linked.

It reads ``study`` (which runs), ``train.snapshots``, ``experts`` (which stitched runs) and ``report``.
"""

from __future__ import annotations

from pathlib import Path

from diffusion_curriculum import report
from diffusion_curriculum.io import atomic_path, atomic_write_json, atomic_write_text
from diffusion_curriculum.report import findings as find
from diffusion_curriculum.report import readings as read
from diffusion_curriculum.report import study
from diffusion_curriculum.report.plot_tables import (
    kl_curves,
    loss_per_interval,
    metric_curves,
    write_plot_tables,
)
from diffusion_curriculum.report.provenance import collect_provenance, provenance_markdown

from . import _cli, params

# The metrics drawn against training iterations (those a run lacks are left out).
CURVE_METRICS = ("fid", "class_agreement")


def _arguments(argv: list[str] | None):
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
    ap.add_argument("--out-dir", required=True, help="writes the tables, figures and report here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    cfg = params.sections(args.params, "study", "train", "experts", "report")
    methods, seeds, steps = cfg["study"]["methods"], cfg["study"]["seeds"], cfg["train"]["snapshots"]
    baseline, confidence = cfg["report"]["baseline"], cfg["report"]["confidence"]
    out, metrics_dir, features_dir = Path(args.out_dir), Path(args.metrics_dir), Path(args.features_dir)
    out.mkdir(parents=True, exist_ok=True)
    final, n_seeds = max(steps), len(seeds)

    metrics = read.collect_metrics(metrics_dir, methods, seeds, steps)
    samples_per_set = read.read_record(
        metrics_dir / methods[0] / f"seed{seeds[0]}" / f"step{final}.json", "evaluate"
    )["num_samples"]
    floor_record, floor, floor_interval = read.read_floor(metrics_dir / "floor.json")
    runs = read.collect_run_tables(Path(args.train_dir), methods, seeds)
    kl = read.read_table(Path(args.kl), "estimate_kl")
    kl_score = read.read_table(Path(args.kl_score), "estimate_kl_score")
    convergence = read.read_table(Path(args.convergence), "convergence")
    curriculum = read.read_record(Path(args.curriculum), "cluster_difficulty")
    feature_net = read.read_record(features_dir / "feature_net.json", "feature_net")

    comparison = report.compare_methods(metrics, baseline, confidence, CURVE_METRICS)
    with atomic_path(out / "summary.parquet") as tmp:
        comparison.summary.to_parquet(tmp, index=False)
    atomic_write_json(read.headline_metrics(comparison, floor, floor_interval), out / "metrics.json")

    shown = f"seed{seeds[0]}", f"step{final}"  # one sample set per method in the grid
    samples = {f"{m} (seed {seeds[0]}, step {final})": Path(args.samples_dir, m, *shown) for m in methods}
    grids = read.sample_grids(features_dir / "floor.npz", {k: p / "samples.npz" for k, p in samples.items()})
    figures = {
        "fid": report.plot_metric_vs_iterations(
            metrics, out / "fid_vs_iterations.png", CURVE_METRICS, confidence=confidence, baseline=baseline,
            floor=floor, floor_interval=floor_interval,
        ),
        "samples": report.plot_sample_grids(grids, out / "samples.png"),
        "loss_bins": report.plot_loss_bins(runs["loss_bins"], out / "loss_bins.png"),
        "timeline": report.plot_curriculum_timeline(
            runs["train_log"], runs["transitions"], out / "curriculum_timeline.png"
        ),
        "kl": report.plot_kl(kl, out / "kl.png", score=kl_score),
        "convergence": report.plot_convergence(convergence, out / "convergence.png"),
    }  # fmt: skip
    write_plot_tables(
        {
            **{m: metric_curves(metrics, m, floor.get(m)) for m in CURVE_METRICS},
            "kl": kl_curves(kl, kl_score),
            "loss_per_interval": loss_per_interval(runs["loss_bins"], baseline),
        },
        out / "plots",
    )

    base = cfg["experts"]["stitch_base"]
    base_metrics = read.run_metrics(metrics, base["method"], base["seed"], final)
    stitched = read.stitch_table(metrics_dir, cfg["experts"]["stitch_intervals"], base_metrics, convergence)
    views = study.comparison_views(comparison, metrics["metric"], floor, floor_interval, baseline, confidence)
    num_floor, num_floor_sets = int(floor_record["num_samples"]), int(floor_record["num_sets"])
    floor_class_matched = bool(floor_record.get("class_matched", False))
    findings = find.study_findings(
        comparison, floor, floor_interval, convergence=convergence, kl=kl, kl_score=kl_score,
        feature_net=feature_net, baseline=baseline, confidence=confidence, final=final, num_floor=num_floor,
        num_floor_sets=num_floor_sets, floor_class_matched=floor_class_matched,
        null_methods=read.null_replicates(Path(args.train_dir), methods, seeds[0], baseline),
    )  # fmt: skip
    atomic_write_text(out / "findings.md", "\n".join(findings) + "\n")
    summary_md = study.summary_markdown(
        views, baseline=baseline, confidence=confidence, num_seeds=n_seeds, num_floor=num_floor,
        num_floor_sets=num_floor_sets, samples_per_set=samples_per_set,
        floor_class_matched=floor_class_matched,
    )  # fmt: skip
    atomic_write_text(out / "summary.md", summary_md)
    sections = study.report_sections(
        views=views, figures=figures, findings=findings, stitched=stitched,
        stitch_caption=study.stitch_caption(base, final, base_metrics), curriculum=curriculum,
        baseline=baseline, confidence=confidence, num_seeds=n_seeds, final=final,
    )  # fmt: skip
    title = "diffusion-curriculum: " + " vs ".join(methods)
    # Provenance (commit, date, machine) only in the HTML page: the other outputs stay byte-stable.
    provenance = provenance_markdown(collect_provenance(args.params))
    report.write_html_report(out / "report.html", title, sections, intro=f"Provenance:\n{provenance}")
    report.write_markdown_report(out / "report.md", title, sections)
    print(f"aggregate: {len(methods)} methods x {n_seeds} seeds x {len(steps)} steps -> {out}")


if __name__ == "__main__":
    _cli.run(main)
