#!/usr/bin/env bash
# The GPU-scale study (configs/gpu_study.yaml) on one GPU, then its report into docs/results/gpu_study/.
# Usage: bash docs/examples/gpu_study.sh [jobs per GPU]   (the venv of the README active, one CUDA GPU)
# Small models leave a GPU mostly idle, so several jobs share it (src/diffusion_curriculum/gpu.py hands out the slots).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
per_gpu=${1:-4}
cd "$repo"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
before=$(ls .snakemake/log/*.snakemake.log 2>/dev/null || true)
DIFFUSION_CURRICULUM_JOBS_PER_GPU=$per_gpu snakemake --configfile configs/gpu_study.yaml \
  --cores "$(nproc)" --resources gpu="$per_gpu"
logs=$(comm -13 <(echo "$before" | sort) <(ls .snakemake/log/*.snakemake.log | sort))
# The report, metrics.json with the run's provenance, and RUN.md (command, commit, machine, stage times).
python docs/examples/publish_study.py --report results/report --out docs/results/gpu_study \
  --params configs/gpu_study.yaml --command "bash docs/examples/gpu_study.sh $per_gpu" $logs
