"""The frozen MobileNetV2: torchvision's shipped weights load key for key, and its feature maps keep the layout."""

import numpy as np
import torch
from PIL import Image

from facesmith.attributes.backbone import WEIGHTS, MobileNetV2, feature_maps, load_mobilenet_v2


def test_shipped_weights_load_with_torchvision_names():
    from safetensors.torch import load_file

    state = load_file(str(WEIGHTS))
    assert "features.18.0.weight" in state and "classifier.1.weight" in state
    assert set(state) == set(MobileNetV2().state_dict())
    model = load_mobilenet_v2()
    assert model.classifier[1].weight.shape == (1000, 1280)


def test_tiny_width_keeps_the_layout():
    tiny = MobileNetV2(width=0.25).eval()
    assert tiny.pooled(torch.zeros(1, 3, 32, 32)).shape == (1, 1280)


def test_feature_maps_come_in_batches_and_report_progress():
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue", "green")]
    heard = []
    maps = feature_maps(images, size=64, batch=2, progress=lambda *a, **f: heard.append(a))
    assert maps.shape == (3, 1280, 2, 2) and maps.dtype == np.float16
    assert heard == [("features", 2, 3), ("features", 3, 3)]
