# diffusion-curriculum: one DAG, two drivers.  This file and dvc.yaml declare the same stages with the
# same commands, inputs, outputs and params sections (tests/test_parity.py keeps them in step).
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/observe.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "results/report/report.html",
