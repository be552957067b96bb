"""A stage's code deps are its import closure, under both drivers (the stages' ``_codedeps``)."""

import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from diffusion_curriculum.stages._codedeps import closure, dvc_drift, rewrite_dvc_yaml, stage_closure

from conftest import REPO


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small repository: a stage, the library with a subpackage, and modules nobody imports."""
    return _write(
        tmp_path,
        {
            "src/diffusion_curriculum/stages/__init__.py": "",
            "src/diffusion_curriculum/stages/_helper.py": "from diffusion_curriculum.sub import leaf\n",
            "src/diffusion_curriculum/stages/other.py": "",
            "src/diffusion_curriculum/stages/run.py": """
                import os
                import numpy as np
                from diffusion_curriculum import plain
                from . import _helper
                from .other import something  # an attribute of stages/other.py: the file counts

                def late():
                    import diffusion_curriculum.lazy  # imported only when called: still code it runs
            """,
            "src/diffusion_curriculum/__init__.py": "",
            "src/diffusion_curriculum/plain.py": "from .sub.leaf import f\n",
            "src/diffusion_curriculum/lazy.py": "from . import plain\n",  # a cycle through plain
            "src/diffusion_curriculum/unused.py": "",
            "src/diffusion_curriculum/sub/__init__.py": "",
            "src/diffusion_curriculum/sub/leaf.py": "from ..plain import g\nfrom .. import lazy\n",
            "src/diffusion_curriculum/sub/unused.py": "",
        },
    )


def test_the_closure_follows_every_import_kind_and_nothing_else(tree):
    assert closure("diffusion_curriculum.stages.run", tree) == [
        "src/diffusion_curriculum/__init__.py",
        "src/diffusion_curriculum/lazy.py",
        "src/diffusion_curriculum/plain.py",
        "src/diffusion_curriculum/stages/__init__.py",
        "src/diffusion_curriculum/stages/_helper.py",
        "src/diffusion_curriculum/stages/other.py",
        "src/diffusion_curriculum/stages/run.py",
        "src/diffusion_curriculum/sub/__init__.py",
        "src/diffusion_curriculum/sub/leaf.py",
    ]


def test_a_module_that_is_not_in_the_repository_is_refused(tree):
    with pytest.raises(ModuleNotFoundError, match="stages.missing"):
        closure("diffusion_curriculum.stages.missing", tree)


def test_the_expert_trainer_depends_on_the_model_file_format_and_the_conditioning():
    experts = stage_closure("train_expert", REPO)
    lib = "src/diffusion_curriculum/"
    assert {f"{lib}checkpoints.py", f"{lib}conditioning.py", f"{lib}training.py"} <= set(experts)
    assert f"{lib}stages/train.py" not in experts  # the format is the library's, not the train stage's
    for stage in ("train", "sample", "prepare_data"):
        assert f"{lib}conditioning.py" in stage_closure(stage, REPO), stage
    for stage in ("train", "sample", "estimate_kl_score"):
        assert f"{lib}checkpoints.py" in stage_closure(stage, REPO), stage


def test_dvc_yaml_lists_exactly_each_stage_s_import_closure():
    drift = dvc_drift(REPO)
    assert not drift, (
        "dvc.yaml's code deps differ from the imports (stage: missing, not imported): "
        f"{drift}; rewrite them with `python -m diffusion_curriculum.stages._codedeps --write`"
    )


def test_the_rewrite_touches_only_code_deps(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    original = (REPO / "dvc.yaml").read_text()
    # Drop a code dep, add a stale one: the rewrite restores the committed file.
    stages = "      - src/diffusion_curriculum/stages/"
    stale = original.replace(f"{stages}train.py\n", "", 1).replace(
        f"{stages}aggregate.py\n",
        f"{stages}aggregate.py\n      - src/diffusion_curriculum/kl.py\n",
    )
    assert stale != original
    (root / "dvc.yaml").write_text(stale)
    assert dvc_drift(root)
    assert rewrite_dvc_yaml(root)
    assert (root / "dvc.yaml").read_text() == original
    assert not rewrite_dvc_yaml(root)


def _rules() -> dict[str, str]:
    found = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", path.read_text(), flags=re.M)[1:]:
            found[block.split(":", 1)[0].strip()] = block
    return found


def test_each_rule_takes_the_code_of_the_module_its_command_runs():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    rules = _rules()
    assert set(dvc) <= set(rules)
    for name in dvc:
        block = rules[name]
        runs = re.findall(r"python -m diffusion_curriculum\.stages\.(\w+)", block)
        listed = re.findall(r'code=code\("(\w+)"\)', block)
        assert len(runs) == 1 and listed == runs, (name, runs, listed)
        # and no code file listed by hand beside it
        assert not re.search(r"\.py\"", block), name
