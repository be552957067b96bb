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

import numpy as np
import pandas as pd
import torch

from diffusion_curriculum import data
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.io import atomic_path
from diffusion_curriculum.kl import default_timesteps
from diffusion_curriculum.kl_score import estimate_kl_score
from diffusion_curriculum.schedules import broadcast_to

from . import _cli, gpu, params
from .sample import load_denoiser

COLUMNS = [
    "t", "t_prev", "unit", "kl", "kl_stderr", "kl_first_order_ok", "g_mean", "g_mean_stderr",
    "score_consistent", "expert",
]  # fmt: skip


def score_pairs(schedule, grid_points: int) -> list[tuple]:
    """The (t_prev, t) pairs to estimate, ascending."""
    if schedule.discrete:
        last = schedule.num_timesteps - 1
        ts = np.unique(np.round(np.geomspace(1, last, grid_points)).astype(np.int64))
        return [(int(t) - 1, int(t)) for t in ts]
    times = default_timesteps(schedule, grid_points + 1).tolist()
    return list(zip(times[:-1], times[1:], strict=True))


def expert_for(experts: list, unit: float):
    """The expert whose interval [unit_low, unit_high) holds ``unit`` (the last one also holds 1)."""
    for denoiser, interval in experts:
        if interval["unit_low"] <= unit < interval["unit_high"] or (
            unit >= 1.0 and interval["unit_high"] >= 1.0
        ):
            return denoiser, interval
    raise ValueError(f"no expert covers unit time {unit:.4f}")


def score_of(denoiser, shape: tuple[int, ...]):
    """score_fn(x, t) of an x0-predicting denoiser: s = (alpha x0_hat - x) / sigma^2 (Tweedie), with the
    null condition, so s is the score of the unconditional marginal."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        images = x.to(torch.float32).reshape(-1, *shape)
        x0 = denoiser(images, t, None)
        alpha, sigma = denoiser.schedule.alpha_sigma(t)
        s = (broadcast_to(alpha, images) * x0 - images) / broadcast_to(sigma.square(), images)
        return s.reshape(x.shape[0], -1).to(x.dtype)

    return score


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
            pd.DataFrame({c: pd.Series(dtype="float64") for c in COLUMNS}).to_parquet(tmp, index=False)
        print("estimate_kl_score: kl.score.source is none; nothing estimated")
        return
    device = gpu.pick_device(params.resolve_device(kl["device"]))
    experts = []
    for i in intervals:
        path = Path(args.experts_dir) / f"expert{i}" / "model.pt"
        denoiser, ckpt = load_denoiser(path, use_ema=True, device=device)
        if "interval" not in ckpt:
            raise InputFileError(path, "is not an expert's model file (no interval; written by train_expert)")
        denoiser.requires_grad_(False)
        experts.append((denoiser, ckpt["interval"]))
    schedule = experts[0][0].schedule
    arch = ckpt["arch"]
    shape = (arch["in_channels"], arch["input_size"], arch["input_size"])

    dataset = data.subset(data.read_parquet(args.data), kl["num_data"], seed=kl["seed"])
    images, _ = data.to_training_tensor(dataset)
    started = time.perf_counter()
    rows = []
    for t_prev, t in score_pairs(schedule, score_cfg["grid_points"]):
        unit = float(schedule.to_unit(torch.as_tensor(t_prev, dtype=torch.float64)))
        denoiser, interval = expert_for(experts, unit)
        # One generator seed for every pair: the same data, noise and probes (common random numbers).
        table = estimate_kl_score(
            score_of(denoiser, shape),
            images,
            schedule,
            [t_prev, t],
            score_cfg["num_samples"],
            generator=torch.Generator(device=device).manual_seed(kl["seed"]),
            device=device,
            batch_size=score_cfg["batch_size"],
        )
        rows.append(table.assign(expert=int(interval["index"])))
    result = pd.concat(rows, ignore_index=True)[COLUMNS]
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
