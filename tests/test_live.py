"""Live training curves: train_loop's on_log rows written by LiveLog in DVCLive's format, plain files
only, continuous and unique across a resume."""

import csv
import json
import math
import shutil
import subprocess

import dvclive
import pytest

from diffusion_curriculum.live import LiveLog, PlainFilesLive
from diffusion_curriculum.training import CHECKPOINT_NAME

from test_training import run

CLTS = ("clts", {"total_steps": 30, "momentum_decay": True})  # changes lr and beta1 as it trains


def _tsv(live_dir, name) -> list[tuple[int, float]]:
    path = live_dir / "plots" / "metrics" / "train" / f"{name}.tsv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(int(r["step"]), float(r[name])) for r in rows]


class Recorder:
    """on_log that keeps the rows and passes them on."""

    def __init__(self, then=None):
        self.rows, self.then = [], then

    def __call__(self, row):
        self.rows.append(dict(row))
        if self.then is not None:
            self.then(row)


def test_on_log_gets_every_log_row_as_flat_scalars(tmp_path):
    rows = Recorder()
    result = run(tmp_path, iterations=12, strategy=CLTS, on_log=rows)
    assert [r["step"] for r in rows.rows] == [5, 10, 12]
    first = rows.rows[0]
    assert list(first) == ["step", "loss", "stage", "lr", "beta1", "steps_per_s"] + [
        f"loss_bin_{b}" for b in range(5)
    ]
    for row, logged in zip(rows.rows, result.history["steps"], strict=True):
        assert (row["step"], row["loss"], row["stage"]) == (logged["step"], logged["loss"], logged["stage"])
        bins = [b["loss"] for b in result.history["bins"] if b["step"] == row["step"]]
        assert [row[f"loss_bin_{b}"] for b in range(5)] == bins
        assert row["steps_per_s"] > 0 and 0.5 <= row["beta1"] < 0.9 and row["lr"] > 0
    assert rows.rows[-1]["beta1"] < rows.rows[0]["beta1"]  # momentum decay, read at each row


def test_the_live_log_holds_one_row_per_log_step(tmp_path):
    live_dir = tmp_path / "live"
    rows = Recorder(LiveLog(live_dir))
    result = run(tmp_path / "run", iterations=30, strategy=CLTS, on_log=rows)
    steps = [5, 10, 15, 20, 25, 30]
    assert _tsv(live_dir, "loss") == [(r["step"], r["loss"]) for r in result.history["steps"]]
    assert _tsv(live_dir, "stage") == [(r["step"], r["stage"]) for r in result.history["steps"]]
    for name in ("lr", "beta1", "steps_per_s"):
        assert _tsv(live_dir, name) == [(r["step"], r[name]) for r in rows.rows]
    for b in range(5):
        rows_b = [r for r in result.history["bins"] if r["bin"] == b and r["loss"] is not None]
        expected = [(r["step"], r["loss"]) for r in rows_b]
        assert _tsv(live_dir, f"loss_bin_{b}") == expected
    assert [s for s, _ in _tsv(live_dir, "loss")] == steps
    latest = json.loads((live_dir / "metrics.json").read_text())
    assert latest["step"] == 30 and latest["train"]["loss"] == result.history["steps"][-1]["loss"]
    # A bin without samples writes no row (DVCLive would write the text "nan").
    LiveLog(live_dir)({"step": 35, "loss": 1.0, "loss_bin_0": None, "loss_bin_1": math.nan})
    assert _tsv(live_dir, "loss_bin_0")[-1][0] == 30 and _tsv(live_dir, "loss_bin_1")[-1][0] == 30


def test_a_resumed_run_continues_its_live_log_without_duplicate_or_lost_rows(tmp_path):
    """Killed at step 17 with its last checkpoint at 10: rows 15 (and a torn row) were logged past the
    checkpoint.  The resumed run logs 15 again; every step has one row, the resumed run's."""
    straight = run(tmp_path / "straight", iterations=30, strategy=CLTS)

    live_dir, ckpt_dir = tmp_path / "live", tmp_path / "cut"
    run(ckpt_dir, iterations=30, stop_after=10, strategy=CLTS, on_log=LiveLog(live_dir))
    shutil.copy(ckpt_dir / CHECKPOINT_NAME, tmp_path / "step10.pt")
    run(ckpt_dir, iterations=30, stop_after=17, strategy=CLTS, on_log=LiveLog(live_dir))
    assert [s for s, _ in _tsv(live_dir, "loss")] == [5, 10, 15]
    shutil.copy(tmp_path / "step10.pt", ckpt_dir / CHECKPOINT_NAME)  # as if killed before step 20's
    with open(live_dir / "plots" / "metrics" / "train" / "loss.tsv", "a") as f:
        f.write("2")  # a row torn by the kill

    resumed = run(ckpt_dir, iterations=30, strategy=CLTS, on_log=LiveLog(live_dir), init_seed=99)
    assert resumed.resumed_from == 10
    losses = _tsv(live_dir, "loss")
    assert losses == [(r["step"], r["loss"]) for r in straight.history["steps"]]  # continuous and unique
    for name in ("stage", "lr", "beta1", "steps_per_s"):
        assert [s for s, _ in _tsv(live_dir, name)] == [5, 10, 15, 20, 25, 30], name


def test_a_run_from_step_0_replaces_an_earlier_live_log(tmp_path):
    live_dir = tmp_path / "live"
    run(tmp_path / "a", iterations=12, on_log=LiveLog(live_dir))
    run(tmp_path / "b", iterations=10, log_every=2, on_log=LiveLog(live_dir))  # a fresh run, another grid
    assert [s for s, _ in _tsv(live_dir, "loss")] == [2, 4, 6, 8, 10]
    LiveLog(live_dir, resume=False)
    assert not (live_dir / "plots" / "metrics" / "train" / "loss.tsv").exists()


def test_the_live_log_touches_no_git_or_dvc_state(tmp_path, monkeypatch):
    """Plain dvclive.Live runs `dvc init` in a Git repository without DVC and reads Studio settings;
    the live log writes its folder and nothing else, even with a Studio token set."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DVC_STUDIO_TOKEN", "not-a-token")
    log = LiveLog("live")
    log({"step": 1, "loss": 0.5})
    assert sorted(p.name for p in repo.iterdir()) == [".git", "live"]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True)
    assert status.stdout.splitlines() == ["?? live/"]
    assert sorted(p.name for p in (repo / "live").iterdir()) == ["metrics.json", "plots"]
    assert log.live._studio_events_to_skip >= {"start", "data", "done"}


def test_the_dvclive_hooks_the_plain_files_logger_replaces_exist():
    """PlainFilesLive overrides two private methods of dvclive.Live; a release that renames them must
    fail here rather than let the live log open repositories."""
    for name in ("_init_dvc", "_init_studio"):
        assert name in vars(dvclive.Live) and name in vars(PlainFilesLive), name


@pytest.mark.parametrize("resume", [True, False])
def test_a_live_log_in_an_empty_folder_starts_at_the_first_row(tmp_path, resume):
    log = LiveLog(tmp_path / "live", resume=resume)
    log({"step": 100, "loss": 0.25, "stage": 2})
    log({"step": 200, "loss": 0.125, "stage": 3})
    assert _tsv(tmp_path / "live", "loss") == [(100, 0.25), (200, 0.125)]
    assert _tsv(tmp_path / "live", "stage") == [(100, 2), (200, 3)]
