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
    NOT_CONVERGED,
    cluster_intervals,
    convergence_table,
    convergence_trend,
    cumulative_difficulty,
    curriculum_document,
    fitted_settling_step,
    oscillation_onset,
    plateau_step,
)
from diffusion_curriculum.report.findings import convergence_finding
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps.base import Intervals

# A per-step loss curve with a known convergence point: exp decay that stops dead at TURN_STEP, then flat.
RUN_STEPS, TURN_STEP, DECAY_STEPS = 2000, 800, 200.0
DEFAULT_WINDOW = RUN_STEPS // 10  # the measures' default: 10% of the step range
# The first step within 1% of the plateau 1: exp(-k/200) - exp(-4) = 0.01.
WITHIN_1_PERCENT = DECAY_STEPS * math.log(1 / (0.01 + math.exp(-TURN_STEP / DECAY_STEPS)))  # 712.9


def turning_curve() -> np.ndarray:
    """The loss of training steps 1..RUN_STEPS (index k-1 = step k)."""
    k = np.arange(1, RUN_STEPS + 1, dtype=np.float64)
    decay = np.exp(-k / DECAY_STEPS) - math.exp(-TURN_STEP / DECAY_STEPS)
    return 1.0 + np.where(k <= TURN_STEP, decay, 0.0)


def logged(per_step: np.ndarray, log_every: int) -> tuple[np.ndarray, np.ndarray]:
    """Log rows as training.train_loop writes them: after step s (a multiple of log_every, or the last
    step) the mean loss of the steps since the previous row."""
    ends = np.minimum(np.arange(log_every, per_step.size + log_every, log_every), per_step.size)
    starts = np.concatenate([[0], ends[:-1]])
    means = [per_step[a:b].mean() for a, b in zip(starts, ends, strict=True)]
    return ends.astype(np.float64), np.array(means)


def minibatch_noise(per_step: np.ndarray, seed: int, relative_std: float = 0.02) -> np.ndarray:
    """Independent per-step noise proportional to the loss: 2% is a batch of 256 samples whose losses
    vary by about 30% of their mean."""
    return per_step * (1 + np.random.default_rng(seed).normal(0.0, relative_std, per_step.size))


# ----------------------------------------------------------------------------------------------------
# Both measures on training steps


@pytest.mark.parametrize("log_every", [5, 25, 30])
def test_measures_do_not_depend_on_the_logging_interval(log_every):
    """The same curve logged every step and every `log_every` steps (30: the last row averages 20) gives
    the same answers within one logging interval."""
    per_step = turning_curve()
    fine = oscillation_onset(*logged(per_step, 1)), plateau_step(*logged(per_step, 1))
    coarse = oscillation_onset(*logged(per_step, log_every)), plateau_step(*logged(per_step, log_every))
    assert abs(coarse[0].onset - fine[0].onset) <= log_every
    assert abs(coarse[1] - fine[1]) <= log_every
    # Where they land: the smoothed loss stops falling once the window has passed the turn
    # (TURN_STEP + window/2), and enters the 1% band just after the raw curve does.
    assert fine[0].onset == pytest.approx(TURN_STEP + DEFAULT_WINDOW / 2, abs=1)
    assert fine[0].increases == 0  # a flat tail never rises
    assert WITHIN_1_PERCENT <= fine[1] <= WITHIN_1_PERCENT + 20


@pytest.mark.parametrize("seed", range(5))
def test_measures_recover_the_convergence_step_under_minibatch_noise(seed):
    """With 2% per-step noise the onset is within half a window (100 steps, 5% of the run) of the turn,
    and the plateau step within 60 steps of the step the clean curve enters the 1% band, however the
    curve is logged (worst over 40 seeds: 88 and 54 steps)."""
    noisy = minibatch_noise(turning_curve(), seed)
    for log_every in (1, 5, 25):
        steps, losses = logged(noisy, log_every)
        assert abs(oscillation_onset(steps, losses).onset - TURN_STEP) <= DEFAULT_WINDOW / 2
        assert abs(plateau_step(steps, losses) - WITHIN_1_PERCENT) <= 60


def test_monotone_curve_never_oscillates():
    steps = np.arange(10, 1001, 10)
    osc = oscillation_onset(steps, 1.0 / (1.0 + steps))
    assert osc.increases == 0
    assert math.isnan(osc.onset)


def test_onset_of_a_turn_and_the_start_step():
    """A loss that falls to step 300 and rises after it turns at 300; counted from step 500 on, it is
    already oscillating at the start.  Rises are counted only from `start`."""
    k = np.arange(1, 1001, dtype=np.float64)
    v_shape = 1 + np.abs(k - 300) / 1000
    osc = oscillation_onset(k, v_shape, start=0, window=10)
    assert osc.onset == pytest.approx(300, abs=1)
    assert osc.increases == pytest.approx(700, abs=10)
    late = oscillation_onset(k, v_shape, start=500, window=10)
    assert (late.onset, late.increases) == (500.0, 500)


