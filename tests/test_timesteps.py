"""Timestep intervals and the vanilla strategy."""

import json

import pytest
import torch

from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import Intervals, Vanilla, make_strategy


def test_uniform_vp_intervals_are_the_papers():
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(20)
    t = torch.arange(1000)
    idx = intervals.index(schedule, t)
    # C_i = [(i-1) T/N, i T/N): 50 timesteps each, C_1 holds t = 0..49.
    assert torch.equal(idx, t // 50)
    assert intervals.order == tuple(range(19, -1, -1))


def test_edm_intervals_are_lognormal_quantiles():
    schedule = make_schedule("edm")
    intervals = Intervals.uniform(4)
    sigma = schedule.from_unit(torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64))
    assert intervals.index(schedule, sigma).tolist() == [0, 1, 2, 3]
    # The middle edge is the median of the log-normal: exp(P_mean).
    median = torch.tensor([torch.exp(torch.tensor(-1.2)).item()], dtype=torch.float64)
    assert intervals.index(schedule, median * 0.999).item() == 1
    assert intervals.index(schedule, median * 1.001).item() == 2


def test_curriculum_json_round_trip(tmp_path):
    schedule = make_schedule("vp", beta_schedule="cosine")
    intervals = Intervals(unit_edges=(0.0, 0.1, 0.5, 1.0), order=(2, 0, 1), rule="difficulty")
    path = tmp_path / "curriculum.json"
    path.write_text(json.dumps(intervals.to_json(schedule)))
    assert Intervals.load(path) == intervals
    assert json.loads(path.read_text())["native_edges"] == [0.0, 100.0, 500.0, 999.0]


@pytest.mark.parametrize(
    ("edges", "order", "message"),
    [
        ((0.0, 0.5), (0,), "1.0"),
        ((0.0, 0.6, 0.4, 1.0), (2, 1, 0), "increasing"),
        ((0.0, 0.5, 1.0), (0, 0), "order"),
    ],
)
def test_bad_intervals_are_rejected(edges, order, message):
    with pytest.raises(ValueError, match=message):
        Intervals(unit_edges=edges, order=order)


def test_bad_curriculum_file_names_itself(tmp_path):
    path = tmp_path / "curriculum.json"
    path.write_text("{not json")
    with pytest.raises(InputFileError, match="curriculum.json: not valid JSON"):
        Intervals.load(path)
    with pytest.raises(InputFileError, match="missing.json: not found"):
        Intervals.load(tmp_path / "missing.json")
    path.write_text('{"format_version": 1}')
    with pytest.raises(InputFileError, match="curriculum.json: missing key 'unit_edges'"):
        Intervals.load(path)


def test_vanilla_draws_the_framework_density():
    g = torch.Generator().manual_seed(0)
    vp = make_strategy("vanilla", make_schedule("vp"), Intervals.uniform(20))
    t = vp.sample(20000, g)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    counts = torch.bincount(t // 50, minlength=20).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.1
    edm = Vanilla(make_schedule("edm"), Intervals.uniform(20))
    log_sigma = edm.sample(20000, g).log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.05 and abs(log_sigma.std().item() - 1.2) < 0.05


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="'dtdd'"):
        make_strategy("dtdd", make_schedule("vp"), Intervals.uniform(2))
