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
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from diffusion_curriculum import data
from diffusion_curriculum.io import atomic_path, atomic_torch_save, atomic_write_json
from diffusion_curriculum.losses import check_prediction
from diffusion_curriculum.models import count_parameters, create_model
from diffusion_curriculum.schedules import make_schedule
from diffusion_curriculum.timesteps import Intervals, make_strategy, strategy_parameters
from diffusion_curriculum.timesteps.curriculum import TRANSITION_COLUMNS
from diffusion_curriculum.training import train_loop

from . import _cli, gpu, params
from ._conditioning import training_conditioning

# Exit status of a run stopped by SIGTERM / SIGUSR1 after writing its checkpoint (EX_TEMPFAIL: "try
# again"); Snakemake's retries and SLURM's requeue start the job again and it resumes.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# strategies: only [method] is used.  The clusters come from --curriculum (cluster_difficulty's file);
# without it, curriculum.num_clusters uniform intervals.
SECTIONS = ("diffusion", "model", "strategies", "train")
MODEL_FORMAT = 1
SNAPSHOT_DIR = "snapshots"  # step{N}.pt for every N in train.snapshots, in model.pt's format


def with_run_facts(method: str, strategy_params: dict, diffusion: dict, train: dict) -> dict:
    """Add what a strategy needs to know about the run and params.yaml holds elsewhere (the network's
    parameterisation, the run length), so it is never written twice and can never disagree."""
    accepted = strategy_parameters(method)
    facts = {"prediction": diffusion["prediction"], "total_steps": train["iterations"]}
    return {**{k: v for k, v in facts.items() if k in accepted}, **strategy_params}


def relaunch_under_torchrun(ranks: int, argv: list[str] | None) -> None:
    """Replace this process by ``torchrun`` with ``ranks`` copies of the same command (one per GPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    os.execv(sys.executable, [*command, "-m", __spec__.name, *(sys.argv[1:] if argv is None else argv)])


def start_data_parallel(device: str) -> int:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU); return this rank."""
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank()


def model_arch(model_cfg: dict, images: torch.Tensor, conditioning: dict) -> dict:
    """``create_model`` arguments for the configured network on this data (stored in every model file);
    ``conditioning`` holds ``num_classes``, ``text_dim`` and ``text_tokens``."""
    return {
        "name": model_cfg["name"],
        "input_size": images.shape[-1],
        "in_channels": images.shape[1],
        **conditioning,
        "class_dropout": model_cfg["condition_dropout"],
    }


def model_file(
    *, arch: dict, schedule: dict, prediction: str, data: dict, method: str, seed: int, step: int,
    net: torch.nn.Module, ema: torch.nn.Module, **extra,
) -> dict:  # fmt: skip
    """What sample and the other readers of a model need to rebuild it (model.pt, snapshots, experts)."""
    return {
        "format": MODEL_FORMAT,
        "arch": arch,
        "schedule": schedule,
        "prediction": prediction,
        "data": data,
        "method": method,
        "seed": seed,
        "step": step,
        "net": net.state_dict(),
        "ema": ema.state_dict(),
        **extra,
    }


def snapshot_name(step: int) -> str:
    return f"step{step}.pt"


