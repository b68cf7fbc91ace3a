import numpy as np
import pytest

from facesmith.evaluate.diversity import mean_pairwise_distance, precision_recall


def test_same_distribution_has_high_precision_and_recall():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    precision, recall = precision_recall(real, fake)
    assert precision > 0.8 and recall > 0.8


def test_collapsed_model_keeps_precision_but_loses_recall_and_diversity():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    collapsed = np.repeat(real[:1], 50, axis=0) + rng.normal(scale=1e-3, size=(50, 8))
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.1
    assert mean_pairwise_distance(collapsed) < 0.01 < mean_pairwise_distance(real)


def test_disjoint_sets_score_zero():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(100, 8))
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    with pytest.raises(ValueError):
        precision_recall(real[:3], real)
