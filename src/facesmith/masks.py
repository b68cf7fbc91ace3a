"""Masks of face parts (`--mask face`, `hair`, `mouth`, `eyes`) from facesmith's own MTCNN detector.

Owns: `face_part_mask(image, part)`, a white-on-black mask of that part of every face MTCNN finds in the
image (`data/faces.py`: box and five landmarks). Inpainting (`img2img.py`) takes it as it takes a mask
file; the face detailer will take `face` the same way.

The shapes are ellipses laid in each face's own frame: the eye line gives the roll angle and the eye
distance d the scale, so a tilted or small face gets a tilted or small mask.
- face: the MTCNN box (brow to chin), widened to the cheeks and lengthened to the chin and forehead;
- eyes: one ellipse per eye, 0.8 d wide, with room for the lids and brows;
- mouth: the lips between the two mouth corners, with a margin of d / 4;
- hair: the head's ellipse around and above the face minus the face itself, down to the mouth line. It
  is a heuristic: the five points say where the head is, not where the hair ends; a drawn mask file is
  the answer for long or unusual hair.

Why MTCNN and not the MediaPipe face mesh in ../shared/weights/mediapipe_face_tflite (Apache-2.0): its
.tflite files need a TFLite runtime, and none is a dependency. mediapipe 0.10.21, the last release that
ships them, installs with numpy<2 and protobuf<5 (its SOURCE.md), and facesmith runs on numpy 2;
`ai-edge-litert` could run the files but would be a new dependency. MTCNN's five points are enough for
these four masks, so no weights ship with them.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from facesmith.errors import FacesmithError

FACE_PARTS = ("face", "hair", "mouth", "eyes")
DETECT_MAX_PIXELS = 4_000_000  # MTCNN searches a reduced copy of bigger photos (its memory grows with size)


def face_part_mask(image: Image.Image, part: str, *, name: str = "the image") -> Image.Image:
    """An "L" mask, 255 on `part` of every face MTCNN finds in `image`; FacesmithError when there is none.

    `name` is how the message names the image (its path on the command line)."""
    from facesmith.data.faces import detect_faces

    if part not in FACE_PARTS:
        raise FacesmithError(
            f"--mask {part} is not a face part: pick {', '.join(FACE_PARTS)} or a mask image"
        )
    faces = detect_faces(image.convert("RGB"), max_pixels=DETECT_MAX_PIXELS)
    if not faces:
        raise FacesmithError(
            f"no face was found in {name} for --mask {part}: pass a mask image (white = repaint) instead"
        )
    mask = np.zeros((image.height, image.width), dtype=bool)
    for face in faces:
        mask |= face_part(face, part, image.size)
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def face_part(face, part: str, size: tuple[int, int]) -> np.ndarray:
    """A boolean (height, width) mask of `part` of one DetectedFace in an image of `size` (width, height):
    the per-face shape behind `face_part_mask`, for passes that treat faces one at a time (a detailer)."""
    (lx, ly), (rx, ry), _nose, (mlx, mly), (mrx, mry) = face.landmarks
    angle = math.atan2(ry - ly, rx - lx)  # the face's roll: its eye line against the image's x axis
    d = max(math.hypot(rx - lx, ry - ly), 1.0)
    x0, y0, x1, y1 = face.box
    box_centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    half_w, half_h = (x1 - x0) / 2, (y1 - y0) / 2
    mouth = ((mlx + mrx) / 2, (mly + mry) / 2)
    # "Down" in the face's frame, for moving the head's centre up from the box's.
    down = (-math.sin(angle), math.cos(angle))

    def face_shape() -> np.ndarray:
        return _ellipse(size, box_centre, (1.05 * half_w, 1.2 * half_h), angle)

    if part == "face":
        return face_shape()
    if part == "eyes":
        return _ellipse(size, (lx, ly), (0.4 * d, 0.3 * d), angle) | _ellipse(
            size, (rx, ry), (0.4 * d, 0.3 * d), angle
        )
    if part == "mouth":
        width = math.hypot(mrx - mlx, mry - mly) / 2 + 0.25 * d
        return _ellipse(size, mouth, (width, 0.35 * d), angle)
    # hair
    up = 0.35 * half_h
    head = _ellipse(
        size,
        (box_centre[0] - up * down[0], box_centre[1] - up * down[1]),
        (1.7 * half_w, 1.8 * half_h),
        angle,
    )
    above_mouth = _side(size, mouth, down) < 0
    return head & ~face_shape() & above_mouth


def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    return xs + 0.5, ys + 0.5  # pixel centres


def _ellipse(size, centre, axes, angle: float) -> np.ndarray:
    """Pixels inside the ellipse with semi-axes `axes` (along, across the face's x axis) turned by `angle`."""
    xs, ys = _grid(size)
    dx, dy = xs - centre[0], ys - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    return (u / max(axes[0], 1e-3)) ** 2 + (v / max(axes[1], 1e-3)) ** 2 <= 1


def _side(size, point, normal) -> np.ndarray:
    """Signed distance of each pixel from the line through `point` across `normal` (>0 on its side)."""
    xs, ys = _grid(size)
    return (xs - point[0]) * normal[0] + (ys - point[1]) * normal[1]
