"""The real drivers on the smoke configuration: Snakemake and DVC each run the pipeline end to end."""

import hashlib
import json
import math
import re
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from diffusion_curriculum.timesteps.curriculum import TRANSITION_COLUMNS

from conftest import run_cli

CLUSTERS = 4  # configs/smoke.yaml
REPORT_FIGURES = ("fid_vs_iterations", "samples", "loss_bins", "curriculum_timeline", "kl", "convergence")

pytestmark = pytest.mark.e2e


def _check_outputs(root):
    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    assert manifest["count"] == 500 and manifest["shape"] == [28, 28, 1] and manifest["num_classes"] == 10
    for method in ("vanilla", "dtd"):
        run = root / "results/train" / method / "seed0"
        bins = pd.read_parquet(run / "loss_bins.parquet")
        assert set(bins["bin"]) == set(range(CLUSTERS)) and bins["step"].max() == 40
        summary = json.loads((run / "summary.json").read_text())
        assert summary["iterations"] == 40 and np.isfinite(summary["final_loss"])
        transitions = pd.read_parquet(run / "transitions.parquet")
        # Both numberings: ours (step, stages) and Algorithm 2's (iteration, interval indices).
        assert list(transitions.columns) == TRANSITION_COLUMNS
        snapshots = sorted(p.name for p in (run / "snapshots").glob("step*.pt"))
        assert snapshots == ["step20.pt", "step40.pt"]
        for step in (20, 40):
            sample_dir = root / "results/samples" / method / "seed0" / f"step{step}"
            with np.load(sample_dir / "samples.npz") as npz:
                assert npz["images"].shape == (20, 28, 28, 1) and npz["images"].dtype == np.uint8
                assert npz["labels"].tolist() == [i % 10 for i in range(20)]
            settings = json.loads((sample_dir / "settings.json").read_text())
            assert (
                settings["sampler"] == "ddpm" and settings["steps"] == 20 and settings["model_step"] == step
            )
            scores = json.loads(
                (root / "results/metrics" / method / "seed0" / f"step{step}.json").read_text()
            )
            assert scores["step"] == step and scores["num_samples"] == 20
            for name in ("fid", "kid", "is_mean", "precision", "recall"):
                assert math.isfinite(scores[name]), (method, step, name)
            assert 0 <= scores["class_agreement"] <= 1 and "class_agreement_skipped" not in scores
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
    assert first_rows.query("count > 0")["bin"].min() >= CLUSTERS - 1 - int(dtd["step"].lt(10).sum())
    _check_observational_study(root)
    _check_report(root)


def _check_observational_study(root):
    for i in range(1, CLUSTERS + 1):
        curve = pd.read_parquet(root / f"results/experts/expert{i}/loss_curve.parquet")
        assert curve["step"].tolist() == list(range(2, 21, 2)) and np.isfinite(curve["loss"]).all()
    for i in (1, 4):  # experts.stitch_intervals
        stitched = json.loads((root / f"results/metrics/stitch/expert{i}.json").read_text())
        assert math.isfinite(stitched["fid"])
    convergence = pd.read_parquet(root / "results/convergence/convergence.parquet")
    assert convergence["interval"].tolist() == list(range(1, CLUSTERS + 1))
    assert convergence["settled"].dtype == bool
    kl = pd.read_parquet(root / "results/kl/kl.parquet")
    assert len(kl) == 999 and np.isfinite(kl[["kl", "kl_null", "kl_null_exact"]].to_numpy()).all()
    # The null's own-component term dominates at t = 1 although the reference's true KL there is tiny.
    assert kl["kl_null"].iloc[0] > 100 * kl["kl_null_exact"].iloc[0]
    score = pd.read_parquet(root / "results/kl/kl_score.parquet")
    assert len(score) == 8 and (score["t"] - score["t_prev"] == 1).all()  # kl.score.grid_points
    assert score["t"].iloc[0] == 1 and set(score["expert"]) <= set(range(1, CLUSTERS + 1))
    assert np.isfinite(score["kl"]).all()
    floor = json.loads((root / "results/metrics/floor.json").read_text())
    assert floor["num_samples"] == 20 and floor["fid_low"] <= floor["fid"] <= floor["fid_high"]
    assert floor["num_sets"] == len(floor["sets"]) >= 2  # disjoint real sets give the floor its interval
    assert floor["class_matched"]  # a class-conditional model's floor sets hold the samples' classes
    assert floor["class_agreement_low"] <= floor["class_agreement"] <= floor["class_agreement_high"]
    curriculum = json.loads((root / "results/curriculum/curriculum.json").read_text())
    assert curriculum["rule"] == "uniform" and curriculum["order_easy_to_hard"] == [3, 2, 1, 0]
    features = json.loads((root / "results/features/feature_net.json").read_text())
    assert features["trained"] and 0 <= features["test_accuracy"] <= 1


