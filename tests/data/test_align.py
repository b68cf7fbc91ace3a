"""FFHQ-style alignment: the crop is upright, square, framed on the eyes and mouth, and sized."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from facesmith.data.align import align_face, center_crop, face_quad, outside_fraction, quad_side

# A level face: eyes 40 px apart at y=100, mouth 40 px below them.
LEVEL = ((80.0, 100.0), (120.0, 100.0), (100.0, 120.0), (85.0, 140.0), (115.0, 140.0))


def rotate(points, degrees, centre=(100.0, 120.0)):
    a = math.radians(degrees)
    cx, cy = centre
    return tuple(
        (
            cx + (x - cx) * math.cos(a) - (y - cy) * math.sin(a),
            cy + (x - cx) * math.sin(a) + (y - cy) * math.cos(a),
        )
        for x, y in points
    )


def test_quad_follows_ffhq_framing():
    quad = face_quad(LEVEL)
    # half-side = max(2 x 40 eye distance, 1.8 x 40 eye-to-mouth) = 80; centre 4 px below the eyes.
    assert math.isclose(quad_side(quad), 160.0)
    assert np.allclose(quad.mean(axis=0), (100.0, 104.0))
    assert np.allclose(quad[0], (20.0, 24.0))  # top-left; the square is axis-aligned for level eyes
    assert math.isclose(quad_side(face_quad(LEVEL, margin=0.5)), 80.0)


def test_tilted_face_comes_out_level():
    # Mark the eyes in a picture, tilt picture and landmarks by 25 degrees, align: the marks are level again.
    image = Image.new("RGB", (200, 240), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    for x, y in LEVEL[:2]:
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(255, 0, 0))
    tilted = image.rotate(-25, center=(100, 120), resample=Image.Resampling.BICUBIC)
    crop = np.asarray(align_face(tilted, rotate(LEVEL, 25), size=64))
    red = (crop[..., 0] > 180) & (crop[..., 1] < 80)
    ys, xs = np.nonzero(red)
    left, right = ys[xs < 32].mean(), ys[xs >= 32].mean()
    assert abs(left - right) < 1.5
    assert crop.shape == (64, 64, 3)


def test_padding_is_filled_and_measured():
    image = Image.new("RGB", (100, 100), (200, 50, 50))
    points = tuple((x - 50, y - 50) for x, y in LEVEL)  # face near the top-left corner
    quad = face_quad(points)
    assert 0.4 < outside_fraction(quad, 100, 100) < 0.9
    assert outside_fraction(face_quad(LEVEL), 400, 400) == 0.0
    crop = np.asarray(align_face(image, points, 32))
    assert np.abs(crop.astype(int) - (200, 50, 50)).max() < 30  # reflected photo, not black


def test_center_crop_is_square_and_centred():
    image = Image.new("RGB", (89, 109), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 10, 88, 98), fill=(255, 255, 255))
    crop = np.asarray(center_crop(image, 32))
    assert crop.shape == (32, 32, 3) and crop.min() > 200


def test_aligned_celeba_images_get_the_default_model_s_training_crop():
    """`prepare --aligned` took a centred 89-px square of CelebA's 89x109 where the default model was
    trained on the 80-px box (4, 18, 84, 98) (issue 16.11): one crop, defined once."""
    from facesmith.data.align import aligned_box

    assert aligned_box(89, 109) == (4, 18, 84, 98)
    assert aligned_box(178, 218) == (8, 36, 168, 196)  # the original align&cropped size, same framing
    assert aligned_box(200, 200) == (0, 0, 200, 200)  # UTKFace chips: the whole square
    assert aligned_box(120, 80) == (20, 0, 100, 80)
