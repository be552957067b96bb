"""dvc.yaml and the Snakefile declare the same stages: same commands, inputs, outputs and params.

Snakemake's side is read from the real tool (a forced dry run that prints every job) and the rule files'
``sections(...)`` lists; DVC's from its own resolved index (matrix expanded).
"""

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from conftest import REPO, run_cli

pytestmark = pytest.mark.e2e

# Stages that read one file of every job of a matrix stage; dvc.yaml names the folder that holds them.
FOLDER_DEPS_ALLOWED = {"convergence", "estimate_kl_score", "aggregate"}
LOG_REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1\s*$")
# Snakemake grants each job its threads; DVC runs one stage at a time, which then uses every core.
THREAD_GRANT = re.compile(r"\s--threads\s+\d+")
# The measurements cluster_difficulty may read.  Under Snakemake it is given only the one its curriculum
# rule reads (none for rule uniform, order paper), so rerunning the experts or the KL curves retrains
# nothing; dvc.yaml's graph is static and lists all three.
MEASUREMENTS = {
    "kl": "results/kl/kl.parquet",
    "kl-score": "results/kl/kl_score.parquet",
    "convergence": "results/convergence/convergence.parquet",
}
MEASUREMENT_FLAGS = re.compile(rf"\s--(?:{'|'.join(MEASUREMENTS)})\s+\S+")


def _normalise(cmd: str) -> str:
    cmd = THREAD_GRANT.sub("", LOG_REDIRECT.sub("", cmd))
    if "stages.cluster_difficulty" in cmd:
        cmd = MEASUREMENT_FLAGS.sub("", cmd)
    return " ".join(shlex.split(cmd))


def snakemake_jobs(root: Path, *extra: str) -> dict[str, dict]:
    """Normalised command -> {rule, inputs, outputs, command} for every job of the full DAG (a forced
    dry run); ``command`` is the shell command as Snakemake prints it."""
    proc = run_cli(["snakemake", "-n", "-p", "--forceall", "--cores", "1", *extra], root)
    jobs: dict[str, dict] = {}
    job: dict = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            job = {"rule": match.group(1), "inputs": set(), "outputs": set()}
        elif match := re.match(r"^    (input|output): (.*)$", line):
            job[match.group(1) + "s"] = {p.strip() for p in match.group(2).split(",")}
        elif line.startswith("Shell command: ") and job and job["rule"] != "all":
            job["command"] = line.removeprefix("Shell command: ")
            jobs[_normalise(job["command"])] = job
            job = {}
    assert jobs, proc.stdout + proc.stderr
    return jobs


def dvc_stages(root: Path) -> dict[str, dict]:
    run_cli(["git", "init", "-q"], root)
    run_cli(["dvc", "init", "-q"], root)
    stages = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            deps = {d.def_path for d in stage.deps if not hasattr(d, "params")}
            stages[_normalise(stage.cmd)] = {
                "rule": stage.name.split("@")[0],
                "inputs": deps,
                "outputs": {o.def_path for o in stage.outs},
            }
    return stages


def _covered(smk_inputs: set[str], dvc_deps: set[str]) -> tuple[set[str], set[str]]:
    """Snakemake inputs no DVC dep covers, and DVC deps that cover no Snakemake input.

    A stage that reads a file of every job of a matrix stage (convergence, aggregate) lists them one by one
    for Snakemake, while dvc.yaml, which cannot loop inside one stage, names the folder that holds them:
    DVC links a folder dep to every stage whose outputs lie below it.
    """

    def covers(dep: str, path: str) -> bool:
        return path == dep or path.startswith(dep.rstrip("/") + "/")

    uncovered = {p for p in smk_inputs if not any(covers(d, p) for d in dvc_deps)}
    unused = {d for d in dvc_deps if not any(covers(d, p) for p in smk_inputs)}
    return uncovered, unused