def test_plateau_step_of_noisy_exponential_decay():
    steps = np.arange(10, 20001, 10)
    tau, plateau = 1000.0, 1.0
    clean = plateau + np.exp(-steps / tau)
    noisy = clean + np.random.default_rng(0).normal(0.0, 0.003, steps.size)
    analytic = tau * math.log(1.0 / (0.01 * plateau))  # exp(-s/tau) = 1% of the plateau: 4605.2
    # A window much shorter than the decay leaves it in place (a window w moves it by ~ w^2 / 24 tau).
    assert abs(plateau_step(steps, clean, window=200) - analytic) <= 10  # one logging interval
    assert abs(plateau_step(steps, noisy, window=200) - analytic) < 150
    # A looser tolerance settles earlier: exp(-s/tau) = 5%.
    assert abs(plateau_step(steps, noisy, tolerance=0.05, window=200) - tau * math.log(20)) < 150


def test_the_decrease_band_reads_the_fall_whatever_the_floor():
    """a + b exp(-s/tau): the decrease band settles where all but 1% of the fall from `start` is made,
    start + tau ln 100, for a floor a of 1 or of 1e-3 alike; the plateau band asks for 1% of the floor,
    which a low floor (a high-noise task's loss) puts far later."""
    steps = np.arange(1, 4001)
    tau, start = 300.0, 100
    analytic = start + tau * math.log(100)  # 1481.6
    for floor in (1.0, 1e-3):
        curve = floor + np.exp(-steps / tau)
        got = plateau_step(steps, curve, window=20, band="decrease", start=start)
        assert abs(got - analytic) <= 5, (floor, got)
    assert abs(plateau_step(steps, 1.0 + np.exp(-steps / tau), window=20) - tau * math.log(100)) <= 5
    assert plateau_step(steps, 1e-3 + np.exp(-steps / tau), window=20) > 2 * analytic  # tau ln 1e5
    # Noise proportional to the loss (as a diffusion loss's is) leaves the decrease step in place.
    rng = np.random.default_rng(0)
    noisy = (1e-3 + np.exp(-steps / tau)) * (1 + 0.1 * rng.standard_normal(steps.size))
    assert abs(plateau_step(steps, noisy, window=200, band="decrease", start=start) - analytic) < 100
    with pytest.raises(ValueError, match="band must be one of"):
        plateau_step(steps, noisy, band="level")


def test_plateau_step_is_nan_when_the_curve_never_settles():
    steps = np.arange(10, 1001, 10)
    assert math.isnan(plateau_step(steps, 2.0 - steps / 1000))  # still falling steeply at the end


def gamma_noise(per_step: np.ndarray, relative_std: float, rng) -> np.ndarray:
    """Positive per-step noise with the given share of the level (a mean of squared errors is positive
    and skewed; the experts' per-step noise is 4-100% of their loss)."""
    shape = 1 / relative_std**2
    return per_step * rng.gamma(shape, 1 / shape, per_step.size)


def test_the_fitted_step_is_exact_on_a_decay_and_does_not_move_with_the_run_length():
    """1 + exp(-s/100) from start 100: all but 1% of the fall is made at 100 + 100 ln 100, read the same
    in runs of 800, 1,600 and 2,400 steps (the decrease band reads start + its window-and-tail effects)."""
    per_step = 1 + np.exp(-np.arange(1, 2401) / 100)
    steps, losses = logged(per_step, 5)
    analytic = 100 + 100 * math.log(100)
    for length in (800, 1600, 2400):
        keep = steps <= length
        assert fitted_settling_step(steps[keep], losses[keep], start=100) == pytest.approx(analytic, abs=1)
    fitted = fitted_settling_step(steps, losses, start=100)
    assert plateau_step(steps, losses, band="fit", start=100) == fitted


@pytest.mark.parametrize("relative_std", [0.1, 0.3, 1.0])
def test_noise_widens_the_fitted_step_but_does_not_move_it(relative_std):
    """The experts' noise (10-100% of the loss per step) around 1 + exp(-s/300): the median reading over
    40 noisy runs stays within 10% of the noiseless step, where the decrease band reads "not settled".
    The run is 2.7 times that step long, so that noise rarely pushes a reading past its end."""
    rng = np.random.default_rng(7)
    per_step = 1 + np.exp(-np.arange(1, 4001) / 300)
    analytic = 100 + 300 * math.log(100)  # 1481.6
    readings = []
    for _ in range(40):
        steps, losses = logged(gamma_noise(per_step, relative_std, rng), 5)
        readings.append(fitted_settling_step(steps, losses, start=100))
    readings = np.array(readings)
    assert np.isfinite(readings).sum() >= 30, readings  # the tail test's false alarms: about 5%
    assert abs(np.nanmedian(readings) - analytic) < 0.1 * analytic, readings
    assert math.isnan(plateau_step(steps, losses, band="decrease", start=100))


