"""Timestep strategies: pacing replayed against Algorithms 1-2 of the paper, exact resume, the densities
each strategy states (goodness-of-fit tests with fixed seeds), weight formulas and momentum decay."""

import inspect
import io
import math
import re
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from diffusion_curriculum.models import create_model
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import (
    CLTS,
    DTD,
    STRATEGIES,
    AntiCL,
    Intervals,
    NaiveCL,
    SpeeD,
    make_strategy,
    strategy_parameters,
)
from diffusion_curriculum.training import train_loop

torch.set_num_threads(1)

N_DRAWS = 100_000
P_MIN = 1e-3  # fixed seeds make every goodness-of-fit test deterministic


# ------------------------------------------------------------------------------------------------------
# helpers


def batch_loss(value: float, batch: int = 4) -> torch.Tensor:
    """A per-sample loss whose mean is exactly ``value`` (the spread cancels in binary arithmetic)."""
    spread = torch.tensor([-0.5, -0.25, 0.25, 0.5])[:batch]
    return (value + spread).to(torch.float32)


def replay(strategy, losses, start_step=1, gen=None, batch=8):
    """Feed a scripted loss sequence through before_step / sample / observe like the training loop;
    returns the stage after each step and the samples drawn."""
    stages, samples = [], []
    for step, value in enumerate(losses, start=start_step):
        strategy.before_step(step - 1, None)
        t = strategy.sample(batch, gen if gen is not None else torch.Generator().manual_seed(step))
        samples.append(t)
        strategy.observe(step, t, batch_loss(value))
        stages.append(strategy.stage)
    return stages, samples


def set_stage(strategy: DTD, stage: int) -> None:
    state = strategy.state_dict()
    state["stage"] = torch.tensor(stage)
    strategy.load_state_dict(state)


def merge_small(observed, expected, min_expected=5.0):
    """Merge neighbouring cells until each expects at least ``min_expected`` draws (chi-square validity)."""
    obs, exp = [], []
    acc_o = acc_e = 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o += float(o)
        acc_e += float(e)
        if acc_e >= min_expected:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0 or acc_o > 0:
        obs[-1] += acc_o
        exp[-1] += acc_e
    return obs, exp


def chi2_pvalue(observed, probs) -> float:
    observed = torch.as_tensor(observed, dtype=torch.float64)
    probs = torch.as_tensor(probs, dtype=torch.float64)
    # Cells the density excludes must be empty; they carry no degrees of freedom.
    assert observed[probs == 0].sum() == 0
    keep = probs > 0
    n = float(observed.sum())
    obs, exp = merge_small(observed[keep].tolist(), (probs[keep] / probs[keep].sum() * n).tolist())
    return float(stats.chisquare(obs, exp).pvalue)


def vp_fit(t: torch.Tensor, cell_probs: torch.Tensor, group: int = 20) -> float:
    """Chi-square of VP timesteps against per-timestep probabilities, in groups of ``group`` steps."""
    T = cell_probs.numel()
    counts = torch.bincount(t, minlength=T).double()
    return chi2_pvalue(counts.view(-1, group).sum(1), cell_probs.view(-1, group).sum(1))


def vp_probs_from_unit_cdf(cdf, T: int = 1000) -> torch.Tensor:
    """P(t) when u has CDF ``cdf`` and t = floor(u T) (VP's from_unit)."""
    edges = torch.arange(T + 1, dtype=torch.float64) / T
    return cdf(edges[1:]) - cdf(edges[:-1])


