"""MTCNN detection: faces found where they are, none where there is no face."""

from __future__ import annotations

import numpy as np
from PIL import Image

from facesmith.data.faces import DetectedFace, detect_faces, main_face, nms


def test_no_face_in_flat_or_noise_images():
    assert detect_faces(Image.new("RGB", (160, 160), (128, 128, 128))) == []
    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    assert detect_faces(Image.fromarray(noise)) == []


def test_celeba_landmarks_sit_on_the_celeba_alignment(shared_data):
    # CelebA's aligned crops put the eyes near (69, 111) and (108, 111) of 178x218; the shared copy is half size.
    image = Image.open(shared_data / "celeba" / "images" / "000001.jpg")
    faces = detect_faces(image)
    assert len(faces) == 1 and faces[0].score > 0.9
    (lx, ly), (rx, ry), nose, mouth_l, mouth_r = faces[0].landmarks
    assert abs(lx - 34.5) < 4 and abs(rx - 54) < 4 and abs(ly - 55.5) < 4 and abs(ry - 55.5) < 4
    assert ly < nose[1] < mouth_l[1] and mouth_l[0] < mouth_r[0]
    x0, y0, x1, y1 = faces[0].box
    assert x0 < lx < rx < x1 and y0 < ly < mouth_l[1] < y1


def test_detection_survives_rotation_and_finds_both_faces(shared_data):
    face = Image.open(shared_data / "utkface" / "images" / "100_0_0_20170112215240346.jpg.chip.jpg")
    pair = Image.new("RGB", (420, 220), (20, 20, 20))
    pair.paste(face, (5, 10))
    pair.paste(face.resize((120, 120)), (280, 40))
    faces = detect_faces(pair)
    assert len(faces) == 2
    assert main_face(faces, pair.size).box[0] < 100  # the larger face wins
    rotated = face.rotate(20, expand=True, fillcolor=(0, 0, 0))
    assert len(detect_faces(rotated)) == 1


def test_nms_keeps_best_of_overlapping_boxes():
    import torch

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    keep = nms(boxes, torch.tensor([0.5, 0.9, 0.7]), 0.5)
    assert keep.tolist() == [1, 2]
    inner = torch.tensor([[0, 0, 100, 100], [10, 10, 30, 30]], dtype=torch.float32)
    assert nms(inner, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(inner, torch.tensor([0.9, 0.8]), 0.5, mode="min").tolist() == [0]


def test_main_face_of_nothing_is_none():
    assert main_face([], (10, 10)) is None
    small = DetectedFace((0, 0, 10, 10), 0.99, ((0, 0),) * 5)
    big = DetectedFace((0, 0, 50, 50), 0.9, ((0, 0),) * 5)
    assert main_face([small, big], (100, 100)) is big


def test_a_large_image_is_searched_small_and_answered_in_its_own_pixels(shared_data):
    face = Image.open(shared_data / "utkface" / "images" / "100_0_0_20170112215240346.jpg.chip.jpg")
    big = Image.new("RGB", (1600, 1200), (20, 20, 20))
    big.paste(face.resize((600, 600)), (700, 300))
    full = detect_faces(big)
    small = detect_faces(big, max_pixels=120_000)  # searched at 1/4 (400x300)
    assert len(full) == len(small) == 1
    points, reference = np.array(small[0].landmarks), np.array(full[0].landmarks)
    assert np.abs(points - reference).max() < 20  # of a 240-px eye distance: detection noise, not a shift
    assert np.abs(points[:2] - reference[:2]).max() < 8  # the eyes, which set the alignment
    assert np.allclose(small[0].box, full[0].box, atol=25) and small[0].box[0] > 650
    assert detect_faces(big, max_pixels=10**9) == full  # under the limit nothing changes
