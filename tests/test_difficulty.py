"""Convergence points of expert loss curves and the clustering of timesteps (difficulty module)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from diffusion_curriculum.difficulty import (
    CONVERGENCE_COLUMNS,
    cluster_intervals,
    convergence_table,
    cumulative_difficulty,
    curriculum_document,
    oscillation_onset,
    plateau_step,
)
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps.base import Intervals

STEPS = np.arange(0, 1001, 10)


def descent_then_alternation(turn: int = 500) -> np.ndarray:
    """Falls by 0.1 per logged step until ``turn``, then alternates up (+0.1) and down (at 10 - turn/100)."""
    low = 10 - turn / 100
    return np.where(turn >= STEPS, 10 - STEPS / 100, low + 0.1 * ((STEPS // 10) % 2))


# ----------------------------------------------------------------------------------------------------
# Oscillation onset (the paper's measure, appendix B)


def test_monotone_curve_never_oscillates():
    osc = oscillation_onset(STEPS, 1.0 / (1.0 + STEPS))
    assert osc.increases == 0
    assert math.isnan(osc.onset)


def test_onset_of_descent_then_alternation():
    osc = oscillation_onset(STEPS, descent_then_alternation(500))
    # Rises at 510, 530, ..., 990: 25 of them; the first goes up from step 500.
    assert osc.increases == 25
    assert osc.onset == 500.0
    # The third rise is 540 -> 550.
    assert oscillation_onset(STEPS, descent_then_alternation(500), min_increases=3).onset == 540.0
    assert math.isnan(oscillation_onset(STEPS, descent_then_alternation(500), min_increases=26).onset)


def test_increases_are_counted_only_after_start():
    loss = 10 - STEPS / 100
    bumped = loss.copy()
    bumped[STEPS == 50] += 1.0  # rises 40 -> 50: before step 100
    bumped[STEPS == 100] += 1.0  # rises 90 -> 100: starts before step 100
    assert oscillation_onset(STEPS, bumped).increases == 0
    bumped[STEPS == 110] += 2.0  # rises 100 -> 110: counted
    osc = oscillation_onset(STEPS, bumped)
    assert (osc.increases, osc.onset) == (1, 100.0)
    assert oscillation_onset(STEPS, bumped, start=0).increases == 3


# ----------------------------------------------------------------------------------------------------
# Plateau step (noise-robust measure)


def test_plateau_step_of_noisy_exponential_decay():
    steps = np.arange(0, 20001, 10)
    tau, plateau = 1000.0, 1.0
    clean = plateau + np.exp(-steps / tau)
    noisy = clean + np.random.default_rng(0).normal(0.0, 0.003, steps.size)
    analytic = tau * math.log(1.0 / (0.01 * plateau))  # exp(-s/tau) = 1% of the plateau: 4605.2
    assert plateau_step(steps, clean) == pytest.approx(4610.0)  # first logged step past it
    assert abs(plateau_step(steps, noisy) - analytic) < 150
    # A looser tolerance settles earlier: exp(-s/tau) = 5%.
    assert abs(plateau_step(steps, noisy, tolerance=0.05) - tau * math.log(20)) < 150


def test_plateau_step_is_nan_when_the_curve_never_settles():
    assert math.isnan(plateau_step(STEPS, 2.0 - STEPS / 1000))  # still falling steeply at the end


# ----------------------------------------------------------------------------------------------------
# Convergence table


def expert_curves(n: int) -> dict[int, pd.DataFrame]:
    """Expert i converges more slowly for lower i (lower noise), as the paper reports."""
    steps = np.arange(0, 5001, 10)
    return {
        i: pd.DataFrame({"step": steps, "loss": 1 + 0.1 * i + np.exp(-steps * i / 500)})
        for i in range(1, n + 1)
    }


def test_convergence_table_columns_and_values():
    intervals = Intervals.uniform(4)
    curves = expert_curves(4)
    table = convergence_table(curves, intervals)
    assert list(table.columns) == list(CONVERGENCE_COLUMNS)
    assert table["interval"].tolist() == [1, 2, 3, 4]
    assert table["unit_low"].tolist() == [0.0, 0.25, 0.5, 0.75]
    assert table["unit_high"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert (table["increases_after_start"] == 0).all()
    assert table["oscillation_onset"].isna().all()
    # Lower-noise experts (smaller i) reach their plateau later.
    assert table["plateau_step"].is_monotonic_decreasing
    assert table["plateau_step"].iloc[-1] < table["plateau_step"].iloc[0]
    # exp(-s i / 500) = 1% of the plateau 1 + 0.1 i at s = 500 / i * ln(100 / (1 + 0.1 i)), next logged step.
    expected = [10 * math.ceil(50 / i * math.log(100 / (1 + 0.1 * i))) for i in range(1, 5)]
    assert table["plateau_step"].tolist() == expected
    assert table["final_loss"].to_numpy() == pytest.approx([1.1, 1.2, 1.3, 1.4], abs=2e-4)
    # The long form gives the same table.
    long = pd.concat([c.assign(interval=i) for i, c in curves.items()], ignore_index=True)
    pd.testing.assert_frame_equal(convergence_table(long, intervals), table)


@pytest.mark.parametrize(
    ("interval", "frame", "message"),
    [
        (2, pd.DataFrame({"step": [0, 1]}), r"interval 2: missing column 'loss'"),
        (3, pd.DataFrame({"step": [], "loss": []}), r"interval 3: column 'loss' is empty"),
        (
            1,
            pd.DataFrame({"step": [0, 20, 10], "loss": [3.0, 2.0, 1.0]}),
            r"interval 1: column 'step'.*increasing",
        ),
        (4, pd.DataFrame({"step": [0, 10], "loss": [1.0, np.nan]}), r"interval 4: column 'loss'.*non-finite"),
    ],
)
def test_convergence_table_names_the_bad_interval_and_column(interval, frame, message):
    curves = expert_curves(4)
    curves[interval] = frame
    with pytest.raises(ValueError, match=message):
        convergence_table(curves, Intervals.uniform(4))


def test_convergence_table_needs_every_interval():
    curves = expert_curves(4)
    del curves[3]
    with pytest.raises(ValueError, match=r"interval\(s\) \[3\]"):
        convergence_table(curves, Intervals.uniform(4))
    with pytest.raises(ValueError, match="'interval'"):
        convergence_table(pd.DataFrame({"step": [0], "loss": [1.0]}), Intervals.uniform(1))


# ----------------------------------------------------------------------------------------------------
# Clustering rules

SCHEDULES = {
    "vp_linear": lambda: make_schedule("vp", beta_schedule="linear", num_timesteps=1000),
    "vp_cosine": lambda: make_schedule("vp", beta_schedule="cosine", num_timesteps=1000),
    "edm": lambda: make_schedule("edm"),
    "flow": lambda: make_schedule("flow", t_min=1e-5),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_uniform_rule_is_the_papers(name):
    intervals = cluster_intervals("uniform", 20, SCHEDULES[name]())
    assert intervals == Intervals.uniform(20)
    assert intervals.rule == "uniform"


def edge_times(schedule, intervals):
    """Timesteps at the inner edges of the cells."""
    return schedule.from_unit(torch.tensor(intervals.unit_edges[1:-1], dtype=torch.float64))


@pytest.mark.parametrize(("name", "num"), [("vp_linear", 20), ("vp_cosine", 10), ("flow", 20), ("edm", 20)])
def test_snr_rule_spaces_log_snr_equally(name, num):
    schedule = SCHEDULES[name]()
    intervals = cluster_intervals("snr", num, schedule)
    assert intervals.rule == "snr"
    assert intervals.num == num
    assert intervals.order == tuple(range(num - 1, -1, -1))
    if schedule.discrete:
        ends = torch.tensor([0, schedule.num_timesteps - 1])
    elif name == "edm":
        ends = torch.tensor([schedule.sigma_min, schedule.sigma_max], dtype=torch.float64)
    else:
        ends = torch.tensor([1e-5, 1 - 1e-5], dtype=torch.float64)
    lam_hi, lam_lo = schedule.log_snr(ends).tolist()
    targets = lam_hi - np.arange(1, num) / num * (lam_hi - lam_lo)
    t = edge_times(schedule, intervals)
    lam = schedule.log_snr(t).numpy()
    if not schedule.discrete:  # continuous: exact up to rounding
        assert lam == pytest.approx(targets, abs=1e-6)
        assert np.diff(lam) == pytest.approx(np.full(num - 2, (lam_lo - lam_hi) / num), abs=1e-6)
        return
    # Discrete: each edge is the timestep whose log-SNR is nearest to the equally spaced level.
    table = schedule.log_snr(torch.arange(schedule.num_timesteps)).numpy()
    for lam_k, target in zip(lam, targets, strict=True):
        assert abs(lam_k - target) <= np.abs(table - target).min() + 1e-12
    if name == "vp_linear":  # fine steps everywhere (unlike cosine's clipped last step): levels met closely
        assert np.abs(lam - targets).max() < 0.5


def test_coincident_edges_raise_or_merge():
    # VP cosine clips its last beta, so its lowest log-SNR levels share timesteps at N = 20.
    schedule = SCHEDULES["vp_cosine"]()
    with pytest.raises(ValueError, match=r"only 17 distinct cells remain of 20.*allow_merge"):
        cluster_intervals("snr", 20, schedule)
    merged = cluster_intervals("snr", 20, schedule, allow_merge=True)
    assert merged.num == 17 and merged.order == tuple(range(16, -1, -1))
    # 20 timesteps cannot hold 20 log-normal quantiles: those above sigma(T-1) clamp to the last step.
    with pytest.raises(ValueError, match="edm_quantile.*distinct cells"):
        cluster_intervals("edm_quantile", 20, make_schedule("vp", num_timesteps=20))


def lognormal_mass_per_cell(schedule, intervals, p_mean=-1.2, p_std=1.2):
    u = torch.tensor(intervals.unit_edges, dtype=torch.float64)
    sigma = schedule.edm_sigma(schedule.from_unit(u[1:-1])).numpy()
    cdf = np.concatenate([[0.0], norm.cdf((np.log(sigma) - p_mean) / p_std), [1.0]])
    return np.diff(cdf)


@pytest.mark.parametrize("name", ["edm", "flow"])
def test_edm_quantile_cells_hold_equal_lognormal_mass(name):
    schedule = make_schedule("edm", p_mean=-0.4, p_std=1.0) if name == "edm" else SCHEDULES[name]()
    intervals = cluster_intervals("edm_quantile", 20, schedule)
    assert intervals.rule == "edm_quantile"
    assert lognormal_mass_per_cell(schedule, intervals) == pytest.approx(np.full(20, 1 / 20), abs=1e-9)
    # The rule's own P_mean / P_std are honoured.
    other = cluster_intervals("edm_quantile", 8, schedule, p_mean=0.5, p_std=0.7)
    assert lognormal_mass_per_cell(schedule, other, 0.5, 0.7) == pytest.approx(np.full(8, 1 / 8), abs=1e-9)


def test_edm_quantile_on_edm_defaults_is_uniform_and_on_vp_nearest_steps():
    intervals = cluster_intervals("edm_quantile", 20, make_schedule("edm"))
    assert intervals.unit_edges == pytest.approx(Intervals.uniform(20).unit_edges, abs=1e-12)
    vp = SCHEDULES["vp_linear"]()
    intervals = cluster_intervals("edm_quantile", 20, vp)
    t = edge_times(vp, intervals)
    target = -1.2 + 1.2 * norm.ppf(np.arange(1, 20) / 20)  # ln sigma_i
    for tk, ln_sigma in zip(t.tolist(), target, strict=True):
        around = vp.edm_sigma(torch.tensor([tk - 1, tk, tk + 1])).log().numpy()
        assert abs(around[1] - ln_sigma) <= min(abs(around[0] - ln_sigma), abs(around[2] - ln_sigma))


def kl_curve(density, points: int = 401) -> pd.DataFrame:
    u = np.linspace(0.0, 1.0, points)
    return pd.DataFrame({"unit": u, "kl": density(u)})


def test_difficulty_rule_gives_equal_shares_of_the_kl():
    schedule = SCHEDULES["flow"]()
    intervals = cluster_intervals("difficulty", 20, schedule, kl_curve(lambda u: np.exp(-5 * u)))
    assert intervals.rule == "difficulty"
    assert intervals.order == tuple(range(19, -1, -1))
    edges = np.asarray(intervals.unit_edges)

    def integral(x):
        return (1 - np.exp(-5 * x)) / 5

    shares = np.diff(integral(edges)) / integral(1.0)
    assert shares == pytest.approx(np.full(20, 1 / 20), rel=0.01)
    # Narrow where the difficulty is dense (low noise), wide where it is sparse.
    assert (np.diff(np.diff(edges)) > 0).all()


def test_difficulty_rule_on_a_flat_signal_is_uniform():
    flat = kl_curve(lambda u: np.full_like(u, 0.3), points=11)
    intervals = cluster_intervals("difficulty", 20, SCHEDULES["flow"](), flat)
    assert intervals.unit_edges == pytest.approx(Intervals.uniform(20).unit_edges, abs=1e-12)
    # Discrete schedules round the edges to whole timesteps.
    vp = cluster_intervals("difficulty", 20, SCHEDULES["vp_linear"](), flat)
    assert vp.unit_edges == Intervals.uniform(20).unit_edges
    vp = cluster_intervals("difficulty", 20, SCHEDULES["vp_linear"](), kl_curve(lambda u: np.exp(-5 * u)))
    assert np.round(np.asarray(vp.unit_edges) * 1000) / 1000 == pytest.approx(vp.unit_edges, abs=0)


def test_difficulty_rule_from_a_convergence_table():
    table = pd.DataFrame(
        {
            "unit_low": [0.0, 0.25, 0.5, 0.75],
            "unit_high": [0.25, 0.5, 0.75, 1.0],
            "plateau_step": [4.0, 2.0, 1, 1],
        }
    )
    # Total 8, a share of 2 each: the first quarter holds 4 (two clusters), the second 2, the rest 2.
    intervals = cluster_intervals("difficulty", 4, SCHEDULES["flow"](), table)
    assert intervals.unit_edges == pytest.approx([0.0, 0.125, 0.25, 0.5, 1.0], abs=1e-3)
    # Negative measures are clipped to 0; the floor still keeps every cell open.
    knots, cum = cumulative_difficulty(table.assign(plateau_step=[1.0, -3.0, 0.0, 1.0]))
    assert (np.diff(cum) > 0).all() and cum[0] == 0.0 and cum[-1] == 1.0


def test_measured_order_puts_the_lowest_difficulty_density_first():
    bump = pd.DataFrame(
        {
            "unit_low": [0.0, 0.25, 0.5, 0.75],
            "unit_high": [0.25, 0.5, 0.75, 1.0],
            "plateau_step": [1.0, 3.0, 2.0, 1.0],
        }
    )
    intervals = cluster_intervals("uniform", 4, SCHEDULES["edm"](), bump, order="measured")
    # Densities 1, 3, 2, 1: the tie between C_1 and C_4 goes to the higher noise first.
    assert intervals.order == (3, 0, 2, 1)
    decaying = kl_curve(lambda u: np.exp(-5 * u))
    same = cluster_intervals("difficulty", 10, SCHEDULES["flow"](), decaying, order="measured")
    assert same.order == tuple(range(9, -1, -1))
    rising = kl_curve(lambda u: np.exp(5 * u))
    flipped = cluster_intervals("difficulty", 10, SCHEDULES["flow"](), rising, order="measured")
    assert flipped.order == tuple(range(10))


# ----------------------------------------------------------------------------------------------------
# The curriculum document


def test_curriculum_document_round_trips():
    schedule = SCHEDULES["vp_linear"]()
    intervals = cluster_intervals(
        "difficulty", 8, schedule, kl_curve(lambda u: np.exp(-3 * u)), order="measured"
    )
    how = {
        "signal": "kl",
        "source": "kl.parquet",
        "column": "kl",
        "density_floor": np.float64(1e-4),
        "order": "measured",
    }
    doc = json.loads(json.dumps(curriculum_document(intervals, schedule, how)))
    assert Intervals.from_json(doc) == intervals
    assert doc["chosen_by"] == {
        "rule": "difficulty",
        "signal": "kl",
        "source": "kl.parquet",
        "column": "kl",
        "density_floor": 1e-4,
        "order": "measured",
    }
    assert doc["framework"] == "vp" and len(doc["native_edges"]) == 9
    with pytest.raises(ValueError, match="rule"):
        curriculum_document(intervals, schedule, {"rule": "snr"})


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_bad_clustering_input_is_rejected():
    schedule = SCHEDULES["flow"]()
    with pytest.raises(ValueError, match="uniform, snr, edm_quantile, difficulty"):
        cluster_intervals("quantile", 20, schedule)
    with pytest.raises(ValueError, match="needs a difficulty signal"):
        cluster_intervals("difficulty", 20, schedule)
    with pytest.raises(ValueError, match="needs a difficulty signal"):
        cluster_intervals("uniform", 20, schedule, order="measured")
    with pytest.raises(ValueError, match="paper, measured"):
        cluster_intervals("uniform", 20, schedule, order="hardest")
    with pytest.raises(ValueError, match="num_clusters"):
        cluster_intervals("uniform", 0, schedule)
    nan_kl = kl_curve(lambda u: np.exp(-u))
    nan_kl.loc[3, "kl"] = np.nan
    with pytest.raises(ValueError, match="column 'kl'.*NaN"):
        cluster_intervals("difficulty", 4, schedule, nan_kl)
    table = pd.DataFrame({"unit_low": [0.0, 0.5], "unit_high": [0.5, 1.0], "plateau_step": [1.0, np.nan]})
    with pytest.raises(ValueError, match="column 'plateau_step'.*NaN"):
        cluster_intervals("difficulty", 2, schedule, table)
    with pytest.raises(ValueError, match="column 'oscillation_onset'"):
        cluster_intervals("difficulty", 2, schedule, table, column="oscillation_onset")
    with pytest.raises(ValueError, match="tile"):
        cluster_intervals("difficulty", 2, schedule, table.assign(unit_high=[0.4, 1.0], plateau_step=1.0))
    with pytest.raises(ValueError, match="expected a curve"):
        cluster_intervals("difficulty", 2, schedule, pd.DataFrame({"t": [1], "kl": [1.0]}))
    with pytest.raises(ValueError, match="no positive difficulty"):
        cluster_intervals("difficulty", 2, schedule, kl_curve(np.zeros_like))
