import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PIPELINE_FILES = ["Snakefile", "dvc.yaml", "workflow", "src", "configs", ".dvcignore"]

try:
    import torch
except ImportError:  # the NumPy-only checks (tests/test_distances.py) run without PyTorch
    torch = None
else:
    # One intra-op thread: on 2 shared cores, OpenMP threads spinning against each other cost 10x.
    torch.set_num_threads(1)


def copy_pipeline(work: Path) -> Path:
    """Copy the pipeline (code, rules, dvc.yaml) to ``work`` with the smoke configuration as params.yaml.

    The presets extend ``../params.yaml``, the defaults; in the copy that file is the smoke run, so the
    repository's defaults go beside it as ``defaults.yaml`` and the copied presets extend that instead.
    """
    import yaml

    from diffusion_curriculum.stages import params

    work.mkdir(parents=True)
    for name in PIPELINE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, work / name)
    shutil.copy2(REPO / "params.yaml", work / "defaults.yaml")
    for preset in (work / "configs").glob("*.yaml"):
        text = preset.read_text()
        preset.write_text(text.replace("\nextends: ../params.yaml\n", "\nextends: ../defaults.yaml\n"))
    smoke = params.compose(work / "configs" / "smoke.yaml")
    (work / "params.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    return work


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    return copy_pipeline(tmp_path / "pipeline")


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> dict[str, Path]:
    """The smoke pipeline completed once by each driver, the two runs side by side: ``dvc repro`` runs
    one stage at a time, so Snakemake gets the other core (shared: copy a run before editing it)."""
    smk = copy_pipeline(tmp_path_factory.mktemp("smk") / "pipeline")
    dvc = copy_pipeline(tmp_path_factory.mktemp("dvc") / "pipeline")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run_cli(args, dvc)
    commands = {"snakemake": (["snakemake", "--cores", "1"], smk), "dvc": (["dvc", "repro"], dvc)}
    procs = {
        name: subprocess.Popen(
            args, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for name, (args, cwd) in commands.items()
    }
    failed = []
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=1200)
        if proc.returncode != 0:
            failed.append(f"{' '.join(commands[name][0])} exited {proc.returncode}:\n{out[-4000:]}")
    assert not failed, "\n".join(failed)
    return {"snakemake": smk, "dvc": dvc}


@pytest.fixture(scope="session")
def smoke_snakemake_run(smoke_runs) -> Path:
    """The smoke pipeline after a complete Snakemake run (shared: copy it before editing)."""
    return smoke_runs["snakemake"]


@pytest.fixture(scope="session")
def smoke_dvc_run(smoke_runs) -> Path:
    """The smoke pipeline after a complete ``dvc repro`` in a fresh git + DVC repository (shared)."""
    return smoke_runs["dvc"]


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
