"""Training restricted to one interval: the per-interval "expert" models of the observational study.

Kim et al. (``seeds/002``, appendix B) train one model M_i per interval C_i on timesteps of C_i only, to
see how fast each denoising task converges and what each expert contributes when it replaces a model
trained on every t inside its own interval.  Here t = from_unit(u) with u uniform on the cell
[e_i, e_{i+1}) of the unit interval: uniform in t for VP and flow, and, since EDM's unit interval is the
log-normal CDF of sigma, the log-normal density restricted to its quantile cell for EDM.
"""

from __future__ import annotations

from ..schedules import NoiseSchedule
from .base import BELOW_ONE, Intervals, TimestepStrategy, unit_draw

__all__ = ["SingleInterval"]


class SingleInterval(TimestepStrategy):
    """Draws t from cluster ``index`` only (0-based: 0 is C_1, the lowest-noise interval)."""

    name = "single_interval"

    def __init__(self, schedule: NoiseSchedule, intervals: Intervals, index: int):
        super().__init__(schedule, intervals)
        if not 0 <= index < intervals.num:
            raise ValueError(f"interval index must be in 0..{intervals.num - 1}, got {index}")
        self.index = index
        self.low = intervals.unit_edges[index]
        self.high = min(intervals.unit_edges[index + 1], BELOW_ONE)

    def sample(self, batch, generator, device=None):
        r = unit_draw(batch, generator, device)
        return self.schedule.from_unit(self.low + (self.high - self.low) * r)
