"""Human-readable tables: ``mean ± CI`` cells, the method x metric comparison table, GitHub Markdown.

``pandas.DataFrame.to_markdown`` needs the ``tabulate`` package, which this project does not depend on;
:func:`markdown_table` is a small replacement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .stats import better_direction, metric_label

__all__ = [
    "detectable_table",
    "format_mean_ci",
    "format_value_interval",
    "markdown_table",
    "results_table",
    "reach_table",
    "tests_table",
    "with_reference_row",
]

NA = "—"


def _decimals(reference: float, significant: int) -> int:
    """Decimal places that show ``significant`` significant digits of ``reference`` (0 to 8)."""
    if not math.isfinite(reference) or reference == 0:
        return 0
    return int(min(8, max(0, significant - 1 - math.floor(math.log10(abs(reference))))))


def format_mean_ci(
    mean: float, half: float, *, decimals: int | None = None, signed: bool = False, significant: int = 2
) -> str:
    """``"12.34 ± 0.42"``: a mean and the half-width of its confidence interval, rounded together.

    By default the half-width is shown with ``significant`` significant digits and the mean with the same
    number of decimals (``decimals`` fixes them instead).  Without a half-width (NaN: fewer than two
    seeds) the mean is shown with four significant digits followed by ``± n/a``, so a single run is
    never mistaken for a precise one.  ``signed`` prefixes ``+`` to non-negative means (for differences).
    A NaN mean gives ``"—"``.
    """
    mean, half = float(mean), float(half)
    if not math.isfinite(mean):
        return NA
    has_ci = math.isfinite(half)
    if decimals is None:
        decimals = _decimals(half, significant) if has_ci and half > 0 else _decimals(mean, 4)
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{decimals}f}"
    return f"{text} ± {half:.{decimals}f}" if has_ci else f"{text} ± n/a"


def format_value_interval(value: float, low: float, high: float, *, significant: int = 2) -> str:
    """``"5.29 [4.45, 6.12]"``: a value and its interval ``[low, high]``, all three rounded to the decimals
    that show ``significant`` significant digits of the interval's half-width -- the same rule as
    :func:`format_mean_ci`, so a reference row reads with the precision of the rows beside it.  A zero
    or non-finite width falls back to four significant digits of the value."""
    value, low, high = float(value), float(low), float(high)
    if not math.isfinite(value):
        return NA
    half = (high - low) / 2
    if not (math.isfinite(half) and half > 0):
        return f"{value:.4g}"
    decimals = _decimals(half, significant)
    return f"{value:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def _cell(value: object, floatfmt: str, na_rep: str) -> str:
    if value is None or (not isinstance(value, str) and np.ndim(value) == 0 and pd.isna(value)):
        return na_rep
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    text = format(float(value), floatfmt) if isinstance(value, float | np.floating) else str(value)
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def markdown_table(
    df: pd.DataFrame,
    floatfmt: str | Mapping[str, str] = ".4g",
    index: bool = False,
    na_rep: str = NA,
) -> str:
    """Render ``df`` as a GitHub-flavoured Markdown table (header, separator, one line per row).

    Numeric columns are right-aligned (``---:``), others left-aligned; columns are padded so the raw text
    lines up too.  ``floatfmt`` is a format spec for floats, or a mapping column -> spec (default
    ``.4g`` for the rest).  Missing values print as ``na_rep``; ``|`` in cells is escaped.  With
    ``index=True`` the index becomes the first column(s).  Ends with a newline.
    """
    frame = df.reset_index() if index else df
    columns = list(frame.columns)
    formats = dict(floatfmt) if isinstance(floatfmt, Mapping) else {}
    default = ".4g" if isinstance(floatfmt, Mapping) else floatfmt
    header = [_cell(str(c), "", na_rep) for c in columns]
    body = [
        [_cell(v, formats.get(str(c), default), na_rep) for c, v in zip(columns, row, strict=True)]
        for row in frame.itertuples(index=False, name=None)
    ]
    numeric = [
        pd.api.types.is_numeric_dtype(frame.iloc[:, j]) and not pd.api.types.is_bool_dtype(frame.iloc[:, j])
        for j in range(len(columns))
    ]
    widths = [max([3, len(header[j])] + [len(r[j]) for r in body]) for j in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    separator = ["-" * (w - 1) + ":" if num else "-" * w for w, num in zip(widths, numeric, strict=True)]
    return "\n".join([line(header), "| " + " | ".join(separator) + " |", *map(line, body)]) + "\n"


def _arrow(metric: str) -> str:
    return {"lower": " ↓", "higher": " ↑"}.get(better_direction(metric) or "", "")


def results_table(
    summary: pd.DataFrame, metrics: Sequence[str] | None = None, diff: bool = True
) -> pd.DataFrame:
    """The comparison table a reader wants: one row per method, ``mean ± CI`` per metric.

    Args:
        summary: the output of :func:`~diffusion_curriculum.report.stats.summarize`.
        metrics: the metrics to show, in this order; default: those in ``summary`` with a better
            direction (so ``is_std``, a spread over Inception-score splits, is left out).
        diff: after each metric, a column ``Δ <metric> vs <baseline>`` with the paired difference to the
            baseline (``mean ± CI``, signed; ``—`` for the baseline itself and where no seed pairs up).

    Returns:
        A DataFrame of strings indexed by ``method`` with a ``seeds`` column (the most seeds of any
        metric) and one column per metric (``FID ↓``: lower is better, ``IS ↑``: higher), ready for
        :func:`markdown_table` (``index=True``) or ``DataFrame.to_html``.
    """
    if metrics is None:
        metrics = [m for m in dict.fromkeys(summary["metric"]) if better_direction(m) is not None]
    baselines = summary["baseline"].dropna().unique() if "baseline" in summary else []
    baseline = str(baselines[0]) if len(baselines) else None
    methods = list(dict.fromkeys(summary["method"]))
    table = pd.DataFrame(index=pd.Index(methods, name="method"))
    table["seeds"] = [int(summary.loc[summary["method"] == m, "n"].max()) for m in methods]
    for metric in metrics:
        rows = summary[summary["metric"] == metric].set_index("method").reindex(methods)
        name = metric_label(metric)
        table[name + _arrow(metric)] = [format_mean_ci(r.mean, r.ci) for r in rows.itertuples()]
        if diff and baseline is not None:
            table[f"Δ {name} vs {baseline}"] = [
                format_mean_ci(r.diff_mean, r.diff_ci, signed=True) if m != baseline and r.n_pairs > 0 else NA
                for m, r in zip(methods, rows.itertuples(), strict=True)
            ]
    return table.astype(str)


def with_reference_row(
    table: pd.DataFrame,
    name: str,
    values: Mapping[str, float],
    intervals: Mapping[str, tuple[float, float]] | None = None,
) -> pd.DataFrame:
    """``table`` (from :func:`results_table`) with one more row, ``name``, holding a single measured value
    per metric (e.g. the metrics of held-out real images: the floor every model is read against), with
    its interval ``[low, high]`` where ``intervals`` has one.  Cells without a value (differences, metrics
    the row lacks) show ``—``; ``seeds`` shows ``—`` too."""
    row = dict.fromkeys(table.columns, NA)
    for metric, value in values.items():
        column = metric_label(metric) + _arrow(metric)
        if column in table.columns and value is not None:
            low, high = intervals[metric] if intervals and metric in intervals else (value, value)
            row[column] = format_value_interval(value, low, high)
    extra = pd.DataFrame([row], index=pd.Index([name], name=table.index.name))
    return pd.concat([table, extra]).astype(str)


def reach_table(reach: pd.DataFrame) -> pd.DataFrame:
    """Human strings for :func:`~diffusion_curriculum.report.stats.iterations_to_reach`: per method the
    steps to reach the baseline's final value (``mean ± CI``, with how many seeds reached it) and the
    speed-up with its interval (``2.18× [1.90, 2.56]``)."""
    rows = []
    for r in reach.itertuples():
        steps = NA if r.n_reached == 0 else format_mean_ci(r.step_mean, r.step_ci, decimals=0)
        if math.isfinite(r.speedup):
            interval = (
                f" [{r.speedup_low:.2f}, {r.speedup_high:.2f}]" if math.isfinite(r.speedup_low) else " [n/a]"
            )
            speedup = f"{r.speedup:.2f}×{interval}"
        else:
            speedup = NA
        rows.append(
            {
                "method": r.method,
                "seeds reaching": f"{r.n_reached}/{r.n_seeds}",
                f"steps to reach final {metric_label(r.metric)} of baseline": steps,
                "speed-up": speedup,
            }
        )
    return pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()


def _p(value: float) -> str:
    if not math.isfinite(value):
        return NA
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def tests_table(tests: pd.DataFrame, baseline: str, confidence: float, alpha: float = 0.05) -> pd.DataFrame:
    """Human strings for :func:`~diffusion_curriculum.report.stats.paired_tests`: per method and
    metric the paired difference to the baseline with its interval, the raw and the Holm-adjusted p, a
    mark where the adjusted p is below ``alpha``, and the difference the test could detect (80 %)."""
    rows = []
    for r in tests.itertuples():
        significant = bool(r.significant) and math.isfinite(r.p_holm)
        rows.append(
            {
                "metric": metric_label(r.metric) + _arrow(r.metric),
                "method": r.method,
                f"Δ vs {baseline} ({confidence:.0%} CI)": format_mean_ci(r.diff_mean, r.diff_ci, signed=True),
                "p": _p(r.p_value),
                "p (Holm)": _p(r.p_holm),
                f"significant at {alpha:g}": "yes" if significant else "no",
                "detectable Δ": f"{r.mdd:.3g}" if math.isfinite(r.mdd) else NA,
            }
        )
    return pd.DataFrame(rows)


def detectable_table(detectable: pd.DataFrame) -> pd.DataFrame:
    """Human strings for :func:`~diffusion_curriculum.report.stats.detectable_differences`: per metric
    the pooled paired spread, the minimum detectable difference and that difference as a share of the
    baseline's mean."""
    rows = []
    for r in detectable.itertuples():
        rows.append(
            {
                "metric": metric_label(r.metric) + _arrow(r.metric),
                "seeds (pairs)": str(r.n_pairs),
                "SD of paired Δ": f"{r.diff_std:.3g}" if math.isfinite(r.diff_std) else NA,
                "minimum detectable Δ": f"{r.mdd:.3g}" if math.isfinite(r.mdd) else NA,
                "as share of baseline": f"{r.mdd_relative:.1%}" if math.isfinite(r.mdd_relative) else NA,
            }
        )
    return pd.DataFrame(rows)


