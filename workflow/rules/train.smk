rule train:
    input:
        data="data/encoded/train.parquet",
        captions="data/prepared/captions.parquet",
        curriculum="results/curriculum/curriculum.json",
        code=code("train"),
    output:
        model="results/train/{method}/seed{seed}/model.pt",
        loss_bins="results/train/{method}/seed{seed}/loss_bins.parquet",
        log="results/train/{method}/seed{seed}/train_log.parquet",
        transitions="results/train/{method}/seed{seed}/transitions.parquet",
        summary="results/train/{method}/seed{seed}/summary.json",
        snapshots=directory("results/train/{method}/seed{seed}/snapshots"),
    log:
        "logs/train/{method}/seed{seed}.log",
    conda:
        PIPELINE_ENV
    threads: 1
    resources:
        # One GPU per data-parallel process of a run (train.data_parallel): the SLURM profile submits
        # it as sbatch --gpus=N; locally, --resources gpu=K keeps concurrent runs to the machine's K
        # GPUs (unlimited if not given).
        gpu=config["train"]["data_parallel"],
    params:
        file=PARAMS_FILE,
        sections=sections("diffusion", "model", "train", "strategies.{method}"),
        out_dir="results/train/{method}/seed{seed}",
        checkpoint_dir="checkpoints/train/{method}/seed{seed}",
        live_dir="live/train/{method}/seed{seed}",
    shell:
        "python -m diffusion_curriculum.stages.train --params {params.file:q} --threads {threads} --data {input.data}"
        " --captions {input.captions} --curriculum {input.curriculum} --method {wildcards.method} --seed {wildcards.seed}"
        " --out-dir {params.out_dir} --checkpoint-dir {params.checkpoint_dir} --live-dir {params.live_dir} > {log} 2>&1"
