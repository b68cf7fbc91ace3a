"""Memorization audit: does the model hand back its training faces?

Owns the nearest training image of every generated face in two spaces - feature space (cosine distance
of the evaluation features) and pixel space (RMS difference of 32 x 32 RGB thumbnails) - the near-copy
thresholds, and the picture of the closest pairs. A generated face is a near-copy when either distance
is at or below its threshold.

The thresholds are calibrated, not guessed: real training faces are lightly edited the way copies get
edited (JPEG, a small crop, brightness/contrast, a little blur or rotation) and each face's nearest *other*
training face stands for a distinct face; each space's threshold is the largest distance that flags at most 5% of
the distinct faces. The calibration's catch rate and false-flag rate are reported, and the real baseline
(training faces the reference does not hold) shows the false-positive rate on new real faces. This follows the copy-detection setup of Carlini et al. 2023 ("Extracting Training Data
from Diffusion Models") and Somepalli et al. 2023, with our own light-edit calibration.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

PIXEL_SIZE = 32
Features = Callable[[Sequence[Image.Image]], np.ndarray]


def pixel_vectors(images: Sequence[Image.Image], size: int = PIXEL_SIZE) -> np.ndarray:
    """(N, size*size*3) float32 in [0, 1]: bicubic thumbnails, flattened."""
    return np.stack(
        [
            np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), np.float32).ravel() / 255
            for im in images
        ]
    )


def light_edit(image: Image.Image, rng: random.Random) -> Image.Image:
    """A near-duplicate: the same photo after the edits copies usually go through."""
    image = image.convert("RGB")
    w, h = image.size
    cut = rng.uniform(0, 0.05)
    dx, dy = rng.uniform(0, cut) * w, rng.uniform(0, cut) * h
    image = image.crop((dx, dy, w - (cut * w - dx), h - (cut * h - dy))).resize((w, h), Image.BICUBIC)
    image = image.rotate(rng.uniform(-3, 3), resample=Image.BICUBIC, fillcolor=(128, 128, 128))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.9, 1.1))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.randint(60, 90))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1 - a @ b.T


def rms_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0) / a.shape[1])


@dataclass
class Thresholds:
    feature: float  # cosine distance
    pixel: float  # RMS difference in [0, 1]
    copies: int  # near-duplicates they were calibrated on
    copies_caught: float  # share of those near-duplicates at or below a threshold (either space)
    distinct_flagged: float  # share of distinct training faces whose nearest other face is flagged


FALSE_FLAG_BUDGET = 0.05  # at most this share of distinct faces may fall under a threshold


def separating_threshold(
    copies: np.ndarray, distinct: np.ndarray, budget: float = FALSE_FLAG_BUDGET
) -> float:
    """The largest distance that flags at most `budget` of the distinct faces (Neyman-Pearson style),
    lowered to the middle of the gap when every copy already falls below it."""
    distinct = np.sort(distinct)
    k = int(np.floor(budget * len(distinct)))
    limit = float(np.nextafter(distinct[k], -np.inf))  # flags distinct[:k] only
    top = float(copies.max())
    return (top + limit) / 2 if top < limit else limit


def calibrate(
    train_images: Sequence[Image.Image],
    train_features: np.ndarray,
    features: Features,
    count: int = 64,
    seed: int = 0,
) -> Thresholds:
    """Thresholds from `count` training faces: their light edits are copies; their nearest *other*
    training face is a distinct face. See `separating_threshold`."""
    rng = random.Random(seed)
    picks = rng.sample(range(len(train_images)), min(count, len(train_images)))
    edited = [light_edit(train_images[i], rng) for i in picks]
    originals = [train_images[i] for i in picks]
    train_pixels = pixel_vectors(train_images)
    copy_f = np.diag(cosine_distances(features(edited), train_features[picks]))
    copy_p = np.diag(rms_distances(pixel_vectors(edited), pixel_vectors(originals)))
    other_f = cosine_distances(train_features[picks], train_features)
    other_p = rms_distances(train_pixels[picks], train_pixels)
    for matrix in (other_f, other_p):
        matrix[np.arange(len(picks)), picks] = np.inf  # a face is not its own distinct neighbour
    distinct_f, distinct_p = other_f.min(1), other_p.min(1)
    feature = separating_threshold(copy_f, distinct_f)
    pixel = separating_threshold(copy_p, distinct_p)
    caught = ((copy_f <= feature) | (copy_p <= pixel)).mean()
    flagged = ((distinct_f <= feature) | (distinct_p <= pixel)).mean()
    return Thresholds(feature, pixel, len(picks), float(caught), float(flagged))


@dataclass
class Audit:
    feature_index: np.ndarray  # nearest training face in feature space, per generated face
    feature_distance: np.ndarray
    pixel_index: np.ndarray  # nearest in pixel space
    pixel_distance: np.ndarray
    copies: np.ndarray  # bool: a near-copy in either space

    @property
    def copy_share(self) -> float:
        return float(self.copies.mean()) if len(self.copies) else 0.0


def audit(
    images: Sequence[Image.Image],
    image_features: np.ndarray,
    train_pixels: np.ndarray,
    train_features: np.ndarray,
    thresholds: Thresholds,
) -> Audit:
    """Nearest training face of every image in both spaces, and which are near-copies."""
    fd = cosine_distances(image_features, train_features)
    pd = rms_distances(pixel_vectors(images), train_pixels)
    fi, pi = fd.argmin(1), pd.argmin(1)
    rows = np.arange(len(images))
    fdist, pdist = fd[rows, fi], pd[rows, pi]
    copies = (fdist <= thresholds.feature) | (pdist <= thresholds.pixel)
    return Audit(fi, fdist, pi, pdist, copies)


def closest_pairs(
    images: Sequence[Image.Image],
    train_images: Sequence[Image.Image],
    result: Audit,
    count: int = 8,
    side: int = 128,
) -> Image.Image:
    """Top row: the `count` generated faces closest to a training face (feature space); below: that face."""
    order = np.argsort(result.feature_distance)[:count]
    label = 14
    sheet = Image.new("RGB", (side * max(1, len(order)), 2 * side + label), "white")
    draw = ImageDraw.Draw(sheet)
    for col, i in enumerate(order):
        sheet.paste(images[i].convert("RGB").resize((side, side)), (col * side, 0))
        sheet.paste(
            train_images[result.feature_index[i]].convert("RGB").resize((side, side)), (col * side, side)
        )
        mark = "COPY " if result.copies[i] else ""
        draw.text((col * side + 3, 2 * side + 1), f"{mark}cos {result.feature_distance[i]:.3f}", fill="black")
    return sheet
