"""Shared fixtures: tiny models saved once per session, as diffusers folders and single files, and the
shared real face photos (skipped where they are absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import factory  # noqa: E402
from factory import FAST  # noqa: E402,F401  (re-exported for older imports)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Model-hash cache in a temporary folder, never the user's ~/.cache."""
    import os

    os.environ["FACESMITH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def shared_data() -> Path:
    """The shared (non-commercial, never committed) face photos' data folder: celeba/, utkface/."""
    root = factory.shared_data_dir()
    if root is None:
        pytest.skip("shared face data not found (set FACESMITH_SHARED)")
    return root


@pytest.fixture(scope="session")
def sd15_folder(tmp_path_factory) -> Path:
    return factory.save_folder(factory.tiny_sd15(), tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture(scope="session")
def sdxl_folder(tmp_path_factory) -> Path:
    return factory.save_folder(factory.tiny_sdxl(), tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def kohya_file(tmp_path_factory) -> Path:
    """A Kohya-format LoRA for the tiny SD1.5 model."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("lora") / "kohya.safetensors"
    save_file(factory.kohya_lora(factory.tiny_sd15(), seed=1), path)
    return path


@pytest.fixture(scope="session")
def sd15_file(tmp_path_factory) -> Path:
    from facesmith.models.sd_layout import save_original

    path = tmp_path_factory.mktemp("models") / "tiny-sd15.safetensors"
    save_original(factory.tiny_sd15(), path)
    return path


@pytest.fixture(scope="session")
def sd15(sd15_folder):
    """A FaceGenerator on the tiny SD1.5 folder. Tests must not load LoRAs into it."""
    import facesmith

    return facesmith.load(sd15_folder)


@pytest.fixture(scope="session")
def face_dataset(tmp_path_factory) -> Path:
    """48 synthetic labelled faces in a dataset folder, a quarter held out."""
    return factory.synthetic_face_dataset(tmp_path_factory.mktemp("faces") / "dataset", count=48)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, face_dataset) -> Path:
    """The attribute classifier's heads trained briefly on `face_dataset` (evaluate and attributes tests)."""
    return factory.tiny_attribute_classifier(
        tmp_path_factory.mktemp("classifier") / "attributes", face_dataset
    )