def unit_fit(u: torch.Tensor, cdf, bins: int = 50) -> float:
    """Chi-square of unit-interval draws against a CDF, on ``bins`` equal cells."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    counts = torch.histogram(u.double().clamp(0, 1 - 1e-15), bins=edges).hist
    return chi2_pvalue(counts, cdf(edges[1:]) - cdf(edges[:-1]))


def uniform_union_cdf(intervals):
    """CDF of the uniform density on a union of [lo, hi) intervals."""
    total = sum(hi - lo for lo, hi in intervals)

    def cdf(u):
        u = torch.as_tensor(u, dtype=torch.float64)
        return sum((u.clamp(lo, hi) - lo) for lo, hi in intervals) / total

    return cdf


# ------------------------------------------------------------------------------------------------------
# dtd: pacing (Algorithms 1-2 of seeds/002, appendix D)

# tau_max = 2.  Hand replay of Algorithm 1 (pacing) + Algorithm 2 (L_best update), stage n = N - I_cur:
#  step loss  L_best-before  branch                          patience  stage  L_best-after
#   1   5     inf            L<best: reset                   0         0      5
#   2   4     5              reset                           0         0      4
#   3   4     4              equal is no improvement: p+1=1  1         0      4
#   4   4.5   4              p+1=2 <= 2                      2         0      4
#   5   3     4              reset                           0         0      3
#   6   3     3              p=1                             1         0      3
#   7   3.5   3              p=2                             2         0      3
#   8   3.25  3              p+1=3 > 2: next stage           0         1      inf   <- transition at 8
#   9   6     inf            reset (the best was reset)      0         1      6
#  10   7     6              p=1                             1         1      6
#  11   7     6              p=2                             2         1      6
#  12   7     6              p+1=3 > 2: next stage           0         2      inf   <- transition at 12
#  13   1     inf            reset                           0         2      1
#  14   2     1              p=1                             1         2      1
#  15   0.5   1              reset                           0         2      0.5
#  16-17 0.5  0.5            p=1, 2                          2         2      0.5
#  18   0.5   0.5            p+1=3 > 2: next stage           0         3      inf   <- transition at 18
#  19   9     inf            reset                           0         3      9
#  20-21 9    9              p=1, 2                          2         3      9
#  22   9     9              p+1=3 > 2: exit (I_cur 1 -> 0)  0         3      inf   <- transition at 22
#  23-24 0                   the curriculum has ended: pacing frozen (0 < inf would otherwise reset)
# Stage 3 = N-1 already holds every cluster, so the exit (Algorithm 2's N-th transition) changes no draw.
# Had L_best not been reset at step 8, steps 9-11 (6, 7, 7 >= 3) would exhaust the patience and the
# second transition would come at step 11; had it not been set on the reset at step 5, the losses 3 and
# 3.5 at steps 6-7 would count as improvements over 4 and the first transition would come later.
SCRIPT = [5, 4, 4, 4.5, 3, 3, 3.5, 3.25, 6, 7, 7, 7, 1, 2, 0.5, 0.5, 0.5, 0.5, 9, 9, 9, 9, 0, 0]
SCRIPT_STAGES = [0] * 7 + [1] * 4 + [2] * 6 + [3] * 7
# Both numberings: Algorithm 2's iteration counts from 0 (= step - 1), its index I_cur = N - stage.
SCRIPT_TRANSITIONS = [
    {"step": 8, "from_stage": 0, "to_stage": 1, "iteration": 7, "from_index": 4, "to_index": 3},
    {"step": 12, "from_stage": 1, "to_stage": 2, "iteration": 11, "from_index": 3, "to_index": 2},
    {"step": 18, "from_stage": 2, "to_stage": 3, "iteration": 17, "from_index": 2, "to_index": 1},
    {"step": 22, "from_stage": 3, "to_stage": 4, "iteration": 21, "from_index": 1, "to_index": 0},
]


def test_dtd_pacing_follows_algorithms_1_and_2():
    dtd = DTD(make_schedule("vp"), Intervals.uniform(4), tau_max=2)
    stages = []
    for step, value in enumerate(SCRIPT, start=1):
        dtd.observe(step, torch.zeros(4, dtype=torch.long), batch_loss(value))
        stages.append(dtd.stage)
        state = dtd.state_dict()
        if step == 8:  # the transition step resets the best loss and the patience
            assert state["best"].item() == math.inf and state["patience"].item() == 0
        if step == 9:  # the next loss becomes the new stage's best
            assert state["best"].item() == 6.0 and state["patience"].item() == 0
    assert stages == SCRIPT_STAGES
    assert dtd.transitions() == SCRIPT_TRANSITIONS  # N = 4 transitions, as Algorithm 2 makes
    state = dtd.state_dict()
    assert state["best"].item() == math.inf and state["patience"].item() == 0  # frozen after the exit


def test_dtd_tau_max_zero_advances_on_every_non_improving_step():
    dtd = DTD(make_schedule("vp"), Intervals.uniform(3), tau_max=0)
    # 1: best 1; 2: 1 >= 1 and 0 + 1 > 0 -> stage 1; 3: best 1 (reset); 4: stage 2 (= N-1, every
    # cluster); 5: best 1; 6: the exit (I_cur 1 -> 0); 7-8: frozen.
    for step, value in enumerate([1, 1, 1, 1, 1, 1, 1, 1], start=1):
        dtd.observe(step, None, batch_loss(value))
    assert [r["step"] for r in dtd.transitions()] == [2, 4, 6]
    assert [r["to_index"] for r in dtd.transitions()] == [2, 1, 0]
    assert dtd.stage == 2


def test_dtd_ema_pacing_signal():
    losses = [4, 2, 2, 2, 3, 3, 10]
    raw = DTD(make_schedule("vp"), Intervals.uniform(3), tau_max=1)
    for step, value in enumerate(losses[:4], start=1):
        raw.observe(step, None, batch_loss(value))
    # Raw: 4 best, 2 best, 2 (p=1), 2 (p+1 = 2 > 1) -> transition at step 4.
    assert [r["step"] for r in raw.transitions()] == [4]

    ema = DTD(make_schedule("vp"), Intervals.uniform(3), tau_max=1, pacing_signal="ema", ema_beta=0.5)
    for step, value in enumerate(losses, start=1):
        ema.observe(step, None, batch_loss(value))
    # Bias-corrected EMA m_j / (1 - 0.5^j), m_j = 0.5 m_{j-1} + 0.5 L_j:
    #   j=1: 2/0.5 = 4 (best)   j=2: 2/0.75 = 2.667 (best)   j=3: 2/0.875 = 2.286 (best)
    #   j=4: 2/0.9375 = 2.133 (best: the EMA of a constant still falls, so no transition at step 4)
    #   j=5: 2.5/(31/32) = 2.581 (p=1)   j=6: 2.75/(63/64) = 2.794 (p+1 = 2 > 1) -> transition at step 6
    # Step 7 starts the new stage's EMA afresh: m_1 = 0.5 * 10 = 5, signal 5/0.5 = 10 = the new best.
    assert [r["step"] for r in ema.transitions()] == [6]
    state = ema.state_dict()
    assert state["ema"].item() == 5.0 and state["ema_count"].item() == 1 and state["best"].item() == 10.0


def test_dtd_samples_only_the_stage_clusters_and_ends_as_vanilla():
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(4)
    dtd = make_strategy("dtd", schedule, intervals, tau_max=5)
    for stage in range(4):
        set_stage(dtd, stage)
        t = dtd.sample(40_000, torch.Generator().manual_seed(stage))
        assert t.dtype == torch.long
        clusters = intervals.index(schedule, t)
        # Cumulative, easiest first: stage n draws C_{N-n} ... C_N (0-based: N-1-n ... N-1).
        assert sorted(clusters.unique().tolist()) == list(range(3 - stage, 4))
        assert dtd.clusters_at(stage) == tuple(range(3 - stage, 4))
        lo = (3 - stage) / 4
        assert vp_fit(t, vp_probs_from_unit_cdf(uniform_union_cdf([(lo, 1.0)]))) > P_MIN
    # The last stage is the framework's own density, draw for draw.
    vanilla = make_strategy("vanilla", schedule, intervals)
    assert torch.equal(
        dtd.sample(1000, torch.Generator().manual_seed(7)),
        vanilla.sample(1000, torch.Generator().manual_seed(7)),
    )


def test_dtd_general_order_samples_a_non_contiguous_union():
    schedule = make_schedule("flow")
    intervals = Intervals(unit_edges=(0.0, 0.1, 0.5, 0.7, 1.0), order=(2, 0, 3, 1), rule="difficulty")
    dtd = DTD(schedule, intervals)
    set_stage(dtd, 1)  # clusters 2 and 0: [0.5, 0.7) ∪ [0, 0.1), widths 0.2 and 0.1
    u = schedule.to_unit(dtd.sample(N_DRAWS, torch.Generator().manual_seed(1)))
    assert ((u < 0.1) | ((u >= 0.5) & (u < 0.7))).all()
    assert unit_fit(u, uniform_union_cdf([(0.0, 0.1), (0.5, 0.7)]), bins=40) > P_MIN
    assert abs((u < 0.1).double().mean().item() - 1 / 3) < 0.01


def test_anti_cl_runs_hard_to_easy_with_the_same_pacing():
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(4)
    anti = make_strategy("anti_cl", schedule, intervals, tau_max=2)
    assert isinstance(anti, AntiCL)
    t0 = anti.sample(20_000, torch.Generator().manual_seed(0))
    assert intervals.index(schedule, t0).unique().tolist() == [0]  # C_1, the lowest noise, first
    stages, _ = replay(anti, SCRIPT)
    assert stages == SCRIPT_STAGES and anti.transitions() == SCRIPT_TRANSITIONS
    set_stage(anti, 1)
    t = anti.sample(N_DRAWS, torch.Generator().manual_seed(1))
    assert intervals.index(schedule, t).unique().tolist() == [0, 1]
    assert vp_fit(t, vp_probs_from_unit_cdf(uniform_union_cdf([(0.0, 0.5)]))) > P_MIN


def test_dtd_resumes_bit_for_bit_mid_stage():
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(4)

    def fresh():
        return DTD(schedule, intervals, tau_max=2, pacing_signal="ema", ema_beta=0.5)

    whole = fresh()
    g = torch.Generator().manual_seed(3)
    _, samples_whole = replay(whole, SCRIPT, gen=g)

    first = fresh()
    g = torch.Generator().manual_seed(3)
    _, samples_first = replay(first, SCRIPT[:11], gen=g)
    assert first.stage >= 1 and first.state_dict()["patience"].item() > 0  # mid-stage, mid-patience
    buffer = io.BytesIO()
    torch.save({"strategy": first.state_dict(), "generator": g.get_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = fresh()
    resumed.load_state_dict(saved["strategy"])
    g2 = torch.Generator()
    g2.set_state(saved["generator"])
    _, samples_rest = replay(resumed, SCRIPT[11:], start_step=12, gen=g2)
    assert all(torch.equal(a, b) for a, b in zip(samples_whole, samples_first + samples_rest, strict=True))
    assert resumed.transitions() == whole.transitions()
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_dtd_state_load_rejects_another_cluster_count():
    state = DTD(make_schedule("vp"), Intervals.uniform(4)).state_dict()
    with pytest.raises(ValueError, match="transition_steps"):
        DTD(make_schedule("vp"), Intervals.uniform(5)).load_state_dict(state)


def test_dtd_observe_has_no_host_sync():
    # CPU tests cannot use torch.cuda.set_sync_debug_mode; guard the source instead and check that the
    # state stays tensors on the loss's device.
    source = inspect.getsource(DTD.observe)
    for call in (".item(", ".tolist(", ".cpu(", ".numpy(", "float(", "int(", "bool("):
        assert call not in source, call
    dtd = DTD(make_schedule("vp"), Intervals.uniform(4), tau_max=0)
    for step in range(1, 5):
        dtd.observe(step, None, torch.ones(4, dtype=torch.bfloat16))
    assert all(isinstance(v, torch.Tensor) for v in dtd.state_dict().values())
    assert dtd.stage == 2 and [r["step"] for r in dtd.transitions()] == [2, 4]


# ------------------------------------------------------------------------------------------------------
# naive_cl, clts + momentum decay


def test_naive_cl_fixed_pacing():
    schedule = make_schedule("vp")
    intervals = Intervals.uniform(4)
    naive = make_strategy("naive_cl", schedule, intervals, stage_steps=5)
    stages, _ = replay(naive, [1.0] * 20)
    # The stage of step k (1-based) is floor((k - 1) / 5), read after observe(k): floor(k / 5).
    assert stages == [min(k // 5, 3) for k in range(1, 21)]
    assert naive.transitions() == [
        {"step": 5, "from_stage": 0, "to_stage": 1, "iteration": 4, "from_index": 4, "to_index": 3},
        {"step": 10, "from_stage": 1, "to_stage": 2, "iteration": 9, "from_index": 3, "to_index": 2},
        {"step": 15, "from_stage": 2, "to_stage": 3, "iteration": 14, "from_index": 2, "to_index": 1},
    ]
    naive.before_step(7, None)  # stage 1: C_3 ∪ C_4 = u in [0.5, 1)
    t = naive.sample(N_DRAWS, torch.Generator().manual_seed(0))
    assert vp_fit(t, vp_probs_from_unit_cdf(uniform_union_cdf([(0.5, 1.0)]))) > P_MIN
    resumed = NaiveCL(schedule, intervals, stage_steps=5)
    resumed.load_state_dict(naive.state_dict())
    assert resumed.stage == 1


def exp_cdf(lam):
    """CDF of p(u) ∝ exp(-lam u) on [0, 1)."""
    return lambda u: torch.expm1(-lam * torch.as_tensor(u, dtype=torch.float64)) / math.expm1(-lam)


@pytest.mark.parametrize(("step", "lam"), [(0, -1.0), (500, 0.5), (1000, 2.0), (5000, 2.0)])
def test_clts_density_at_progress_points(step, lam):
    clts = make_strategy("clts", make_schedule("vp"), Intervals.uniform(4), total_steps=1000)
    clts.before_step(step, None)
    assert clts.rate(step) == pytest.approx(lam)
    t = clts.sample(N_DRAWS, torch.Generator().manual_seed(step))
    assert vp_fit(t, vp_probs_from_unit_cdf(exp_cdf(lam))) > P_MIN


def test_clts_uniform_rate_is_the_vanilla_density():
    clts = CLTS(make_schedule("flow"), Intervals.uniform(4), total_steps=10, lambda_start=0.0, lambda_end=0.0)
    u = make_schedule("flow").to_unit(clts.sample(N_DRAWS, torch.Generator().manual_seed(0)))
    assert unit_fit(u, lambda v: torch.as_tensor(v, dtype=torch.float64)) > P_MIN


def test_momentum_decay_sets_adamw_beta1_and_compensated_lr():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, betas=(0.9, 0.99))
    params = dict(total_steps=400, momentum_decay=True, beta1_start=0.9, beta1_end=0.5, decay_steps=100)
    clts = make_strategy("clts", make_schedule("vp"), Intervals.uniform(4), **params)
    for k in (0, 25, 50, 100, 300):
        clts.before_step(k, opt)
        # Documented schedule: cosine from 0.9 to 0.5 over 100 steps, then flat.
        beta1 = 0.5 + 0.4 * 0.5 * (1 + math.cos(math.pi * min(k / 100, 1.0)))
        lr = 2e-3 * math.sqrt((1 - 0.9) * (1 + beta1) / ((1 + 0.9) * (1 - beta1)))
        group = opt.param_groups[0]
        assert group["betas"] == (pytest.approx(beta1, abs=1e-15), 0.99)
        assert group["lr"] == pytest.approx(lr, rel=1e-12)
        net(torch.randn(4, 3)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * math.sqrt(0.15 / 0.95))

    # A resumed strategy keeps the original lr_0, not the compensated rate found in the optimiser.
    resumed = make_strategy("clts", make_schedule("vp"), Intervals.uniform(4), **params)
    resumed.load_state_dict(clts.state_dict())
    resumed.before_step(0, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3) and opt.param_groups[0]["betas"][0] == 0.9

    plain = make_strategy("clts", make_schedule("vp"), Intervals.uniform(4), **params, lr_compensation=False)
    plain.before_step(50, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3) and opt.param_groups[0]["betas"][
        0
    ] == pytest.approx(0.7)


def test_clts_without_momentum_decay_leaves_the_optimiser_alone():
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    clts = make_strategy("clts", make_schedule("vp"), Intervals.uniform(4), total_steps=10)
    clts.before_step(9, opt)
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["betas"] == (0.9, 0.999)


# ------------------------------------------------------------------------------------------------------
# speed


def speed_cdf(k, tau, dual):
    """The batch's marginal CDF in unit space, written out independently of the implementation."""
    b = 1 / (k * tau + 1 - tau)
    a = k * b

    def cdf(u):
        u = torch.as_tensor(u, dtype=torch.float64).clamp(0, 1)
        direct = a * u.clamp(max=tau) + b * (u - tau).clamp(min=0)
        if not dual:
            return direct
        # Reflections: tau - u (u < tau) is uniform on (0, tau] with density a; u - tau (u >= tau) is
        # uniform on [0, 1 - tau) with density b.
        return 0.5 * direct + 0.5 * (a * u.clamp(max=tau) + b * u.clamp(max=1 - tau))

    return cdf


