"""A strategy of the user's own, in one file of the study's folder, named in params.yaml by
``kind: module:Class``, runs through the pipeline under both drivers: nothing in the library, the
schema, the presets or the pipeline files changes.  Named variants of a registered strategy too."""

import sys

import pytest
import torch
import yaml

from diffusion_curriculum.stages import params as stage_params
from diffusion_curriculum.timesteps import check_strategy_entry

from conftest import copy_pipeline, run_cli

# What a user writes: one class in one file next to params.yaml.
OWN_STRATEGY = '''
import torch

from diffusion_curriculum.timesteps import TimestepStrategy


class HighNoiseFirstHalf(TimestepStrategy):
    """Only the noisier half of the unit interval for the first `switch` steps, then all of it."""

    name = "high_noise_first_half"

    def __init__(self, schedule, intervals, switch: int = 10):
        super().__init__(schedule, intervals)
        self.switch, self.step = switch, 0

    def before_step(self, step, optimizer):
        self.step = step

    def sample(self, batch, generator, device=None):
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        low = 0.5 if self.step < self.switch else 0.0
        return self.schedule.from_unit(low + (1 - low) * u)
'''
TARGET = "results/metrics/{method}/seed0/step40.json"


def _study(root, methods, strategies):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["study"]["methods"] = methods
    params["strategies"].update(strategies)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.mark.e2e
@pytest.mark.parametrize("driver", ["snakemake", "dvc"])
def test_a_strategy_from_the_study_folder_runs_under_both_drivers(tmp_path, driver):
    root = copy_pipeline(tmp_path / "pipeline")
    (root / "my_strategies.py").write_text(OWN_STRATEGY)
    _study(root, ["vanilla", "mine"], {"mine": {"kind": "my_strategies:HighNoiseFirstHalf", "switch": 20}})
    if driver == "snakemake":
        run_cli(["snakemake", "--cores", "2", TARGET.format(method="mine")], root)
    else:
        for args in (
            ["git", "init", "-q"],
            ["dvc", "init", "-q"],
            ["dvc", "config", "core.analytics", "false"],
        ):
            run_cli(args, root)
        run_cli(["dvc", "repro", "evaluate@mine-0-40"], root)
    assert (root / TARGET.format(method="mine")).is_file()
    log = yaml.safe_load((root / "live/train/mine/seed0/metrics.json").read_text())  # JSON is YAML
    assert log["step"] == 40
    summary = yaml.safe_load((root / "results/train/mine/seed0/summary.json").read_text())
    assert summary["method"] == "mine" and summary["iterations"] == 40


def test_named_variants_and_own_strategies_are_checked_before_any_job(tmp_path, monkeypatch):
    root = copy_pipeline(tmp_path / "pipeline")
    (root / "my_strategies.py").write_text(OWN_STRATEGY)
    monkeypatch.delitem(sys.modules, "my_strategies", raising=False)
    monkeypatch.syspath_prepend(root)  # where the stages run: the study's folder
    dtd = yaml.safe_load((root / "params.yaml").read_text())["strategies"]["dtd"]
    good = _study(root, ["vanilla", "dtd", "dtd_tau50"], {"dtd_tau50": {"kind": "dtd", **dtd, "tau_max": 50}})
    stage_params.validate(good)

    def error(methods, strategies) -> str:
        params = yaml.safe_load(yaml.safe_dump(good))
        params["study"]["methods"] = methods
        params["strategies"].update(strategies)
        with pytest.raises(stage_params.ParamsError) as info:
            stage_params.validate(params, "study.yaml")
        return str(info.value)

    negative = {"dtd_tau50": {"kind": "dtd", **dtd, "tau_max": -1}}
    assert "study.yaml: strategies.dtd_tau50.tau_max" in error(["dtd_tau50"], negative)
    assert "study.methods names 'ghost', which has no entry under strategies" in error(["ghost"], {})

    def class_error(name, entry) -> str:
        with pytest.raises(ValueError) as info:
            check_strategy_entry(name, entry)
        return str(info.value)

    own = "my_strategies:HighNoiseFirstHalf"
    assert "strategies.own: unknown argument(s) speed of" in class_error("own", {"kind": own, "speed": 2})
    assert "strategies.x.kind: timestep strategy 'nowhere:X': cannot import" in class_error(
        "x", {"kind": "nowhere:X"}
    )
    check_strategy_entry("dtd_tau50", good["strategies"]["dtd_tau50"])
    # The Snakefile refuses the study before any job runs, naming the entry.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["study"]["methods"] = ["vanilla", "x"]
    params["strategies"]["x"] = {"kind": "nowhere:X"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_cli(["snakemake", "-n", "--cores", "1"], root, check=False)
    assert proc.returncode != 0 and "params.yaml: strategies.x.kind" in proc.stdout + proc.stderr


def test_a_replicate_on_other_random_streams_is_the_baseline_again_with_other_weights(tmp_path):
    """The A/A null arm: ``{kind: vanilla, seed_offset: K}`` trains vanilla on the streams of seed + K, is
    filed under its study seed (so it samples that seed's noise) and is found by the report as a null."""
    from diffusion_curriculum.report.readings import null_replicates

    root = copy_pipeline(tmp_path / "pipeline")
    params = _study(root, ["vanilla", "vanilla_aa"], {"vanilla_aa": {"kind": "vanilla", "seed_offset": 1000}})
    params["train"].update(iterations=4, snapshots=[4], log_every=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_cli([sys.executable, "-m", "diffusion_curriculum.stages.prepare_data"], root)
    models = {}
    for method in ("vanilla", "vanilla_aa"):
        run_cli(
            [sys.executable, "-m", "diffusion_curriculum.stages.train",
             "--data", "data/prepared/train.parquet", "--method", method, "--seed", "0",
             "--out-dir", f"results/train/{method}/seed0", "--checkpoint-dir", f"ckpt/{method}"],
            root,
        )  # fmt: skip
        models[method] = torch.load(root / f"results/train/{method}/seed0/model.pt", weights_only=True)
    assert models["vanilla_aa"]["seed"] == models["vanilla"]["seed"] == 0  # sampled with seed 0's noise
    first = next(iter(models["vanilla"]["ema"]))
    assert not torch.equal(models["vanilla"]["ema"][first], models["vanilla_aa"]["ema"][first])
    summary = yaml.safe_load((root / "results/train/vanilla_aa/seed0/summary.json").read_text())
    assert summary["strategy"] == "vanilla" and summary["stream_seed"] == 1000
    assert null_replicates(root / "results/train", ["vanilla", "vanilla_aa"], 0, "vanilla") == ["vanilla_aa"]

    bad = yaml.safe_load(yaml.safe_dump(params))
    bad["strategies"]["vanilla_aa"]["seed_offset"] = 0
    with pytest.raises(stage_params.ParamsError, match=r"strategies\.vanilla_aa\.seed_offset"):
        stage_params.validate(bad, "study.yaml")