@pytest.mark.parametrize("relative_std", [0.1, 1.0])
def test_a_flat_curve_has_settled_by_start(relative_std):
    """Settled at `start`, but for the F test's false alarms (about 5%)."""
    assert fitted_settling_step(*logged(np.full(2400, 0.5), 5), start=100) == 100.0
    rng = np.random.default_rng(3)
    readings = [
        fitted_settling_step(*logged(gamma_noise(np.full(2400, 0.5), relative_std, rng), 5), start=100)
        for _ in range(20)
    ]
    assert sum(r == 100.0 for r in readings) >= 16, readings


@pytest.mark.parametrize(
    "curve",
    [
        lambda s: 2.0 - np.log(s) / 10,  # falling in log-time
        lambda s: 1 + 1 / np.sqrt(s),  # a power law: no floor in sight
        lambda s: 1 + np.exp(-s / 100) + 0.2 * np.exp(-s / 3000),  # a slow second fall the fit misses
        lambda s: 1 + np.exp(-s / 1000),  # settles (100 + 1000 ln 100) after the run ends
    ],
)
def test_a_curve_still_falling_has_not_settled(curve):
    rng = np.random.default_rng(5)
    per_step = curve(np.arange(1, 2401, dtype=np.float64))
    assert math.isnan(fitted_settling_step(*logged(per_step, 5), start=100))
    assert math.isnan(fitted_settling_step(*logged(gamma_noise(per_step, 0.1, rng), 5), start=100))


def test_the_fitted_step_refuses_what_it_cannot_read():
    steps, losses = logged(1 + np.exp(-np.arange(1, 401) / 50), 5)
    with pytest.raises(ValueError, match="tolerance must be in"):
        fitted_settling_step(steps, losses, tolerance=0)
    with pytest.raises(ValueError, match="every loss must be > 0"):
        fitted_settling_step(steps, losses - 1.5)
    with pytest.raises(ValueError, match="8 log rows after start = 380"):
        fitted_settling_step(steps, losses, start=380)


def test_window_is_in_steps_and_must_cover_one():
    steps, losses = logged(turning_curve(), 5)
    with pytest.raises(ValueError, match="window must be >= 1"):
        plateau_step(steps, losses, window=0)
    with pytest.raises(ValueError, match="window must be >= 1"):
        oscillation_onset(steps, losses, window=0.5)
    with pytest.raises(ValueError, match="final_fraction"):
        plateau_step(steps, losses, final_fraction=0)


# ----------------------------------------------------------------------------------------------------
# Convergence table


def expert_curves(n: int) -> dict[int, pd.DataFrame]:
    """Expert i converges more slowly for lower i (lower noise), as the paper reports."""
    steps = np.arange(10, 5001, 10)
    return {
        i: pd.DataFrame({"step": steps, "loss": 1 + 0.1 * i + np.exp(-steps * i / 500)})
        for i in range(1, n + 1)
    }


def test_convergence_table_columns_and_values():
    intervals = Intervals.uniform(4)
    curves = expert_curves(4)
    table = convergence_table(curves, intervals, window=50)
    assert list(table.columns) == list(CONVERGENCE_COLUMNS)
    assert table["interval"].tolist() == [1, 2, 3, 4]
    assert table["unit_low"].tolist() == [0.0, 0.25, 0.5, 0.75]
    assert table["unit_high"].tolist() == [0.25, 0.5, 0.75, 1.0]
    for i, curve in curves.items():
        osc = oscillation_onset(curve["step"], curve["loss"], window=50)
        row = table.iloc[i - 1]
        assert row["increases_after_start"] == osc.increases
        assert row["oscillation_onset"] == pytest.approx(osc.onset, nan_ok=True)
    # Lower-noise experts (smaller i) reach their plateau later.
    assert table["plateau_step"].is_monotonic_decreasing
    # exp(-s i / 500) = 1% of the plateau 1 + 0.1 i at s = 500 / i * ln(100 / (1 + 0.1 i)).
    expected = [500 / i * math.log(100 / (1 + 0.1 * i)) for i in range(1, 5)]
    assert table["plateau_step"].to_numpy() == pytest.approx(expected, abs=10)
    assert table["settled"].tolist() == [True] * 4
    assert table["final_loss"].to_numpy() == pytest.approx([1.1, 1.2, 1.3, 1.4], abs=2e-4)
    # The long form gives the same table.
    long = pd.concat([c.assign(interval=i) for i, c in curves.items()], ignore_index=True)
    pd.testing.assert_frame_equal(convergence_table(long, intervals, window=50), table)
    # A curve still falling at the end has not settled.
    curves[2] = curves[2].assign(loss=3.0 - curves[2]["step"] / 5000)
    unsettled = convergence_table(curves, intervals, window=50)
    assert unsettled["settled"].tolist() == [True, False, True, True]
    assert math.isnan(unsettled["plateau_step"].iloc[1])


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
# The trend verdict (the paper: lower-noise intervals converge later)


