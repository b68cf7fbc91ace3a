import io

import numpy as np
import pytest
from PIL import Image, ImageOps

import factory
from facesmith.evaluate import identity

needs_dlib = pytest.mark.skipif(not identity.available(), reason=identity.NOT_INSTALLED)
needs_celeba = pytest.mark.skipif(
    factory.shared_data_dir() is None or not (factory.shared_data_dir() / "celeba").is_dir(),
    reason="shared CelebA data is absent",
)


def celeba(count: int, start: int = 0) -> list[Image.Image]:
    files = sorted((factory.shared_data_dir() / "celeba" / "images").iterdir())[start : start + count]
    return [Image.open(p).convert("RGB") for p in files]


def jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def small_crop(image: Image.Image) -> Image.Image:
    w, h = image.size
    return image.crop((4, 5, w - 3, h - 4)).resize((w, h), Image.BICUBIC)


@needs_dlib
def test_descriptor_is_128_floats_and_the_same_every_time():
    faces = [factory.synthetic_face({"Smiling": 1}, seed=s) for s in range(3)]
    first, found = identity.identity_vectors(faces)
    again, _ = identity.identity_vectors(faces, batch=2)  # batching does not change a descriptor
    assert first.shape == (3, 128) and first.dtype == np.float32 and found.shape == (3,)
    np.testing.assert_array_equal(first, again)
    assert np.all(np.isfinite(first)) and np.all(np.linalg.norm(first, axis=1) > 0.1)
    empty, none = identity.identity_vectors([])
    assert empty.shape == (0, 128) and none.shape == (0,)


@needs_dlib
@needs_celeba
def test_an_edited_photo_stays_near_and_other_people_are_farther():
    faces = celeba(6)
    originals, found = identity.identity_vectors(faces)
    assert found.all()  # MTCNN finds every aligned CelebA face; its box is the rectangle
    for edit in (jpeg, ImageOps.mirror, small_crop):
        edited, _ = identity.identity_vectors([edit(face) for face in faces])
        d = identity.euclidean_distances(edited, originals)
        # Each edited photo's nearest face is its original (89 x 109 px faces are small for dlib: a mirrored
        # three-quarter face can lie 0.62 from itself, so not every edit stays inside dlib's 0.6).
        assert (d.argmin(1) == np.arange(len(faces))).all(), edit.__name__
        assert (
            np.median(np.diag(d)) < identity.SAME_PERSON / 2 < np.median(d[~np.eye(len(faces), dtype=bool)])
        )


@needs_dlib
def test_given_boxes_are_used_and_no_face_falls_back_to_the_whole_image():
    from facesmith.data.faces import DetectedFace

    face = factory.synthetic_face({}, seed=3, side=96)
    whole, found = identity.identity_vectors([face], [None])
    corner = DetectedFace((0, 0, 40, 40), 1.0, ())
    boxed, found_boxed = identity.identity_vectors([face], [corner])
    assert not found[0] and found_boxed[0]
    assert identity.euclidean_distances(whole, boxed)[0, 0] > 0.05  # another rectangle, another chip


def test_without_dlib_the_identity_space_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a)
    )
    assert not identity.available()
    assert "pip install 'facesmith[identity]'" in identity.NOT_INSTALLED
