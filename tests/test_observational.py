"""Pieces of the observational study that the stage tests do not pin down: interval-only training draws
and the stitched denoiser of appendix B."""

import pytest
import torch

from diffusion_curriculum.samplers import stitched_denoiser
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import Intervals
from diffusion_curriculum.timesteps.expert import SingleInterval

SCHEDULES = {
    "vp": make_schedule("vp", beta_schedule="linear", num_timesteps=1000),
    "edm": make_schedule("edm"),
    "flow": make_schedule("flow"),
}


@pytest.mark.parametrize("framework", sorted(SCHEDULES))
@pytest.mark.parametrize("index", [0, 7, 19])
def test_single_interval_draws_only_its_own_cell_and_covers_it(framework, index):
    schedule = SCHEDULES[framework]
    intervals = Intervals.uniform(20)
    strategy = SingleInterval(schedule, intervals, index)
    t = strategy.sample(20_000, torch.Generator().manual_seed(0))
    assert (intervals.index(schedule, t) == index).all()
    u = schedule.to_unit(t).double()
    low, high = intervals.unit_edges[index], intervals.unit_edges[index + 1]
    # Uniform in unit time inside the cell: its mean sits in the middle (VP rounds to whole timesteps).
    assert abs(u.mean().item() - (low + high) / 2) < 0.002
    assert u.min().item() - low < 0.002 and high - u.max().item() < 0.002


def test_single_interval_rejects_an_index_outside_the_intervals():
    with pytest.raises(ValueError, match="0..3"):
        SingleInterval(SCHEDULES["vp"], Intervals.uniform(4), 4)


def _constant(value):
    return lambda x, t, y: torch.full_like(x, value)


def test_stitched_denoiser_uses_the_expert_inside_its_interval_only():
    schedule = SCHEDULES["vp"]
    denoise = stitched_denoiser(_constant(0.0), _constant(1.0), schedule, 0.25, 0.5)
    x = torch.zeros(4, 1, 2, 2)
    for t, expected in ((249, 0.0), (250, 1.0), (499, 1.0), (500, 0.0), (999, 0.0)):
        out = denoise(x, torch.full((4,), t), None)
        assert (out == expected).all(), t
    mixed = denoise(x, torch.tensor([0, 300, 600, 400]), None)
    assert mixed.flatten(1)[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_stitched_denoiser_reaches_the_top_of_the_unit_interval():
    schedule = SCHEDULES["flow"]
    denoise = stitched_denoiser(_constant(0.0), _constant(1.0), schedule, 0.75, 1.0)
    out = denoise(torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 0.5], dtype=torch.float64), None)
    assert out.flatten(1)[:, 0].tolist() == [1.0, 0.0]


def test_stitched_denoiser_rejects_an_empty_interval():
    with pytest.raises(ValueError, match="unit_low"):
        stitched_denoiser(_constant(0.0), _constant(1.0), SCHEDULES["vp"], 0.5, 0.5)
