"""The evaluation feature space: pooled ImageNet MobileNetV2 features of whole faces.

Owns `extract_features`, the 1280-d pooled penultimate activations every realism, diversity and
memorization number is computed in, and the label those numbers carry (`feature_space`). The network, its
shipped weights and its preprocessing are `facesmith.attributes.backbone`'s.

Why not Inception: Inception-v3 FID weights are not available offline; MobileNetV2's are (BSD-3,
torchvision). Distances in this space are labelled FEATURE_SPACE and are not comparable to published
Inception FIDs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from facesmith.attributes.backbone import MobileNetV2, feature_network, to_tensor
from facesmith.progress import Progress

FEATURE_SIZE = 224  # torchvision's evaluation resolution for these weights
FEATURE_SPACE = f"MobileNetV2-ImageNet pool-1280 @{FEATURE_SIZE}px"


def feature_space(size: int = FEATURE_SIZE) -> str:
    """The label every number computed in this space carries."""
    return f"MobileNetV2-ImageNet pool-1280 @{size}px"


@torch.no_grad()
def extract_features(
    images: Sequence[Image.Image],
    *,
    size: int = FEATURE_SIZE,
    batch: int = 32,
    device: torch.device | str = "cpu",
    network: MobileNetV2 | None = None,
    progress: Progress | None = None,
    stage: str = "features",
) -> np.ndarray:
    """(N, 1280) float64 pooled features of `images` in the space `feature_space(size)`; `progress` hears
    (`stage`, images done, N) after each batch."""
    network = network or feature_network(device)
    out = []
    for start in range(0, len(images), batch):
        x = to_tensor(images[start : start + batch], size).to(device)
        out.append(network.pooled(x).double().cpu().numpy())
        if progress:
            progress(stage, min(start + batch, len(images)), len(images))
    return np.concatenate(out) if out else np.zeros((0, network.last_channel))
