"""PNG figures of a comparison: metric vs iterations, loss per interval, curriculum stages, KL, convergence.

Every function takes DataFrames (schemas in :mod:`diffusion_curriculum.report`) and an output path, writes
one PNG atomically (parent folders are created) and returns the path.  Figures are drawn on
:class:`matplotlib.figure.Figure` objects with the Agg canvas; pyplot and the global backend are never
touched, so importing this module changes nothing for an interactive session.

A method has the same colour in every figure (:func:`method_color`): a fixed mapping for the methods this
project knows, and a stable hash-based pick for any other name.
"""

from __future__ import annotations

import functools
import math
import os
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure

from ..io import atomic_path
from .stats import _require_columns, better_direction, metric_label, t_half_width

__all__ = [
    "METHOD_COLORS",
    "DPI",
    "method_color",
    "method_order",
    "plot_metric_vs_iterations",
    "plot_loss_bins",
    "plot_curriculum_timeline",
    "plot_kl",
    "plot_sample_grids",
    "plot_convergence",
]

DPI = 120

# Fixed colours (the order is also the order of methods in legends).  The baseline is near-black, the
# paper's method red; the rest are the tab10 colours.
METHOD_COLORS: dict[str, str] = {
    "vanilla": "#222222",
    "dtd": "#d62728",
    "naive_cl": "#1f77b4",
    "anti_cl": "#9467bd",
    "clts": "#2ca02c",
    "speed": "#ff7f0e",
    "min_snr": "#8c564b",
    "p2": "#e377c2",
    "logit_normal": "#bcbd22",
    "edm_lognormal": "#17becf",
}
# For unknown method names: a stable pick (crc32 of the name, not Python's salted hash) from these.
_EXTRA_COLORS = (
    "#7f7f7f",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
)

_STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 13,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": DPI,
}


def method_color(method: str) -> str:
    """The colour of ``method`` in every figure."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA_COLORS[zlib.crc32(method.encode("utf-8")) % len(_EXTRA_COLORS)]


def method_order(methods: Iterable[str]) -> list[str]:
    """Distinct ``methods`` in legend order: known ones as in :data:`METHOD_COLORS`, then others sorted."""
    present = set(map(str, methods))
    return [m for m in METHOD_COLORS if m in present] + sorted(present - set(METHOD_COLORS))


P = ParamSpec("P")


def _styled(fn: Callable[P, Path]) -> Callable[P, Path]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Path:
        with mpl.rc_context(_STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _format_steps(value: float, _pos: object = None) -> str:
    # 20000 -> "20k", 1500000 -> "1.5M"; below 10 000 plain numbers ("1000", not "1k" beside "800").
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _iteration_axis(ax: Any, label: bool = True, axis: str = "x") -> None:
    getattr(ax, f"{axis}axis").set_major_formatter(ticker.FuncFormatter(_format_steps))
    if label:
        getattr(ax, f"set_{axis}label")("training iteration")


class _PlainLogFormatter(ticker.LogFormatter):
    """Log-axis labels as plain numbers (0.02, 0.3) rather than 2x10^-2, with minor labels on short spans."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _plain_log_y(ax: Any) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLogFormatter())
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def _interval_ticks(num: int) -> list[int]:
    """Readable interval ticks 1..num: all of them up to 10, else 1 and multiples of 2, 5, 10, ..."""
    if num <= 10:
        return list(range(1, num + 1))
    step = next(k for k in (2, 5, 10, 20, 50, 100, 200, 500, 1000) if num / k <= 6)
    return [1, *range(step, num + 1, step)]


def _seeds(n: Sequence[int] | np.ndarray) -> str:
    lo, hi = int(np.min(n)), int(np.max(n))
    count = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return f"n={count} seed" + ("" if hi == 1 else "s")


def _nonempty(frame: pd.DataFrame | None, name: str) -> pd.DataFrame:
    if frame is None or len(frame) == 0:
        raise ValueError(f"{name} table is empty: nothing to plot")
    return frame


# --------------------------------------------------------------------------------------------------
# Metric vs training iterations
# --------------------------------------------------------------------------------------------------


