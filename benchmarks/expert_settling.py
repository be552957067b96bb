"""How long the experts must train for the plateau measure to settle: a calibration on loss curves alone.

    python benchmarks/expert_settling.py results/experts/expert1 results/experts/expert20 \
        [--lengths 400 800 1200 1600 2400] [--start-fraction 0.1] [--tolerance 0.01] [--band decrease]

With a constant learning rate (the experts' AdamW) the first N steps of a longer run are exactly an N-step
run, so one long curve per interval answers "would it have settled at N steps?" for every N below its
length.  For each expert directory (``loss_curve.parquet`` from train_expert) and each run length N the
table gives ``difficulty.plateau_step`` on the curve cut at N, with ``convergence.start`` set to
``--start-fraction`` of N (the rule the presets follow), and the per-step noise of the last tenth of the
run as a share of its mean loss.  It reads no method's samples or metrics: it sizes the experts on the
convergence reading alone.

``--synthetic`` adds two curves whose answer is known, logged like the experts (means over 5 steps): a
converged one (flat from step 0, so its plateau step is the first step) and ``1 + exp(-s / 100)``, which
has made all but 1% of its fall from step ``start`` by ``start + 100 ln 100``, each with per-step noise
of ``--noise`` times its level (the experts' is 4-100%); it shows what the measure reads under noise.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def settling_table(curves: dict[str, pd.DataFrame], lengths, start_fraction, tolerance, band, start=None):
    from diffusion_curriculum.difficulty import plateau_step

    rows = []
    for name, curve in curves.items():
        log_every = float(np.median(np.diff(curve["step"].to_numpy())))
        for length in lengths:
            cut = curve[curve["step"] <= length]
            if cut["step"].iloc[-1] < length - log_every:
                continue  # the run is shorter than this length
            tail = cut["loss"].to_numpy()[-max(len(cut) // 10, 2) :]
            # a row is a mean over log_every steps: its spread times sqrt(log_every) is the per-step noise
            noise = float(np.std(tail, ddof=1) * math.sqrt(log_every) / np.mean(tail))
            step = plateau_step(
                cut["step"],
                cut["loss"],
                tolerance=tolerance,
                band=band,
                start=start_fraction * length if start is None else start,
            )
            rows.append(
                {"expert": name, "steps": length, "plateau_step": step, "settled": math.isfinite(step),
                 "tail_loss": float(np.mean(tail)), "noise_per_step": noise}
            )  # fmt: skip
    return pd.DataFrame(rows)


def synthetic_curves(length: int, noise: float, log_every: int = 5) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    steps = np.arange(1, length + 1)
    curves = {}
    for name, level in (("flat", np.ones(length)), ("exp_tau100", 1 + np.exp(-steps / 100))):
        loss = level * (1 + noise * rng.standard_normal(length))
        rows = loss.reshape(-1, log_every).mean(axis=1)
        curves[f"{name}_noise{noise:g}"] = pd.DataFrame(
            {"step": steps[log_every - 1 :: log_every], "loss": rows}
        )
    return curves


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experts", nargs="*", help="train_expert output directories (loss_curve.parquet)")
    ap.add_argument("--lengths", nargs="+", type=int, default=[400, 800, 1200, 1600, 2400])
    ap.add_argument("--start-fraction", type=float, default=0.1, help="start = this share of each length")
    ap.add_argument("--start", type=float, default=None, help="a fixed start step instead, for every length")
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--band", default="decrease")
    ap.add_argument("--synthetic", action="store_true", help="add the two curves whose answer is known")
    ap.add_argument("--noise", type=float, default=0.1, help="their per-step noise, a share of the level")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    curves = {Path(d).name: pd.read_parquet(Path(d) / "loss_curve.parquet") for d in args.experts}
    if args.synthetic:
        curves.update(synthetic_curves(max(args.lengths), 0.0))
        curves.update(synthetic_curves(max(args.lengths), args.noise))
    if not curves:
        ap.error("give expert directories, --synthetic, or both")
    table = settling_table(curves, args.lengths, args.start_fraction, args.tolerance, args.band, args.start)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    settled = table.groupby("steps")["settled"].agg(["sum", "count"])
    print("\nsettled per run length:\n" + settled.to_string())


if __name__ == "__main__":
    main()
