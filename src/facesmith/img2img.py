"""Image to image and inpainting: `facesmith generate PROMPT --init IMAGE [--mask MASK|face|hair|...]`.

Owns what a run starting from a picture adds to txt2img, following AUTOMATIC1111's img2img
(modules/processing.py, StableDiffusionProcessingImg2Img; modules/images.py, resize_image; modules/masking.py):
- reading the init image and mask (one-line errors for a missing, empty, unreadable or oversized file);
- A1111's resize modes: just resize, crop and resize, resize and fill (edges stretched into the bars);
- the mask: resized to the image with a warning when its size differs, inverted, Gaussian-blurred by
  `mask_blur`; "only masked" (A1111's inpaint_full_res) repaints the padded crop around the mask at the
  full working size and pastes it back into the untouched original;
- sampling on diffusers' own StableDiffusionImg2ImgPipeline / StableDiffusionXLImg2ImgPipeline, built
  from the components already loaded (`pipe.components`: the same modules, nothing loaded twice), so every
  model facesmith loads runs it: SD1.x/2.x/SDXL folders and single files, fused LoRAs, the ONNX engine
  (torch.compile runs the same modules; not yet run on a GPU), and the default model with its
  32-channel TAEF2 latents;
- inpainting as the standard latent blend: every UNet facesmith loads is a plain (non-inpainting) one,
  and diffusers' inpainting pipelines run a plain UNet only with 4 latent channels (not TAEF2's 32). So,
  as A1111 does for such models, img2img runs and after every step the unmasked latents are put back at
  that step's noise level (the mask rounded to latent pixels); "latent noise" starts the masked area
  from fresh noise instead of the image, and "fill" from the surrounding colours (`fill_masked`);
- the seam: the decoded image is composited over the input through the blurred mask, so the pixels the
  mask leaves out are the input's exactly (a VAE round trip alone shifts their colours).
`generate.py` calls `prepare_start` and `Start.denoise`/`Start.finish` from `FaceGenerator.sample`; the
seeds, samplers, engines and PNG recipe stay there.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError
from facesmith.latents import encode_image
from facesmith.masks import FACE_PARTS, face_part_mask

MAX_IMAGE_PIXELS = 8192 * 8192  # an init image or mask larger than this is refused before decoding


class MaskResizedWarning(UserWarning):
    """The mask's size differs from the init image's; it was stretched to the image."""


# ----------------------------------------------------------------------------------------------------------
# Reading and resizing (A1111's modules/images.py)


def read_image(path: str | Path, option: str) -> Image.Image:
    """The image at `path`, decoded; FacesmithError naming `option` and the file when it cannot be used."""
    path = Path(path).expanduser()
    label = f"{option} {path}"
    if not path.is_file():
        raise FacesmithError(f"{label} does not exist or is not a file: give the path of an image")
    return decode_image(path.read_bytes(), label)


def decode_image(data: bytes, label: str) -> Image.Image:
    """`data` decoded as an image; FacesmithError naming `label` (a file, an API field) when it is empty,
    oversized or not an image. The size is read from the header, before the pixels are decoded."""
    import io

    if not data:
        raise FacesmithError(f"{label} is empty: give a PNG or JPEG image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS or not image.width or not image.height:
                raise FacesmithError(
                    f"{label} is {image.width}x{image.height}: images up to {MAX_IMAGE_PIXELS // 10**6} "
                    "megapixels and at least 1x1 are taken; scale it down first"
                )
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
        raise FacesmithError(f"{label} is not an image PIL can read ({error}): give a PNG or JPEG") from None


def flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency laid over white (A1111's img2img background colour)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_image(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """`image` at width x height by one of A1111's resize modes (images.resize_image, modes 0-2):
    just resize stretches; crop and resize fills the frame and crops the overhang; resize and fill fits
    the whole image and stretches its edge rows or columns into the bars."""
    if mode == "just resize":
        return image.resize((width, height), Image.LANCZOS)
    ratio, source_ratio = width / height, image.width / image.height
    crop = mode == "crop and resize"
    if crop == (ratio > source_ratio):  # scale to the width
        new_w, new_h = width, max(1, image.height * width // image.width)
    else:
        new_w, new_h = max(1, image.width * height // image.height), height
    resized = image.resize((new_w, new_h), Image.LANCZOS)
    result = Image.new(image.mode, (width, height))
    result.paste(resized, (width // 2 - new_w // 2, height // 2 - new_h // 2))
    if crop:
        return result
    if ratio < source_ratio:  # bars above and below: stretch the first and last rows
        bar = height // 2 - new_h // 2
        if bar > 0:
            result.paste(resized.resize((width, bar), box=(0, 0, width, 0)), (0, 0))
            result.paste(resized.resize((width, bar), box=(0, new_h, width, new_h)), (0, bar + new_h))
    elif ratio > source_ratio:  # bars left and right: stretch the first and last columns
        bar = width // 2 - new_w // 2
        if bar > 0:
            result.paste(resized.resize((bar, height), box=(0, 0, 0, height)), (0, 0))
            result.paste(resized.resize((bar, height), box=(new_w, 0, new_w, height)), (bar + new_w, 0))
    return result


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The box around the mask's white pixels, `padding` wider on each side, grown to width:height's
    aspect ratio inside the image (A1111's masking.get_crop_region + expand_crop_region)."""
    ys, xs = np.nonzero(np.asarray(mask))
    x1, y1 = max(int(xs.min()) - padding, 0), max(int(ys.min()) - padding, 0)
    x2, y2 = min(int(xs.max()) + 1 + padding, mask.width), min(int(ys.max()) + 1 + padding, mask.height)
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, int((x2 - x1) * height / width) - (y2 - y1), mask.height)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * width / height) - (x2 - x1), mask.width)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, extra: int, limit: int) -> tuple[int, int]:
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, min(hi - lo, limit)
    return lo, hi


