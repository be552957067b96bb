"""One GPU per job on a multi-GPU machine without a scheduler.

``snakemake --cores N --resources gpu=K`` keeps at most K GPU jobs running, but it does not tell a job
*which* GPU to use; every job would pick ``cuda:0``.  Each GPU job therefore claims a device with an
exclusive ``flock`` on ``<lock_dir>/gpu<i>.slot<j>.lock`` for as long as the process lives (the kernel
drops the lock when the process ends, even on SIGKILL), so two jobs never share a GPU unless
``DIFFUSION_CURRICULUM_JOBS_PER_GPU`` allows it.  Under SLURM each job sees only its own allocation
through ``CUDA_VISIBLE_DEVICES``, and with a single visible device there is nothing to choose.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

JOBS_PER_GPU_VAR = "DIFFUSION_CURRICULUM_JOBS_PER_GPU"
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "diffusion-curriculum-gpu-locks"
_held: list = []  # open lock files of this process; closing one would release its GPU


def claim_device(
    num_devices: int,
    lock_dir: str | Path = DEFAULT_LOCK_DIR,
    wait_s: float = 3600.0,
    poll_s: float = 2.0,
    jobs_per_device: int = 1,
) -> int:
    """Index of a device with a free slot (``jobs_per_device`` slots each), claimed until this process exits.

    Waits (polling) while every slot is taken, up to ``wait_s`` seconds, then raises RuntimeError.
    """
    if num_devices < 1 or jobs_per_device < 1:
        raise ValueError(
            f"num_devices and jobs_per_device must be >= 1, got {num_devices}, {jobs_per_device}"
        )
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for slot in range(jobs_per_device * num_devices):
            index = slot % num_devices  # fill every device once before doubling up on any
            handle = open(lock_dir / f"gpu{index}.slot{slot // num_devices}.lock", "a+")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held.append(handle)
            return index
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"all {num_devices} GPUs stayed claimed by other jobs for {wait_s:.0f} s (locks in "
                f"{lock_dir}); run fewer GPU jobs at once (snakemake --resources gpu=K)"
            )
        time.sleep(poll_s)


def pick_device(device: str) -> str:
    """``cuda`` on a machine with several visible GPUs becomes ``cuda:<a free one>``; else unchanged.

    ``DIFFUSION_CURRICULUM_JOBS_PER_GPU`` (default 1) lets that many jobs share one device, for models
    small enough that one job does not fill a GPU.
    """
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return device
    shares = os.environ.get(JOBS_PER_GPU_VAR, "1")
    if not shares.isdigit() or int(shares) < 1:
        raise ValueError(f"{JOBS_PER_GPU_VAR} must be a positive integer, got {shares!r}")
    return f"cuda:{claim_device(count, jobs_per_device=int(shares))}"
