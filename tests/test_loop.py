"""The parts train_loop is assembled from (diffusion_curriculum.loop), each on its own."""

import io
import math
import sys

import pytest
import torch

from diffusion_curriculum.loop.batches import BatchSource, make_generators, rank_slice
from diffusion_curriculum.loop.checkpoint import CHECKPOINT_NAME, Checkpointer, read_checkpoint
from diffusion_curriculum.loop.losslog import LossLog
from diffusion_curriculum.loop.progress import Progress
from diffusion_curriculum.loop.step import OptimStep, Trainable
from diffusion_curriculum.loop.stopping import StopRule
from diffusion_curriculum.losses import denoising_loss
from diffusion_curriculum.models import create_model
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import Intervals, make_strategy

from test_training import _assert_same_state, blob_images, run

# ----------------------------------------------------------------------------------------- batches


def _images(n: int = 10) -> torch.Tensor:
    """Image i is the constant i with a marked left column, so rows and flips can be read back."""
    x = torch.arange(float(n))[:, None, None, None].expand(n, 1, 4, 4).clone()
    x[..., 0] += 0.5
    return x


def test_the_data_stream_draws_the_same_rows_for_a_seed():
    """Resumes and reruns depend on the data order: rows, then flips, from the seeded data stream."""
    source = BatchSource(
        _images(), None, None, batch_size=8, generator=make_generators(0, "cpu", "cpu")["data"], hflip=True
    )
    rows, flip = source.draw_rows()
    assert rows.tolist() == [2, 3, 0, 0, 9, 0, 3, 4]
    assert flip.tolist() == [True, True, False, False, False, True, False, True]
    assert source.draw_rows()[0].tolist() == [4, 5, 1, 2, 8, 6, 9, 4]


