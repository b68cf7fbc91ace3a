"""Face alignment: from five landmarks to an upright, square, FFHQ-framed crop; and the plain crop for
already-aligned sets.

Owns: ``face_quad`` (where the crop lies in the source image), ``align_face`` (cut it out at the target
size) and ``center_crop`` (``--aligned``). Detection is in ``faces``; deciding whether a crop is good
enough is in ``quality``.

Reference: the FFHQ dataset's alignment, NVlabs/ffhq-dataset ``download_ffhq.py``
(``recreate_aligned_images``; Karras, Laine, Aila, "A Style-Based Generator Architecture for GANs", CVPR
2019). It needs only the eye centres and the mouth corners, which MTCNN's five points give: an oriented
square around the eyes and mouth is cut out with a similarity transform, areas outside the photo are
filled by reflection blurred towards the image's median colour, and the result is resized to the target.
``margin`` scales FFHQ's square (1.0 = FFHQ's framing: whole head, some hair and neck).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

Landmarks = tuple[tuple[float, float], ...]


def face_quad(landmarks: Landmarks, margin: float = 1.0) -> np.ndarray:
    """The crop's four corners (top-left, bottom-left, bottom-right, top-right) in source pixels.

    FFHQ: the square's half-side is max(2 x eye distance, 1.8 x eye-to-mouth distance), centred a tenth
    of the eye-to-mouth vector below the eyes and turned so the eyes are level.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right, _, mouth_left, mouth_right = points
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) * margin
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_side(quad: np.ndarray) -> float:
    """Side length of the crop in source pixels: the upscale is target size / this."""
    return float(np.hypot(*(quad[3] - quad[0])))


def outside_fraction(quad: np.ndarray, width: int, height: int) -> float:
    """Share of the crop's area that lies outside the photo (filled by reflection), sampled on a grid."""
    u, v = np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 24))
    pts = quad[0] + u[..., None] * (quad[3] - quad[0]) + v[..., None] * (quad[1] - quad[0])
    inside = (pts[..., 0] >= 0) & (pts[..., 0] <= width) & (pts[..., 1] >= 0) & (pts[..., 1] <= height)
    return float(1.0 - inside.mean())


def align_face(image: Image.Image, landmarks: Landmarks, size: int, margin: float = 1.0) -> Image.Image:
    """The FFHQ-style aligned ``size`` x ``size`` RGB crop of the face with these five landmarks."""
    image = image.convert("RGB")
    quad = face_quad(landmarks, margin)
    qsize = quad_side(quad)

    # Shrink first when the crop is much larger than the target: the quad transform does not antialias.
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        image = image.resize(
            (round(image.width / shrink), round(image.height / shrink)), Image.Resampling.LANCZOS
        )
        quad /= shrink
        qsize /= shrink

    # Crop to the quad's bounds plus a border, so padding and blurring touch few pixels.
    border = max(int(np.rint(qsize * 0.1)), 3)
    left = max(int(np.floor(quad[:, 0].min())) - border, 0)
    top = max(int(np.floor(quad[:, 1].min())) - border, 0)
    right = min(int(np.ceil(quad[:, 0].max())) + border, image.width)
    bottom = min(int(np.ceil(quad[:, 1].max())) + border, image.height)
    if right - left < image.width or bottom - top < image.height:
        image = image.crop((left, top, right, bottom))
        quad -= (left, top)

    # Pad what lies outside the photo: reflection, blurred and faded to the median colour with distance.
    pad = np.array(
        [
            -np.floor(quad[:, 0].min()) + border,
            -np.floor(quad[:, 1].min()) + border,
            np.ceil(quad[:, 0].max()) - image.width + border,
            np.ceil(quad[:, 1].max()) - image.height + border,
        ]
    ).clip(min=0)
    if pad.max() > border - 4:
        pad = np.maximum(pad, np.rint(qsize * 0.3)).astype(int)
        image = _pad_blurred(image, pad, blur=qsize * 0.02)
        quad += pad[:2]

    return image.transform(
        (size, size), Image.Transform.QUAD, tuple((quad + 0.5).flatten()), Image.Resampling.BICUBIC
    )


def _pad_blurred(image: Image.Image, pad: np.ndarray, blur: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    left, top, right, bottom = (int(p) for p in pad)
    pixels = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="symmetric")
    h, w = pixels.shape[:2]
    y, x = np.ogrid[:h, :w]
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = 1.0 - np.minimum(x / max(left, 1e-6), (w - 1 - x) / max(right, 1e-6)).astype(np.float32)
        my = 1.0 - np.minimum(y / max(top, 1e-6), (h - 1 - y) / max(bottom, 1e-6)).astype(np.float32)
    mask = np.maximum(mx, my)[..., None]
    blurred = np.asarray(
        Image.fromarray(np.uint8(pixels.clip(0, 255))).filter(ImageFilter.GaussianBlur(blur)), np.float32
    )
    pixels += (blurred - pixels) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    pixels += (np.median(pixels, axis=(0, 1)) - pixels) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(pixels), 0, 255)))


# CelebA's align&cropped images (178x218, 89x109 in the shared copy): the 80-of-89-px square around the
# face that the default model was trained on (scripts/pack_default_data.py), as fractions of the image.
CELEBA_BOX = (4 / 89, 18 / 109, 84 / 89, 98 / 109)
CELEBA_ASPECT = 89 / 109


def aligned_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The crop ``--aligned`` takes: CelebA's face square on CelebA-shaped images (the default model's
    training crop), else the centred square of side min(width, height)."""
    if abs(width / height - CELEBA_ASPECT) < 0.01:
        left, top, right, bottom = CELEBA_BOX
        return round(left * width), round(top * height), round(right * width), round(bottom * height)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """``--aligned``: the square of ``aligned_box``, resized to ``size`` (Lanczos).

    Already-aligned sets (CelebA's img_align_celeba, UTKFace chips, FFHQ) centre the face, so the same
    crop for every image keeps each set's framing consistent; on CelebA it is the default model's own.
    """
    image = image.convert("RGB")
    return image.resize((size, size), Image.Resampling.LANCZOS, box=aligned_box(*image.size))
