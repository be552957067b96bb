"""The paper-scale presets in configs/: each passes the schema, dry-runs under both drivers, and is what
the stages read.  A preset is switched with one command: ``snakemake --configfile configs/NAME.yaml`` or
``cp configs/NAME.yaml params.yaml && dvc repro``.
"""

import re
from pathlib import Path

import pytest
import yaml

from diffusion_curriculum.stages import params

from conftest import REPO, run_cli
from test_parity import dvc_stages, snakemake_jobs

pytestmark = pytest.mark.e2e

PRESETS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml") if p.stem != "smoke")
PAPER_PRESETS = {"ffhq_dit_b", "imagenet_dit_b", "imagenet_dit_l", "cifar10_edm", "ffhq_sit_b", "coco_t2i"}


def test_the_issue_presets_exist():
    assert set(PRESETS) >= PAPER_PRESETS


@pytest.mark.parametrize("name", [*PRESETS, "smoke"])
def test_preset_passes_the_schema(name):
    params.load(REPO / "configs" / f"{name}.yaml")


def test_presets_keep_the_paper_hyper_parameters():
    for name in PAPER_PRESETS:
        cfg = params.load(REPO / "configs" / f"{name}.yaml")
        train = cfg["train"]
        assert (train["lr"], train["weight_decay"], train["ema_decay"], train["batch_size"]) == (
            1e-4,
            0.0,
            0.9999,
            256,
        ), name
        assert cfg["curriculum"]["num_clusters"] == 20, name
        assert cfg["sample"]["num_samples"] == 50000, name
        tau = 400 if cfg["model"]["name"] == "DiT-L/2" else 200
        assert cfg["strategies"]["dtd"]["tau_max"] == tau, name
        conditional = cfg["model"]["condition"] != "none"
        assert cfg["sample"]["cfg_scale"] == (1.5 if conditional else 1.0), name
    schedules = {
        params.load(REPO / "configs" / f"{n}.yaml")["diffusion"]["vp"]["beta_schedule"]
        for n in ("imagenet_dit_b", "imagenet_dit_b_linear")
    }
    assert schedules == {"cosine", "linear"}


def _expected_jobs(cfg: dict) -> dict[str, int]:
    runs = len(cfg["study"]["methods"]) * len(cfg["study"]["seeds"])
    return {
        "train": runs,
        "sample": runs * len(cfg["train"]["snapshots"]),
        "train_expert": cfg["curriculum"]["num_clusters"],
        "stitch_sample": len(cfg["experts"]["stitch_intervals"]),
        "encode_latents": 1,
    }


@pytest.mark.parametrize("name", PRESETS)
def test_preset_dry_runs_under_both_drivers(name, pipeline_dir):
    preset = f"configs/{name}.yaml"
    cfg = params.load(REPO / preset)
    expected = _expected_jobs(cfg)

    jobs = snakemake_jobs(pipeline_dir, "--configfile", preset)
    # Every stage is told to read the preset: a --configfile is never silently dropped.
    read = {Path(re.search(r"--params (\S+)", cmd).group(1)) for cmd in jobs}
    assert {p if p.is_absolute() else pipeline_dir / p for p in read} == {pipeline_dir / preset}
    counts = {rule: sum(job["rule"] == rule for job in jobs.values()) for rule in expected}
    assert counts == expected

    # The documented DVC switch (diffusion-curriculum compose PRESET -o params.yaml); DVC expands
    # dvc.yaml's foreach stages from it.  The stage list is read in-process (what `dvc repro --dry`
    # walks, without its 4-5 s of CLI start-up per preset).
    params.write_composed(pipeline_dir / preset, pipeline_dir / "params.yaml")
    stages = [stage["rule"] for stage in dvc_stages(pipeline_dir).values()]
    assert {rule: stages.count(rule) for rule in expected} == expected


def test_stages_read_the_configfile_snakemake_was_given(pipeline_dir):
    """Run prepare_data for real under a --configfile that differs from params.yaml in what it loads."""
    custom = params.compose(REPO / "configs" / "smoke.yaml")
    custom["data"].update(source="sklearn_digits", max_images=123)
    (pipeline_dir / "configs" / "custom.yaml").write_text(yaml.safe_dump(custom))
    run_cli(
        ["snakemake", "data/prepared/manifest.json", "--cores", "1", "--configfile", "configs/custom.yaml"],
        pipeline_dir,
    )
    manifest = yaml.safe_load((pipeline_dir / "data" / "prepared" / "manifest.json").read_text())
    assert (manifest["count"], manifest["source"]) == (123, "sklearn_digits")