def _check_report(root):
    out = root / "results/report"
    table = pd.read_parquet(out / "summary.parquet")
    final_fid = table.query("metric == 'fid'").set_index("method")["mean"]
    assert set(final_fid.index) == {"vanilla", "dtd"} and np.isfinite(final_fid).all()
    headline = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(headline["dtd"]["fid"]) and headline["vanilla"]["fid_diff_vs_baseline"] == 0
    summary_md = (out / "summary.md").read_text()
    assert "| dtd" in summary_md and "| real data (floor)" in summary_md
    assert headline["floor"]["fid"] is not None and "class_agreement" in headline["vanilla"]
    findings = (out / "findings.md").read_text()
    assert "settled on a plateau" in findings and "null" in findings and "Score estimator" in findings
    html = (out / "report.html").read_text()
    for name in REPORT_FIGURES:
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) > 200
        assert f"({name}.png)" in (out / "report.md").read_text()
    assert html.count("data:image/png;base64,") == len(REPORT_FIGURES)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must not load anything"
    # Where it came from (commit, params file and hash, versions), and findings' bullets as lists.
    assert "Provenance:" in html and "params file: <code>params.yaml</code>" in html and "torch " in html
    assert "<ul><li>class agreement:" in html
    assert "Equal cells of the unit interval (the paper)" in html  # the clusters' choice in words


def test_snakemake_runs_the_smoke_pipeline_and_then_has_nothing_to_do(smoke_snakemake_run):
    root = smoke_snakemake_run
    _check_outputs(root)
    assert (root / "logs/train/vanilla/seed0.log").read_text().count("train[vanilla, seed 0]") == 1
    dry = run_cli(["snakemake", "--cores", "2", "-n"], root)
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_snakemake_report_holds_the_figures(smoke_snakemake_run, tmp_path):
    target = tmp_path / "report.zip"
    run_cli(["snakemake", "--report", str(target)], smoke_snakemake_run)
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
    for name in REPORT_FIGURES:
        assert any(n.endswith(f"{name}.png") for n in names), names


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


def test_dvc_experiment_changes_params_and_metrics_that_diff_shows(smoke_dvc_run, tmp_path):
    root = tmp_path / "pipeline"
    shutil.copytree(smoke_dvc_run, root, symlinks=True)
    for args in (
        ["git", "config", "user.email", "test@localhost"],
        ["git", "config", "user.name", "test"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "smoke baseline"],
    ):
        run_cli(args, root)
    # Pairing against dtd instead of vanilla reruns only the report.
    run = run_cli(["dvc", "exp", "run", "-n", "dtd-baseline", "-S", "report.baseline=dtd"], root)
    assert "Running stage 'aggregate'" in run.stdout and "Running stage 'train" not in run.stdout

    params = json.loads(run_cli(["dvc", "params", "diff", "HEAD", "dtd-baseline", "--json"], root).stdout)
    assert params["params.yaml"]["report.baseline"] == {"old": "vanilla", "new": "dtd"}
    metrics = json.loads(run_cli(["dvc", "metrics", "diff", "HEAD", "dtd-baseline", "--json"], root).stdout)
    changed = metrics["results/report/metrics.json"]
    assert changed["vanilla.fid_diff_vs_baseline"]["old"] == 0
    assert changed["vanilla.fid_diff_vs_baseline"]["new"] != 0
    shown = run_cli(["dvc", "exp", "show", "--json"], root).stdout
    assert '"name": "dtd-baseline"' in shown and '"baseline": "dtd"' in shown


