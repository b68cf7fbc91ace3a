"""The embedded default model: loads offline from the package and makes 128-px images on a CPU."""

from __future__ import annotations

import numpy as np
import pytest

from facesmith.models.default_model import DEFAULT_MODEL_DIR, default_model_files


@pytest.fixture(scope="module")
def default_generator():
    from facesmith.generate import FaceGenerator

    return FaceGenerator.load(None)


def test_shards_are_small_enough_for_the_repository():
    files = default_model_files()
    assert files, f"no UNet shards in {DEFAULT_MODEL_DIR}"
    assert all(f.stat().st_size < 16 * 2**20 for f in files)
    assert sum(f.stat().st_size for f in files) <= 80e6


def test_generates_distinct_faces_for_distinct_seeds(default_generator):
    images = default_generator.generate("a photo of a smiling woman", steps=4, seed=7, count=2)
    assert [im.size for im in images] == [(128, 128), (128, 128)]
    a, b = (np.asarray(im, dtype=np.float32) for im in images)
    assert a.std() > 10, "a flat image is not a face"
    assert np.abs(a - b).mean() > 5, "different seeds gave the same image"


def test_prompt_changes_the_image(default_generator):
    man = default_generator.generate("a photo of an old man with a beard", steps=4, seed=1)[0]
    woman = default_generator.generate("a photo of a young woman with blond hair", steps=4, seed=1)[0]
    diff = np.abs(np.asarray(man, dtype=np.float32) - np.asarray(woman, dtype=np.float32)).mean()
    assert diff > 5, "the text encoder does not reach the UNet"


def test_prompt_is_encoded_with_its_attention_mask(default_generator):
    # Training encoded captions with the mask; without it padding tokens change every state.
    assert default_generator.pipe.text_encoder.config.use_attention_mask
    assert default_generator.pipe.tokenizer.model_max_length == 77


def test_a_face_detector_finds_faces_in_its_images(default_generator):
    # The CI check: the shipped model makes faces, as an independent detector (MTCNN) sees
    # them. With the default sampler (Euler a) at 10 steps this checkpoint gave 8 of 8 on seeds 0-7.
    from facesmith.data.faces import detect_faces

    images = default_generator.generate("a photo of a smiling woman", steps=10, seed=0, count=4)
    found = [len(detect_faces(image)) for image in images]
    assert sum(n == 1 for n in found) >= 3, f"faces found per image: {found}"


def test_runs_with_its_own_sampler_and_guidance_unless_told(default_generator):
    from facesmith.config import GenerateConfig
    from facesmith.models.default_model import DEFAULT_MODEL_CFG

    used = default_generator.run(GenerateConfig(prompt="a face", steps=2, seed=0)).config
    assert (used.sampler, used.cfg) == ("Euler a", DEFAULT_MODEL_CFG)
    told = default_generator.run(
        GenerateConfig(prompt="a face", steps=2, seed=0, cfg=7.5, sampler="DDIM")
    ).config
    assert (told.sampler, told.cfg) == ("DDIM", 7.5)
