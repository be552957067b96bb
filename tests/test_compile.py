"""train_loop(compile=...): a compiled step trains like the eager one, and leaves checkpoints and resume
exactly as they are.

``aot_eager`` runs the whole Dynamo + AOTAutograd capture without code generation, so it checks the
wiring in seconds on any machine.  ``inductor`` (the default of ``compile=True``) generates and builds C++
on CPU: about 100 s for the first build on the 2-core development machine (a few seconds once its cache
is warm), so it runs only when DIFFUSION_CURRICULUM_TEST_INDUCTOR=1 is set and a C++ compiler is found.
"""

import os
import shutil
import sysconfig

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._dynamo.utils import counters

from diffusion_curriculum.models import create_model
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import Intervals, make_strategy
from diffusion_curriculum.training import CHECKPOINT_NAME, train_loop

from test_training import _assert_same_state, blob_images

ITERATIONS = 12


def _cxx() -> str | None:
    names = [sysconfig.get_config_var("CXX") or "", "g++", "c++", "clang++"]
    return next((shutil.which(n.split()[0]) for n in names if n and shutil.which(n.split()[0])), None)


def run(tmp_path, compile=False, stop_after=None, init_seed=0, strategy=("vanilla", {})):
    torch.manual_seed(init_seed)
    # No label dropout: compiled random ops draw other values than eager ones (by design), and label
    # dropout is drawn per rank under DDP; these comparisons are about the step's arithmetic.
    net = create_model("DiT-tiny/4", input_size=8, in_channels=1, num_classes=4, class_dropout=0.0, depth=2)
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(5)
    images, labels = blob_images()
    return train_loop(
        net=net,
        schedule=schedule,
        prediction="eps",
        strategy=make_strategy(strategy[0], schedule, intervals, **strategy[1]),
        intervals=intervals,
        images=images,
        labels=labels,
        run_dir=tmp_path,
        iterations=ITERATIONS,
        batch_size=16,
        lr=1e-3,
        ema_decay=0.9,
        log_every=1,
        checkpoint_every=5,
        progress=False,
        stop_after=stop_after,
        compile=compile,
    )


def _assert_close_state(a: torch.nn.Module, b: torch.nn.Module, tol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=tol, atol=tol, msg=key)


INDUCTOR_VAR = "DIFFUSION_CURRICULUM_TEST_INDUCTOR"
BACKENDS = [
    "aot_eager",
    pytest.param(
        True,
        id="inductor",
        marks=[
            pytest.mark.skipif(
                os.environ.get(INDUCTOR_VAR) != "1",
                reason=f"inductor's first C++ build takes ~100 s on CPU; set {INDUCTOR_VAR}=1 to run it",
            ),
            pytest.mark.skipif(_cxx() is None, reason="inductor needs a C++ compiler on CPU; none found"),
        ],
    ),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_run_matches_eager_run(tmp_path, backend):
    eager = run(tmp_path / "eager")
    counters.clear()
    compiled = run(tmp_path / "compiled", compile=backend)
    assert compiled.completed and compiled.step == ITERATIONS
    # The network really ran compiled: one graph for all steps, no graph break.
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters)
    # The network handed back, and the one checkpointed, is the raw module: same keys, no `_orig_mod.`.
    assert type(compiled.net) is type(eager.net)
    saved = torch.load(tmp_path / "compiled" / CHECKPOINT_NAME, weights_only=True)
    assert saved["net"].keys() == eager.net.state_dict().keys()
    saved_eager = torch.load(tmp_path / "eager" / CHECKPOINT_NAME, weights_only=True)
    assert saved["ema"].keys() == saved_eager["ema"].keys()

    eager_losses = [row["loss"] for row in eager.history["steps"]]
    compiled_losses = [row["loss"] for row in compiled.history["steps"]]
    assert len(compiled_losses) == ITERATIONS
    torch.testing.assert_close(
        torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-5
    )
    _assert_close_state(eager.net, compiled.net, 1e-4)
    _assert_close_state(eager.ema, compiled.ema, 1e-4)


def test_compiled_run_resumes_bitwise(tmp_path):
    strategy = ("dtd", {"tau_max": 0})
    straight = run(tmp_path / "straight", compile="aot_eager", strategy=strategy)
    first = run(tmp_path / "resumed", compile="aot_eager", stop_after=7, strategy=strategy)
    assert not first.completed and first.step == 7
    torch._dynamo.reset()  # as in a fresh process
    second = run(tmp_path / "resumed", compile="aot_eager", init_seed=99, strategy=strategy)
    assert second.resumed_from == 7 and second.completed
    _assert_same_state(straight.net, second.net)
    _assert_same_state(straight.ema, second.ema)
    assert straight.history == second.history


def _ddp_rank_main(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = run(out_dir / "ckpt", compile="aot_eager", strategy=("dtd", {"tau_max": 0}))
        torch.save({"net": result.net.state_dict(), "history": result.history}, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_compiled_ddp_run_matches_one_process(tmp_path):
    """compile wraps the DDP module (Dynamo's DDPOptimizer path); 2 gloo ranks match one process as in
    test_ddp.py (tolerances explained there)."""
    single = run(tmp_path / "single", compile="aot_eager", strategy=("dtd", {"tau_max": 0}))
    mp.spawn(_ddp_rank_main, args=(2, tmp_path / "init", tmp_path), nprocs=2, join=True)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["net"].keys() == single.net.state_dict().keys()
        for key, value in single.net.state_dict().items():
            torch.testing.assert_close(got["net"][key], value, atol=1e-4, rtol=0, msg=key)
        assert got["history"]["transitions"] == single.history["transitions"]
        losses = [row["loss"] for row in got["history"]["steps"]]
        expected = [row["loss"] for row in single.history["steps"]]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-5, atol=0)