# Everything the stages write, except logs, figures and the report (their bytes carry no decision).
COMPARED_OUTPUTS = (
    "data/**/*.parquet",
    "results/train/**/*.pt",
    "results/train/**/*.parquet",
    "results/train/**/summary.json",
    "results/experts/**/*.pt",
    "results/experts/**/*.parquet",
    "results/samples/**/samples.npz",
    "results/features/*.npz",
    "results/features/*.pt",
    "results/kl/*.parquet",
    "results/metrics/**/*.json",
)


def _digests(root):
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for pattern in COMPARED_OUTPUTS
        for path in sorted(root.glob(pattern))
    }


def test_both_drivers_write_byte_identical_outputs(smoke_snakemake_run, smoke_dvc_run):
    """Two separate runs of the same configuration (one per driver) give the same bytes: model files,
    arrays, tables and metrics carry no temporary names, timestamps or timings."""
    ours, theirs = _digests(smoke_snakemake_run), _digests(smoke_dvc_run)
    assert len(ours) > 40 and set(ours) == set(theirs)
    differ = sorted(name for name in ours if ours[name] != theirs[name])
    assert not differ, differ


def test_forced_rerun_of_a_stage_leaves_its_consumers_up_to_date(smoke_dvc_run, tmp_path):
    root = tmp_path / "pipeline"
    shutil.copytree(smoke_dvc_run, root, symlinks=True)
    run_cli(["dvc", "repro", "-f", "-s", "train@vanilla-0"], root)
    status = run_cli(["dvc", "status"], root)
    assert "up to date" in status.stdout, status.stdout


def test_a_params_path_with_spaces_quotes_and_a_command_reaches_the_stage_intact(pipeline_dir):
    """``--configfile`` paths go through the shell quoted: the stage reads exactly that file (its
    max_images shows in the output) and nothing in the name is executed."""
    cfg = yaml.safe_load((pipeline_dir / "params.yaml").read_text())
    cfg["data"]["max_images"] = 123
    odd = "my params'$(touch PWNED).yaml"
    (pipeline_dir / odd).write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_cli(["snakemake", "data/prepared/manifest.json", "--cores", "1", "--configfile", odd], pipeline_dir)
    assert json.loads((pipeline_dir / "data/prepared/manifest.json").read_text())["count"] == 123
    assert not list(pipeline_dir.rglob("PWNED"))


def test_dvc_plots_show_returns_every_declared_plot(smoke_dvc_run):
    """`dvc plots show --json` on a finished run renders each plot dvc.yaml declares, without errors, with
    one line per method (and the real-data floor) in the FID curve."""
    declared = {
        next(iter(entry)) for entry in yaml.safe_load((smoke_dvc_run / "dvc.yaml").read_text())["plots"]
    }
    shown = json.loads(run_cli(["dvc", "plots", "show", "--json"], smoke_dvc_run).stdout)
    assert not shown.get("errors"), shown.get("errors")
    assert set(shown["data"]) == declared and len(declared) == 4
    fid = next(v for k, v in shown["data"].items() if k.startswith("FID"))[0]["content"]["data"]["values"]
    assert {row["series"] for row in fid} == {"vanilla", "dtd", "real data (floor)"}


def test_dvc_metrics_show_loads_every_metrics_file(smoke_dvc_run):
    """Every declared metrics file loads (no "failed to load some metrics"), one row per file."""
    proc = run_cli(["dvc", "metrics", "show", "--md"], smoke_dvc_run)
    output = proc.stdout + proc.stderr
    assert "failed" not in output.lower() and "error" not in output.lower(), output[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| results/")]
    assert len(rows) == len({row.split("|")[1].strip() for row in rows}) > 10
    assert any(row.startswith("| results/report/metrics.json") for row in rows)
