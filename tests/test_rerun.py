"""Changing one parameter (or one stage's code) reruns exactly the stages that read it, under both drivers.

Each case edits a copy of a completed smoke run and compares the drivers' plans with the expected jobs,
named ``<stage>@<method>-<seed>`` as DVC names matrix stages:

* ``dvc status`` (its ``Repo.status``, in-process) lists the stages whose own parameters, code or inputs
  changed (DVC decides about their downstream stages only once the new outputs exist, by their hashes);
* ``snakemake -n`` lists those and everything downstream of them.
"""

import contextlib
import re
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from conftest import run_cli

pytestmark = pytest.mark.e2e

METHODS, SEED, STEPS, EXPERTS, STITCHED = ("vanilla", "dtd"), 0, (20, 40), (1, 2, 3, 4), (1, 4)  # smoke.yaml
STITCH_BASE = "train@vanilla-0"
TRAIN = {f"train@{m}-{SEED}" for m in METHODS}
SAMPLE = {f"sample@{m}-{SEED}-{k}" for m in METHODS for k in STEPS}
EVALUATE = {f"evaluate@{m}-{SEED}-{k}" for m in METHODS for k in STEPS}
TRAIN_EXPERT = {f"train_expert@{i}" for i in EXPERTS}
STITCH_SAMPLE = {f"stitch_sample@{i}" for i in STITCHED}
STITCH_EVAL = {f"stitch_eval@{i}" for i in STITCHED}
SCORES = {"fid_ref", "evaluate_floor"} | EVALUATE | STITCH_EVAL  # every job that reads the feature space
DOWNSTREAM = {
    # captions.parquet feeds training and sampling directly; the images reach them through encode_latents.
    "prepare_data": {"feature_net", "fid_ref", "encode_latents"}
    | TRAIN_EXPERT
    | TRAIN
    | SAMPLE
    | STITCH_SAMPLE,
    "encode_latents": {"estimate_kl", "estimate_kl_score"} | TRAIN_EXPERT | TRAIN | SAMPLE | STITCH_SAMPLE,
    "feature_net": SCORES | {"aggregate"},
    "fid_ref": EVALUATE | STITCH_EVAL | {"evaluate_floor", "aggregate"},
    "evaluate_floor": {"aggregate"},
    # smoke.yaml's curriculum (rule uniform, order paper) reads no measurement, so under Snakemake
    # cluster_difficulty does not wait for them (dvc.yaml's static graph lists all three).
    "estimate_kl": {"aggregate"},
    "estimate_kl_score": {"aggregate"},
    "convergence": {"aggregate"},
    "cluster_difficulty": TRAIN | {"aggregate"},
    **{
        f"train_expert@{i}": {"convergence", "estimate_kl_score"} | ({f"stitch_sample@{i}"} & STITCH_SAMPLE)
        for i in EXPERTS
    },
    **{f"stitch_sample@{i}": {f"stitch_eval@{i}"} for i in STITCHED},
    **{f"stitch_eval@{i}": {"aggregate"} for i in STITCHED},
    **{
        f"train@{m}-{s}": {f"sample@{m}-{s}-{k}" for k in STEPS}
        | {"aggregate"}
        | (STITCH_SAMPLE if f"train@{m}-{s}" == STITCH_BASE else set())
        for m in METHODS
        for s in (0, 1)
    },
    # aggregate draws the final samples of the first seed in its grids.
    **{
        f"sample@{m}-{s}-{k}": {f"evaluate@{m}-{s}-{k}"}
        | ({"aggregate"} if (s, k) == (0, max(STEPS)) else set())
        for m in METHODS
        for s in (0, 1)
        for k in STEPS
    },
    **{f"evaluate@{m}-{s}-{k}": {"aggregate"} for m in METHODS for s in (0, 1) for k in STEPS},
}
NEW_SEED = {f"train@{m}-1" for m in METHODS} | {
    f"{stage}@{m}-1-{k}" for stage in ("sample", "evaluate") for m in METHODS for k in STEPS
}

# (params key path, new value, the jobs that read it directly)
PARAM_CASES = [
    (("data", "subset_seed"), 1, {"prepare_data"}),
    (
        ("diffusion", "vp", "beta_schedule"),
        "cosine",
        TRAIN | TRAIN_EXPERT | {"estimate_kl", "cluster_difficulty"},
    ),
    (("latents", "batch_size"), 32, {"encode_latents"}),
    (("model", "condition_dropout"), 0.2, TRAIN | TRAIN_EXPERT),
    (("curriculum", "rule"), "snr", {"cluster_difficulty"}),
    (("experts", "iterations"), 30, TRAIN_EXPERT),
    (("convergence", "tolerance"), 0.02, {"convergence"}),
    (("kl", "num_samples"), 50, {"estimate_kl"}),
    (("kl", "score", "num_samples"), 8, {"estimate_kl_score"}),
    (("kl", "estimator"), "score", {"cluster_difficulty"}),
    (("train", "lr"), 5e-4, TRAIN),
    (("strategies", "dtd", "tau_max"), 3, {"train@dtd-0"}),
    (("strategies", "clts", "lambda_end"), 3.0, set()),  # a method not in the study: nothing runs
    (("sample", "steps"), 10, SAMPLE | STITCH_SAMPLE),
    (("features", "batch_size"), 128, {"feature_net"} | SCORES),
    (("evaluate", "kid_subsets"), 5, EVALUATE | STITCH_EVAL | {"evaluate_floor"}),
    (("report", "confidence"), 0.9, {"aggregate"}),
    # A new seed adds its own jobs (all new, so all listed) and touches no finished run.
    (("study", "seeds"), [0, 1], NEW_SEED | {"aggregate"}),
]