def test_every_job_has_its_twin_with_the_same_inputs_and_outputs(pipeline_dir):
    smk = snakemake_jobs(pipeline_dir)
    dvc = dvc_stages(pipeline_dir)
    assert set(smk) == set(dvc), (
        f"only in Snakemake: {sorted(set(smk) - set(dvc))}\nonly in DVC: {sorted(set(dvc) - set(smk))}"
    )
    for cmd, job in smk.items():
        twin = dvc[cmd]
        assert (job["rule"], job["outputs"]) == (twin["rule"], twin["outputs"]), cmd
        dvc_inputs = twin["inputs"]
        if job["rule"] == "cluster_difficulty":
            dvc_inputs = dvc_inputs - set(MEASUREMENTS.values())
        uncovered, unused = _covered(job["inputs"], dvc_inputs)
        assert not uncovered and not unused, (cmd, uncovered, unused)
        folders = {d for d in dvc_inputs if d not in job["inputs"]}
        assert not folders or job["rule"] in FOLDER_DEPS_ALLOWED, (cmd, folders)


@pytest.mark.parametrize(
    ("curriculum", "estimator", "reads"),
    [
        ({"rule": "uniform", "order": "paper"}, "mixture", set()),
        ({"rule": "difficulty", "order": "paper", "difficulty_signal": "kl"}, "mixture", {"kl"}),
        ({"rule": "difficulty", "order": "paper", "difficulty_signal": "kl"}, "score", {"kl-score"}),
        (
            {"rule": "uniform", "order": "measured", "difficulty_signal": "convergence"},
            "mixture",
            {"convergence"},
        ),
    ],
)
def test_cluster_difficulty_waits_only_for_what_it_reads(pipeline_dir, curriculum, estimator, reads):
    params = yaml.safe_load((pipeline_dir / "params.yaml").read_text())
    params["curriculum"] |= curriculum
    params["kl"]["estimator"] = estimator
    (pipeline_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    jobs = [job for job in snakemake_jobs(pipeline_dir).values() if job["rule"] == "cluster_difficulty"]
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["inputs"] & set(MEASUREMENTS.values()) == {MEASUREMENTS[name] for name in reads}
    assert {flag for flag in MEASUREMENTS if f" --{flag} " in job["command"]} == reads, job["command"]


def _smk_params(root: Path) -> dict[str, list[str]]:
    """Rule name -> the keys listed in its ``sections(...)`` params entry."""
    found = {}
    for path in sorted((root / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", path.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            match = re.search(r"sections=sections\((.*?)\)", block, flags=re.S)
            found[name] = re.findall(r'"([^"]+)"', match.group(1)) if match else []
    return found


def test_each_rule_reads_the_same_params_as_its_dvc_stage(pipeline_dir):
    smk = _smk_params(pipeline_dir)
    dvc = yaml.safe_load((pipeline_dir / "dvc.yaml").read_text())["stages"]
    for name, stage in dvc.items():
        keys = [re.sub(r"\$\{item\.(\w+)\}", r"{\1}", k) for k in stage.get("params", [])]
        assert sorted(keys) == sorted(smk.get(name, [])), name
    assert set(smk) - {"all"} == set(dvc)


def test_default_study_expands_to_one_job_per_run_and_per_interval(pipeline_dir):
    shutil.copy2(REPO / "params.yaml", pipeline_dir / "params.yaml")
    study = yaml.safe_load((pipeline_dir / "params.yaml").read_text())["study"]
    expected = {f"train@{m}-{s}" for m in study["methods"] for s in study["seeds"]}
    assert len(expected) >= 6

    smk = snakemake_jobs(pipeline_dir)
    smk_train = {
        f"train@{cmd.split('--method ')[1].split()[0]}-{cmd.split('--seed ')[1].split()[0]}"
        for cmd, job in smk.items()
        if job["rule"] == "train"
    }
    assert smk_train == expected

    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        run_cli(args, pipeline_dir)
    # On a fresh checkout plain `dvc repro --dry` stops at the first stage whose inputs do not exist yet;
    # with --force it lists the whole expanded matrix.
    dry = run_cli(["dvc", "repro", "--dry", "--force"], pipeline_dir)
    assert set(re.findall(r"Running stage '(train@[^']+)'", dry.stdout)) == expected

    # The observational study: one expert job per interval, from the one rule / matrix stage.
    params = yaml.safe_load((pipeline_dir / "params.yaml").read_text())
    experts = {f"train_expert@{i}" for i in range(1, params["curriculum"]["num_clusters"] + 1)}
    assert len(experts) == 20
    smk_experts = {
        f"train_expert@{cmd.split('--interval ')[1].split()[0]}"
        for cmd, job in smk.items()
        if job["rule"] == "train_expert"
    }
    assert smk_experts == experts
    assert set(re.findall(r"Running stage '(train_expert@[^']+)'", dry.stdout)) == experts
