"""A training job stopped by SIGTERM / SIGUSR1 (SLURM's warning before a time limit or preemption) or
killed outright resumes on the next attempt and ends bitwise equal to an uninterrupted run (CPU)."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from diffusion_curriculum.stages.train import EXIT_PREEMPTED

from conftest import cli_env, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def train_setup(pipeline_dir: Path):
    params = yaml.safe_load((pipeline_dir / "params.yaml").read_text())
    params["train"].update(
        iterations=120, checkpoint_every=10, log_every=10, batch_size=8, snapshots=[55, 120]
    )
    (pipeline_dir / "params.yaml").write_text(yaml.safe_dump(params))
    run_cli([sys.executable, "-m", "diffusion_curriculum.stages.prepare_data"], pipeline_dir)
    return pipeline_dir


def _train_args(name: str) -> list[str]:
    return [
        sys.executable, "-m", "diffusion_curriculum.stages.train", "--data", "data/prepared/train.parquet",
        "--method", "vanilla",
        "--seed", "0", "--out-dir", f"out/{name}", "--checkpoint-dir", f"ckpt/{name}",
    ]  # fmt: skip


def _checkpoint_step(root: Path, name: str) -> int:
    path = root / "ckpt" / name / "checkpoint.pt"
    return int(torch.load(path, weights_only=True)["step"]) if path.exists() else 0


def _mtime(root: Path, name: str) -> int:
    path = root / "ckpt" / name / "checkpoint.pt"
    return path.stat().st_mtime_ns if path.exists() else 0


def _start_and_stop(root: Path, name: str, sig: int, after_steps: int) -> tuple[int, str]:
    """Start training and send ``sig`` once the checkpoint has advanced ``after_steps`` beyond its start."""
    start = _checkpoint_step(root, name)
    proc = subprocess.Popen(
        _train_args(name), cwd=root, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    seen, step = _mtime(root, name), start
    while step < start + after_steps:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.1)
        if (mtime := _mtime(root, name)) != seen:  # read the step only when a new checkpoint landed
            seen, step = mtime, _checkpoint_step(root, name)
    time.sleep(random.uniform(0.0, 0.3))  # land somewhere between checkpoints
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    return proc.returncode, err


def _weights(root: Path, name: str) -> dict:
    return torch.load(root / "out" / name / "model.pt", weights_only=True)


def test_signals_and_kills_at_random_steps_end_bitwise_equal(train_setup):
    root = train_setup
    random.seed(1234)
    run_cli(_train_args("straight"), root)

    code, err = _start_and_stop(root, "cut", signal.SIGTERM, after_steps=10)
    assert code == EXIT_PREEMPTED, err
    assert "SIGTERM" in err and not (root / "out/cut/model.pt").exists()
    stopped_at = _checkpoint_step(root, "cut")

    code, err = _start_and_stop(root, "cut", signal.SIGKILL, after_steps=20)
    assert code == -signal.SIGKILL
    killed_after = _checkpoint_step(root, "cut")
    assert killed_after >= stopped_at + 20 and not (root / "out/cut/model.pt").exists()

    code, err = _start_and_stop(root, "cut", signal.SIGUSR1, after_steps=10)
    assert code == EXIT_PREEMPTED, err
    assert "SIGUSR1" in err

    run_cli(_train_args("cut"), root)
    straight, cut = _weights(root, "straight"), _weights(root, "cut")
    for part in ("net", "ema"):
        assert straight[part].keys() == cut[part].keys()
        for key in straight[part]:
            assert torch.equal(straight[part][key], cut[part][key]), (part, key)
    assert straight["step"] == cut["step"] == 120
    # No temporary or partial files are left next to the outputs.
    assert sorted(p.name for p in (root / "out/cut").iterdir()) == sorted(
        p.name for p in (root / "out/straight").iterdir()
    )
    assert not (root / "ckpt/cut").exists()
    # The snapshots for FID versus iterations survive the interruptions, equal to the uninterrupted run's.
    for step in (55, 120):
        name = f"snapshots/step{step}.pt"
        a = torch.load(root / "out/straight" / name, weights_only=True)
        b = torch.load(root / "out/cut" / name, weights_only=True)
        assert a["step"] == b["step"] == step
        for part in ("net", "ema"):
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (step, part)
