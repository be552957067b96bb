rule prepare_data:
    input:
        code=code("prepare_data"),
    output:
        data="data/prepared/train.parquet",
        manifest="data/prepared/manifest.json",
        captions="data/prepared/captions.parquet",
    log:
        "logs/prepare_data.log",
    conda:
        PIPELINE_ENV
    threads: 1
    params:
        file=PARAMS_FILE,
        sections=sections("data"),
    shell:
        "python -m diffusion_curriculum.stages.prepare_data --params {params.file:q} --threads {threads} --out-dir data/prepared > {log} 2>&1"


rule encode_latents:
    input:
        data="data/prepared/train.parquet",
        code=code("encode_latents"),
    output:
        data="data/encoded/train.parquet",
        manifest="data/encoded/manifest.json",
    log:
        "logs/encode_latents.log",
    conda:
        PIPELINE_ENV
    threads: 1
    resources:
        gpu=1,
    params:
        file=PARAMS_FILE,
        sections=sections("latents"),
    shell:
        "python -m diffusion_curriculum.stages.encode_latents --params {params.file:q} --threads {threads} --data {input.data}"
        " --out-dir data/encoded > {log} 2>&1"
