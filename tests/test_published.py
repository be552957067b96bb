"""The committed CPU study (docs/results/cpu_study/, written by docs/examples/cpu_study.sh): the numbers
a reader quotes are all there, with their intervals, the floor, the detectable differences and the
record of how the run was made, and the documents agree with metrics.json."""

from __future__ import annotations

import json
import math

import pytest

from diffusion_curriculum import report
from diffusion_curriculum.stages import params

from conftest import REPO

FOLDER = REPO / "docs" / "results" / "cpu_study"
SNAPSHOT_METRICS = ("class_agreement", "fid", "kid", "precision", "recall")


@pytest.fixture(scope="module")
def published() -> dict:
    return json.loads((FOLDER / "metrics.json").read_text())


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_every_method_has_every_metric_with_its_interval(published):
    cfg = params.load(REPO / "configs" / "cpu_study.yaml")
    for method in cfg["study"]["methods"]:
        entry = published[method]
        for metric in (*SNAPSHOT_METRICS, "fid_area", "class_agreement_area"):
            assert _finite(entry[metric]) and _finite(entry[f"{metric}_ci"]), (method, metric)
        if method != cfg["report"]["baseline"]:
            for metric in report.TESTED_METRICS:
                if entry.get(f"{metric}_p_holm") is None:  # steps to reach: fewer than 2 seeds reached
                    assert metric == report.REACH_METRIC, (method, metric)
                    continue
                assert 0.0 <= entry[f"{metric}_p_holm"] <= 1.0, (method, metric)
                assert isinstance(entry[f"{metric}_significant"], bool)


def test_the_floor_and_the_detectable_differences_are_reported(published):
    floor = published["floor"]
    for metric in ("class_agreement", "fid", "kid"):
        assert _finite(floor[metric]), metric
        assert floor[f"{metric}_low"] <= floor[metric] <= floor[f"{metric}_high"], metric  # over its sets
    detectable = published["minimum_detectable_difference"]
    assert set(detectable) == set(report.TESTED_METRICS)
    assert all(_finite(v) and v > 0 for v in detectable.values()), detectable


def test_the_run_is_recorded(published):
    record = published["provenance"]
    assert len(record["commit"]) == 40 and record["params_file"] == "configs/cpu_study.yaml"
    assert record["cpus"] >= 1 and record["cpu_model"] and record["wall_time_s"] > 0
    assert record["command"].startswith("bash docs/examples/cpu_study.sh")
    run = (FOLDER / "RUN.md").read_text()
    assert record["commit"] in run and "| `train` |" in run
    documents = ("summary.md", "findings.md", "report.html", "fid_vs_iterations.png", "samples.png", "kl.png")
    for name in documents:
        assert (FOLDER / name).stat().st_size > 0, name


def test_the_documents_quote_metrics_json(published):
    summary = (FOLDER / "summary.md").read_text()
    cfg = params.load(REPO / "configs" / "cpu_study.yaml")
    for method in cfg["study"]["methods"]:
        entry = published[method]
        for metric in ("fid", "class_agreement"):
            assert report.format_mean_ci(entry[metric], entry[f"{metric}_ci"]) in summary, (method, metric)


def test_the_publish_script_reads_job_times_from_a_snakemake_log(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_study", REPO / "docs/examples/publish_study.py")
    publish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish)
    log = tmp_path / "run.snakemake.log"
    log.write_text(
        "[Tue Dec  1 11:04:06 2026]\nlocalrule train:\n    output: a\n    jobid: 7\n"
        "[Tue Dec  1 11:04:10 2026]\nrule sample:\n    jobid: 12\n"
        "[Tue Dec  1 11:04:40 2026]\nFinished jobid: 12 (Rule: sample)\n"
        "[Tue Dec  1 11:07:26 2026]\nFinished jobid: 7 (Rule: train)\n"
    )
    durations, span = publish.job_times(log)
    assert durations == {"sample": [30.0], "train": [200.0]} and span == 200.0
    assert publish.stage_table(durations)[2].startswith("| `train` | 1 | 200 s (200–200) | 200 |")


def test_the_study_has_its_a_a_null_and_says_what_it_found(published):
    """The replicate of vanilla on other random streams is in the study and findings.md reports it."""
    cfg = params.load(REPO / "configs" / "cpu_study.yaml")
    nulls = [
        m for m, entry in cfg["strategies"].items() if m in cfg["study"]["methods"] and "seed_offset" in entry
    ]
    assert nulls and all(cfg["strategies"][m]["kind"] == cfg["report"]["baseline"] for m in nulls)
    findings = (FOLDER / "findings.md").read_text()
    for method in nulls:
        assert f"- `{method}` is `{cfg['report']['baseline']}` again on other random streams" in findings
