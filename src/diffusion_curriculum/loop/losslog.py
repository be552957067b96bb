"""The training log: loss per timestep bin and running loss between log rows, the rows of the run's
history, and the checks that stop a diverged run."""

from __future__ import annotations

import math
import statistics

import torch

from ..errors import TrainingDiverged
from ..schedules import NoiseSchedule
from ..timesteps import Intervals, TimestepStrategy

# Log rows in the running median a loss spike is measured against.
SPIKE_WINDOW = 10


def spike_reference(first_loss: float | None, rows: list[dict]) -> float | None:
    """The running median a log row's loss is compared with: the last ``SPIKE_WINDOW`` log rows, and the
    loss of the run's first step while there are fewer rows (so a run that explodes within its first log
    interval is still measured against its healthy start)."""
    recent = [row["loss"] for row in rows[-SPIKE_WINDOW:]]
    if len(recent) < SPIKE_WINDOW and first_loss is not None:
        recent.insert(0, first_loss)
    return statistics.median(recent) if recent else None


def check_loss(
    step: int, loss: float, reference: float | None = None, spike_factor: float | None = None
) -> None:
    """Raise :class:`TrainingDiverged` when a log row's mean ``loss`` is not finite, or exceeds
    ``spike_factor`` times ``reference`` (both given)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged at step {step}: mean loss {loss} since the last log row; the last good "
            "checkpoint is kept (lower the learning rate, or check the data)"
        )
    if (
        spike_factor is not None
        and reference is not None
        and reference > 0
        and loss > spike_factor * reference
    ):
        raise TrainingDiverged(
            f"training diverged at step {step}: mean loss {loss:.4g} since the last log row is "
            f"{loss / reference:.3g}x its running median {reference:.4g} "
            f"(loss_spike_factor {spike_factor:g}); the last good checkpoint is kept (lower the learning "
            "rate, or check the data)"
        )


class LossLog:
    """Accumulates per-sample losses between log rows and turns them into the history's rows.

    Per step (:meth:`add`, no host sync): the loss sum and sample count of each timestep bin of
    ``intervals``, and the running mean loss.  At a log row (:meth:`row`): one ``bins`` row per bin
    (step, bin, count, mean loss or None for a bin without samples), the ``steps`` row (step, mean loss
    since the last row, curriculum stage) after checking the loss against the running median of recent
    rows, and the strategy's transitions; then the sums restart.  With ``track_first`` the first step's
    loss is kept as the spike reference of the first rows (one host sync, at that step only).

    ``history`` holds 'steps', 'bins' and 'transitions' (lists of row dicts); :meth:`state_dict` is
    everything needed to continue the log exactly after a resume.
    """

    def __init__(
        self,
        intervals: Intervals,
        schedule: NoiseSchedule,
        device: str | torch.device = "cpu",
        *,
        spike_factor: float | None = None,
    ):
        self.intervals, self.schedule, self.spike_factor = intervals, schedule, spike_factor
        self.bin_sum = torch.zeros(intervals.num, dtype=torch.float64, device=device)
        self.bin_count = torch.zeros(intervals.num, dtype=torch.float64, device=device)
        self.running_loss = torch.zeros((), dtype=torch.float64, device=device)  # mean loss, this row
        self.running_count = 0
        self.history: dict[str, list] = {"steps": [], "bins": [], "transitions": []}
        self.first_loss: float | None = None  # step 1's loss: what a spike in the first rows is measured by

    def add(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """One step's timesteps and per-sample losses (the whole global batch)."""
        losses = losses.to(torch.float64)
        bins = self.intervals.index(self.schedule, t)
        self.bin_sum.index_add_(0, bins, losses)
        self.bin_count.index_add_(0, bins, torch.ones_like(losses))
        self.running_loss += losses.mean()
        self.running_count += 1
        if self.first_loss is None and self.spike_factor is not None:
            self.first_loss = self.running_loss.item() / self.running_count

    def row(self, step: int, strategy: TimestepStrategy) -> dict:
        """Close the log row of ``step``: append it to the history (raising :class:`TrainingDiverged`
        first when the loss diverged) and return it flat: step, loss, stage, loss_bin_0..N-1 (None for
        a bin without samples)."""
        stage = strategy.stage
        self.history["transitions"] = strategy.transitions()
        sums, counts = self.bin_sum.tolist(), self.bin_count.tolist()
        bin_rows = [
            {"step": step, "bin": b, "count": int(n), "loss": s / n if n else None}
            for b, (s, n) in enumerate(zip(sums, counts, strict=True))
        ]
        self.history["bins"].extend(bin_rows)
        mean_loss = self.running_loss.item() / max(self.running_count, 1)
        reference = spike_reference(self.first_loss, self.history["steps"])
        check_loss(step, mean_loss, reference, self.spike_factor)
        self.history["steps"].append({"step": step, "loss": mean_loss, "stage": stage})
        self.bin_sum.zero_()
        self.bin_count.zero_()
        self.running_loss.zero_()
        self.running_count = 0
        flat = {"step": step, "loss": mean_loss, "stage": stage}
        return flat | {f"loss_bin_{r['bin']}": r["loss"] for r in bin_rows}

    def state_dict(self) -> dict:
        return {
            "bin_sum": self.bin_sum,
            "bin_count": self.bin_count,
            "running": (self.running_loss, self.running_count),
            "history": self.history,
            "first_loss": self.first_loss,
        }

    def load_state_dict(self, state: dict) -> None:
        self.bin_sum.copy_(state["bin_sum"])
        self.bin_count.copy_(state["bin_count"])
        self.running_loss.copy_(state["running"][0])
        self.running_count = int(state["running"][1])
        self.history = state["history"]
        self.first_loss = state.get("first_loss")
