"""The frozen image backbone: torchvision's ImageNet MobileNetV2, offline, without torchvision.

Owns the network (torchvision's MobileNetV2 with its exact parameter names, so torchvision's
IMAGENET1K_V1 checkpoint loads strictly), the shipped weights in `facesmith/weights/mobilenet_v2/`, its
preprocessing (RGB resize to `size` px, ImageNet mean/std) and `feature_maps`, the last 1280-channel map
the attribute classifier's heads read. The evaluation feature space built on the pooled activations is
`evaluate.features`; the heads are `attributes.classifier`.

Why MobileNetV2: its ImageNet weights are small (14 MB), BSD-3 licensed and installable with the package;
Inception-v3's FID weights are not available offline. Reference: Sandler et al. 2018, "MobileNetV2:
Inverted Residuals and Linear Bottlenecks".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from facesmith.progress import Progress

WEIGHTS = (
    Path(__file__).resolve().parent.parent / "weights" / "mobilenet_v2" / "mobilenet_v2_imagenet.safetensors"
)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# (expand ratio t, channels c, repeats n, first stride s), Sandler et al. 2018, table 2
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if relu else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), *_conv_bn(hidden, cout, 1, relu=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2 with the same module names; `width` < 1 makes tiny test nets."""

    def __init__(self, width: float = 1.0, classes: int = 1000):
        super().__init__()
        cin = _divisible(32 * width)
        self.last_channel = _divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [_conv_bn(3, cin, stride=2)]
        for t, c, n, s in SETTINGS:
            cout = _divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(_conv_bn(cin, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, classes))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280-d global-average-pooled penultimate features."""
        return self.features(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x))


def load_mobilenet_v2(path: str | Path = WEIGHTS) -> MobileNetV2:
    """The shipped ImageNet MobileNetV2 in eval mode; the state dict must match key for key."""
    from safetensors.torch import load_file

    model = MobileNetV2()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


_CACHED: dict[str, MobileNetV2] = {}


def feature_network(device: torch.device | str = "cpu") -> MobileNetV2:
    """The shipped network, loaded once per process and device."""
    key = str(device)
    if key not in _CACHED:
        _CACHED[key] = load_mobilenet_v2().to(device)
    return _CACHED[key]


def to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """RGB, bilinear resize of the whole (already aligned) face to size x size, ImageNet mean/std."""
    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        for im in images
    ]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def feature_maps(
    images: Sequence[Image.Image] | Callable[[int], Image.Image],
    count: int | None = None,
    *,
    size: int = 128,
    batch: int = 64,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    stage: str = "features",
) -> np.ndarray:
    """(N, 1280, size/32, size/32) float16 maps of the frozen ImageNet MobileNetV2.

    `images` may be a function index -> image, so a large set is decoded batch by batch; `progress`
    hears (`stage`, images done, N) after each batch.
    """
    network = feature_network(device)
    count = len(images) if count is None else count
    get = images if callable(images) else images.__getitem__
    out = []
    for start in range(0, count, batch):
        chunk = [get(i) for i in range(start, min(start + batch, count))]
        out.append(network.features(to_tensor(chunk, size).to(device)).half().cpu().numpy())
        if progress:
            progress(stage, min(start + batch, count), count)
    grid = size // 32
    return np.concatenate(out) if out else np.zeros((0, 1280, grid, grid), np.float16)
