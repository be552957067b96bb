"""The shared pieces of every timestep strategy: the curriculum intervals, the strategy interface, the
framework's own density (``vanilla``) and small helpers for sync-free sampling.

Timestep intervals (the paper's clusters C_1 ... C_N) live on the *unit interval* of the schedule's
training density (see :mod:`diffusion_curriculum.schedules`): ``u = schedule.to_unit(t)``.  C_1 holds
the lowest-noise timesteps (hardest), C_N the highest-noise ones (easiest).  Uniform edges in u are the
paper's own intervals: uniform in t for VP and flow, log-normal quantiles of sigma for EDM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..device_tables import DeviceTables
from ..errors import InputFileError
from ..io import read_json
from ..schedules import NoiseSchedule

__all__ = [
    "CURRICULUM_FORMAT_VERSION",
    "BELOW_ONE",
    "Intervals",
    "TimestepStrategy",
    "Vanilla",
    "DeviceTables",
    "PiecewiseUniform",
    "as_device",
    "expectation_under",
    "same_device",
    "select_row",
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
    _tables: DeviceTables = field(default_factory=DeviceTables, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        edges = self.unit_edges
        if len(edges) < 2 or edges[0] != 0.0 or edges[-1] != 1.0:
            raise ValueError(f"unit_edges must run from 0.0 to 1.0 with at least 2 values, got {edges}")
        if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
            raise ValueError(f"unit_edges must be strictly increasing, got {edges}")
        if sorted(self.order) != list(range(len(edges) - 1)):
            raise ValueError(f"order must be a permutation of 0..{len(edges) - 2}, got {self.order}")
        self._tables.add("inner_edges", torch.tensor(edges[1:-1], dtype=torch.float64))

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
        return torch.bucketize(u, self._tables.get("inner_edges", u.device), right=True)

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
        doc = read_json(path, hint="written by cluster_difficulty")
        try:
            return cls.from_json(doc, source=str(path))
        except ValueError as err:
            raise InputFileError(path, str(err).removeprefix(f"{path}: ")) from None


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
        """Every stage change so far as rows with :data:`.curriculum.TRANSITION_COLUMNS`; read only at log
        time."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"strategy {self.name!r} has no state, got keys {sorted(state)}")


class Vanilla(TimestepStrategy):
    """The framework's own training density: u ~ U[0, 1), t = from_unit(u) (uniform t for VP and flow,
    log-normal sigma for EDM)."""

    name = "vanilla"

    def sample(self, batch, generator, device=None):
        return self.schedule.sample_t(batch, generator=generator, device=device)


# ----------------------------------------------------------------------------------------------------
# Helpers shared by the strategies.

#: The largest float64 below 1: draws from an inverse CDF stay in [0, 1) like those of torch.rand.
BELOW_ONE = 1.0 - 2.0**-53


def as_device(device) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def same_device(a: torch.device, b: torch.device) -> bool:
    """Device equality that treats ``cuda`` (the current device) and ``cuda:0`` alike, so state is not
    shuttled back and forth between two spellings of one device."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def unit_draw(batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """u ~ U[0, 1) in float64 from the caller's generator (the only randomness a strategy uses)."""
    return torch.rand(batch, generator=generator, dtype=torch.float64, device=device)


def select_row(table: torch.Tensor, row: int | torch.Tensor) -> torch.Tensor:
    """Row ``row`` of a 2-D table; a 0-dim tensor row is looked up with ``index_select`` because plain
    indexing by a 0-dim tensor converts it to a Python int (a host sync)."""
    if isinstance(row, torch.Tensor):
        return table.index_select(0, row.reshape(1)).squeeze(0)
    return table[row]


class PiecewiseUniform:
    """Rows of piecewise-constant densities on [0, 1) over shared cell edges e_0 = 0 < ... < e_K = 1.

    Row s puts probability m_{s,k} (``masses``, normalised per row) on cell [e_k, e_{k+1}), uniformly
    inside the cell.  Sampling is the exact inverse CDF with one uniform r per draw:

        M_{s,j} = sum_{k<j} m_{s,k},   j = max{j : M_{s,j} <= r},
        u = e_j + (r - M_{s,j}) (e_{j+1} - e_j) / m_{s,j}

    A right-sided search never lands on a cell of zero mass (it skips the flat steps of M), and u is
    clipped to the largest float below e_{j+1} so that rounding cannot push a draw into the next cell.
    """

    def __init__(self, edges: Sequence[float], masses: torch.Tensor):
        edges_t = torch.as_tensor(edges, dtype=torch.float64)
        masses = torch.as_tensor(masses, dtype=torch.float64).reshape(-1, len(edges_t) - 1)
        if (masses < 0).any() or (masses.sum(1) <= 0).any():
            raise ValueError("every row of masses must be non-negative with a positive sum")
        masses = masses / masses.sum(1, keepdim=True)
        cum = torch.zeros(masses.shape[0], masses.shape[1] + 1, dtype=torch.float64)
        cum[:, 1:] = masses.cumsum(1)
        cum[:, -1] = 1.0
        widths = edges_t[1:] - edges_t[:-1]
        self.num_cells = masses.shape[1]
        self.edges = edges_t
        self.masses = masses
        self.tables = DeviceTables()
        self.tables.add("cum", cum)
        self.tables.add("scale", torch.where(masses > 0, widths / masses.clamp(min=1e-300), 0.0))
        self.tables.add("lower", edges_t[:-1])
        self.tables.add("upper", torch.nextafter(edges_t[1:], edges_t[:-1]))

    def sample(self, r: torch.Tensor, row: int | torch.Tensor) -> torch.Tensor:
        dev = r.device
        cum = select_row(self.tables.get("cum", dev), row)
        scale = select_row(self.tables.get("scale", dev), row)
        j = (torch.searchsorted(cum, r, right=True) - 1).clamp_(0, self.num_cells - 1)
        u = self.tables.get("lower", dev)[j] + (r - cum[j]) * scale[j]
        return torch.minimum(u, self.tables.get("upper", dev)[j])

    def cdf(self, u: torch.Tensor, row: int) -> torch.Tensor:
        """CDF of row ``row`` at u (CPU; for normalisation and checks)."""
        u = torch.as_tensor(u, dtype=torch.float64).clamp(0.0, 1.0)
        cum = self.tables.get("cum", torch.device("cpu"))[row]
        density = self.masses[row] / (self.edges[1:] - self.edges[:-1])
        j = (torch.searchsorted(self.edges, u, right=True) - 1).clamp(0, self.num_cells - 1)
        return (cum[j] + density[j] * (u - self.edges[j])).clamp(max=1.0)


def expectation_under(
    schedule: NoiseSchedule,
    cdf: Callable[[torch.Tensor], torch.Tensor],
    pdf: Callable[[torch.Tensor], torch.Tensor],
    fn_t: Callable[[torch.Tensor], torch.Tensor],
    grid: int = 1 << 16,
) -> float:
    """E[f(t)] when u has CDF ``cdf`` / density ``pdf`` on [0, 1) and t = from_unit(u).

    Discrete schedules: the exact sum over t of P(t) f(t), P(t) = F((t+1)/T) - F(t/T), because
    from_unit maps the cell [t/T, (t+1)/T) to t.  Continuous ones: the midpoint rule on ``grid`` cells of u.
    """
    if schedule.discrete:
        t = torch.arange(schedule.num_timesteps)
        lo, hi = schedule.to_unit(t), schedule.to_unit(t + 1)
        return float((cdf(hi) - cdf(lo)).mul(fn_t(t)).sum())
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    return float((pdf(u) * fn_t(schedule.from_unit(u))).mean())