_RULE_WORDS = {
    "uniform": "equal cells of the unit interval (the paper)",
    "snr": "equal ranges of log-SNR",
    "edm_quantile": "equal-probability cells of EDM's log-normal noise density",
    "difficulty": "equal shares of the measured difficulty",
}
_ORDER_WORDS = {
    "paper": "ordered from the highest noise (easiest) to the lowest, as in the paper",
    "measured": "ordered by measured difficulty per unit time, easiest first",
}


def describe_clusters(chosen_by: dict) -> str:
    """``curriculum.json``'s ``chosen_by`` record as a sentence, e.g. "Equal cells of the unit interval
    (the paper), ordered from the highest noise ...".  Keys it does not know are listed at the end."""
    rest = dict(chosen_by)
    rule, order = rest.pop("rule", None), rest.pop("order", None)
    parts = [_RULE_WORDS.get(rule, f"rule {rule!r}") if rule else "rule unknown"]
    signal, column, source = rest.pop("signal", None), rest.pop("column", None), rest.pop("source", None)
    if signal:
        estimator = rest.pop("kl_estimator", None)
        what = f"the {estimator} KL estimate" if signal == "kl" and estimator else f"the {signal} signal"
        parts.append(f"measured by {what} (column `{column}` of `{source}`)")
    if "p_mean" in rest and "p_std" in rest:
        parts.append(f"with P_mean {rest.pop('p_mean')} and P_std {rest.pop('p_std')}")
    if order:
        parts.append(_ORDER_WORDS.get(order, f"order {order!r}"))
    if "merged_from" in rest:
        parts.append(f"{rest.pop('merged_from')} requested, coinciding boundaries merged")
    if rest:
        parts.append("; ".join(f"{key}: {value}" for key, value in sorted(rest.items())))
    text = ", ".join(parts)
    return text[0].upper() + text[1:] + "."
