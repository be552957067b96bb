"""Aggregation and reporting of a comparison of timestep strategies over seeds.

The functions take long tables (pandas DataFrames) and output paths; nothing here knows about
``params.yaml`` or where the pipeline keeps its files.

Input tables
------------
* ``metrics``: ``method`` (str), ``seed`` (int), ``step`` (int, training iteration of the snapshot),
  ``metric`` (``fid``, ``kid``, ``is_mean``, ``is_std``, ``precision``, ``recall``), ``value`` (float).
* ``loss_bins``: ``method``, ``seed``, ``step``, ``bin`` (0-based interval, 0 = lowest noise), ``count``,
  ``loss`` (NaN when ``count`` is 0).
* ``train_log``: ``method``, ``seed``, ``step``, ``loss``, ``stage`` (curriculum stage; constant for the
  methods without a curriculum).
* ``transitions``: ``method``, ``seed``, ``step``, ``from_stage``, ``to_stage`` (may be empty; the
  strategies also write Algorithm 2's ``iteration``, ``from_index``, ``to_index``).
* ``kl``: ``t``, ``unit`` (t in [0, 1]), ``kl``, ``kl_stderr``.
* ``convergence``: ``interval`` (1..N), ``unit_low``, ``unit_high``, ``oscillation_onset``,
  ``plateau_step``, ``final_loss`` (more columns are ignored).

Modules
-------
* :mod:`.stats` -- summaries over seeds with Student-t intervals, paired differences to a baseline,
  iterations needed to reach the baseline's final metric;
* :mod:`.tables` -- ``mean ± CI`` cells, the human comparison table, GitHub Markdown tables;
* :mod:`.figures` -- the PNG figures (a fixed colour per method across all of them);
* :mod:`.html` -- the self-contained HTML report and the Markdown report;
* :mod:`.readings` -- reading a study's metrics, logs, floor and sample sets from the folders handed in,
  and the headline numbers for ``dvc metrics diff``;
* :mod:`.findings` -- the observational study's findings and the floor comparison, as sentences;
* :mod:`.study` -- ``summary.md`` and the sections of the full report.
"""

from .figures import (
    METHOD_COLORS,
    method_color,
    method_order,
    plot_convergence,
    plot_curriculum_timeline,
    plot_kl,
    plot_loss_bins,
    plot_metric_vs_iterations,
    plot_sample_grids,
)
from .html import (
    Image,
    Table,
    Text,
    markdown_to_html,
    render_html,
    render_markdown,
    write_html_report,
    write_markdown_report,
)
from .stats import (
    AREA_SUFFIX,
    REACH_METRIC,
    SIGNIFICANCE,
    TESTED_METRICS,
    Comparison,
    LowNoiseContrast,
    better_direction,
    compare_methods,
    curve_areas,
    detectable_differences,
    first_crossing,
    holm,
    iterations_to_reach,
    low_noise_contrast,
    mean_ci,
    metric_label,
    paired_tests,
    reach_as_metric,
    reach_steps,
    summarize,
    t_half_width,
)
from .tables import (
    detectable_table,
    format_mean_ci,
    format_value_interval,
    markdown_table,
    reach_table,
    results_table,
    tests_table,
    with_reference_row,
)

__all__ = [
    "SIGNIFICANCE",
    "TESTED_METRICS",
    "Comparison",
    "compare_methods",
    "AREA_SUFFIX",
    "REACH_METRIC",
    "curve_areas",
    "detectable_differences",
    "detectable_table",
    "holm",
    "paired_tests",
    "reach_as_metric",
    "tests_table",
    "METHOD_COLORS",
    "LowNoiseContrast",
    "low_noise_contrast",
    "with_reference_row",
    "Image",
    "Table",
    "Text",
    "better_direction",
    "first_crossing",
    "format_mean_ci",
    "format_value_interval",
    "iterations_to_reach",
    "markdown_table",
    "markdown_to_html",
    "mean_ci",
    "method_color",
    "method_order",
    "metric_label",
    "plot_convergence",
    "plot_curriculum_timeline",
    "plot_kl",
    "plot_loss_bins",
    "plot_sample_grids",
    "plot_metric_vs_iterations",
    "reach_steps",
    "reach_table",
    "render_html",
    "render_markdown",
    "results_table",
    "summarize",
    "t_half_width",
    "write_html_report",
    "write_markdown_report",
]