def with_downstream(jobs: set[str]) -> set[str]:
    closure, todo = set(jobs), list(jobs)
    while todo:
        for nxt in DOWNSTREAM.get(todo.pop(), ()):
            if nxt not in closure:
                closure.add(nxt)
                todo.append(nxt)
    return closure


def snakemake_plan(root: Path, *args: str) -> set[str]:
    proc = run_cli(["snakemake", "-n", "--cores", "1", *args], root)
    planned, rule = set(), None
    for line in (proc.stdout + proc.stderr).splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
            if rule != "all":
                planned.add(rule)
        elif rule and (match := re.match(r"^    wildcards: (.*)$", line)):
            values = [kv.split("=", 1)[1] for kv in match.group(1).split(", ")]
            planned.discard(rule)
            planned.add(f"{rule}@{'-'.join(values)}")
    return planned


def dvc_plan(root: Path) -> set[str]:
    """The stages ``dvc status`` lists, from the same call in-process (saves the CLI's start-up)."""
    with contextlib.chdir(root), Repo(".") as repo:  # stage names are relative to the working directory
        return set(repo.status())


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "pipeline"
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _edit_params(root: Path, path: tuple, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    node = params
    for key in path[:-1]:
        node = node[key]
    assert node[path[-1]] != value
    node[path[-1]] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(params=["snakemake", "dvc"])
def driver(request, smoke_snakemake_run, smoke_dvc_run):
    if request.param == "snakemake":
        return smoke_snakemake_run, snakemake_plan, with_downstream
    return smoke_dvc_run, dvc_plan, set


def test_a_noop_rerun_recomputes_nothing(driver):
    root, plan, _ = driver
    assert plan(root) == set()


def test_a_moved_project_recomputes_nothing(driver, tmp_path):
    source, plan, _ = driver
    assert plan(_copy(source, tmp_path)) == set()


def test_the_params_content_not_its_path_decides_what_reruns(smoke_snakemake_run, tmp_path):
    """A params file under another name (here with a space) holding the same parameters reruns nothing;
    one holding one more seed reruns only that seed's jobs and the report."""
    root = _copy(smoke_snakemake_run, tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    same = root / "configs" / "same params.yaml"
    same.write_text(yaml.safe_dump(params, sort_keys=False))
    assert snakemake_plan(root, "--configfile", str(same)) == set()

    params["study"]["seeds"] = [*params["study"]["seeds"], 1]
    more = tmp_path / "one more seed.yaml"  # outside the project, by absolute path
    more.write_text(yaml.safe_dump(params, sort_keys=False))
    assert snakemake_plan(root, "--configfile", str(more)) == NEW_SEED | {"aggregate"}


@pytest.mark.parametrize(
    ("path", "value", "expected"), PARAM_CASES, ids=lambda v: ".".join(v) if isinstance(v, tuple) else None
)
def test_a_params_edit_reruns_exactly_its_readers(driver, tmp_path, path, value, expected):
    source, plan, expand = driver
    root = _copy(source, tmp_path)
    _edit_params(root, path, value)
    assert plan(root) == expand(expected)


@pytest.mark.parametrize(
    ("source_file", "expected"),
    [
        ("src/diffusion_curriculum/stages/sample.py", SAMPLE | STITCH_SAMPLE),
        ("src/diffusion_curriculum/stages/train.py", TRAIN),
        # The model-file format: its writers and its readers.
        (
            "src/diffusion_curriculum/checkpoints.py",
            TRAIN | TRAIN_EXPERT | SAMPLE | STITCH_SAMPLE | {"estimate_kl_score"},
        ),
        ("src/diffusion_curriculum/training.py", TRAIN | TRAIN_EXPERT),
        # timesteps/__init__.py imports every strategy, so every user of the package runs this file.
        (
            "src/diffusion_curriculum/timesteps/curriculum.py",
            TRAIN | TRAIN_EXPERT | {"convergence", "cluster_difficulty", "aggregate"},
        ),
        ("src/diffusion_curriculum/kl.py", {"estimate_kl", "estimate_kl_score"}),
        ("src/diffusion_curriculum/latents.py", {"encode_latents"} | SAMPLE | STITCH_SAMPLE),
        ("src/diffusion_curriculum/report/figures.py", {"aggregate"}),
    ],
)
def test_a_code_edit_reruns_its_stage(driver, tmp_path, source_file, expected):
    source, plan, expand = driver
    root = _copy(source, tmp_path)
    with open(root / source_file, "a") as f:
        f.write("\n# edited\n")
    assert plan(root) == expand(expected)