def test_speed_auto_threshold_is_the_official_rule():
    schedule = make_schedule("vp")
    speed = make_strategy("speed", schedule, Intervals.uniform(4))
    # SpeeD's code: the first t at which d sqrt(1 - alpha_bar_t)/dt (np.gradient) drops below 1e-4.
    slope = torch.gradient((1 - schedule.alphas_cumprod).sqrt())[0]
    first_flat = int(torch.nonzero(slope < 1e-4)[0])
    assert speed.tau == pytest.approx(first_flat / 1000)
    assert 0.6 < speed.tau < 0.7
    with pytest.raises(ValueError, match="tau"):
        make_strategy("speed", make_schedule("edm"), Intervals.uniform(4))


@pytest.mark.parametrize("dual", [False, True])
def test_speed_density(dual):
    schedule = make_schedule("vp")
    speed = make_strategy("speed", schedule, Intervals.uniform(4), k=5.0, tau=0.6, dual=dual)
    t = speed.sample(N_DRAWS, torch.Generator().manual_seed(int(dual)))
    assert t.shape == (N_DRAWS,)
    assert vp_fit(t, vp_probs_from_unit_cdf(speed_cdf(5.0, 0.6, dual))) > P_MIN
    below = (t < 600).double().mean().item()
    expected = speed_cdf(5.0, 0.6, dual)(torch.tensor(0.6)).item()
    assert abs(below - expected) < 0.005 and expected > 0.85
    if dual:  # the second half mirrors the first about tau
        u = t.double() / 1000
        head, tail = u[: N_DRAWS // 2], u[N_DRAWS // 2 :]
        mirrored = torch.where(head < 0.6, 0.6 - head, head - 0.6)
        assert ((mirrored - tail).abs() <= 1e-3 + 1e-12).all()


def test_speed_flow_density():
    schedule = make_schedule("flow")
    speed = SpeeD(schedule, Intervals.uniform(4), k=3.0, tau=0.3)
    u = schedule.to_unit(speed.sample(N_DRAWS, torch.Generator().manual_seed(5)))
    assert unit_fit(u, speed_cdf(3.0, 0.3, False)) > P_MIN


@pytest.mark.parametrize("dual", [False, True])
def test_speed_change_aware_weights(dual):
    schedule = make_schedule("vp")
    speed = SpeeD(schedule, Intervals.uniform(4), dual=dual, weight_lambda=0.5)
    t = torch.arange(1000)
    w = speed.weights(t).double()
    probs = vp_probs_from_unit_cdf(speed_cdf(speed.k, speed.tau, dual))
    # Stated formula: w ∝ 0.5 r + 0.5 E_p[r], r = |d(1 - alpha_bar)/du| = T |gradient|, E_p[w] = 1.
    r = torch.gradient(1 - schedule.alphas_cumprod)[0].abs() * 1000
    mean_r = (probs * r).sum()
    assert torch.allclose(w, (0.5 * r + 0.5 * mean_r) / mean_r, rtol=1e-5)
    assert (probs * w).sum().item() == pytest.approx(1.0, abs=1e-6)
    drawn = speed.sample(N_DRAWS, torch.Generator().manual_seed(2))
    assert speed.weights(drawn).double().mean().item() == pytest.approx(1.0, abs=0.01)
    assert speed.weights(drawn).dtype == torch.float32


@pytest.mark.parametrize("weighting", ["change", "p2"])
def test_speed_weights_have_mean_one_on_flow(weighting):
    speed = SpeeD(make_schedule("flow"), Intervals.uniform(4), weighting=weighting)
    w = speed.weights(speed.sample(200_000, torch.Generator().manual_seed(3))).double()
    assert w.mean().item() == pytest.approx(1.0, abs=0.01)
    assert SpeeD(make_schedule("flow"), Intervals.uniform(4), weighting="none").weights(w) is None


# speed, variant official: Speed_IDDPM of NUS-HPC-AI-Lab/SpeeD as its released configurations run it
# (k = 5, lam = 0.6, tau = 700, sampling and weighting "ours"), its formulas written out here in NumPy.


def official_reference(schedule, k=5.0, tau=700):
    abar = schedule.alphas_cumprod.numpy()
    # meaningful_steps = np.argmax(np.gradient(sqrt(1 - alpha_bar)) < 1e-4) + 1
    m = int(np.argmax(np.gradient(np.sqrt(1 - abar)) < 1e-4)) + 1
    p = np.array([k] * tau + [1.0] * (len(abar) - tau))
    p /= p.sum()
    t = np.arange(len(abar))
    dual = np.where(t < m, m - t, t - m)
    q = np.bincount(dual, weights=p, minlength=len(abar))  # the law of the reflected draws
    return abar, m, p, dual, q


def test_speed_official_density_and_dual_marginal():
    schedule = make_schedule("vp")
    abar, m, p, dual, q = official_reference(schedule)
    assert m == 642
    speed = make_strategy(
        "speed", schedule, Intervals.uniform(4), variant="official", k=5.0, tau=0.7, dual=True
    )
    assert speed.meaningful_steps == 642 and speed.tau_steps == 700
    # Batch 8: torch.multinomial(p, 8 // 2 + 1) then cat([t, dual_t])[:8]: 5 direct draws, 3 reflections.
    g = torch.Generator().manual_seed(11)
    batches = torch.stack([speed.sample(8, g) for _ in range(25_000)])
    assert torch.equal(batches[:, 5:], torch.from_numpy(dual)[batches[:, :3]])
    assert vp_fit(batches[:, :5].flatten(), torch.from_numpy(p)) > P_MIN
    marginal = (5 * p + 3 * q) / 8
    assert vp_fit(batches.flatten(), torch.from_numpy(marginal)) > P_MIN
    torch.testing.assert_close(speed.official_pmf(8), torch.from_numpy(marginal), rtol=1e-12, atol=1e-15)
    # The paper variant's dual marginal (reflection about its own tau, even split) is another law.
    paper = make_strategy("speed", schedule, Intervals.uniform(4), k=5.0, tau=0.7, dual=True)
    assert vp_fit(paper.sample(N_DRAWS, torch.Generator().manual_seed(12)), torch.from_numpy(marginal)) < 1e-6
    # dual: false is their "no_dual": every draw from p.
    plain = make_strategy("speed", schedule, Intervals.uniform(4), variant="official", tau=0.7)
    assert vp_fit(plain.sample(N_DRAWS, torch.Generator().manual_seed(13)), torch.from_numpy(p)) > P_MIN


def test_speed_official_weights():
    schedule = make_schedule("vp")
    abar = schedule.alphas_cumprod.numpy()
    t = torch.arange(1000)
    # weighting "ours": k = 1 - lam; k + (1 - 2k) * minmax(np.gradient(1 - alpha_bar)) below tau, 1 above.
    r = np.gradient(1 - abar)
    ours = 0.4 + 0.2 * (r - r.min()) / (r.max() - r.min())
    ours[700:] = 1.0
    speed = SpeeD(schedule, Intervals.uniform(4), variant="official", tau=0.7, weight_lambda=0.6)
    w = speed.weights(t)
    assert w.dtype == torch.float32
    np.testing.assert_allclose(w.numpy(), ours, rtol=1e-6)
    assert w[:700].min() >= 0.4 and w[:700].max() <= 0.6 + 1e-6 and w[700:].eq(1).all()
    # weighting "p2": 1 / (p2_k + snr)^gamma with k = gamma = 1, snr = 1 / (1 - alpha_bar) - 1; unnormalised.
    p2 = SpeeD(schedule, Intervals.uniform(4), variant="official", tau=0.7, weighting="p2")
    np.testing.assert_allclose(p2.weights(t).numpy(), 1 / (1 + (1 / (1 - abar) - 1)), rtol=1e-6)
    none = SpeeD(schedule, Intervals.uniform(4), variant="official", tau=0.7, weighting="none")
    assert none.weights(t) is None


def test_speed_official_needs_a_discrete_schedule_and_a_fixed_threshold():
    with pytest.raises(ValueError, match="discrete VP"):
        SpeeD(make_schedule("edm"), Intervals.uniform(4), variant="official", tau=0.7)
    with pytest.raises(ValueError, match="0.7"):
        SpeeD(make_schedule("vp"), Intervals.uniform(4), variant="official")
    with pytest.raises(ValueError, match="variant"):
        SpeeD(make_schedule("vp"), Intervals.uniform(4), variant="authors")


# ------------------------------------------------------------------------------------------------------
# min_snr, p2


def vp_snr(schedule):
    abar = schedule.alphas_cumprod
    return abar / (1 - abar)


@pytest.mark.parametrize(
    ("prediction", "closed_form"),
    [
        ("eps", lambda snr, g: torch.minimum(snr, torch.full_like(snr, g)) / snr),
        ("v", lambda snr, g: torch.minimum(snr, torch.full_like(snr, g)) / (snr + 1)),
        ("x0", lambda snr, g: torch.minimum(snr, torch.full_like(snr, g))),
    ],
)
def test_min_snr_closed_forms(prediction, closed_form):
    schedule = make_schedule("vp")
    strategy = make_strategy("min_snr", schedule, Intervals.uniform(4), gamma=5.0, prediction=prediction)
    t = torch.arange(1000)
    w = strategy.weights(t)
    assert w.dtype == torch.float32 and w.device == t.device
    assert torch.allclose(w.double(), closed_form(vp_snr(schedule), 5.0), rtol=1e-6)
    # Vanilla sampling.
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(strategy.sample(64, g1), schedule.sample_t(64, generator=g2))


def test_min_snr_on_flow_is_the_x0_weight_converted():
    schedule = make_schedule("flow")
    t = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=torch.float64)
    snr = ((1 - t) / t).square()
    x0 = make_strategy("min_snr", schedule, Intervals.uniform(4), prediction="x0").weights(t).double()
    flow = make_strategy("min_snr", schedule, Intervals.uniform(4), prediction="flow").weights(t).double()
    assert torch.allclose(x0, snr.clamp(max=5.0), rtol=1e-6)
    assert torch.allclose(flow, snr.clamp(max=5.0) * t.square(), rtol=1e-6)  # x0 error = t * velocity error


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_p2_closed_form(gamma):
    schedule = make_schedule("vp")
    strategy = make_strategy("p2", schedule, Intervals.uniform(4), k=1.0, gamma=gamma)
    w = strategy.weights(torch.arange(1000)).double()
    assert torch.allclose(w, (1.0 + vp_snr(schedule)).pow(-gamma), rtol=1e-6)
    # For v-prediction the same eps-space weight times SNR * sigma^2 = SNR / (1 + SNR).
    v = make_strategy("p2", schedule, Intervals.uniform(4), gamma=gamma, prediction="v")
    snr = vp_snr(schedule)
    assert torch.allclose(
        v.weights(torch.arange(1000)).double(), (1 + snr).pow(-gamma) * snr / (1 + snr), rtol=1e-6
    )


