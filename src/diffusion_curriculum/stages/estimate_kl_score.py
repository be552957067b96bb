"""Stage estimate_kl_score: D_KL(p_{t-1} || p_t) from a trained model's score (first order in beta_t).

The consistent companion of estimate_kl: instead of treating the data as a finite set of L points, it
reads the score s = grad log p_{t-1} off the observational study's experts -- each expert's EMA network
on its own interval, unconditionally (the null class or caption) -- and estimates
beta_t^2 / 8 E[(D + x.s + div s + |s|^2)^2] (:mod:`diffusion_curriculum.kl_score`).  VP: pairs (t-1, t)
for ``kl.score.grid_points`` timesteps t spaced geometrically from 1 (the curve changes fastest near the
data); continuous schedules: that many midpoints of the unit interval.  With ``kl.score.source: none``
nothing is estimated and the table is empty (the graph stays the same).  Writes ``kl_score.parquet``
(``t``, ``t_prev``, ``unit``, ``kl``, ``kl_stderr``, ``kl_first_order_ok``, ``g_mean``,
``g_mean_stderr``, ``score_consistent``, ``expert``; nats).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from diffusion_curriculum import data
from diffusion_curriculum.checkpoints import load_expert
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_path
from diffusion_curriculum.kl_score import EXPERT_COLUMNS, estimate_kl_with_experts

from . import _cli, params


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("estimate_kl_score", __doc__)
    ap.add_argument("--data", required=True, help="train.parquet written by encode_latents")
    ap.add_argument("--experts-dir", required=True, help="holds expert{i}/model.pt for experts.intervals")
    ap.add_argument("--out", required=True, help="kl_score.parquet to write")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "kl", "experts")
    kl, intervals = cfg["kl"], cfg["experts"]["intervals"]
    score_cfg = kl["score"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if score_cfg["source"] == "none":
        with atomic_path(out) as tmp:
            pd.DataFrame({c: pd.Series(dtype="float64") for c in EXPERT_COLUMNS}).to_parquet(tmp, index=False)
        print("estimate_kl_score: kl.score.source is none; nothing estimated")
        return
    device = pick_device(params.resolve_device(kl["device"]))
    experts = []
    for i in intervals:
        denoiser, ckpt = load_expert(Path(args.experts_dir) / f"expert{i}" / "model.pt", True, device)
        experts.append((denoiser.requires_grad_(False), ckpt["interval"]))
    arch = ckpt["arch"]

    dataset = data.subset(data.read_parquet(args.data), kl["num_data"], seed=kl["seed"])
    images, _ = data.to_training_tensor(dataset)
    started = time.perf_counter()
    result = estimate_kl_with_experts(
        experts,
        images,
        score_cfg["grid_points"],
        score_cfg["num_samples"],
        shape=(arch["in_channels"], arch["input_size"], arch["input_size"]),
        seed=kl["seed"],
        device=device,
        batch_size=score_cfg["batch_size"],
    )
    with atomic_path(out) as tmp:
        result.to_parquet(tmp, index=False)
    print(
        f"estimate_kl_score: {len(result)} pairs, M = {score_cfg['num_samples']}, "
        f"{int(result['kl_first_order_ok'].sum())} inside the first-order range, "
        f"{int(result['score_consistent'].sum())} with a consistent score, "
        f"{time.perf_counter() - started:.1f} s on {device} -> {out}"
    )


if __name__ == "__main__":
    _cli.run(main)