def publish_snapshots(pending: Path, target: Path, steps: list[int]) -> None:
    """Move the configured snapshots into the outputs as one directory, replacing any older one."""
    missing = [s for s in steps if not (pending / snapshot_name(s)).is_file()]
    if missing:
        raise FileNotFoundError(f"snapshots for steps {missing} are missing from {pending}")
    staging = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for step in steps:
        os.replace(pending / snapshot_name(step), staging / snapshot_name(step))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _write_table(rows: list[dict], path: Path, columns: list[str] | None = None) -> None:
    frame = pd.DataFrame(rows, columns=columns)
    if columns and not rows:  # an empty table keeps integer columns, so readers need no special case
        frame = frame.astype("int64")
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("train", __doc__)
    ap.add_argument("--data", required=True, help="train.parquet written by encode_latents")
    ap.add_argument("--captions", default=None, help="captions.parquet written by prepare_data (text models)")
    ap.add_argument("--method", required=True, help="timestep strategy (a key of params 'strategies')")
    ap.add_argument("--seed", required=True, type=int)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument(
        "--checkpoint-dir", required=True, help="resumable checkpoint while the run is in progress"
    )
    ap.add_argument(
        "--curriculum",
        default=None,
        help="curriculum.json (default: curriculum.num_clusters uniform intervals)",
    )
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, *SECTIONS)
    diff, model_cfg, train_cfg = cfg["diffusion"], cfg["model"], cfg["train"]
    if args.method not in cfg["strategies"]:
        raise params.ParamsError(
            f"{args.params}: method {args.method!r} has no entry under 'strategies' "
            f"(configured: {sorted(cfg['strategies'])})"
        )
    ranks = train_cfg["data_parallel"]
    if ranks > 1 and "LOCAL_RANK" not in os.environ:
        relaunch_under_torchrun(ranks, argv)
    device = params.resolve_device(train_cfg["device"])
    rank = start_data_parallel(device) if "LOCAL_RANK" in os.environ else None
    if rank is not None:
        device = f"cuda:{os.environ['LOCAL_RANK']}" if device.startswith("cuda") else device
    else:
        device = gpu.pick_device(device)

    dataset = data.read_parquet(args.data)
    images, _ = data.to_training_tensor(dataset)
    manifest_hash = data.content_hash(dataset)
    schedule_kwargs = {"framework": diff["framework"], **diff[diff["framework"]]}
    schedule = make_schedule(**schedule_kwargs)
    check_prediction(schedule, diff["prediction"])
    if args.curriculum:
        intervals = Intervals.load(args.curriculum)
    else:
        num = params.sections(args.params, "curriculum")["curriculum"]["num_clusters"]
        intervals = Intervals.uniform(num)
    strategy_params = cfg.pop("strategies")[args.method]
    cfg["strategy"] = strategy_params
    strategy = make_strategy(
        args.method, schedule, intervals, **with_run_facts(args.method, strategy_params, diff, train_cfg)
    )

    conditioning = training_conditioning(model_cfg, dataset, args.captions, args.params)
    arch = model_arch(model_cfg, images, conditioning.arch)
    torch.manual_seed(args.seed)
    net = create_model(**arch, text_null=conditioning.text_null)
    if device.startswith("cuda") and images.numel() * images.element_size() < 4 * 2**30:
        images = images.to(device)  # small data sets live on the GPU: no host copy in the step
        conditioning.to(device)
    fingerprint = params.fingerprint(
        cfg, args.method, args.seed, manifest_hash, intervals.to_json(), conditioning.digest
    )
    millions = count_parameters(net) / 1e6
    print(
        f"train[{args.method}, seed {args.seed}]: {arch['name']} ({millions:.2f}M params), "
        f"{diff['framework']}/{diff['prediction']}, {len(images)} images, device {device}"
    )

    stop = {"signal": None}

    def request_stop(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    for signum in STOP_SIGNALS:
        signal.signal(signum, request_stop)

    def model_record(step: int, trained_net: torch.nn.Module, ema_net: torch.nn.Module) -> dict:
        return model_file(
            arch=arch,
            schedule=schedule_kwargs,
            prediction=diff["prediction"],
            data={"kind": dataset.kind, "sha256": manifest_hash},
            method=args.method,
            seed=args.seed,
            step=step,
            net=trained_net,
            ema=ema_net,
        )

    # Snapshots wait beside the checkpoint until the run completes: a failed job's outputs are
    # deleted by the workflow manager, the checkpoint directory is not.
    pending_snapshots = Path(args.checkpoint_dir) / SNAPSHOT_DIR

    def write_snapshot(step: int, trained_net: torch.nn.Module, ema_net: torch.nn.Module) -> None:
        pending_snapshots.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(model_record(step, trained_net, ema_net), pending_snapshots / snapshot_name(step))

    started = time.perf_counter()
    result = train_loop(
        net=net,
        schedule=schedule,
        prediction=diff["prediction"],
        strategy=strategy,
        intervals=intervals,
        images=images,
        labels=conditioning.labels,
        condition_image=conditioning.condition_image,
        run_dir=args.checkpoint_dir,
        iterations=train_cfg["iterations"],
        batch_size=train_cfg["batch_size"],
        lr=train_cfg["lr"],
        weight_decay=train_cfg["weight_decay"],
        adam_betas=(train_cfg["adam_beta1"], train_cfg["adam_beta2"]),
        ema_decay=train_cfg["ema_decay"],
        grad_clip=train_cfg["grad_clip"],
        loss_spike_factor=train_cfg["loss_spike_factor"],
        hflip=train_cfg["hflip"],
        log_every=train_cfg["log_every"],
        checkpoint_every=train_cfg["checkpoint_every"],
        seed=args.seed,
        device=device,
        bf16=params.resolve_bf16(train_cfg["precision"], device),
        fingerprint=fingerprint,
        compile=train_cfg["compile"],
        snapshot_steps=train_cfg["snapshots"],
        on_snapshot=write_snapshot,
        should_stop=lambda: stop["signal"] is not None,
    )
    elapsed = time.perf_counter() - started
    if not result.completed:
        print(
            f"train[{args.method}, seed {args.seed}]: {stop['signal']} at step {result.step}; "
            f"checkpoint written to {args.checkpoint_dir}, the next attempt resumes from it",
            file=sys.stderr,
        )
        sys.exit(EXIT_PREEMPTED)

    if rank:  # rank 0 writes the outputs; the others are done
        return
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_table(result.history["bins"], out / "loss_bins.parquet")
    _write_table(result.history["steps"], out / "train_log.parquet")
    _write_table(result.history["transitions"], out / "transitions.parquet", TRANSITION_COLUMNS)
    atomic_torch_save(model_record(result.step, result.net, result.ema), out / "model.pt")
    publish_snapshots(pending_snapshots, out / SNAPSHOT_DIR, train_cfg["snapshots"])
    steps_run = result.step - result.resumed_from
    atomic_write_json(
        {
            "method": args.method,
            "seed": args.seed,
            "iterations": result.step,
            "resumed_from": result.resumed_from,
            "final_loss": result.history["steps"][-1]["loss"],
            "transitions": result.history["transitions"],
            "device": device,
        },
        out / "summary.json",
    )
    # Timings go to the log, not the outputs: identical runs must give identical files.
    print(f"train: {steps_run} steps in {elapsed:.1f} s on {device}")
    # The outputs are complete; the resumable state is no longer needed.
    shutil.rmtree(args.checkpoint_dir, ignore_errors=True)


if __name__ == "__main__":
    _cli.run(main)
