rule sample:
    input:
        model="results/train/{method}/seed{seed}/model.pt",
        code=code(
            "sample",
            "samplers",
            "losses",
            "schedules",
            "device_tables",
            "data",
            "io",
            "models/__init__",
            "models/layers",
            "models/dit",
            "models/unet",
        ),
    output:
        samples="results/samples/{method}/seed{seed}/samples.npz",
        grid="results/samples/{method}/seed{seed}/grid.png",
        settings="results/samples/{method}/seed{seed}/settings.json",
    log:
        "logs/sample/{method}/seed{seed}.log",
    conda:
        PIPELINE_ENV
    params:
        file=PARAMS_FILE,
        sections=sections("sample"),
        out_dir="results/samples/{method}/seed{seed}",
    shell:
        "python -m stages.sample --params {params.file} --model {input.model}"
        " --out-dir {params.out_dir} > {log} 2>&1"
