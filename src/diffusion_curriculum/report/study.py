"""The study's documents: the comparison in Markdown (``summary.md``) and the sections of the full
report (HTML and Markdown), assembled from the tables, figures and findings."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from .html import Image, Table
from .stats import SIGNIFICANCE, Comparison, better_direction, metric_label
from .tables import (
    describe_clusters,
    detectable_table,
    markdown_table,
    reach_table,
    results_table,
    tests_table,
    with_reference_row,
)

FLOOR_NAME = "real data (floor)"
TESTS_NOTE = (
    "Two-sided paired t test over seeds of each method against `{baseline}`; p (Holm): adjusted over the "
    "methods, one family per metric.  *Mean over training* is the area under the metric-versus-iterations "
    "curve divided by the steps it spans; *steps to reach* is where a run's FID first reaches the final "
    "FID of `{baseline}` with the same seed (linear between snapshots; runs that never reach it drop out).  "
    "Detectable Δ: the difference this test finds with 80% power at 5%, from the method's paired spread."
)
DETECTABLE_NOTE = (
    "The smallest true difference to the baseline that a two-sided paired t test at 5% finds with 80% "
    "power, from the seed-to-seed spread of the paired differences measured here (pooled over the "
    "methods).  A difference that is not significant is only evidence against effects larger than this."
)


class Views(NamedTuple):
    """The comparison's tables as a reader sees them (strings), for summary.md and the report."""

    table: pd.DataFrame  # method x snapshot metric at the final step, with the floor row
    reach: pd.DataFrame
    tests: pd.DataFrame
    detectable: pd.DataFrame


def comparison_views(
    comparison: Comparison,
    snapshot_metrics,
    floor: dict[str, float],
    floor_interval: dict[str, tuple[float, float]],
    baseline: str,
    confidence: float,
) -> Views:
    """:func:`~diffusion_curriculum.report.stats.compare_methods`' frames as display tables: the
    final-step table of the ``snapshot_metrics`` (those with a better direction) with the floor's row,
    the iterations to reach, the paired tests and the minimum detectable differences."""
    shown = [m for m in dict.fromkeys(snapshot_metrics) if better_direction(m)]
    table = results_table(comparison.summary, metrics=shown)
    return Views(
        with_reference_row(table, FLOOR_NAME, floor, floor_interval),
        reach_table(comparison.reach),
        tests_table(comparison.tests, baseline, confidence, alpha=SIGNIFICANCE),
        detectable_table(comparison.detectable),
    )


def summary_markdown(
    views: Views,
    *,
    baseline: str,
    confidence: float,
    num_seeds: int,
    num_floor: int,
    num_floor_sets: int,
    samples_per_set: int,
    floor_class_matched: bool = False,
) -> str:
    """``summary.md``: the comparison at the final step (with the floor row) and the iterations to
    reach the baseline's final FID."""
    lines = [
        "# Comparison at the final step",
        "",
        f"Mean ± {confidence:.0%} Student-t interval over {num_seeds} seed(s); Δ is the difference to "
        f"`{baseline}`, paired over seeds.  `{FLOOR_NAME}`: the same metrics on {num_floor} "
        "held-out real images, what a perfect model would score at this sample count: the mean over "
        f"{num_floor_sets} disjoint sets"
        + (", each with the classes a sample set requests and" if floor_class_matched else ",")
        + f" each against the other held-out images, with the {confidence:.0%} "
        "Student-t interval over the sets"
        + (
            f" (fewer than the {samples_per_set} of a sample set: FID and KID read high, an upper bound)."
            if num_floor < samples_per_set
            else "."
        ),
        "",
        markdown_table(views.table, index=True),
        "",
        f"# Iterations to reach `{baseline}`'s final FID",
        "",
        markdown_table(views.reach, index=True),
        "",
    ]
    if len(views.tests):
        lines += [
            f"# Paired tests against `{baseline}`",
            "",
            TESTS_NOTE.format(baseline=baseline),
            "",
            markdown_table(views.tests),
            "",
        ]
    if len(views.detectable):
        lines += [
            "# Minimum detectable differences",
            "",
            DETECTABLE_NOTE,
            "",
            markdown_table(views.detectable),
            "",
        ]
    return "\n".join(lines)


def curriculum_view(curriculum: dict) -> pd.DataFrame:
    """cluster_difficulty's ``curriculum.json`` as a table: each cluster's unit interval and its
    position in the easy-to-hard order."""
    return pd.DataFrame(
        {
            "cluster": np.arange(1, curriculum["num_clusters"] + 1),
            "unit_low": curriculum["unit_edges"][:-1],
            "unit_high": curriculum["unit_edges"][1:],
            "position_easy_to_hard": [
                curriculum["order_easy_to_hard"].index(i) + 1 for i in range(curriculum["num_clusters"])
            ],
        }
    )


def stitch_caption(base: dict, final: int, base_metrics: dict[str, float]) -> str:
    """The caption of the stitched experts' table: what the base run (``method``, ``seed``) scored."""
    return (
        f"Expert i denoises inside its interval and {base['method']} (seed {base['seed']}, step {final}: "
        + ", ".join(
            f"{metric_label(m)} {v:.4g}" for m, v in base_metrics.items() if m in ("fid", "class_agreement")
        )
        + ") elsewhere"
    )


def report_sections(
    *,
    views: Views,
    figures: dict,
    findings: list[str],
    stitched: pd.DataFrame,
    stitch_caption: str,
    curriculum: dict,
    baseline: str,
    confidence: float,
    num_seeds: int,
    final: int,
) -> list[tuple[str, list]]:
    """The report's sections (title, blocks) for :func:`~diffusion_curriculum.report.write_html_report`
    and :func:`~diffusion_curriculum.report.write_markdown_report`; ``figures`` as the plot functions
    returned them (keys ``fid``, ``samples``, ``loss_bins``, ``timeline``, ``kl``, ``convergence``)."""
    return [
        (
            "Results",
            [
                f"Final step ({final} iterations); mean ± {confidence:.0%} interval over "
                f"{num_seeds} seed(s); Δ paired over seeds against `{baseline}`; the last row is held-out "
                "real data (the floor).",
                Table(views.table, index=True),
                Table(views.reach, caption=f"Iterations to reach {baseline}'s final FID", index=True),
                *(
                    [Table(views.tests, caption=TESTS_NOTE.format(baseline=baseline))]
                    if len(views.tests)
                    else []
                ),
                *([Table(views.detectable, caption=DETECTABLE_NOTE)] if len(views.detectable) else []),
                figures["fid"],
                Image(figures["samples"], caption="Samples at the final step beside real images"),
            ],
        ),
        ("Training dynamics", [figures["loss_bins"], figures["timeline"]]),
        (
            "Why low noise is hard: the observational study",
            [
                "\n".join(findings),
                figures["kl"],
                figures["convergence"],
                Table(stitched, caption=stitch_caption),
            ],
        ),
        (
            "Curriculum clusters",
            [
                describe_clusters(curriculum.get("chosen_by") or {"rule": curriculum.get("rule")}),
                Table(curriculum_view(curriculum)),
            ],
        ),
    ]
