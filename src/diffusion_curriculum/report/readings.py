"""Reading a study's outputs into the report's tables: the evaluate metrics of every run, the training
logs, the real-data floor, the stitched experts' metrics and the sample grids; and the headline
numbers ``dvc metrics diff`` compares.  Paths are passed in; nothing here knows the pipeline's layout
beyond the names the stages give their files inside the folders it is handed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputFileError
from ..io import read_json, read_npz, read_parquet_frame
from .stats import Comparison

METRICS = ("class_agreement", "fid", "kid", "is_mean", "is_std", "precision", "recall")


def read_record(path: Path, writer: str, keys: tuple[str, ...] = ()) -> dict:
    """A JSON record that the stage ``writer`` wrote (named in the error when it is missing), holding
    ``keys``."""
    return read_json(path, hint=f"written by {writer}", keys=keys)


def read_table(path: Path, writer: str) -> pd.DataFrame:
    """A Parquet table that the stage ``writer`` wrote."""
    return read_parquet_frame(path, hint=f"written by {writer}")


def collect_metrics(metrics_dir: Path, methods, seeds, steps) -> pd.DataFrame:
    rows = []
    for method in methods:
        for seed in seeds:
            for step in steps:
                record = read_record(metrics_dir / method / f"seed{seed}" / f"step{step}.json", "evaluate")
                # null is how JSON holds a value that was not finite: it stays NaN, never a statistic.
                rows += [
                    {"method": method, "seed": seed, "step": step, "metric": m, "value": _number(record[m])}
                    for m in METRICS
                    if m in record
                ]
    return pd.DataFrame(rows)


def collect_run_tables(train_dir: Path, methods, seeds) -> dict[str, pd.DataFrame]:
    tables: dict[str, list[pd.DataFrame]] = {"loss_bins": [], "train_log": [], "transitions": []}
    for method in methods:
        for seed in seeds:
            for name in tables:
                frame = read_table(train_dir / method / f"seed{seed}" / f"{name}.parquet", "train")
                tables[name].append(frame.assign(method=method, seed=seed))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in tables.items()}


def read_floor(path: Path) -> tuple[dict, dict[str, float], dict[str, tuple[float, float]]]:
    """evaluate_floor's record, its metrics and their intervals over the floor sets (where it has them)."""
    record = read_record(path, "evaluate_floor", keys=("num_samples", "num_sets"))
    floor = {m: _number(record[m]) for m in METRICS if record.get(m) is not None}
    interval = {
        m: (_number(record[f"{m}_low"]), _number(record[f"{m}_high"]))
        for m in floor
        if record.get(f"{m}_low") is not None and record.get(f"{m}_high") is not None
    }
    return record, floor, interval


def null_replicates(train_dir: Path, methods, seed: int, baseline: str) -> list[str]:
    """The methods that train the baseline's strategy on other random streams (a named variant with
    ``seed_offset``): A/A null arms, whose paired tests against the baseline show what the tests find
    where no difference can exist.  Read from each run's ``summary.json``."""
    keys = ("seed", "strategy", "stream_seed")
    runs = {m: read_record(train_dir / m / f"seed{seed}" / "summary.json", "train", keys) for m in methods}
    strategy = runs[baseline]["strategy"]
    return [
        m for m, run in runs.items()
        if m != baseline and run["strategy"] == strategy and run["stream_seed"] != run["seed"]
    ]  # fmt: skip


def run_metrics(metrics: pd.DataFrame, method: str, seed: int, step: int) -> dict[str, float]:
    """Every metric of one run at one step (``metrics``: :func:`collect_metrics`' table)."""
    rows = metrics[(metrics["method"] == method) & (metrics["seed"] == seed) & (metrics["step"] == step)]
    return {r.metric: float(r.value) for r in rows.itertuples()}


def stitch_table(
    metrics_dir: Path, intervals, base: dict[str, float], convergence: pd.DataFrame
) -> pd.DataFrame:
    rows = []
    bounds = convergence.set_index("interval")
    for i in intervals:
        record = read_record(metrics_dir / "stitch" / f"expert{i}.json", "stitch_eval")
        row = {
            "interval": i,
            "unit_low": float(bounds.loc[i, "unit_low"]),
            "unit_high": float(bounds.loc[i, "unit_high"]),
        }
        for metric in ("fid", "class_agreement"):
            if record.get(metric) is not None and metric in base:
                row[metric] = float(record[metric])
                row[f"{metric}_change_vs_base"] = float(record[metric]) - base[metric]
        rows.append(row)
    return pd.DataFrame(rows)


def read_grid(path: Path, writer: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = read_npz(path, hint=f"written by {writer}", keys=("images",))
    images = arrays["images"]
    labels = arrays.get("labels", np.full(len(images), -1))
    if images.dtype != np.uint8:
        raise InputFileError(path, f"samples are not decoded images (dtype {images.dtype}); no grid drawn")
    return images, labels


def headline_metrics(
    comparison: Comparison, floor: dict, floor_interval: dict[str, tuple[float, float]] | None = None
) -> dict:
    """``{method: {metric: mean, metric_ci: half-width, ...}, "floor": {metric: value, metric_low,
    metric_high}}`` (the floor's interval where ``floor_interval`` has one) for
    ``dvc metrics diff``, from :func:`~diffusion_curriculum.report.stats.compare_methods`: each compared
    method also gets, per tested metric, ``<metric>_diff_vs_baseline``, ``_diff_ci``, ``_p_holm`` and
    ``_significant``, and ``minimum_detectable_difference`` holds the detectable difference per metric."""
    summary, reach, tests, detectable = comparison
    out: dict[str, dict] = {"floor": {m: _finite(v) for m, v in floor.items()}}
    for metric, (low, high) in (floor_interval or {}).items():
        out["floor"] |= {f"{metric}_low": _finite(low), f"{metric}_high": _finite(high)}
    for row in summary.itertuples():
        entry = out.setdefault(row.method, {})
        entry[row.metric] = _finite(row.mean)
        entry[f"{row.metric}_ci"] = _finite(row.ci)
        if row.metric in ("fid", "is_mean", "class_agreement"):
            entry[f"{row.metric}_diff_vs_baseline"] = _finite(row.diff_mean)
    for row in reach.itertuples():
        out.setdefault(row.method, {})["steps_to_baseline_fid"] = _finite(row.step_mean)
        out[row.method]["speedup_vs_baseline"] = _finite(row.speedup)
    for row in tests.itertuples():
        entry = out.setdefault(row.method, {})
        entry[f"{row.metric}_diff_vs_baseline"] = _finite(row.diff_mean)
        entry[f"{row.metric}_diff_ci"] = _finite(row.diff_ci)
        entry[f"{row.metric}_p_holm"] = _finite(row.p_holm)
        entry[f"{row.metric}_significant"] = bool(row.significant)
    out["minimum_detectable_difference"] = {row.metric: _finite(row.mdd) for row in detectable.itertuples()}
    return out


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def sample_grids(
    floor_path: Path, samples: dict[str, Path], real_label: str = "real images (held out)"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The real floor images (fid_ref's ``floor.npz``) and each labelled sample set (``samples.npz``),
    in the order given, for :func:`~diffusion_curriculum.report.plot_sample_grids`."""
    real = read_grid(floor_path, "fid_ref")
    grids = {real_label: real}
    for label, path in samples.items():
        grids[label] = read_grid(path, "sample")
    return grids
