"""Wall time of a no-op run of each driver on a pipeline whose outputs are all up to date.

    python benchmarks/driver_overhead.py [--dir .] [--repeats 5] [--drivers snakemake dvc]

Run it in (or point --dir at) a checkout where `snakemake --cores N` and/or `dvc repro` have finished,
so that nothing is left to do; it prints the median and range of `snakemake -n` and `dvc repro` (which,
with everything up to date, only checks hashes and exits) as a Markdown table, and fails if either driver
would actually run something.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

COMMANDS = {
    "snakemake": (["snakemake", "-n", "--cores", "1"], "Nothing to be done"),
    "dvc": (["dvc", "repro"], "didn't change"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=".")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--drivers", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    args = ap.parse_args()
    print("| command | median (s) | min (s) | max (s) | runs |")
    print("|---|---:|---:|---:|---:|")
    for driver in args.drivers:
        cmd, marker = COMMANDS[driver]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=args.dir, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            output = proc.stdout + proc.stderr
            if proc.returncode != 0 or marker not in output or "Running stage" in output:
                raise SystemExit(f"{' '.join(cmd)} is not a no-op here:\n{output[-2000:]}")
        print(
            f"| `{' '.join(cmd)}` | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} "
            f"| {len(times)} |"
        )


if __name__ == "__main__":
    main()
