rule feature_net:
    input:
        data="data/prepared/train.parquet",
        code=code("feature_net"),
    output:
        net="results/features/feature_net.pt",
        metrics="results/features/feature_net.json",
    log:
        "logs/feature_net.log",
    conda:
        PIPELINE_ENV
    threads: 1
    params:
        file=PARAMS_FILE,
        sections=sections("features"),
    shell:
        "python -m diffusion_curriculum.stages.feature_net --params {params.file:q} --threads {threads} --data {input.data}"
        " --out-dir results/features > {log} 2>&1"


rule fid_ref:
    input:
        data="data/prepared/train.parquet",
        feature_net="results/features/feature_net.pt",
        code=code("fid_ref"),
    output:
        reference="results/features/reference.npz",
        summary="results/features/reference.json",
        floor="results/features/floor.npz",
    log:
        "logs/fid_ref.log",
    conda:
        PIPELINE_ENV
    threads: 1
    params:
        file=PARAMS_FILE,
        sections=sections("features", "sample.num_samples", "model.condition"),
    shell:
        "python -m diffusion_curriculum.stages.fid_ref --params {params.file:q} --threads {threads} --data {input.data}"
        " --feature-net {input.feature_net} --out-dir results/features > {log} 2>&1"


rule evaluate:
    input:
        samples="results/samples/{method}/seed{seed}/step{step}/samples.npz",
        reference="results/features/reference.npz",
        feature_net="results/features/feature_net.pt",
        code=code("evaluate"),
    output:
        metrics="results/metrics/{method}/seed{seed}/step{step}.json",
    log:
        "logs/evaluate/{method}/seed{seed}/step{step}.log",
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


rule evaluate_floor:
    input:
        floor="results/features/floor.npz",
        feature_net="results/features/feature_net.pt",
        code=code("evaluate_floor"),
    output:
        metrics="results/metrics/floor.json",
    log:
        "logs/evaluate_floor.log",
    conda:
        PIPELINE_ENV
    threads: 1
    params:
        file=PARAMS_FILE,
        sections=sections("features", "evaluate"),
    shell:
        "python -m diffusion_curriculum.stages.evaluate_floor --params {params.file:q} --threads {threads}"
        " --floor {input.floor} --feature-net {input.feature_net} --out {output.metrics} > {log} 2>&1"
