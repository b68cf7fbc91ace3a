"""The face detailer: each found face repainted inside its padded crop, the rest of the image kept to the
pixel, the k largest faces only when asked, no face left alone with a warning, and the pass recorded in
ADetailer's PNG fields (and read back)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from facesmith.config import GenerateConfig
from facesmith.detailer import NoFaceDetailedWarning, detail_faces, face_mask, find_faces
from facesmith.errors import FacesmithError
from facesmith.metadata import config_from_parameters, format_parameters

SETTINGS = dict(prompt="a face", steps=4, detail_faces=True, detail_strength=0.75)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def celeba(shared_data, name: str = "000001.jpg", size: int = 128) -> Image.Image:
    photo = Image.open(shared_data / "celeba" / "images" / name).convert("RGB")
    return photo.resize((size, round(size * photo.height / photo.width)), Image.LANCZOS)


def changed(before, after) -> np.ndarray:
    return np.abs(pixels(before) - pixels(after)).max(axis=-1) > 0


def test_a_face_is_repainted_inside_its_crop_and_the_rest_kept(sd15, shared_data):
    photo = celeba(shared_data)
    config = GenerateConfig(**SETTINGS, detail_padding=8)
    (face,) = find_faces(photo)
    (result,) = detail_faces(sd15, [photo], [3], config)
    moved = changed(photo, result)
    mask = np.asarray(face_mask(face, photo.size, config.detail_dilate, config.detail_mask_blur)) > 0
    assert moved[mask].mean() > 0.9  # the face was repainted
    assert not moved[~mask].any()  # and nothing outside its feathered mask changed
    again = detail_faces(sd15, [photo], [3], config)[0]
    assert np.array_equal(pixels(result), pixels(again))  # the face pass takes the image's seed


def test_only_the_k_largest_faces_are_detailed(sd15, shared_data):
    small, large = celeba(shared_data, "000002.jpg", 96), celeba(shared_data, "000001.jpg", 144)
    both = Image.new("RGB", (96 + 144, max(small.height, large.height)), "gray")
    both.paste(small, (0, 0))
    both.paste(large, (96, 0))
    assert len(find_faces(both)) == 2
    (one,) = detail_faces(sd15, [both], [1], GenerateConfig(**SETTINGS, detail_max_faces=1))
    moved = changed(both, one)
    assert moved[:, 96:].any() and not moved[:, :96].any()


def test_an_image_without_a_face_is_left_with_a_warning(sd15):
    wall = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    with pytest.warns(NoFaceDetailedWarning, match="found no face in the image of seed 5"):
        (kept,) = detail_faces(sd15, [wall], [5], GenerateConfig(**SETTINGS))
    assert np.array_equal(pixels(kept), pixels(wall))


def test_generate_with_detail_faces_runs_the_pass_after_the_image(sd15, shared_data, tmp_path):
    photo = celeba(shared_data, size=64).crop((0, 0, 64, 64))
    path = tmp_path / "photo.png"
    photo.save(path)
    # Inpainting a corner keeps the face findable (the tiny model's random VAE leaves no face of its own).
    corner = Image.new("L", (64, 64))
    corner.paste(255, (0, 0, 12, 12))
    corner.save(tmp_path / "corner.png")
    light = dict(init_image=str(path), mask=str(tmp_path / "corner.png"), mask_blur=0, steps=4, seed=2)
    plain = sd15.generate("a face", **light)[0]
    detailed = sd15.generate("a face", **light, detail_faces=True, detail_strength=0.75)[0]
    assert changed(plain, detailed).mean() > 0.1


def test_the_pass_is_recorded_in_adetailer_fields_and_read_back():
    config = GenerateConfig(
        prompt="a face", seed=1, cfg=7.5, sampler="DDIM", width=64, height=64, detail_faces=True,
        detail_prompt="a smiling face, detailed", detail_strength=0.35, detail_max_faces=2, detail_size=128,
    )  # fmt: skip
    text = format_parameters(config, model_name="tiny", model_hash="abc")
    assert "ADetailer model: mtcnn" in text and "ADetailer denoising strength: 0.35" in text
    assert 'ADetailer prompt: "a smiling face, detailed"' in text and "ADetailer inpaint width: 128" in text
    back = config_from_parameters(text)
    assert back.detail_faces and back.detail_prompt == "a smiling face, detailed"
    assert (back.detail_strength, back.detail_max_faces, back.detail_size) == (0.35, 2, 128)
    assert "ADetailer" not in format_parameters(
        GenerateConfig(prompt="a", seed=1, cfg=7.5, sampler="DDIM", width=64, height=64),
        model_name="tiny", model_hash=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"detail_strength": 0}, "--detail-strength 0 is outside"),
        ({"detail_confidence": 1.5}, "--detail-confidence 1.5"),
        ({"detail_size": 100}, "--detail-size 100 is not a positive multiple of 8"),
        ({"detail_strength": 0.1, "steps": 4}, "denoises no step"),
    ],
)
def test_bad_detailer_settings_name_the_option(settings, fragment):
    with pytest.raises(FacesmithError, match=fragment):
        GenerateConfig(**{**SETTINGS, **settings}).validate()


def test_cli_detail_faces_records_the_pass_and_from_repeats_it(sd15_folder, shared_data, tmp_path):
    from typer.testing import CliRunner

    from facesmith.cli import app
    from factory import one_line_error

    runner = CliRunner()
    celeba(shared_data, size=64).crop((0, 0, 64, 64)).save(tmp_path / "photo.png")
    corner = Image.new("L", (64, 64))
    corner.paste(255, (0, 0, 12, 12))
    corner.save(tmp_path / "corner.png")
    start = ["generate", "a face", "--model", str(sd15_folder), "--init", str(tmp_path / "photo.png"),
             "--mask", str(tmp_path / "corner.png"), "--steps", "4", "--seed", "3"]  # fmt: skip
    result = runner.invoke(app, [*start, "--detail-faces", "--detail-strength", "0.75", "--detail-prompt",
                                 "a detailed face", "-o", str(tmp_path / "a")])  # fmt: skip
    assert result.exit_code == 0, result.output
    (made,) = (tmp_path / "a").glob("*.png")
    text = Image.open(made).text["parameters"]
    assert "ADetailer model: mtcnn" in text and "ADetailer denoising strength: 0.75" in text
    assert 'ADetailer prompt: "a detailed face"' in text
    again = runner.invoke(app, ["generate", "--from", str(made), "--model", str(sd15_folder), "--init",
                                str(tmp_path / "photo.png"), "--mask", str(tmp_path / "corner.png"),
                                "-o", str(tmp_path / "b")])  # fmt: skip
    assert again.exit_code == 0, again.output
    (copy,) = (tmp_path / "b").glob("*.png")
    assert np.array_equal(pixels(Image.open(copy)), pixels(Image.open(made)))
    bad = runner.invoke(app, [*start, "--detail-faces", "--detail-strength", "2", "-o", str(tmp_path / "c")])
    one_line_error(bad, "--detail-strength 2")


# ----------------------------------------------------------------------------------------------------------
# The face pass's own LoRA


@pytest.fixture(scope="module")
def plain_generator(sd15_folder):
    """A generator of its own: the detail LoRA tests load adapters, which the shared `sd15` must not carry.
    Its engine is the default (ONNX on this CPU where onnxruntime is installed), as `facesmith generate`'s."""
    import facesmith

    return facesmith.load(sd15_folder)


