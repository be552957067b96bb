"""The real drivers on the smoke configuration: Snakemake and DVC each run the pipeline end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import run_cli

pytestmark = pytest.mark.e2e


def _check_outputs(root):
    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    assert manifest["count"] == 500 and manifest["shape"] == [28, 28, 1] and manifest["num_classes"] == 10
    for method in ("vanilla", "dtd"):
        run = root / "results/train" / method / "seed0"
        bins = pd.read_parquet(run / "loss_bins.parquet")
        assert set(bins["bin"]) == set(range(20)) and bins["step"].max() == 40
        summary = json.loads((run / "summary.json").read_text())
        assert summary["iterations"] == 40 and np.isfinite(summary["final_loss"])
        transitions = pd.read_parquet(run / "transitions.parquet")
        assert list(transitions.columns) == ["step", "from_stage", "to_stage"]
        with np.load(root / "results/samples" / method / "seed0/samples.npz") as npz:
            assert npz["images"].shape == (20, 28, 28, 1) and npz["images"].dtype == np.uint8
            assert npz["labels"].tolist() == [i % 10 for i in range(20)]
        settings = json.loads((root / "results/samples" / method / "seed0/settings.json").read_text())
        assert settings["sampler"] == "ddpm" and settings["steps"] == 20 and settings["model_step"] == 40
        # A finished run leaves no resumable state behind.
        assert not (root / "checkpoints/train" / method / "seed0").exists()
    # vanilla has no stages; dtd (tau_max 0) climbs through several clusters, easiest first, and the
    # effective timestep histogram shows it: early log rows see only high-noise bins.
    assert pd.read_parquet(root / "results/train/vanilla/seed0/transitions.parquet").empty
    dtd = pd.read_parquet(root / "results/train/dtd/seed0/transitions.parquet")
    assert (
        len(dtd) >= 3
        and (dtd["to_stage"] == dtd["from_stage"] + 1).all()
        and dtd["step"].is_monotonic_increasing
    )
    first_rows = pd.read_parquet(root / "results/train/dtd/seed0/loss_bins.parquet").query("step == 10")
    assert first_rows.query("count > 0")["bin"].min() >= 20 - 1 - int(dtd["step"].lt(10).sum())


def test_snakemake_runs_the_smoke_pipeline_and_then_has_nothing_to_do(smoke_snakemake_run):
    root = smoke_snakemake_run
    _check_outputs(root)
    assert (root / "logs/train/vanilla/seed0.log").read_text().count("train[vanilla, seed 0]") == 1
    dry = run_cli(["snakemake", "--cores", "2", "-n"], root)
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_dvc_repro_runs_the_smoke_pipeline(smoke_dvc_run):
    _check_outputs(smoke_dvc_run)
    status = run_cli(["dvc", "status"], smoke_dvc_run)
    assert "up to date" in status.stdout


def test_snakemake_refuses_config_overrides_the_stages_would_not_see(pipeline_dir):
    proc = run_cli(["snakemake", "-n", "--config", 'sample={"sampler": "ddim"}'], pipeline_dir, check=False)
    assert proc.returncode != 0
    assert "--config" in proc.stdout + proc.stderr


def test_snakemake_names_a_bad_params_key(pipeline_dir):
    cfg = yaml.safe_load((pipeline_dir / "params.yaml").read_text())
    cfg["sample"]["stepz"] = 3
    (pipeline_dir / "params.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli(["snakemake", "-n"], pipeline_dir, check=False)
    assert proc.returncode != 0
    assert "sample.stepz" in proc.stdout + proc.stderr
