RUNS = expand("{method}/seed{seed}", method=METHODS, seed=SEEDS)
REPORT_DIR = "results/report"


rule aggregate:
    input:
        metrics=expand(
            "results/metrics/{run}/step{step}.json", run=RUNS, step=SNAPSHOTS
        ),
        stitched=expand(
            "results/metrics/stitch/expert{interval}.json", interval=STITCHED
        ),
        runs=expand(
            "results/train/{run}/{table}.parquet",
            run=RUNS,
            table=["loss_bins", "train_log", "transitions"],
        ),
        run_summaries=expand("results/train/{run}/summary.json", run=RUNS),
        floor_metrics="results/metrics/floor.json",
        final_samples=expand(
            "results/samples/{method}/seed{seed}/step{step}/samples.npz",
            method=METHODS,
            seed=SEEDS[0],
            step=max(SNAPSHOTS),
        ),
        feature_net="results/features/feature_net.json",
        floor="results/features/floor.npz",
        kl="results/kl/kl.parquet",
        kl_score="results/kl/kl_score.parquet",
        convergence="results/convergence/convergence.parquet",
        curriculum="results/curriculum/curriculum.json",
        code=code("aggregate"),
    output:
        summary=f"{REPORT_DIR}/summary.md",
        table=f"{REPORT_DIR}/summary.parquet",
        metrics=f"{REPORT_DIR}/metrics.json",
        findings=f"{REPORT_DIR}/findings.md",
        fid=report(
            f"{REPORT_DIR}/fid_vs_iterations.png",
            caption="../report/fid_vs_iterations.rst",
            category="Comparison",
        ),
        samples=report(
            f"{REPORT_DIR}/samples.png",
            caption="../report/samples.rst",
            category="Comparison",
        ),
        loss_bins=report(
            f"{REPORT_DIR}/loss_bins.png",
            caption="../report/loss_bins.rst",
            category="Training dynamics",
        ),
        timeline=report(
            f"{REPORT_DIR}/curriculum_timeline.png",
            caption="../report/curriculum_timeline.rst",
            category="Training dynamics",
        ),
        kl=report(
            f"{REPORT_DIR}/kl.png",
            caption="../report/kl.rst",
            category="Observational study",
        ),
        convergence=report(
            f"{REPORT_DIR}/convergence.png",
            caption="../report/convergence.rst",
            category="Observational study",
        ),
        html=f"{REPORT_DIR}/report.html",
        markdown=f"{REPORT_DIR}/report.md",
        plot_tables=expand(f"{REPORT_DIR}/plots/{{name}}.csv", name=PLOT_TABLES),
    log:
        "logs/aggregate.log",
    conda:
        PIPELINE_ENV
    threads: 1
    params:
        file=PARAMS_FILE,
        sections=sections(
            "study",
            "train.snapshots",
            "experts.stitch_intervals",
            "experts.stitch_base",
            "report",
        ),
        out_dir=lambda wildcards, output: os.path.dirname(output.html),
    shell:
        "python -m diffusion_curriculum.stages.aggregate --params {params.file:q} --threads {threads} --train-dir results/train"
        " --metrics-dir results/metrics --samples-dir results/samples --features-dir results/features"
        " --kl {input.kl} --kl-score {input.kl_score} --convergence {input.convergence} --curriculum {input.curriculum}"
        " --out-dir {params.out_dir} > {log} 2>&1"
