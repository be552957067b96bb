#!/usr/bin/env bash
# The GPU check: every GPU figure of BENCHMARKS.md in one run of at most 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_check.sh [--dry] [--parts env,train,...] [--pack] [OUT]
#
# OUT (default: $OUT) receives gpu_check.json (every figure, the device, torch / CUDA versions, the
# commit), gpu_check.md (BENCHMARKS.md's GPU table, filled), parts/ (each part's record and log) and
# pipeline/ (the slice's params, logs and metrics); --pack puts those two folders into
# gpu_check_parts.tar.gz, leaving three files.  Outside a git checkout, GPU_CHECK_COMMIT names the commit.
# Each part (env train sample kl memory ddp pipeline; see benchmarks/gpu_check.py) runs as its own
# process under `timeout` with its own cap, never past the run's total (the last part, the pipeline,
# also gets what the others left unused): one slow part cannot eat the rest, and a part stopped by its
# cap keeps what it had measured.  --dry: the same code paths on the CPU at tiny sizes (about 3 minutes
# on 2 cores; tests/test_gpu_check.py).  Run from anywhere with the project's venv active.
# Exit status: 0 when every part finished (or was skipped with a reason), 1 otherwise, 2 on bad usage.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The repository's library first, installed or not (the pipeline's stages inherit it).
export PYTHONPATH="$(dirname "$here")/src${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python}
dry=()
only=""
pack=0
out=${OUT:-}
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry) dry=(--dry); shift ;;
    --parts) only=",$2,"; shift 2 ;;
    --pack) pack=1; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (use --dry, --parts a,b, --pack, OUT)" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
if [[ -z $out ]]; then
  echo "gpu_check.sh: no output folder: give one as argument or set \$OUT" >&2
  exit 2
fi
mkdir -p "$out/parts" && out=$(cd "$out" && pwd) || exit 2

# "part cap" lines, then "total S" (the whole run) and "reserve S" (kept for the merge)
caps=$("$python" "$here/gpu_check.py" caps "${dry[@]}") || exit 2
total=$(awk '$1 == "total" {print $2}' <<<"$caps")
reserve=$(awk '$1 == "reserve" {print $2}' <<<"$caps")
last=$(awk '$1 != "total" && $1 != "reserve" {p = $1} END {print p}' <<<"$caps")
start=$(date +%s)
echo "gpu_check: ${dry[*]:-gpu} run into $out, at most $total s"

env_ok=1
while read -r part cap; do
  [[ $part == total || $part == reserve ]] && continue
  rc_file=$out/parts/$part.rc
  if [[ -n $only && $only != *",$part,"* ]]; then
    continue  # not selected: an earlier run's record of it stays
  fi
  rm -f "$rc_file" "$out/parts/$part.json"
  if [[ $env_ok == 0 ]]; then
    echo "0 0 $cap the env part failed (no usable device?)" >"$rc_file"
    continue
  fi
  left=$((total - reserve - ($(date +%s) - start)))
  if ((left < 5)); then
    echo "0 0 $cap the run's $total s were spent" >"$rc_file"
    continue
  fi
  # never past the run's total; the last part also gets what the others left unused
  if ((cap > left)) || [[ $part == "$last" ]]; then cap=$left; fi
  t0=$(date +%s)
  timeout --kill-after=5 "$cap" "$python" "$here/gpu_check.py" "$part" --out "$out" --budget "$cap" \
    "${dry[@]}" >"$out/parts/$part.log" 2>&1
  rc=$?
  wall=$(($(date +%s) - t0))
  echo "$rc $wall $cap" >"$rc_file"
  echo "gpu_check: $part exited $rc after $wall s (cap $cap s)"
  [[ $part == env && $rc != 0 ]] && env_ok=0 && tail -3 "$out/parts/env.log" >&2
done <<<"$caps"

timeout 10 "$python" "$here/gpu_check.py" merge --out "$out" --wall $(($(date +%s) - start)) "${dry[@]}"
status=$?
if ((pack)); then
  tar -czf "$out/gpu_check_parts.tar.gz" -C "$out" parts $([[ -d $out/pipeline ]] && echo pipeline) &&
    rm -rf "$out/parts" "$out/pipeline"
fi
exit $status