def read_mask(config: GenerateConfig, image: Image.Image) -> Image.Image:
    """The mask `config` names, as "L" at `image`'s size: a file, or a face part found in `image`; then
    inverted and blurred as asked. FacesmithError when it leaves nothing to repaint."""
    spec = str(config.mask)
    if spec.lower() in FACE_PARTS and not Path(spec).is_file():
        mask = face_part_mask(image, spec.lower(), name=f"--init {config.init_image}")
        return finish_mask(mask, config, f"--mask {spec}")
    return mask_from_image(
        read_image(spec, "--mask"), image, config, f"--mask {spec}", f"--init {config.init_image}"
    )


def mask_from_image(
    mask: Image.Image, image: Image.Image, config: GenerateConfig, label: str, image_label: str
) -> Image.Image:
    """A drawn mask (a file, an API field) as "L" at `image`'s size, inverted and blurred as `config` asks.

    A mask drawn over transparency (A1111's sketch, Gradio's editor) is its alpha; else its grey. One of
    another size is stretched to the image, with a MaskResizedWarning."""
    mask = mask.getchannel("A") if mask.mode in ("RGBA", "LA") else mask.convert("L")
    if mask.size != image.size:
        warnings.warn(
            f"{label} is {mask.width}x{mask.height} but {image_label} is "
            f"{image.width}x{image.height}: the mask was stretched to the image",
            MaskResizedWarning,
            stacklevel=3,
        )
        mask = mask.resize(image.size, Image.LANCZOS)
    return finish_mask(mask, config, label)


def finish_mask(mask: Image.Image, config: GenerateConfig, label: str) -> Image.Image:
    """`mask` inverted and Gaussian-blurred as `config` asks; FacesmithError when nothing is left white."""
    if config.mask_invert:
        mask = ImageOps.invert(mask)
    if config.mask_blur:
        mask = mask.filter(ImageFilter.GaussianBlur(config.mask_blur))
    if not np.asarray(mask).any():
        raise FacesmithError(f"{label} is all black{' once inverted' if config.mask_invert else ''}: "
                             "nothing to repaint; white marks what to repaint")  # fmt: skip
    return mask


