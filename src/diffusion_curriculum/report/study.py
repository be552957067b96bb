"""The study's documents: the comparison in Markdown (``summary.md``) and the sections of the full
report (HTML and Markdown), assembled from the tables, figures and findings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .html import Image, Table
from .stats import metric_label
from .tables import describe_clusters, markdown_table

FLOOR_NAME = "real data (floor)"


def summary_markdown(
    table: pd.DataFrame,
    reach_view: pd.DataFrame,
    *,
    baseline: str,
    confidence: float,
    num_seeds: int,
    num_floor: int,
    samples_per_set: int,
) -> str:
    """``summary.md``: the comparison at the final step (with the floor row) and the iterations to
    reach the baseline's final FID."""
    lines = [
        "# Comparison at the final step",
        "",
        f"Mean ± {confidence:.0%} Student-t interval over {num_seeds} seed(s); Δ is the difference to "
        f"`{baseline}`, paired over seeds.  `{FLOOR_NAME}`: the same metrics on {num_floor} "
        "held-out real images, what a perfect model would score at this sample count"
        + (
            f" (fewer than the {samples_per_set} of a sample set: FID and KID read high, an upper bound)."
            if num_floor < samples_per_set
            else "."
        ),
        "",
        markdown_table(table, index=True),
        "",
        f"# Iterations to reach `{baseline}`'s final FID",
        "",
        markdown_table(reach_view, index=True),
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
    table: pd.DataFrame,
    reach_view: pd.DataFrame,
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
                Table(table, index=True),
                Table(reach_view, caption=f"Iterations to reach {baseline}'s final FID", index=True),
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
