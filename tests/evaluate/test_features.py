import numpy as np
import torch
from PIL import Image

from facesmith.evaluate.features import (
    WEIGHTS,
    MobileNetV2,
    extract_features,
    feature_space,
    load_mobilenet_v2,
)


def test_shipped_weights_load_with_torchvision_names():
    from safetensors.torch import load_file

    state = load_file(str(WEIGHTS))
    assert "features.18.0.weight" in state and "classifier.1.weight" in state
    assert set(state) == set(MobileNetV2().state_dict())
    model = load_mobilenet_v2()
    assert model.classifier[1].weight.shape == (1000, 1280)


def test_features_are_1280_d_deterministic_and_tell_images_apart():
    images = [Image.new("RGB", (48, 48), c) for c in ("red", "blue")]
    a = extract_features(images, size=64)
    b = extract_features(images, size=64)
    assert a.shape == (2, 1280)
    np.testing.assert_allclose(a, b)
    assert np.linalg.norm(a[0] - a[1]) > 1.0


def test_tiny_width_keeps_the_layout():
    tiny = MobileNetV2(width=0.25).eval()
    assert tiny.pooled(torch.zeros(1, 3, 32, 32)).shape == (1, 1280)
    assert feature_space(224) == "MobileNetV2-ImageNet pool-1280 @224px"
