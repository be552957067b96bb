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


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    """A copy of the pipeline (code, rules, dvc.yaml) with the smoke configuration as params.yaml."""
    work = tmp_path / "pipeline"
    work.mkdir()
    for name in PIPELINE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, work / name)
    shutil.copy2(REPO / "configs" / "smoke.yaml", work / "params.yaml")
    return work


def run_cli(
    args: list[str], cwd: Path, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's environment (its bin dir first on PATH)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc
