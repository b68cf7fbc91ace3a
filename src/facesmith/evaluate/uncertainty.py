"""Uncertainty of the evaluation numbers: Wilson intervals for shares, bootstrap intervals for the rest.

Owns `wilson` (the Wilson score interval of a binomial share, Wilson 1927; better than the normal
approximation at the n = 10-50 a faithfulness cell rests on) and `bootstrap` (the percentile interval of a
statistic over resamples with replacement, Efron & Tibshirani 1993, ch. 13). Every interval is 95 % and
seeded, so a rerun reports the same bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Z95 = 1.959964


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of successes/trials; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(
    statistic: Callable[..., float],
    *samples: np.ndarray,
    rounds: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of `statistic(*resampled)`, each sample resampled with replacement
    along its first axis, independently, `rounds` times."""
    rng = np.random.default_rng(seed)
    values = [statistic(*(s[rng.integers(0, len(s), len(s))] for s in samples)) for _ in range(rounds)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
