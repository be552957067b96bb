"""Student's t interval of a mean: the one form every reading with an interval takes (a method's mean over
seeds in the report, the floor's mean over its disjoint real sets in evaluate_floor).

An interval is given by its half-width ``t_{(1+c)/2, n-1} * s / sqrt(n)``, ``s`` the sample standard
deviation (``ddof=1``) of the ``n`` values and ``c`` the confidence.  With fewer than two values there is
no estimate of the spread and the half-width is NaN: no interval is invented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import stats as sps


def t_half_width(std: float, n: int, confidence: float = 0.95) -> float:
    """Half-width of Student's t confidence interval of a mean of ``n`` values with sample std ``std``.

    ``t_{(1+confidence)/2, n-1} * std / sqrt(n)``; NaN when ``n < 2`` or ``std`` is not finite.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(sps.t.ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n))


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[int, float, float, float]:
    """``(n, mean, std, half_width)`` of the finite ``values`` (std with ``ddof=1``; NaN where undefined)."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=1)) if n >= 2 else math.nan
    return n, mean, std, t_half_width(std, n, confidence)