# ------------------------------------------------------------------------------------------------------
# vanilla, logit_normal, edm_lognormal


def test_vanilla_vp_is_uniform():
    t = make_strategy("vanilla", make_schedule("vp"), Intervals.uniform(4)).sample(
        N_DRAWS, torch.Generator().manual_seed(0)
    )
    assert vp_fit(t, torch.full((1000,), 1e-3, dtype=torch.float64)) > P_MIN


def test_logit_normal_on_flow_and_vp():
    flow = make_schedule("flow")
    strategy = make_strategy("logit_normal", flow, Intervals.uniform(4), m=0.5, s=0.8)
    u = flow.to_unit(strategy.sample(N_DRAWS, torch.Generator().manual_seed(0)))
    assert stats.kstest(torch.logit(u).numpy(), "norm", args=(0.5, 0.8)).pvalue > P_MIN

    vp = make_schedule("vp")
    t = make_strategy("logit_normal", vp, Intervals.uniform(4)).sample(
        N_DRAWS, torch.Generator().manual_seed(1)
    )
    logit_edges = torch.logit(torch.arange(1001, dtype=torch.float64) / 1000)  # -inf ... +inf
    cdf = torch.special.ndtr(logit_edges)
    assert vp_fit(t, cdf[1:] - cdf[:-1]) > P_MIN


