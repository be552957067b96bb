"""Each job uses exactly the threads its driver grants (``--threads``), in the job and in its children."""

import subprocess
import sys

from conftest import REPO

PROBE = """
import os, sys
import numpy, torch
from threadpoolctl import threadpool_info
from diffusion_curriculum.stages import _cli

def main(argv):
    blas = {pool["user_api"]: pool["num_threads"] for pool in threadpool_info()}
    print(torch.get_num_threads(), torch.get_num_interop_threads(), os.environ.get("OMP_NUM_THREADS"),
          blas.get("blas"), sep=",")

_cli.run(main, sys.argv[1:])
"""


def _probe(*args: str) -> list[str]:
    env_free = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        env=env_free,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().split(",")


def test_threads_flag_holds_torch_blas_and_children_to_the_grant():
    intra, interop, omp, blas = _probe("--threads", "1")
    assert (intra, interop, omp) == ("1", "1", "1")
    assert blas in ("1", "None")  # None: NumPy's BLAS keeps no pool of its own here


def test_without_a_grant_the_runtimes_keep_their_own_choice():
    intra, _, omp, _ = _probe()
    assert omp == "None" and int(intra) >= 1


def test_every_snakemake_job_passes_its_threads():
    rules = (REPO / "workflow" / "rules").glob("*.smk")
    for path in rules:
        text = path.read_text()
        assert text.count("python -m diffusion_curriculum.stages.") == text.count("--threads {threads}"), path
        assert text.count("python -m diffusion_curriculum.stages.") == text.count("    threads: "), path