@_styled
def plot_metric_vs_iterations(
    metrics: pd.DataFrame,
    path: str | os.PathLike,
    metric: str | Sequence[str] = "fid",
    *,
    confidence: float = 0.95,
    baseline: str | None = "vanilla",
    floor: Mapping[str, float] | None = None,
    floor_interval: Mapping[str, tuple[float, float]] | None = None,
    log_y: bool = False,
    title: str | None = None,
) -> Path:
    """``metric`` against the training iteration of each snapshot, one line per method; several metrics
    give one panel each, side by side (metrics without any finite value are left out).

    The line is the mean over seeds; the shaded band is the ``confidence`` Student-t interval of that mean
    wherever at least two seeds have the snapshot (no band where there is one: no spread is invented; the
    legend says how many seeds each method has).  A dotted horizontal line marks the ``baseline``'s
    final mean (the target of :func:`~diffusion_curriculum.report.stats.iterations_to_reach`); a dashed
    grey line marks ``floor[metric]``, the metric on held-out real images (what a perfect model scores),
    with a grey band over ``floor_interval[metric]`` (its sampling interval) where given.

    Raises:
        ValueError: a column is missing or the table has no finite value for any requested metric (the
            message lists the metrics present).
    """
    _require_columns(metrics, ["method", "seed", "step", "metric", "value"], "metrics")
    wanted = [metric] if isinstance(metric, str) else list(metric)
    finite = metrics[np.isfinite(metrics["value"].astype(float))]
    shown = [m for m in wanted if (finite["metric"] == m).any()]
    if not shown:
        raise ValueError(
            f"no finite {wanted!r} values to plot; metrics present: {sorted(set(metrics['metric']))}"
        )
    fig = _figure(7.5 if len(shown) == 1 else 6.2 * len(shown), 4.8)
    for k, name in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), k + 1)
        panel = finite[finite["metric"] == name]
        band = (floor_interval or {}).get(name)
        _metric_panel(ax, panel, name, confidence, baseline, (floor or {}).get(name), band)
        if log_y:
            ax.set_yscale("log")
        if len(shown) == 1 and title:
            ax.set_title(title)
    if len(shown) > 1 and title:
        fig.suptitle(title)
    return _save(fig, path)


def _metric_panel(
    ax: Any,
    rows: pd.DataFrame,
    metric: str,
    confidence: float,
    baseline: str | None,
    floor: float | None,
    floor_band: tuple[float, float] | None,
) -> None:
    label = metric_label(metric)
    per_method = {
        m: rows[rows["method"] == m].groupby("step")["value"].agg(["mean", "std", "count"])
        for m in method_order(rows["method"])
    }
    counts = {int(n) for stats in per_method.values() for n in stats["count"]}
    same_n = len(counts) == 1  # then the seed count goes in the legend title, not on every line
    any_band = False
    for method, stats in per_method.items():
        steps = stats.index.to_numpy(dtype=float)
        pairs = zip(stats["std"], stats["count"], strict=True)
        half = np.array([t_half_width(sd, int(n), confidence) for sd, n in pairs])
        color = method_color(method)
        name = method if same_n else f"{method} ({_seeds(stats['count'])})"
        ax.plot(steps, stats["mean"], marker="o", ms=4, lw=1.8, color=color, label=name)
        if np.isfinite(half).any():
            any_band = True
            ax.fill_between(steps, stats["mean"] - half, stats["mean"] + half, color=color, alpha=0.18, lw=0)
    if same_n and counts == {1}:
        legend_title = "1 seed per method: no CI band"
    else:
        seeds = f"{counts.pop()} seeds" if same_n else "seeds"
        band = f"band: {confidence:.0%} t-CI" + ("" if same_n else " where n ≥ 2")
        band = band if any_band else "no CI band"
        legend_title = f"mean over {seeds}, {band}"
    if baseline is not None and (rows["method"] == baseline).any():
        base = rows[rows["method"] == baseline]
        final = base.loc[base["step"] == base["step"].max(), "value"].mean()
        ax.axhline(
            final, color=method_color(baseline), ls=":", lw=1.2, label=f"{baseline} final ({final:.4g})"
        )
    if floor is not None and math.isfinite(floor):
        ax.axhline(floor, color="#888888", ls="--", lw=1.4, label=f"real data, floor ({floor:.4g})")
        if floor_band is not None:
            ax.axhspan(*floor_band, color="#888888", alpha=0.15, lw=0)
    direction = better_direction(metric)
    if direction == "lower" and _auto_log(rows["value"].to_numpy(dtype=float)):
        ax.set_yscale("log")  # early snapshots can sit orders of magnitude above the final ones
        _plain_log_y(ax)
    ax.set_ylabel(label + (f" ({direction} is better)" if direction else ""))
    _iteration_axis(ax)
    ax.set_title(f"{label} vs training iteration")
    ax.legend(title=legend_title, loc="best", framealpha=0.85)