def test_a_config_override_that_no_stage_would_see_is_refused(pipeline_dir):
    proc = run_cli(
        ["snakemake", "-n", "--cores", "1", "--config", "train={'iterations': 7}"],
        pipeline_dir,
        check=False,
    )
    assert proc.returncode != 0
    assert "would not reach the stages, which read a params file" in proc.stdout + proc.stderr


def test_the_cpu_study_holds_the_settings_fixed_before_it_ran():
    """docs/DECISIONS.md "The CPU study": the methods, the power, dtd's patience scaled by its rule, and
    a sample count that the held-out split can match with a floor and a disjoint reference."""
    cfg = params.load(REPO / "configs" / "cpu_study.yaml")
    methods = cfg["study"]["methods"]
    assert {"vanilla", "dtd", "naive_cl", "anti_cl"} <= set(methods)
    assert len(set(methods) & {"clts", "speed", "min_snr", "logit_normal"}) >= 2
    assert len(cfg["study"]["seeds"]) >= 5 and len(cfg["train"]["snapshots"]) >= 5
    iterations = cfg["train"]["iterations"]
    for method in ("dtd", "anti_cl"):
        assert cfg["strategies"][method]["tau_max"] == max(1, round(200 * iterations / 100_000))
    stitched = cfg["experts"]["stitch_intervals"]
    assert len(stitched) >= 8 and min(stitched) == 1 and max(stitched) == cfg["curriculum"]["num_clusters"]
    held_out = int(5000 * cfg["features"]["domain"]["test_fraction"])
    assert held_out >= 2 * cfg["sample"]["num_samples"]  # floor and reference statistics, disjoint
    assert cfg["kl"]["score"]["source"] == "experts"  # both KL estimators run


def _dag(root: Path, config: str) -> dict[tuple, frozenset]:
    """(rule, outputs) -> inputs of every job of the full DAG under ``config``."""
    jobs = snakemake_jobs(root, "--configfile", config).values()
    return {(job["rule"], frozenset(job["outputs"])): frozenset(job["inputs"]) for job in jobs}


@pytest.mark.parametrize("grow", ["seed", "method"])
def test_the_cpu_study_grows_by_its_own_jobs(pipeline_dir, tmp_path, grow):
    """Adding a seed or a method to the study adds exactly that run's train, sample and evaluate jobs;
    every other job keeps its inputs (and reads no `study` key), except the report.  That no finished
    job then reruns is what tests/test_rerun.py checks on a real run under both drivers."""
    preset = "configs/cpu_study.yaml"
    cfg = params.compose(pipeline_dir / preset)
    study, steps = cfg["study"], cfg["train"]["snapshots"]
    if grow == "seed":
        study = {**study, "seeds": [*study["seeds"], 5]}
        new_runs = [f"{m}/seed5/" for m in study["methods"]]
    else:
        study = {**study, "methods": [*study["methods"], "min_snr"]}
        new_runs = [f"min_snr/seed{s}/" for s in study["seeds"]]
    grown = tmp_path / "grown.yaml"
    grown.write_text(yaml.safe_dump(dict(cfg, study=study), sort_keys=False))

    before, after = _dag(pipeline_dir, preset), _dag(pipeline_dir, str(grown))
    added = set(after) - set(before)
    assert set(before) <= set(after)
    assert all(any(run in out for out in outputs for run in new_runs) for _, outputs in added)
    runs = len(new_runs)
    assert sorted(rule for rule, _ in added) == sorted(
        ["train"] * runs + ["sample"] * runs * len(steps) + ["evaluate"] * runs * len(steps)
    )
    assert {key[0] for key, inputs in before.items() if after[key] != inputs} == {"aggregate"}
    rules = (REPO / "workflow" / "rules").glob("*.smk")
    calls = {f.name: re.findall(r"sections\(([^)]*)\)", f.read_text()) for f in rules}
    readers = {name for name, found in calls.items() if any('"study' in call for call in found)}
    assert readers == {"report.smk"}  # the only rule whose params trigger sees the grid
