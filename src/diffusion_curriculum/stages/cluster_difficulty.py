"""Stage cluster_difficulty: the curriculum's timestep clusters, written to ``curriculum.json``.

``curriculum.rule`` picks the boundaries: ``uniform`` (the paper), ``snr`` (equal log-SNR ranges),
``edm_quantile`` (quantiles of EDM's log-normal sigma density) or ``difficulty`` (every cluster an equal
share of the measured difficulty: the KL curve of estimate_kl (``kl.estimator: mixture``) or of
estimate_kl_score (``score``), or the convergence table, the adaptive
curriculum the paper leaves to future work).  The file records the boundaries, their easy-to-hard order
and how they were chosen; the train stage reads it.
"""

from __future__ import annotations

from diffusion_curriculum import difficulty
from diffusion_curriculum.errors import SettingError
from diffusion_curriculum.io import atomic_write_json, read_parquet_frame
from diffusion_curriculum.schedules import make_schedule

from . import _cli, params


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("cluster_difficulty", __doc__)
    # Only the measurement the rule reads is needed (uniform / snr / edm_quantile with order paper read none).
    ap.add_argument("--kl", help="kl.parquet written by estimate_kl")
    ap.add_argument("--kl-score", help="kl_score.parquet written by estimate_kl_score")
    ap.add_argument("--convergence", help="convergence.parquet written by convergence")
    ap.add_argument("--out", required=True, help="curriculum.json to write")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "diffusion", "curriculum", "kl")
    diff, cur, estimator = cfg["diffusion"], cfg["curriculum"], cfg["kl"]["estimator"]
    schedule = make_schedule(framework=diff["framework"], **diff[diff["framework"]])

    uses_signal = cur["rule"] == "difficulty" or cur["order"] == "measured"
    how: dict = {"order": cur["order"]}
    signal, column = None, None
    if uses_signal:
        kl_table = args.kl_score if estimator == "score" else args.kl
        source = kl_table if cur["difficulty_signal"] == "kl" else args.convergence
        if source is None:
            flag = {"kl": "--kl-score" if estimator == "score" else "--kl"}.get(
                cur["difficulty_signal"], "--convergence"
            )
            raise SettingError(
                f"curriculum.rule {cur['rule']!r} with order {cur['order']!r} reads the "
                f"{cur['difficulty_signal']} signal: pass {flag}"
            )
        column = "kl" if cur["difficulty_signal"] == "kl" else cur["convergence_measure"]
        signal = read_parquet_frame(source, hint="the difficulty signal", columns=(column,))
        how |= {"signal": cur["difficulty_signal"], "column": column, "source": str(source)}
        if cur["difficulty_signal"] == "kl":
            how["kl_estimator"] = estimator
    if cur["rule"] == "edm_quantile":
        edm = diff["edm"]
        how |= {"p_mean": edm["p_mean"], "p_std": edm["p_std"]}
    intervals = difficulty.cluster_intervals(
        cur["rule"],
        cur["num_clusters"],
        schedule,
        signal,
        column=column,
        order=cur["order"],
        p_mean=diff["edm"]["p_mean"],
        p_std=diff["edm"]["p_std"],
        allow_merge=cur["allow_merge"],
    )
    if intervals.num != cur["num_clusters"]:
        how["merged_from"] = cur["num_clusters"]
    atomic_write_json(difficulty.curriculum_document(intervals, schedule, how), args.out)
    print(f"cluster_difficulty: {intervals.num} clusters by {cur['rule']} -> {args.out}")


if __name__ == "__main__":
    _cli.run(main)