# Gaussian sigmas of `fill_masked`, coarse to fine, in pixels: A1111's masking.fill blurs at these radii.
FILL_SIGMAS = (256, 64, 16, 4, 2)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """`image` with the area `mask` marks (white) filled from the colours around it: A1111's "fill"
    masked content (modules/masking.py `fill`), which the img2img pass then starts from.

    Written here as normalized convolution (Knutsson & Westin 1993): at each sigma, coarse to fine, the
    blur of the kept pixels (weighted 1 - mask) over the blur of their weights is the mean colour of the
    kept neighbourhood; each finer estimate is laid over the coarser one as far as its neighbourhood holds
    kept pixels, so a small hole takes its nearest colours and a large one the wider image's. Pixels the
    mask leaves out are the image's own. A1111 does the same with premultiplied-alpha PIL blurs; its code
    is AGPL and not used. scipy's separable `gaussian_filter` keeps the 256-pixel sigma cheap."""
    from scipy.ndimage import gaussian_filter

    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    keep = 1 - np.asarray(mask.convert("L").resize(image.size), dtype=np.float64) / 255
    if not keep.any():  # nothing kept to take colours from: A1111 leaves a black field
        return Image.new("RGB", image.size)
    filled = None
    for sigma in FILL_SIGMAS:
        weight = gaussian_filter(keep, sigma, mode="nearest")
        colour = (
            np.stack([gaussian_filter(rgb[..., c] * keep, sigma, mode="nearest") for c in range(3)], axis=-1)
            / np.maximum(weight, 1e-12)[..., None]
        )
        if filled is None:
            filled = colour
        else:  # how much of this finer neighbourhood is kept: 1 beside kept pixels, 0 deep in the hole
            support = np.clip(weight, 0, 1)[..., None]
            filled = support * colour + (1 - support) * filled
    out = keep[..., None] * rgb + (1 - keep[..., None]) * filled
    return Image.fromarray(np.clip(np.around(out * 255), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class Start:
    """What one img2img/inpainting run starts from, at the working size width x height.

    `base` is the picture the result is laid into (the resized init image, or the untouched original for
    "only masked", where `paste_to` is the crop box); `overlay` the blurred mask through which the
    result covers `base`; `latent_mask` 1 where the latents are repainted."""

    image: Image.Image
    base: Image.Image
    latents: torch.Tensor
    strength: float
    steps: int  # the steps that actually run: steps x strength, as A1111 and diffusers count them
    masked_content: str = "original"
    overlay: Image.Image | None = None
    latent_mask: torch.Tensor | None = None
    paste_to: tuple[int, int, int, int] | None = None
    # Set during a call by the pipeline (see _GivenStart): the timesteps it runs and the noise it drew.
    timesteps: Any = None
    noise: torch.Tensor | None = None
    init: torch.Tensor | None = None

    def denoise(self, pipe, call: dict[str, Any], on_step) -> torch.Tensor:
        """Latents from diffusers' img2img pipeline over `pipe`'s components; `call` holds the txt2img
        keywords (prompt, steps, guidance, generators, output_type) and `on_step` the progress callback."""
        runner = image_pipeline(pipe)
        runner.start = self

        def step_end(pipeline, step, timestep, tensors):
            tensors = on_step(pipeline, step, timestep, tensors)
            if self.latent_mask is not None:
                tensors["latents"] = self.blend(pipeline.scheduler, step, tensors["latents"])
            return tensors

        return runner(**call, image=self.image, strength=self.strength, callback_on_step_end=step_end).images

    def blend(self, scheduler, step: int, latents: torch.Tensor) -> torch.Tensor:
        """The latent-blend inpainting step: unmasked latents back to the input's, noised to the next
        step's level (the clean input after the last step), as diffusers' 4-channel inpainting does."""
        if step + 1 < len(self.timesteps):
            keep = scheduler.add_noise(self.init, self.noise, self.timesteps[step + 1 : step + 2])
        else:
            keep = self.init
        mask = self.latent_mask.to(latents)
        return mask * latents + (1 - mask) * keep.to(latents)

    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        """Decoded images laid back: pasted into the crop (only masked) and composited through the mask."""
        done = []
        for image in images:
            if self.paste_to is not None:
                x1, y1, x2, y2 = self.paste_to
                whole = self.base.copy()
                whole.paste(image.resize((x2 - x1, y2 - y1), Image.LANCZOS), (x1, y1))
                image = whole
            if self.overlay is not None:
                image = Image.composite(image, self.base, self.overlay)
            done.append(image)
        return done


@dataclasses.dataclass
class StartPicture:
    """An init image (and a finished "L" mask at its size, or None) given in memory instead of by
    `config.init_image`/`config.mask`: an API request's, or the face detailer's crop."""

    image: Image.Image
    mask: Image.Image | None = None


def prepare_start(config: GenerateConfig, vae, given: StartPicture | None = None) -> Start:
    """Read, resize, mask and encode `config`'s init image (or `given`) at config.width x config.height."""
    width, height = config.width, config.height
    if given is not None:
        original, mask = flatten(given.image), given.mask
    else:
        original = flatten(read_image(config.init_image, "--init"))
        mask = read_mask(config, original) if config.mask is not None else None
    overlay = latent_mask = paste_to = None
    if mask is not None and config.inpaint_full_res:
        paste_to = crop_region(mask, config.inpaint_full_res_padding, width, height)
        base, overlay = original, mask
        image = resize_image(original.crop(paste_to), width, height, "resize and fill")
        work_mask = resize_image(mask.crop(paste_to), width, height, "resize and fill")
    else:
        base = image = resize_image(original, width, height, config.resize_mode)
        if mask is not None:
            work_mask = resize_image(mask, width, height, config.resize_mode)
            # A1111 doubles the mask for the overlay: the blurred edge leans to the repainted side.
            overlay = Image.fromarray(
                np.clip(np.asarray(work_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
            )
    if mask is not None and config.masked_content == "fill":  # `base` keeps the unfilled picture
        image = fill_masked(image, work_mask)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        latents = encode_image(vae, pixels.to(vae.device, vae.dtype))
    if mask is not None:
        small = work_mask.resize((latents.shape[-1], latents.shape[-2]), Image.LANCZOS)
        # Rounded, as A1111 does: a latent pixel is either repainted or kept.
        latent_mask = torch.from_numpy(np.around(np.asarray(small, dtype=np.float32) / 255))[None, None]
    steps = min(int(config.steps * config.strength), config.steps)
    return Start(
        image, base, latents, config.strength, steps, config.masked_content, overlay, latent_mask, paste_to
    )


# ----------------------------------------------------------------------------------------------------------
# The diffusers pipelines


class _GivenStart:
    """Mixed in front of diffusers' img2img pipelines: the start latents are `start.latents`, encoded by
    `latents.encode_image` (every VAE's scaling, shift and normalisation, and the fp16 NaN guard), where
    diffusers would encode again with scaling_factor alone and take ready latents only with 4 channels
    (TAEF2's have 32). Each image's noise comes from its own seeded generator, as in txt2img, and is kept
    for the inpainting blend."""

    start: Start

    def get_timesteps(self, *args, **kwargs):
        timesteps, steps = super().get_timesteps(*args, **kwargs)
        self.start.timesteps = timesteps
        return timesteps, steps

    def prepare_latents(self, image, timestep, batch_size, num_images_per_prompt, dtype, device, generator=None, add_noise=True):  # fmt: skip
        from diffusers.utils.torch_utils import randn_tensor

        count = batch_size * num_images_per_prompt
        init = self.start.latents.to(device, dtype).expand(count, -1, -1, -1).clone()
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
        if self.start.latent_mask is not None and self.start.masked_content == "latent noise":
            # A1111's "latent noise": the masked area starts from fresh noise, not from the image.
            fill = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
            mask = self.start.latent_mask.to(init)
            init = init * (1 - mask) + fill * mask
        self.start.init, self.start.noise = init, noise
        return self.scheduler.add_noise(init, noise, timestep)


_CLASSES: dict[type, type] = {}


def image_pipeline(pipe):
    """diffusers' img2img pipeline for `pipe` (SD or SDXL) over the very same modules.

    Built from `pipe.components` rather than `from_pipe`: from_pipe drops a component whose class the
    new pipeline's signature does not name (the default model's TAEF2 VAE) and casts every module.
    Nothing is copied or loaded: the runner's unet, vae and text encoders are `pipe`'s objects."""
    import inspect

    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    sdxl = isinstance(pipe, StableDiffusionXLPipeline)
    base = StableDiffusionXLImg2ImgPipeline if sdxl else StableDiffusionImg2ImgPipeline
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Face{base.__name__}", (_GivenStart, base), {})
    takes = inspect.signature(base.__init__).parameters
    parts = {name: module for name, module in pipe.components.items() if name in takes}
    for flag in ("requires_safety_checker", "force_zeros_for_empty_prompt"):
        if flag in takes and flag in pipe.config:
            parts[flag] = pipe.config[flag]
    # The scheduler joins after __init__, which would rewrite a steps_offset of 0 (the default model's)
    # to 1 on the shared scheduler: img2img must step the timesteps txt2img steps.
    runner = _CLASSES[base](**{**parts, "scheduler": None})
    runner.scheduler = pipe.scheduler
    runner.set_progress_bar_config(disable=True)
    return runner
