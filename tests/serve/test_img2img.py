"""`/sdapi/v1/img2img` and ADetailer's `alwayson_scripts` against a real `facesmith serve` on the tiny
model: A1111's fields, the webuiapi client's own img2img call (plain, masked, with ADetailer args), and
a 422 naming the field for every bad image or setting."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from factory import shared_data_dir

FAST = {"steps": 4, "width": 64, "height": 64}


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def gradient(size: int = 64) -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    return Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], axis=-1))


def corner_mask(size: int = 64, side: int = 16) -> Image.Image:
    mask = Image.new("L", (size, size))
    mask.paste(255, (0, 0, side, side))
    return mask


def img2img(server, **fields) -> httpx.Response:
    return httpx.post(server.url + "/sdapi/v1/img2img", json=fields, timeout=120)


def client(server):
    import webuiapi

    host, port = server.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), steps=4)
    api.check_extensions()  # reads /sdapi/v1/scripts, as webuiapi users do to find ADetailer
    return api


@pytest.fixture(scope="module")
def face():
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared face data not found (set FACESMITH_SHARED)")
    photo = Image.open(root / "celeba" / "images" / "000001.jpg").convert("RGB")
    return photo.resize((64, 78), Image.LANCZOS).crop((0, 0, 64, 64))


# ----------------------------------------------------------------------------------------------------------


def test_webuiapi_img2img_without_a_mask(server):
    api = client(server)
    assert api.has_adetailer
    result = api.img2img(images=[gradient()], prompt="a face", denoising_strength=0.5, seed=4, width=64,
                         height=64, cfg_scale=5)  # fmt: skip
    assert result.image.size == (64, 64)
    assert result.info["all_seeds"] == [4] and result.info["denoising_strength"] == 0.5
    infotext = result.image.info["parameters"]
    assert infotext == result.info["infotexts"][0] and "Denoising strength: 0.5" in infotext
    again = api.img2img(images=[gradient()], prompt="a face", denoising_strength=0.5, seed=4, width=64,
                        height=64, cfg_scale=5)  # fmt: skip
    assert np.array_equal(pixels(result.image), pixels(again.image))
    other = api.img2img(images=[gradient().transpose(Image.Transpose.ROTATE_90)], prompt="a face",
                        denoising_strength=0.5, seed=4, width=64, height=64, cfg_scale=5)  # fmt: skip
    assert not np.array_equal(pixels(result.image), pixels(other.image))  # the init image shapes it


def test_webuiapi_inpainting_keeps_what_the_mask_leaves_out(server):
    api = client(server)
    result = api.img2img(images=[gradient()], mask_image=corner_mask(), mask_blur=0, prompt="a face",
                         denoising_strength=0.9, seed=2, width=64, height=64)  # fmt: skip
    moved = np.abs(pixels(result.image) - pixels(gradient())).max(axis=-1) > 0
    assert moved[:16, :16].mean() > 0.5 and not moved[:, 24:].any() and not moved[24:, :].any()
    assert "Mask blur: 0" in result.info["infotexts"][0]
    inverted = api.img2img(images=[gradient()], mask_image=corner_mask(), mask_blur=0, prompt="a face",
                           denoising_strength=0.9, seed=2, width=64, height=64, inpainting_mask_invert=1,
                           inpaint_full_res=False)  # fmt: skip
    flipped = np.abs(pixels(inverted.image) - pixels(gradient())).max(axis=-1) > 0
    assert not flipped[:16, :16].any() and flipped[32:, 32:].mean() > 0.5


def test_webuiapi_adetailer_details_the_face_of_an_inpainted_photo(server, face):
    import webuiapi

    api = client(server)
    common = dict(images=[face], mask_image=corner_mask(side=10), mask_blur=0, prompt="a face",
                  denoising_strength=0.75, seed=6, width=64, height=64)  # fmt: skip
    plain = api.img2img(**common)
    detailer = webuiapi.ADetailer(
        ad_model="face_yolov8n.pt", ad_denoising_strength=0.75, ad_prompt="a face, detailed"
    )
    detailed = api.img2img(**common, adetailer=[detailer])
    moved = np.abs(pixels(plain.image) - pixels(detailed.image)).max(axis=-1) > 0
    assert moved.mean() > 0.1  # the face pass repainted the face the main pass kept
    infotext = detailed.info["infotexts"][0]
    assert "ADetailer model: mtcnn" in infotext and "ADetailer denoising strength: 0.75" in infotext
    assert (
        'ADetailer prompt: "a face, detailed"' in infotext and "ADetailer" not in plain.info["infotexts"][0]
    )


def test_adetailer_args_on_txt2img_are_recorded(server):
    import webuiapi

    api = client(server)
    result = api.txt2img(prompt="a face", seed=1, width=64, height=64,
                         adetailer=[webuiapi.ADetailer(ad_model="face_yolov8n.pt", ad_mask_k_largest=1)])  # fmt: skip
    assert "ADetailer model: mtcnn" in result.info["infotexts"][0]
    assert "ADetailer mask only top k largest: 1" in result.info["infotexts"][0]
    off = httpx.post(server.url + "/sdapi/v1/txt2img", timeout=60, json={
        "prompt": "a face", **FAST, "alwayson_scripts": {"ADetailer": {"args": [False]}}})  # fmt: skip
    assert off.status_code == 200 and "ADetailer" not in json.loads(off.json()["info"])["infotexts"][0]


def test_a_mask_of_another_size_is_stretched_with_a_warning(server):
    response = img2img(server, prompt="a face", init_images=[b64(gradient())], mask=b64(corner_mask(32, 8)),
                       **FAST)  # fmt: skip
    assert response.status_code == 200, response.text
    assert "stretched to the image" in json.loads(response.json()["info"])["warnings"][0]


def _header_only_png(width: int, height: int) -> str:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = b""
    for kind, data in ((b"IHDR", ihdr), (b"IDAT", zlib.compress(b"")), (b"IEND", b"")):
        chunks += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunks).decode("ascii")


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"init_images": []}, "init_images", "is empty"),
        ({"init_images": [""]}, "init_images", "is empty"),
        ({"init_images": ["not base64 !"]}, "init_images", "not base64"),
        ({"init_images": [base64.b64encode(b"not a picture").decode()]}, "init_images", "not an image"),
        ({"init_images": [_header_only_png(9000, 9000)]}, "init_images", "9000x9000"),
        ({"mask": base64.b64encode(b"nope").decode()}, "mask", "not an image"),
        ({"mask": b64(Image.new("L", (64, 64)))}, "mask", "all black"),
        ({"denoising_strength": 0}, "denoising_strength", "(0, 1]"),
        ({"resize_mode": 3}, "resize_mode", "resize_mode"),
        ({"inpainting_fill": 3}, "inpainting_fill", "latent noise"),
        ({"inpainting_mask_invert": 2}, "inpainting_mask_invert", "0 or 1"),
        ({"steps": 1000}, "steps", "steps"),
        ({"width": 4096}, "width", "at most"),
        (
            {"alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "hand_yolov8n.pt"}]}}},
            "alwayson_scripts",
            "faces (MTCNN) only",
        ),
        (
            {
                "alwayson_scripts": {
                    "ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt", "ad_denoising_strength": 2}]}
                }
            },
            "alwayson_scripts",
            "--detail-strength 2",
        ),
        ({"alwayson_scripts": {"ADetailer": "on"}}, "alwayson_scripts", "args"),
        (
            {
                "alwayson_scripts": {
                    "ADetailer": {
                        "args": [
                            True,
                            {"ad_model": "face_yolov8n.pt", "ad_prompt": "<lora:faces:0.7> a face"},
                        ]
                    }
                }
            },
            "alwayson_scripts",
            "<lora:faces> is not loaded on this server",
        ),  # fmt: skip
    ],
)
def test_bad_images_and_settings_get_422_naming_the_field(server, fields, field, fragment):
    response = img2img(server, **{"prompt": "a face", "init_images": [b64(gradient())], **FAST, **fields})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field] and fragment in detail["msg"], detail


def test_inpainting_fill_starts_the_masked_area_from_the_colours_around_it(server):
    def run(field: Image.Image, fill: int) -> np.ndarray:
        response = img2img(server, prompt="a face", init_images=[b64(field)], mask=b64(corner_mask(side=32)),
                           mask_blur=0, denoising_strength=0.5, seed=3, inpainting_fill=fill, inpaint_full_res=False,
                           **FAST)  # fmt: skip
        assert response.status_code == 200, response.text
        return pixels(png(response.json()["images"][0]))

    field = Image.new("RGB", (64, 64), (40, 160, 60))
    # under the mask a field already has its surroundings' colour: "fill" starts from the same picture
    assert np.array_equal(run(field, 0), run(field, 1))
    field.paste((250, 250, 250), (8, 8, 24, 24))  # a white patch inside the mask is painted over green
    assert not np.array_equal(run(field, 0), run(field, 1))
