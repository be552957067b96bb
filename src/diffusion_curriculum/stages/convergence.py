"""Stage convergence: when each interval's expert converged, by two measures (appendix B).

Reads every expert's ``loss_curve.parquet`` and writes ``convergence.parquet``, one row per interval:
the paper's measure (the step after ``convergence.start`` where the loss, averaged over
``convergence.window`` training steps, stops falling and starts to oscillate) and a noise-robust one (the
first step from which that smoothed loss stays within ``convergence.tolerance`` of its fall to its final
plateau, or of the plateau itself: ``convergence.band``),
and whether the loss settled at all; see :mod:`diffusion_curriculum.difficulty`.
"""

from __future__ import annotations

from pathlib import Path

from diffusion_curriculum import difficulty
from diffusion_curriculum.io import atomic_path, read_parquet_frame
from diffusion_curriculum.timesteps import Intervals

from . import _cli, params


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("convergence", __doc__)
    ap.add_argument("--experts-dir", required=True, help="holds expert{i}/loss_curve.parquet")
    ap.add_argument("--out", required=True, help="convergence.parquet to write")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "experts", "convergence")
    conv = cfg["convergence"]
    curves = {}
    for i in cfg["experts"]["intervals"]:
        path = Path(args.experts_dir) / f"expert{i}" / "loss_curve.parquet"
        curves[i] = read_parquet_frame(path, hint="written by train_expert", columns=("step", "loss"))
    table = difficulty.convergence_table(
        curves,
        Intervals.uniform(len(curves)),
        start=conv["start"],
        tolerance=conv["tolerance"],
        window=conv["window"],
        final_fraction=conv["final_fraction"],
        band=conv["band"],
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        table.to_parquet(tmp, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    _cli.run(main)