def adapters(generator) -> list[str]:
    return sorted({name for names in generator.pipe.get_list_adapters().values() for name in names})


def test_the_detail_lora_repaints_only_the_face_and_is_removed_after(
    plain_generator, kohya_file, shared_data
):
    photo = celeba(shared_data)
    config = GenerateConfig(**SETTINGS, detail_padding=8)
    (face,) = find_faces(photo)
    (plain,) = detail_faces(plain_generator, [photo], [3], config)
    lora = dataclasses.replace(config, detail_lora=f"{kohya_file}:1")
    (with_lora,) = detail_faces(plain_generator, [photo], [3], lora)
    mask = np.asarray(face_mask(face, photo.size, config.detail_dilate, config.detail_mask_blur)) > 0
    differ = changed(plain, with_lora)
    assert differ[mask].mean() > 0.5  # the LoRA changed the face pass
    assert not differ[~mask].any()  # and nothing the face mask leaves out
    assert adapters(plain_generator) == []  # the file it loaded is gone again
    (again,) = detail_faces(plain_generator, [photo], [3], config)
    assert np.array_equal(pixels(again), pixels(plain))  # and the passes after it run as before
    assert plain_generator.runner is not plain_generator.pipe or plain_generator.engine == "eager"


def test_without_a_face_the_detail_lora_leaves_the_main_pass_to_the_pixel(plain_generator, kohya_file):
    wall = dict(prompt="a face", steps=4, seed=2, detail_faces=True, detail_strength=0.75)
    with pytest.warns(NoFaceDetailedWarning):
        without = plain_generator.generate(**wall)[0]
    with pytest.warns(NoFaceDetailedWarning):
        with_lora = plain_generator.generate(**wall, detail_lora=f"{kohya_file}:1")[0]
    assert np.array_equal(pixels(without), pixels(with_lora))
    assert adapters(plain_generator) == []