# --------------------------------------------------------------------------------------------------
# Loss per timestep interval over training
# --------------------------------------------------------------------------------------------------


def _auto_log(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 30)


@_styled
def plot_loss_bins(
    loss_bins: pd.DataFrame,
    path: str | os.PathLike,
    *,
    log_y: bool | None = None,
    ncols: int | None = None,
    title: str = "Training loss per timestep interval",
) -> Path:
    """Loss per timestep interval over training: one panel per method, one line per interval.

    Lines are coloured by interval with a sequential colormap (colourbar: interval 1 = lowest noise).
    Each point is the mean over seeds of the per-seed loss of that interval in that log window; windows
    where a seed drew no sample of the interval (``count == 0``, loss NaN) are left out of the mean, and
    where no seed did the line has a gap -- so a curriculum's not-yet-sampled intervals start late.  The
    panels share their y axis, which is logarithmic when ``log_y`` is true, or (``None``) when the
    finite losses span more than a factor 30.
    """
    _require_columns(loss_bins, ["method", "seed", "step", "bin", "count", "loss"], "loss_bins")
    frame = _nonempty(loss_bins, "loss_bins").copy()
    frame["loss"] = frame["loss"].astype(float).where(frame["count"].astype(float) > 0)
    curves = frame.groupby(["method", "bin", "step"])["loss"].mean()
    num_bins = int(frame["bin"].max()) + 1
    if log_y is None:
        log_y = _auto_log(curves.to_numpy(dtype=float))
    methods = method_order(frame["method"])
    ncols = max(1, min(ncols or min(4, math.ceil(math.sqrt(len(methods)))), len(methods)))
    nrows = math.ceil(len(methods) / ncols)
    fig = _figure(max(6.4, 3.9 * ncols + 1.3), 3.2 * nrows + 0.7)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    cmap = mpl.colormaps["viridis"]
    norm = BoundaryNorm(np.arange(0.5, num_bins + 1.5), cmap.N)
    for ax, method in zip(axes, methods, strict=False):  # more axes than methods: the rest are hidden
        of_method = curves.loc[method]
        for b in sorted(of_method.index.get_level_values("bin").unique()):
            line = of_method.loc[b]
            ax.plot(line.index, line.to_numpy(), color=cmap(norm(b + 1)), lw=1.1)
        seeds = frame.loc[frame["method"] == method, "seed"].nunique()
        ax.set_title(f"{method} ({_seeds([seeds])})", color=method_color(method))
        if not np.isfinite(of_method.to_numpy(dtype=float)).any():
            ax.text(0.5, 0.5, "no finite loss", transform=ax.transAxes, ha="center", va="center")
        _iteration_axis(ax, label=False)
        if log_y:
            _plain_log_y(ax)
    for k, ax in enumerate(axes):
        if k >= len(methods):
            ax.set_visible(False)
        elif k + ncols >= len(methods):  # nothing visible below: show this panel's iteration labels
            ax.xaxis.set_tick_params(labelbottom=True)
    ticks = _interval_ticks(num_bins)
    fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap),
        ax=axes[: len(methods)].tolist(),
        ticks=ticks,
        label="interval (1 = lowest noise)",
        fraction=0.05,
        pad=0.02,
    )
    fig.supxlabel("training iteration", fontsize=11)
    fig.supylabel("loss (mean per interval)" + (", log scale" if log_y else ""), fontsize=11)
    fig.suptitle(f"{title} (mean over seeds)")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Curriculum stages over training
