"""benchmarks/gpu_check.sh: the one-shot GPU check, run in its --dry form (tiny sizes, CPU) so that every
part's code path is known to work before a GPU is at hand, and its merge and time budget checked.
"""

import importlib
import json
import math
import sys

import pytest
import yaml

from conftest import REPO, run_cli

BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_check  # noqa: E402

sys.path.remove(str(BENCHMARKS))


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_the_caps_fit_eight_minutes_on_a_gpu():
    assert set(gpu_check.CAPS) == set(gpu_check.DRY_CAPS) == set(gpu_check.PARTS)
    assert gpu_check.TOTAL_S <= 480
    assert sum(gpu_check.CAPS.values()) + gpu_check.MERGE_RESERVE_S <= gpu_check.TOTAL_S
    out = run_cli([sys.executable, str(BENCHMARKS / "gpu_check.py"), "caps"], REPO).stdout
    caps = dict(line.split() for line in out.splitlines())
    assert int(caps.pop("total")) <= 480 and int(caps.pop("reserve")) == gpu_check.MERGE_RESERVE_S
    assert {k: int(v) for k, v in caps.items()} == gpu_check.CAPS


@pytest.mark.parametrize("dry", [False, True])
def test_the_pipeline_slice_is_a_valid_params_file(dry):
    try:
        params = importlib.import_module("stages.params")
    except ImportError:
        params = importlib.import_module("diffusion_curriculum.stages.params")
    cfg = gpu_check.slice_params(dry)
    params.validate(yaml.safe_load(yaml.safe_dump(cfg)), source="slice")
    assert cfg["study"] == {"methods": ["vanilla", "dtd"], "seeds": [0]}
    if not dry:
        base = params.compose(REPO / "configs/gpu_study.yaml")
        assert cfg["model"] == base["model"] and cfg["train"]["batch_size"] == base["train"]["batch_size"]
        assert 100 <= cfg["train"]["iterations"] <= 1000


def test_merge_reports_timeouts_failures_and_judges_the_targets(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()

    def part(name, rc, status="ok", **figures):
        (parts / f"{name}.json").write_text(json.dumps({"part": name, "status": status, "figures": figures}))
        (parts / f"{name}.rc").write_text(f"{rc} 12 {gpu_check.CAPS[name]}\n")

    part(
        "env", 0, device="cuda", device_name="GPU", torch="2", cuda="12", commit="abc", matmul_peak_tflops={}
    )
    part("train", 0, speedup=3.5, mfu_percent=38.0)
    part("sample", 124, status="partial", speedup=2.6)  # stopped by its cap after one measurement
    part("kl", 1, status="partial")
    part("memory", 0)
    part("ddp", 0, status="skipped")
    (parts / "kl.log").write_text("Traceback\nRuntimeError: boom\n")
    record = gpu_check.merge(tmp_path, dry=False, wall=300.0)
    status = {name: rec["status"] for name, rec in record["parts"].items()}
    assert status == {
        "env": "ok", "train": "ok", "sample": "timeout", "kl": "failed", "memory": "ok", "ddp": "skipped",
        "pipeline": "not run",
    }  # fmt: skip
    assert "RuntimeError: boom" in record["parts"]["kl"]["reason"]
    assert record["parts"]["sample"]["figures"]["speedup"] == 2.6  # what it had measured is kept
    judged = {t["key"]: (t["measured"], t["pass"]) for t in record["targets"]}
    assert judged == {
        "train_speedup": (3.5, True), "train_mfu": (38.0, False), "sample_speedup": (2.6, True),
        "kl_percent_of_peak": (None, None),
    }  # fmt: skip
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == record
    assert "| training MFU" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.e2e
def test_dry_run_executes_every_part_and_merges_one_json(tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry", str(out)], tmp_path, timeout=900)
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["mode"] == "dry" and record["device"] == "cpu", proc.stdout
    assert record["torch"] and record["commit"] and _number(record["wall_s"])
    assert record["caps_s"] == gpu_check.DRY_CAPS
    parts = record["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    for name, rec in parts.items():
        assert rec["exit_code"] == 0 and rec["wall_s"] <= rec["cap_s"], (name, rec)
        if name == "ddp" and rec["status"] == "skipped":
            assert rec["reason"]
            continue
        assert rec["status"] == "ok", (name, rec)

    assert _number(record["matmul_peak_tflops"]["float32"])
    train = parts["train"]["figures"]
    assert set(train["paths"]) == {"reference", "vanilla", "dtd", "vanilla+compile"}
    assert train["flops_per_image"] == pytest.approx(train["flops_per_image_analytic"], rel=0.02)
    for fig in train["paths"].values():
        assert all(
            _number(fig[k]) and fig[k] > 0 for k in ("step_ms", "images_per_s", "mfu_percent", "speedup")
        )
    sample = parts["sample"]["figures"]
    assert set(sample["paths"]) == {"reference", "project", "project+compile"}
    assert sample["paths"]["project"]["rel_diff_vs_reference"] < 1e-5  # fp32 on both sides on a CPU
    for key in ("train", "sample"):
        assert _number(parts[key]["figures"]["speedup"]) and _number(parts[key]["figures"]["mfu_percent"])
    kl = parts["kl"]["figures"]
    assert (kl["M"], kl["L"], kl["D"], kl["pairs"]) == (16, 16, 48, 9)
    assert all(_number(kl[k]) and kl[k] > 0 for k in ("median_s", "achieved_tflops", "percent_of_peak"))
    memory = parts["memory"]["figures"]
    assert (
        list(memory["models"]) == ["DiT-tiny/4", "DiT-tiny/2"] and memory["largest_fitting"] == "DiT-tiny/2"
    )
    assert all(_number(m["peak_gib"]) and m["peak_gib"] > 0 for m in memory["models"].values())
    if parts["ddp"]["status"] == "ok":
        ddp = parts["ddp"]["figures"]
        assert ddp["backend"] == "gloo" and ddp["ranks_in_lockstep"] and _number(ddp["step_ms"])
    pipeline = parts["pipeline"]["figures"]
    for method in ("vanilla", "dtd"):
        run = pipeline["methods"][method]
        assert _number(run["fid"]) and run["train_device"] == "cpu", run
    assert (out / "pipeline" / "params.yaml").exists() and (out / "pipeline" / "results" / "metrics").is_dir()

    assert [t["key"] for t in record["targets"]] == [t[0] for t in gpu_check.TARGETS]
    assert all(_number(t["measured"]) and t["pass"] is None for t in record["targets"])  # dry: not judged
    assert "| target | threshold | measured | pass |" in (out / "gpu_check.md").read_text()
