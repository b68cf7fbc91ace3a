"""Face detection with five landmarks: MTCNN's three-stage cascade, in plain torch.

Owns: ``detect_faces(image) -> list[DetectedFace]`` (box, score, and the five points left eye, right eye,
nose, mouth left, mouth right, "left" meaning the image's left) and ``main_face``. Alignment lives in
``align``; what a dataset keeps or rejects lives in ``quality`` and ``prepare``.

Algorithm: Zhang, Zhang, Li, Qiao, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016: an image pyramid scanned by P-Net (12x12 proposals), refined by
R-Net (24x24) and O-Net (48x48, which also regresses the landmarks), with non-maximum suppression between
stages. The network layout, pre-processing and box arithmetic follow facenet-pytorch 2.6.0
(``models/mtcnn.py`` and ``models/utils/detect_face.py``), whose weights (MIT, a port of the original Caffe
models) ship in ``facesmith/weights/mtcnn/``.

Why our own copy rather than the facenet-pytorch package: it pins torch<2.3, numpy<2 and Pillow<10.3 and
needs torchvision for NMS; this file is the ~200 lines we need, with a small NMS of our own. Why MTCNN: its
weights are 2 MB, install with the package (no download), give the five landmarks FFHQ-style alignment
needs, and it runs at tens of images per second on one CPU core at dataset sizes (README has the figures).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.functional import interpolate

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "mtcnn" / "mtcnn.safetensors"

# facenet-pytorch's defaults: smallest face in pixels, per-stage score thresholds, pyramid scale step.
MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709


@dataclass(frozen=True)
class DetectedFace:
    """One face: box (x0, y0, x1, y1) in pixels, MTCNN's O-Net score in [0, 1], five (x, y) landmarks
    in MTCNN's order: left eye, right eye, nose, left and right mouth corner."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


# ----------------------------------------------------------------------------------------------------------
# The three networks (layer names match the weight file).


class PNet(nn.Module):
    """Proposal net: fully convolutional, one 12x12 window per output cell (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops: face score and box regression."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The Caffe weights flatten in (W, H, C) order.
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).contiguous().flatten(1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops: face score, box regression and the five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).contiguous().flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


@functools.lru_cache(maxsize=1)
def load_mtcnn() -> tuple[PNet, RNet, ONet]:
    """The three networks with the shipped weights, loaded once per process."""
    from safetensors.torch import load_file

    state = load_file(WEIGHTS)
    nets = (PNet(), RNet(), ONet())
    for name, net in zip(("pnet", "rnet", "onet"), nets, strict=True):
        net.load_state_dict({k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")})
        net.eval().requires_grad_(False)
    return nets


# ----------------------------------------------------------------------------------------------------------
# Box arithmetic (facenet-pytorch's detect_face.py, single image).


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Greedy non-maximum suppression; indices kept, best first. ``mode="min"`` divides the overlap by the
    smaller box (MTCNN's last stage), which removes a small box inside a large one."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    x0, y0, x1, y1 = boxes.unbind(1)
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = torch.argsort(scores, descending=True)
    keep = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = (torch.minimum(x1[i], x1[rest]) - torch.maximum(x0[i], x0[rest]) + 1).clamp(min=0)
        h = (torch.minimum(y1[i], y1[rest]) - torch.maximum(y0[i], y0[rest]) + 1).clamp(min=0)
        inter = w * h
        denominator = torch.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denominator <= threshold]
    return torch.tensor(keep, dtype=torch.long)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out = boxes.clone()
    out[:, :4] = boxes[:, :4] + reg * torch.stack([w, h, w, h], dim=1)
    return out


def _square(boxes: torch.Tensor) -> torch.Tensor:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    out = boxes.clone()
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2:4] = out[:, :2] + side[:, None]
    return out


def _crops(pixels: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crops of the boxes (clipped to the image, 1-based as in the Caffe code) resized to size x size."""
    h, w = pixels.shape[2:]
    b = boxes[:, :4].trunc().int().tolist()
    out = []
    for x0, y0, x1, y1 in b:
        x0, y0, x1, y1 = max(x0, 1), max(y0, 1), min(x1, w), min(y1, h)
        if x1 > x0 - 1 and y1 > y0 - 1:
            out.append(interpolate(pixels[:, :, y0 - 1 : y1, x0 - 1 : x1], size=(size, size), mode="area"))
        else:  # an empty crop can't be a face; a zero patch keeps the indices aligned and scores low
            out.append(torch.zeros(1, 3, size, size))
    return (torch.cat(out) - 127.5) * 0.0078125


