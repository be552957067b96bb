# The observational study (appendix B-C of the paper): per-interval experts, their convergence, the KL
# between consecutive marginals, and the curriculum clusters built from them.
EXPERTS = config["experts"]["intervals"]
STITCHED = config["experts"]["stitch_intervals"]
STITCH_BASE = "results/train/{method}/seed{seed}/model.pt".format(
    **config["experts"]["stitch_base"]
)


rule train_expert:
    input:
        data="data/encoded/train.parquet",
        captions="data/prepared/captions.parquet",
        code=code("train_expert"),
    output:
        model="results/experts/expert{interval}/model.pt",
        curve="results/experts/expert{interval}/loss_curve.parquet",
        summary="results/experts/expert{interval}/summary.json",
    log:
        "logs/train_expert/expert{interval}.log",
    conda:
        PIPELINE_ENV
    threads: 1
    resources:
        gpu=1,
    params:
        file=PARAMS_FILE,
        sections=sections("diffusion", "model", "curriculum.num_clusters", "experts"),
        out_dir="results/experts/expert{interval}",
        checkpoint_dir="checkpoints/experts/expert{interval}",
    shell:
        "python -m diffusion_curriculum.stages.train_expert --params {params.file:q} --threads {threads} --data {input.data}"
        " --captions {input.captions} --interval {wildcards.interval} --out-dir {params.out_dir}"
        " --checkpoint-dir {params.checkpoint_dir} > {log} 2>&1"


rule convergence:
    input:
        curves=expand(
            "results/experts/expert{interval}/loss_curve.parquet", interval=EXPERTS
        ),
        code=code("convergence"),
    output:
        table="results/convergence/convergence.parquet",
    log:
        "logs/convergence.log",
    conda:
        PIPELINE_ENV
    threads: 1
    params:
        file=PARAMS_FILE,
        sections=sections("experts.intervals", "convergence"),
    shell:
        "python -m diffusion_curriculum.stages.convergence --params {params.file:q} --threads {threads} --experts-dir results/experts"
        " --out {output.table} > {log} 2>&1"


rule estimate_kl:
    input:
        data="data/encoded/train.parquet",
        code=code("estimate_kl"),
    output:
        table="results/kl/kl.parquet",
    log:
        "logs/estimate_kl.log",
    conda:
        PIPELINE_ENV
    threads: 2
    resources:
        gpu=1,
    params:
        file=PARAMS_FILE,
        sections=sections(
            "diffusion",
            "kl.num_data",
            "kl.num_samples",
            "kl.exclude_self",
            "kl.common_noise",
            "kl.grid_points",
            "kl.chunk_size",
            "kl.precision",
            "kl.seed",
            "kl.device",
        ),
    shell:
        "python -m diffusion_curriculum.stages.estimate_kl --params {params.file:q} --threads {threads} --data {input.data}"
        " --out {output.table} > {log} 2>&1"


rule estimate_kl_score:
    input:
        data="data/encoded/train.parquet",
        experts=expand("results/experts/expert{interval}/model.pt", interval=EXPERTS),
        code=code("estimate_kl_score"),
    output:
        table="results/kl/kl_score.parquet",
    log:
        "logs/estimate_kl_score.log",
    conda:
        PIPELINE_ENV
    threads: 2
    resources:
        gpu=1,
    params:
        file=PARAMS_FILE,
        sections=sections(
            "kl.num_data", "kl.seed", "kl.device", "kl.score", "experts.intervals"
        ),
    shell:
        "python -m diffusion_curriculum.stages.estimate_kl_score --params {params.file:q} --threads {threads} --data {input.data}"
        " --experts-dir results/experts --out {output.table} > {log} 2>&1"


rule cluster_difficulty:
    input:
        unpack(difficulty_signal),
        code=code("cluster_difficulty"),
    output:
        curriculum="results/curriculum/curriculum.json",
    log:
        "logs/cluster_difficulty.log",
    conda:
        PIPELINE_ENV
    threads: 1
    params:
        file=PARAMS_FILE,
        sections=sections("diffusion", "curriculum", "kl.estimator"),
        signal=signal_arguments,
    shell:
        "python -m diffusion_curriculum.stages.cluster_difficulty --params {params.file:q} --threads {threads} {params.signal}"
        " --out {output.curriculum} > {log} 2>&1"


rule stitch_sample:
    input:
        base=STITCH_BASE,
        expert="results/experts/expert{interval}/model.pt",
        encoding="data/encoded/manifest.json",
        captions="data/prepared/captions.parquet",
        code=code("sample"),
    output:
        samples="results/samples/stitch/expert{interval}/samples.npz",
        grid="results/samples/stitch/expert{interval}/grid.png",
        settings="results/samples/stitch/expert{interval}/settings.json",
    log:
        "logs/stitch_sample/expert{interval}.log",
    conda:
        PIPELINE_ENV
    threads: 1
    resources:
        gpu=1,
    params:
        file=PARAMS_FILE,
        sections=sections("sample"),
        out_dir="results/samples/stitch/expert{interval}",
    shell:
        "python -m diffusion_curriculum.stages.sample --params {params.file:q} --threads {threads} --model {input.base}"
        " --expert {input.expert} --encoding {input.encoding} --captions {input.captions}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule stitch_eval:
    input:
        samples="results/samples/stitch/expert{interval}/samples.npz",
        reference="results/features/reference.npz",
        feature_net="results/features/feature_net.pt",
        code=code("evaluate"),
    output:
        metrics="results/metrics/stitch/expert{interval}.json",
    log:
        "logs/stitch_eval/expert{interval}.log",
    conda:
        PIPELINE_ENV
    threads: 1
    params:
        file=PARAMS_FILE,
        sections=sections("features", "evaluate"),
    shell:
        "python -m diffusion_curriculum.stages.evaluate --params {params.file:q} --threads {threads} --samples {input.samples}"
        " --reference {input.reference} --feature-net {input.feature_net}"
        " --out {output.metrics} > {log} 2>&1"
