"""params.yaml and its schema: every shipped file validates, and bad files name the bad key or path."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffusion_curriculum.stages import params

REPO = Path(__file__).resolve().parent.parent
PARAM_FILES = [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))]


@pytest.fixture
def good() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_shipped_params_files_validate(path):
    params.load(path)


def test_unknown_key_is_named(good):
    good["train"]["learning_rate"] = 1e-4
    with pytest.raises(params.ParamsError, match=r"unknown key train\.learning_rate"):
        params.validate(good)


def test_unknown_section_is_named(good):
    good["trian"] = {}
    with pytest.raises(params.ParamsError, match=r"unknown key trian"):
        params.validate(good)


def test_missing_key_is_named(good):
    del good["sample"]["cfg_scale"]
    with pytest.raises(params.ParamsError, match=r"missing required key sample\.cfg_scale"):
        params.validate(good)


def _with(config: dict, path: tuple, value) -> dict:
    """A copy of ``config`` with the key at ``path`` set to ``value``."""
    changed = copy.deepcopy(config)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("train", "lr"), "fast", r"train\.lr"),
        (("train", "iterations"), 0, r"train\.iterations"),
        (("diffusion", "framework"), "ve", r"diffusion\.framework"),
        (("diffusion", "vp", "beta_schedule"), "quadratic", r"diffusion\.vp\.beta_schedule"),
        (("model", "name"), "DiT-M/2", r"model\.name"),
        (("study", "methods"), ["vanilla", "vanilla"], r"study\.methods"),
        (("data", "max_images"), -5, r"data\.max_images"),
        (("train", "device"), "tpu", r"train\.device"),
    ],
)
def test_wrong_value_is_named(good, path, value, named):
    with pytest.raises(params.ParamsError, match=named):
        params.validate(_with(good, path, value))


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("train", "snapshots"), [300, 5000], r"train\.snapshots \[5000\] lie beyond train\.iterations"),
        (("train", "snapshots"), [300, 600], r"train\.snapshots must include the final step"),
        (("experts", "intervals"), [1, 2, 3], r"experts\.intervals must list 1\.\.curriculum\.num_clusters"),
        (("experts", "stitch_base"), {"method": "speed", "seed": 0}, r"experts\.stitch_base"),
        (("report", "baseline"), "speed", r"report\.baseline 'speed' is not one of study\.methods"),
        (("convergence", "start"), 60, r"convergence\.band 'fit' needs 8 log rows after convergence\.start, "
         r"but experts\.iterations = 80, convergence\.start = 60 and experts\.log_every = 5 leave 4"),
    ],
)  # fmt: skip
def test_keys_that_must_agree_are_named(good, path, value, named):
    with pytest.raises(params.ParamsError, match=named):
        params.validate(_with(good, path, value))


def test_the_fit_rows_check_is_the_measure_s_own():
    from diffusion_curriculum import difficulty

    assert params.FIT_MIN_ROWS == difficulty.FIT_MIN_ROWS


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("train", "ema_decay"), float("nan"), r"train\.ema_decay: nan is not a finite number"),
        (("train", "lr"), float("inf"), r"train\.lr: inf is not a finite number"),
        (
            ("kl", "score", "num_samples"),
            float("-inf"),
            r"kl\.score\.num_samples: -inf is not a finite number",
        ),
        (
            ("train", "snapshots"),
            [500.0, 1000.0],
            r"train\.snapshots\.0: 500\.0 must be an integer \(write 500\)",
        ),
        (("train", "iterations"), 1000.0, r"train\.iterations: 1000\.0 must be an integer"),
        (("convergence", "window"), 10.0, r"convergence\.window: 10\.0 must be an integer"),
        (("train", "batch_size"), True, r"train\.batch_size"),
    ],
)
def test_non_finite_numbers_and_float_integers_are_refused(good, path, value, named):
    with pytest.raises(params.ParamsError, match=named):
        params.validate(_with(good, path, value))


def test_score_estimator_without_a_trained_model_is_a_params_error(good):
    no_model = _with(good, ("kl", "score", "source"), "none")
    params.validate(no_model)  # the mixture estimator needs no model
    with pytest.raises(
        params.ParamsError, match=r"kl\.estimator is 'score', but kl\.score\.source is 'none'"
    ):
        params.validate(_with(no_model, ("kl", "estimator"), "score"))
    params.validate(_with(good, ("kl", "estimator"), "score"))


def test_sections_returns_only_the_named_ones():
    got = params.sections(REPO / "params.yaml", "sample")
    assert list(got) == ["sample"]


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(params.ParamsError, match="nowhere.yaml"):
        params.load(tmp_path / "nowhere.yaml")


def _stage(args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_stage_with_a_missing_dataset_path_names_it(tmp_path, good):
    good["data"]["source"] = "cifar10"
    good["data"]["path"] = str(tmp_path / "no-such-cifar")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(good))
    proc = _stage(["diffusion_curriculum.stages.prepare_data", "--out-dir", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 2
    assert "no-such-cifar" in proc.stderr
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_stage_with_a_bad_key_names_it_and_writes_nothing(tmp_path, good):
    good["data"]["sauce"] = "mnist"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(good))
    proc = _stage(["diffusion_curriculum.stages.prepare_data", "--out-dir", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 2
    assert "data.sauce" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, True), (False, True, True), (False, False, False), (None, None, False)],
)
def test_precision_auto_takes_bf16_where_the_cpu_has_it_in_hardware(monkeypatch, amx, avx512_bf16, expected):
    import torch

    from diffusion_curriculum.stages.params import resolve_bf16

    for name, value in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if value is None:  # a torch without the probe
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda value=value: value)
    assert resolve_bf16("auto", "cpu") is expected
    assert resolve_bf16("fp32", "cpu") is False and resolve_bf16("bf16", "cpu") is True
    assert resolve_bf16("auto", "cuda:0") is True
