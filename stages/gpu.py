"""One GPU per job on a multi-GPU machine without a scheduler.

``snakemake --cores N --resources gpu=K`` keeps at most K GPU jobs running, but it does not tell a job
*which* GPU to use; every job would pick ``cuda:0``.  Each GPU job therefore claims a device with an
exclusive ``flock`` on ``<lock_dir>/gpu<i>.lock`` for as long as the process lives (the kernel drops the
lock when the process ends, even on SIGKILL), so two jobs never share a GPU.  Under SLURM each job sees
only its own allocation through ``CUDA_VISIBLE_DEVICES``, and with a single visible device there is
nothing to choose.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "diffusion-curriculum-gpu-locks"
_held: list = []  # open lock files of this process; closing one would release its GPU


def claim_device(
    num_devices: int, lock_dir: str | Path = DEFAULT_LOCK_DIR, wait_s: float = 3600.0, poll_s: float = 2.0
) -> int:
    """Index of a device no other process holds, claimed until this process exits.

    Waits (polling) while every device is taken, up to ``wait_s`` seconds, then raises RuntimeError.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for index in range(num_devices):
            handle = open(lock_dir / f"gpu{index}.lock", "a+")  # noqa: SIM115 - held for the process lifetime
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
    """``cuda`` on a machine with several visible GPUs becomes ``cuda:<a free one>``; else unchanged."""
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    return f"cuda:{claim_device(count)}" if count > 1 else device
