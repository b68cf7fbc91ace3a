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
    assert settings == {
        "config": settings["config"],
        "model_name": "sd15",
        "model_hash": "0123456789",
        "loras": [],
    }
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


# ----------------------------------------------------------------------------------------------------------
# The CLI's PNGs: names and hashes, not paths; `generate --from` still reproduces them.


def _run(args, cwd=None):
    import os

    from typer.testing import CliRunner

    from facesmith.cli import app

    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(app, args)
    finally:
        os.chdir(here)


def _pixels(path):
    import numpy as np

    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def made_with_a_lora(sd15_folder, tmp_path_factory):
    """An image made by `facesmith generate --model FOLDER --lora FILE:0.7`, and the LoRA file."""
    from safetensors.torch import save_file

    import factory

    folder = tmp_path_factory.mktemp("from-png")
    lora = folder / "face_style.safetensors"
    save_file(factory.kohya_lora(factory.tiny_sd15(), scale=2.0), lora)
    fast = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "--engine", "eager"]
    result = _run(["generate", "a face", "--model", str(sd15_folder), "--lora", f"{lora}:0.7", *fast,
                   "-o", str(folder / "out")])  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder / "out" / "00001-5.png", lora


def test_cli_pngs_record_names_and_hashes_not_paths(made_with_a_lora, sd15_folder):
    import hashlib
    import json

    image, lora = made_with_a_lora
    chunks = Image.open(image).text
    for text in chunks.values():
        for path in (str(image.parent), str(sd15_folder), str(lora.parent), str(lora.parent.parent)):
            assert path not in text
    settings = json.loads(chunks["facesmith"])
    data = lora.read_bytes()
    tensors = data[8 + int.from_bytes(data[:8], "little") :]  # A1111's AutoV3: the bytes after the header
    short = hashlib.sha256(tensors).hexdigest()[:12]
    assert settings["loras"] == [{"name": "face_style", "hash": short, "weight": 0.7}]
    assert f'Lora hashes: "face_style: {short}"' in chunks["parameters"]  # quoted as A1111 does
    assert settings["config"]["model"] == sd15_folder.name and "out_dir" not in settings["config"]
    assert settings["config"]["loras"] == ["face_style.safetensors:0.7"]


def test_from_reproduces_with_the_model_and_lora_given_again_or_found_by_name(
    made_with_a_lora, sd15_folder, tmp_path
):
    import factory

    image, lora = made_with_a_lora
    again = _run(["generate", "--from", str(image), "--model", str(sd15_folder), "--lora", f"{lora}:0.7",
                  "-o", str(tmp_path / "again")])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert (_pixels(tmp_path / "again" / "00001-5.png") == _pixels(image)).all()
    # elsewhere, without --model: one line naming the recorded model
    factory.one_line_error(_run(["generate", "--from", str(image)], cwd=tmp_path), "model tiny-sd15")
    # in a folder that holds the model and LoRA under the recorded names, --from finds them
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / sd15_folder.name).symlink_to(sd15_folder)
    (tmp_path / "models" / lora.name).symlink_to(lora)
    found = _run(["generate", "--from", str(image), "-o", str(tmp_path / "found")], cwd=tmp_path / "models")
    assert found.exit_code == 0, found.output
    assert (_pixels(tmp_path / "found" / "00001-5.png") == _pixels(image)).all()