@pytest.mark.parametrize("world", [2, 4])
def test_the_ranks_slices_make_up_the_single_process_batch(world):
    images, labels = _images(), torch.arange(10) * 10

    def source(rank, n):
        generator = make_generators(7, "cpu", "cpu")["data"]
        local = rank_slice(8, rank, n)
        return BatchSource(images, labels, None, batch_size=8, generator=generator, local=local, hflip=True)

    single = source(0, 1)
    ranks = [source(r, world) for r in range(world)]
    for _ in range(3):  # every rank's stream advances by the whole batch
        x, y = single.draw()
        parts = [s.draw() for s in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert all(len(p[0]) == 8 // world for p in parts)
    row = x[:, 0, 0, 1].long()
    assert torch.equal(y, labels[row])  # each label is its image's
    flipped = x[:, 0, 0, -1] > x[:, 0, 0, 0]
    assert flipped.any() and not flipped.all()


def test_a_batch_that_does_not_divide_among_the_ranks_is_refused():
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by the 4"):
        rank_slice(6, 0, 4)


def test_caption_rows_are_drawn_and_bring_their_images():
    images = _images(3)
    condition_image = torch.tensor([0, 0, 0, 1, 2])
    captions = torch.arange(5.0)[:, None, None].expand(5, 1, 2).contiguous()
    generator = make_generators(0, "cpu", "cpu")["data"]
    source = BatchSource(images, captions, condition_image, batch_size=400, generator=generator)
    x, y = source.draw()
    caption = y[:, 0, 0].long()
    assert torch.equal(x[:, 0, 0, 1].long(), condition_image[caption])
    # image 0 has 3 of the 5 captions: drawn about 3/5 of the time
    assert 0.5 < (x[:, 0, 0, 1] == 0).float().mean() < 0.7


# ----------------------------------------------------------------------------------------- loss log


def _log(**kw) -> tuple[LossLog, object]:
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(5)
    return LossLog(intervals, schedule, **kw), make_strategy("vanilla", schedule, intervals)


def test_the_loss_log_counts_every_sample_once_in_its_bin():
    log, strategy = _log()
    g = torch.Generator().manual_seed(0)
    ts, losses = [], []
    for _ in range(3):
        ts.append(strategy.sample(16, g, device="cpu"))
        losses.append(torch.rand(16, generator=g))
        log.add(ts[-1], losses[-1])
    row = log.row(3, strategy)
    t, loss = torch.cat(ts), torch.cat(losses).double()
    bins = log.intervals.index(log.schedule, t)
    counts = [r["count"] for r in log.history["bins"]]
    assert counts == torch.bincount(bins, minlength=5).tolist() and sum(counts) == 48
    for b in range(5):
        assert row[f"loss_bin_{b}"] == pytest.approx(loss[bins == b].mean().item())
    assert row["loss"] == pytest.approx(loss.mean().item()) and row["step"] == 3 and row["stage"] == 0
    assert log.history["steps"] == [{"step": 3, "loss": row["loss"], "stage": 0}]
    # the sums restart after a row
    log.add(torch.tensor([0, 1]), torch.tensor([2.0, 4.0]))
    row = log.row(4, strategy)
    assert row["loss"] == 3.0 and row["loss_bin_0"] == 3.0
    assert [row[f"loss_bin_{b}"] for b in range(1, 5)] == [None] * 4  # no sample: no loss
    assert [r["count"] for r in log.history["bins"][5:]] == [2, 0, 0, 0, 0]


def test_the_first_step_s_loss_is_kept_only_when_spikes_are_checked():
    checked, strategy = _log(spike_factor=10.0)
    unchecked, _ = _log()
    for log in (checked, unchecked):
        log.add(torch.tensor([5, 500]), torch.tensor([1.0, 3.0]))
        log.add(torch.tensor([5, 500]), torch.tensor([5.0, 5.0]))
    assert checked.first_loss == 2.0 and unchecked.first_loss is None


def test_the_loss_log_continues_exactly_from_its_state():
    straight, strategy = _log(spike_factor=100.0)
    resumed, _ = _log(spike_factor=100.0)
    g = torch.Generator().manual_seed(1)
    steps = [(strategy.sample(8, g, device="cpu"), torch.rand(8, generator=g)) for _ in range(5)]
    for t, loss in steps[:3]:
        straight.add(t, loss)
    straight.row(3, strategy)
    straight.add(*steps[3])
    saved = torch.load(_saved(straight.state_dict()), weights_only=True)
    resumed.load_state_dict(saved)
    for log in (straight, resumed):
        log.add(*steps[4])
        log.row(5, strategy)
    assert resumed.history == straight.history and resumed.first_loss == straight.first_loss


def _saved(state) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


# ---------------------------------------------------------------------------- step and checkpoints


def _parts(tmp_path, init_seed=0, **kw):
    """A tiny run's parts, as train_loop wires them."""
    torch.manual_seed(init_seed)
    net = create_model("DiT-tiny/4", input_size=8, in_channels=1, num_classes=4, class_dropout=0.0, depth=1)
    schedule, intervals = make_schedule("vp"), Intervals.uniform(5)
    strategy = make_strategy("clts", schedule, intervals, total_steps=10, momentum_decay=True)
    device = torch.device("cpu")
    parts = Trainable.build(
        net, schedule, "eps", device=device, lr=1e-3, adam_betas=(0.9, 0.999), weight_decay=0.0, ema_decay=0.9
    )
    gens = make_generators(0, "cpu", device)
    images, labels = blob_images()
    batches = BatchSource(images, labels, None, batch_size=8, generator=gens["data"])
    step = OptimStep(parts, strategy, gens, denoising_loss, batch_size=8, device=device)
    log = LossLog(intervals, schedule, spike_factor=1000.0)
    checkpoints = Checkpointer(
        tmp_path / CHECKPOINT_NAME, parts=parts, strategy=strategy, generators=gens, log=log,
        device=device, iterations=10, checkpoint_every=4, **kw,
    )  # fmt: skip
    return parts, strategy, batches, step, log, checkpoints


def _train(parts, strategy, batches, optim_step, log, checkpoints, start, stop):
    for k in range(start, stop):
        t, losses = optim_step(k, *batches.draw())
        strategy.observe(k + 1, t, losses)
        log.add(t, losses)
        if (k + 1) % 2 == 0:
            log.row(k + 1, strategy)
        checkpoints.after_step(k + 1)


def test_the_optimisation_step_is_the_documented_step(tmp_path):
    """before_step, timesteps, noise, weighted loss, backward, clipping, AdamW, EMA: the same weights as
    the step written out by hand."""
    parts, strategy, batches, optim_step, _, _ = _parts(tmp_path)
    ref_parts, ref_strategy, ref_batches, _, _, _ = _parts(tmp_path / "ref")
    gens = make_generators(0, "cpu", "cpu")
    for k in range(3):
        t, losses = optim_step(k, *batches.draw())
        x0, y = ref_batches.draw()
        ref_strategy.before_step(k, ref_parts.optimizer)
        t_ref = ref_strategy.sample(8, gens["timesteps"], device="cpu")
        noise = torch.randn(x0.shape, generator=gens["noise"])
        per_sample = denoising_loss(
            ref_parts.denoiser, x0, t_ref, noise, y, weight=ref_strategy.weights(t_ref)
        )
        ref_parts.optimizer.zero_grad()
        per_sample.mean().backward()
        torch.nn.utils.clip_grad_norm_(ref_parts.net.parameters(), 1.0)
        ref_parts.optimizer.step()
        ref_parts.ema.update_parameters(ref_parts.net)
        assert torch.equal(t, t_ref) and torch.equal(losses, per_sample.detach())
    _assert_same_state(parts.net, ref_parts.net)
    _assert_same_state(parts.ema, ref_parts.ema)
    assert parts.hyperparameters()["beta1"] < 0.9  # clts with momentum decay moved beta1


def test_a_checkpoint_round_trip_restores_every_part(tmp_path):
    straight = _parts(tmp_path / "straight")
    _train(*straight, 0, 10)

    first = _parts(tmp_path / "cut")
    _train(*first, 0, 5)
    first[-1].stop(5)  # off the checkpoint grid: written now
    assert torch.load(tmp_path / "cut" / CHECKPOINT_NAME, weights_only=True)["step"] == 5
    resumed = _parts(tmp_path / "cut", init_seed=99)
    assert resumed[-1].restore() == 5
    _train(*resumed, 5, 10)

    parts, strategy, batches, step, log, _ = straight
    r_parts, r_strategy, r_batches, r_step, r_log, _ = resumed
    _assert_same_state(parts.net, r_parts.net)
    _assert_same_state(parts.ema, r_parts.ema)
    assert parts.optimizer.state_dict()["param_groups"] == r_parts.optimizer.state_dict()["param_groups"]
    assert r_log.history == log.history and r_strategy.state_dict().keys() == strategy.state_dict().keys()
    for name in ("data", "timesteps", "noise"):  # every stream continues where the straight run's is
        assert torch.equal(step.generators[name].get_state(), r_step.generators[name].get_state()), name


def test_snapshots_come_before_their_step_s_checkpoint_and_only_on_their_steps(tmp_path):
    events = []
    parts = _parts(tmp_path, snapshot_steps=[3, 4], on_snapshot=lambda s, net, ema: events.append(s))
    checkpoints = parts[-1]
    checkpoints.save = lambda s: events.append(f"checkpoint {s}")
    _train(*parts, 0, 10)
    assert events == [3, 4, "checkpoint 4", "checkpoint 8", "checkpoint 10"]


def test_a_file_that_is_no_checkpoint_is_moved_aside(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"net": {}}, path)  # readable, but holds no step or fingerprint
    with pytest.warns(RuntimeWarning, match="unreadable checkpoint .*no step or fingerprint"):
        assert read_checkpoint(path, torch.device("cpu")) is None
    assert not path.exists() and (tmp_path / f"{CHECKPOINT_NAME}.unreadable").exists()
    assert read_checkpoint(path, torch.device("cpu")) is None  # nothing there: a fresh start, silently


def test_a_checkpoint_of_another_configuration_restores_nothing(tmp_path, capsys):
    parts = _parts(tmp_path)
    parts[-1].save(0)
    other = _parts(tmp_path, init_seed=1)
    other[-1].fingerprint = "another"
    assert other[-1].restore() == 0
    assert "written by another configuration" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- stopping


def test_a_run_stops_after_stop_after_or_on_request_but_never_at_its_last_step():
    assert [s for s in range(1, 11) if StopRule(10, stop_after=4)(s)] == list(range(4, 10))
    polls = []
    requested = StopRule(10, should_stop=lambda: polls.append(1) or len(polls) >= 3)
    assert [requested(s) for s in (1, 2, 3)] == [False, False, True]
    assert not StopRule(10, should_stop=lambda: True)(10) and not StopRule(10)(5)


# --------------------------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_writes_plain_lines_without_carriage_returns_off_a_terminal():
    log_file = io.StringIO()
    bar = Progress(20, 5, stream=log_file, plain_interval=0.0)
    for _ in range(15):
        bar.update()
        bar.log_row(0.25, 2)
    bar.close()
    text = log_file.getvalue()
    assert "\r" not in text and text.splitlines()[-1].startswith("train: 20/20 [")
    assert "loss=0.2500, stage=2" in text

    terminal = _Terminal()
    bar = Progress(20, stream=terminal)
    bar.update(20)
    bar.close()
    assert "\r" in terminal.getvalue()  # a live bar where someone watches


def test_a_training_run_writing_to_a_log_file_has_no_carriage_returns(tmp_path, monkeypatch):
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    result = run(tmp_path, iterations=12, progress=True)
    assert result.completed
    text = log_file.getvalue()
    assert (
        "\r" not in text and "train: 12/12 [" in text and math.isfinite(result.history["steps"][-1]["loss"])
    )