# --------------------------------------------------------------------------------------------------


def _stage_path(log: pd.DataFrame, moves: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The stage of one run as a step function ``(steps, stages)`` (stage holds from each step on).

    From the transitions when the run has any (they carry exact steps): the first ``from_stage`` from
    step 0, each ``to_stage`` from its step, held to the run's last logged step.  Otherwise from the
    training log's ``stage`` column, which is sampled only every logging interval.
    """
    log = log.sort_values("step")
    if len(moves):
        moves = moves.sort_values("step")
        end = max(log["step"].max() if len(log) else -np.inf, moves["step"].max())
        steps = [min(0, moves["step"].iloc[0]), *moves["step"], end]
        stages = [moves["from_stage"].iloc[0], *moves["to_stage"], moves["to_stage"].iloc[-1]]
        return np.asarray(steps, dtype=float), np.asarray(stages, dtype=float)
    return log["step"].to_numpy(dtype=float), log["stage"].to_numpy(dtype=float)


def _held(steps: np.ndarray, stages: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Evaluate the step function on ``grid``: NaN before its first step and after its last."""
    idx = np.searchsorted(steps, grid, side="right") - 1
    out = stages[np.clip(idx, 0, None)].astype(float)
    out[(idx < 0) | (grid > steps[-1])] = np.nan
    return out


@_styled
def plot_curriculum_timeline(
    train_log: pd.DataFrame,
    transitions: pd.DataFrame | None,
    path: str | os.PathLike,
    *,
    title: str = "Curriculum stage vs training iteration",
) -> Path:
    """Curriculum stage against training iteration, one panel per method: thin lines per seed, a thick line
    for the mean over seeds (fractional where the seeds are at different stages).

    Stage ``n`` of the cluster curricula samples the ``n + 1`` first clusters of the curriculum's order
    (for ``dtd``/``naive_cl`` the ``n + 1`` easiest).  ``dtd``'s last transition, to stage N, is
    Algorithm 2's exit (I_cur = 1 -> 0): from there on ordinary training, which draws what stage N - 1
    drew; with it a completed curriculum shows the paper's N transitions.  Methods whose stage never
    changes (no curriculum: ``vanilla``, the weightings) get no panel but are named in the title --
    unless no method has a curriculum, then their flat lines are all there is to show.  ``transitions``
    may be empty or ``None``; stages then come from the training log alone.
    """
    _require_columns(train_log, ["method", "seed", "step", "stage"], "train_log")
    log = _nonempty(train_log, "train_log")
    moves = transitions if transitions is not None and len(transitions) else None
    if moves is not None:
        _require_columns(moves, ["method", "seed", "step", "from_stage", "to_stage"], "transitions")
    runs = set(zip(log["method"], log["seed"], strict=True))
    if moves is not None:
        runs |= set(zip(moves["method"], moves["seed"], strict=True))
    paths: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for method, seed in sorted(runs):
        run_log = log[(log["method"] == method) & (log["seed"] == seed)]
        run_moves = (
            moves[(moves["method"] == method) & (moves["seed"] == seed)]
            if moves is not None
            else log.iloc[0:0]
        )
        steps, stages = _stage_path(run_log, run_moves)
        if steps.size:
            paths.setdefault(method, []).append((steps, stages))
    curricular = [m for m in method_order(paths) if any(np.ptp(s) > 0 for _, s in paths[m])]
    flat = [m for m in method_order(paths) if m not in curricular]
    shown = curricular or flat

    max_stage = max(float(np.nanmax(st)) for m in shown for _, st in paths[m])
    fig = _figure(7.5, max(3.4, 1.75 * len(shown) + 1.3))
    axes = fig.subplots(len(shown), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    for ax, method in zip(axes, shown, strict=True):
        color = method_color(method)
        grid = np.unique(np.concatenate([st for st, _ in paths[method]]))
        for steps, stages in paths[method]:
            ax.plot(steps, stages, drawstyle="steps-post", color=color, lw=0.9, alpha=0.45)
        held = np.vstack([_held(st, sg, grid) for st, sg in paths[method]])
        counts = np.isfinite(held).sum(axis=0)
        mean = np.where(counts > 0, np.nansum(held, axis=0) / np.maximum(counts, 1), np.nan)
        ax.plot(grid, mean, drawstyle="steps-post", color=color, lw=2.2)
        ax.set_title(f"{method} ({_seeds([len(paths[method])])})", color=color, loc="left", fontsize=11)
        ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True, nbins=4, min_n_ticks=1))
        _iteration_axis(ax, label=False)
    axes[0].set_ylim(-0.06 * max(max_stage, 1) - 0.3, max_stage + 0.06 * max(max_stage, 1) + 0.3)
    axes[-1].set_xlabel("training iteration")
    fig.supylabel("curriculum stage n\n(n + 1 clusters sampled; N: ended)", fontsize=11)
    note = "thin: single seeds, thick: mean over seeds"
    if curricular and flat:
        note += "; no stage change: " + ", ".join(flat)
    elif not curricular:
        note = "no method changes its curriculum stage"
    fig.suptitle(f"{title}\n{note}", fontsize=12)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# KL between adjacent marginals
