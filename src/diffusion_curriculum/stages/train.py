"""Stage train[method, seed]: train one diffusion model with one timestep strategy.

Writes ``model.pt`` (weights, EMA weights and everything needed to rebuild the model and its schedule),
``loss_bins.parquet`` (loss and sample count per timestep interval every ``log_every`` steps: the
difficulty signal and the effective timestep histogram), ``train_log.parquet`` (mean loss and curriculum
stage per log row), ``transitions.parquet`` (every curriculum stage change, in this package's numbering and in
Algorithm 2's: step, from_stage, to_stage, iteration, from_index, to_index) and
``summary.json``, and ``snapshots/step{N}.pt`` for every step N of ``train.snapshots`` (scored by
evaluate for FID versus iterations).  A resumable checkpoint lives in ``--checkpoint-dir`` while the
run is in progress; a rerun with the same configuration continues from it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from diffusion_curriculum import checkpoints, runs
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_torch_save, atomic_write_json
from diffusion_curriculum.live import LiveLog
from diffusion_curriculum.models import count_parameters
from diffusion_curriculum.timesteps import (
    SEED_OFFSET,
    Intervals,
    check_strategy_entry,
    make_strategy,
    strategy_parameters,
)
from diffusion_curriculum.timesteps.curriculum import TRANSITION_COLUMNS
from diffusion_curriculum.training import train_loop

from . import _cli, params

# Exit status of a run stopped by SIGTERM / SIGUSR1 after writing its checkpoint (EX_TEMPFAIL: "try
# again"); Snakemake's retries and SLURM's requeue start the job again and it resumes.
EXIT_PREEMPTED = 75
# strategies: only [method] is used.  The clusters come from --curriculum (cluster_difficulty's file);
# without it, curriculum.num_clusters uniform intervals.
SECTIONS = ("diffusion", "model", "strategies", "train")
# Keys of the train section that train_loop takes under the same name.
LOOP_KEYS = (
    "iterations", "batch_size", "lr", "weight_decay", "ema_decay", "grad_clip", "loss_spike_factor", "hflip",
    "log_every", "checkpoint_every", "compile",
)  # fmt: skip


def with_run_facts(kind: str, strategy_params: dict, prediction: str, iterations: int) -> dict:
    """Add what a strategy needs to know about the run and params.yaml holds elsewhere (the network's
    parameterisation, the run length), so it is never written twice and can never disagree."""
    accepted = strategy_parameters(kind)
    facts = {"prediction": prediction, "total_steps": iterations}
    return {**{k: v for k, v in facts.items() if k in accepted}, **strategy_params}


def _arguments(argv: list[str] | None):
    ap = _cli.parser("train", __doc__)
    ap.add_argument("--data", required=True, help="train.parquet written by encode_latents")
    ap.add_argument("--captions", default=None, help="captions.parquet written by prepare_data (text models)")
    ap.add_argument("--method", required=True, help="timestep strategy (a key of params 'strategies')")
    ap.add_argument("--seed", required=True, type=int, help="seed of the initial weights and of every draw")
    ap.add_argument("--out-dir", required=True, help="writes model.pt, the logs and snapshots/ here")
    ap.add_argument(
        "--checkpoint-dir", required=True, help="resumable checkpoint while the run is in progress"
    )
    ap.add_argument(
        "--live-dir",
        default=None,
        help="write the training curves here as they go (DVCLive files: loss, loss per interval, stage, "
        "lr, beta1, steps/s); watch with `dvc plots show` or VS Code (default: none)",
    )
    ap.add_argument(
        "--curriculum",
        default=None,
        help="curriculum.json (default: curriculum.num_clusters uniform intervals)",
    )
    return ap.parse_args(argv)


def _write_outputs(out: Path, args, result, model_record, snapshots, snapshot_steps, run: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    runs.write_history(result.history, out, TRANSITION_COLUMNS)
    atomic_torch_save(model_record(result.step, result.net, result.ema), out / "model.pt")
    snapshots.publish(out / checkpoints.SNAPSHOT_DIR, snapshot_steps)
    summary = {"method": args.method, "seed": args.seed, "iterations": result.step, **run}
    summary |= {"resumed_from": result.resumed_from, "final_loss": result.history["steps"][-1]["loss"]}
    summary["transitions"] = result.history["transitions"]
    atomic_write_json(summary, out / "summary.json")


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    cfg = params.sections(args.params, *SECTIONS)
    diff, model_cfg, train_cfg = cfg["diffusion"], cfg["model"], cfg["train"]
    if args.method not in cfg["strategies"]:
        raise params.ParamsError(
            f"{args.params}: method {args.method!r} has no entry under 'strategies' "
            f"(configured: {sorted(cfg['strategies'])})"
        )
    cfg["strategy"] = entry = cfg.pop("strategies")[args.method]
    # A named variant (strategies.dtd_tau50: {kind: dtd, ...}) or a strategy of the user's own
    # (kind: my_module:MyStrategy); without `kind` the entry's name is the registered strategy.
    try:
        check_strategy_entry(args.method, entry)
    except ValueError as err:
        raise params.ParamsError(f"{args.params}: {err}") from None
    kind = entry.get("kind", args.method)
    strategy_params = {key: value for key, value in entry.items() if key not in ("kind", SEED_OFFSET)}
    # A replicate on other random streams (an A/A null) trains on seed + offset but is filed, and
    # sampled, under its study seed, so its samples share that seed's noise like any other method's.
    stream_seed = args.seed + entry.get(SEED_OFFSET, 0)
    if train_cfg["data_parallel"] > 1 and "LOCAL_RANK" not in os.environ:
        runs.relaunch_under_torchrun(train_cfg["data_parallel"], __spec__.name, argv)
    device = params.resolve_device(train_cfg["device"])
    rank, device = (
        runs.start_data_parallel(device) if "LOCAL_RANK" in os.environ else (None, pick_device(device))
    )

    setup = runs.prepare_training(
        args.data, schedule={"framework": diff["framework"], **diff[diff["framework"]]},
        prediction=diff["prediction"], model=model_cfg["name"], condition=model_cfg["condition"],
        condition_dropout=model_cfg["condition_dropout"], captions_path=args.captions, seed=stream_seed,
        condition_source=f"{args.params}: model.condition",
    ).to(device)  # fmt: skip
    if args.curriculum:
        intervals = Intervals.load(args.curriculum)
    else:
        intervals = Intervals.uniform(
            params.sections(args.params, "curriculum")["curriculum"]["num_clusters"]
        )
    facts = with_run_facts(kind, strategy_params, diff["prediction"], train_cfg["iterations"])
    strategy = make_strategy(kind, setup.schedule, intervals, **facts)
    fingerprint = params.fingerprint(
        cfg, args.method, args.seed, setup.data_sha256, intervals.to_json(), setup.conditioning.digest
    )
    print(
        f"train[{args.method}, seed {args.seed}]: {setup.arch['name']} "
        f"({count_parameters(setup.net) / 1e6:.2f}M params), {diff['framework']}/{diff['prediction']}, "
        f"{len(setup.images)} images, device {device}"
    )
    stop = runs.StopRequest()

    def model_record(step, trained_net, ema_net) -> dict:
        return setup.model_file(method=args.method, seed=args.seed, step=step, net=trained_net, ema=ema_net)

    snapshots = runs.Snapshots(args.checkpoint_dir, model_record)
    started = time.perf_counter()
    result = train_loop(
        **setup.loop_inputs(),
        strategy=strategy,
        intervals=intervals,
        run_dir=args.checkpoint_dir,
        **{key: train_cfg[key] for key in LOOP_KEYS},
        adam_betas=(train_cfg["adam_beta1"], train_cfg["adam_beta2"]),
        seed=stream_seed,
        device=device,
        bf16=params.resolve_bf16(train_cfg["precision"], device),
        fingerprint=fingerprint,
        snapshot_steps=train_cfg["snapshots"],
        on_snapshot=snapshots.write,
        should_stop=stop.requested,
        on_log=LiveLog(args.live_dir) if args.live_dir and not rank else None,
    )
    elapsed = time.perf_counter() - started
    if rank is not None:
        runs.leave_data_parallel()
    if not result.completed:
        print(
            f"train[{args.method}, seed {args.seed}]: {stop.signal} at step {result.step}; "
            f"checkpoint written to {args.checkpoint_dir}, the next attempt resumes from it",
            file=sys.stderr,
        )
        sys.exit(EXIT_PREEMPTED)
    if rank:  # rank 0 writes the outputs; the others are done
        return
    run = {"strategy": kind, "stream_seed": stream_seed, "device": device}
    _write_outputs(Path(args.out_dir), args, result, model_record, snapshots, train_cfg["snapshots"], run)
    # Timings go to the log, not the outputs: identical runs must give identical files.
    print(f"train: {result.step - result.resumed_from} steps in {elapsed:.1f} s on {device}")
    # The outputs are complete; the resumable state is no longer needed.
    shutil.rmtree(args.checkpoint_dir, ignore_errors=True)


if __name__ == "__main__":
    _cli.run(main)
