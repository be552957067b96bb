"""A stage given a missing, truncated or foreign input file ends with ``error: <file>: <what is wrong>``
and exit status 2; any other exception (a bug) keeps its traceback."""

import numpy as np
import pytest
import torch

from diffusion_curriculum.stages import _cli, convergence, evaluate, sample, train

from conftest import REPO

SMOKE = str(REPO / "configs" / "smoke.yaml")


def one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as info:
        _cli.run(main, ["--params", SMOKE, *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _garbage(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not a readable PyTorch file"),
        (b"\x80\x04garbage", "not a readable PyTorch file"),
        (None, "the saved dict lacks arch, net, ema, schedule, prediction"),  # a .pt of another kind
        ("missing", "not found (written by train or train_expert)"),
    ],
)
def test_a_bad_model_file_is_named(tmp_path, capsys, content, problem):
    model = tmp_path / "model.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, model)
    elif content != "missing":
        _garbage(model, content)
    err = one_line_error(capsys, sample.main, ["--model", str(model), "--out-dir", str(tmp_path / "out")])
    assert err.startswith(f"error: {model}: {problem}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        (b"PK\x03\x04cut short", "not a readable .npz archive"),
        ({"labels": np.zeros(3, np.int64)}, "the archive lacks images"),
        ({"images": np.zeros((3, 4, 4), np.float32)}, "expected uint8 NHWC images"),
    ],
)
def test_bad_samples_are_named(tmp_path, capsys, arrays, problem):
    samples = tmp_path / "samples.npz"
    if isinstance(arrays, bytes):
        _garbage(samples, arrays)
    else:
        np.savez(samples, **arrays)
    out = tmp_path / "metrics.json"
    argv = ["--samples", str(samples), "--reference", str(tmp_path / "ref.npz")]
    err = one_line_error(
        capsys, evaluate.main, [*argv, "--feature-net", str(tmp_path / "f.pt"), "--out", str(out)]
    )
    assert err.startswith(f"error: {samples}: {problem}")
    assert not out.exists()


@pytest.mark.parametrize("stage", ["evaluate", "evaluate_floor"])
def test_statistics_from_another_feature_space_are_refused(tmp_path, capsys, stage):
    """Reference statistics (or floor sets) made with the Inception network are not scored in the
    domain classifier's space that smoke.yaml selects: the file and both spaces are named."""
    from diffusion_curriculum.stages import evaluate_floor

    foreign = "inception:clean-fid-torchscript"
    stats_file, out = tmp_path / "stats.npz", tmp_path / "metrics.json"
    if stage == "evaluate":
        np.savez(tmp_path / "samples.npz", images=np.zeros((4, 16, 16, 1), np.uint8))
        np.savez(stats_file, extractor=foreign, features=np.zeros((4, 8), np.float32))
        main = evaluate.main
        argv = ["--samples", str(tmp_path / "samples.npz"), "--reference", str(stats_file)]
    else:
        keys = {key: np.zeros(1) for key in evaluate_floor.FLOOR_KEYS}
        np.savez(stats_file, **{**keys, "extractor": foreign})
        main, argv = evaluate_floor.main, ["--floor", str(stats_file)]
    err = one_line_error(capsys, main, [*argv, "--feature-net", str(tmp_path / "f.pt"), "--out", str(out)])
    assert err == f"error: {stats_file}: was computed with {foreign}, but features select domain:feature_net"
    assert not out.exists()


def test_a_bad_loss_curve_is_named(tmp_path, capsys):
    curve = _garbage(tmp_path / "expert1" / "loss_curve.parquet", b"PAR1 not really")
    err = one_line_error(
        capsys, convergence.main, ["--experts-dir", str(tmp_path), "--out", str(tmp_path / "c.parquet")]
    )
    assert err.startswith(f"error: {curve}: not a readable Parquet table")


def test_a_bad_training_set_is_named(tmp_path, capsys):
    data = _garbage(tmp_path / "train.parquet", b"\x00" * 64)
    argv = [
        "--data",
        str(data),
        "--curriculum",
        str(tmp_path / "c.json"),
        "--method",
        "vanilla",
        "--seed",
        "0",
    ]
    argv += ["--out-dir", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    err = one_line_error(capsys, train.main, argv)
    assert err.startswith(f"error: {data}: ")


def test_a_bug_keeps_its_traceback():
    """A ValueError that is not about an input file is a bug: it propagates (Python prints the
    traceback, exit status 1) instead of becoming one line."""

    def buggy(argv):
        raise ValueError("an internal invariant broke")

    with pytest.raises(ValueError, match="internal invariant"):
        _cli.run(buggy, [])