def test_edm_lognormal_on_every_framework():
    p_mean, p_std = -1.2, 1.2
    edm = make_schedule("edm")
    sigma = make_strategy("edm_lognormal", edm, Intervals.uniform(4)).sample(
        N_DRAWS, torch.Generator().manual_seed(0)
    )
    assert sigma.dtype == torch.float64
    assert stats.kstest(sigma.log().numpy(), "norm", args=(p_mean, p_std)).pvalue > P_MIN

    flow = make_schedule("flow")
    t = make_strategy("edm_lognormal", flow, Intervals.uniform(4)).sample(
        N_DRAWS, torch.Generator().manual_seed(1)
    )
    assert (
        stats.kstest(torch.logit(t).numpy(), "norm", args=(p_mean, p_std)).pvalue > P_MIN
    )  # sigma = t/(1-t)

    vp = make_schedule("vp")
    t = make_strategy("edm_lognormal", vp, Intervals.uniform(4)).sample(
        N_DRAWS, torch.Generator().manual_seed(2)
    )
    assert t.dtype == torch.long
    # Nearest step in log-SNR: the cell of t is bounded by the midpoints of -log SNR between neighbours,
    # and ln sigma = -log SNR / 2.
    neg_log_snr = -vp_snr(vp).log()
    mids = (neg_log_snr[1:] + neg_log_snr[:-1]) / 2
    bounds = torch.cat([torch.tensor([-math.inf]), mids / 2, torch.tensor([math.inf])]).double()
    cdf = torch.special.ndtr((bounds - p_mean) / p_std)
    assert vp_fit(t, cdf[1:] - cdf[:-1]) > P_MIN


