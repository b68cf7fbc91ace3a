"""Attribute editing: the caption carries the change, only the face moves, the aligned crop warps back
onto the photo where it came from, and a photo without a face (or a bad edit) is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facesmith.cli import app
from facesmith.data.align import align_face, face_quad
from facesmith.data.faces import detect_faces
from facesmith.edit import EditConfig, edit_face, paste_back
from facesmith.errors import FacesmithError
from factory import one_line_error

runner = CliRunner()


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def portrait(shared_data):
    """CelebA 000001 on a wider grey canvas, so there is photo away from the face to keep."""
    face = Image.open(shared_data / "celeba" / "images" / "000001.jpg").convert("RGB").resize((178, 218))
    canvas = Image.new("RGB", (320, 260), (90, 120, 150))
    canvas.paste(face, (70, 20))
    return canvas


def test_the_aligned_crop_warps_back_where_it_came_from(portrait):
    (face,) = detect_faces(portrait)
    crop = align_face(portrait, face.landmarks, 128)
    back = paste_back(portrait, crop, face_quad(face.landmarks), None)
    eyes = np.array(face.landmarks[:2]).mean(axis=0).astype(int)

    def error(dx: int) -> float:
        ys, xs = slice(eyes[1] - 20, eyes[1] + 20), slice(eyes[0] - 30, eyes[0] + 30)
        moved = slice(xs.start + dx, xs.stop + dx)
        return float(np.abs(pixels(back)[ys, moved] - pixels(portrait)[ys, xs]).mean())

    # what is left is the crop's resampling blur (128 px of a 156-px square), not a shift
    assert error(0) < 10 and error(0) < error(2) and error(0) < error(-2)


def test_an_edit_writes_the_change_into_the_caption_and_keeps_the_rest(sd15, portrait):
    result = edit_face(sd15, portrait, EditConfig(photo="p", add=["eyeglasses"], steps=4, seed=1))
    assert any(word in result.caption for word in ("glasses", "spectacles", "eyeglasses"))
    assert result.strength == 0.8 and result.image.size == portrait.size  # edit.EDITS's measured strength
    moved = np.abs(pixels(result.image) - pixels(portrait)).max(axis=-1) > 0
    (face,) = detect_faces(portrait)
    x0, y0, x1, y1 = (int(v) for v in face.box)
    assert moved[y0:y1, x0:x1].mean() > 0.3  # the face was redrawn
    assert not moved[:, :40].any() and not moved[:, 290:].any()  # the photo away from it was not
    senior = edit_face(sd15, portrait, EditConfig(photo="p", set=["age=senior"], steps=4, strength=0.5))
    assert any(word in senior.caption for word in ("senior", "elderly", "old", "seventy", "70"))


def test_cli_edit_writes_the_photo_the_face_pair_and_its_toml(sd15_folder, portrait, tmp_path):
    portrait.save(tmp_path / "me.png")
    result = runner.invoke(app, ["edit", str(tmp_path / "me.png"), "--add", "smiling", "--model",
                                 str(sd15_folder), "--steps", "4", "-o", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 0, result.output
    edited = Image.open(tmp_path / "out" / "me-edited.png")
    assert edited.size == portrait.size and "Denoising strength: 0.8" in edited.text["parameters"]
    assert Image.open(tmp_path / "out" / "me-face-before-after.png").size == (128, 64)
    assert EditConfig.load(tmp_path / "out" / "edit.toml").add == ["smiling"]


def test_a_photo_without_a_face_is_a_one_line_error_and_writes_nothing(sd15_folder, tmp_path):
    Image.new("RGB", (96, 96), (128, 128, 128)).save(tmp_path / "wall.png")
    result = runner.invoke(app, ["edit", str(tmp_path / "wall.png"), "--add", "smiling", "--model",
                                 str(sd15_folder), "-o", str(tmp_path / "out")])  # fmt: skip
    one_line_error(result, "no face was found in")
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({}, "nothing to change"),
        ({"add": ["wings"]}, "'wings' is unknown"),
        ({"set": ["age=ancient"]}, "--set 'age=ancient' is unknown"),
        ({"add": ["smiling"], "strength": 0}, "--strength 0 is outside"),
    ],
)
def test_bad_edits_name_what_to_fix(settings, fragment):
    with pytest.raises(FacesmithError, match=fragment):
        EditConfig(photo="p.png", **settings).validate()


def test_cli_names_a_photo_that_is_not_an_image(tmp_path):
    (tmp_path / "note.png").write_text("not a picture")
    one_line_error(runner.invoke(app, ["edit", str(tmp_path / "note.png"), "--add", "smiling"]), "PHOTO")
