"""Stage estimate_kl: D_KL(p_{t-1} || p_t) between consecutive marginals of the forward process (eq. 1-2).

The paper's evidence (``seeds/002``, appendix C, Fig. 2) that low-noise timesteps are the hard ones:
consecutive marginals differ most at small t.  Estimated by Monte Carlo over ``kl.num_data`` real images
(L, the Gaussian mixture of eq. 2) and ``kl.num_samples`` draws (M, eq. 1), every VP timestep or
``kl.grid_points`` noise levels of a continuous schedule; see :mod:`diffusion_curriculum.kl`.  Beside it,
the estimator's null: the same estimator with the same L, M and draws on an isotropic Gaussian with the
data's mean and variance, and that reference's exact KL.  Writes ``kl.parquet`` (``t``, ``t_prev``,
``unit``, ``kl``, ``kl_stderr``, ``kl_null``, ``kl_null_stderr``, ``kl_null_exact``; nats).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from diffusion_curriculum import data
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_path
from diffusion_curriculum.kl import default_timesteps, estimate_kl, gaussian_kl, gaussian_reference
from diffusion_curriculum.schedules import make_schedule

from . import _cli, params


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("estimate_kl", __doc__)
    ap.add_argument("--data", required=True, help="train.parquet written by prepare_data")
    ap.add_argument("--out", required=True, help="kl.parquet to write")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "diffusion", "kl")
    diff, kl = cfg["diffusion"], cfg["kl"]
    device = pick_device(params.resolve_device(kl["device"]))
    schedule = make_schedule(framework=diff["framework"], **diff[diff["framework"]])

    dataset = data.subset(data.read_parquet(args.data), kl["num_data"], seed=kl["seed"])
    images, _ = data.to_training_tensor(dataset)
    flat = images.flatten(1)
    times = default_timesteps(schedule, kl["grid_points"])
    started = time.perf_counter()

    def estimate(points):
        # The same seed for data and reference: both see the same indices and noise draws.
        return estimate_kl(
            points,
            schedule,
            times,
            kl["num_samples"],
            exclude_self=kl["exclude_self"],
            common_noise=kl["common_noise"],
            generator=torch.Generator(device=device).manual_seed(kl["seed"]),
            device=device,
            chunk_size=kl["chunk_size"],
            dtype=getattr(torch, kl["precision"]),
        )

    table = estimate(flat)
    reference = gaussian_reference(flat, torch.Generator().manual_seed(kl["seed"] + 1))
    null = estimate(reference)
    table["kl_null"] = null["kl"].to_numpy()
    table["kl_null_stderr"] = null["kl_stderr"].to_numpy()
    table["kl_null_exact"] = gaussian_kl(reference.mean(0), reference.var(0).mean(), schedule, times).numpy()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        table.to_parquet(tmp, index=False)
    print(
        f"estimate_kl: {len(table)} pairs, L = {len(images)}, M = {kl['num_samples']}, "
        f"{time.perf_counter() - started:.1f} s on {device} -> {args.out}"
    )


if __name__ == "__main__":
    _cli.run(main)
