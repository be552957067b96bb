"""The tables behind ``dvc.yaml``'s ``plots:``: long CSVs of ``x, series, y``, one line per series, drawn
by ``workflow/report/lines_by_series.json`` (a Vega-Lite template that colours by ``series``), so that
``dvc plots show`` and ``dvc plots diff <rev>`` work whatever the study's methods are.

Values are written with 8 significant digits, so identical inputs give identical files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text

__all__ = ["FLOOR_SERIES", "kl_curves", "loss_per_interval", "metric_curves", "write_plot_tables"]

FLOOR_SERIES = "real data (floor)"


def metric_curves(metrics: pd.DataFrame, metric: str, floor: float | None = None) -> pd.DataFrame:
    """``step, series, <metric>``: the mean over seeds of each method at every scored step, and the floor
    (held-out real data) as a flat line when given.  ``metrics``: long (method, seed, step, metric, value)."""
    rows = metrics[metrics["metric"] == metric]
    curves = rows.groupby(["method", "step"], sort=False)["value"].mean().reset_index()
    curves = curves.rename(columns={"method": "series", "value": metric})[["step", "series", metric]]
    if floor is not None and math.isfinite(floor) and len(curves):
        steps = sorted(curves["step"].unique())
        flat = pd.DataFrame({"step": steps, "series": FLOOR_SERIES, metric: floor})
        curves = pd.concat([curves, flat], ignore_index=True)
    return curves


def kl_curves(kl: pd.DataFrame, kl_score: pd.DataFrame | None = None) -> pd.DataFrame:
    """``t, series, kl``: the mixture estimator, its null (the same estimator on a Gaussian of the data's
    variance) and, where it has values, the score estimator."""
    parts = [
        pd.DataFrame({"t": kl["t"], "series": "mixture estimator", "kl": kl["kl"]}),
        pd.DataFrame({"t": kl["t"], "series": "mixture estimator, null", "kl": kl["kl_null"]}),
    ]
    if kl_score is not None and len(kl_score):
        parts.append(pd.DataFrame({"t": kl_score["t"], "series": "score estimator", "kl": kl_score["kl"]}))
    return pd.concat(parts, ignore_index=True)


def loss_per_interval(loss_bins: pd.DataFrame, method: str) -> pd.DataFrame:
    """``step, series, loss``: ``method``'s training loss in each timestep interval (``C1`` lowest noise)
    at every log row, mean over seeds; rows of intervals the log row drew no sample from are left out."""
    rows = loss_bins[(loss_bins["method"] == method) & loss_bins["loss"].notna()]
    mean = rows.groupby(["bin", "step"])["loss"].mean().reset_index()
    mean["series"] = "C" + (mean["bin"] + 1).astype(str)
    return mean[["step", "series", "loss"]]


def write_plot_tables(tables: dict[str, pd.DataFrame], directory: str | os.PathLike[str]) -> list[Path]:
    """Write each table to ``<directory>/<name>.csv`` (atomically); return the paths."""
    written = []
    for name, table in tables.items():
        path = Path(directory) / f"{name}.csv"
        atomic_write_text(path, table.to_csv(index=False, float_format="%.8g", lineterminator="\n"))
        written.append(path)
    return written
