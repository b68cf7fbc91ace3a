"""Face-identity embedding: dlib's 128-d face ResNet, the memorization audit's third space.

Owns `identity_vectors(images)`: per image, the face rectangle (facesmith's MTCNN box of the main face
when one is found, else the whole image: evaluate's real faces are aligned crops), dlib's 5-point shape
predictor on that rectangle, the 150 x 150 chip it aligns (`dlib.get_face_chip`, padding 0.25, as
`compute_face_descriptor` does), and the ResNet's descriptor of the chip. Two photos of one person lie
closer than `SAME_PERSON` = 0.6 (Euclidean) by dlib's own rule (99.38 % on LFW, dlib's
`dnn_face_recognition_ex.cpp`); how the audit uses the distance is `memorization.py`'s.

Why own code: `face_recognition` (the package that ships these weights) embeds one photo at a time with
dlib's HOG detector and leaves us no way to give it MTCNN's box, and no maintained library exposes this
model as a batch embedding over our detector. This file is the ~60 lines we need.

Licences: the ResNet (`dlib_face_recognition_resnet_model_v1.dat`) and the 5-point predictor
(`shape_predictor_5_face_landmarks.dat`) were released into the public domain by Davis King (CC0 1.0,
dlib-models); `face-recognition-models` 0.3.0 ships them under CC0 1.0, and dlib itself (`dlib-bin`) is
Boost Software License 1.0. Only those two files are used: the same package's 68-point predictor was
trained on iBUG 300-W, whose terms exclude commercial use, and is never opened.

Optional: `pip install 'facesmith[identity]'` (4 MB of dlib, 126 MB of model files of which the two used
are 31 MB). Without it `available()` is False and the audit runs on its two other spaces. Nothing is
downloaded. The model files are found with `importlib.util.find_spec`, not the package's own
`*_location()` functions: its `__init__` imports `pkg_resources`, which setuptools >= 81 no longer has.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SPACE = "dlib ResNet v1 128-d (5-point aligned)"
SAME_PERSON = 0.6  # dlib's threshold: two photos of one person are closer than this
NOT_INSTALLED = "identity space: not installed (pip install 'facesmith[identity]')"
RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
FIVE_POINTS = "shape_predictor_5_face_landmarks.dat"
CHIP, PADDING = 150, 0.25  # dlib's chip: what the ResNet was trained on


def _models_dir() -> Path | None:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def available() -> bool:
    """dlib and both model files are installed."""
    folder = _models_dir()
    return (
        importlib.util.find_spec("dlib") is not None
        and folder is not None
        and all((folder / name).is_file() for name in (RECOGNITION, FIVE_POINTS))
    )


@functools.cache
def _models():
    import dlib

    folder = _models_dir()
    return dlib.shape_predictor(str(folder / FIVE_POINTS)), dlib.face_recognition_model_v1(
        str(folder / RECOGNITION)
    )


def _rectangle(image: Image.Image, box: tuple[float, float, float, float] | None):
    import dlib

    w, h = image.size
    if box is None:
        return dlib.rectangle(0, 0, w - 1, h - 1)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return dlib.rectangle(max(0, x0), max(0, y0), min(w - 1, x1), min(h - 1, y1))


def identity_vectors(
    images: Sequence[Image.Image], faces: Sequence | None = None, batch: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 128) float32 descriptors and (N,) bool: whether MTCNN found a face (else the whole image was
    the face rectangle). `faces`: each image's `DetectedFace` or None, when the caller detected them
    already (evaluate's face rate); otherwise MTCNN runs here."""
    from facesmith.data.faces import detect_faces, main_face

    if faces is None:
        faces = [main_face(detect_faces(im), im.size) for im in images]
    predictor, recognizer = _models()
    import dlib

    out = np.zeros((len(images), 128), np.float32)
    for start in range(0, len(images), batch):
        chips = []
        for image, face in zip(images[start : start + batch], faces[start : start + batch], strict=True):
            pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"), np.uint8))
            shape = predictor(pixels, _rectangle(image, face.box if face is not None else None))
            chips.append(dlib.get_face_chip(pixels, shape, CHIP, PADDING))
        if chips:
            out[start : start + len(chips)] = np.asarray(recognizer.compute_face_descriptor(chips))
    return out, np.array([face is not None for face in faces], bool)


def euclidean_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)  # float32 cancels away distances near 0 (copies)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0))
