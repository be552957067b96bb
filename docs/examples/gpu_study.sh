#!/usr/bin/env bash
# The GPU-scale study (configs/gpu_study.yaml) on one GPU, then its report into docs/results/gpu_study/.
# Usage: bash docs/examples/gpu_study.sh [jobs per GPU]   (the venv of the README active, one CUDA GPU)
# Small models leave a GPU mostly idle, so several jobs share it (src/diffusion_curriculum/gpu.py hands out the slots).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
per_gpu=${1:-4}
cd "$repo"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
DIFFUSION_CURRICULUM_JOBS_PER_GPU=$per_gpu snakemake --configfile configs/gpu_study.yaml \
  --cores "$(nproc)" --resources gpu="$per_gpu"
out=docs/results/gpu_study
mkdir -p "$out"
cp results/report/{summary.md,findings.md,metrics.json,report.html} "$out"/
cp results/report/*.png "$out"/
{
  echo "# GPU-scale study"
  echo
  echo "Command: \`bash docs/examples/gpu_study.sh $per_gpu\` at commit $(git rev-parse --short HEAD), $(date -u +%F)."
  echo "Device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)."
  echo
  cat "$out/summary.md"
} > "$out/README.md"
echo "report copied to $out"
