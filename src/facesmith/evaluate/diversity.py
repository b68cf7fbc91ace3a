"""Diversity and coverage: how varied the generated faces are, and how much of the real set they cover.

Owns
- `mean_pairwise_distance`: the mean L2 distance over all pairs of a feature set (0 when every face is
  the same; compare with the real set's own value);
- `precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is
  the union of balls around its points reaching the k-th nearest neighbour; precision is the share of
  generated points inside the real manifold (realism), recall the share of real points inside the
  generated manifold (coverage). k = 3 as in the paper.
"""

from __future__ import annotations

import numpy as np


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) Euclidean distances, computed through the Gram matrix."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0))


def mean_pairwise_distance(features: np.ndarray) -> float:
    n = len(features)
    if n < 2:
        return 0.0
    d = pairwise_distances(features, features)
    return float(d.sum() / (n * (n - 1)))


def _radii(features: np.ndarray, k: int) -> np.ndarray:
    d = pairwise_distances(features, features)
    # Column 0 of the sorted row is the point itself.
    return np.sort(d, axis=1)[:, min(k, len(features) - 1)]


def manifold_membership(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(fake point inside the real manifold, per fake point; real point inside the fake manifold, per real
    point): the per-point verdicts whose means are precision and recall, and which the report's bootstrap
    resamples."""
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} faces in each set")
    real_radii, fake_radii = _radii(real, k), _radii(fake, k)
    d = pairwise_distances(fake, real)  # (fake, real)
    return (d <= real_radii[None, :]).any(1), (fake_radii[None, :] >= d.T).any(1)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of `fake` against `real` with k-NN manifolds."""
    inside_real, inside_fake = manifold_membership(real, fake, k)
    return float(inside_real.mean()), float(inside_fake.mean())
