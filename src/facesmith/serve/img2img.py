"""`POST /sdapi/v1/img2img`: A1111's img2img and inpainting request, run by facesmith's `img2img.py`.

Owns the request model (A1111's `StableDiffusionImg2ImgProcessingAPI` fields and defaults:
`init_images`, `denoising_strength`, `mask`, `mask_blur`, `inpainting_fill`, `inpaint_full_res` (on by
default, as in A1111), `inpaint_full_res_padding`, `inpainting_mask_invert`, `resize_mode`), reading
its base64 images in memory (nothing a request sends is written to disk), and the route. Everything
txt2img takes (limits, LoRA tags, ADetailer's `alwayson_scripts`, auth, the queue) is `api.py`'s and
applies here unchanged; a bad image or setting is a 422 naming its field.

A1111's `inpainting_fill` 0 ("fill": the masked area pre-filled with its blurred surroundings) is
`img2img.fill_masked`; 3 ("latent nothing") and `resize_mode` 3 (latent upscale) are not offered and
get a 422.
The first of `init_images` starts every image of the request.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import warnings

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from facesmith.config import RESIZE_MODES, GenerateConfig, in_memory
from facesmith.errors import FacesmithError
from facesmith.img2img import StartPicture, decode_image, flatten, mask_from_image
from facesmith.serve.api import Txt2ImgRequest, Txt2ImgResponse, answer, request_config
from facesmith.serve.config import ServeConfig
from facesmith.serve.jobs import JobQueue
from facesmith.serve.validation import invalid

FILLS = {0: "fill", 1: "original", 2: "latent noise"}  # A1111's inpainting_fill -> masked_content


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's img2img fields on top of txt2img's; others are accepted and ignored."""

    init_images: list[str] = Field(default_factory=list, description="base64 images; the first is used")
    denoising_strength: float = Field(0.75, description="(0, 1]: 0 keeps the image, 1 repaints it all")
    resize_mode: int = Field(0, description="0 just resize, 1 crop and resize, 2 resize and fill")
    mask: str | None = Field(None, description="base64 mask, white (or opaque) = repaint")
    mask_blur: int = 4
    inpainting_fill: int = Field(1, description="0 fill, 1 original, 2 latent noise")
    inpaint_full_res: bool = Field(True, description="repaint only a crop around the mask, at full size")
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = Field(0, description="1 repaints what the mask leaves black")
    include_init_images: bool = Field(False, description="ignored: the init image is not sent back")


def decode_field(value: str, field: str):
    """A base64 image (a data URL's prefix allowed, as A1111 takes it); 422 naming `field` otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, f"{field} is empty: send a base64 PNG or JPEG", value)
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, f"{field} is not base64: send a base64 PNG or JPEG", value) from None
    try:
        return decode_image(raw, field)
    except FacesmithError as err:
        raise invalid(field, str(err), value) from None


def img2img_config(
    body: Img2ImgRequest, serve: ServeConfig, loras: dict, native_size: tuple[int, int]
) -> tuple[GenerateConfig, dict, StartPicture, list[str]]:
    """(config, LoRA weights, the init picture and mask, warnings) for an img2img request, or a 422."""
    config, weights = request_config(body, serve, loras, native_size)
    if not body.init_images:
        raise invalid("init_images", "init_images is empty: send one base64 image to start from", [])
    if not 0 < body.denoising_strength <= 1:
        raise invalid("denoising_strength", "denoising_strength must lie in (0, 1]", body.denoising_strength)
    if int(config.steps * body.denoising_strength) < 1:
        raise invalid("denoising_strength", "steps x denoising_strength is under one step: raise either",
                      body.denoising_strength)  # fmt: skip
    if body.resize_mode not in range(len(RESIZE_MODES)):
        raise invalid(
            "resize_mode", "resize_mode must be 0 (just resize), 1 (crop) or 2 (fill)", body.resize_mode
        )
    if body.inpainting_fill not in FILLS:
        raise invalid("inpainting_fill", "inpainting_fill must be 0 (fill), 1 (original) or 2 (latent noise)",
                      body.inpainting_fill)  # fmt: skip
    for name in ("mask_blur", "inpaint_full_res_padding"):
        if not 0 <= getattr(body, name) <= serve.max_size:
            raise invalid(name, f"{name} must lie in [0, {serve.max_size}] px", getattr(body, name))
    if body.inpainting_mask_invert not in (0, 1):
        raise invalid(
            "inpainting_mask_invert", "inpainting_mask_invert must be 0 or 1", body.inpainting_mask_invert
        )
    image = flatten(decode_field(body.init_images[0], "init_images"))
    config = dataclasses.replace(
        config,
        init_image=in_memory("init_images[0]"),  # a label for the recipe: the picture comes in memory
        strength=body.denoising_strength,
        resize_mode=RESIZE_MODES[body.resize_mode],
        mask="mask" if body.mask else None,
        mask_blur=body.mask_blur,
        mask_invert=bool(body.inpainting_mask_invert),
        inpaint_full_res=body.inpaint_full_res and bool(body.mask),
        inpaint_full_res_padding=body.inpaint_full_res_padding,
        masked_content=FILLS[body.inpainting_fill],
    )
    notes: list[str] = []
    mask = None
    if body.mask:
        drawn = decode_field(body.mask, "mask")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mask = mask_from_image(drawn, image, config, "mask", "init_images[0]")
            except FacesmithError as err:
                raise invalid("mask", str(err)) from None
        notes = [str(w.message) for w in caught]
    try:
        config.validate()
    except FacesmithError as err:
        raise invalid("init_images", str(err)) from None
    return config, weights, StartPicture(image, mask), notes


def img2img_router(queue: JobQueue, serve: ServeConfig, model: dict) -> APIRouter:
    """The /sdapi/v1/img2img route over the same queue as txt2img's."""
    router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111-compatible API"])

    @router.post("/img2img", response_model=Txt2ImgResponse)
    async def img2img(body: Img2ImgRequest, request: Request):
        """Images from `init_images[0]` (inpainted where `mask` is white), as A1111's img2img makes them."""
        config, weights, given, notes = await run_in_threadpool(
            img2img_config, body, serve, queue.loras, queue.generator.native_size
        )
        return await answer(body, request, queue, model, config, weights, given, notes)

    return router
