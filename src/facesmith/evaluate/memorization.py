"""Memorization audit: does the model hand back its training faces?

Owns the nearest training image of every generated face in two spaces - feature space (cosine distance
of the evaluation features) and pixel space (RMS difference of 32 x 32 RGB thumbnails) - the near-copy
thresholds, and the picture of the closest pairs. A generated face is a near-copy when either distance
is at or below its threshold.

The thresholds are calibrated, not guessed, and calibrated together: real training faces are edited the
way copies get edited (JPEG, a crop, a zoom out with a border, a downscale, brightness/contrast, a little
blur or rotation), and the nearest *other* reference face of every reference face stands for a distinct
face. The pair of thresholds is the one that catches the most copies while flagging at most 1 % of the
distinct faces in *either* space (calibrating each space to 5 % on its own flagged 10-16 % in all, issue
13). The calibration's catch rate and false-flag rate are reported, and the real baseline (training
faces the reference does not hold) shows the false-positive rate on new real faces. This follows the
copy-detection setup of Carlini et al. 2023 ("Extracting Training Data from Diffusion Models") and
Somepalli et al. 2023, with our own edit calibration.
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
    """A near-duplicate: the same photo after the edits copies usually go through - a crop (up to 15 %)
    or a zoom out (up to 15 %, edge-coloured border), sometimes a downscale to 35-70 % and back, a small
    rotation, brightness/contrast, sometimes blur, and JPEG."""
    image = image.convert("RGB")
    w, h = image.size
    if rng.random() < 0.5:
        cut = rng.uniform(0, 0.15)
        dx, dy = rng.uniform(0, cut) * w, rng.uniform(0, cut) * h
        image = image.crop((dx, dy, w - (cut * w - dx), h - (cut * h - dy))).resize((w, h), Image.BICUBIC)
    else:
        zoom = rng.uniform(0.85, 1.0)
        small = image.resize((max(1, round(w * zoom)), max(1, round(h * zoom))), Image.BICUBIC)
        edge = tuple(int(v) for v in np.asarray(image).reshape(-1, 3)[:w].mean(0))
        canvas = Image.new("RGB", (w, h), edge)
        canvas.paste(small, (rng.randint(0, w - small.width), rng.randint(0, h - small.height)))
        image = canvas
    if rng.random() < 0.3:
        scale = rng.uniform(0.35, 0.7)
        image = image.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BILINEAR)
        image = image.resize((w, h), Image.BICUBIC)
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
    distinct_flagged: float  # share of distinct reference faces whose nearest other face is flagged (either)
    distinct: int = 0  # distinct faces they were calibrated on
    budget: float = 0.01  # the most `distinct_flagged` may be


FALSE_FLAG_BUDGET = 0.01  # at most this share of distinct faces may be flagged, both spaces together


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


def joint_thresholds(
    copy_f: np.ndarray,
    copy_p: np.ndarray,
    distinct_f: np.ndarray,
    distinct_p: np.ndarray,
    budget: float = FALSE_FLAG_BUDGET,
) -> tuple[float, float]:
    """(feature, pixel) thresholds that catch the most copies while at most `budget` of the distinct
    faces fall under either. Each candidate feature threshold flags some distinct faces; the pixel
    threshold takes what is left of the budget among the others (`separating_threshold`'s rule)."""
    allowed = int(np.floor(budget * len(distinct_f)))
    order = np.sort(distinct_f)
    best = None
    for used in range(allowed + 1):
        feature = float(np.nextafter(order[min(used, len(order) - 1)], -np.inf))
        rest = distinct_p[distinct_f > feature]
        left = allowed - int((distinct_f <= feature).sum())
        pixel = separating_threshold(copy_p, rest, (left + 0.5) / len(rest)) if len(rest) else 1.0
        caught = int(((copy_f <= feature) | (copy_p <= pixel)).sum())
        if best is None or caught > best[0]:
            best = (caught, feature, pixel)
    _, feature, pixel = best
    top = float(copy_f.max())
    if top < feature:  # every copy is inside already: stop in the middle of the gap, not at its edge
        feature = (top + feature) / 2
    return feature, pixel


def calibrate(
    train_image: Callable[[int], Image.Image] | Sequence[Image.Image],
    train_features: np.ndarray,
    features: Features,
    count: int = 64,
    seed: int = 0,
    train_pixels: np.ndarray | None = None,
    distinct: int = 2000,
    budget: float = FALSE_FLAG_BUDGET,
) -> Thresholds:
    """Thresholds from `count` edited reference faces (the copies) and up to `distinct` reference faces'
    nearest *other* reference face (the distinct faces); see `joint_thresholds`. `train_image(i)` (or a
    list) gives reference face i; only the `count` picked faces are opened."""
    get = train_image if callable(train_image) else train_image.__getitem__
    n = len(train_features)
    rng = random.Random(seed)
    picks = rng.sample(range(n), min(count, n))
    originals = [get(i) for i in picks]
    edited = [light_edit(image, rng) for image in originals]
    if train_pixels is None:
        train_pixels = pixel_vectors([get(i) for i in range(n)])
    copy_f = np.diag(cosine_distances(features(edited), train_features[picks]))
    copy_p = np.diag(rms_distances(pixel_vectors(edited), pixel_vectors(originals)))
    others = np.array(sorted(rng.sample(range(n), min(distinct, n))))
    distinct_f = _nearest_other(cosine_distances, train_features, others)
    distinct_p = _nearest_other(rms_distances, train_pixels, others)
    feature, pixel = joint_thresholds(copy_f, copy_p, distinct_f, distinct_p, budget)
    caught = ((copy_f <= feature) | (copy_p <= pixel)).mean()
    flagged = ((distinct_f <= feature) | (distinct_p <= pixel)).mean()
    return Thresholds(feature, pixel, len(picks), float(caught), float(flagged), len(others), budget)


def _nearest_other(distances, vectors: np.ndarray, rows: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each of `rows`, its distance to the nearest other vector (chunked: the reference may be large)."""
    out = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        d = distances(vectors[part], vectors)
        d[np.arange(len(part)), part] = np.inf  # a face is not its own distinct neighbour
        out.append(d.min(1))
    return np.concatenate(out)


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
    chunk: int = 256,
) -> Audit:
    """Nearest training face of every image in both spaces, and which are near-copies."""
    pixels = pixel_vectors(images) if len(images) else np.zeros((0, train_pixels.shape[1]), np.float32)
    parts = []
    for start in range(0, len(images), chunk):
        fd = cosine_distances(image_features[start : start + chunk], train_features)
        pd = rms_distances(pixels[start : start + chunk], train_pixels)
        fi, pi = fd.argmin(1), pd.argmin(1)
        rows = np.arange(len(fi))
        parts.append((fi, fd[rows, fi], pi, pd[rows, pi]))
    fi, fdist, pi, pdist = (np.concatenate([p[k] for p in parts]) for k in range(4))
    copies = (fdist <= thresholds.feature) | (pdist <= thresholds.pixel)
    return Audit(fi, fdist, pi, pdist, copies)


def closest_pairs(
    images: Sequence[Image.Image],
    train_images: Sequence[Image.Image] | Callable[[int], Image.Image],
    result: Audit,
    count: int = 8,
    side: int = 128,
) -> Image.Image:
    """Top row: the `count` generated faces closest to a training face (feature space); below: that face."""
    get = train_images if callable(train_images) else train_images.__getitem__
    order = np.argsort(result.feature_distance)[:count]
    label = 14
    sheet = Image.new("RGB", (side * max(1, len(order)), 2 * side + label), "white")
    draw = ImageDraw.Draw(sheet)
    for col, i in enumerate(order):
        sheet.paste(images[i].convert("RGB").resize((side, side)), (col * side, 0))
        sheet.paste(get(int(result.feature_index[i])).convert("RGB").resize((side, side)), (col * side, side))
        mark = "COPY " if result.copies[i] else ""
        draw.text((col * side + 3, 2 * side + 1), f"{mark}cos {result.feature_distance[i]:.3f}", fill="black")
    return sheet
