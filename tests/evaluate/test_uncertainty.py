"""Intervals: Wilson for shares, the bootstrap for everything else."""

import numpy as np
import pytest

from facesmith.evaluate.uncertainty import bootstrap, wilson


def test_wilson_matches_the_textbook_values():
    # Newcombe 1998, table I: 81/263 -> 0.2553-0.3662; 0/10 -> 0-0.2775 (the normal approximation gives 0-0).
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(0, 0) == (0.0, 1.0)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=30), rng.normal(size=3000)
    low, high = bootstrap(np.mean, small, seed=1)
    assert low < small.mean() < high
    wide = high - low
    low, high = bootstrap(np.mean, large, seed=1)
    assert low < large.mean() < high and (high - low) < wide / 5
    assert bootstrap(np.mean, small, seed=1) == bootstrap(np.mean, small, seed=1)  # seeded
