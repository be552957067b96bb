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

A strategy from outside the package is named ``"module:Class"`` (``make_strategy("my_strategies:Warmup",
...)``): the module must be importable (a file in the working directory, where the pipeline's stages
run, or an installed package) and the class a subclass of :class:`TimestepStrategy` that implements
``sample`` and takes ``(schedule, intervals, **its parameters)``.  One class in one file is enough.
"""

from __future__ import annotations

import importlib
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
    "check_strategy_entry",
    "SEED_OFFSET",
    "strategy_class",
    "strategy_parameters",
]

STRATEGIES: dict[str, type[TimestepStrategy]] = {
    cls.name: cls
    for cls in (Vanilla, DTD, AntiCL, NaiveCL, CLTS, SpeeD, MinSNR, P2, LogitNormal, EDMLogNormal)
}


def strategy_class(kind: str) -> type[TimestepStrategy]:
    """The class ``kind`` names: a registered name (:data:`STRATEGIES`) or ``"module:Class"``.

    Raises ValueError naming ``kind`` when the module cannot be imported, has no such class, or the class
    is not a :class:`TimestepStrategy` that implements ``sample``.
    """
    if ":" not in kind:
        try:
            return STRATEGIES[kind]
        except KeyError:
            raise ValueError(
                f"unknown timestep strategy {kind!r}; expected one of {sorted(STRATEGIES)} or "
                "'module:Class' for a strategy of your own"
            ) from None
    module_name, _, class_name = kind.partition(":")
    if not module_name or not class_name.isidentifier():
        raise ValueError(f"timestep strategy {kind!r}: write 'module:Class' (e.g. 'my_strategies:Warmup')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"timestep strategy {kind!r}: cannot import {module_name!r} ({err}); put {module_name}.py in "
            "the folder the pipeline runs in, or install the package that holds it"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"timestep strategy {kind!r}: {module_name} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, TimestepStrategy)):
        raise ValueError(
            f"timestep strategy {kind!r} is not a subclass of diffusion_curriculum.timesteps.TimestepStrategy"
        )
    if cls.sample is TimestepStrategy.sample:
        raise ValueError(f"timestep strategy {kind!r} does not implement sample(batch, generator, device)")
    names = list(inspect.signature(cls.__init__).parameters)[1:3]
    if names != ["schedule", "intervals"]:
        raise ValueError(
            f"timestep strategy {kind!r}: __init__ must take (self, schedule, intervals, ...), not {names}"
        )
    return cls


def strategy_parameters(kind: str) -> dict[str, object]:
    """The parameters a strategy accepts, with their defaults (``inspect.Parameter.empty`` = required)."""
    cls = strategy_class(kind)
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, schedule, intervals
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def make_strategy(kind: str, schedule: NoiseSchedule, intervals: Intervals, **params) -> TimestepStrategy:
    """Build a strategy by its registered name or ``"module:Class"``, with its own parameters (those of
    its ``params.yaml`` entry).

    Unknown or missing parameter names raise a ValueError that names them and lists the accepted ones.
    """
    cls = strategy_class(kind)
    accepted = strategy_parameters(kind)
    unknown = sorted(set(params) - set(accepted))
    missing = sorted(k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in params)
    if unknown or missing:
        problems = [f"unknown parameter(s) {unknown}"] if unknown else []
        problems += [f"missing required parameter(s) {missing}"] if missing else []
        raise ValueError(
            f"timestep strategy {kind!r}: {'; '.join(problems)}; accepted: {sorted(accepted) or 'none'}"
        )
    return cls(schedule, intervals, **params)


# Facts of the run the train stage passes to the strategies that take them (not written in their entry).
RUN_FACTS = ("prediction", "total_steps")
SEED_OFFSET = "seed_offset"  # strategies.<name>.seed_offset: train on the streams of seed + offset


def check_strategy_entry(name: str, entry: dict) -> None:
    """Check a params file's ``strategies.<name>`` entry: its ``kind`` (``name`` when absent) names a
    strategy class, and the entry holds exactly the arguments that class takes (less :data:`RUN_FACTS`).
    Raises ValueError naming ``strategies.<name>``.  ``seed_offset`` (a replicate on other random
    streams) is the train stage's, not the class's."""
    arguments = dict(entry)
    kind = arguments.pop("kind", name)
    arguments.pop(SEED_OFFSET, None)
    where = f"strategies.{name}"
    try:
        accepted = strategy_parameters(kind)
    except ValueError as err:
        raise ValueError(f"{where}.kind: {err}") from None
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise ValueError(
            f"{where}: unknown argument(s) {', '.join(unknown)} of {kind!r} "
            f"(it takes: {', '.join(sorted(accepted)) or 'none'})"
        )
    required = {k for k, v in accepted.items() if v is inspect.Parameter.empty}
    missing = sorted(required - set(arguments) - set(RUN_FACTS))
    if missing:
        raise ValueError(f"{where}: missing argument(s) {', '.join(missing)} of {kind!r}")
