"""PNG metadata: A1111's `parameters` chunk and facesmith's JSON chunk, written and read back."""

from __future__ import annotations

import pytest
from PIL import Image

from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError
from facesmith.metadata import (
    Recipe,
    config_from_parameters,
    config_from_png,
    parse_parameters,
    png_bytes,
    prompt_from_png,
    read_png,
    recipe,
    write_png,
)


class Model:
    """What `recipe` reads of a LoadedModel: its name and short hash."""

    name = "sd15"

    def model_hash(self) -> str:
        return "0123456789"


def test_parameters_follow_a1111_layout():
    config = GenerateConfig(
        prompt="a face", negative="blurry", steps=20, cfg=7.0, sampler="Euler a", width=512, height=768
    )
    text = recipe(config, Model(), seed=42).parameters
    assert text.splitlines() == [
        "a face",
        "Negative prompt: blurry",
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768, Model hash: 0123456789, "
        "Model: sd15, Version: facesmith",
    ]


def test_png_chunks_round_trip(tmp_path):
    config = GenerateConfig(
        prompt="a face", count=4, trace=True, cfg=7.5, sampler="DDIM", width=64, height=64
    )
    chunks = recipe(config, Model(), seed=3)
    path = write_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", chunks)
    parameters, settings = read_png(path)
    assert parameters == chunks.parameters and "Seed: 3, Size: 64x64" in parameters
    assert settings == {"config": settings["config"], "model_name": "sd15", "model_hash": "0123456789"}
    # the recipe of one image: its own seed, count 1, no trace
    assert config_from_png(path) == GenerateConfig(
        prompt="a face", seed=3, count=1, cfg=7.5, sampler="DDIM", width=64, height=64
    )
    assert prompt_from_png(path) == "a face"
    assert path.read_bytes() == png_bytes(Image.new("RGB", (8, 8)), chunks)  # files and server bytes agree


def test_a_png_cannot_switch_on_unpickling_or_pick_the_device(tmp_path):
    config = GenerateConfig(prompt="a face", allow_pickle=True, device="cuda:3", dtype="fp16")
    path = write_png(
        Image.new("RGB", (8, 8)), tmp_path / "x.png", Recipe("a face", {"config": config.to_dict()})
    )
    again = config_from_png(path)
    assert (again.allow_pickle, again.device, again.dtype) == (False, None, "fp16")


def test_a1111_only_pngs_are_read_from_parameters(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(
        "parameters",
        "portrait, smiling\nof a woman\nNegative prompt: ugly, blurry\n"
        'Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 512x640, Lora hashes: "a: 1, b: 2"',
    )
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    config = config_from_png(tmp_path / "a1111.png")
    assert config.prompt == "portrait, smiling\nof a woman" and config.negative == "ugly, blurry"
    assert (config.steps, config.sampler, config.cfg, config.seed) == (28, "DPM++ 2M Karras", 6.5, 1234)
    assert (config.width, config.height) == (512, 640)
    assert prompt_from_png(tmp_path / "a1111.png") == "portrait, smiling\nof a woman"
    assert parse_parameters("just a prompt") == ("just a prompt", "", {})
    assert config_from_parameters("x\nSteps: 3").steps == 3


def test_images_without_metadata_and_non_images_are_user_errors(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(FacesmithError, match="no generation metadata"):
        config_from_png(tmp_path / "plain.png")
    assert prompt_from_png(tmp_path / "plain.png") == ""
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(FacesmithError, match="cannot read image"):
        read_png(tmp_path / "text.png")
    with pytest.raises(FacesmithError, match="does not exist"):
        read_png(tmp_path / "missing.png")


def test_a1111_schedule_type_karras_is_kept():
    """A1111 1.9+ writes the schedule apart; --from kept "DPM++ 2M" and dropped the Karras (issue 15.6)."""
    text = "a face\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64"
    assert config_from_parameters(text).sampler == "DPM++ 2M Karras"
    plain = "a face\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7, Seed: 1"
    assert config_from_parameters(plain).sampler == "DPM++ 2M"
