"""Copy a finished study's report into a folder that is committed, with the record of how it was made.

    python docs/examples/publish_study.py --report results/report --out docs/results/cpu_study \
        --params configs/cpu_study.yaml --command "bash docs/examples/cpu_study.sh" LOG [LOG ...]

LOG: the Snakemake logs of the invocations that made the run (``.snakemake/log/*.snakemake.log``; more
than one when the run was made in parts).  Writes into ``--out``: the report's documents and figures,
``metrics.json`` (the report's, with a ``provenance`` entry: commit, date, machine, wall time) and
``RUN.md`` (the command, commit, date, machine, wall time and per-stage job times read from the logs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

import torch  # noqa: F401  (imported so that the provenance names the GPU the run's jobs used)

from diffusion_curriculum.report.provenance import collect_provenance

DOCUMENTS = ("summary.md", "findings.md", "report.html", "report.md")
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
STARTED = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def _time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y")


def job_times(log: Path) -> tuple[dict[str, list[float]], float]:
    """Per rule, the seconds each of its jobs took in one Snakemake log (start stamp to finish stamp),
    and the log's span from its first to its last time stamp."""
    stamp, rule, starts, durations, stamps = None, None, {}, defaultdict(list), []
    for line in log.read_text(errors="replace").splitlines():
        if match := STAMP.match(line):
            stamp = _time(match.group(1))
            stamps.append(stamp)
        elif match := STARTED.match(line):
            rule = match.group(1)
        elif (match := JOBID.match(line)) and rule is not None and stamp is not None:
            starts[match.group(1)] = stamp
            rule = None
        elif (match := FINISHED.match(line)) and match.group(1) in starts and stamp is not None:
            durations[match.group(2)].append((stamp - starts.pop(match.group(1))).total_seconds())
    span = (stamps[-1] - stamps[0]).total_seconds() if stamps else 0.0
    return dict(durations), span


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {rest:02d} s" if hours else f"{minutes} min {rest:02d} s"


def stage_table(durations: dict[str, list[float]]) -> list[str]:
    lines = ["| stage | jobs | each (median, range) | job-seconds |", "|---|---:|---|---:|"]
    for rule, times in sorted(durations.items(), key=lambda kv: -sum(kv[1])):
        spread = f"{statistics.median(times):.0f} s ({min(times):.0f}–{max(times):.0f})"
        lines.append(f"| `{rule}` | {len(times)} | {spread} | {sum(times):,.0f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", required=True, type=Path, help="the aggregate stage's output folder")
    ap.add_argument("--out", required=True, type=Path, help="the folder to write (committed)")
    ap.add_argument("--params", required=True, type=Path, help="the params file the run used")
    ap.add_argument("--command", required=True, help="the command that made the run, for RUN.md")
    ap.add_argument("--note", default="", help="a sentence for RUN.md (how the run was made)")
    ap.add_argument("logs", nargs="+", type=Path, help="the Snakemake logs of the run, in order")
    args = ap.parse_args(argv)

    durations: dict[str, list[float]] = defaultdict(list)
    wall = 0.0
    for log in args.logs:
        per_rule, span = job_times(log)
        wall += span
        for rule, times in per_rule.items():
            durations[rule] += times
    record = collect_provenance(args.params)
    record |= {"cpu_model": _cpu_model(), "wall_time_s": round(wall), "command": args.command}

    args.out.mkdir(parents=True, exist_ok=True)
    for name in DOCUMENTS:
        shutil.copy2(args.report / name, args.out / name)
    for figure in sorted(args.report.glob("*.png")):
        shutil.copy2(figure, args.out / figure.name)
    metrics = json.loads((args.report / "metrics.json").read_text())
    metrics["provenance"] = record
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    total = sum(sum(times) for times in durations.values())
    lines = [
        f"# How this run was made ({args.out.name})",
        "",
        f"- command: `{args.command}`",
        f"- commit: `{record['commit']}`; params file `{args.params}` "
        f"(SHA-256 `{record['params_sha256'][:16]}…`)",
        f"- date (UTC): {record['date']}",
        f"- machine: {record['cpus']} CPUs ({record['cpu_model']}), {record['platform']}, "
        f"Python {record['python']}" + (f", GPU {record['gpu']}" if record["gpu"] else ", no GPU"),
        f"- wall time: **{_duration(wall)}** over {len(args.logs)} Snakemake invocation(s); "
        f"{total:,.0f} job-seconds in {sum(len(t) for t in durations.values())} jobs",
    ]
    if args.note:
        lines += ["", args.note]
    lines += [
        "",
        "Per stage (from the Snakemake logs: each job's start to its finish):",
        "",
        *stage_table(durations),
    ]
    (args.out / "RUN.md").write_text("\n".join(lines) + "\n")
    print(f"published {args.report} -> {args.out} (wall {_duration(wall)}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
