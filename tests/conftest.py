import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PIPELINE_FILES = ["Snakefile", "dvc.yaml", "workflow", "stages", "src", "configs", ".dvcignore"]

# One intra-op thread: on 2 shared cores, OpenMP threads spinning against each other cost 10x.
torch.set_num_threads(1)


def copy_pipeline(work: Path) -> Path:
    """Copy the pipeline (code, rules, dvc.yaml) to ``work`` with the smoke configuration as params.yaml."""
    work.mkdir(parents=True)
    for name in PIPELINE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, work / name)
    shutil.copy2(REPO / "configs" / "smoke.yaml", work / "params.yaml")
    return work


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    return copy_pipeline(tmp_path / "pipeline")


@pytest.fixture(scope="session")
def smoke_snakemake_run(tmp_path_factory) -> Path:
    """The smoke pipeline after a complete ``snakemake --cores 2`` (shared: copy it before editing)."""
    work = copy_pipeline(tmp_path_factory.mktemp("smk") / "pipeline")
    run_cli(["snakemake", "--cores", "2"], work)
    return work


@pytest.fixture(scope="session")
def smoke_dvc_run(tmp_path_factory) -> Path:
    """The smoke pipeline after a complete ``dvc repro`` in a fresh git + DVC repository (shared)."""
    work = copy_pipeline(tmp_path_factory.mktemp("dvc") / "pipeline")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run_cli(args, work)
    run_cli(["dvc", "repro"], work)
    return work


def cli_env() -> dict[str, str]:
    """The test interpreter's environment for subprocesses: its bin dir first on PATH, one torch thread."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(
    args: list[str], cwd: Path, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's environment (its bin dir first on PATH)."""
    proc = subprocess.run(args, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc
