"""img2img and inpainting: strength, seeds, A1111's resize modes, masks that keep unmasked pixels, every
model source (SD1.5 folder, single file, LoRA, SDXL, the default model), the CLI and bad input."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

import facesmith
from facesmith.cli import app
from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError
from facesmith.img2img import (
    MaskResizedWarning,
    fill_masked,
    image_pipeline,
    prepare_start,
    read_mask,
    resize_image,
)
from factory import one_line_error

runner = CliRunner()


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def gradient(size: int = 64) -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    return Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], axis=-1))


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "init.png"
    gradient().save(path)
    return path


@pytest.fixture
def square_mask(tmp_path):
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:40, 20:44] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    return path


def img2img(generator, photo, **settings):
    return generator.generate("a face", init_image=str(photo), seed=settings.pop("seed", 1), **settings)


# ----------------------------------------------------------------------------------------------------------


def test_strength_decides_how_far_the_image_moves_and_seeds_repeat(sd15, photo):
    start = pixels(gradient())
    near = img2img(sd15, photo, strength=0.25, steps=8)[0]
    far = img2img(sd15, photo, strength=1.0, steps=8)[0]
    assert np.abs(pixels(near) - start).mean() < np.abs(pixels(far) - start).mean()
    batch = img2img(sd15, photo, strength=0.5, steps=4, seed=20, count=2)
    for i, image in enumerate(batch):
        alone = img2img(sd15, photo, strength=0.5, steps=4, seed=20 + i)[0]
        assert np.array_equal(pixels(image), pixels(alone))
    assert not np.array_equal(pixels(batch[0]), pixels(batch[1]))


def test_the_img2img_pipeline_shares_the_loaded_modules(sd15):
    runner_ = image_pipeline(sd15.runner)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(runner_, name) is getattr(sd15.runner, name)


def test_a1111_resize_modes():
    # 128x64: a red quarter, a green half, a blue quarter, left to right.
    wide = np.zeros((64, 128, 3), dtype=np.uint8)
    wide[:, :32, 0] = wide[:, 32:96, 1] = wide[:, 96:, 2] = 255
    image = Image.fromarray(wide)
    stretched = pixels(resize_image(image, 64, 64, "just resize"))
    assert stretched[32, 4, 0] > 200 and stretched[32, 32, 1] > 200 and stretched[32, 60, 2] > 200
    cropped = pixels(resize_image(image, 64, 64, "crop and resize"))
    assert (cropped[..., 1] > 200).all()  # only the green middle is left
    filled = pixels(resize_image(image, 64, 64, "resize and fill"))
    # The whole image, 64x32 in the middle; the bars above and below repeat its edge rows.
    assert filled[32, 4, 0] > 200 and filled[32, 60, 2] > 200
    assert np.abs(filled[0] - filled[16]).max() < 8 and np.abs(filled[63] - filled[47]).max() < 8


@pytest.mark.parametrize(
    "settings",
    [{}, {"inpaint_full_res": True, "inpaint_full_res_padding": 4}, {"masked_content": "latent noise"},
     {"masked_content": "fill"}, {"mask_invert": True}, {"mask_blur": 0}],
)  # fmt: skip
def test_inpainting_repaints_the_mask_and_keeps_the_rest(sd15, photo, square_mask, settings):
    result = img2img(sd15, photo, mask=str(square_mask), strength=0.9, steps=4, **settings)[0]
    config = GenerateConfig(prompt="a", init_image=str(photo), mask=str(square_mask), **settings)
    mask = np.asarray(read_mask(config, gradient()))
    change = np.abs(pixels(result) - pixels(gradient())).max(axis=-1)
    # Pixels the (blurred) mask leaves out are the input's after decoding, within 2/255.
    assert change[mask == 0].max() <= 2
    assert change[mask == 255].mean() > 10


def test_only_masked_repaints_a_crop_of_a_larger_photo_at_full_size(sd15, tmp_path):
    big = gradient(160).crop((0, 0, 160, 120))
    big.save(tmp_path / "big.png")
    mask = np.zeros((120, 160), dtype=np.uint8)
    mask[40:70, 60:100] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = img2img(sd15, tmp_path / "big.png", mask=str(tmp_path / "mask.png"), inpaint_full_res=True,
                     strength=0.9, steps=4, mask_blur=0)[0]  # fmt: skip
    assert result.size == (160, 120)  # the original's size; the crop ran at the model's 64x64
    change = np.abs(pixels(result) - pixels(big)).max(axis=-1)
    assert change[mask == 0].max() <= 2 and change[mask == 255].mean() > 10


def test_a_mask_of_another_size_is_stretched_with_a_warning(sd15, photo, tmp_path):
    small = np.zeros((32, 32), dtype=np.uint8)
    small[8:20, 10:22] = 255
    Image.fromarray(small).save(tmp_path / "small.png")
    with pytest.warns(MaskResizedWarning, match="32x32 but --init .* is 64x64"):
        result = img2img(sd15, photo, mask=str(tmp_path / "small.png"), steps=2, mask_blur=0)[0]
    config = GenerateConfig(prompt="a", init_image=str(photo), mask=str(tmp_path / "small.png"), mask_blur=0)
    with pytest.warns(MaskResizedWarning):
        mask = np.asarray(read_mask(config, gradient()))
    assert mask.shape == (64, 64) and mask[20:36, 24:40].min() > 240
    change = np.abs(pixels(result) - pixels(gradient())).max(axis=-1)
    assert change[mask == 0].max() <= 2 and change[20:36, 24:40].mean() > 10


@pytest.mark.parametrize("source", ["file", "lora", "sdxl"])
def test_every_model_source_runs_img2img_and_inpainting(source, sd15_file, sd15_folder, kohya_file,
                                                        sdxl_folder, photo, square_mask):  # fmt: skip
    generator = {
        "file": lambda: facesmith.load(sd15_file),
        "lora": lambda: facesmith.load(sd15_folder, loras=[f"{kohya_file}:1"]),
        "sdxl": lambda: facesmith.load(sdxl_folder),
    }[source]()
    size = {"width": 64, "height": 64}  # a single file reads as native 512 px; the tiny model is 64
    moved = img2img(generator, photo, strength=0.6, steps=3, **size)[0]
    assert moved.size == (64, 64) and np.abs(pixels(moved) - pixels(gradient())).mean() > 1
    painted = img2img(generator, photo, mask=str(square_mask), mask_blur=0, steps=3, **size)[0]
    change = np.abs(pixels(painted) - pixels(gradient())).max(axis=-1)
    assert change[:16].max() <= 2 and change[16:40, 20:44].mean() > 10


@pytest.mark.slow
def test_the_default_model_inpaints_in_its_taef2_latents(tmp_path):
    generator = facesmith.load()
    gradient(128).save(tmp_path / "init.png")
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[40:90, 30:100] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = img2img(generator, tmp_path / "init.png", mask=str(tmp_path / "mask.png"), mask_blur=0,
                     steps=4, strength=0.9)[0]  # fmt: skip
    change = np.abs(pixels(result) - pixels(gradient(128))).max(axis=-1)
    assert result.size == (128, 128) and change[:32].max() <= 2 and change[40:90, 30:100].mean() > 10


# ----------------------------------------------------------------------------------------------------------
# The command line


def test_cli_inpaints_and_from_reproduces_it(sd15_folder, photo, square_mask, tmp_path):
    result = runner.invoke(app, ["generate", "a face", "--model", str(sd15_folder), "--init", str(photo),
                                 "--strength", "0.7", "--mask", str(square_mask), "--only-masked", "--padding",
                                 "8", "--steps", "4", "--seed", "3", "-o", str(tmp_path / "a")])  # fmt: skip
    assert result.exit_code == 0, result.output
    (made,) = (tmp_path / "a").glob("*.png")
    # PNGs name files, never paths (issue 15.13): the model, init image and mask are given again.
    again = runner.invoke(app, ["generate", "--from", str(made), "--model", str(sd15_folder), "--init", str(photo),
                                "--mask", str(square_mask), "-o", str(tmp_path / "b")])  # fmt: skip
    assert again.exit_code == 0, again.output
    (copy,) = (tmp_path / "b").glob("*.png")
    assert np.array_equal(pixels(Image.open(copy)), pixels(Image.open(made)))
    assert "inpaint_full_res = true" in (tmp_path / "a" / "generate.toml").read_text()
    info = runner.invoke(app, ["info", str(made)]).stdout
    assert "Denoising strength: 0.7" in info and "Inpaint area: Only masked" in info
    assert str(photo.parent) not in info  # the init image by name only


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that declares width x height and holds no pixels: the size check must come before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = b""
    for kind, data in ((b"IHDR", ihdr), (b"IDAT", zlib.compress(b"")), (b"IEND", b"")):
        chunks += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


@pytest.mark.parametrize(
    ("make", "args", "fragment"),
    [
        (lambda p: p.write_text("not a picture"), ["--init", "{bad}"], "is not an image"),
        (lambda p: p.write_bytes(b""), ["--init", "{bad}"], "is empty"),
        (lambda p: _png_header_only(p, 9000, 9000), ["--init", "{bad}"], "is 9000x9000"),
        (lambda p: p.write_text("not a mask"), ["--init", "{photo}", "--mask", "{bad}"], "--mask"),
        (lambda p: Image.new("L", (64, 64)).save(p, format="PNG"), ["--init", "{photo}", "--mask", "{bad}"],
         "all black"),
        (lambda p: None, ["--init", "{photo}", "--mask", "face"], "no face was found"),
        (lambda p: None, ["--mask", "face"], "needs --init"),
        (lambda p: None, ["--init", "{photo}", "--strength", "1.5"], "--strength 1.5"),
        (lambda p: None, ["--init", "{photo}", "--resize-mode", "zoom"], "--resize-mode"),
        (lambda p: None, ["--init", "{missing}"], "does not exist"),
    ],
)  # fmt: skip
def test_bad_init_images_and_masks_are_one_line_errors(sd15_folder, photo, tmp_path, make, args, fragment):
    bad = tmp_path / "bad.png"
    make(bad)
    names = {"bad": bad, "photo": photo, "missing": tmp_path / "missing.png"}
    args = [a.format(**names) for a in args]
    result = runner.invoke(app, ["generate", "a face", "--model", str(sd15_folder), "--steps", "2", *args,
                                 "-o", str(tmp_path / "out")])  # fmt: skip
    one_line_error(result, fragment)


def test_validate_names_the_setting(tmp_path):
    from facesmith.config import in_memory

    with pytest.raises(FacesmithError, match="--init .*missing.png does not exist"):
        GenerateConfig(prompt="a", init_image=str(tmp_path / "missing.png")).validate()
    # a picture given in memory (the API's, the page's) is not looked for on disk
    with pytest.raises(FacesmithError, match="denoises no step"):
        GenerateConfig(prompt="a", init_image=in_memory("init_images[0]"), strength=0.1, steps=5).validate()
    with pytest.raises(FacesmithError, match="--masked-content"):
        GenerateConfig(prompt="a", init_image=in_memory("x"), masked_content="latent nothing").validate()


def test_cli_repaints_the_detected_face_of_a_real_photo(sd15_folder, shared_data, tmp_path):
    from facesmith.masks import face_part_mask

    photo = shared_data / "celeba" / "images" / "000001.jpg"
    result = runner.invoke(app, ["generate", "a face", "--model", str(sd15_folder), "--init", str(photo),
                                 "--mask", "face", "--only-masked", "--width", "64", "--height", "64",
                                 "--steps", "2", "--seed", "1", "-o", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    (made,) = tmp_path.glob("*.png")
    original = Image.open(photo).convert("RGB")
    assert Image.open(made).size == original.size
    mask = np.asarray(face_part_mask(original, "face"))
    change = np.abs(pixels(Image.open(made).convert("RGB")) - pixels(original)).max(axis=-1)
    # Outside the face (and its 4-pixel feather) the photo is untouched; the face is repainted.
    far = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(17))) == 0
    assert change[far].max() <= 2 and change[mask == 255].mean() > 10


def test_progress_counts_the_steps_img2img_runs_and_trace_follows_them(sd15, photo):
    reports = []
    config = GenerateConfig(prompt="a face", init_image=str(photo), strength=0.5, steps=8, seed=2, count=2,
                            trace=True, trace_frames=2)  # fmt: skip
    result = sd15.run(config, progress=lambda stage, done, total, **_: reports.append((stage, done, total)))
    assert reports[-1] == ("sampling", 8, 8)  # 2 images x (8 steps x 0.5)
    # The trace's last x0 prediction lands on the image before the overlay (no mask: the image itself).
    assert np.abs(pixels(result.trace[0][-1]) - pixels(result.images[0])).mean() < 3


def test_fill_paints_the_hole_with_the_colours_around_it():
    # Left half red, right half blue, with a noise square in the red half: the mask covers the square.
    rng = np.random.default_rng(0)
    field = np.zeros((64, 64, 3), dtype=np.uint8)
    field[:, :32, 0] = 220
    field[:, 32:, 2] = 220
    field[20:36, 6:22] = rng.integers(0, 256, (16, 16, 3))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[18:38, 4:24] = 255
    filled = pixels(fill_masked(Image.fromarray(field), Image.fromarray(mask)))
    assert np.array_equal(filled[mask == 0], field[mask == 0].astype(np.int16))  # kept pixels are the image's
    hole = filled[mask == 255]
    # the red around it (a little of the blue half bleeds in from the coarse blurs), none of the noise
    assert (hole[:, 0] > hole[:, 2] + 100).all() and (hole[:, 1] < 10).all()
    # a hole at the colour border takes each side's colour near that side
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 24:40] = 255
    across = pixels(fill_masked(Image.fromarray(field), Image.fromarray(mask)))
    assert across[50, 25, 0] > across[50, 25, 2] and across[50, 38, 2] > across[50, 38, 0]


def test_masked_content_fill_starts_the_masked_area_from_the_surroundings(sd15, tmp_path):
    green = np.zeros((64, 64, 3), dtype=np.uint8)
    green[..., 1] = 200
    green[16:48, 16:48] = np.random.default_rng(1).integers(0, 256, (32, 32, 3))
    Image.fromarray(green).save(tmp_path / "init.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[12:52, 12:52] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    settings = dict(prompt="a", init_image=str(tmp_path / "init.png"), mask=str(tmp_path / "mask.png"),
                    mask_blur=0, width=64, height=64)  # fmt: skip
    filled = prepare_start(GenerateConfig(**settings, masked_content="fill").validate(), sd15.pipe.vae)
    original = prepare_start(GenerateConfig(**settings).validate(), sd15.pipe.vae)
    start = pixels(filled.image)[mask == 255]
    assert (start[:, 1] > 190).all() and (start[:, [0, 2]] < 10).all()  # the green around, not the noise
    assert np.array_equal(pixels(filled.base), pixels(original.base))  # the picture laid back is the input
    assert not np.allclose(filled.latents.numpy(), original.latents.numpy())
