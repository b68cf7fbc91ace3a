"""FaceGenerator: seeds, sizes, the 77-token warning, trace, forward process, NaN-guarded decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import facesmith
from facesmith.errors import FacesmithError
from facesmith.generate import PromptTruncatedWarning, truncated_words
from factory import FAST


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_seed_same_image_and_other_seed_other_image(sd15):
    a = sd15.generate("a face", seed=7, **FAST)[0]
    b = sd15.generate("a face", seed=7, **FAST)[0]
    c = sd15.generate("a face", seed=8, **FAST)[0]
    assert a.size == (64, 64)
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 1


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a"])
def test_image_i_of_a_batch_equals_single_image_with_seed_plus_i(sd15, sampler):
    batch = sd15.generate("a face", seed=100, count=3, sampler=sampler, **FAST)
    for i, image in enumerate(batch):
        single = sd15.generate("a face", seed=100 + i, sampler=sampler, **FAST)[0]
        assert np.array_equal(pixels(image), pixels(single))


def test_run_records_the_seeds_and_size_used(sd15):
    from facesmith.config import GenerateConfig

    result = sd15.run(GenerateConfig(prompt="a face", count=2, steps=2))
    assert result.seeds == [result.config.seed, result.config.seed + 1]
    assert (result.config.width, result.config.height) == sd15.native_size == (64, 64)
    assert (result.config.sampler, result.config.cfg) == ("DDIM", 7.5)  # an SD model's own defaults


def test_prompt_over_77_tokens_warns_with_the_cut_words(sd15):
    long_prompt = "a face " * 40 + "with purple eyebrows"
    with pytest.warns(PromptTruncatedWarning, match="purple eyebrows"):
        sd15.generate(long_prompt, seed=1, **FAST)
    assert truncated_words(sd15.pipe.tokenizer, "a short prompt") == ""


def test_empty_prompt_needs_a_negative(sd15):
    with pytest.raises(FacesmithError, match="empty"):
        sd15.generate("", **FAST)
    assert len(sd15.generate("", negative="blurry", seed=1, **FAST)) == 1


def test_load_time_settings_are_refused_by_generate(sd15):
    with pytest.raises(FacesmithError, match="facesmith.load"):
        sd15.generate("a face", model="elsewhere", **FAST)
    with pytest.raises(FacesmithError, match="unknown setting"):
        sd15.generate("a face", stepz=3)


@pytest.mark.parametrize("sampler", ["DDIM", "Euler", "Euler a", "DPM++ 2M Karras", "UniPC"])
def test_trace_ends_at_the_final_image(sd15, sampler):
    from facesmith.config import GenerateConfig

    config = GenerateConfig(prompt="a face", seed=3, steps=6, sampler=sampler, trace=True, trace_frames=4)
    result = sd15.run(config)
    frames = result.trace[0]
    assert len(frames) == 4 and all(frame.size == (64, 64) for frame in frames)
    final = pixels(result.images[0])
    # The last step lands (almost) on its own x0 prediction; the first prediction is far from it.
    assert np.abs(pixels(frames[-1]) - final).mean() < 3
    assert np.abs(pixels(frames[0]) - final).mean() > np.abs(pixels(frames[-1]) - final).mean()
    assert "step" not in vars(sd15.pipe.scheduler)  # the recording wrapper is gone
    plain = sd15.generate("a face", seed=3, steps=6, sampler=sampler)[0]
    assert np.array_equal(pixels(plain), final)  # tracing does not change the image


def test_sdxl_generates_and_traces(sdxl_folder):
    from facesmith.config import GenerateConfig

    generator = facesmith.load(sdxl_folder)
    result = generator.run(
        GenerateConfig(prompt="a face", seed=2, steps=3, sampler="Euler a", trace=True, trace_frames=3)
    )
    assert result.images[0].size == (64, 64) and len(result.trace[0]) == 3
    again = generator.generate("a face", seed=2, steps=3, sampler="Euler a")[0]
    assert np.array_equal(pixels(again), pixels(result.images[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [None, "fp16"])
def test_cuda_half_precision_matches_cpu_seeds(sd15_folder, dtype):
    cpu = facesmith.load(sd15_folder, device="cpu").generate("a face", seed=5, **FAST)[0]
    gpu = facesmith.load(sd15_folder, device="cuda", dtype=dtype)
    assert gpu.dtype in (torch.float16, torch.bfloat16)
    image = gpu.generate("a face", seed=5, **FAST)[0]
    # CPU noise makes the seed portable; half precision moves pixels a little, not the picture.
    assert np.abs(pixels(image) - pixels(cpu)).mean() < 8


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, facesmith; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert callable(facesmith.load)


def test_the_python_api_loads_as_quietly_as_the_cli(sd15_folder):
    """`facesmith.load` printed ~39 lines of library warnings and a scheduler-config dump (issue 15.29)."""
    import subprocess
    import sys

    script = f"import facesmith; facesmith.load({str(sd15_folder)!r}).generate('a face', steps=1, seed=0)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stderr.strip() == "", result.stderr
