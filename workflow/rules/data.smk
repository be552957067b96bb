rule prepare_data:
    input:
        code=code("prepare_data", "data", "io"),
    output:
        data="data/prepared/train.parquet",
        manifest="data/prepared/manifest.json",
    log:
        "logs/prepare_data.log",
    conda:
        PIPELINE_ENV
    params:
        file=PARAMS_FILE,
        sections=sections("data"),
    shell:
        "python -m stages.prepare_data --params {params.file} --out-dir data/prepared > {log} 2>&1"
