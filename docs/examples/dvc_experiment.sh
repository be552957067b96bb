#!/usr/bin/env bash
# Compare two settings with DVC: the smoke configuration as a baseline commit, then one experiment
# (`dvc exp run -S`) that turns classifier-free guidance off.  Prints what the README shows.
# Usage: bash docs/examples/dvc_experiment.sh [work dir]   (the venv of the README active)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$(mktemp -d)/pipeline}
mkdir -p "$work"
cp -r "$repo"/{Snakefile,dvc.yaml,workflow,src,configs,params.yaml} "$work"/
diffusion-curriculum compose "$work/configs/smoke.yaml" -o "$work/params.yaml.smoke"
mv "$work/params.yaml.smoke" "$work/params.yaml"
cd "$work"
git init -q && git config user.email "example@localhost" && git config user.name "example"
dvc init -q && dvc config core.analytics false
dvc repro -q > /dev/null
git add -A && git commit -qm "smoke baseline"

echo '$ dvc exp run -S sample.cfg_scale=1.0'
dvc exp run -q -n no-guidance -S sample.cfg_scale=1.0 > /dev/null
echo '$ dvc exp show --md --drop ".*" --keep "Experiment|sample.cfg_scale|^(vanilla|dtd)\.(fid|precision|recall)$"'
dvc exp show --no-pager --md --drop '.*' --keep 'Experiment|sample.cfg_scale|^(vanilla|dtd)\.(fid|precision|recall)$'
echo '$ dvc params diff HEAD no-guidance'
dvc params diff HEAD no-guidance --md
echo '$ dvc metrics diff HEAD no-guidance --md   (rows of the report'"'"'s headline numbers)'
dvc metrics diff HEAD no-guidance --md | grep -E '^\| (Path|results/report/metrics.json)|^\|-'