# --------------------------------------------------------------------------------------------------


def _symlog_threshold(values: np.ndarray) -> float:
    """A power of ten below which the symlog axis is linear: the 10th percentile of the non-zero |values|,
    so the bulk of the curve is on the log part and estimates near or below zero stay visible."""
    magnitude = np.abs(values[np.isfinite(values) & (values != 0)])
    if magnitude.size == 0:
        return 1.0
    return float(10.0 ** np.floor(np.log10(np.quantile(magnitude, 0.1))))


def _kl_line(
    ax: Any, xs: np.ndarray, frame: pd.DataFrame, column: str, color: str, label: str, **style
) -> None:
    ys = frame[column].to_numpy(dtype=float)
    ax.plot(xs, ys, color=color, lw=1.6, label=label, **style)
    stderr = f"{column}_stderr"
    if stderr in frame:
        se = frame[stderr].to_numpy(dtype=float)
        ax.fill_between(xs, ys - se, ys + se, color=color, alpha=0.2, lw=0)


@_styled
def plot_kl(
    kl: pd.DataFrame,
    path: str | os.PathLike,
    *,
    score: pd.DataFrame | None = None,
    x: str = "t",
    title: str = r"KL divergence between adjacent marginals $D_{\mathrm{KL}}(p_{t-1}\,\|\,p_t)$",
) -> Path:
    """Every estimate of ``D_KL(p_{t-1} || p_t)`` against the timestep on a symmetric-log y-scale (linear
    near zero, so estimates at or below zero are drawn, not dropped), each with a band of plus/minus one
    standard error (column ``<name>_stderr``), as in Fig. 2 of the paper but beside its null:

    * ``kl``: the mixture estimator of the paper (eq. 1-2), with the share of its estimates <= 0;
    * ``kl_null`` (optional): the same estimator, same D, L, M and draws, on data-free reference data (an
      isotropic Gaussian with the data's variance) -- the part of ``kl`` that the estimator makes whatever
      the data are; ``kl_null_exact`` (optional): the reference's true KL;
    * ``score`` (optional table with ``t``/``unit``, ``kl``, ``kl_stderr``): the score-based estimator;
      pairs outside its first-order range (``kl_first_order_ok`` False) get a cross, pairs whose score
      fails the consistency check (``score_consistent`` False) an open circle.

    ``x`` is ``"t"`` (the timestep) or ``"unit"`` (t mapped to [0, 1]).  KL values are in nats.
    """
    _require_columns(kl, [x, "kl"], "kl")
    frame = _nonempty(kl, "kl").sort_values(x)
    xs = frame[x].to_numpy(dtype=float)
    ys = frame["kl"].to_numpy(dtype=float)
    shown = [ys]
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    non_positive = float(np.mean(ys[np.isfinite(ys)] <= 0)) if np.isfinite(ys).any() else float("nan")
    _kl_line(ax, xs, frame, "kl", "#1f77b4", f"mixture estimator (eq. 1-2; {non_positive:.0%} of points ≤ 0)")
    if "kl_null" in frame:
        _kl_line(
            ax, xs, frame, "kl_null", "#888888", "same estimator on Gaussian reference data (null)", ls="--"
        )
        shown.append(frame["kl_null"].to_numpy(dtype=float))
    if "kl_null_exact" in frame:
        exact = frame["kl_null_exact"].to_numpy(dtype=float)
        ax.plot(xs, exact, color="#888888", lw=1.0, ls=":", label="reference data: true KL")
        shown.append(exact)
    if score is not None and len(score):
        _require_columns(score, [x, "kl"], "score")
        score = score.sort_values(x)
        score_x = score[x].to_numpy(dtype=float)
        _kl_line(ax, score_x, score, "kl", "#d62728", "score estimator (trained experts)", marker=".")
        values = score["kl"].to_numpy(dtype=float)
        if "kl_first_order_ok" in score and not score["kl_first_order_ok"].all():
            outside = ~score["kl_first_order_ok"].to_numpy(dtype=bool)
            label = f"score estimator outside its first-order range ({int(outside.sum())})"
            ax.plot(score_x[outside], values[outside], "x", color="#d62728", ms=7, label=label)
        if "score_consistent" in score and not score["score_consistent"].all():
            wrong = ~score["score_consistent"].to_numpy(dtype=bool)
            label = f"score estimator with an inconsistent score, E[g] ≠ 0 ({int(wrong.sum())})"
            ax.plot(score_x[wrong], values[wrong], "o", mfc="none", color="#d62728", ms=8, label=label)
        shown.append(score["kl"].to_numpy(dtype=float))
    ax.set_yscale("symlog", linthresh=_symlog_threshold(np.concatenate(shown)))
    ax.axhline(0.0, color="black", lw=0.6)
    if x == "t" and xs.min() > 0:
        ax.set_xscale("log")  # the estimates change fastest near the data end
    ax.set_xlabel("timestep t" if x == "t" else "t / T (0 = data, 1 = noise)" if x == "unit" else x)
    ax.set_ylabel("KL (nats), symmetric log scale")
    ax.set_title(title)
    ax.legend(loc="best", framealpha=0.85)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Sample grids
