#!/usr/bin/env bash
# The CPU study (configs/cpu_study.yaml) on this machine's cores, then its report into docs/results/cpu_study/.
# Usage: bash docs/examples/cpu_study.sh [cores]   (the README's venv active; about 2 h on 2 cores)
# Runs that already finished are kept (Snakemake reruns only what changed), so a grown study
# (a seed or a method more in the config) costs only its own jobs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cores=${1:-2}
cd "$repo"
before=$(ls .snakemake/log/*.snakemake.log 2>/dev/null || true)
snakemake --cores "$cores" --rerun-incomplete --configfile configs/cpu_study.yaml
logs=$(comm -13 <(echo "$before" | sort) <(ls .snakemake/log/*.snakemake.log | sort))
python docs/examples/publish_study.py --report results/report --out docs/results/cpu_study \
  --params configs/cpu_study.yaml --command "bash docs/examples/cpu_study.sh $cores" $logs
