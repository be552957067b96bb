"""Data-parallel training with the gloo backend and 2 processes matches one process with the same global
batch (CPU).

Tolerance: the ranks see exactly the single process's images, timesteps and noise, so the only difference
is the order in which DDP sums gradients (mean of two half-batch means vs one mean): float32 rounding,
amplified a little by 20 AdamW steps.  We allow 1e-4 absolute on every weight and 1e-5 relative on the
logged losses; a rank that trained on the wrong slice, or a strategy that saw only its rank's losses,
misses by orders of magnitude more.
"""

import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from diffusion_curriculum.models import create_model
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import Intervals, make_strategy
from diffusion_curriculum.training import train_loop

from conftest import run_cli
from test_training import blob_images

ITERATIONS, BATCH = 20, 16


def _train(run_dir, method="dtd"):
    torch.manual_seed(0)
    net = create_model("DiT-tiny/4", input_size=8, in_channels=1)  # unconditional: no label dropout
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(5)
    params = {"tau_max": 0} if method == "dtd" else {}
    images, _ = blob_images()
    return train_loop(
        net=net,
        schedule=schedule,
        prediction="eps",
        strategy=make_strategy(method, schedule, intervals, **params),
        intervals=intervals,
        images=images,
        labels=None,
        run_dir=run_dir,
        iterations=ITERATIONS,
        batch_size=BATCH,
        lr=1e-3,
        ema_decay=0.9,
        log_every=5,
        checkpoint_every=10,
        progress=False,
    )


def _rank_main(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = _train(out_dir / "ckpt")
        torch.save({"net": result.net.state_dict(), "history": result.history}, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    single = _train(tmp_path / "single")
    mp.spawn(_rank_main, args=(2, tmp_path / "init", tmp_path), nprocs=2, join=True)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in single.net.state_dict().items():
        for got in ranks:
            torch.testing.assert_close(got["net"][key], value, atol=1e-4, rtol=0, msg=key)
        assert torch.equal(ranks[0]["net"][key], ranks[1]["net"][key]), key  # ranks stay in lockstep

    for got in ranks:
        assert got["history"]["transitions"] == single.history["transitions"]
        losses = [row["loss"] for row in got["history"]["steps"]]
        expected = [row["loss"] for row in single.history["steps"]]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-5, atol=0)
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()  # written by rank 0 only


@pytest.mark.e2e
def test_train_stage_relaunches_under_torchrun_and_matches_one_process(pipeline_dir):
    cfg = yaml.safe_load((pipeline_dir / "params.yaml").read_text())
    cfg["model"]["condition_dropout"] = 0.0  # drawn per rank inside the network: the one non-shared draw
    cfg["train"].update(iterations=12, batch_size=8, log_every=4, checkpoint_every=4, snapshots=[6, 12])
    # fp32: bf16 autocast (precision auto on CPUs with AMX or AVX512-BF16) rounds two half-batches
    # differently from one.
    cfg["train"]["precision"] = "fp32"
    for ranks in (1, 2):
        cfg["train"]["data_parallel"] = ranks
        (pipeline_dir / f"params{ranks}.yaml").write_text(yaml.safe_dump(cfg))
    stages = "diffusion_curriculum.stages"
    run_cli([sys.executable, "-m", f"{stages}.prepare_data", "--params", "params1.yaml"], pipeline_dir)
    for ranks in (1, 2):
        proc = run_cli(
            [sys.executable, "-m", f"{stages}.train", "--params", f"params{ranks}.yaml", "--data",
             "data/prepared/train.parquet", "--method", "dtd", "--seed", "0", "--out-dir", f"out{ranks}",
             "--checkpoint-dir", f"ckpt{ranks}"],
            pipeline_dir,
        )  # fmt: skip
    assert proc.stdout.count("train[dtd, seed 0]") == 2  # both ranks started
    one, two = (torch.load(pipeline_dir / f"out{r}" / "model.pt", weights_only=True) for r in (1, 2))
    for key, value in one["net"].items():
        torch.testing.assert_close(two["net"][key], value, atol=1e-4, rtol=0, msg=key)
    assert not (pipeline_dir / "ckpt2").exists()
