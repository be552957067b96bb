rule sample:
    input:
        snapshots="results/train/{method}/seed{seed}/snapshots",
        encoding="data/encoded/manifest.json",
        captions="data/prepared/captions.parquet",
        code=code("sample"),
    output:
        samples="results/samples/{method}/seed{seed}/step{step}/samples.npz",
        grid="results/samples/{method}/seed{seed}/step{step}/grid.png",
        settings="results/samples/{method}/seed{seed}/step{step}/settings.json",
    log:
        "logs/sample/{method}/seed{seed}/step{step}.log",
    conda:
        PIPELINE_ENV
    threads: 1
    params:
        file=PARAMS_FILE,
        sections=sections("sample"),
        out_dir="results/samples/{method}/seed{seed}/step{step}",
    shell:
        "python -m diffusion_curriculum.stages.sample --params {params.file:q} --threads {threads}"
        " --model {input.snapshots}/step{wildcards.step}.pt"
        " --encoding {input.encoding} --captions {input.captions}"
        " --out-dir {params.out_dir} > {log} 2>&1"
