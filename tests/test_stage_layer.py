"""The stage layer is thin over a library that owns its formats: no stage imports another, every option
is documented, one console command lists and runs the stages, the model file's format version is
checked, and an installed (not editable) copy holds the params schema and no top-level ``stages``."""

import ast
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from diffusion_curriculum import checkpoints
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.stages import __main__ as console
from diffusion_curriculum.stages import _cli

from conftest import REPO, cli_env

PACKAGE = "diffusion_curriculum.stages"
STAGES_DIR = REPO / "src" / "diffusion_curriculum" / "stages"
# What a stage may import from its own package: the stage layer's shared utilities.
SHARED = {"_cli", "params"}


def _stage_imports(path: Path) -> set[str]:
    """The modules of the stages package that the source at ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{PACKAGE}."):
            names = [node.module.removeprefix(f"{PACKAGE}.").split(".")[0]]
        elif isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [
                a.name.removeprefix(f"{PACKAGE}.") for a in node.names if a.name.startswith(f"{PACKAGE}.")
            ]
        else:
            continue
        found.update(names)
    return found


def test_the_stages_are_the_package_s_modules_less_its_helpers():
    modules = {p.stem for p in STAGES_DIR.glob("*.py")} - {"__init__"}
    assert set(console.stage_names()) == modules - console.HELPERS
    assert {"train", "train_expert", "sample", "aggregate"} <= set(console.stage_names())


@pytest.mark.parametrize("stage", console.stage_names())
def test_no_stage_imports_another_stage(stage):
    imported = _stage_imports(STAGES_DIR / f"{stage}.py")
    assert imported <= SHARED, f"{stage} imports {sorted(imported - SHARED)}: move it into the library"


def test_the_shared_utilities_import_no_stage():
    for helper in SHARED | {"_codedeps", "__main__"}:
        assert _stage_imports(STAGES_DIR / f"{helper}.py") <= SHARED, helper


@pytest.mark.parametrize("stage", console.stage_names())
def test_each_stage_s_help_shows_its_command_and_documents_every_option(stage, monkeypatch, capsys):
    made = []
    real = _cli.parser
    monkeypatch.setattr(_cli, "parser", lambda *args: made.append(real(*args)) or made[-1])
    module = importlib.import_module(f"{PACKAGE}.{stage}")
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.split()[:4] == ["usage:", "python", "-m", f"{PACKAGE}.{stage}"]
    undocumented = [action.option_strings for action in made[0]._actions if not action.help]
    assert not undocumented, f"{stage}: options without help text: {undocumented}"


def test_the_console_command_lists_the_stages_and_runs_one(tmp_path):
    command = Path(sys.executable).with_name("diffusion-curriculum")
    listed = subprocess.run([command], capture_output=True, text=True, env=cli_env(), check=True).stdout
    for stage in console.stage_names():
        assert f"\n  {stage} " in listed, stage
    assert "  train " in listed and "train one diffusion model" in listed
    helped = subprocess.run(
        [sys.executable, "-m", PACKAGE, "convergence", "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert helped.returncode == 0 and helped.stdout.startswith(f"usage: python -m {PACKAGE}.convergence")
    # A stage run through the console keeps the stages' one-line errors.
    missing = tmp_path / "nowhere.yaml"
    failed = subprocess.run(
        [command, "convergence", "--params", str(missing), "--experts-dir", ".", "--out", "c.parquet"],
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode == 2 and failed.stderr.strip() == f"error: params file not found: {missing}"
    unknown = subprocess.run([command, "nope"], capture_output=True, text=True, env=cli_env())
    assert unknown.returncode == 2 and "no stage 'nope'" in unknown.stderr


def _model_record(**changes) -> dict:
    net = torch.nn.Linear(2, 2)
    record = checkpoints.model_file(
        arch={"name": "unet-small"}, schedule={"framework": "vp"}, prediction="eps", data={}, method="m",
        seed=0, step=1, net=net, ema=net,
    )  # fmt: skip
    return {**record, **changes}


@pytest.mark.parametrize("version", [2, None])
def test_a_model_file_of_another_format_version_is_refused_by_name(tmp_path, version):
    path = tmp_path / "model.pt"
    record = _model_record(format=version)
    if version is None:
        del record["format"]
    torch.save(record, path)
    with pytest.raises(InputFileError, match=f"format {version!r} is not {checkpoints.MODEL_FORMAT}") as info:
        checkpoints.load_denoiser(path, use_ema=True, device="cpu")
    assert info.value.path == path


def test_an_installed_copy_ships_the_schema_and_no_top_level_stages(tmp_path):
    # Build from a copy, so the build leaves nothing in the repository.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels,
         source],
        check=True, capture_output=True, env=cli_env(),
    )  # fmt: skip
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "diffusion_curriculum/stages/params.schema.yaml" in names
    assert {n.split("/")[0] for n in names} == {
        "diffusion_curriculum",
        "diffusion_curriculum-0.1.0.dist-info",
    }
    entry_points = zipfile.ZipFile(wheel).read("diffusion_curriculum-0.1.0.dist-info/entry_points.txt")
    assert b"diffusion-curriculum = diffusion_curriculum.stages.__main__:main" in entry_points
    # Installed (not editable), it validates a params file with the schema it ships.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, wheel],
        check=True, capture_output=True, env=cli_env(),
    )  # fmt: skip
    check = (
        "from diffusion_curriculum.stages import params; "
        f"params.load({str(REPO / 'params.yaml')!r}); print(params.SCHEMA_PATH)"
    )
    env = {**cli_env(), "PYTHONPATH": str(target)}
    shown = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert Path(shown.stdout.strip()) == target / "diffusion_curriculum" / "stages" / "params.schema.yaml"


def test_a_stage_ends_with_the_files_it_wrote(tmp_path, capsys, monkeypatch):
    from diffusion_curriculum.stages import _cli, prepare_data

    monkeypatch.chdir(tmp_path)
    smoke = str(Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml")
    _cli.run(prepare_data.main, ["--params", smoke, "--out-dir", "data/prepared"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("prepare_data wrote 3 file(s): ")
    assert {"data/prepared/train.parquet", "data/prepared/manifest.json"} <= set(
        last.split(": ", 1)[1].split(", ")
    )


def test_pipeline_outputs_are_ignored_by_git():
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    paths = ["data/prepared/train.parquet", "results/report/report.html", "live/train/dtd/seed0/metrics.json"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=repo, capture_output=True, text=True)
    assert ignored.stdout.split() == paths
