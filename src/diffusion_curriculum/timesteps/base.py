"""The shared pieces of every timestep strategy: the curriculum intervals, the strategy interface, the
framework's own density (``vanilla``) and small helpers for sync-free sampling.

Timestep intervals (the paper's clusters C_1 ... C_N) live on the *unit interval* of the schedule's
training density (see :mod:`diffusion_curriculum.schedules`): ``u = schedule.to_unit(t)``.  C_1 holds
the lowest-noise timesteps (hardest), C_N the highest-noise ones (easiest).  Uniform edges in u are the
paper's own intervals: uniform in t for VP and flow, log-normal quantiles of sigma for EDM.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..schedules import NoiseSchedule

__all__ = [
    "CURRICULUM_FORMAT_VERSION",
    "Intervals",
    "TimestepStrategy",
    "Vanilla",
    "DeviceTables",
    "PiecewiseUniform",
    "as_device",
    "unit_draw",
]

CURRICULUM_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Intervals:
    """N contiguous cells of the unit interval; ``unit_edges`` ascend from 0 to 1 (N + 1 values).

    ``order`` lists cluster indices from easiest to hardest (0-based; 0 is C_1).  The paper's
    order is from the highest-noise cluster down: ``[N-1, ..., 0]``.
    """

    unit_edges: tuple[float, ...]
    order: tuple[int, ...]
    rule: str = "uniform"

    def __post_init__(self) -> None:
        edges = self.unit_edges
        if len(edges) < 2 or edges[0] != 0.0 or edges[-1] != 1.0:
            raise ValueError(f"unit_edges must run from 0.0 to 1.0 with at least 2 values, got {edges}")
        if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
            raise ValueError(f"unit_edges must be strictly increasing, got {edges}")
        if sorted(self.order) != list(range(len(edges) - 1)):
            raise ValueError(f"order must be a permutation of 0..{len(edges) - 2}, got {self.order}")

    @property
    def num(self) -> int:
        return len(self.unit_edges) - 1

    @classmethod
    def uniform(cls, num: int) -> Intervals:
        if num < 1:
            raise ValueError(f"number of intervals must be >= 1, got {num}")
        edges = tuple(i / num for i in range(num + 1))
        return cls(unit_edges=edges, order=tuple(range(num - 1, -1, -1)), rule="uniform")

    def edges_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.unit_edges, dtype=torch.float64, device=device)

    def index(self, schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
        """Cluster index (0 = C_1, lowest noise) of each timestep."""
        u = schedule.to_unit(t).to(torch.float64)
        inner = self.edges_tensor(u.device)[1:-1]
        return torch.bucketize(u, inner, right=True)

    def to_json(self, schedule: NoiseSchedule | None = None, **extra) -> dict:
        """The ``curriculum.json`` document; native edges are added for readers when a schedule is given."""
        doc = {
            "format_version": CURRICULUM_FORMAT_VERSION,
            "rule": self.rule,
            "num_clusters": self.num,
            "unit_edges": list(self.unit_edges),
            "order_easy_to_hard": list(self.order),
        }
        if schedule is not None:
            u = self.edges_tensor()
            doc["framework"] = schedule.name
            # The unit interval's end (u = 1) maps past the last timestep for discrete schedules.
            native = schedule.from_unit(u.clamp(max=1 - 1e-12))
            doc["native_edges"] = [float(v) for v in native]
        doc.update(extra)
        return doc

    @classmethod
    def from_json(cls, doc: dict, source: str = "curriculum.json") -> Intervals:
        for key in ("format_version", "unit_edges", "order_easy_to_hard"):
            if key not in doc:
                raise ValueError(f"{source}: missing key {key!r}")
        if doc["format_version"] != CURRICULUM_FORMAT_VERSION:
            raise ValueError(
                f"{source}: format_version {doc['format_version']!r} is not {CURRICULUM_FORMAT_VERSION}"
            )
        try:
            return cls(
                unit_edges=tuple(float(v) for v in doc["unit_edges"]),
                order=tuple(int(v) for v in doc["order_easy_to_hard"]),
                rule=str(doc.get("rule", "unknown")),
            )
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> Intervals:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"curriculum file not found: {path}")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_json(doc, source=str(path))


class TimestepStrategy:
    """Base class.  Subclasses override ``sample`` and, where they have any, the state hooks.

    ``stage`` is the curriculum stage index for logging (0 for strategies without stages).
    """

    name = "base"

    def __init__(self, schedule: NoiseSchedule, intervals: Intervals):
        self.schedule = schedule
        self.intervals = intervals

    def sample(self, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
        raise NotImplementedError

    def weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weight for timesteps t, or None for unit weights."""
        return None

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Called before optimisation step ``step + 1`` (e.g. to set Adam's beta1 for momentum decay)."""

    def observe(self, step: int, t: torch.Tensor, loss: torch.Tensor) -> None:
        """Called after optimisation step ``step`` with the batch's timesteps and detached per-sample loss.

        Runs every step: it must not synchronise with the host (no ``.item()``, no Python branch on a
        tensor's value); keep state in tensors on the loss's device.
        """

    @property
    def stage(self) -> int:
        """Current curriculum stage (0 for strategies without stages); read only at log time."""
        return 0

    def transitions(self) -> list[dict]:
        """Every stage change so far as ``{"step", "from_stage", "to_stage"}`` rows; read only at log time."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"strategy {self.name!r} has no state, got keys {sorted(state)}")


