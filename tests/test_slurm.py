"""The smoke pipeline on a real single-node SLURM cluster, submitted through profiles/slurm.

The cluster (munged, slurmctld, slurmd, two fake GPUs) is started on this machine by tests/slurm_cluster.py
and stopped afterwards even when the test fails.  The SLURM executor plugin is installed into a throwaway
interpreter beside the test venv, never into the venv itself: the plugin stays out of the default
install (without a reachable controller it slows every Snakemake call by ~10 s).
"""

import json
import os
import re
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cli_env
from slurm_cluster import SlurmCluster, unavailable_reason

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

PROFILE = REPO / "profiles" / "slurm"
SNAKEMAKE_TIMEOUT = 300  # the executor can poll forever instead of failing: bound every run
GPU_TYPE = "fake"
PREEMPTED = "dtd"  # the training run stopped by SIGTERM half-way, as SLURM does at preemption
# The rules that ask for a GPU (and have a GPU partition in the profile) and the CPU rules of the targets.
GPU_RULES = ("encode_latents", "train", "train_expert", "estimate_kl", "estimate_kl_score", "stitch_sample")
CPU_RULES = ("prepare_data", "convergence", "cluster_difficulty", "sample")
# Up to the final samples of both runs, and the observational branch (the curriculum of smoke.yaml reads
# no measurement, so train does not wait for it: it is asked for by name).
TARGETS = [
    *(f"results/samples/{m}/seed0/step40/samples.npz" for m in ("vanilla", "dtd")),
    "results/convergence/convergence.parquet",
    "results/kl/kl.parquet",
    "results/kl/kl_score.parquet",
]


def _profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def _partitions(profile: dict) -> list[str]:
    """The partitions the profile submits to, its default first: the test cluster gets exactly these."""
    names = [profile["default-resources"]["slurm_partition"]]
    for resources in profile.get("set-resources", {}).values():
        if resources.get("slurm_partition") not in (None, *names):
            names.append(resources["slurm_partition"])
    return names


@pytest.fixture(scope="module")
def cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no SLURM cluster on this machine: {reason}")
    started = SlurmCluster(_partitions(_profile()), gpus=2, gpu_type=GPU_TYPE)
    try:
        yield started.start()
    finally:
        started.stop()
        assert not started.running_daemons(), f"SLURM daemons left running: {started.running_daemons()}"


@pytest.fixture(scope="module")
def slurm_python(tmp_path_factory) -> Path:
    """An interpreter that sees the test interpreter's packages plus the `slurm` extra of pyproject.toml.

    ``venv --system-site-packages`` made from a venv's python would see the base interpreter's packages,
    not the venv's; a ``.pth`` file adding the venv's site-packages (with their own ``.pth`` files)
    does.  pip then installs only what the
    venv lacks, into the new environment.
    """
    env_dir = tmp_path_factory.mktemp("venv-slurm")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    own_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    # addsitedir, not a bare path: the venv's own .pth files (the editable install of this package) must
    # be processed too, and a bare path line adds the folder without reading the .pth files in it.
    lines = [f"import site; site.addsitedir({path!r})" for path in paths]
    (Path(own_site) / "_test_interpreter.pth").write_text("\n".join(lines) + "\n")
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["slurm"]
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *extra], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"pip install {extra} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return python


def _stage_recorder(directory: Path, record: Path) -> Path:
    """A ``python`` that notes, for each stage process, the SLURM job, GPUs and CPUs it ran with, then runs
    the real interpreter: the rules call plain ``python -m diffusion_curriculum.stages.<name>``, found
    first on PATH."""
    directory.mkdir()
    shim = directory / "python"
    shim.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\t%s\\t%s\\t%s\\n" "${{SLURM_JOB_ID:-}}" "${{CUDA_VISIBLE_DEVICES:-}}" '
        f'"${{SLURM_CPUS_PER_TASK:-}}" "$*" >> "{record}"\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    shim.chmod(0o755)
    return directory


