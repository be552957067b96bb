"""Stage train_expert[i]: the model trained only on timesteps of interval C_i (the observational study).

Kim et al. (``seeds/002``, appendix B) train one expert per interval to measure how fast each denoising
task converges.  The expert is the same network on the same data as the main runs (``model``,
``diffusion``) with its own budget (``experts``); ``curriculum.num_clusters`` defines the intervals
(uniform cells of the unit interval: uniform in t for VP and flow, log-normal quantiles of sigma for
EDM).  Writes ``model.pt`` (the train stage's format, plus the interval) and ``loss_curve.parquet``
(``step``, ``loss``: the mean training loss over each ``experts.log_every`` steps).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd

from diffusion_curriculum import runs
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_path, atomic_torch_save, atomic_write_json
from diffusion_curriculum.timesteps import Intervals
from diffusion_curriculum.timesteps.expert import SingleInterval
from diffusion_curriculum.training import train_loop

from . import _cli, params

SECTIONS = ("diffusion", "model", "curriculum", "experts")


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("train_expert", __doc__)
    ap.add_argument("--data", required=True, help="train.parquet written by encode_latents")
    ap.add_argument("--captions", default=None, help="captions.parquet written by prepare_data (text models)")
    ap.add_argument("--interval", required=True, type=int, help="i of C_i, 1 = lowest noise")
    ap.add_argument("--out-dir", required=True, help="writes model.pt, loss_curve.parquet, summary.json here")
    ap.add_argument("--checkpoint-dir", required=True, help="resumable checkpoint while it runs")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, *SECTIONS)
    diff, model_cfg, experts = cfg["diffusion"], cfg["model"], cfg["experts"]
    num = cfg["curriculum"]["num_clusters"]
    if not 1 <= args.interval <= num:
        raise params.ParamsError(
            f"{args.params}: --interval {args.interval} is outside 1..curriculum.num_clusters = {num}"
        )
    device = pick_device(params.resolve_device(experts["device"]))
    setup = runs.prepare_training(
        args.data, schedule={"framework": diff["framework"], **diff[diff["framework"]]},
        prediction=diff["prediction"], model=model_cfg["name"], condition=model_cfg["condition"],
        condition_dropout=model_cfg["condition_dropout"], captions_path=args.captions, seed=experts["seed"],
        condition_source=f"{args.params}: model.condition",
    ).to(device)  # fmt: skip
    intervals = Intervals.uniform(num)
    index = args.interval - 1
    strategy = SingleInterval(setup.schedule, intervals, index)
    fingerprint = params.fingerprint(cfg, args.interval, setup.data_sha256, setup.conditioning.digest)
    unit = (intervals.unit_edges[index], intervals.unit_edges[index + 1])
    print(f"train_expert[{args.interval}]: unit interval [{unit[0]:.3f}, {unit[1]:.3f}), device {device}")

    started = time.perf_counter()
    result = train_loop(
        **setup.loop_inputs(),
        strategy=strategy,
        intervals=intervals,
        run_dir=args.checkpoint_dir,
        iterations=experts["iterations"],
        batch_size=experts["batch_size"],
        lr=experts["lr"],
        ema_decay=experts["ema_decay"],
        log_every=experts["log_every"],
        checkpoint_every=max(experts["iterations"] // 4, 1),
        seed=experts["seed"],
        device=device,
        bf16=params.resolve_bf16(experts["precision"], device),
        fingerprint=fingerprint,
    )
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = pd.DataFrame(result.history["steps"])[["step", "loss"]]
    with atomic_path(out / "loss_curve.parquet") as tmp:
        curve.to_parquet(tmp, index=False)
    interval = {"index": args.interval, "unit_low": unit[0], "unit_high": unit[1]}
    record = setup.model_file(
        method=f"expert{args.interval}", seed=experts["seed"], step=result.step, net=result.net,
        ema=result.ema, interval=interval,
    )  # fmt: skip
    atomic_torch_save(record, out / "model.pt")
    atomic_write_json(
        {
            "interval": args.interval,
            "unit_low": unit[0],
            "unit_high": unit[1],
            "iterations": result.step,
            "final_loss": float(curve["loss"].iloc[-1]),
        },
        out / "summary.json",
    )
    print(f"train_expert[{args.interval}]: {result.step} steps in {time.perf_counter() - started:.1f} s")
    shutil.rmtree(args.checkpoint_dir, ignore_errors=True)


if __name__ == "__main__":
    _cli.run(main)
