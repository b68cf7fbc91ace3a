"""Face-part masks from MTCNN: each part where the face's landmarks say, and a clear error without a face."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facesmith.data.faces import detect_faces
from facesmith.errors import FacesmithError
from facesmith.masks import FACE_PARTS, face_part_mask


def test_a_photo_without_a_face_is_a_clear_error():
    wall = Image.fromarray(np.full((96, 96, 3), 128, dtype=np.uint8))
    with pytest.raises(FacesmithError, match="no face was found in wall.png for --mask face"):
        face_part_mask(wall, "face", name="wall.png")
    with pytest.raises(FacesmithError, match="not a face part"):
        face_part_mask(wall, "nose")


def test_parts_sit_on_the_landmarks_of_a_real_face(shared_data):
    photo = Image.open(shared_data / "celeba" / "images" / "000001.jpg").convert("RGB")
    (face,) = detect_faces(photo)
    masks = {part: np.asarray(face_part_mask(photo, part)) > 0 for part in FACE_PARTS}
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks

    def on(part, x, y):
        return bool(masks[part][int(y), int(x)])

    assert on("eyes", lx, ly) and on("eyes", rx, ry) and not on("eyes", nx, ny + 0.5 * (mly - ny))
    assert on("mouth", (mlx + mrx) / 2, (mly + mry) / 2) and not on("mouth", lx, ly)
    assert all(on("face", x, y) for x, y in face.landmarks)
    # Hair: around and above the face, never on it; eyes and mouth lie (almost all) inside the face.
    assert not (masks["hair"] & masks["face"]).any()
    assert on("hair", (face.box[0] + face.box[2]) / 2, face.box[1] - 0.3 * face.height)
    assert masks["face"][masks["eyes"]].mean() > 0.9 and masks["face"][masks["mouth"]].mean() > 0.9
    area = {part: mask.mean() for part, mask in masks.items()}
    assert area["face"] > area["mouth"] > 0 and area["face"] > area["eyes"] > 0
