"""When a run stops before its last step."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist


class StopRule:
    """Decides after each step whether the run stops early: once ``stop_after`` steps are done, or when
    ``should_stop()`` (polled after every step, e.g. set by a SIGTERM handler) says so.  Under data
    parallelism (``distributed``) the request is all-reduced, so every rank stops at the same step even
    when the signal reached only some of them.  A run never stops early at its last step."""

    def __init__(
        self,
        iterations: int,
        *,
        stop_after: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        distributed: bool = False,
        device: str | torch.device = "cpu",
    ):
        self.iterations, self.stop_after, self.should_stop = iterations, stop_after, should_stop
        self.distributed, self.device = distributed, device

    def requested(self) -> bool:
        """Poll ``should_stop`` (one all-reduce per call under data parallelism)."""
        if self.should_stop is None:
            return False
        requested = bool(self.should_stop())
        if self.distributed:  # every rank stops at the same step
            flag = torch.tensor([float(requested)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        return requested

    def __call__(self, step: int) -> bool:
        """Whether the run stops after ``step`` steps (the request is polled on every call, the last
        step included, so the ranks' collectives stay in step)."""
        requested = self.requested()
        done = self.stop_after is not None and step >= self.stop_after
        return step < self.iterations and (requested or done)
