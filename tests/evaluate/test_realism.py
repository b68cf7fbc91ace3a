import numpy as np
import pytest
from PIL import Image, ImageEnhance

from facesmith.evaluate.features import extract_features
from facesmith.evaluate.realism import frechet_distance, kernel_inception_distance


def test_identical_sets_give_zero_and_a_shift_gives_more():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    b = rng.normal(size=(400, 16))
    shifted = b + 1.0
    assert frechet_distance(a, b) < frechet_distance(a, shifted)
    # ||mu1 - mu2||^2 dominates: 16 dimensions shifted by 1
    assert frechet_distance(a, shifted) == pytest.approx(16, rel=0.25)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, _ = kernel_inception_distance(a, b, subsets=10, subset_size=200)
    moved, _ = kernel_inception_distance(a, b + 0.5, subsets=10, subset_size=200)
    assert abs(same) < 0.05 < moved


def test_fd_on_images_in_mobilenet_space(face_dataset):
    images = [Image.open(p).convert("RGB") for p in sorted((face_dataset / "images").iterdir())[:24]]
    darker = [ImageEnhance.Brightness(im).enhance(0.4) for im in images]
    real = extract_features(images, size=64)
    assert frechet_distance(real, real) == pytest.approx(0, abs=1e-3)
    assert frechet_distance(real, extract_features(darker, size=64)) > 1.0


def _reference_fd(a, b):
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigenvalues = np.linalg.eigvals(s1 @ s2)  # real and >= 0 up to rounding: S1 S2 is similar to a PSD matrix
    return (
        ((a.mean(0) - b.mean(0)) ** 2).sum()
        + np.trace(s1 + s2)
        - 2 * np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    )


@pytest.mark.parametrize("count", [20, 200])  # fewer samples than dimensions (nuclear norm) and more (eigh)
def test_fd_matches_the_definition_on_both_paths(count):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(count, 48))
    b = rng.normal(size=(count + 5, 48)) @ rng.normal(size=(48, 48)) * 0.3 + 0.1
    assert frechet_distance(a, b) == pytest.approx(_reference_fd(a, b), rel=1e-6)


def test_kid_spread_is_not_zero_when_the_sets_are_smaller_than_a_thousand():
    # Issue 13: 1000-face subsets of 200-face sets were the whole set every time, so the "±" was 0.
    rng = np.random.default_rng(3)
    mean, std = kernel_inception_distance(rng.normal(size=(200, 64)), rng.normal(size=(200, 64)))
    assert std > 1e-4 and abs(mean) < 0.1