def measured(steps) -> pd.DataFrame:
    return pd.DataFrame({"interval": range(1, len(steps) + 1), "plateau_step": steps})


def test_trend_of_intervals_that_converge_later_at_low_noise():
    trend = convergence_trend(measured(np.linspace(2000, 500, 20)), "plateau_step")
    assert (trend.intervals, trend.settled) == (20, 20)
    assert trend.rho == pytest.approx(-1.0)
    assert trend.p < 0.05
    assert trend.verdict == "lower-noise intervals converge later, as the paper reports"
    against = convergence_trend(measured(np.linspace(500, 2000, 20)), "plateau_step")
    assert against.rho == pytest.approx(1.0)
    assert "against the paper" in against.verdict
    flat = convergence_trend(measured([700.0] * 20), "plateau_step")
    assert flat.verdict == "no trend (constant values)"
    assert math.isnan(flat.rho)
    noise = convergence_trend(measured(np.random.default_rng(1).permutation(20) * 10.0), "plateau_step")
    assert noise.p >= 0.05
    assert noise.verdict == "no significant trend at the 5% level"


def test_trend_needs_enough_intervals_settled():
    steps = np.linspace(2000, 500, 20)
    steps[:16] = np.nan  # 4 of 20 settled, as in the default run
    trend = convergence_trend(measured(steps), "plateau_step")
    assert (trend.intervals, trend.settled) == (20, 4)
    assert trend.verdict == NOT_CONVERGED == "not converged at this budget"
    assert math.isnan(trend.rho) and math.isnan(trend.p)
    # 15 of 20 is the default threshold of 75%: a trend is measured on those 15.
    steps = np.linspace(2000, 500, 20)
    steps[:5] = np.nan
    trend = convergence_trend(measured(steps), "plateau_step")
    assert trend.settled == 15 and trend.rho == pytest.approx(-1.0)
    stricter = convergence_trend(measured(steps), "plateau_step", min_settled_fraction=0.8)
    assert stricter.verdict == NOT_CONVERGED
    with pytest.raises(ValueError, match="column 'oscillation_onset'"):
        convergence_trend(measured(steps), "oscillation_onset")


def test_convergence_finding_says_how_many_intervals_settled():
    """An onset on every expert, but only 4 of 20 settled on a plateau (as in the default run): no trend
    of either measure is read, because an expert still falling has no convergence point."""
    onset = np.linspace(1500, 400, 20)
    plateau = np.full(20, np.nan)
    plateau[-4:] = [900.0, 800.0, 700.0, 600.0]
    table = pd.DataFrame(
        {
            "interval": range(1, 21),
            "oscillation_onset": onset,
            "plateau_step": plateau,
            "settled": ~np.isnan(plateau),
        }
    )
    lines = convergence_finding(table)
    assert lines == [
        "- 4 of 20 experts settled on a plateau (made all but `convergence.tolerance` of their fall, as "
        "`convergence.band` reads it): not converged at this budget; no trend of either measure is "
        "read."
    ]
    plateau[:14] = np.linspace(2000, 1000, 14)  # 18 of 20 settled: both trends are read
    lines = convergence_finding(table.assign(plateau_step=plateau, settled=~np.isnan(plateau)))
    assert len(lines) == 2
    assert "oscillation onset: 20 of 20 intervals have one" in lines[0] and "as the paper reports" in lines[0]
    assert "plateau step: 18 of 20 intervals have one" in lines[1]


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


def test_a_curve_still_falling_at_the_end_has_not_settled():
    """A steady decline sits within 1 % of its own tail mean only inside that tail: no plateau, and an
    onset pinned at ``start`` (flat within the noise from the first step looked at) is censored."""
    steps = np.arange(1, 201, dtype=float)
    falling = 1.0 - 0.002 * steps
    assert math.isnan(plateau_step(steps, falling, tolerance=0.01))
    rng = np.random.default_rng(0)
    flat_noisy = 0.1 + 0.01 * rng.standard_normal(200)
    table = convergence_table(
        {1: pd.DataFrame({"step": steps, "loss": flat_noisy})}, Intervals.uniform(1), start=100
    )
    assert math.isnan(table["oscillation_onset"].iloc[0])