# --------------------------------------------------------------------------------------------------


def _class_grid(
    images: np.ndarray, labels: np.ndarray, per_class: int, columns: int
) -> tuple[np.ndarray, list]:
    """A (rows*H, cols*W, C) mosaic: one column per class (the first ``per_class`` images drawn for it),
    or, for unlabelled images (labels < 0), the first ``per_class * columns`` images row by row."""
    _, h, w, c = images.shape
    classes = sorted(int(v) for v in np.unique(labels) if v >= 0)
    if classes:
        cells = [np.flatnonzero(labels == k)[:per_class] for k in classes]
        rows = max(len(cell) for cell in cells)
        mosaic = np.zeros((rows * h, len(classes) * w, c), dtype=np.uint8)
        for col, rows in enumerate(cells):
            for row, i in enumerate(rows):
                mosaic[row * h : (row + 1) * h, col * w : (col + 1) * w] = images[i]
        return mosaic, classes
    count = min(len(images), per_class * columns)
    mosaic = np.zeros((-(-count // columns) * h, columns * w, c), dtype=np.uint8)
    for i in range(count):
        row, col = divmod(i, columns)
        mosaic[row * h : (row + 1) * h, col * w : (col + 1) * w] = images[i]
    return mosaic, []


@_styled
def plot_sample_grids(
    grids: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    *,
    per_class: int = 8,
    scale: int = 4,
    columns: int = 10,
    title: str | None = None,
) -> Path:
    """One labelled grid per entry of ``grids`` (name -> (uint8 NHWC images, labels)), side by side in
    rows of two, each image enlarged ``scale`` times with nearest-neighbour pixels (no smoothing hides the
    noise of a sample).  Class-conditional sets get one column per class, headed by the class number;
    images with label -1 are tiled in ``columns`` columns.  Put the real images first, as the reference.
    """
    if not grids:
        raise ValueError("no sample sets to draw")
    if scale < 1 or per_class < 1:
        raise ValueError(f"scale and per_class must be >= 1, got {scale}, {per_class}")
    mosaics = {}
    for name, (images, labels) in grids.items():
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{name}: expected uint8 NHWC images, got {images.dtype} {images.shape}")
        mosaic, classes = _class_grid(images, np.asarray(labels), per_class, columns)
        mosaics[name] = (np.repeat(np.repeat(mosaic, scale, axis=0), scale, axis=1), classes, images.shape[2])
    panel_h = max(m.shape[0] for m, _, _ in mosaics.values())
    panel_w = max(m.shape[1] for m, _, _ in mosaics.values())
    ncols = min(2, len(mosaics))
    nrows = math.ceil(len(mosaics) / ncols)
    # Pixel-exact at DPI: each panel is its mosaic's size in pixels plus room for the labels.
    fig = _figure(ncols * (panel_w / DPI + 0.4), nrows * (panel_h / DPI + 0.7))
    for k, (name, (mosaic, classes, width)) in enumerate(mosaics.items()):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        grey = mosaic.shape[2] == 1
        ax.imshow(mosaic[..., 0] if grey else mosaic, cmap="gray" if grey else None, vmin=0, vmax=255,
                  interpolation="nearest")  # fmt: skip
        ax.grid(False)
        ax.set_yticks([])
        cell = width * scale
        if classes:
            ax.set_xticks([cell * (i + 0.5) for i in range(len(classes))], [str(c) for c in classes])
            ax.tick_params(axis="x", length=0, labeltop=True, labelbottom=False)
        else:
            ax.set_xticks([])
        for side in ("left", "right", "top", "bottom"):
            ax.spines[side].set_visible(False)
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Convergence point per interval
# --------------------------------------------------------------------------------------------------

_MEASURE_LABELS = {"oscillation_onset": "onset of oscillation", "plateau_step": "loss plateau"}


@_styled
def plot_convergence(
    convergence: pd.DataFrame,
    path: str | os.PathLike,
    *,
    measures: Sequence[str] = ("oscillation_onset", "plateau_step"),
    title: str = "Convergence point per timestep interval",
) -> Path:
    """Training step at which each interval's expert converges, for both measures (the paper's Fig. A).

    x is the interval (1 = lowest noise), y the convergence step of each measure in ``measures`` (columns
    of ``convergence``; those absent are skipped, at least one is required).  Intervals where a measure
    never converged (NaN) have no marker; the legend says for how many intervals each was found.  Several
    rows per interval (e.g. one per seed) are averaged.
    """
    _require_columns(convergence, ["interval"], "convergence")
    present = [m for m in measures if m in convergence.columns]
    if not present:
        raise ValueError(
            f"convergence table has none of the measures {list(measures)}; it has {list(convergence.columns)}"
        )
    frame = _nonempty(convergence, "convergence")
    per_interval = frame.groupby("interval")[present].mean(numeric_only=True).sort_index()
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    intervals = per_interval.index.to_numpy(dtype=float)
    styles = zip("os^Dv" * 3, ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b") * 3, strict=True)
    for measure, (marker, color) in zip(present, styles, strict=False):
        values = per_interval[measure].to_numpy(dtype=float)
        found = int(np.isfinite(values).sum())
        ax.plot(
            intervals,
            values,
            marker=marker,
            ms=5,
            lw=1.3,
            color=color,
            label=f"{_MEASURE_LABELS.get(measure, measure)} ({found}/{len(values)} intervals)",
        )
    ax.set_xticks(_interval_ticks(int(np.nanmax(intervals))) if intervals.size else [])
    _iteration_axis(ax, label=False, axis="y")
    ax.set_xlabel("interval (1 = lowest noise)")
    ax.set_ylabel("convergence step (training iteration)")
    ax.set_title(title)
    ax.legend(loc="best", framealpha=0.85, title="measure")
    return _save(fig, path)
