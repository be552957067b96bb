"""train_loop: a short run learns, and a run stopped and resumed ends bitwise equal to one that was not."""

import math

import pytest
import torch

from diffusion_curriculum import training
from diffusion_curriculum.models import create_model
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import Intervals, Vanilla, make_strategy
from diffusion_curriculum.training import CHECKPOINT_NAME, train_loop


def blob_images(n: int = 128, size: int = 8, seed: int = 0):
    """Small structured images: a bright square at one of four positions, the position is the label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = -torch.ones(n, 1, size, size)
    for i, lab in enumerate(labels.tolist()):
        r, c = divmod(lab, 2)
        x[i, :, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] = 1.0
    return x + 0.05 * torch.randn(x.shape, generator=g), labels


def run(
    tmp_path, framework="vp", prediction="eps", iterations=30, stop_after=None, seed=0, init_seed=None, **kw
):
    torch.manual_seed(seed if init_seed is None else init_seed)
    net = kw.pop("net", None)
    if net is None:
        net = create_model("DiT-tiny/4", input_size=8, in_channels=1, num_classes=4, class_dropout=0.1)
    schedule = make_schedule(framework)
    intervals = Intervals.uniform(5)
    images, labels = blob_images()
    images, labels = kw.pop("images", images), kw.pop("labels", labels)
    strategy = kw.pop("strategy", ("vanilla", {}))
    if isinstance(strategy, tuple):
        strategy = make_strategy(strategy[0], schedule, intervals, **strategy[1])
    args = dict(
        net=net,
        schedule=schedule,
        prediction=prediction,
        strategy=strategy,
        intervals=intervals,
        images=images,
        labels=labels,
        run_dir=tmp_path,
        iterations=iterations,
        batch_size=16,
        lr=1e-3,
        ema_decay=0.9,
        log_every=5,
        checkpoint_every=10,
        seed=seed,
        progress=False,
        stop_after=stop_after,
    )
    args.update(kw)
    return train_loop(**args)


@pytest.mark.parametrize(("framework", "prediction"), [("vp", "eps"), ("edm", "edm"), ("flow", "flow")])
def test_short_run_lowers_the_loss(tmp_path, framework, prediction):
    result = run(tmp_path, framework, prediction, iterations=150, log_every=25)
    losses = [row["loss"] for row in result.history["steps"]]
    assert result.completed and result.step == 150
    assert losses[-1] < 0.7 * losses[0], losses


def test_loss_bins_cover_every_interval_and_count_every_sample(tmp_path):
    result = run(tmp_path, iterations=20, log_every=10)
    rows = result.history["bins"]
    assert {r["bin"] for r in rows} == set(range(5))
    for step in (10, 20):
        assert sum(r["count"] for r in rows if r["step"] == step) == 10 * 16


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("stop_after", [7, 10, 23])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, stop_after):
    straight = run(tmp_path / "straight", iterations=30)

    first = run(tmp_path / "resumed", iterations=30, stop_after=stop_after)
    assert not first.completed and first.step == stop_after
    assert (tmp_path / "resumed" / CHECKPOINT_NAME).exists()
    # A fresh process would rebuild the network from scratch (another init seed on purpose).
    second = run(tmp_path / "resumed", iterations=30, init_seed=99)
    assert second.resumed_from == stop_after and second.completed

    _assert_same_state(straight.net, second.net)
    _assert_same_state(straight.ema, second.ema)
    assert straight.history == second.history


@pytest.mark.parametrize(
    "strategy",
    [
        ("dtd", {"tau_max": 0}),
        ("clts", {"total_steps": 30, "momentum_decay": True}),
        ("speed", {"k": 5.0}),
        ("naive_cl", {"stage_steps": 4}),
    ],
    ids=lambda s: s[0],
)
def test_stateful_strategies_resume_mid_stage_with_the_same_transitions_and_weights(tmp_path, strategy):
    straight = run(tmp_path / "straight", iterations=30, strategy=strategy)
    if strategy[0] in ("dtd", "naive_cl"):
        steps = [row["step"] for row in straight.history["transitions"]]
        assert len(steps) >= 2, steps
        # Stop strictly inside a stage: between two transitions, off the checkpoint grid.
        stop_after = next(s + 1 for s in steps if (s + 1) % 10 and s + 1 < 30)
    else:
        stop_after = 13
    run(tmp_path / "resumed", iterations=30, stop_after=stop_after, strategy=strategy)
    resumed = run(tmp_path / "resumed", iterations=30, init_seed=99, strategy=strategy)
    assert resumed.resumed_from == stop_after
    assert resumed.history == straight.history  # the same transitions at the same steps, the same logs
    _assert_same_state(straight.net, resumed.net)
    _assert_same_state(straight.ema, resumed.ema)


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    run(tmp_path, iterations=30, stop_after=10, fingerprint="config-a")
    result = run(tmp_path, iterations=12, fingerprint="config-b")
    assert result.resumed_from == 0 and result.step == 12


def test_rejects_nonsense_lengths(tmp_path):
    with pytest.raises(ValueError, match="iterations"):
        run(tmp_path, iterations=0)


# --------------------------------------------------------------------------- caption conditioning


def caption_run(tmp_path, stop_after=None, init_seed=0):
    """A text-conditional run on blob images: 3 captions per image, (T, D) = (2, 8)."""
    torch.manual_seed(init_seed)
    net = create_model("DiT-tiny/4", input_size=8, in_channels=1, text_dim=8, text_tokens=2, depth=2)
    images, _ = blob_images()
    condition_image = torch.arange(len(images)).repeat(3)
    captions = torch.randn(len(condition_image), 2, 8, generator=torch.Generator().manual_seed(5))
    return run(
        tmp_path,
        stop_after=stop_after,
        init_seed=init_seed,
        net=net,
        labels=captions,
        condition_image=condition_image,
    )


def test_captions_are_drawn_with_their_own_images(tmp_path, monkeypatch):
    seen, loss = [], training.denoising_loss

    def recording_loss(denoiser, x0, t, noise, y, weight=None):
        seen.append((x0.clone(), y.clone()))
        return loss(denoiser, x0, t, noise, y, weight)

    monkeypatch.setattr(training, "denoising_loss", recording_loss)
    # Image i is the constant i and caption k the constant k, so every pair can be checked.
    images = torch.arange(6.0)[:, None, None, None].expand(6, 1, 8, 8).contiguous()
    condition_image = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5, 5, 1])
    captions = torch.arange(10.0)[:, None, None].expand(10, 1, 4).contiguous()
    net = create_model("DiT-tiny/4", input_size=8, in_channels=1, text_dim=4, depth=1)
    run(tmp_path, net=net, images=images, labels=captions, condition_image=condition_image, iterations=20)
    image_of = torch.cat([x0[:, 0, 0, 0] for x0, _ in seen]).long()
    caption = torch.cat([y[:, 0, 0] for _, y in seen]).long()
    assert torch.equal(image_of, condition_image[caption])
    assert set(caption.tolist()) == set(range(10))  # caption rows are drawn, not image rows


def test_caption_conditioned_run_resumes_bitwise(tmp_path):
    straight = caption_run(tmp_path / "straight")
    caption_run(tmp_path / "resumed", stop_after=13)
    resumed = caption_run(tmp_path / "resumed", init_seed=99)
    assert resumed.resumed_from == 13 and resumed.completed
    _assert_same_state(straight.net, resumed.net)
    assert straight.history == resumed.history
    losses = [row["loss"] for row in straight.history["steps"]]
    assert all(math.isfinite(v) for v in losses)


def test_caption_arguments_are_checked(tmp_path):
    images, labels = blob_images()
    with pytest.raises(ValueError, match=r"float caption embeddings \(K, T, D\)"):
        run(tmp_path, labels=labels, condition_image=torch.arange(len(images)))
    captions = torch.zeros(5, 1, 4)
    with pytest.raises(ValueError, match=r"shape \(5,\), one image row per caption"):
        run(tmp_path, labels=captions, condition_image=torch.arange(4))
    with pytest.raises(ValueError, match=r"0\.\.127.*got 0\.\.128"):
        run(tmp_path, labels=captions, condition_image=torch.tensor([0, 1, 2, 3, 128]))


@pytest.mark.parametrize("lr", [1e37, math.inf])
def test_a_diverged_run_stops_naming_the_step_and_keeps_its_last_good_checkpoint(tmp_path, lr):
    """Ten good steps (a checkpoint at step 10), then the learning rate explodes: the run stops with the
    step and the loss in the message, and the checkpoint on disk is still step 10's, finite."""
    run(tmp_path, iterations=10)
    good = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert good["step"] == 10
    with pytest.raises(training.TrainingDiverged, match=r"diverged at step \d+"):
        run(tmp_path, iterations=30, lr=lr, fingerprint="another", grad_clip=None)
    kept = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert kept["step"] == 10 and all(torch.isfinite(v).all() for v in kept["net"].values())


