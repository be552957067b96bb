# Configuration checks and helpers shared by every rule (helpers live only here).
import os
from pathlib import Path

from diffusion_curriculum.stages import params as stage_params
from diffusion_curriculum.stages._codedeps import stage_closure
from diffusion_curriculum.timesteps import check_strategy_entry


def _params_file():
    """The params file the stages read: params.yaml, or the one given with --configfile.

    A file may hold only what differs from another one it `extends:` (presets extend params.yaml);
    Snakemake's own merge does not follow that chain, so `config` is replaced by the composition the
    stages will see.  --config overrides (which no stage would see) are refused.
    """
    given = [str(p) for p in workflow.overwrite_configfiles]
    if len(given) > 1:
        raise WorkflowError(
            f"give at most one --configfile (got {given}); a file can extend another with `extends:`"
        )
    if workflow.config_settings.config:
        raise WorkflowError(
            f"--config {dict(workflow.config_settings.config)} would not reach the stages, which read a "
            "params file: put it in a file that `extends:` yours and pass that with --configfile"
        )
    path = given[0] if given else "params.yaml"
    composed = stage_params.load(path)
    for method in composed["study"]["methods"]:
        try:
            check_strategy_entry(method, composed["strategies"][method])
        except ValueError as err:
            raise WorkflowError(f"{path}: {err}") from None
    config.clear()
    config.update(composed)
    return path


# The stages read this file, but its path must not decide what reruns (a moved project or a renamed copy
# holds the same parameters): each rule's `sections` param carries the content it reads, and the path is
# passed as a Path, which Snakemake's params trigger does not record (it compares builtin values only).
PARAMS_FILE = Path(_params_file())
METHODS = config["study"]["methods"]
# The CSVs behind dvc.yaml's plots (aggregate writes them into results/report/plots/).
PLOT_TABLES = ("fid", "class_agreement", "kl", "loss_per_interval")
SEEDS = config["study"]["seeds"]
SNAPSHOTS = config["train"]["snapshots"]


wildcard_constraints:
    method="[A-Za-z0-9_]+",
    seed=r"\d+",
    step=r"\d+",
    interval=r"\d+",


def code(stage):
    """The code of the stage module ``diffusion_curriculum.stages.<stage>``: its own file and every
    repository module it imports, directly or not (the same list dvc.yaml holds, tests/test_codedeps.py
    checks it), so that an edit to any of them reruns the rule."""
    return stage_closure(stage)


def sections(*keys):
    """The params a rule reads (sections or dotted keys, wildcards allowed as in "strategies.{method}"),
    passed as a params entry so that editing them reruns the rule.  The same list as dvc.yaml's params.
    """

    def values(wildcards):
        resolved = {}
        for key in keys:
            key = key.format(**wildcards)
            node = config
            for part in key.split("."):
                node = node[part]
            resolved[key] = node
        return resolved

    return values


def difficulty_signal(wildcards):
    """The one measurement cluster_difficulty reads, or none: with `curriculum.rule` uniform, snr or
    edm_quantile and `order: paper` the clusters depend on no measurement, so the experts and the KL
    curves can be rerun (a longer observational study) without retraining every method.  dvc.yaml's
    graph is static and lists all three."""
    cur = config["curriculum"]
    if cur["rule"] != "difficulty" and cur["order"] != "measured":
        return {}
    if cur["difficulty_signal"] == "convergence":
        return {"convergence": "results/convergence/convergence.parquet"}
    if config["kl"]["estimator"] == "score":
        return {"kl_score": "results/kl/kl_score.parquet"}
    return {"kl": "results/kl/kl.parquet"}


def signal_arguments(wildcards, input):
    return " ".join(
        f"--{name.replace('_', '-')} {input[name]}"
        for name in ("kl", "kl_score", "convergence")
        if name in input.keys()
    )


PIPELINE_ENV = "../envs/pipeline.yaml"