def detect_faces(
    image: Image.Image,
    min_face_size: int = MIN_FACE_SIZE,
    thresholds: tuple[float, float, float] = THRESHOLDS,
    factor: float = PYRAMID_FACTOR,
    max_pixels: int | None = None,
) -> list[DetectedFace]:
    """All faces in ``image``, highest score first (MTCNN, see the module docstring).

    The image is read as RGB; faces smaller than ``min_face_size`` pixels are not searched for. Runs on
    one CPU thread: the cascade is hundreds of tiny ops, which several threads make ~20x slower (measured
    26 ms vs 1.1 s on a 200x200 face on 2 busy cores); use processes for parallelism.

    ``max_pixels``: a larger image is searched in a box-filtered copy of at most that many pixels (the
    cascade holds several float copies of its input: 9 GB for an 88-Mpx photo), so faces smaller than
    ``min_face_size`` in the copy are missed; boxes and landmarks are in ``image``'s pixels either way.
    """
    scale = 1
    if max_pixels and image.width * image.height > max_pixels:
        scale = math.ceil(math.sqrt(image.width * image.height / max_pixels))
        while math.ceil(image.width / scale) * math.ceil(image.height / scale) > max_pixels:
            scale += 1
        image = image.reduce(scale)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            faces = _detect(image, min_face_size, thresholds, factor)
    finally:
        torch.set_num_threads(threads)
    return [scale_face(face, scale, scale) for face in faces] if scale > 1 else faces


def scale_face(face: DetectedFace, sx: float, sy: float) -> DetectedFace:
    """The face with its box and landmarks in an image ``sx`` x ``sy`` times as large."""
    x0, y0, x1, y1 = face.box
    return DetectedFace(
        box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy),
        score=face.score,
        landmarks=tuple((x * sx, y * sy) for x, y in face.landmarks),
    )


def _detect(
    image: Image.Image, min_face_size: int, thresholds: tuple[float, float, float], factor: float
) -> list[DetectedFace]:
    pnet, rnet, onet = load_mtcnn()
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()
    h, w = rgb.shape[:2]

    # Stage 1: P-Net over a pyramid whose first scale maps min_face_size to P-Net's 12-pixel window.
    scale = 12.0 / min_face_size
    side = min(h, w) * scale
    proposals = []
    while side >= 12:
        resized = interpolate(pixels, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
        reg, prob = pnet((resized - 127.5) * 0.0078125)
        score = prob[0, 1]
        ys, xs = torch.nonzero(score >= thresholds[0], as_tuple=True)
        if len(ys):
            cells = torch.stack([xs, ys], dim=1).float()
            q0 = ((2 * cells + 1) / scale).floor()
            q1 = ((2 * cells + 12) / scale).floor()
            found = torch.cat([q0, q1, score[ys, xs, None], reg[0, :, ys, xs].T], dim=1)
            proposals.append(found[nms(found[:, :4], found[:, 4], 0.5)])
        scale *= factor
        side *= factor
    if not proposals:
        return []
    boxes = torch.cat(proposals)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    # P-Net's regression is relative to x1 - x0 (later stages use x1 - x0 + 1).
    w_, h_ = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes[:, :4] += boxes[:, 5:9] * torch.stack([w_, h_, w_, h_], dim=1)
    boxes = _square(boxes[:, :5])

    # Stage 2: R-Net re-scores 24x24 crops and refines the boxes.
    reg, prob = rnet(_crops(pixels, boxes, 24))
    keep = prob[:, 1] > thresholds[1]
    boxes = torch.cat([boxes[keep, :4], prob[keep, 1:2]], dim=1)
    reg = reg[keep]
    if not len(boxes):
        return []
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = _square(_regress(boxes[pick], reg[pick]))

    # Stage 3: O-Net on 48x48 crops gives the final score, box and the five landmarks.
    reg, points, prob = onet(_crops(pixels, boxes, 48))
    keep = prob[:, 1] > thresholds[2]
    boxes = torch.cat([boxes[keep, :4], prob[keep, 1:2]], dim=1)
    reg, points = reg[keep], points[keep]
    if not len(boxes):
        return []
    bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    xs = bw * points[:, :5] + boxes[:, 0:1] - 1
    ys = bh * points[:, 5:] + boxes[:, 1:2] - 1
    boxes = _regress(boxes, reg)
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
    faces = []
    for i in pick.tolist():
        x0, y0, x1, y1 = (float(v) for v in boxes[i, :4])
        faces.append(
            DetectedFace(
                box=(max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))),
                score=float(boxes[i, 4]),
                landmarks=tuple((float(x), float(y)) for x, y in zip(xs[i], ys[i], strict=True)),
            )
        )
    return faces


def main_face(faces: list[DetectedFace], image_size: tuple[int, int]) -> DetectedFace | None:
    """The face a portrait is about: the largest box, ties broken by closeness to the image centre."""
    if not faces:
        return None
    cx, cy = image_size[0] / 2, image_size[1] / 2

    def weight(face: DetectedFace) -> tuple[float, float]:
        fx, fy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        return (round(face.width * face.height, -1), -((fx - cx) ** 2 + (fy - cy) ** 2))

    return max(faces, key=weight)