# ------------------------------------------------------------------------------------------------------
# every strategy: construction, state, dtype, generator discipline


STRATEGY_PARAMS = {
    "naive_cl": {"stage_steps": 3},
    "clts": {"total_steps": 20, "momentum_decay": True},
    "dtd": {"tau_max": 1},
    "anti_cl": {"tau_max": 1},
}


@pytest.mark.parametrize("framework", ["vp", "edm", "flow"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_resumes_and_uses_only_its_generator(name, framework):
    schedule = make_schedule(framework)
    params = dict(STRATEGY_PARAMS.get(name, {}))
    if name == "speed" and framework == "edm":
        params["tau"] = 0.7
    if name in ("min_snr", "p2"):
        params["prediction"] = "x0"
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    first = make_strategy(name, schedule, Intervals.uniform(4), **params)
    g = torch.Generator().manual_seed(0)
    global_state = torch.get_rng_state()
    for step in range(5):
        first.before_step(step, opt)
        t = first.sample(16, g)
        first.observe(step + 1, t, torch.rand(16, generator=g))
    assert torch.equal(torch.get_rng_state(), global_state)  # only the given generator is drawn from
    native = torch.long if framework == "vp" else torch.float64
    assert t.dtype == native and t.shape == (16,)
    w = first.weights(t)
    assert w is None or (w.dtype == torch.float32 and w.shape == (16,) and torch.isfinite(w).all())

    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = make_strategy(name, schedule, Intervals.uniform(4), **params)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for step in range(5, 8):
        for strategy in (first, second):
            strategy.before_step(step, opt)
            strategy.observe(step + 1, None, torch.full((4,), 10.0 - step))
        assert torch.equal(first.sample(32, g1), second.sample(32, g2))
    assert first.stage == second.stage and first.transitions() == second.transitions()


def test_make_strategy_names_bad_parameters():
    schedule, intervals = make_schedule("vp"), Intervals.uniform(4)
    with pytest.raises(ValueError, match="tau_maxx"):
        make_strategy("dtd", schedule, intervals, tau_maxx=3)
    with pytest.raises(ValueError, match="stage_steps"):
        make_strategy("naive_cl", schedule, intervals)
    with pytest.raises(ValueError, match="pacing_signal"):
        make_strategy("dtd", schedule, intervals, pacing_signal="smooth")


# ------------------------------------------------------------------------------------------------------
# through the real training loop


def _train(tmp_path, strategy, stop_after=None, iterations=16):
    torch.manual_seed(0)
    net = create_model("DiT-tiny/4", input_size=8, in_channels=1, num_classes=0, depth=1)
    images = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return train_loop(
        net=net,
        schedule=make_schedule("vp"),
        prediction="eps",
        strategy=strategy,
        intervals=Intervals.uniform(4),
        images=images,
        labels=None,
        run_dir=tmp_path,
        iterations=iterations,
        batch_size=8,
        lr=1e-3,
        log_every=2,
        checkpoint_every=100,
        stop_after=stop_after,
        progress=False,
    )


@pytest.mark.parametrize(
    ("name", "params"),
    [("dtd", {"tau_max": 0}), ("clts", {"total_steps": 16, "momentum_decay": True, "decay_steps": 8})],
)
def test_train_loop_resume_with_a_stateful_strategy(tmp_path, name, params):
    schedule, intervals = make_schedule("vp"), Intervals.uniform(4)
    whole = _train(tmp_path / "whole", make_strategy(name, schedule, intervals, **params))
    part = _train(tmp_path / "split", make_strategy(name, schedule, intervals, **params), stop_after=7)
    assert not part.completed
    rest = _train(tmp_path / "split", make_strategy(name, schedule, intervals, **params))
    assert rest.resumed_from == 7
    assert repr(rest.history) == repr(whole.history)  # repr: empty loss bins hold NaN, and NaN != NaN
    if name == "dtd":  # tau_max = 0 and a stochastic loss: at least one stage change in 16 steps
        assert whole.history["transitions"]
    for a, b in zip(whole.net.state_dict().values(), rest.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


EXTERNAL = '''
import torch
from diffusion_curriculum.timesteps import TimestepStrategy


class HighNoiseOnly(TimestepStrategy):
    """Draws only the upper half of the unit interval."""

    def __init__(self, schedule, intervals, low: float = 0.5):
        super().__init__(schedule, intervals)
        self.low = low

    def sample(self, batch, generator, device=None):
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        return self.schedule.from_unit(self.low + (1 - self.low) * u)


class NoSample(TimestepStrategy):
    def __init__(self, schedule, intervals):
        super().__init__(schedule, intervals)


class NotAStrategy:
    pass
'''


def test_a_strategy_from_outside_the_package_is_built_by_module_and_class(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "outside_strategies", raising=False)
    (tmp_path / "outside_strategies.py").write_text(EXTERNAL)
    monkeypatch.syspath_prepend(tmp_path)
    schedule = make_schedule("vp")
    strategy = make_strategy("outside_strategies:HighNoiseOnly", schedule, Intervals.uniform(4), low=0.75)
    t = strategy.sample(4000, torch.Generator().manual_seed(0))
    assert t.min() >= 740 and t.max() <= 999  # u >= 0.75 on the 1000-step VP schedule
    assert strategy_parameters("outside_strategies:HighNoiseOnly") == {"low": 0.5}


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("nowhere_module:X", "cannot import 'nowhere_module'"),
        ("outside_strategies:Missing", "outside_strategies has no 'Missing'"),
        (
            "outside_strategies:NotAStrategy",
            "is not a subclass of diffusion_curriculum.timesteps.TimestepStrategy",
        ),
        ("outside_strategies:NoSample", "does not implement sample"),
        ("outside_strategies:", "write 'module:Class'"),
        ("no_such_name", "unknown timestep strategy 'no_such_name'"),
    ],
)
def test_a_bad_strategy_kind_is_named(tmp_path, monkeypatch, kind, problem):
    monkeypatch.delitem(sys.modules, "outside_strategies", raising=False)
    (tmp_path / "outside_strategies.py").write_text(EXTERNAL)
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(ValueError, match=re.escape(problem)):
        make_strategy(kind, make_schedule("vp"), Intervals.uniform(4))