def _preempt_after_first_checkpoint(cluster: SlurmCluster, checkpoint: Path, comment: str, done, sent):
    """Once ``checkpoint`` exists, send SIGTERM to the running job with ``comment``, as SLURM does to a
    job it preempts or that reaches its time limit."""
    while not done.is_set():
        if checkpoint.exists():
            for job in cluster.jobs():
                if job.get("Comment") == comment and job["JobState"] == "RUNNING":
                    cluster.run(["scancel", "--signal=TERM", job["JobId"]])
                    sent.append(job["JobId"])
                    return
        time.sleep(0.05)


def test_smoke_pipeline_on_slurm_gives_train_a_gpu_and_resumes_a_preempted_run(
    cluster, slurm_python, pipeline_dir, tmp_path
):
    # Test-only settings.  (1) The GPU type of the fake devices; the overlay restates the profile's own
    # set-resources because a workflow profile replaces that key as a whole.  (2) A first status check
    # 2 s after a job finishes instead of 8: the smoke jobs take seconds, and each level of the
    # chain waits for one.  (3) A first checkpoint at step 10 of 40, so the preempted run has most of
    # its steps left when the signal lands.
    profile = _profile()
    set_resources = profile.get("set-resources", {})
    for rule in GPU_RULES:
        set_resources[rule]["gpu_model"] = GPU_TYPE
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "config.yaml").write_text(
        yaml.safe_dump({"set-resources": set_resources, "slurm-init-seconds-before-status-checks": 2})
    )
    params = yaml.safe_load((pipeline_dir / "params.yaml").read_text())
    params["train"]["checkpoint_every"] = 10
    # Two intervals keep the observational branch that train waits for to a few jobs.
    params["curriculum"]["num_clusters"] = 2
    params["experts"]["intervals"] = [1, 2]
    params["experts"]["stitch_intervals"] = [1]
    (pipeline_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    record = tmp_path / "stages.tsv"
    env = cluster.env(cli_env())  # sbatch exports it to the jobs: the test venv's bin first on PATH
    env["PATH"] = f"{_stage_recorder(tmp_path / 'shim', record)}{os.pathsep}{env['PATH']}"
    # Only SLURM may hand out GPUs here, and no outer SLURM job may leak its settings into the jobs.
    for name in [n for n in env if n.startswith("SLURM_") and n != "SLURM_CONF"] + ["CUDA_VISIBLE_DEVICES"]:
        env.pop(name, None)

    done, signalled = threading.Event(), []
    preempter = threading.Thread(
        target=_preempt_after_first_checkpoint,
        args=(
            cluster,
            pipeline_dir / f"checkpoints/train/{PREEMPTED}/seed0/checkpoint.pt",
            f"rule_train_wildcards_{PREEMPTED}_0",
            done,
            signalled,
        ),
        daemon=True,
    )
    args = [
        "timeout", "--kill-after=20", str(SNAKEMAKE_TIMEOUT),
        str(slurm_python), "-m", "snakemake", "--profile", str(PROFILE), "--workflow-profile", str(overlay),
        *TARGETS,
    ]  # fmt: skip
    start = time.monotonic()
    preempter.start()
    try:
        proc = subprocess.run(
            args, cwd=pipeline_dir, env=env, capture_output=True, text=True, timeout=SNAKEMAKE_TIMEOUT + 30
        )
    finally:
        done.set()
        preempter.join(timeout=30)
    wall = time.monotonic() - start
    log = proc.stdout + proc.stderr
    print(f"\nsmoke pipeline on SLURM (one training run preempted): {wall:.1f} s wall time")
    assert proc.returncode == 0, f"snakemake exited {proc.returncode}\n{log[-6000:]}\n{cluster.logs()}"

    for path in (
        "data/prepared/train.parquet",
        *(f"results/train/{m}/seed0/model.pt" for m in ("vanilla", "dtd")),
        *(
            f"results/samples/{m}/seed0/step40/{f}"
            for m in ("vanilla", "dtd")
            for f in ("samples.npz", "grid.png")
        ),
    ):
        assert (pipeline_dir / path).stat().st_size > 0, path

    # Every job went through sbatch: slurmctld holds a batch job named after this run for each of them,
    # with the rule in its comment, each in the partition the profile chose.
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs = [job for job in cluster.jobs() if job["JobName"] == run_id]
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        rule = re.match(r"rule_([a-z_]+?)(?:_wildcards_|$)", job["Comment"]).group(1)
        by_rule.setdefault(rule, []).append(job)
    assert all(job["BatchFlag"] == "1" for job in jobs), jobs
    cpu_partition = profile["default-resources"]["slurm_partition"]
    gpu_jobs = [job for rule in GPU_RULES if rule in by_rule for job in by_rule[rule]]
    cpu_jobs = [job for rule in CPU_RULES for job in by_rule[rule]]
    for rule in set(GPU_RULES) & set(by_rule):
        assert {job["Partition"] for job in by_rule[rule]} == {set_resources[rule]["slurm_partition"]}, rule
    assert {job["Partition"] for job in cpu_jobs} == {cpu_partition}

    # The preempted training job failed (exit 75 after its checkpoint); Snakemake's retry resumed it.
    assert len(signalled) == 1, "the training run finished before it could be preempted"
    states = {job["JobId"]: (job["JobState"], job["Comment"]) for job in jobs}
    assert states.pop(signalled[0]) == ("FAILED", f"rule_train_wildcards_{PREEMPTED}_0")
    assert {state for state, _ in states.values()} == {"COMPLETED"}, states
    assert {rule: len(js) for rule, js in by_rule.items()} == {
        "prepare_data": 1,
        "encode_latents": 1,
        "estimate_kl": 1,
        "estimate_kl_score": 1,
        "train_expert": 2,
        "convergence": 1,
        "cluster_difficulty": 1,
        "train": 3,
        "sample": 2,
    }
    summary = json.loads((pipeline_dir / f"results/train/{PREEMPTED}/seed0/summary.json").read_text())
    assert summary["iterations"] == 40 and summary["resumed_from"] >= 10, summary

    # The GPU rules asked for one GPU of the configured type and were given one; the CPU rules for none.
    for job in gpu_jobs:
        assert job["TresPerJob"] == f"gres:gpu:{GPU_TYPE}:1" and job["JOB_GRES"] == f"gpu:{GPU_TYPE}:1", job
    for job in cpu_jobs:
        assert "gpu" not in job.get("TresPerJob", "") + job.get("JOB_GRES", ""), job

    # Inside the jobs: each stage process ran in its SLURM job, and only the GPU rules' saw a GPU.
    seen: dict[str, list[tuple[str, str]]] = {}
    for line in record.read_text().splitlines():
        job_id, gpus, cpus, argv = line.split("\t")
        if stage := re.search(r"-m diffusion_curriculum\.stages\.(\w+)", argv):
            seen.setdefault(stage.group(1), []).append((job_id, gpus))
            # Each job asked SLURM for its rule's threads (--cpus-per-task) and holds itself to them.
            threads = re.search(r"--threads (\d+)", argv).group(1)
            assert cpus == threads, (stage.group(1), cpus, argv)
            assert threads == ("2" if stage.group(1).startswith("estimate_kl") else "1"), argv
    job_ids = {rule: sorted(job["JobId"] for job in js) for rule, js in by_rule.items()}
    for rule in job_ids:
        assert sorted(job_id for job_id, _ in seen[rule]) == job_ids[rule], (rule, seen)
    assert all(
        re.fullmatch(r"\d", gpus)
        for rule in ("train", "train_expert", "estimate_kl", "estimate_kl_score")
        for _, gpus in seen[rule]
    )
    assert all(gpus == "" for rule in CPU_RULES for _, gpus in seen[rule]), seen
