# Configuration checks and helpers shared by every rule (helpers live only here).
import os
from pathlib import Path

import yaml

from diffusion_curriculum.stages import params as stage_params
from diffusion_curriculum.stages._codedeps import stage_closure


def _params_file():
    """The params file the stages must read: params.yaml, or the one given with --configfile.

    Snakemake merges every config source into one dict; the stages read a file.  So exactly one file
    may define the configuration, and --config overrides (which no stage would see) are refused.
    """
    given = [str(p) for p in workflow.overwrite_configfiles]
    if len(given) > 1:
        raise WorkflowError(
            f"give at most one --configfile (got {given}); every file must hold the whole configuration"
        )
    path = given[0] if given else "params.yaml"
    with open(path) as f:
        on_disk = yaml.safe_load(f)
    if on_disk != config:
        raise WorkflowError(
            f"the configuration differs from {path} (a --config override?); stages read {path} only, "
            "so edit that file or pass another with --configfile"
        )
    stage_params.validate(config, source=path)
    return path


# The stages read this file, but its path must not decide what reruns (a moved project or a renamed copy
# holds the same parameters): each rule's `sections` param carries the content it reads, and the path is
# passed as a Path, which Snakemake's params trigger does not record (it compares builtin values only).
PARAMS_FILE = Path(_params_file())
METHODS = config["study"]["methods"]
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


PIPELINE_ENV = "../envs/pipeline.yaml"