class LossBlowsUpAt(Vanilla):
    """Vanilla whose loss weights jump to 1e5 from step ``at`` on: a finite blow-up at a known step,
    whatever the network does."""

    def __init__(self, schedule, intervals, at: int):
        super().__init__(schedule, intervals)
        self.at, self.step = at, 0

    def before_step(self, step, optimizer):
        self.step = step

    def weights(self, t):
        return torch.full(t.shape, 1e5 if self.step + 1 >= self.at else 1.0, device=t.device)


@pytest.mark.parametrize(
    ("at", "stops_at"),
    [(2, 5), (23, 25)],  # inside the first log interval (against step 1's loss); after 4 healthy rows
)
def test_a_run_whose_loss_spikes_while_staying_finite_stops(tmp_path, at, stops_at):
    schedule, intervals = make_schedule("vp"), Intervals.uniform(5)
    with pytest.raises(
        training.TrainingDiverged, match=rf"diverged at step {stops_at}: .*x its running median"
    ):
        run(tmp_path / "checked", iterations=30, strategy=LossBlowsUpAt(schedule, intervals, at))
    if stops_at < 10:
        assert not (tmp_path / "checked" / CHECKPOINT_NAME).exists()  # nothing of it was saved
    else:
        assert torch.load(tmp_path / "checked" / CHECKPOINT_NAME, weights_only=True)["step"] == 20
    unchecked = run(
        tmp_path / "unchecked",
        iterations=30,
        strategy=LossBlowsUpAt(schedule, intervals, at),
        loss_spike_factor=None,
    )
    losses = [row["loss"] for row in unchecked.history["steps"]]
    assert unchecked.completed and all(math.isfinite(v) for v in losses) and max(losses) > 1e3


def test_the_spike_reference_is_the_median_of_recent_log_rows():
    rows = [{"loss": v} for v in (0.5, 0.1, 0.09, 0.08)]
    assert training._spike_reference(1.0, rows) == pytest.approx(0.1)  # first loss joins while rows are few
    many = [{"loss": 100.0}] + [{"loss": 0.05}] * training.SPIKE_WINDOW
    assert training._spike_reference(1.0, many) == pytest.approx(0.05)  # only the last window counts
    assert training._spike_reference(None, []) is None


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_an_unreadable_checkpoint_is_moved_aside_and_training_starts_over(tmp_path, content):
    (tmp_path / CHECKPOINT_NAME).write_bytes(content)
    with pytest.warns(RuntimeWarning, match=rf"{CHECKPOINT_NAME}: unreadable checkpoint.*starts from step 0"):
        result = run(tmp_path, iterations=12)
    assert result.resumed_from == 0 and result.completed and result.step == 12
    assert (tmp_path / f"{CHECKPOINT_NAME}.unreadable").read_bytes() == content  # kept for inspection
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == 12
