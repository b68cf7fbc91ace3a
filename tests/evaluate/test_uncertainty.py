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


def test_the_basic_interval_of_fd_holds_the_fd_that_resampling_pushes_up():
    """Resampling with replacement repeats points, which raises FD: the percentile interval of the
    default model's report lay wholly above its FD (118.8 in [124.9, 143.3]); the centred one holds it,
    with the same width."""
    from facesmith.evaluate.realism import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(120, 24)), rng.normal(0.3, 1.0, size=(120, 24))
    point = frechet_distance(a, b)
    low, high = bootstrap(frechet_distance, a, b, rounds=60, seed=2)
    assert low > point  # the bias the percentile interval carries
    centred = bootstrap(frechet_distance, a, b, rounds=60, seed=2, method="centered", floor=0.0)
    assert 0.0 <= centred[0] < point < centred[1]
    assert abs((centred[1] - centred[0]) - (high - low)) < 1e-9
