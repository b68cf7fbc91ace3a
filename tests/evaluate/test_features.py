"""The evaluation feature space: 1280-d pooled features that tell images apart, under a stated label."""

import numpy as np
from PIL import Image

from facesmith.evaluate.features import extract_features, feature_space


def test_features_are_1280_d_deterministic_and_tell_images_apart():
    images = [Image.new("RGB", (48, 48), c) for c in ("red", "blue")]
    a = extract_features(images, size=64)
    b = extract_features(images, size=64)
    assert a.shape == (2, 1280)
    np.testing.assert_allclose(a, b)
    assert np.linalg.norm(a[0] - a[1]) > 1.0


def test_progress_names_the_stage_and_the_label_names_the_space():
    heard = []
    extract_features([Image.new("RGB", (48, 48))] * 3, size=64, batch=2, progress=lambda *a: heard.append(a))
    assert heard == [("features", 2, 3), ("features", 3, 3)]
    assert feature_space(224) == "MobileNetV2-ImageNet pool-1280 @224px"