def test_a_server_lora_named_in_ad_prompt_runs_in_the_face_pass_only(sd15_folder, shared_data, tmp_path):
    """The server's LoRAs are peft adapters already: the face pass takes one by its name, and the job's
    own LoRA weights are as they were after it."""
    import json
    import warnings

    import facesmith
    import factory
    from facesmith.config import in_memory
    from facesmith.serve.adetailer import detailer_settings
    from facesmith.serve.jobs import JobQueue

    paths = factory.same_named_loras(tmp_path)
    generator = facesmith.load(sd15_folder, loras=[f"{p}:1" for p in paths], engine="eager", fuse_loras=False)
    queue = JobQueue(generator)
    photo = celeba(shared_data, size=64).crop((0, 0, 64, 64))

    def run(ad_prompt: str, weights: dict) -> list:
        args = [True, {"ad_model": "face_yolov8n.pt", "ad_prompt": ad_prompt, "ad_denoising_strength": 0.75}]
        settings = detailer_settings({"ADetailer": {"args": args}}, 128, 60, queue.loras)
        corner = Image.new("L", (64, 64))
        corner.paste(255, (0, 0, 12, 12))
        config = GenerateConfig(prompt="a face", steps=4, seed=2, width=64, height=64, init_image=in_memory("photo"),
                                mask="corner", mask_blur=0, **settings)  # fmt: skip
        from facesmith.img2img import StartPicture

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return queue.submit(config, weights, given=StartPicture(photo, corner)).future.result(60)

    try:
        [plain] = run("a face", {"runA/lora": 0.5})
        [tagged] = run("<lora:runB/lora:1> a face", {"runA/lora": 0.5})
        [again] = run("a face", {"runA/lora": 0.5})
    finally:
        queue.close()
    assert plain.png != tagged.png and plain.png == again.png
    recorded = tagged.settings["config"]
    assert recorded["detail_lora"] == "runB/lora.safetensors:1" and recorded["detail_prompt"] == "a face"
    assert str(tmp_path) not in json.dumps(tagged.settings)  # the server's path stays on the server


def test_a_detail_lora_that_is_no_file_is_a_one_line_error(sd15_folder, tmp_path):
    from typer.testing import CliRunner

    from facesmith.cli import app
    from factory import one_line_error

    result = CliRunner().invoke(app, ["generate", "a face", "--model", str(sd15_folder), "--detail-faces",
                                      "--detail-lora", str(tmp_path / "face.safetensors:0.8")])  # fmt: skip
    one_line_error(result, "--detail-lora")
    assert "face.safetensors does not exist" in result.output
