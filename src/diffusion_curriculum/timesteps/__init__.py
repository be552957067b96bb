"""Timestep strategies: which noise levels a training step sees, and how each one is weighted.

A strategy draws the batch's timesteps (``sample``), may weight the per-sample loss (``weights``),
may adjust the optimiser before a step (``before_step``), watches the per-sample loss after each step
(``observe``), and carries all of its mutable state in ``state_dict()`` so that a resumed run continues
bit for bit.  Every strategy draws its randomness only from the generator it is given, returns t in the
schedule's native dtype (VP: long; EDM and flow: float64) and keeps its per-step work free of host
synchronisation.

Registered strategies (``make_strategy(name, schedule, intervals, **params)``; each class documents its
formula and parameters):

=================  ==========================================================================
``vanilla``        the framework's own density, t = from_unit(u), u ~ U[0, 1)
``dtd``            the paper's easy-to-hard cumulative cluster curriculum, patience pacing
``anti_cl``        the same, hard-to-easy
``naive_cl``       the easy-to-hard cumulative curriculum with stages of fixed length
``clts``           a density moving from high to low noise during training; optional momentum decay
``speed``          SpeeD: asymmetric density around a threshold + change-aware weights
``min_snr``        Min-SNR-gamma weights, vanilla density
``p2``             P2 weights, vanilla density
``logit_normal``   SD3's logit-normal density on the unit interval
``edm_lognormal``  EDM's log-normal density of noise levels
=================  ==========================================================================
"""

from __future__ import annotations

import inspect

from ..schedules import NoiseSchedule
from .base import CURRICULUM_FORMAT_VERSION, Intervals, PiecewiseUniform, TimestepStrategy, Vanilla
from .clts import CLTS
from .curriculum import DTD, AntiCL, NaiveCL
from .densities import EDMLogNormal, LogitNormal
from .speed import SpeeD
from .weighting import P2, MinSNR

__all__ = [
    "CURRICULUM_FORMAT_VERSION",
    "Intervals",
    "TimestepStrategy",
    "PiecewiseUniform",
    "Vanilla",
    "DTD",
    "AntiCL",
    "NaiveCL",
    "CLTS",
    "SpeeD",
    "MinSNR",
    "P2",
    "LogitNormal",
    "EDMLogNormal",
    "STRATEGIES",
    "make_strategy",
    "strategy_parameters",
]

STRATEGIES: dict[str, type[TimestepStrategy]] = {
    cls.name: cls
    for cls in (Vanilla, DTD, AntiCL, NaiveCL, CLTS, SpeeD, MinSNR, P2, LogitNormal, EDMLogNormal)
}


def strategy_parameters(name: str) -> dict[str, object]:
    """The parameters a strategy accepts, with their defaults (``inspect.Parameter.empty`` = required)."""
    cls = _lookup(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, schedule, intervals
    return {p.name: p.default for p in params}


def _lookup(name: str) -> type[TimestepStrategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown timestep strategy {name!r}; expected one of {sorted(STRATEGIES)}"
        ) from None


def make_strategy(name: str, schedule: NoiseSchedule, intervals: Intervals, **params) -> TimestepStrategy:
    """Build a strategy by name with its own parameters (those of ``params.yaml``'s entry for it).

    Unknown or missing parameter names raise a ValueError that names them and lists the accepted ones.
    """
    cls = _lookup(name)
    accepted = strategy_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    missing = sorted(k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in params)
    if unknown or missing:
        problems = [f"unknown parameter(s) {unknown}"] if unknown else []
        problems += [f"missing required parameter(s) {missing}"] if missing else []
        raise ValueError(
            f"timestep strategy {name!r}: {'; '.join(problems)}; accepted: {sorted(accepted) or 'none'}"
        )
    return cls(schedule, intervals, **params)
